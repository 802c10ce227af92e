//! `kind = "http"`: ask the app's own backend.
//!
//! For each member the gateway sends `POST <url>` with `{"member_id":<id>,"token":"<token>"}`
//! and the configured static headers. `2xx` accepts, `401` and `403` refuse; anything else (a
//! `5xx`, a timeout, a refused connection) refuses *and* is returned as an [`AuthError`], which
//! the gateway logs and counts. Connections to the backend are reused; at most
//! `max_concurrency` requests are in flight (others wait, within the same timeout). `https://`
//! URLs are verified against the Mozilla root certificates, or against `ca_certs` when given
//! (a private PKI).
//!
//! An auth check is idempotent, so a request that fails at the connection level before any
//! response arrived (a kept-alive connection the backend had closed or reset, a refused
//! connect) is sent once more, on a new connection, within the same timeout; see
//! [`HttpCallback::retries`]. A response of any status is never retried, nor is a timeout.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::{AuthError, Authenticator, Credentials, Decision, SetupError, async_trait};

/// The part of a backend's answer read (and then discarded) so the connection can be reused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Settings of an [`HttpCallback`].
#[derive(Clone)]
pub struct HttpCallbackConfig {
    /// `http://host:port/path`.
    pub url: Uri,
    /// Sent with every request (an API key, for example). Values are never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// For the whole exchange, including waiting for a concurrency slot and the retry of a
    /// request that failed at the connection level. Default 1 s.
    pub timeout: Duration,
    /// Requests in flight at once. Default 64.
    pub max_concurrency: usize,
    /// For `https://`: the only roots to trust; empty means the Mozilla roots.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// How long a kept-alive connection may sit idle before it is closed instead of reused.
    /// Shorter than the keep-alive timeout of common backends (5 s for Node.js, Apache,
    /// uvicorn), so the gateway closes an idle connection before the backend does, rather than
    /// sending a request into a close. Default 4 s.
    pub pool_idle_timeout: Duration,
}

impl fmt::Debug for HttpCallbackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpCallbackConfig")
            .field("url", &self.url)
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("ca_certs", &self.ca_certs.len())
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .finish()
    }
}

impl HttpCallbackConfig {
    /// Parses and checks `url`; other settings take their defaults.
    pub fn new(url: &str) -> Result<HttpCallbackConfig, SetupError> {
        let uri: Uri = url
            .parse()
            .map_err(|err| SetupError::Invalid(format!("`{url}` is not a URL: {err}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(SetupError::Invalid(format!(
                "`{url}` is not an http:// or https:// URL"
            )));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(SetupError::Invalid(format!("`{url}` has no host")));
        }
        Ok(HttpCallbackConfig {
            url: uri,
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
            max_concurrency: 64,
            ca_certs: Vec::new(),
            pool_idle_timeout: Duration::from_secs(4),
        })
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Asks an HTTP endpoint of the app's backend. See the module docs.
pub struct HttpCallback {
    config: HttpCallbackConfig,
    /// Keeps connections alive and reuses them.
    client: HttpClient,
    /// Never reuses a connection: for the retry, so that it cannot meet another connection the
    /// backend has closed (a backend that closes one kept-alive connection may close them all).
    fresh: HttpClient,
    slots: Semaphore,
    retries: AtomicU64,
}

impl fmt::Debug for HttpCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCallback")
            .field("config", &self.config)
            .field("retries", &self.retries())
            .finish_non_exhaustive()
    }
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: ...").
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a failed request may be sent again: it failed at the connection level before a
/// response head arrived (the request was not sent, the connection was refused, closed or
/// reset). `false` for everything else: a timeout, bytes that are not HTTP, a bad request.
///
/// hyper reports a connection closed in the middle of a response head like one closed before
/// it; retrying that is still safe, because an auth check changes nothing on the backend.
fn is_connection_failure(err: &hyper_util::client::legacy::Error) -> bool {
    let mut cause = err.source();
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_canceled() || err.is_closed() || err.is_incomplete_message() {
                return true;
            }
            if err.is_parse() || err.is_timeout() || err.is_user() {
                return false;
            }
        } else if let Some(err) = err.downcast_ref::<io::Error>() {
            return matches!(
                err.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        cause = err.source();
    }
    false
}

