//! PROTOCOL.md Part 1, "Connection life cycle", step 3: the subscription table, pipelining and
//! idempotence, through a real server.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use common::*;

#[tokio::test]
async fn subscribe_success() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.send(r#"{"app":"match"}"#).await;
    client.expect(&subscribed("match")).await;
}

#[tokio::test]
async fn bad_subscribe_messages_get_400_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    for message in [
        "match",                                    // not JSON
        r#"["match"]"#,                             // not an object
        r#"{}"#,                                    // app missing
        r#"{"app":5}"#,                             // not a string
        r#"{"app":null}"#,                          // not a string
        r#"{"app":""}"#,                            // empty
        r#"{"member_id":123456,"token":"654321"}"#, // a second auth message
    ] {
        client.send(message).await;
        client.expect(&bad_subscribe()).await;
    }
    client.send_binary(b"\xff\xfe garbage").await;
    client.expect(&bad_subscribe()).await;
    client.subscribe("match").await;
}

#[tokio::test]
async fn private_app_is_forbidden_to_anonymous_connections() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.send(r#"{"app":"im"}"#).await;
    client.expect(&forbidden("im")).await;
    // A refused member is anonymous too.
    let mut refused = server.connect().await;
    refused.send(r#"{"member_id":777,"token":"nope"}"#).await;
    refused.expect(&unauthorized()).await;
    refused.send(r#"{"app":"im"}"#).await;
    refused.expect(&forbidden("im")).await;
    assert_eq!(server.stat().await, "");
}

#[tokio::test]
async fn pipelined_auth_and_subscribes_are_answered_in_order() {
    // The seed's browser example sends everything without waiting.
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for message in [
        r#"{"member_id":123456,"token":"654321"}"#,
        r#"{"app":"match"}"#,
        r#"{"app":"im"}"#,
        r#"nonsense"#,
        r#"{"app":"chat"}"#,
    ] {
        client.send(message).await;
    }
    client.expect(&hello(123456)).await;
    client.expect(&subscribed("match")).await;
    client.expect(&subscribed("im")).await;
    client.expect(&bad_subscribe()).await;
    client.expect(&subscribed("chat")).await;
}

#[tokio::test]
async fn duplicate_subscribe_repeats_the_reply_but_delivers_each_push_once() {
    let server = TestServer::start().await;
    let mut client = server.member(777, "777secret").await;
    for _ in 0..3 {
        client.subscribe("match").await;
        client.subscribe("im").await;
    }
    assert_eq!(server.stat().await, "im 1\nmatch 1\n");
    server.push_ok("match", -1, "m").await;
    server.push_ok("im", 777, "i").await;
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"m"}"#)
        .await;
    client
        .expect(r#"{"app":"im","member_id":777,"text":"i"}"#)
        .await;
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn subscribe_then_push_never_loses_the_push() {
    // The original acknowledged before registering; here the reply means "registered".
    let server = TestServer::start().await;
    for round in 0..50 {
        let mut client = server.anonymous().await;
        let app = format!("race{round}");
        client.subscribe(&app).await;
        server.push_ok(&app, -1, "first").await;
        client
            .expect(&format!(
                r#"{{"app":"{app}","member_id":-1,"text":"first"}}"#
            ))
            .await;
    }
}
