//! Errors of authenticators.

/// An authenticator could not decide. The gateway treats the client as refused (it continues
/// anonymously with a 401 reply), logs the error and counts it as an auth-backend error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The backend that decides (a service, a key store) failed or was unreachable.
    #[error("auth backend failed: {0}")]
    Backend(String),
    /// The backend did not answer in time.
    #[error("auth backend timed out")]
    Timeout,
}
