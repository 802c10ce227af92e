//! `GET /history` end to end, on one node with the local broker: real server, real HTTP,
//! pushes through `POST /push`, exact answers. Reads all, in pages, from a position, across a
//! changed epoch, per member of a private app, past the stream's size; refuses bad parameters
//! naming them; answers 404 for an app whose history a configuration override turned off (the
//! real binary with a config file); protected exactly like `/push`.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use bytes::Bytes;
use common::binary::Gateway;
use common::*;
use gateway_core::StreamLimits;
use gateway_server::ServerConfig;
use hyper::StatusCode;
use serde_json::{Value, json};

async fn history(server: &TestServer, query: &str) -> (StatusCode, Value) {
    history_at(server.addr, query).await
}

async fn history_at(addr: std::net::SocketAddr, query: &str) -> (StatusCode, Value) {
    let (status, headers, text) = http(addr, "GET", &format!("/history?{query}"), "").await;
    assert_eq!(
        headers["content-type"], "application/json",
        "{query}: {text}"
    );
    let value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
    (status, value)
}

/// The page's pushes as (offset, text).
fn pushes(page: &Value) -> Vec<(u64, String)> {
    page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn texts(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|n| (n, format!("push {n}"))).collect()
}

#[tokio::test]
async fn reads_every_kept_push_in_order_then_pages_from_a_position() {
    let server = TestServer::start().await;
    for n in 1..=5 {
        server.push_ok("match", -1, &format!("push {n}")).await;
    }
    let (status, all) = history(&server, "app=match").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    assert_eq!(pushes(&all), texts(1..=5));
    assert_eq!(
        (
            &all["app"],
            &all["member_id"],
            &all["offset"],
            &all["first"]
        ),
        (&json!("match"), &json!(-1), &json!(5), &json!(1))
    );
    assert!(all.get("recovered").is_none(), "recovered only with since");

    // Pages: ask again with since = the last offset returned.
    let mut read = Vec::new();
    let mut since = 0;
    loop {
        let (status, page) = history(
            &server,
            &format!("app=match&since={since}&epoch={epoch}&limit=2"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["recovered"], json!(true), "{page}");
        let got = pushes(&page);
        assert!(got.len() <= 2);
        let Some((last, _)) = got.last() else { break };
        since = *last;
        read.extend(got);
    }
    assert_eq!(read, texts(1..=5));

    // since=0 without an epoch: from the start of whatever run the stream is in.
    let (_, start) = history(&server, "app=match&since=0&limit=3").await;
    assert_eq!(pushes(&start), texts(1..=3));
    assert_eq!(start["recovered"], json!(true));
    // Nothing after the newest: recovered, nothing missed.
    let (_, none) = history(&server, &format!("app=match&since=5&epoch={epoch}")).await;
    assert_eq!(
        none,
        json!({"app":"match","member_id":-1,"epoch":epoch,"offset":5,"first":1,"recovered":true,"publications":[]})
    );
    // The answer's bytes, key order included, as documented.
    let (_, _, text) = http(
        server.addr,
        "GET",
        &format!("/history?app=match&since=4&epoch={epoch}"),
        "",
    )
    .await;
    assert_eq!(
        text,
        format!(
            r#"{{"app":"match","member_id":-1,"epoch":"{epoch}","offset":5,"first":1,"recovered":true,"publications":[{{"offset":5,"text":"push 5"}}]}}"#
        )
    );
}

#[tokio::test]
async fn another_epoch_or_a_position_past_the_newest_is_not_recovered() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        server.push_ok("match", -1, &format!("push {n}")).await;
    }
    let (_, all) = history(&server, "app=match").await;
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    let other = format!("{epoch}x");
    let (status, page) = history(&server, &format!("app=match&since=1&epoch={other}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page,
        json!({"app":"match","member_id":-1,"epoch":epoch,"offset":3,"first":1,"recovered":false,"publications":[]})
    );
    let (_, ahead) = history(&server, &format!("app=match&since=9&epoch={epoch}")).await;
    assert_eq!(ahead["recovered"], json!(false));
    assert_eq!(pushes(&ahead), []);
}

