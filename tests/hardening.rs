//! Issue 4's defences, end to end: heartbeats, every limit at its boundary, malformed frames,
//! push access control, origins, overload, TLS and shutdown delivering what was accepted.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway_core::CloseCode;
use gateway_server::ServerConfig;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

// --- heartbeats -----------------------------------------------------------------------------

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_while_a_live_one_stays() {
    let mut config = ServerConfig::default();
    config.timeouts.ping_interval = Duration::from_millis(150);
    config.timeouts.idle = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;

    let mut silent = server.anonymous().await;
    silent.subscribe("idle").await;
    let mut live = server.anonymous().await;
    live.subscribe("idle").await;
    // The live client reads (so tungstenite answers pings) and reports the pings it saw.
    let (pings_tx, mut pings) = tokio::sync::mpsc::unbounded_channel();
    let live_task = tokio::spawn(async move {
        while let Some(Ok(message)) = live.ws.next().await {
            if let Message::Ping(_) = message {
                let _ = pings_tx.send(());
            }
        }
    });

    // The silent one (not even reading, so never answering pings) is closed and cleaned up.
    server.wait_for_stat("idle 1\n").await;
    assert_eq!(server.counters.closes(CloseCode::IdleTimeout), 1);
    // The live one lived through several ping intervals.
    for _ in 0..4 {
        guard("a ping", pings.recv()).await.unwrap();
    }
    assert_eq!(server.stat().await, "idle 1\n");
    assert_eq!(server.counters.closes(CloseCode::IdleTimeout), 1);
    // What the silent client finds when it looks again: the ping, then 4101.
    match silent.ws.next().await {
        Some(Ok(Message::Ping(_))) => {}
        other => panic!("expected the server's ping, got {other:?}"),
    }
    silent.expect_close(4101).await;
    live_task.abort();
}

