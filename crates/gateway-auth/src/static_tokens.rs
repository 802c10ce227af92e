//! `kind = "static"`: a fixed table of member ids and tokens from the configuration.

use std::collections::HashMap;
use std::fmt;

use gateway_core::MemberId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{AuthError, Authenticator, Credentials, Decision, async_trait};

/// Accepts a member whose token equals the one configured for it.
///
/// Tokens are kept as SHA-256 digests and compared in constant time, so neither the position of
/// the first wrong byte nor the token's length shows in the response time.
#[derive(Clone)]
pub struct StaticTokens {
    digests: HashMap<MemberId, [u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl StaticTokens {
    pub fn new<T: AsRef<str>>(tokens: impl IntoIterator<Item = (MemberId, T)>) -> Self {
        StaticTokens {
            digests: tokens
                .into_iter()
                .map(|(member, token)| (member, digest(token.as_ref())))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// `Ok` if the token is the member's, else why not (for the log).
    fn verify(&self, creds: Credentials<'_>) -> Result<(), &'static str> {
        let presented = digest(creds.token);
        // An unknown member still costs one comparison, against a digest nobody can match
        // by accident, so membership of the table does not show in the timing either.
        let expected = self.digests.get(&creds.member).copied().unwrap_or([0; 32]);
        let equal: bool = presented.ct_eq(&expected).into();
        match (self.digests.contains_key(&creds.member), equal) {
            (true, true) => Ok(()),
            (true, false) => Err("wrong token"),
            (false, _) => Err("member not in [auth.tokens]"),
        }
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("members", &self.digests.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        Ok(match self.verify(creds) {
            Ok(()) => Decision::accept(),
            Err(reason) => Decision::refuse_with(reason),
        })
    }

    fn describe(&self) -> String {
        format!("static tokens ({} members)", self.digests.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: i64) -> MemberId {
        MemberId::new(id).unwrap()
    }

    fn table() -> StaticTokens {
        StaticTokens::new([(member(123456), "654321"), (member(777), "777secret")])
    }

    async fn decide(auth: &StaticTokens, id: i64, token: &str) -> Decision {
        auth.authenticate(Credentials::new(member(id), token))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn accepts_the_configured_token() {
        let auth = table();
        assert_eq!(decide(&auth, 123456, "654321").await, Decision::accept());
        assert_eq!(decide(&auth, 777, "777secret").await, Decision::accept());
    }

    #[tokio::test]
    async fn refuses_wrong_token_other_members_token_unknown_member_and_empty_token() {
        let auth = table();
        let wrong = Decision::refuse_with("wrong token");
        assert_eq!(decide(&auth, 123456, "654320").await, wrong);
        assert_eq!(decide(&auth, 123456, "6543210").await, wrong);
        assert_eq!(decide(&auth, 123456, "777secret").await, wrong);
        assert_eq!(decide(&auth, 123456, "").await, wrong);
        assert_eq!(
            decide(&auth, 42, "654321").await,
            Decision::refuse_with("member not in [auth.tokens]")
        );
    }

    #[tokio::test]
    async fn an_unknown_member_with_the_zero_digest_preimage_is_still_refused() {
        // Even if some token hashed to the placeholder digest, the member must be in the table.
        let auth = StaticTokens::new(Vec::<(MemberId, &str)>::new());
        assert_eq!(
            decide(&auth, 1, "").await,
            Decision::refuse_with("member not in [auth.tokens]")
        );
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let shown = format!("{:?}", table());
        assert!(!shown.contains("654321") && !shown.contains("777secret"));
    }
}
