//! `kind = "hmac"`: tokens that the app's backend signs with a shared secret and the gateway
//! verifies offline.
//!
//! Format (documented in the README so any language can mint one):
//!
//! ```text
//! v1.<member_id>.<expires>.<signature>
//! signature = base64url_nopad( HMAC-SHA256( secret, "v1.<member_id>.<expires>" ) )
//! ```
//!
//! `member_id` is the decimal member id, `expires` the expiry as decimal Unix seconds. The
//! signature binds both, so a token for member 1 never authenticates member 2 and an expired
//! token cannot be extended. Several secrets may be configured: a token signed with any of
//! them is accepted (rotate by adding the new secret first, minting with it, then removing the
//! old one once its tokens have expired).

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::MemberId;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{
    AuthError, Authenticator, Clock, Credentials, Decision, SetupError, SystemClock, async_trait,
};

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";
/// The shortest secret accepted: HMAC-SHA256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longer tokens are refused before any hashing.
const MAX_TOKEN_BYTES: usize = 256;

/// Verifies `v1.<member_id>.<expires>.<signature>` tokens against a list of secrets.
#[derive(Clone)]
pub struct HmacTokens {
    secrets: Vec<Vec<u8>>,
    leeway_s: u64,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for HmacTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacTokens")
            .field("secrets", &self.secrets.len())
            .field("leeway_s", &self.leeway_s)
            .finish_non_exhaustive()
    }
}

fn signature(secret: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    mac
}

/// Mints a token for `member` that expires at `expires` (Unix seconds), signed with `secret`.
pub fn mint_hmac_token(secret: &[u8], member: MemberId, expires: u64) -> String {
    let payload = format!("{VERSION}.{member}.{expires}");
    let tag = signature(secret, &payload).finalize().into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
}

impl HmacTokens {
    /// `secrets`: the current one first (it is the one [`HmacTokens::mint`] uses), then older
    /// ones still accepted. `leeway_s`: how long after `expires` a token is still accepted, for
    /// clock skew between the minting backend and the gateway.
    pub fn new(secrets: Vec<Vec<u8>>, leeway_s: u64) -> Result<HmacTokens, SetupError> {
        Self::with_clock(secrets, leeway_s, Arc::new(SystemClock))
    }

    pub fn with_clock(
        secrets: Vec<Vec<u8>>,
        leeway_s: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<HmacTokens, SetupError> {
        if secrets.is_empty() {
            return Err(SetupError::Missing("at least one secret"));
        }
        if let Some(i) = secrets.iter().position(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(SetupError::Invalid(format!(
                "secret #{} is shorter than {MIN_SECRET_BYTES} bytes",
                i + 1
            )));
        }
        Ok(HmacTokens {
            secrets,
            leeway_s,
            clock,
        })
    }

    /// A token for `member`, valid for `ttl_s` seconds from now, signed with the first secret.
    pub fn mint(&self, member: MemberId, ttl_s: u64) -> String {
        let expires = self.clock.unix_seconds().saturating_add(ttl_s);
        mint_hmac_token(&self.secrets[0], member, expires)
    }

    /// `Ok` if the token proves the member, else why not (for the log).
    fn verify(&self, creds: Credentials<'_>) -> Result<(), &'static str> {
        let token = creds.token;
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        let malformed = "malformed token (expected v1.<member>.<expires>.<signature>)";
        let Some((payload, encoded)) = token.rsplit_once('.') else {
            return Err(malformed);
        };
        let mut fields = payload.split('.');
        let (Some(VERSION), Some(member), Some(expires), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed);
        };
        // Exactly the canonical decimal forms: "+5" or "05" would be other byte strings with
        // the same meaning, and the signature is over bytes.
        let (Ok(member), Ok(expires)) = (member.parse::<i64>(), expires.parse::<u64>()) else {
            return Err(malformed);
        };
        if payload != format!("{VERSION}.{member}.{expires}") {
            return Err(malformed);
        }
        if member != creds.member.get() {
            return Err("token minted for another member");
        }
        if self.clock.unix_seconds() > expires.saturating_add(self.leeway_s) {
            return Err("token expired");
        }
        let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else {
            return Err(malformed);
        };
        // Every secret is tried (no early exit), each comparison in constant time.
        let signed = self.secrets.iter().fold(false, |ok, secret| {
            signature(secret, payload).verify_slice(&tag).is_ok() | ok
        });
        if signed {
            Ok(())
        } else {
            Err("bad signature (not signed with any configured secret)")
        }
    }
}

#[async_trait]
impl Authenticator for HmacTokens {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        Ok(match self.verify(creds) {
            Ok(()) => Decision::accept(),
            Err(reason) => Decision::refuse_with(reason),
        })
    }

