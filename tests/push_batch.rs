//! Batch and multi-member push (docs/protocol.md, "Batch and multi-member push"), through a
//! real server: exact bytes delivered in array order, `{"accepted":N}`, every refusal with
//! nothing delivered (shown by a marker push that arrives first), the bounds, and a batch
//! through Redis between two nodes.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use bytes::Bytes;
use common::*;
use gateway_broker::BrokerSettings;
use gateway_server::{BrokerConfig, BrokerKind, ServerConfig};
use hyper::StatusCode;
use test_servers::{NatsServer, RedisServer};

fn envelope(app: &str, member_id: i64, text: &str) -> String {
    format!(r#"{{"app":"{app}","member_id":{member_id},"text":"{text}"}}"#)
}

/// A JSON array of `{"app":app,"text":"<prefix><i>"}` for i in 0..n.
fn numbered(app: &str, prefix: &str, n: usize) -> String {
    let elements: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"app":"{app}","text":"{prefix}{i}"}}"#))
        .collect();
    format!("[{}]", elements.join(","))
}

/// Pushes `body`, which must be refused with `status`; then a marker push, which must be the
/// next thing every client receives: nothing of the refused body was delivered.
async fn refused_and_nothing_delivered(
    server: &TestServer,
    clients: &mut [&mut Client],
    body: &str,
    status: StatusCode,
) -> String {
    let (got, text) = server.push(body).await;
    assert_eq!(got, status, "{body}: {text}");
    server.push_ok("match", -1, "marker").await;
    server.push_ok("im", 777, "marker").await;
    server.push_ok("im", 888, "marker").await;
    for client in clients.iter_mut() {
        let frame = client.recv().await;
        assert!(
            frame.ends_with(r#""text":"marker"}"#),
            "{body} delivered {frame}"
        );
    }
    text
}

/// An anonymous subscriber of "match", and members 777 and 888 subscribed to "im".
async fn audience(server: &TestServer) -> (Client, Client, Client) {
    let mut public = server.anonymous().await;
    public.subscribe("match").await;
    let mut m777 = server.member(777, "777secret").await;
    m777.subscribe("im").await;
    let mut m888 = server.member(888, "888secret").await;
    m888.subscribe("im").await;
    (public, m777, m888)
}

#[tokio::test]
async fn a_batch_is_delivered_in_array_order_byte_for_byte() {
    let server = TestServer::start().await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    let (status, headers, body) = http(
        server.addr,
        "POST",
        "/push",
        r#"[
            {"app":"match","member_id":-1,"text":"{\"n\":1}"},
            {"app":"im","member_id":777,"text":"to 777"},
            {"app":"match","text":"2"},
            {"app":"im","member_id":888,"text":"to 888"},
            {"app":"nobody","text":"lost"},
            {"app":"match","text":"3 \u00e9"}
        ]"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, r#"{"accepted":6}"#);
    assert_eq!(headers["content-type"], "application/json");
    public
        .expect(r#"{"app":"match","member_id":-1,"text":"{\"n\":1}"}"#)
        .await;
    public.expect(&envelope("match", -1, "2")).await;
    public.expect(&envelope("match", -1, "3 é")).await;
    m777.expect(&envelope("im", 777, "to 777")).await;
    m888.expect(&envelope("im", 888, "to 888")).await;
    for client in [&mut public, &mut m777, &mut m888] {
        client.expect_nothing_more().await;
    }
    assert_eq!(server.counters.pushes_accepted(), 6);
    assert_eq!(server.counters.push_batches(), 1);
}

#[tokio::test]
async fn a_large_batch_arrives_whole_and_in_order() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    let (status, body) = server.push(&numbered("match", "", 500)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::ACCEPTED, r#"{"accepted":500}"#)
    );
    for i in 0..500 {
        client.expect(&envelope("match", -1, &i.to_string())).await;
    }
}

#[tokio::test]
async fn a_bad_element_refuses_the_whole_batch_naming_its_index() {
    let server = TestServer::start().await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    let good = r#"{"app":"match","text":"never"},{"app":"im","member_id":777,"text":"never"}"#;
    for (bad, index, why) in [
        (
            format!(r#"[{good},{{"app":"match"}}]"#),
            2,
            "missing field `text`",
        ),
        (
            format!(r#"[{good},{good},{{"app":"match","text":5}}]"#),
            4,
            "invalid type: integer `5`",
        ),
        (format!(r#"[{good},"match"]"#), 2, "expected a push object"),
        (
            format!(r#"[{good},{{"app":"","text":"x"}}]"#),
            2,
            "app name is empty",
        ),
        (
            format!(r#"[{{"app":"match","member_id":"1","text":"x"}},{good}]"#),
            0,
            "invalid type",
        ),
        (format!("[{good},"), 2, "EOF"),
    ] {
        let text = refused_and_nothing_delivered(
            &server,
            &mut [&mut public, &mut m777, &mut m888],
            &bad,
            StatusCode::BAD_REQUEST,
        )
        .await;
        let expected = format!("bad push message at index {index}: ");
        assert!(text.starts_with(&expected), "{text:?} for {bad}");
        assert!(text.contains(why), "{text:?} does not say {why:?}");
    }
    // Characters after the array: the body as a whole.
    let text = refused_and_nothing_delivered(
        &server,
        &mut [&mut public, &mut m777, &mut m888],
        &format!("[{good}] x"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        text.starts_with("bad push message: malformed message: trailing characters"),
        "{text}"
    );
    assert_eq!(server.counters.push_batches(), 0);
}

#[tokio::test]
async fn an_empty_array_is_400() {
    let server = TestServer::start().await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    let text = refused_and_nothing_delivered(
        &server,
        &mut [&mut public, &mut m777, &mut m888],
        " [ ] ",
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(text, "bad push message: the array of pushes is empty\n");
}

#[tokio::test]
async fn a_batch_over_max_push_batch_is_413_and_delivers_nothing() {
    let mut config = ServerConfig::default();
    config.limits.max_push_batch = 3;
    let server = TestServer::with_config(config).await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    let text = refused_and_nothing_delivered(
        &server,
        &mut [&mut public, &mut m777, &mut m888],
        &numbered("match", "", 4),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(
        text,
        "more than 3 publications in one request (limits.max_push_batch)\n"
    );
    // Members count one publication each.
    refused_and_nothing_delivered(
        &server,
        &mut [&mut public, &mut m777, &mut m888],
        r#"[{"app":"match","text":"x"},{"app":"im","member_ids":[777,888,5],"text":"x"}]"#,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // At the limit: accepted.
    let (status, body) = server.push(&numbered("match", "", 3)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::ACCEPTED, r#"{"accepted":3}"#)
    );
    for i in 0..3 {
        public.expect(&envelope("match", -1, &i.to_string())).await;
    }
}

#[tokio::test]
async fn a_batch_over_the_body_limit_is_413() {
    let mut config = ServerConfig::default();
    config.limits.max_push_body_bytes = 200;
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    let body = numbered("match", "", 10);
    assert!(body.len() > 200);
    let (status, _, text) = http_with(server.addr, "POST", "/push", &[], Bytes::from(body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(text, "push body larger than 200 bytes\n");
    // Under it: accepted.
    let (status, _) = server.push(&numbered("match", "", 3)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    client.expect(&envelope("match", -1, "0")).await;
}

#[tokio::test]
async fn member_ids_give_each_member_the_envelope_with_its_own_member_id() {
    let server = TestServer::start().await;
    let mut first_777 = server.member(777, "777secret").await;
    first_777.subscribe("im").await;
    let mut second_777 = server.member(777, "777secret").await;
    second_777.subscribe("im").await;
    let mut m888 = server.member(888, "888secret").await;
    m888.subscribe("im").await;
    let mut not_named = server.member(123456, "654321").await;
    not_named.subscribe("im").await;

    let (status, body) = server
        .push(r#"{"app":"im","member_ids":[888,777,42],"text":"{\"hi\":1}"}"#)
        .await;
    // One object: answered as a single push is.
    assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, ""));
    for client in [&mut first_777, &mut second_777] {
        client
            .expect(r#"{"app":"im","member_id":777,"text":"{\"hi\":1}"}"#)
            .await;
    }
    m888.expect(r#"{"app":"im","member_id":888,"text":"{\"hi\":1}"}"#)
        .await;
    for client in [&mut first_777, &mut second_777, &mut m888, &mut not_named] {
        client.expect_nothing_more().await;
    }
    // Three publications (member 42 has nobody online), one batch.
    assert_eq!(server.counters.pushes_accepted(), 3);
    assert_eq!(server.counters.push_batches(), 1);
}

#[tokio::test]
async fn member_ids_work_inside_a_batch_between_other_pushes() {
    let server = TestServer::start().await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    let (status, body) = server
        .push(
            r#"[{"app":"im","member_id":888,"text":"a"},
                {"app":"im","member_ids":[777,888],"text":"b"},
                {"app":"match","text":"c"},
                {"app":"im","member_ids":[888],"text":"d"}]"#,
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::ACCEPTED, r#"{"accepted":5}"#)
    );
    m888.expect(&envelope("im", 888, "a")).await;
    m888.expect(&envelope("im", 888, "b")).await;
    m888.expect(&envelope("im", 888, "d")).await;
    m777.expect(&envelope("im", 777, "b")).await;
    public.expect(&envelope("match", -1, "c")).await;
    for client in [&mut public, &mut m777, &mut m888] {
        client.expect_nothing_more().await;
    }
}

#[tokio::test]
async fn every_member_ids_refusal_is_400_and_delivers_nothing() {
    let server = TestServer::start().await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    for (object, why) in [
        (
            r#"{"app":"im","member_id":777,"member_ids":[888],"text":"x"}"#,
            "member_id and member_ids are both present; send one of them",
        ),
        (
            r#"{"app":"match","member_ids":[777],"text":"x"}"#,
            r#"member_ids needs a private app; "match" is public"#,
        ),
        (
            r#"{"app":"im","member_ids":[],"text":"x"}"#,
            "member_ids is empty",
        ),
        (
            r#"{"app":"im","member_ids":[777,0],"text":"x"}"#,
            "member_ids holds 0, which names no member (member ids are > 0)",
        ),
        (
            r#"{"app":"im","member_ids":[-1],"text":"x"}"#,
            "member_ids holds -1, which names no member (member ids are > 0)",
        ),
        (
            r#"{"app":"im","member_ids":[777,888,777],"text":"x"}"#,
            "member_ids lists member 777 twice",
        ),
        (
            r#"{"app":"im","member_ids":[777,1.5],"text":"x"}"#,
            "invalid type: floating point `1.5`",
        ),
        (
            r#"{"app":"im","member_ids":[777,"888"],"text":"x"}"#,
            "invalid type: string",
        ),
        (
            r#"{"app":"im","member_ids":null,"text":"x"}"#,
            "invalid type: null",
        ),
        (
            r#"{"app":"im","member_ids":777,"text":"x"}"#,
            "invalid type: integer",
        ),
    ] {
        let audience = &mut [&mut public, &mut m777, &mut m888];
        // On its own: "bad push message: <why>".
        let text =
            refused_and_nothing_delivered(&server, audience, object, StatusCode::BAD_REQUEST).await;
        assert!(text.starts_with("bad push message: "), "{text}");
        assert!(text.contains(why), "{text:?} does not say {why:?}");
        // In a batch, after a valid element: its index.
        let batch = format!(r#"[{{"app":"match","text":"never"}},{object}]"#);
        let text =
            refused_and_nothing_delivered(&server, audience, &batch, StatusCode::BAD_REQUEST).await;
        assert!(text.starts_with("bad push message at index 1: "), "{text}");
        assert!(text.contains(why), "{text:?} does not say {why:?}");
    }
}

#[tokio::test]
async fn more_members_than_max_push_members_is_400() {
    let mut config = ServerConfig::default();
    config.limits.max_push_members = 2;
    let server = TestServer::with_config(config).await;
    let (mut public, mut m777, mut m888) = audience(&server).await;
    let three = r#"{"app":"im","member_ids":[777,888,5],"text":"x"}"#;
    let text = refused_and_nothing_delivered(
        &server,
        &mut [&mut public, &mut m777, &mut m888],
        three,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        text,
        "bad push message: member_ids lists 3 members; at most 2 are allowed\n"
    );
    let text = refused_and_nothing_delivered(
        &server,
        &mut [&mut public, &mut m777, &mut m888],
        &format!("[{three}]"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        text,
        "bad push message at index 0: member_ids lists 3 members; at most 2 are allowed\n"
    );
    // At the limit: delivered.
    server
        .push(r#"{"app":"im","member_ids":[777,888],"text":"ok"}"#)
        .await;
    m777.expect(&envelope("im", 777, "ok")).await;
    m888.expect(&envelope("im", 888, "ok")).await;
}

/// Two nodes over one broker.
async fn pair(kind: BrokerKind) -> (TestServer, TestServer) {
    let config = ServerConfig {
        broker: BrokerConfig {
            kind,
            settings: BrokerSettings {
                // Derived from each node's address: two nodes, two ids.
                node_id: String::new(),
                ..BrokerSettings::default()
            },
            report_interval: std::time::Duration::from_millis(200),
            subscribe_timeout: std::time::Duration::from_secs(3),
        },
        ..ServerConfig::default()
    };
    let a = TestServer::with_config(config.clone()).await;
    let b = TestServer::with_config(config).await;
    (a, b)
}

fn redis(server: &RedisServer) -> BrokerKind {
    BrokerKind::Redis {
        urls: vec![server.url()],
    }
}

/// A batch pushed to node A reaches subscribers on node B whole and in order.
async fn a_batch_reaches_the_other_node_in_order(kind: BrokerKind) {
    let (a, b) = pair(kind).await;
    // Subscribed on B: the reply comes once B's broker subscription is live.
    let mut on_b = b.anonymous().await;
    on_b.subscribe("match").await;
    let mut member_on_b = b.member(777, "777secret").await;
    member_on_b.subscribe("im").await;

    // More than a Redis connection's command queue holds (50): later publishes wait for
    // room, and must still go out in order.
    let (status, body) = a.push(&numbered("match", "n", 500)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::ACCEPTED, r#"{"accepted":500}"#)
    );
    let (status, _) = a
        .push(r#"[{"app":"im","member_ids":[888,777],"text":"m"},{"app":"match","text":"end"}]"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for i in 0..500 {
        on_b.expect(&envelope("match", -1, &format!("n{i}"))).await;
    }
    on_b.expect(&envelope("match", -1, "end")).await;
    member_on_b.expect(&envelope("im", 777, "m")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_through_redis_reaches_the_other_node_in_order() {
    let server = RedisServer::start();
    a_batch_reaches_the_other_node_in_order(redis(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_through_nats_reaches_the_other_node_in_order() {
    let server = NatsServer::start();
    a_batch_reaches_the_other_node_in_order(BrokerKind::Nats {
        url: server.url(),
        credentials: Default::default(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_two_redis_shards_keeps_each_apps_order() {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    let (a, b) = pair(BrokerKind::Redis {
        urls: vec![first.url(), second.url()],
    })
    .await;
    let apps: Vec<String> = (0..8).map(|i| format!("app{i}")).collect();
    let mut on_b = b.anonymous().await;
    on_b.subscribe_all(&apps).await;
    // Both shards carry some of the apps, so the batch is split into two pipelines.
    assert!(first.channels("ws-gateway.*").len() < apps.len());
    assert!(!first.channels("ws-gateway.*").is_empty());
    let elements: Vec<String> = (0..400)
        .map(|i| format!(r#"{{"app":"app{}","text":"{i}"}}"#, i % 8))
        .collect();
    let (status, body) = a.push(&format!("[{}]", elements.join(","))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::ACCEPTED, r#"{"accepted":400}"#)
    );
    // Between shards there is no order; within an app, array order.
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for _ in 0..400 {
        let frame: serde_json::Value = serde_json::from_str(&on_b.recv().await).unwrap();
        let app = frame["app"].as_str().unwrap().to_owned();
        let n: i64 = frame["text"].as_str().unwrap().parse().unwrap();
        assert_eq!(n % 8, app[3..].parse::<i64>().unwrap());
        let before = last.insert(app.clone(), n);
        assert!(
            before.is_none_or(|before| before < n),
            "{app}: {n} after {before:?}"
        );
    }
    on_b.expect_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_while_the_broker_is_down_is_503_with_the_count_taken() {
    let mut server = RedisServer::start();
    let (a, _b) = pair(redis(&server)).await;
    server.stop();
    // The node finds out at its next check or publish; until then a push may still time out.
    let (headers, body) = retry_until("a 503 once the node knows Redis is down", || async {
        let (status, headers, body) =
            http(a.addr, "POST", "/push", &numbered("match", "", 3)).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some((headers, body))
    })
    .await;
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["retry-after"], "1");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["accepted"], 0, "{body}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("not delivered from publication 0 on: broker unavailable"),
        "{body}"
    );
}
