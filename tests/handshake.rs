//! The first request of a connection, which the gateway reads by hand (a WebSocket upgrade
//! is answered without hyper): exact bytes of the 101, messages pipelined behind the
//! upgrade, heads in pieces, and everything that must still reach hyper.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, guard, hello_stranger, subscribed};
use gateway_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The RFC 6455 sample key, and the accept value the RFC gives for it.
const UPGRADE: &str = "GET /any/path HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";
const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
    upgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A masked client text frame (payloads under 126 bytes).
fn client_text(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An unmasked server text frame, as the gateway sends it.
fn server_text(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match text.len() {
        n if n < 126 => frame.push(u8::try_from(n).unwrap()),
        n => {
            frame.push(126);
            frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Reads the response head (through the blank line).
async fn read_head(tcp: &mut TcpStream) -> String {
    guard("a response head", async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        String::from_utf8(head).unwrap()
    })
    .await
}

async fn read_exactly(tcp: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0; expected.len()];
    guard("a frame", tcp.read_exact(&mut got)).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Sends the anonymous auth message on an upgraded connection and expects its reply.
async fn authenticate_anonymously(tcp: &mut TcpStream) {
    tcp.write_all(&client_text(r#"{"member_id":-1,"token":""}"#))
        .await
        .unwrap();
    read_exactly(tcp, &server_text(&hello_stranger())).await;
}

#[tokio::test]
async fn an_upgrade_is_answered_with_exact_bytes_and_then_speaks_the_protocol() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut tcp).await, SWITCHING);
    authenticate_anonymously(&mut tcp).await;
}

#[tokio::test]
async fn messages_pipelined_behind_the_upgrade_request_are_not_lost() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = UPGRADE.as_bytes().to_vec();
    bytes.extend(client_text(r#"{"member_id":-1,"token":""}"#));
    bytes.extend(client_text(r#"{"app":"news"}"#));
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(read_head(&mut tcp).await, SWITCHING);
    read_exactly(&mut tcp, &server_text(&hello_stranger())).await;
    read_exactly(&mut tcp, &server_text(&subscribed("news"))).await;
    server.wait_for_stat("news 1\n").await;
}

#[tokio::test]
async fn a_head_arriving_in_pieces_still_upgrades() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for piece in UPGRADE.as_bytes().chunks(7) {
        tcp.write_all(piece).await.unwrap();
        tcp.flush().await.unwrap();
    }
    assert_eq!(read_head(&mut tcp).await, SWITCHING);
}

#[tokio::test]
async fn a_push_and_then_an_upgrade_on_one_connection_both_work() {
    let server = TestServer::start().await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("news").await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let body = r#"{"app":"news","member_id":-1,"text":"hi"}"#;
    let push = format!(
        "POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(push.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 202 Accepted\r\n"), "{head}");
    assert!(head.contains("content-length: 0\r\n"), "{head}");
    subscriber.expect(body).await;

    // The second request on the connection is hyper's to upgrade.
    tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    authenticate_anonymously(&mut tcp).await;
}

#[tokio::test]
async fn a_head_too_large_to_read_by_hand_is_upgraded_by_hyper() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let cookie = format!("Cookie: c={}\r\n", "x".repeat(12 * 1024));
    let request = UPGRADE.replacen("Host: x\r\n", &format!("Host: x\r\n{cookie}"), 1);
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    authenticate_anonymously(&mut tcp).await;
}

#[tokio::test]
async fn a_refused_upgrade_gets_its_status_and_is_counted_once() {
    let mut config = ServerConfig::default();
    config.limits.max_connections = 1;
    let server = TestServer::with_config(config).await;
    let _held = server.anonymous().await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    assert!(head.contains("retry-after: 1\r\n"), "{head}");
    assert_eq!(server.counters.upgrades_refused(), 1);
}

#[tokio::test]
async fn a_bad_upgrade_request_gets_hyper_s_answer() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = UPGRADE.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{head}"
    );
    assert!(head.contains("sec-websocket-version: 13\r\n"), "{head}");

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_peer_that_never_sends_its_request() {
    let mut config = ServerConfig::default();
    // Far beyond the guard: if shutdown waited for the silent peer, the test would hang.
    config.timeouts.shutdown = Duration::from_secs(600);
    let server = TestServer::with_config(config).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Known to be accepted once a later connection on the same listener was served.
    let _ = server.anonymous().await;
    server.shutdown().await;
    let mut rest = Vec::new();
    guard(
        "the silent connection to end",
        silent.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty());
}