#[tokio::test]
async fn past_the_streams_size_the_oldest_are_gone_and_a_client_behind_them_is_told() {
    let mut config = ServerConfig::default();
    config.hub.history.default = StreamLimits {
        size: 3,
        ..StreamLimits::default()
    };
    config.broker.settings.history = config.hub.history.clone();
    let server = TestServer::with_config(config).await;
    for n in 1..=5 {
        server.push_ok("match", -1, &format!("push {n}")).await;
    }
    let (_, all) = history(&server, "app=match").await;
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    assert_eq!(pushes(&all), texts(3..=5));
    assert_eq!((&all["offset"], &all["first"]), (&json!(5), &json!(3)));
    // Saw 1, missed 2..5: 2 is gone, so not recovered; what is kept is still listed.
    let (_, behind) = history(&server, &format!("app=match&since=1&epoch={epoch}")).await;
    assert_eq!(behind["recovered"], json!(false));
    assert_eq!(pushes(&behind), texts(3..=5));
    // Saw 2, missed 3..5: all kept.
    let (_, caught_up) = history(&server, &format!("app=match&since=2&epoch={epoch}")).await;
    assert_eq!(caught_up["recovered"], json!(true));
    assert_eq!(pushes(&caught_up), texts(3..=5));
}

#[tokio::test]
async fn a_private_apps_streams_are_one_per_member() {
    let server = TestServer::start().await;
    server.push_ok("im", 777, "to 777 #1").await;
    server.push_ok("im", 888, "to 888").await;
    server.push_ok("im", 777, "to 777 #2").await;
    let (status, mine) = history(&server, "app=im&member_id=777").await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(
        pushes(&mine),
        [(1, "to 777 #1".to_owned()), (2, "to 777 #2".to_owned())]
    );
    assert_eq!(mine["member_id"], json!(777));
    let (_, theirs) = history(&server, "app=im&member_id=888").await;
    assert_eq!(pushes(&theirs), [(1, "to 888".to_owned())]);
    assert_eq!(theirs["member_id"], json!(888));
    // A member nobody pushed to: no run yet, so no position.
    let (status, nobody) = history(&server, "app=im&member_id=123456&since=0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        nobody,
        json!({"app":"im","member_id":123456,"recovered":true,"publications":[]})
    );
}

