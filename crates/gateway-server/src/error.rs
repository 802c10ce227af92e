//! Errors of the server crate.

use std::path::PathBuf;

/// A configuration file that cannot be used. The message names the file, the key and what is
/// wrong; the binary prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read (missing, permissions).
    #[error("config file `{}`: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML (`key` is `None`), or a key is unknown or of the wrong type.
    #[error("config file `{}`: {}{message}", path.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        key: Option<String>,
        message: String,
    },
    /// A key has a value of the right type that is not acceptable.
    #[error("config file `{}`: key `{key}`: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// A failure to start or run the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener could not be bound (address in use, permission denied).
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The broker's configuration cannot work (a malformed URL, unreadable credentials).
    #[error("broker: {0}")]
    Broker(#[from] gateway_broker::BrokerError),
}
