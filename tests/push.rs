//! PROTOCOL.md Part 1, "Push API", "Apps: public and private" and "Stat API", through a real
//! server: exact bytes delivered, statuses, routing, counts.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use bytes::Bytes;
use common::*;
use gateway_server::ServerConfig;
use hyper::StatusCode;

#[tokio::test]
async fn push_is_accepted_and_delivered_byte_for_byte() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    let (status, body) = server
        .push(
            r#"
{
    "app":"match",
    "member_id":-1,
    "text":"{\"hello\":\"world\"}"
}
"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, "");
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}"#)
        .await;
}

#[tokio::test]
async fn push_without_member_id_carries_minus_one() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    let (status, _) = server.push(r#"{"text":"x","app":"match"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"x"}"#)
        .await;
}

#[tokio::test]
async fn push_escapes_text_and_keeps_unicode() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    let (status, _) = server
        .push(r#"{"app":"match","text":"a\"b\\c\n\u00e9 \u4e2d"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    client
        .expect("{\"app\":\"match\",\"member_id\":-1,\"text\":\"a\\\"b\\\\c\\né 中\"}")
        .await;
}

#[tokio::test]
async fn push_to_an_app_nobody_subscribed_is_still_accepted() {
    let server = TestServer::start().await;
    let (status, _) = server
        .push(r#"{"app":"empty","member_id":-1,"text":"x"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn invalid_push_bodies_get_400_and_deliver_nothing() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    for body in [
        "",
        "not json",
        r#"["match",-1,"x"]"#,
        r#"{"member_id":-1,"text":"x"}"#,
        r#"{"app":"","text":"x"}"#,
        r#"{"app":5,"text":"x"}"#,
        r#"{"app":"match","member_id":-1}"#,
        r#"{"app":"match","text":{"hello":"world"}}"#,
        r#"{"app":"match","member_id":"-1","text":"x"}"#,
        r#"{"app":"match","member_id":1.5,"text":"x"}"#,
        r#"{"app":"match","member_id":null,"text":"x"}"#,
    ] {
        let (status, text) = server.push(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "body {body:?}");
        assert!(text.starts_with("bad push message"), "{text}");
    }
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn push_needs_post_and_other_paths_are_not_found() {
    let server = TestServer::start().await;
    let (status, headers, _) = http(server.addr, "GET", "/push", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    let (status, _, _) = http(server.addr, "POST", "/nope", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = http(server.stat_addr, "GET", "/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = http(server.stat_addr, "POST", "/stat", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn push_body_limit_is_exact() {
    let mut config = ServerConfig::default();
    config.limits.max_push_body_bytes = 100;
    let server = TestServer::with_config(config).await;
    let body = |len: usize| {
        let prefix = r#"{"app":"match","text":""#;
        let padding = "x".repeat(len - prefix.len() - 2);
        format!(r#"{prefix}{padding}"}}"#)
    };
    assert_eq!(body(100).len(), 100);
    assert_eq!(server.push(&body(100)).await.0, StatusCode::ACCEPTED);
    assert_eq!(
        server.push(&body(101)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Without a Content-Length (chunked), the limit holds while reading.
    let (status, _, _) = http_with(
        server.addr,
        "POST",
        "/push",
        &[("transfer-encoding", "chunked")],
        Bytes::from(body(101)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn public_push_fans_out_to_every_subscriber_and_only_them() {
    let server = TestServer::start().await;
    let mut subscribers = Vec::new();
    for i in 0..20 {
        let mut client = if i % 2 == 0 {
            server.anonymous().await
        } else {
            server.member(888, "888secret").await
        };
        client.subscribe("match").await;
        subscribers.push(client);
    }
    let mut other = server.anonymous().await;
    other.subscribe("chat").await;
    server.wait_for_stat("chat 1\nmatch 20\n").await;

    for n in 0..3 {
        server.push_ok("match", -1, &format!("goal {n}")).await;
    }
    for client in &mut subscribers {
        for n in 0..3 {
            client
                .expect(&format!(
                    r#"{{"app":"match","member_id":-1,"text":"goal {n}"}}"#
                ))
                .await;
        }
    }
    other.expect_nothing_more().await;
}

#[tokio::test]
async fn private_push_reaches_both_connections_of_that_member_and_nobody_else() {
    let server = TestServer::start().await;
    let mut phone = server.member(123456, "654321").await;
    let mut laptop = server.member(123456, "654321").await;
    let mut someone_else = server.member(777, "777secret").await;
    let mut anonymous = server.anonymous().await;
    for client in [&mut phone, &mut laptop, &mut someone_else] {
        client.subscribe("im").await;
    }
    anonymous.subscribe("match").await;
    assert_eq!(server.stat().await, "im 2\nmatch 1\n");

    server
        .push_ok("im", 123456, r#"{"from":777,"msg":"hi"}"#)
        .await;
    let expected = r#"{"app":"im","member_id":123456,"text":"{\"from\":777,\"msg\":\"hi\"}"}"#;
    phone.expect(expected).await;
    laptop.expect(expected).await;
    someone_else.expect_nothing_more().await;
    anonymous.expect_nothing_more().await;

    // A private push without a member reaches nobody.
    server.push_ok("im", -1, "to nobody").await;
    phone.expect_nothing_more().await;
}

#[tokio::test]
async fn stat_counts_before_and_after_close() {
    let server = TestServer::start().await;
    assert_eq!(server.stat().await, "");
    let mut a = server.member(123456, "654321").await;
    let mut b = server.member(123456, "654321").await;
    let mut c = server.anonymous().await;
    a.subscribe("match").await;
    a.subscribe("im").await;
    b.subscribe("im").await;
    c.subscribe("chat").await;
    c.subscribe("match").await;
    // Sorted by app; private counts distinct members.
    assert_eq!(server.stat().await, "chat 1\nim 1\nmatch 2\n");

    let (status, headers, _) = http(server.stat_addr, "GET", "/stat", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

    a.close().await;
    server.wait_for_stat("chat 1\nim 1\nmatch 1\n").await;
    b.close().await;
    server.wait_for_stat("chat 1\nmatch 1\n").await;
    // A connection that vanishes without a close frame is cleaned up too.
    drop(c);
    server.wait_for_stat("").await;
}
