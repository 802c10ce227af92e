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

/// An authenticator cannot be built from its configuration. Raised at start-up, never later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A required setting (a secret, a key file, a URL) is missing or empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A setting has a value that cannot work (a too short secret, an unknown algorithm).
    #[error("{0}")]
    Invalid(String),
    /// A key file cannot be read or parsed.
    #[error("key file `{path}`: {reason}")]
    KeyFile { path: String, reason: String },
}
