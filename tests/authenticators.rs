//! Each authenticator kind through a real WebSocket connection; the HTTP kind against a real
//! auth backend started here (accepting, refusing, failing, slow, down), and proof that a slow
//! or dead backend holds up nobody else.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use gateway_auth::{
    HmacTokens, HttpCallbackConfig, JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKey,
    mint_hmac_token,
};
use gateway_core::{AppName, MemberId};
use gateway_server::{AuthConfig, CacheSettings, Counters, ServerConfig};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const SECRET: &str = "a-shared-secret-for-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn member(id: i64) -> MemberId {
    MemberId::new(id).unwrap()
}

fn config_with_private(apps: &[&str]) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.hub.private_apps = apps
        .iter()
        .map(|a| AppName::parse(a, 128).unwrap())
        .collect();
    config
}

async fn auth_reply(server: &TestServer, member: i64, token: &str) -> (Client, String) {
    let mut client = server.connect().await;
    let auth = serde_json::json!({"member_id": member, "token": token});
    client.send(&auth.to_string()).await;
    let reply = client.recv().await;
    (client, reply)
}

// --- hmac -----------------------------------------------------------------------------------

#[tokio::test]
async fn hmac_tokens_authenticate_only_their_member_until_they_expire() {
    let tokens = HmacTokens::new(vec![SECRET.as_bytes().to_vec()], 0).unwrap();
    let server = TestServer::with(ServerConfig::default(), Arc::new(tokens.clone())).await;

    let token = tokens.mint(member(123456), 3600);
    let (mut client, reply) = auth_reply(&server, 123456, &token).await;
    assert_eq!(reply, hello(123456));
    client.subscribe("im").await;

    assert_eq!(auth_reply(&server, 654321, &token).await.1, unauthorized());
    let expired = mint_hmac_token(SECRET.as_bytes(), member(123456), now() - 10);
    assert_eq!(
        auth_reply(&server, 123456, &expired).await.1,
        unauthorized()
    );
    let other_secret = mint_hmac_token(b"another-secret-entirely", member(123456), now() + 60);
    assert_eq!(
        auth_reply(&server, 123456, &other_secret).await.1,
        unauthorized()
    );
    assert_eq!(auth_reply(&server, 123456, "").await.1, unauthorized());
}

// --- jwt ------------------------------------------------------------------------------------

fn jwt(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_authenticates_the_sub_member_and_its_private_apps_claim() {
    let mut config = JwtConfig::new(
        JwtAlgorithm::HS256,
        JwtKey::Secret(SECRET.as_bytes().to_vec()),
    );
    config.apps_claim = Some("private_apps".to_owned());
    let server = TestServer::with(
        config_with_private(&["im", "dm"]),
        Arc::new(JwtAuthenticator::new(config).unwrap()),
    )
    .await;

    let token = jwt(serde_json::json!({"sub": "777", "exp": now() + 60, "private_apps": ["dm"]}));
    let (mut client, reply) = auth_reply(&server, 777, &token).await;
    assert_eq!(reply, hello(777));
    client.subscribe("dm").await;
    client.send(r#"{"app":"im"}"#).await;
    client.expect(&forbidden("im")).await;

    assert_eq!(auth_reply(&server, 778, &token).await.1, unauthorized());
    let expired = jwt(serde_json::json!({"sub": "777", "exp": now() - 60}));
    assert_eq!(auth_reply(&server, 777, &expired).await.1, unauthorized());
}

#[tokio::test]
async fn jwt_rs256_from_a_public_key_file() {
    let keys = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/gateway-auth/tests/keys"
    );
    let public = std::fs::read(format!("{keys}/rsa_public.pem")).unwrap();
    let private = std::fs::read(format!("{keys}/rsa_private.pem")).unwrap();
    let config = JwtConfig::new(
        JwtAlgorithm::RS256,
        JwtKey::PublicKeyPem {
            pem: public,
            source: "rsa_public.pem".to_owned(),
        },
    );
    let server = TestServer::with(
        ServerConfig::default(),
        Arc::new(JwtAuthenticator::new(config).unwrap()),
    )
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({"sub": 42, "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(auth_reply(&server, 42, &token).await.1, hello(42));
    // HS256 signed with the public key: the key-confusion attack.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": 42, "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(
            &std::fs::read(format!("{keys}/rsa_public.pem")).unwrap(),
        ),
    )
    .unwrap();
    assert_eq!(auth_reply(&server, 42, &confused).await.1, unauthorized());
}

// --- http callback --------------------------------------------------------------------------

/// An auth backend: member 1 and 11 → 200, 2 → 401, 3 → 403, 4 → 500, 5 → held until
/// released. Counts TCP connections and requests, and checks the request's shape.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// The most requests the backend was handling at once.
    max_in_flight: Arc<AtomicUsize>,
    /// Notified when a held request has arrived.
    held: Arc<Notify>,
    /// Notify to answer the held requests (200).
    release: Arc<Notify>,
}

