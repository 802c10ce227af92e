//! `kind = "jwt"`: JSON Web Tokens, HS256 with a shared secret or RS256/ES256 with a public key.
//!
//! The algorithm is pinned by configuration: a token whose header names another algorithm is
//! refused, so an RS256 public key can never be abused as an HS256 secret. `exp` is required;
//! `exp` and `nbf` are checked against an injected clock with a small leeway; `iss` and `aud`
//! are checked when configured. The member comes from a configurable claim (default `sub`, a
//! string or a number) and must equal the auth message's `member_id`. Optionally a claim lists
//! the private apps the member may join.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::{
    AuthError, Authenticator, Clock, Credentials, Decision, Grant, SetupError, SystemClock,
    async_trait,
};

/// The shortest HMAC secret accepted for HS* algorithms.
pub const MIN_SECRET_BYTES: usize = 16;

/// The algorithms a deployment may pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
}

impl JwtAlgorithm {
    fn to_jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::RS384 => Algorithm::RS384,
            JwtAlgorithm::RS512 => Algorithm::RS512,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::ES384 => Algorithm::ES384,
        }
    }

    fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

impl FromStr for JwtAlgorithm {
    type Err = SetupError;

    fn from_str(s: &str) -> Result<Self, SetupError> {
        Ok(match s {
            "HS256" => JwtAlgorithm::HS256,
            "HS384" => JwtAlgorithm::HS384,
            "HS512" => JwtAlgorithm::HS512,
            "RS256" => JwtAlgorithm::RS256,
            "RS384" => JwtAlgorithm::RS384,
            "RS512" => JwtAlgorithm::RS512,
            "ES256" => JwtAlgorithm::ES256,
            "ES384" => JwtAlgorithm::ES384,
            other => {
                return Err(SetupError::Invalid(format!(
                    "unknown algorithm `{other}`; expected HS256, HS384, HS512, RS256, RS384, \
                     RS512, ES256 or ES384"
                )));
            }
        })
    }
}

/// The verification key.
#[derive(Clone)]
pub enum JwtKey {
    /// For HS*: the shared secret.
    Secret(Vec<u8>),
    /// For RS*/ES*: a PEM public key (`-----BEGIN PUBLIC KEY-----`); `source` names it in
    /// errors (usually the file's path).
    PublicKeyPem { pem: Vec<u8>, source: String },
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtKey::PublicKeyPem { source, .. } => write!(f, "PublicKeyPem({source})"),
        }
    }
}

/// Everything a [`JwtAuthenticator`] checks.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    pub key: JwtKey,
    /// The claim holding the member id (a string of digits or a number). Default `sub`.
    pub member_claim: String,
    /// A claim listing the private apps the member may join; `None`: every private app. When
    /// set, a token without that claim grants no private app.
    pub apps_claim: Option<String>,
    /// Seconds of tolerance for `exp` and `nbf`. Default 5.
    pub leeway_s: u64,
    /// Accepted `iss` values; `None`: not checked.
    pub issuers: Option<Vec<String>>,
    /// Accepted `aud` values; `None`: not checked.
    pub audiences: Option<Vec<String>>,
}

impl JwtConfig {
    /// Defaults for everything but the algorithm and the key.
    pub fn new(algorithm: JwtAlgorithm, key: JwtKey) -> JwtConfig {
        JwtConfig {
            algorithm,
            key,
            member_claim: "sub".to_owned(),
            apps_claim: None,
            leeway_s: 5,
            issuers: None,
            audiences: None,
        }
    }
}

