//! `GET /api/overview` on the stat listener: the dashboard's one JSON document.

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
