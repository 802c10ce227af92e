//! Issue 9, finding 4: frames that never became a counted message. A client sent a text frame
//! without FIN and then empty continuation frames without end, or pings before its auth
//! message, and was never closed; every frame now counts against the rate limit, before and
//! after auth. Also the auth message's own size limit: large identity-provider tokens log in,
//! while later messages keep the message limit.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_auth::StaticTokens;
use gateway_core::{CloseCode, MemberId};
use gateway_server::ServerConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::common::*;

/// The burst of the rate-limit tests: small, so that a few frames more than it prove the
/// limit; the rate (1 a second) refills nothing that matters while a test runs.
const BURST: u32 = 20;

fn rate_limited() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.limits.message_burst = BURST;
    config.limits.max_messages_per_s = 1;
    config
}

fn empty_continuation() -> Message {
    raw_frame(OpCode::Data(Data::Continue), false, b"")
}

/// Sends `frames` in one write; `false` once the server is gone.
async fn send_all(client: &mut Client, frames: impl IntoIterator<Item = Message>) -> bool {
    for frame in frames {
        if client.ws.feed(frame).await.is_err() {
            return false;
        }
    }
    client.ws.flush().await.is_ok()
}

/// Floods: up to `rounds` batches of 100 frames, stopping once a send fails; a flood that
/// ends means nothing by itself, the close code that follows does.
async fn flood(client: &mut Client, rounds: usize, frame: impl Fn() -> Message) {
    for _ in 0..rounds {
        if !send_all(client, (0..100).map(|_| frame())).await {
            return;
        }
    }
}

// --- every frame counts ---------------------------------------------------------------------

