//! Opening one connection: TCP, TLS for `wss://`, the WebSocket upgrade, the auth message and
//! its reply.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::Error;
use crate::event::{AuthOutcome, FINAL_CLOSE_CODES};
use crate::protocol::{Credentials, Incoming};

/// The byte stream under the WebSocket: plain TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// Where and how to connect, checked once before the first connection.
pub(crate) struct Target {
    url: String,
    host: String,
    port: u16,
    /// `Some` for `wss://`.
    tls: Option<tokio_rustls::TlsConnector>,
    websocket: WebSocketConfig,
    credentials: Credentials,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Target {
    pub(crate) fn new(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        max_message_bytes: usize,
        credentials: Credentials,
    ) -> Result<Target, Error> {
        let invalid = |why: &str| Error::InvalidUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let request = url
            .into_client_request()
            .map_err(|err| invalid(&err.to_string()))?;
        let uri = request.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(invalid("the scheme must be ws or wss")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        // `http::Uri` keeps an IPv6 literal's brackets; sockets and TLS want the address.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = secure.then(|| tokio_rustls::TlsConnector::from(tls.unwrap_or_else(web_pki)));
        Ok(Target {
            url: url.to_owned(),
            host,
            port,
            tls,
            websocket: WebSocketConfig::default()
                .max_message_size(Some(max_message_bytes))
                .max_frame_size(Some(max_message_bytes)),
            credentials,
        })
    }

    /// One connection, upgraded and authenticated. The caller bounds it with the connect
    /// timeout.
    pub(crate) async fn open(&self) -> Result<(Ws, AuthOutcome), Error> {
        let connect = |err: &dyn std::fmt::Display| Error::Connect(err.to_string());
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|err| connect(&err))?;
        // Replies and pings are tiny; waiting to coalesce them only adds latency.
        tcp.set_nodelay(true).map_err(|err| connect(&err))?;
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|err| connect(&err))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|err| connect(&err))?,
                )
            }
        };
        let (mut ws, _response) = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            io,
            Some(self.websocket),
        )
        .await
        .map_err(|err| connect(&err))?;
        ws.send(Message::text(self.credentials.auth_message()))
            .await
            .map_err(|err| connect(&err))?;
        let auth = auth_reply(&mut ws).await?;
        Ok((ws, auth))
    }
}

/// Reads up to the first reply, which answers the auth message. A close with a final code,
/// or `400 missing auth message` (read on to its close: 4400 is final, 4408 auth timeout is
/// not), is [`Error::HandshakeRefused`]: trying again cannot help.
async fn auth_reply(ws: &mut Ws) -> Result<AuthOutcome, Error> {
    let mut refused_auth = false;
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(_)) | None if refused_auth => return Err(refused(1005, MISSING_AUTH)),
            None => {
                return Err(Error::Handshake(
                    "the connection ended before the auth reply".into(),
                ));
            }
            Some(Err(err)) => return Err(Error::Handshake(err.to_string())),
        };
        match message {
            Message::Text(text) if !refused_auth => {
                return match Incoming::parse(text.as_str()) {
                    Some(Incoming::Reply(reply))
                        if reply.code == 400 && reply.message == MISSING_AUTH =>
                    {
                        refused_auth = true;
                        continue;
                    }
                    Some(Incoming::Reply(reply)) => reply.auth_outcome(),
                    _ => Err(Error::Handshake(format!(
                        "expected the auth reply, got {:?}",
                        text.as_str()
                    ))),
                };
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                if FINAL_CLOSE_CODES.contains(&code) {
                    return Err(refused(code, &reason));
                }
                return Err(Error::Handshake(format!(
                    "closed with {code} {reason:?} before the auth reply"
                )));
            }
            Message::Text(_)
            | Message::Binary(_)
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::Frame(_) => {}
        }
    }
}

const MISSING_AUTH: &str = "missing auth message";

fn refused(code: u16, reason: &str) -> Error {
    Error::HandshakeRefused {
        code,
        reason: reason.to_owned(),
    }
}

/// Mozilla's roots, with the ring provider the rest of the workspace uses (naming it keeps
/// rustls from having to guess a process-wide default).
fn web_pki() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, Error> {
        Target::new(url, None, 1 << 20, Credentials::Anonymous)
    }

    #[test]
    fn urls_give_host_port_and_tls() {
        let plain = target("ws://127.0.0.1:5000/").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls.is_some()),
            ("127.0.0.1", 5000, false)
        );
        let secure = target("wss://example.com/ws").unwrap();
        assert_eq!(
            (secure.host.as_str(), secure.port, secure.tls.is_some()),
            ("example.com", 443, true)
        );
        let v6 = target("ws://[::1]/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
    }

    #[test]
    fn bad_urls_are_refused_before_connecting() {
        for url in ["http://127.0.0.1:5000/", "127.0.0.1:5000", "", "ws://"] {
            assert!(
                matches!(target(url), Err(Error::InvalidUrl { .. })),
                "{url:?}"
            );
        }
    }
}