// --- limits at their boundaries -------------------------------------------------------------

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_a_freed_slot_is_reusable() {
    let mut config = ServerConfig::default();
    config.limits.max_connections = 3;
    let server = TestServer::with_config(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.anonymous().await);
    }
    let refused = tokio_tungstenite::connect_async(server.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()["retry-after"], "1");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(server.counters.upgrades_refused(), 1);
    held.pop().unwrap().close().await;
    // The slot frees when the closed connection's task ends.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.url()).await {
            drop(ws);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_get_429_too_many_subscriptions() {
    let mut config = ServerConfig::default();
    config.hub.max_subscriptions = 2;
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    client.subscribe("a").await;
    client.subscribe("b").await;
    client.send(r#"{"app":"c"}"#).await;
    client.expect(&reply(429, "too many subscriptions")).await;
    client.subscribe("a").await; // still idempotent
    assert_eq!(server.stat().await, "a 1\nb 1\n");
}

#[tokio::test]
async fn messages_beyond_the_burst_close_with_4429() {
    let mut config = ServerConfig::default();
    config.limits.message_burst = 5;
    config.limits.max_messages_per_s = 1;
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    for i in 0..6 {
        client.send(&format!(r#"{{"app":"a{i}"}}"#)).await;
    }
    let replies = client.expect_close(4429).await;
    // Every frame counts: the auth message took the first of the 5.
    let expected: Vec<String> = (0..4).map(|i| subscribed(&format!("a{i}"))).collect();
    assert_eq!(replies, expected);
    assert_eq!(server.counters.closes(CloseCode::TooManyMessages), 1);
}

#[tokio::test]
async fn the_app_name_limit_holds_for_subscribe_and_push() {
    let mut config = ServerConfig::default();
    config.hub.max_app_name_len = 8;
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    client.subscribe("12345678").await;
    client.send(r#"{"app":"123456789"}"#).await;
    client.expect(&bad_subscribe()).await;
    assert_eq!(
        server.push(r#"{"app":"123456789","text":"x"}"#).await.0,
        StatusCode::BAD_REQUEST
    );
    server.push_ok("12345678", -1, "x").await;
    client
        .expect(r#"{"app":"12345678","member_id":-1,"text":"x"}"#)
        .await;
}

// --- malformed frames -----------------------------------------------------------------------

#[tokio::test]
async fn a_fragmented_message_is_reassembled() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client
        .ws
        .send(raw_frame(OpCode::Data(Data::Text), false, br#"{"app":"#))
        .await
        .unwrap();
    client
        .ws
        .send(raw_frame(OpCode::Data(Data::Continue), true, br#""frag"}"#))
        .await
        .unwrap();
    client.expect(&subscribed("frag")).await;
}

#[tokio::test]
async fn a_text_frame_with_invalid_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client
        .ws
        .send(raw_frame(
            OpCode::Data(Data::Text),
            true,
            b"{\"app\":\"\xff\"}",
        ))
        .await
        .unwrap();
    client.expect_close(1007).await;
}

/// Upgrades a raw TCP connection and returns it, the 101 response consumed.
async fn raw_upgrade(server: &TestServer) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

/// Reads server frames until a close frame; returns its code.
async fn raw_close_code(tcp: &mut TcpStream) -> u16 {
    guard("a close frame", async {
        loop {
            let opcode = tcp.read_u8().await.unwrap() & 0x0f;
            let len = usize::from(tcp.read_u8().await.unwrap() & 0x7f);
            assert!(len < 126, "short frames only here");
            let mut payload = vec![0; len];
            tcp.read_exact(&mut payload).await.unwrap();
            if opcode == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    })
    .await
}

#[tokio::test]
async fn garbage_after_the_upgrade_closes_with_1002() {
    let server = TestServer::start().await;
    // An unmasked client frame is a protocol violation (RFC 6455 §5.1).
    let mut tcp = raw_upgrade(&server).await;
    tcp.write_all(b"\x81\x05hello").await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, 1002);
    // Reserved bits and opcodes too.
    let mut tcp = raw_upgrade(&server).await;
    tcp.write_all(b"\xf3\x80\x00\x00\x00\x00").await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, 1002);
    // The server is fine.
    server.anonymous().await;
}

// --- the push API ---------------------------------------------------------------------------

const KEY: &str = "push-key-0123456789";

#[tokio::test]
async fn with_push_api_keys_a_push_needs_a_bearer_key() {
    let mut config = ServerConfig::default();
    config.access.push_api_keys = vec!["another-key-abcdefgh".to_owned(), KEY.to_owned()];
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    let body = Bytes::from_static(br#"{"app":"match","text":"x"}"#);

    let (status, headers, _) = http_with(server.addr, "POST", "/push", &[], body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    for wrong in [
        "Bearer wrong-key-0123456789",
        "Basic cHVzaDprZXk=",
        "Bearer",
        KEY,
    ] {
        let (status, _, _) = http_with(
            server.addr,
            "POST",
            "/push",
            &[("authorization", wrong)],
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let bearer = format!("Bearer {KEY}");
    let (status, _, _) = http_with(
        server.addr,
        "POST",
        "/push",
        &[("authorization", &bearer)],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"x"}"#)
        .await;
}

#[tokio::test]
async fn without_keys_pushes_from_outside_the_allow_list_get_403() {
    let mut config = ServerConfig::default();
    config.access.push_allow_from = vec!["10.0.0.0/8".parse().unwrap()];
    let server = TestServer::with_config(config).await;
    let (status, body) = server.push(r#"{"app":"match","text":"x"}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "push is not allowed from this address\n");
    // The default allows loopback.
    let default = TestServer::start().await;
    assert_eq!(
        default.push(r#"{"app":"match","text":"x"}"#).await.0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn push_bodies_beyond_the_buffered_bytes_bound_get_503_with_retry_after() {
    let mut config = ServerConfig::default();
    config.limits.max_push_body_bytes = 1000;
    config.limits.max_buffered_push_bytes = 1000;
    // The slow body is never old enough to be evicted for room here (see tests/attacks).
    config.timeouts.evict_after = Duration::from_secs(60);
    let server = TestServer::with_config(config).await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("match").await;

    // Two pushes whose bodies arrive in pieces: one holds 900 bytes and waits for its last
    // one, the other sends 150 of its 175. Together they would hold more than 1000 bytes, so
    // whichever the gateway reads second is refused at once, and the other waits.
    let long = format!(r#"{{"app":"match","text":"{}"}}"#, "l".repeat(875));
    let short = format!(r#"{{"app":"match","text":"{}"}}"#, "s".repeat(150));
    assert_eq!((long.len(), short.len()), (900, 175));
    let start = |body: &str, sent: usize| {
        let head = format!(
            "POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len() + 1
        );
        let first = [head.as_bytes(), &body.as_bytes()[..sent]].concat();
        async move {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(&first).await.unwrap();
            stream
        }
    };
    let mut pushes = [start(&long, 900).await, start(&short, 150).await];
    let [a, b] = &mut pushes;
    let (refused, answer) = tokio::select! {
        answer = read_until_closed(a) => (0, answer),
        answer = read_until_closed(b) => (1, answer),
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.ends_with("overloaded\n"), "{answer}");
    // A push that arrives in one piece is not waiting for bytes, and goes through beside it.
    server.push_ok("match", -1, "small").await;
    subscriber
        .expect(r#"{"app":"match","member_id":-1,"text":"small"}"#)
        .await;

    // The waiting one completes (its last byte is a space after the object): 202, delivered.
    let (waiting, rest, body) = if refused == 0 {
        (&mut pushes[1], &short.as_bytes()[150..], &short)
    } else {
        (&mut pushes[0], &b""[..], &long)
    };
    waiting.write_all(rest).await.unwrap();
    waiting.write_all(b" ").await.unwrap();
    let mut response = [0u8; 12];
    waiting.read_exact(&mut response).await.unwrap();
    assert_eq!(&response, b"HTTP/1.1 202");
    let text = &body[r#"{"app":"match","text":""#.len()..body.len() - 2];
    subscriber
        .expect(&format!(
            r#"{{"app":"match","member_id":-1,"text":"{text}"}}"#
        ))
        .await;
}

// --- origins --------------------------------------------------------------------------------

#[tokio::test]
async fn upgrades_from_an_origin_outside_the_allow_list_get_403() {
    let mut config = ServerConfig::default();
    config.access.allowed_origins = Some(vec!["https://app.example.com".to_owned()]);
    let server = TestServer::with_config(config).await;
    let upgrade = |origin: Option<&'static str>| {
        let mut headers = vec![
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        headers.extend(origin.map(|o| ("origin", o)));
        headers
    };
    for (origin, expected) in [
        (Some("https://evil.example.com"), StatusCode::FORBIDDEN),
        (
            Some("https://app.example.com"),
            StatusCode::SWITCHING_PROTOCOLS,
        ),
        (
            Some("HTTPS://APP.EXAMPLE.COM"),
            StatusCode::SWITCHING_PROTOCOLS,
        ),
        (None, StatusCode::SWITCHING_PROTOCOLS),
    ] {
        let (status, _, _) =
            http_with(server.addr, "GET", "/", &upgrade(origin), Bytes::new()).await;
        assert_eq!(status, expected, "{origin:?}");
    }
}

// --- shutdown -------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_delivers_the_pushes_already_accepted_before_1001() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    for n in 0..50 {
        server.push_ok("match", -1, &format!("{n}")).await;
    }
    let reading = tokio::spawn(async move { client.expect_close(1001).await });
    server.shutdown().await;
    let received = guard("the client", reading).await.unwrap();
    let expected: Vec<String> = (0..50)
        .map(|n| format!(r#"{{"app":"match","member_id":-1,"text":"{n}"}}"#))
        .collect();
    assert_eq!(received, expected);
}

// --- TLS ------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_serves_wss_https_push_and_https_stat_with_a_self_signed_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls = gateway_server::tls::load(&cert_file, &key_file).unwrap();
    let config = ServerConfig {
        tls: Some(tls.clone()),
        stat_tls: Some(tls),
        ..ServerConfig::default()
    };
    let server = TestServer::with_config(config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // wss://
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls_stream = connector.connect(name.clone(), tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls_stream)
        .await
        .unwrap();
    ws.send(Message::text(r#"{"member_id":-1,"token":""}"#))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"app":"secure"}"#)).await.unwrap();
    let mut next_text = async || match guard("a frame", ws.next()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    };
    assert_eq!(next_text().await, hello_stranger());
    assert_eq!(next_text().await, subscribed("secure"));

    // https:// push and stat
    let request = |addr, method: &str, path: &str, body: &'static str| {
        let connector = connector.clone();
        let name = name.clone();
        let (method, path) = (method.to_owned(), path.to_owned());
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let stream = connector.connect(name, tcp).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let request = hyper::Request::builder()
                .method(method.as_str())
                .uri(path)
                .header("host", "localhost")
                .body(http_body_util::Full::new(Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, _) = request(
        server.addr,
        "POST",
        "/push",
        r#"{"app":"secure","text":"s"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        next_text().await,
        r#"{"app":"secure","member_id":-1,"text":"s"}"#
    );
    assert_eq!(
        request(server.stat_addr, "GET", "/stat", "").await,
        (StatusCode::OK, "secure 1\n".to_owned())
    );

    // A plain-text client gets nowhere.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /stat HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!buf.starts_with(b"HTTP/1.1"));
}
