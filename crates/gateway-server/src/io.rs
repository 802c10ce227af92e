//! The byte streams connections run over.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a WebSocket runs over: a plain TCP or a TLS connection, or an upgrade
/// completed by hyper.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
