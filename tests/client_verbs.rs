//! The client messages of `docs/protocol.md` Part 2 that carry an `action`, end to end:
//! unsubscribe, ping and unknown actions, on a real server with real WebSocket clients.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use hyper::StatusCode;

fn unsubscribed(app: &str) -> String {
    reply(200, &format!("unsubscribe {app} success"))
}

fn not_subscribed(app: &str) -> String {
    reply(404, &format!("unsubscribe {app} not subscribed"))
}

fn unsubscribe_request(app: &str) -> String {
    format!(r#"{{"app":"{app}","action":"unsubscribe"}}"#)
}

#[tokio::test]
async fn unsubscribe_stops_pushes_to_that_app_only() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    client.subscribe("chat").await;
    client.send(&unsubscribe_request("match")).await;
    client.expect(&unsubscribed("match")).await;
    server.wait_for_stat("chat 1\n").await;

    // Pushed after the reply: the match push must not arrive, the chat push after it must.
    server.push_ok("match", -1, "goal").await;
    server.push_ok("chat", -1, "hi").await;
    client
        .expect(r#"{"app":"chat","member_id":-1,"text":"hi"}"#)
        .await;

    // Subscribing again works as the first time did.
    client.subscribe("match").await;
    server.push_ok("match", -1, "again").await;
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"again"}"#)
        .await;
}

#[tokio::test]
async fn unsubscribing_an_app_not_subscribed_is_answered_and_the_connection_stays() {
    let server = TestServer::start().await;
    let mut client = server.member(777, "777secret").await;
    client.send(&unsubscribe_request("match")).await;
    client.expect(&not_subscribed("match")).await;
    // A private app, too: the same answer, no close.
    client.send(&unsubscribe_request("im")).await;
    client.expect(&not_subscribed("im")).await;
    client.subscribe("im").await;
    client.send(&unsubscribe_request("im")).await;
    client.expect(&unsubscribed("im")).await;
    client.send(&unsubscribe_request("im")).await;
    client.expect(&not_subscribed("im")).await;
    server.wait_for_stat("").await;
    // A bad unsubscribe (no app) is a bad subscribe message, as any malformed request.
    client.send(r#"{"action":"unsubscribe"}"#).await;
    client.expect(&bad_subscribe()).await;
}

#[tokio::test]
async fn an_unknown_action_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    for request in [
        r#"{"app":"match","action":"publish"}"#,
        r#"{"app":"match","action":"Subscribe"}"#,
        r#"{"app":"match","action":""}"#,
    ] {
        client.send(request).await;
        client.expect(&reply(400, "unknown action")).await;
    }
    // Not a string: the seed's bad subscribe message.
    client.send(r#"{"app":"match","action":null}"#).await;
    client.expect(&bad_subscribe()).await;
    // Nothing was subscribed: a push to match is not delivered (the marker proves it).
    assert_eq!(server.stat().await, "");
    server.push_ok("match", -1, "goal").await;
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_in_order() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.send(r#"{"action":"ping"}"#).await;
    client.send(r#"{"app":"match"}"#).await;
    client.send(r#"{"action":"ping","app":"ignored"}"#).await;
    client.expect(&reply(200, "pong")).await;
    client.expect(&subscribed("match")).await;
    client.expect(&reply(200, "pong")).await;
}

/// A pusher floods an app while the client unsubscribes from it: whatever arrives before the
/// reply arrives in order, and nothing pushed after the client saw the reply reaches it.
#[tokio::test]
async fn unsubscribe_racing_pushes_delivers_nothing_accepted_after_the_reply() {
    let server = Arc::new(TestServer::start().await);
    for round in 0..20 {
        let app = format!("race{round}");
        let mut client = server.anonymous().await;
        client.subscribe(&app).await;
        client.subscribe("sentinel").await;

        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let pusher = tokio::spawn({
            let (server, app, stop, sent) =
                (server.clone(), app.clone(), stop.clone(), sent.clone());
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    server.push_ok(&app, -1, &n.to_string()).await;
                    sent.store(n, Ordering::Relaxed);
                }
            }
        });
        // Let a few pushes through first, so the unsubscribe lands among them.
        retry_until("pushes flowing", || {
            let sent = sent.load(Ordering::Relaxed);
            async move { (sent >= 3).then_some(()) }
        })
        .await;
        client.send(&unsubscribe_request(&app)).await;
        let mut last = 0u64;
        loop {
            let frame = client.recv().await;
            if frame == unsubscribed(&app) {
                break;
            }
            let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
            let n: u64 = value["text"].as_str().unwrap().parse().unwrap();
            assert_eq!(n, last + 1, "round {round}: pushes out of order or lost");
            last = n;
        }
        // Pushed after the reply was seen: must not arrive. The sentinel after it must.
        let (status, _) = server
            .push(&format!(r#"{{"app":"{app}","text":"after"}}"#))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        stop.store(true, Ordering::Relaxed);
        pusher.await.unwrap();
        server.push_ok("sentinel", -1, "end").await;
        // The subscription ends before the reply is queued, so every push to the app that
        // reaches the client is in front of the reply: the next frame is the sentinel.
        client
            .expect(r#"{"app":"sentinel","member_id":-1,"text":"end"}"#)
            .await;
        client.close().await;
    }
}
