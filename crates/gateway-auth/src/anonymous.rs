//! `kind = "anonymous"`: nobody is a member.

use crate::{AuthError, Authenticator, Credentials, Decision, async_trait};

/// Refuses every member, so every connection is anonymous (members get the 401 reply and stay
/// connected). The default when no `[auth]` is configured: safe, and enough for public apps.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnonymousOnly;

#[async_trait]
impl Authenticator for AnonymousOnly {
    async fn authenticate(&self, _creds: Credentials<'_>) -> Result<Decision, AuthError> {
        Ok(Decision::refuse_with(
            "anonymous only (no [auth] configured)",
        ))
    }

    fn describe(&self) -> String {
        "anonymous only (every member is refused and continues as anonymous)".to_owned()
    }
}
