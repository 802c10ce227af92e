//! PROTOCOL.md Part 1, "Connection life cycle", step 2: every row of the authentication table,
//! through a real server and a real WebSocket client.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::time::{Duration, Instant};

use common::*;
use gateway_server::ServerConfig;

#[tokio::test]
async fn anonymous_auth_gets_hello_stranger() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send(r#"{"member_id":-1,"token":""}"#).await;
    client.expect(&hello_stranger()).await;
}

#[tokio::test]
async fn any_negative_member_id_is_anonymous() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send(r#"{"member_id":-77,"token":"whatever"}"#).await;
    client.expect(&hello_stranger()).await;
}

#[tokio::test]
async fn accepted_member_gets_hello_with_its_id() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send(r#"{"member_id":123456,"token":"654321"}"#)
        .await;
    client.expect(&hello(123456)).await;
    // The connection belongs to the member: the private app is open to it.
    client.subscribe("im").await;
}

#[tokio::test]
async fn refused_member_gets_401_and_continues_as_anonymous() {
    let server = TestServer::start().await;
    for auth in [
        r#"{"member_id":123456,"token":"wrong"}"#,
        r#"{"member_id":123456,"token":"777secret"}"#, // another member's token
        r#"{"member_id":123456}"#,                     // missing token means ""
        r#"{"member_id":424242,"token":"654321"}"#,    // unknown member
    ] {
        let mut client = server.connect().await;
        client.send(auth).await;
        client.expect(&unauthorized()).await;
        client.subscribe("match").await;
        client.send(r#"{"app":"im"}"#).await;
        client.expect(&forbidden("im")).await;
    }
}

#[tokio::test]
async fn unknown_keys_in_the_auth_message_are_ignored() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send(r#"{"device":"ios","member_id":777,"token":"777secret","v":[1,2]}"#)
        .await;
    client.expect(&hello(777)).await;
}

#[tokio::test]
async fn auth_in_a_binary_frame_works_like_text() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send_binary(br#"{"member_id":123456,"token":"654321"}"#)
        .await;
    client.expect(&hello(123456)).await;
    client.send_binary(br#"{"app":"match"}"#).await;
    client.expect(&subscribed("match")).await;
}

#[tokio::test]
async fn a_bad_first_message_gets_400_then_a_close_frame() {
    let server = TestServer::start().await;
    for first in [
        "hello",                                 // not JSON
        "[123456,\"654321\"]",                   // not an object
        "42",                                    // not an object
        r#"{"token":"654321"}"#,                 // member_id missing
        r#"{"member_id":0,"token":"x"}"#,        // member_id 0
        r#"{"member_id":"123456","token":"x"}"#, // not an integer
        r#"{"member_id":1.5}"#,                  // not an integer
        r#"{"member_id":null}"#,                 // not an integer
        r#"{"app":"match"}"#,                    // a subscribe before auth
    ] {
        let mut client = server.connect().await;
        client.send(first).await;
        let texts = client.expect_close(4400).await;
        assert_eq!(texts, [missing_auth()], "first message {first:?}");
    }
}

#[tokio::test]
async fn no_auth_message_before_a_short_deadline_gets_400_then_close() {
    let mut config = ServerConfig::default();
    config.timeouts.auth = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect().await;
    let started = Instant::now();
    let texts = client.expect_close(4408).await;
    assert_eq!(texts, [missing_auth()]);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn pings_do_not_count_as_the_auth_message() {
    let mut config = ServerConfig::default();
    config.timeouts.auth = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect().await;
    use futures_util::SinkExt;
    client
        .ws
        .send(tokio_tungstenite::tungstenite::Message::Ping(
            bytes::Bytes::from_static(b"hi"),
        ))
        .await
        .unwrap();
    let texts = client.expect_close(4408).await;
    assert_eq!(texts, [missing_auth()]);
}

#[tokio::test]
async fn the_default_auth_deadline_is_ten_seconds() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let started = Instant::now();
    let texts = client.expect_close(4408).await;
    let waited = started.elapsed();
    assert_eq!(texts, [missing_auth()]);
    assert!(
        waited >= Duration::from_millis(9_900) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn an_auth_message_just_before_the_deadline_is_accepted() {
    let mut config = ServerConfig::default();
    config.timeouts.auth = Duration::from_secs(2);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect().await;
    // Well inside the deadline, but after the first read has been waiting a while.
    let ping = tokio_tungstenite::tungstenite::Message::Ping(bytes::Bytes::from_static(b"x"));
    use futures_util::SinkExt;
    client.ws.send(ping).await.unwrap();
    client.send(r#"{"member_id":-1,"token":""}"#).await;
    client.expect(&hello_stranger()).await;
}