/// Verifies JWTs. See the module docs.
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
    algorithm: JwtAlgorithm,
    member_claim: String,
    apps_claim: Option<String>,
    leeway_s: u64,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithm", &self.algorithm)
            .field("member_claim", &self.member_claim)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    pub fn new(config: JwtConfig) -> Result<JwtAuthenticator, SetupError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(
        config: JwtConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<JwtAuthenticator, SetupError> {
        let algorithm = config.algorithm;
        let key = match (&config.key, algorithm.is_hmac()) {
            (JwtKey::Secret(secret), true) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(SetupError::Invalid(format!(
                        "the secret is shorter than {MIN_SECRET_BYTES} bytes"
                    )));
                }
                DecodingKey::from_secret(secret)
            }
            (JwtKey::PublicKeyPem { pem, source }, false) => {
                let parsed = match algorithm {
                    JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => DecodingKey::from_ec_pem(pem),
                    _ => DecodingKey::from_rsa_pem(pem),
                };
                parsed.map_err(|err| SetupError::KeyFile {
                    path: source.clone(),
                    reason: format!("not a {algorithm:?} public key in PEM form: {err}"),
                })?
            }
            (JwtKey::Secret(_), false) => {
                return Err(SetupError::Missing(
                    "public_key_file (for RS*/ES* algorithms)",
                ));
            }
            (JwtKey::PublicKeyPem { .. }, true) => {
                return Err(SetupError::Missing("secret (for HS* algorithms)"));
            }
        };
        if config.member_claim.is_empty() {
            return Err(SetupError::Missing("member_claim"));
        }

        let mut validation = Validation::new(algorithm.to_jsonwebtoken());
        // Time is checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        // A configured check also requires the claim: jsonwebtoken skips absent ones.
        let mut required = HashSet::from(["exp".to_owned()]);
        match &config.audiences {
            Some(audiences) => {
                validation.set_audience(audiences);
                required.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuers) = &config.issuers {
            validation.set_issuer(issuers);
            required.insert("iss".to_owned());
        }
        validation.required_spec_claims = required;
        Ok(JwtAuthenticator {
            key,
            validation,
            algorithm,
            member_claim: config.member_claim,
            apps_claim: config.apps_claim,
            leeway_s: config.leeway_s,
            clock,
        })
    }

    /// The grant for a token, or why it does not prove the member (for the log).
    fn verify(&self, creds: Credentials<'_>) -> Result<Grant, Cow<'static, str>> {
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(creds.token, &self.key, &self.validation)
                .map_err(|err| refusal(err.kind()))?;
        let claims = data.claims;
        let now = self.clock.unix_seconds();
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or("claim `exp` is not a number of seconds")?;
        if now > exp.saturating_add(self.leeway_s) {
            return Err("token expired".into());
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_u64()
                .ok_or("claim `nbf` is not a number of seconds")?;
            if now.saturating_add(self.leeway_s) < nbf {
                return Err("token not valid yet (nbf)".into());
            }
        }
        let member = match claims.get(&self.member_claim) {
            Some(Value::String(s)) => s.parse::<i64>().ok(),
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| format!("claim `{}` is not a member id", self.member_claim))?;
        if member != creds.member.get() {
            return Err("token issued for another member".into());
        }
        match &self.apps_claim {
            None => Ok(Grant::default()),
            Some(claim) => match claims.get(claim) {
                None => Ok(Grant::only_private_apps(Vec::<String>::new())),
                Some(Value::Array(apps)) => apps
                    .iter()
                    .map(|a| a.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .map(Grant::only_private_apps)
                    .ok_or_else(|| format!("claim `{claim}` is not a list of strings").into()),
                Some(_) => Err(format!("claim `{claim}` is not a list of strings").into()),
            },
        }
    }
}

/// Why `jsonwebtoken` refused a token, in words an operator can act on.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> Cow<'static, str> {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "algorithm not allowed (the configured one is pinned)".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim `{claim}`").into(),
        ErrorKind::InvalidIssuer => "claim `iss` is not an accepted issuer".into(),
        ErrorKind::InvalidAudience => "claim `aud` is not an accepted audience".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token".into(),
        other => format!("invalid token ({other:?})").into(),
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        Ok(match self.verify(creds) {
            Ok(grant) => Decision::Accept(grant),
            Err(reason) => Decision::RefuseWith(reason),
        })
    }

    fn describe(&self) -> String {
        format!(
            "JWT {:?} (member claim `{}`, leeway {} s)",
            self.algorithm, self.member_claim, self.leeway_s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fixed::FixedClock;
    use gateway_core::MemberId;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const SECRET: &[u8] = b"a-jwt-secret-of-32-bytes-length!";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/keys/rsa_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/keys/ec_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/keys/ec_public.pem");

    fn public(pem: &[u8]) -> JwtKey {
        JwtKey::PublicKeyPem {
            pem: pem.to_vec(),
            source: "test.pem".to_owned(),
        }
    }

    fn hs256() -> JwtConfig {
        JwtConfig::new(JwtAlgorithm::HS256, JwtKey::Secret(SECRET.to_vec()))
    }

    fn authenticator(config: JwtConfig) -> JwtAuthenticator {
        JwtAuthenticator::with_clock(config, Arc::new(FixedClock::at(NOW))).unwrap()
    }

    fn sign_hs(alg: Algorithm, claims: &Value) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn claims(sub: Value) -> Value {
        json!({"sub": sub, "exp": NOW + 60})
    }

    fn decide(auth: &JwtAuthenticator, member: i64, token: &str) -> Option<Grant> {
        auth.verify(Credentials::new(MemberId::new(member).unwrap(), token))
            .ok()
    }

    fn reason(auth: &JwtAuthenticator, member: i64, token: &str) -> String {
        auth.verify(Credentials::new(MemberId::new(member).unwrap(), token))
            .expect_err("refused")
            .into_owned()
    }

    #[test]
    fn hs256_accepts_the_member_as_string_or_number() {
        let auth = authenticator(hs256());
        let token = sign_hs(Algorithm::HS256, &claims(json!("123456")));
        assert_eq!(decide(&auth, 123456, &token), Some(Grant::default()));
        let token = sign_hs(Algorithm::HS256, &claims(json!(123456)));
        assert_eq!(decide(&auth, 123456, &token), Some(Grant::default()));
    }

    #[test]
    fn a_token_for_another_member_is_refused() {
        let auth = authenticator(hs256());
        let token = sign_hs(Algorithm::HS256, &claims(json!("1")));
        assert_eq!(decide(&auth, 2, &token), None);
    }

    #[test]
    fn exp_and_nbf_are_checked_with_the_leeway() {
        let auth = authenticator(hs256());
        let expired = sign_hs(Algorithm::HS256, &json!({"sub": "7", "exp": NOW - 6}));
        let just_expired = sign_hs(Algorithm::HS256, &json!({"sub": "7", "exp": NOW - 5}));
        let early = sign_hs(
            Algorithm::HS256,
            &json!({"sub": "7", "exp": NOW + 60, "nbf": NOW + 6}),
        );
        let almost = sign_hs(
            Algorithm::HS256,
            &json!({"sub": "7", "exp": NOW + 60, "nbf": NOW + 5}),
        );
        let no_exp = sign_hs(Algorithm::HS256, &json!({"sub": "7"}));
        assert_eq!(decide(&auth, 7, &expired), None);
        assert!(decide(&auth, 7, &just_expired).is_some());
        assert_eq!(decide(&auth, 7, &early), None);
        assert!(decide(&auth, 7, &almost).is_some());
        assert_eq!(decide(&auth, 7, &no_exp), None, "exp is required");
    }

    #[test]
    fn tampered_malformed_and_empty_tokens_are_refused() {
        let auth = authenticator(hs256());
        let token = sign_hs(Algorithm::HS256, &claims(json!("7")));
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = sign_hs(Algorithm::HS256, &claims(json!("8")));
        let other_payload = other.split('.').nth(1).unwrap();
        parts[1] = other_payload;
        let spliced = parts.join(".");
        let wrong_secret = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!("7")),
            &EncodingKey::from_secret(b"another-secret-of-enough-length"),
        )
        .unwrap();
        for bad in [
            spliced.as_str(),
            &wrong_secret,
            "",
            "abc",
            "a.b.c",
            &token[..token.len() - 2],
        ] {
            assert_eq!(decide(&auth, 7, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_algorithm_is_pinned() {
        let auth = authenticator(hs256());
        let hs512 = sign_hs(Algorithm::HS512, &claims(json!("7")));
        assert_eq!(decide(&auth, 7, &hs512), None);

        // An RS256 deployment never accepts an HS256 token signed with its public key as the
        // HMAC secret (the classic key-confusion attack).
        let rs = authenticator(JwtConfig::new(JwtAlgorithm::RS256, public(RSA_PUBLIC)));
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!("7")),
            &EncodingKey::from_secret(RSA_PUBLIC),
        )
        .unwrap();
        assert_eq!(decide(&rs, 7, &confused), None);
        let unsigned = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            token_payload(&sign_hs(Algorithm::HS256, &claims(json!("7"))))
        );
        assert_eq!(decide(&rs, 7, &unsigned), None);
    }

    fn token_payload(token: &str) -> String {
        token.split('.').nth(1).unwrap().to_owned()
    }

    #[test]
    fn rs256_and_es256_with_public_key_files() {
        let rs = authenticator(JwtConfig::new(JwtAlgorithm::RS256, public(RSA_PUBLIC)));
        let token = encode(
            &Header::new(Algorithm::RS256),
            &claims(json!("7")),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        )
        .unwrap();
        assert!(decide(&rs, 7, &token).is_some());

        let es = authenticator(JwtConfig::new(JwtAlgorithm::ES256, public(EC_PUBLIC)));
        let token = encode(
            &Header::new(Algorithm::ES256),
            &claims(json!("7")),
            &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        )
        .unwrap();
        assert!(decide(&es, 7, &token).is_some());
        // An ES256 token is not an RS256 one.
        assert_eq!(decide(&rs, 7, &token), None);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut config = hs256();
        config.issuers = Some(vec!["https://id.example".to_owned()]);
        config.audiences = Some(vec!["ws-gateway".to_owned()]);
        let auth = authenticator(config);
        let good = json!({"sub":"7","exp":NOW+60,"iss":"https://id.example","aud":"ws-gateway"});
        let bad_iss =
            json!({"sub":"7","exp":NOW+60,"iss":"https://evil.example","aud":"ws-gateway"});
        let bad_aud = json!({"sub":"7","exp":NOW+60,"iss":"https://id.example","aud":"other"});
        let none = json!({"sub":"7","exp":NOW+60});
        assert!(decide(&auth, 7, &sign_hs(Algorithm::HS256, &good)).is_some());
        for claims in [&bad_iss, &bad_aud, &none] {
            assert_eq!(decide(&auth, 7, &sign_hs(Algorithm::HS256, claims)), None);
        }
        // Each refusal says why, for the gateway's log.
        let why = |claims: &Value| reason(&auth, 7, &sign_hs(Algorithm::HS256, claims));
        assert_eq!(why(&bad_iss), "claim `iss` is not an accepted issuer");
        assert_eq!(why(&bad_aud), "claim `aud` is not an accepted audience");
        assert!(why(&none).starts_with("missing claim `"), "{}", why(&none));
        assert_eq!(
            reason(&auth, 8, &sign_hs(Algorithm::HS256, &good)),
            "token issued for another member"
        );
        assert_eq!(reason(&auth, 7, "abc"), "malformed token");
    }

    #[test]
    fn a_custom_member_claim_and_an_apps_claim() {
        let mut config = hs256();
        config.member_claim = "uid".to_owned();
        config.apps_claim = Some("private_apps".to_owned());
        let auth = authenticator(config);
        let with_apps = json!({"uid": 7, "exp": NOW + 60, "private_apps": ["im", "dm"]});
        assert_eq!(
            decide(&auth, 7, &sign_hs(Algorithm::HS256, &with_apps)),
            Some(Grant::only_private_apps(["im", "dm"]))
        );
        let without = json!({"uid": 7, "exp": NOW + 60});
        assert_eq!(
            decide(&auth, 7, &sign_hs(Algorithm::HS256, &without)),
            Some(Grant::only_private_apps(Vec::<String>::new()))
        );
        let malformed = json!({"uid": 7, "exp": NOW + 60, "private_apps": "im"});
        assert_eq!(
            decide(&auth, 7, &sign_hs(Algorithm::HS256, &malformed)),
            None
        );
        let sub_only = json!({"sub": "7", "exp": NOW + 60});
        assert_eq!(
            decide(&auth, 7, &sign_hs(Algorithm::HS256, &sub_only)),
            None
        );
    }

    #[test]
    fn setup_errors_are_clear() {
        let short = JwtConfig::new(JwtAlgorithm::HS256, JwtKey::Secret(b"short".to_vec()));
        assert!(
            JwtAuthenticator::new(short)
                .unwrap_err()
                .to_string()
                .contains("shorter")
        );
        let rs_with_secret = JwtConfig::new(JwtAlgorithm::RS256, JwtKey::Secret(SECRET.to_vec()));
        assert!(
            JwtAuthenticator::new(rs_with_secret)
                .unwrap_err()
                .to_string()
                .contains("public_key_file")
        );
        let garbage = JwtConfig::new(JwtAlgorithm::RS256, public(b"not a key"));
        let err = JwtAuthenticator::new(garbage).unwrap_err().to_string();
        assert!(err.starts_with("key file `test.pem`"), "{err}");
        let ec_as_rsa = JwtConfig::new(JwtAlgorithm::RS256, public(EC_PUBLIC));
        assert!(JwtAuthenticator::new(ec_as_rsa).is_err());
        assert!("XS256".parse::<JwtAlgorithm>().is_err());
    }
}