impl Backend {
    async fn start() -> Backend {
        Self::start_with(None).await
    }

    /// With `tls`, the backend speaks HTTPS.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            requests: Arc::default(),
            max_in_flight: Arc::default(),
            held: Arc::default(),
            release: Arc::default(),
        };
        let (connections, requests) = (backend.connections.clone(), backend.requests.clone());
        let max_in_flight = backend.max_in_flight.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (held, release) = (backend.held.clone(), backend.release.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let (requests, held, release) = (requests.clone(), held.clone(), release.clone());
                let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (requests, held, release) =
                            (requests.clone(), held.clone(), release.clone());
                        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                        async move {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            max_in_flight.fetch_max(now, Ordering::SeqCst);
                            assert_eq!(req.method(), "POST");
                            assert_eq!(req.uri().path(), "/auth");
                            assert_eq!(req.headers()["content-type"], "application/json");
                            assert_eq!(req.headers()["x-api-key"], "backend-key");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let token = body["token"].as_str().unwrap();
                            let status = match body["member_id"].as_i64().unwrap() {
                                1 | 11 if token == "good" => StatusCode::OK,
                                2 => StatusCode::UNAUTHORIZED,
                                3 => StatusCode::FORBIDDEN,
                                4 => StatusCode::INTERNAL_SERVER_ERROR,
                                5 => {
                                    held.notify_one();
                                    release.notified().await;
                                    StatusCode::OK
                                }
                                _ => StatusCode::UNAUTHORIZED,
                            };
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        backend
    }
}

fn http_auth(addr: SocketAddr, timeout: Duration, cache: Option<CacheSettings>) -> AuthConfig {
    let mut callback = HttpCallbackConfig::new(&format!("http://{addr}/auth")).unwrap();
    callback.timeout = timeout;
    callback.headers.push((
        http::header::HeaderName::from_static("x-api-key"),
        http::header::HeaderValue::from_static("backend-key"),
    ));
    AuthConfig::Http { callback, cache }
}

async fn server_with(auth: AuthConfig) -> (TestServer, Arc<Counters>) {
    let server = TestServer::with(ServerConfig::default(), auth.build()).await;
    let counters = server.counters.clone();
    (server, counters)
}

#[tokio::test]
async fn http_callback_accepts_refuses_and_counts_backend_errors() {
    let backend = Backend::start().await;
    let (server, counters) =
        server_with(http_auth(backend.addr, Duration::from_secs(5), None)).await;

    assert_eq!(auth_reply(&server, 1, "good").await.1, hello(1));
    assert_eq!(auth_reply(&server, 1, "bad").await.1, unauthorized());
    assert_eq!(auth_reply(&server, 2, "x").await.1, unauthorized());
    assert_eq!(auth_reply(&server, 3, "x").await.1, unauthorized());
    assert_eq!(counters.auth_backend_errors(), 0, "refusals are not errors");
    assert_eq!(auth_reply(&server, 4, "x").await.1, unauthorized());
    assert_eq!(counters.auth_backend_errors(), 1, "a 500 is an error");
    // Sequential requests reuse one connection to the backend.
    assert_eq!(backend.requests.load(Ordering::SeqCst), 5);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_down_auth_backend_refuses_and_counts() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (server, counters) = server_with(http_auth(addr, Duration::from_secs(5), None)).await;
    assert_eq!(auth_reply(&server, 1, "good").await.1, unauthorized());
    assert_eq!(counters.auth_backend_errors(), 1);
    // Anonymous clients do not need the backend at all.
    server.anonymous().await;
}

