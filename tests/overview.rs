//! `GET /api/overview` on the stat listener: the dashboard's one JSON document.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use common::{TestServer, http, retry_until};
use hyper::StatusCode;
use serde_json::{Value, json};

async fn overview(server: &TestServer) -> Value {
    let (status, headers, body) = http(server.stat_addr, "GET", "/api/overview", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn the_overview_counts_connections_apps_pushes_and_closes() {
    let server = TestServer::start().await;
    let mut a = server.anonymous().await;
    a.subscribe("match").await;
    let mut b = server.anonymous().await;
    b.subscribe("match").await;
    b.subscribe("chat").await;
    server.push_ok("match", -1, "hi").await;
    a.expect(r#"{"app":"match","member_id":-1,"text":"hi"}"#)
        .await;
    b.expect(r#"{"app":"match","member_id":-1,"text":"hi"}"#)
        .await;
    let (status, _) = server.push("not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut c = server.connect().await;
    c.send(r#"{"member_id":123456,"token":"wrong"}"#).await;
    c.expect(&common::unauthorized()).await;

    let doc = overview(&server).await;
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        doc["node_id"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", server.addr.port()))
    );
    assert!(doc["uptime_s"].is_u64());
    assert_eq!(doc["ready"], true);
    assert_eq!(doc["not_ready"], json!([]));
    assert_eq!(
        doc["broker"],
        json!({"kind": "local", "state": "connected"})
    );
    assert_eq!(doc["connections"], 3);
    assert_eq!(doc["handshakes"], 0);
    assert_eq!(
        doc["apps"],
        json!({"total": 2, "top": [{"app": "match", "connections": 2}, {"app": "chat", "connections": 1}]})
    );
    assert_eq!(
        doc["totals"],
        json!({"connections_opened": 3, "pushes_accepted": 1, "pushes_refused": 1, "deliveries": 2,
               "slow_consumer_closes": 0, "auth_refused": 1})
    );
    assert_eq!(doc["closes"], json!({}));
    assert_eq!(doc["series"]["interval_s"], 2);
    let samples = doc["series"]["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "the first sample is taken at start");
    assert!(samples[0]["t"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(
        doc["nodes"],
        json!([{"node_id": doc["node_id"], "connections": 3, "self": true}])
    );

    drop(c);
    a.ws.close(None).await.unwrap();
    let closes = retry_until("the closed connections to be counted", || async {
        let doc = overview(&server).await;
        (doc["connections"] == 1).then_some(doc)
    })
    .await;
    // A clean close by the client is not the server's; a vanished one is answered 1002.
    assert_eq!(closes["closes"], json!({"1002": 1}));
}

#[tokio::test]
async fn the_overview_lists_at_most_twenty_apps_by_count() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = server.anonymous().await;
        for i in 0..30 {
            client.subscribe(&format!("app{i:02}")).await;
        }
        clients.push(client);
    }
    let mut extra = server.anonymous().await;
    extra.subscribe("app29").await;
    let doc = overview(&server).await;
    assert_eq!(doc["apps"]["total"], 30);
    let top = doc["apps"]["top"].as_array().unwrap();
    assert_eq!(top.len(), 20);
    assert_eq!(top[0], json!({"app": "app29", "connections": 3}));
    assert_eq!(top[1], json!({"app": "app00", "connections": 2}));
    assert_eq!(top[19], json!({"app": "app18", "connections": 2}));
}

/// `/stat` as JSON (`?format=json` or `Accept: application/json`); the plain answer is
/// unchanged.
#[tokio::test]
async fn stat_as_json_has_the_counts_per_app_and_the_totals() {
    let server = TestServer::start().await;
    let mut a = server.anonymous().await;
    a.subscribe("match").await;
    // A name that needs escaping in JSON.
    a.send(r#"{"app":"say \"hi\""}"#).await;
    assert!(a.recv().await.contains(r#"\"code\":200"#));
    let mut b = server.anonymous().await;
    b.subscribe("match").await;
    let node_id = overview(&server).await["node_id"].clone();

    let (status, headers, body) = http(server.stat_addr, "GET", "/stat?format=json", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["uptime_s"].is_u64());
    assert_eq!(
        doc,
        json!({"node_id": node_id, "version": env!("CARGO_PKG_VERSION"), "uptime_s": doc["uptime_s"],
               "connections": 2, "apps": {"match": 2, "say \"hi\"": 1}, "subscriptions": 3})
    );
    let (_, headers, by_accept) = common::http_with(
        server.stat_addr,
        "GET",
        "/stat",
        &[("accept", "text/html, application/json;q=0.9")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(headers["content-type"], "application/json");
    let by_accept: Value = serde_json::from_str(&by_accept).unwrap();
    assert_eq!(by_accept["apps"], doc["apps"]);
    let (_, _, cluster) = http(
        server.stat_addr,
        "GET",
        "/stat?scope=cluster&format=json",
        "",
    )
    .await;
    let cluster: Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(cluster["apps"], doc["apps"]);
    assert_eq!(cluster["subscriptions"], 3);
    assert_eq!(server.stat().await, "match 2\nsay \"hi\" 1\n");
    let (status, _, body) = http(server.stat_addr, "GET", "/stat?format=xml", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "format must be \"text\" or \"json\", not \"xml\"\n");
}

/// Many pages of apps stream as one valid JSON document.
#[tokio::test]
async fn stat_as_json_streams_many_pages_as_one_document() {
    const APPS: usize = 2_000;
    let mut config = gateway_server::ServerConfig::default();
    config.hub.max_subscriptions = APPS;
    config.limits.max_messages_per_s = 1_000_000;
    config.limits.message_burst = 1_000_000;
    config.limits.outbox_messages = APPS + 1;
    let server = TestServer::with_config(config).await;
    let mut crowd = server.anonymous().await;
    let apps: Vec<String> = (0..APPS).map(|i| format!("app{i:05}")).collect();
    crowd.subscribe_all(&apps).await;
    let (_, headers, body) = http(server.stat_addr, "GET", "/stat?format=json", "").await;
    assert_eq!(headers["transfer-encoding"], "chunked", "streamed in pages");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let apps = doc["apps"].as_object().unwrap();
    assert_eq!(apps.len(), APPS);
    assert_eq!(apps["app01999"], 1);
    assert_eq!(doc["subscriptions"], APPS);
}