impl HttpCallback {
    /// Builds the client. Fails only if `ca_certs` holds a certificate rustls cannot use.
    pub fn new(config: HttpCallbackConfig) -> Result<HttpCallback, SetupError> {
        let mut roots = rustls::RootCertStore::empty();
        if config.ca_certs.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for cert in &config.ca_certs {
                roots.add(cert.clone()).map_err(|err| {
                    SetupError::Invalid(format!("a CA certificate is unusable: {err}"))
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| SetupError::Invalid(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let slots = Semaphore::new(config.max_concurrency.max(1));
        Ok(HttpCallback {
            config,
            client,
            fresh,
            slots,
            retries: AtomicU64::new(0),
        })
    }

    /// Requests sent a second time because the first attempt failed at the connection level
    /// before any response (see the module docs), since this callback was built. Each retry is
    /// also logged at debug level with its reason; a retry that fails too is an [`AuthError`].
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn request(&self, creds: Credentials<'_>) -> Result<Request<Full<Bytes>>, AuthError> {
        let body = serde_json::json!({ "member_id": creds.member.get(), "token": creds.token });
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.config.url.clone())
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|err| AuthError::Backend(err.to_string()))
    }

    async fn ask(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| AuthError::Backend("the callback is shutting down".to_owned()))?;
        let response = match self.client.request(self.request(creds)?).await {
            Ok(response) => response,
            Err(err) if is_connection_failure(&err) => {
                let reason = chain(&err);
                let retries = self.retries.fetch_add(1, Ordering::Relaxed) + 1;
                debug!(member = %creds.member, %reason, retries, "auth callback failed before a response; retrying once on a new connection");
                self.fresh
                    .request(self.request(creds)?)
                    .await
                    .map_err(|err| {
                        AuthError::Backend(format!(
                            "{} (on the retry; the first attempt: {reason})",
                            chain(&err)
                        ))
                    })?
            }
            Err(err) => return Err(AuthError::Backend(chain(&err))),
        };
        let status = response.status();
        // Read the body (bounded) so that the connection goes back to the pool.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await;
        match status {
            s if s.is_success() => Ok(Decision::accept()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Decision::refuse_with(format!(
                "the auth endpoint answered {status}"
            ))),
            s => Err(AuthError::Backend(format!(
                "the auth endpoint answered {s}"
            ))),
        }
    }
}

#[async_trait]
impl Authenticator for HttpCallback {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        tokio::time::timeout(self.config.timeout, self.ask(creds))
            .await
            .unwrap_or(Err(AuthError::Timeout))
    }

    fn describe(&self) -> String {
        format!(
            "HTTP callback POST {} (timeout {} ms, {} in flight at most)",
            self.config.url,
            self.config.timeout.as_millis(),
            self.config.max_concurrency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::MemberId;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn ask_once(url: &str) -> (HttpCallback, Result<Decision, AuthError>) {
        let mut config = HttpCallbackConfig::new(url).unwrap();
        config.timeout = Duration::from_secs(5);
        let callback = HttpCallback::new(config).unwrap();
        let member = MemberId::new(1).unwrap();
        let result = callback.authenticate(Credentials::new(member, "t")).await;
        (callback, result)
    }

    #[tokio::test]
    async fn a_refused_connect_is_retried_once_and_stays_an_error() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (callback, result) = ask_once(&format!("http://{addr}/auth")).await;
        let Err(AuthError::Backend(reason)) = result else {
            panic!("expected a backend error, got {result:?}");
        };
        assert!(reason.contains("on the retry"), "{reason}");
        assert_eq!(callback.retries(), 1);
    }

    #[tokio::test]
    async fn bytes_that_are_not_http_are_not_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"SMTP ready\r\n\r\n").await;
        });
        let (callback, result) = ask_once(&format!("http://{addr}/auth")).await;
        let Err(AuthError::Backend(reason)) = result else {
            panic!("expected a backend error, got {result:?}");
        };
        assert!(!reason.contains("on the retry"), "{reason}");
        assert_eq!(callback.retries(), 0);
    }

    #[test]
    fn urls_are_checked_at_setup() {
        assert!(HttpCallbackConfig::new("http://127.0.0.1:9000/auth").is_ok());
        assert!(HttpCallbackConfig::new("https://id.example/auth").is_ok());
        for bad in ["", "not a url", "ftp://host/x", "/auth", "http:///auth"] {
            assert!(HttpCallbackConfig::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values_never_show_in_debug_output() {
        let mut config = HttpCallbackConfig::new("http://127.0.0.1:9000/auth").unwrap();
        config.headers.push((
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("s3cr3t"),
        ));
        let shown = format!("{config:?}");
        assert!(shown.contains("x-api-key") && !shown.contains("s3cr3t"));
    }
}
