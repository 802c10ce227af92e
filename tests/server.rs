//! Behaviour of the server around the protocol: pings, size limits, HTTP upgrade refusals,
//! a client that stops reading, and shutdown.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway_server::ServerConfig;
use hyper::StatusCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn pings_are_answered_with_pongs_before_and_after_auth() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for payload in [&b"before auth"[..], b"after auth"] {
        if payload == b"after auth" {
            client.send(r#"{"member_id":-1,"token":""}"#).await;
            client.expect(&hello_stranger()).await;
        }
        client
            .ws
            .send(Message::Ping(Bytes::copy_from_slice(payload)))
            .await
            .unwrap();
        let pong = guard("a pong", client.ws.next()).await.unwrap().unwrap();
        assert_eq!(pong, Message::Pong(Bytes::copy_from_slice(payload)));
    }
}

#[tokio::test]
async fn client_messages_up_to_the_limit_pass_and_one_byte_more_closes_with_1009() {
    let mut config = ServerConfig::default();
    config.limits.max_message_bytes = 64;
    let server = TestServer::with_config(config).await;
    let message = |len: usize| format!(r#"{{"app":"{}"}}"#, "a".repeat(len - 10));
    assert_eq!(message(64).len(), 64);

    let mut client = server.anonymous().await;
    client.send(&message(64)).await;
    client.expect(&subscribed(&"a".repeat(54))).await;
    client.send(&message(65)).await;
    client.expect_close(1009).await;
    server.wait_for_stat("").await;
}

#[tokio::test]
async fn bad_upgrade_requests_are_refused_with_a_status() {
    let server = TestServer::start().await;
    let upgrade = |version: &'static str| {
        vec![
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", version),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
    };
    let (status, headers, _) =
        http_with(server.addr, "GET", "/", &upgrade("8"), Bytes::new()).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(headers["sec-websocket-version"], "13");

    let mut no_key = upgrade("13");
    no_key.pop();
    let (status, _, _) = http_with(server.addr, "GET", "/", &no_key, Bytes::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, _) = http_with(server.addr, "POST", "/", &upgrade("13"), Bytes::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_client_close_is_echoed_and_cleans_up() {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    assert_eq!(server.stat().await, "match 1\n");
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    client.ws.close(Some(frame)).await.unwrap();
    let echo = guard("the close echo", client.ws.next()).await;
    match echo {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the echoed close frame, got {other:?}"),
    }
    server.wait_for_stat("").await;
}

#[tokio::test]
async fn any_path_upgrades() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&format!("ws://{}/ws/anything?x=1", server.addr)).await;
    client.send(r#"{"member_id":-1,"token":""}"#).await;
    client.expect(&hello_stranger()).await;
}

/// A subscriber that never reads fills only its own queue: the others receive every push, in
/// order, and the stuck one is closed with 4100 (after the frames already sent).
#[tokio::test]
async fn a_client_that_stops_reading_never_delays_the_others() {
    const PUSHES: usize = 1000;
    let mut config = ServerConfig::default();
    config.limits.outbox_messages = 16;
    config.limits.max_push_body_bytes = 128 * 1024;
    config.timeouts.close = Duration::from_secs(10);
    let server = TestServer::with_config(config).await;

    let mut stuck = server.anonymous().await;
    stuck.subscribe("flood").await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut reader = server.anonymous().await;
        reader.subscribe("flood").await;
        readers.push(reader);
    }
    assert_eq!(server.stat().await, "flood 4\n");

    let padding = "p".repeat(32 * 1024);
    let frame = |n: usize| format!(r#"{{"app":"flood","member_id":-1,"text":"{n:05} {padding}"}}"#);
    // The readers read concurrently with the pushes and check every frame in order.
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            let expected: Vec<String> = (0..PUSHES).map(frame).collect();
            tokio::spawn(async move {
                for want in expected {
                    assert!(
                        reader.recv().await == want,
                        "a reader lost or reordered a frame"
                    );
                }
                reader
            })
        })
        .collect();

    let mut stuck = Some(stuck);
    let mut stuck_closed_after = None;
    let mut stuck_reading = None;
    for n in 0..PUSHES {
        server
            .push_ok("flood", -1, &format!("{n:05} {padding}"))
            .await;
        if stuck_closed_after.is_none() && server.stat().await == "flood 3\n" {
            stuck_closed_after = Some(n);
            // Closed: from now on it reads, so that its close handshake completes within
            // `timeouts.close` however long the rest of the flood takes on a loaded machine
            // (past it the server drops the connection without the close frame).
            let mut stuck = stuck.take().expect("closed once");
            stuck_reading = Some(tokio::spawn(async move { stuck.expect_close(4100).await }));
        }
    }
    let closed_after = stuck_closed_after.expect("the stuck client was never closed");
    eprintln!("stuck client closed after push {closed_after}");
    for task in reading {
        guard("the readers", task).await.unwrap();
    }

    // What the stuck client read: an in-order prefix of the pushes, then the close frame.
    let received = guard(
        "the stuck client's close frame",
        stuck_reading.expect("spawned"),
    )
    .await
    .unwrap();
    assert!(received.len() <= closed_after + 1);
    for (n, text) in received.iter().enumerate() {
        assert!(
            *text == frame(n),
            "the stuck client's frame {n} is not push {n}"
        );
    }
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001() {
    let server = TestServer::start().await;
    let mut a = server.anonymous().await;
    a.subscribe("match").await;
    let b = server.member(777, "777secret").await;
    let not_authenticated = server.connect().await;
    let addr = server.addr;
    // The clients read while the server shuts down, so each close handshake completes.
    let closing: Vec<_> = [a, b, not_authenticated]
        .into_iter()
        .map(|mut client| tokio::spawn(async move { client.expect_close(1001).await }))
        .collect();
    server.shutdown().await;
    for client in closing {
        assert_eq!(
            guard("a close frame", client).await.unwrap(),
            Vec::<String>::new()
        );
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
