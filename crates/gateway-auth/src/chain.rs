//! Several authenticators, tried in order: the first that accepts wins.

use std::sync::Arc;

use crate::{AuthError, Authenticator, Credentials, Decision, async_trait};

/// Asks each authenticator in turn and returns the first acceptance. If none accepts, the
/// result is a refusal, unless one of them failed: then its error is returned, so that a
/// backend outage is logged and counted rather than hidden behind a refusal.
#[derive(Clone, Default)]
pub struct Chain {
    links: Vec<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.links.iter().map(|a| a.describe()))
            .finish()
    }
}

impl Chain {
    pub fn new() -> Chain {
        Chain::default()
    }

    /// Adds an authenticator, asked after the ones already there.
    pub fn then(mut self, authenticator: impl Authenticator) -> Chain {
        self.links.push(Arc::new(authenticator));
        self
    }
}

#[async_trait]
impl Authenticator for Chain {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        let mut failure = None;
        // The last refusal says why (the others are in the log only at debug level).
        let mut refusal = Decision::Refuse;
        for link in &self.links {
            match link.authenticate(creds).await {
                Ok(Decision::Accept(grant)) => return Ok(Decision::Accept(grant)),
                Ok(refused) => refusal = refused,
                Err(err) => failure = Some(err),
            }
        }
        failure.map_or(Ok(refusal), Err)
    }

    fn describe(&self) -> String {
        let links: Vec<String> = self.links.iter().map(|a| a.describe()).collect();
        format!("first of [{}]", links.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AnonymousOnly, StaticTokens};
    use gateway_core::MemberId;

    #[derive(Debug)]
    struct Down;

    #[async_trait]
    impl Authenticator for Down {
        async fn authenticate(&self, _: Credentials<'_>) -> Result<Decision, AuthError> {
            Err(AuthError::Timeout)
        }
    }

    fn creds(member: i64, token: &str) -> Credentials<'_> {
        Credentials::new(MemberId::new(member).unwrap(), token)
    }

    #[tokio::test]
    async fn the_first_that_accepts_wins() {
        let chain = Chain::new()
            .then(AnonymousOnly)
            .then(Down)
            .then(StaticTokens::new([(MemberId::new(7).unwrap(), "seven")]));
        assert_eq!(
            chain.authenticate(creds(7, "seven")).await.unwrap(),
            Decision::accept()
        );
    }

    #[tokio::test]
    async fn all_refusing_is_a_refusal_but_a_failure_is_reported() {
        let refusing = Chain::new().then(AnonymousOnly).then(AnonymousOnly);
        assert_eq!(
            refusing.authenticate(creds(7, "x")).await.unwrap(),
            Decision::refuse_with("anonymous only (no [auth] configured)")
        );
        let failing = Chain::new().then(AnonymousOnly).then(Down);
        assert!(matches!(
            failing.authenticate(creds(7, "x")).await,
            Err(AuthError::Timeout)
        ));
        assert_eq!(
            Chain::new().authenticate(creds(7, "x")).await.unwrap(),
            Decision::Refuse
        );
    }
}
