//! `GET /metrics` on the stat listener: the Prometheus exposition, scraped before and after a
//! known sequence of events, with exact deltas.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::collections::BTreeMap;

use common::{Client, TestServer, http, retry_until};
use gateway_server::ServerConfig;
use hyper::StatusCode;

/// One scrape: `name{labels}` → value, every line checked to be a comment or a sample.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(server: &TestServer) -> Scrape {
        let (status, headers, body) = http(server.stat_addr, "GET", "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        Scrape(parse(&body))
    }

    /// The value of one series; 0 when absent.
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    fn has(&self, series: &str) -> bool {
        self.0.contains_key(series)
    }

    /// Every series of the metric `name`.
    fn series_of(&self, name: &str) -> Vec<(&String, f64)> {
        self.0
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(series, value)| (series, *value))
            .collect()
    }
}

/// Parses the exposition: every line is `# HELP`, `# TYPE`, `# UNIT`, the final `# EOF`, or
/// `name{labels} value` with a valid metric name and a number.
fn parse(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "the exposition ends with # EOF");
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in: {line}");
            assert_labels(&series[name_end + 1..series.len() - 1], line);
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
        };
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series: {line}"
        );
    }
    samples
}

/// `k="v",k2="v2"`: names of word characters, values quoted with `\\`, `\"` and `\n`
/// escaped and nothing else after a backslash.
fn assert_labels(labels: &str, line: &str) {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, value) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in: {line}"));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name in: {line}"
        );
        let mut chars = value.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let escaped = chars.next().map(|(_, c)| c);
                    assert!(
                        matches!(escaped, Some('\\' | '"' | 'n')),
                        "bad escape in: {line}"
                    );
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value in: {line}"),
            }
        };
        rest = &value[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The sequence of the issue: connect, an auth failure, subscribe, a push, a refused push, a
/// slow consumer closed with 4100; every counter moves by exactly what happened.
#[tokio::test]
async fn a_known_sequence_moves_every_counter_by_exactly_its_events() {
    let mut config = ServerConfig::default();
    config.limits.outbox_messages = 4;
    config.limits.max_push_body_bytes = 512 * 1024;
    let server = TestServer::with_config(config).await;
    let before = Scrape::of(&server).await;

    let mut reader = server.anonymous().await;
    reader.subscribe("match").await;
    let mut refused = server.connect().await;
    refused
        .send(r#"{"member_id":123456,"token":"wrong"}"#)
        .await;
    refused.expect(&common::unauthorized()).await;
    // Two subscriptions with history: one recovers (nothing was ever pushed), one cannot.
    refused
        .send(r#"{"app":"news","since":{"offset":0,"epoch":""}}"#)
        .await;
    assert!(refused.recv().await.contains(r#"\"recovered\":true"#));
    refused
        .send(r#"{"app":"news","since":{"offset":5,"epoch":"gone"}}"#)
        .await;
    assert!(refused.recv().await.contains(r#"\"recovered\":false"#));
    server.push_ok("match", -1, "hello").await;
    reader
        .expect(r#"{"app":"match","member_id":-1,"text":"hello"}"#)
        .await;
    let (status, _) = server.push("{not a push").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A subscriber that never reads: pushed to until the hub drops it (its outbox full).
    let mut stuck = server.anonymous().await;
    stuck.subscribe("slow").await;
    let padding = "p".repeat(256 * 1024);
    let mut slow_pushes = 0;
    loop {
        server.push_ok("slow", -1, &padding).await;
        slow_pushes += 1;
        if !server.stat().await.contains("slow") {
            break;
        }
        assert!(slow_pushes < 10_000, "the stuck client was never closed");
    }

    let after = retry_until("the slow consumer's close to be counted", || async {
        let scrape = Scrape::of(&server).await;
        let closed = scrape.get(r#"ws_gateway_connections_closed_total{code="4100"}"#)
            - before.get(r#"ws_gateway_connections_closed_total{code="4100"}"#);
        (closed == 1.0 && scrape.get("ws_gateway_outbox_frames") == 0.0).then_some(scrape)
    })
    .await;
    let delta = |series: &str| after.get(series) - before.get(series);
    assert_eq!(delta("ws_gateway_connections_opened_total"), 3.0);
    assert_eq!(after.get("ws_gateway_connections"), 2.0);
    assert_eq!(delta(r#"ws_gateway_auth_total{result="anonymous"}"#), 2.0);
    assert_eq!(delta(r#"ws_gateway_auth_total{result="refused"}"#), 1.0);
    assert_eq!(delta(r#"ws_gateway_auth_total{result="member"}"#), 0.0);
    assert_eq!(delta("ws_gateway_auth_duration_seconds_count"), 1.0);
    assert_eq!(
        delta(r#"ws_gateway_auth_duration_seconds_bucket{le="+Inf"}"#),
        1.0
    );
    assert_eq!(
        delta("ws_gateway_pushes_accepted_total"),
        1.0 + slow_pushes as f64
    );
    assert_eq!(
        delta(r#"ws_gateway_pushes_refused_total{reason="bad_request"}"#),
        1.0
    );
    // The reader got one; the stuck client every slow push but the one that overflowed it.
    assert_eq!(
        delta("ws_gateway_deliveries_total"),
        1.0 + (slow_pushes - 1) as f64
    );
    assert_eq!(delta("ws_gateway_slow_consumer_closes_total"), 1.0);
    assert_eq!(delta("ws_gateway_history_subscriptions_total"), 2.0);
    assert_eq!(delta("ws_gateway_history_recovered_total"), 1.0);
    assert_eq!(delta("ws_gateway_history_not_recovered_total"), 1.0);
    assert_eq!(delta("ws_gateway_history_holes_lost_total"), 0.0);
    assert_eq!(after.get(r#"ws_gateway_subscriptions{app="match"}"#), 1.0);
    assert!(!after.has(r#"ws_gateway_subscriptions{app="slow"}"#));
    assert_eq!(after.get("ws_gateway_apps"), 2.0, "match and news");
    // At least the reader's batch was written; the stuck client's batches depend on the
    // socket buffers.
    assert!(delta("ws_gateway_push_to_write_seconds_count") >= 1.0);
    assert!(!after.has(r#"ws_gateway_broker_state{kind="local",state="connected"}"#));
    drop((reader, refused, stuck));
}

/// However many apps there are, `ws_gateway_subscriptions` has at most
/// `limits.metrics_top_apps` labelled series plus one for the rest.
#[tokio::test]
async fn ten_thousand_apps_make_at_most_k_plus_one_series() {
    const APPS: usize = 10_000;
    let mut config = ServerConfig::default();
    config.hub.max_subscriptions = APPS;
    config.limits.max_messages_per_s = 1_000_000;
    config.limits.message_burst = 1_000_000;
    config.limits.outbox_messages = APPS + 1;
    config.limits.outbox_bytes = 16 * 1024 * 1024;
    let k = config.limits.metrics_top_apps;
    assert_eq!(k, 50, "the documented default");
    let server = TestServer::with_config(config).await;
    let mut crowd = server.anonymous().await;
    let apps: Vec<String> = (0..APPS).map(|i| format!("app{i:05}")).collect();
    crowd.subscribe_all(&apps).await;
    // Three apps with more subscribers than the rest come first.
    let mut fans: Vec<Client> = Vec::new();
    for app in ["app00007", "app00042", "app09999"] {
        let mut fan = server.anonymous().await;
        fan.subscribe(app).await;
        fans.push(fan);
    }
    let scrape = Scrape::of(&server).await;
    let series = scrape.series_of("ws_gateway_subscriptions");
    assert_eq!(series.len(), k + 1);
    assert_eq!(
        scrape.get(r#"ws_gateway_subscriptions{app="app00007"}"#),
        2.0
    );
    assert_eq!(
        scrape.get(r#"ws_gateway_subscriptions{app="app09999"}"#),
        2.0
    );
    let total: f64 = series.iter().map(|(_, v)| v).sum();
    assert_eq!(
        total,
        (APPS + 3) as f64,
        "the rest is added up under app=\"\""
    );
    assert_eq!(
        scrape.get(r#"ws_gateway_subscriptions{app=""}"#),
        (APPS - k) as f64
    );
    assert_eq!(scrape.get("ws_gateway_apps"), APPS as f64);
}

#[tokio::test]
async fn process_metrics_are_present_and_plausible() {
    let server = TestServer::start().await;
    let _client = server.anonymous().await;
    let scrape = Scrape::of(&server).await;
    let rss = scrape.get("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 1e11, "rss {rss}");
    let fds = scrape.get("process_open_fds");
    assert!(
        fds >= 4.0 && fds <= scrape.get("process_max_fds"),
        "fds {fds}"
    );
    assert!(scrape.has("process_cpu_seconds_total"));
    assert!(scrape.get("process_virtual_memory_bytes") >= rss);
    assert!(scrape.get("process_threads") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = scrape.get("process_start_time_seconds");
    assert!(start <= now + 1.0 && start > now - 3600.0, "start {start}");
    assert!(scrape.has(&format!(
        r#"ws_gateway_build_info{{version="{}",node_id="{}"}}"#,
        env!("CARGO_PKG_VERSION"),
        format_args!("{}", node_id(&server).await)
    )));
}

async fn node_id(server: &TestServer) -> String {
    let (_, _, body) = http(server.stat_addr, "GET", "/api/overview", "").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["node_id"].as_str().unwrap().to_owned()
}

/// App names are chosen by clients: quotes, backslashes and spaces in one must not break the
/// exposition for everyone (the label value is escaped).
#[tokio::test]
async fn an_app_name_with_quotes_and_backslashes_is_escaped_in_its_label() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    let app = r#"a"b\c d"#;
    client
        .send(&serde_json::json!({ "app": app }).to_string())
        .await;
    let reply = client.recv().await;
    assert!(reply.contains(r#"\"code\":200"#), "{reply}");
    let scrape = Scrape::of(&server).await;
    assert_eq!(
        scrape.get(r#"ws_gateway_subscriptions{app="a\"b\\c d"}"#),
        1.0,
        "{:?}",
        scrape.series_of("ws_gateway_subscriptions")
    );
}