#[tokio::test]
async fn a_slow_auth_backend_times_out_and_blocks_nobody_else() {
    let backend = Backend::start().await;
    let (server, counters) =
        server_with(http_auth(backend.addr, Duration::from_millis(1500), None)).await;

    // Member 5's auth request is held by the backend.
    let mut slow = server.connect().await;
    slow.send(r#"{"member_id":5,"token":"x"}"#).await;
    guard("the held request", backend.held.notified()).await;

    // Meanwhile others authenticate (through the same backend), subscribe and get pushes.
    let mut fast = server.member(1, "good").await;
    fast.subscribe("match").await;
    let mut anonymous = server.anonymous().await;
    anonymous.subscribe("match").await;
    server.push_ok("match", -1, "while auth is slow").await;
    let frame = r#"{"app":"match","member_id":-1,"text":"while auth is slow"}"#;
    fast.expect(frame).await;
    anonymous.expect(frame).await;
    assert_eq!(counters.auth_backend_errors(), 0);

    // The held one times out: refused, counted, and the connection continues anonymously.
    slow.expect(&unauthorized()).await;
    assert_eq!(counters.auth_backend_errors(), 1);
    slow.subscribe("match").await;
    backend.release.notify_waiters();
}

#[tokio::test]
async fn the_cache_spares_the_backend_on_reconnect() {
    let backend = Backend::start().await;
    let cache = CacheSettings {
        ttl: Duration::from_secs(60),
        max_entries: 100,
    };
    let (server, _) =
        server_with(http_auth(backend.addr, Duration::from_secs(5), Some(cache))).await;
    for _ in 0..5 {
        assert_eq!(auth_reply(&server, 11, "good").await.1, hello(11));
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    // A refusal is not cached: every attempt asks again.
    for _ in 0..2 {
        assert_eq!(auth_reply(&server, 2, "x").await.1, unauthorized());
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http_callback_over_https_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(gateway_server::tls::load(&cert_file, &key_file).unwrap());
    let backend = Backend::start_with(Some(acceptor)).await;
    let url = format!("https://localhost:{}/auth", backend.addr.port());

    let mut callback = HttpCallbackConfig::new(&url).unwrap();
    callback.headers.push((
        http::header::HeaderName::from_static("x-api-key"),
        http::header::HeaderValue::from_static("backend-key"),
    ));
    callback.ca_certs = vec![cert.cert.der().clone()];
    let (server, counters) = server_with(AuthConfig::Http {
        callback: callback.clone(),
        cache: None,
    })
    .await;
    assert_eq!(auth_reply(&server, 1, "good").await.1, hello(1));
    assert_eq!(auth_reply(&server, 2, "x").await.1, unauthorized());
    assert_eq!(counters.auth_backend_errors(), 0);

    // Without the private CA the certificate is not trusted: refused and counted.
    callback.ca_certs.clear();
    let (untrusting, counters) = server_with(AuthConfig::Http {
        callback,
        cache: None,
    })
    .await;
    assert_eq!(auth_reply(&untrusting, 1, "good").await.1, unauthorized());
    assert_eq!(counters.auth_backend_errors(), 1);
}

#[tokio::test]
async fn the_callback_keeps_at_most_max_concurrency_requests_in_flight() {
    let backend = Backend::start().await;
    let AuthConfig::Http {
        mut callback,
        cache,
    } = http_auth(backend.addr, Duration::from_secs(10), None)
    else {
        unreachable!()
    };
    callback.max_concurrency = 1;
    let (server, counters) = server_with(AuthConfig::Http { callback, cache }).await;

    // The only slot is taken by a request the backend holds.
    let mut held = server.connect().await;
    held.send(r#"{"member_id":5,"token":"x"}"#).await;
    guard("the held request", backend.held.notified()).await;
    // Others ask meanwhile; they wait for the slot instead of reaching the backend.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut client = server.connect().await;
        client.send(r#"{"member_id":1,"token":"good"}"#).await;
        waiting.push(client);
    }
    server.anonymous().await; // a round trip, so the waiting auths have been read
    backend.release.notify_waiters();
    held.expect(&hello(5)).await;
    for mut client in waiting {
        client.expect(&hello(1)).await;
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 6);
    assert_eq!(backend.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(counters.auth_backend_errors(), 0);
}