#[tokio::test]
async fn a_public_push_that_named_a_member_keeps_it_and_text_is_given_back_as_pushed() {
    let server = TestServer::start().await;
    let text = "{\"goal\":1,\"by\":\"Müller\"}\n\"quoted\"";
    server.push_ok("match", 42, text).await;
    let (_, page) = history(&server, "app=match").await;
    assert_eq!(
        page["publications"],
        json!([{"offset":1,"member_id":42,"text":text}])
    );
    assert_eq!(page["member_id"], json!(-1));
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_them() {
    let mut config = ServerConfig::default();
    config.limits.max_history_page = 50;
    let server = TestServer::with_config(config).await;
    server.push_ok("match", -1, "x").await;
    for (query, parameter, error) in [
        ("", "app", "app is required: /history?app=<name>"),
        ("app=", "app", "bad app: app name is empty"),
        (
            "app=%24ws-gateway%2Fcontrol",
            "app",
            "bad app: $ws-gateway/control is reserved",
        ),
        (
            "app=im",
            "member_id",
            "im is a private app: its streams are per member; give member_id",
        ),
        (
            "app=match&member_id=7",
            "member_id",
            "match is a public app: it has one stream; leave member_id out",
        ),
        (
            "app=im&member_id=0",
            "member_id",
            "member_id must be a positive integer",
        ),
        (
            "app=match&since=x",
            "since",
            "since must be an offset (an integer ≥ 0)",
        ),
        (
            "app=match&since=3",
            "epoch",
            "since above 0 needs the epoch of that position (since=<offset>&epoch=<epoch>)",
        ),
        (
            "app=match&epoch=e1",
            "epoch",
            "epoch goes with since (since=<offset>&epoch=<epoch>)",
        ),
        (
            "app=match&since=3&epoch=a%20b",
            "epoch",
            "an epoch is 1 to 64 ASCII letters, digits, '-' or '_'",
        ),
        (
            "app=match&limit=0",
            "limit",
            "limit must be a positive integer",
        ),
        (
            "app=match&limit=51",
            "limit",
            "limit must be at most 50 (limits.max_history_page)",
        ),
        (
            "app=match&sinse=3",
            "sinse",
            "unknown parameter \"sinse\"; /history takes app, member_id, since, epoch, limit",
        ),
        ("app=match&app=chat", "app", "app is given twice"),
    ] {
        assert_eq!(
            history(&server, query).await,
            (
                StatusCode::BAD_REQUEST,
                json!({"error": error, "parameter": parameter})
            ),
            "{query}"
        );
    }
    assert_eq!(
        history(&server, "app=match&limit=50").await.0,
        StatusCode::OK
    );
    let (status, headers, _) = http(server.addr, "POST", "/history?app=match", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
}

#[tokio::test]
async fn history_is_protected_like_push() {
    let mut config = ServerConfig::default();
    config.access.push_api_keys = vec!["backend-key-0123".to_owned()];
    let server = TestServer::with_config(config).await;
    let key = [("authorization", "Bearer backend-key-0123")];
    let (status, _, _) = http_with(
        server.addr,
        "POST",
        "/push",
        &key,
        Bytes::from(r#"{"app":"match","text":"secret"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for headers in [&[][..], &[("authorization", "Bearer wrong")][..]] {
        let (status, _, text) = http_with(
            server.addr,
            "GET",
            "/history?app=match",
            headers,
            Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(!text.contains("secret"), "{text}");
    }
    let (status, _, text) =
        http_with(server.addr, "GET", "/history?app=match", &key, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""text":"secret""#), "{text}");

    // Without keys, only allowed networks: loopback is not one here.
    let mut config = ServerConfig::default();
    config.access.push_allow_from = vec!["10.0.0.0/8".parse().unwrap()];
    let server = TestServer::with_config(config).await;
    let (status, _, _) = http(server.addr, "GET", "/history?app=match", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The real binary and a configuration file: an override turns an app's history off (404),
/// the others keep theirs, and the page limit comes from the file.
#[tokio::test]
async fn an_app_whose_history_is_off_by_configuration_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        r#"
[limits]
max_history_page = 2
[history]
size = 10
[history.apps."audit-*"]
size = 0
"#,
    )
    .unwrap();
    let mut gateway = Gateway::start(&[
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--stat-listen",
        "127.0.0.1:0",
    ]);
    let (addr, _) = gateway.addresses().await;
    for app in ["audit-log", "match"] {
        let body = format!(r#"{{"app":"{app}","text":"x"}}"#);
        let (status, _, text) = http(addr, "POST", "/push", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    }
    assert_eq!(
        history_at(addr, "app=audit-log").await,
        (
            StatusCode::NOT_FOUND,
            json!({"error":"no history for app audit-log"})
        )
    );
    let (status, page) = history_at(addr, "app=match").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pushes(&page), [(1, "x".to_owned())]);
    let (status, page) = history_at(addr, "app=match&limit=3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(page["parameter"], json!("limit"));
    let (status, _) = gateway.terminate().await;
    assert!(status.success());
}

/// The positions `/history` lists are the ones a subscriber that asked for positions received.
#[tokio::test]
async fn history_positions_are_the_ones_subscribers_received() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    client.send(r#"{"app":"match","recover":true}"#).await;
    // The reply's position keys are the node's business; only its success matters here.
    let reply = client.recv().await;
    assert!(reply.contains("subscribe match success"), "{reply}");
    let mut received = Vec::new();
    for n in 1..=3 {
        server.push_ok("match", -1, &format!("push {n}")).await;
        let frame: Value = serde_json::from_str(&client.recv().await).unwrap();
        received.push((frame["offset"].clone(), frame["epoch"].clone()));
    }
    let (_, page) = history(&server, "app=match").await;
    let listed: Vec<(Value, Value)> = page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].clone(), page["epoch"].clone()))
        .collect();
    assert_eq!(listed, received);
}
