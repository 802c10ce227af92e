//! Errors of the server crate.

use std::path::PathBuf;

/// A configuration that cannot be used. The message names where the value came from (the
/// file, an environment variable, a flag), the key and what is wrong; the binary prints it and
/// exits with 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read (missing, permissions).
    #[error("config file `{}`: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML (`key` is `None`; the message has the line and column), or
    /// a key is unknown or of the wrong type. `origin` names the file, variable or flag.
    #[error("{origin}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Syntax {
        origin: String,
        key: Option<String>,
        message: String,
    },
    /// A key has a value of the right type that is not acceptable.
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        origin: String,
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