#[tokio::test]
async fn empty_continuations_after_auth_close_with_4429_after_the_burst() {
    let server = TestServer::with_config(rate_limited()).await;
    let mut client = server.anonymous().await;
    // The auth message took one token; the unfinished text frame one more.
    let opening = raw_frame(OpCode::Data(Data::Text), false, br#"{"app":"#);
    let frames = std::iter::once(opening).chain((0..BURST).map(|_| empty_continuation()));
    assert!(send_all(&mut client, frames).await);
    client.expect_close(4429).await;
    assert_eq!(server.counters.closes(CloseCode::TooManyMessages), 1);
}

#[tokio::test]
async fn a_flood_of_empty_continuations_is_closed_with_4429() {
    let server = TestServer::with_config(rate_limited()).await;
    let mut client = server.anonymous().await;
    assert!(
        send_all(
            &mut client,
            [raw_frame(OpCode::Data(Data::Text), false, b"")]
        )
        .await
    );
    flood(&mut client, 30, empty_continuation).await;
    client.expect_close(4429).await;
}

#[tokio::test]
async fn pings_before_auth_close_with_4429_after_the_burst() {
    let server = TestServer::with_config(rate_limited()).await;
    let mut client = server.connect().await;
    let pings = (0..=BURST).map(|_| Message::Ping(Bytes::from_static(b"p")));
    assert!(send_all(&mut client, pings).await);
    client.expect_close(4429).await;
    assert_eq!(server.counters.closes(CloseCode::TooManyMessages), 1);
}

#[tokio::test]
async fn a_flood_of_pings_before_auth_is_closed_with_4429() {
    let server = TestServer::with_config(rate_limited()).await;
    let mut client = server.connect().await;
    flood(&mut client, 30, || Message::Ping(Bytes::new())).await;
    client.expect_close(4429).await;
}

#[tokio::test]
async fn a_well_behaved_client_is_served_while_another_floods() {
    let server = TestServer::with_config(rate_limited()).await;
    let mut calm = server.anonymous().await;
    calm.subscribe("a").await;

    let mut flooder = server.anonymous().await;
    assert!(
        send_all(
            &mut flooder,
            [raw_frame(OpCode::Data(Data::Text), false, b"")]
        )
        .await
    );
    flood(&mut flooder, 30, empty_continuation).await;
    server.push_ok("a", -1, "during").await;
    flooder.expect_close(4429).await;
    server.push_ok("a", -1, "after").await;

    calm.expect(r#"{"app":"a","member_id":-1,"text":"during"}"#)
        .await;
    calm.expect(r#"{"app":"a","member_id":-1,"text":"after"}"#)
        .await;
    calm.expect_nothing_more().await;
    assert_eq!(server.counters.closes(CloseCode::TooManyMessages), 1);
}

#[tokio::test]
async fn a_client_answering_pings_is_not_closed() {
    let mut config = ServerConfig::default();
    // Short enough for several pings in a few seconds, long enough that a test task
    // descheduled on a loaded machine still answers in time.
    config.timeouts.ping_interval = std::time::Duration::from_millis(200);
    config.timeouts.idle = std::time::Duration::from_millis(1000);
    // Pongs count: a burst of 2 is all but spent by the auth message, and the rate (20 a
    // second) is above the pings' (at most one per 200 ms of silence).
    config.limits.message_burst = 2;
    config.limits.max_messages_per_s = 20;
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    // tungstenite's client answers each ping when it reads on.
    let mut pings = 0;
    while pings < 5 {
        match guard("a ping", client.ws.next()).await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    // Still served.
    client.subscribe("a").await;
    assert_eq!(server.counters.closes(CloseCode::TooManyMessages), 0);
    assert_eq!(server.counters.closes(CloseCode::IdleTimeout), 0);
}

// --- the auth message's own size limit ------------------------------------------------------

/// A server where member 5 logs in with a token of `len` characters.
async fn long_token_server(len: usize) -> (TestServer, String) {
    let token = "t".repeat(len);
    let authenticator = StaticTokens::new([(MemberId::new(5).unwrap(), token.as_str())]);
    let server = TestServer::with(ServerConfig::default(), Arc::new(authenticator)).await;
    (server, token)
}

fn auth_message(token: &str) -> String {
    format!(r#"{{"member_id":5,"token":"{token}"}}"#)
}

/// A subscribe message of exactly `len` bytes.
fn subscribe_of(len: usize) -> String {
    format!(r#"{{"app":"{}"}}"#, "a".repeat(len - 10))
}

#[tokio::test]
async fn a_10_kb_token_logs_in_and_then_a_5_kb_message_closes_with_1009() {
    let (server, token) = long_token_server(10_000).await;
    let mut client = server.connect().await;
    client.send(&auth_message(&token)).await;
    client.expect(&hello(5)).await;
    client.send(&subscribe_of(5_000)).await;
    client.expect_close(1009).await;
}

#[tokio::test]
async fn the_auth_limit_is_for_the_first_message_only_even_when_pipelined() {
    let (server, token) = long_token_server(10_000).await;
    let mut client = server.connect().await;
    let messages = [auth_message(&token), subscribe_of(5_000)].map(Message::text);
    assert!(send_all(&mut client, messages).await);
    assert_eq!(client.expect_close(1009).await, [hello(5)]);
}

#[tokio::test]
async fn after_auth_a_message_in_small_fragments_is_held_to_the_message_limit() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    let half = "a".repeat(3_000);
    let frames = [
        raw_frame(OpCode::Data(Data::Text), false, br#"{"app":""#),
        raw_frame(OpCode::Data(Data::Continue), false, half.as_bytes()),
        raw_frame(OpCode::Data(Data::Continue), true, half.as_bytes()),
    ];
    assert!(send_all(&mut client, frames).await);
    client.expect_close(1009).await;
}

#[tokio::test]
async fn an_auth_message_over_16_kib_closes_with_1009() {
    let (server, token) = long_token_server(16 * 1024).await;
    let mut client = server.connect().await;
    client.send(&auth_message(&token)).await;
    client.expect_close(1009).await;
}

// --- what tungstenite answers by itself -----------------------------------------------------

/// tungstenite answers a client's close frame with a code that must not be sent (RFC 6455
/// §7.4) with its own 1002 and reason; the gateway just lets that echo go out.
#[tokio::test]
async fn a_close_frame_with_an_invalid_code_is_answered_with_1002_protocol_violation() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    let close = CloseFrame {
        code: 1005.into(),
        reason: "bye".into(),
    };
    client.ws.send(Message::Close(Some(close))).await.unwrap();
    match guard("the echo", client.ws.next()).await {
        Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
            assert_eq!(
                (u16::from(code), reason.as_str()),
                (1002, "Protocol violation")
            );
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}