    fn describe(&self) -> String {
        format!(
            "HMAC-SHA256 tokens ({} secret{}, leeway {} s)",
            self.secrets.len(),
            if self.secrets.len() == 1 { "" } else { "s" },
            self.leeway_s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fixed::FixedClock;

    const NOW: u64 = 1_800_000_000;
    const CURRENT: &[u8] = b"current-secret-0123456789";
    const PREVIOUS: &[u8] = b"previous-secret-0123456789";

    fn member(id: i64) -> MemberId {
        MemberId::new(id).unwrap()
    }

    fn tokens(secrets: &[&[u8]], clock: &FixedClock) -> HmacTokens {
        HmacTokens::with_clock(
            secrets.iter().map(|s| s.to_vec()).collect(),
            5,
            Arc::new(clock.clone()),
        )
        .unwrap()
    }

    async fn accepts(auth: &HmacTokens, id: i64, token: &str) -> bool {
        auth.authenticate(Credentials::new(member(id), token))
            .await
            .unwrap()
            == Decision::accept()
    }

    #[test]
    fn the_format_is_the_documented_one() {
        // Python: base64.urlsafe_b64encode(hmac.new(b"current-secret-0123456789",
        //   b"v1.123456.1800000060", hashlib.sha256).digest()).rstrip(b"=")
        let token = mint_hmac_token(CURRENT, member(123456), NOW + 60);
        assert_eq!(
            token,
            "v1.123456.1800000060.IPyCzlsSHCIEEugA9XbqAP8H6FfvO--Rn_d0zQZak6I"
        );
    }

    #[tokio::test]
    async fn a_valid_token_is_accepted_until_it_expires_plus_leeway() {
        let clock = FixedClock::at(NOW);
        let auth = tokens(&[CURRENT], &clock);
        let token = auth.mint(member(7), 60);
        assert!(accepts(&auth, 7, &token).await);
        clock.set(NOW + 60 + 5);
        assert!(accepts(&auth, 7, &token).await, "within the leeway");
        clock.set(NOW + 60 + 6);
        assert!(!accepts(&auth, 7, &token).await, "expired");
    }

    #[tokio::test]
    async fn a_token_for_one_member_never_authenticates_another() {
        let clock = FixedClock::at(NOW);
        let auth = tokens(&[CURRENT], &clock);
        let token = auth.mint(member(1), 60);
        assert!(!accepts(&auth, 2, &token).await);
        assert!(!accepts(&auth, 11, &token).await);
    }

    #[tokio::test]
    async fn tampered_tokens_are_refused() {
        let clock = FixedClock::at(NOW);
        let auth = tokens(&[CURRENT], &clock);
        let token = auth.mint(member(7), 60);
        let (payload, sig) = token.rsplit_once('.').unwrap();
        let longer = format!("v1.7.{}.{sig}", NOW + 6000);
        let other_member = format!("v1.8.{}.{sig}", NOW + 60);
        let flipped = {
            let mut bytes = sig.as_bytes().to_vec();
            bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
            format!("{payload}.{}", String::from_utf8(bytes).unwrap())
        };
        let padded = format!("v1.07.{}.{sig}", NOW + 60);
        for bad in [&longer, &other_member, &flipped, &padded] {
            assert!(!accepts(&auth, 7, bad).await, "{bad}");
        }
        // Each refusal says why, for the gateway's log (never the token itself).
        let why = |token: &str| auth.verify(Credentials::new(member(7), token)).unwrap_err();
        assert_eq!(
            why(&flipped),
            "bad signature (not signed with any configured secret)"
        );
        assert_eq!(why(&other_member), "token minted for another member");
        assert!(why(&padded).starts_with("malformed token"));
        let expired = tokens(&[CURRENT], &FixedClock::at(NOW - 3600)).mint(member(7), 60);
        assert_eq!(why(&expired), "token expired");
    }

    #[tokio::test]
    async fn malformed_and_empty_tokens_are_refused() {
        let clock = FixedClock::at(NOW);
        let auth = tokens(&[CURRENT], &clock);
        let valid = auth.mint(member(7), 60);
        let too_long = format!("{valid}{}", "A".repeat(300));
        for bad in [
            "",
            "v1",
            "v1.7",
            "v1.7.1800000060",
            "v2.7.1800000060.sig",
            "v1.7.1800000060.not base64!",
            "v1.7.soon.abc",
            "v1.7.1800000060.abc.extra",
            too_long.as_str(),
        ] {
            assert!(!accepts(&auth, 7, bad).await, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_rotated_secret_keeps_old_tokens_valid_until_removed() {
        let clock = FixedClock::at(NOW);
        let old = tokens(&[PREVIOUS], &clock).mint(member(7), 60);
        let rotated = tokens(&[CURRENT, PREVIOUS], &clock);
        assert!(accepts(&rotated, 7, &old).await);
        let new = rotated.mint(member(7), 60);
        assert!(
            accepts(&tokens(&[CURRENT], &clock), 7, &new).await,
            "minted with the first"
        );
        assert!(
            !accepts(&tokens(&[CURRENT], &clock), 7, &old).await,
            "old secret removed"
        );
    }

    #[test]
    fn setup_refuses_missing_and_short_secrets() {
        assert!(matches!(
            HmacTokens::new(vec![], 0),
            Err(SetupError::Missing(_))
        ));
        let err = HmacTokens::new(vec![CURRENT.to_vec(), b"short".to_vec()], 0).unwrap_err();
        assert_eq!(err.to_string(), "secret #2 is shorter than 16 bytes");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let auth = HmacTokens::new(vec![CURRENT.to_vec()], 0).unwrap();
        assert!(!format!("{auth:?}").contains("current-secret"));
    }
}
