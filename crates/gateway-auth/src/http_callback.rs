//! `kind = "http"`: ask the app's own backend.
//!
//! For each member the gateway sends `POST <url>` with `{"member_id":<id>,"token":"<token>"}`
//! and the configured static headers. `2xx` accepts, `401` and `403` refuse; anything else (a
//! `5xx`, a timeout, a refused connection) refuses *and* is returned as an [`AuthError`], which
//! the gateway logs and counts. Connections to the backend are reused; at most
//! `max_concurrency` requests are in flight (others wait, within the same timeout). `https://`
//! URLs are verified against the Mozilla root certificates, or against `ca_certs` when given
//! (a private PKI).

use std::fmt;
use std::sync::Arc;
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
    /// For the whole exchange, including waiting for a concurrency slot. Default 1 s.
    pub timeout: Duration,
    /// Requests in flight at once. Default 64.
    pub max_concurrency: usize,
    /// For `https://`: the only roots to trust; empty means the Mozilla roots.
    pub ca_certs: Vec<CertificateDer<'static>>,
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
        })
    }
}

/// Asks an HTTP endpoint of the app's backend. See the module docs.
pub struct HttpCallback {
    config: HttpCallbackConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    slots: Semaphore,
}

impl fmt::Debug for HttpCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCallback")
            .field("config", &self.config)
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
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let slots = Semaphore::new(config.max_concurrency.max(1));
        Ok(HttpCallback {
            config,
            client,
            slots,
        })
    }

    async fn ask(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| AuthError::Backend("the callback is shutting down".to_owned()))?;
        let body = serde_json::json!({ "member_id": creds.member.get(), "token": creds.token });
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.config.url.clone())
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|err| AuthError::Backend(err.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| AuthError::Backend(chain(&err)))?;
        let status = response.status();
        // Read the body (bounded) so that the connection goes back to the pool.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await;
        match status {
            s if s.is_success() => Ok(Decision::accept()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Decision::Refuse),
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
