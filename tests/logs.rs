//! The binary's log: JSON lines that parse, one line per refusal with its reason (never the
//! token), rate-limited so that a flood of bad clients cannot flood the log.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::binary::Gateway;
use common::*;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
stat_listen = "127.0.0.1:0"
push_api_keys = ["a-push-key-of-16-chars-or-more"]
[auth]
kind = "static"
[auth.tokens]
123456 = "654321"
"#;

fn start(dir: &tempfile::TempDir) -> Gateway {
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, CONFIG).unwrap();
    Gateway::start(&["--config", config.to_str().unwrap(), "--log-format", "json"])
}

/// The listener's address from its JSON start-up line (`…listener on 127.0.0.1:5000"…`).
async fn main_address(gateway: &mut Gateway) -> SocketAddr {
    let rest = gateway
        .wait_for_log("websocket and push listener on ")
        .await;
    rest.split('"').next().unwrap().parse().unwrap()
}

fn parse(line: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
    for key in ["timestamp", "level", "target", "fields"] {
        assert!(value.get(key).is_some(), "no {key:?} in {line}");
    }
    value
}

#[tokio::test]
async fn json_lines_parse_and_a_refused_member_is_logged_with_its_reason_never_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = start(&dir);
    let addr = main_address(&mut gateway).await;

    let mut client = Client::connect(&format!("ws://{addr}/")).await;
    client
        .send(r#"{"member_id":123456,"token":"a-wrong-secret-token"}"#)
        .await;
    client.expect(&unauthorized()).await;
    let line = gateway.wait_for_log("member refused: wrong token").await;
    assert!(
        line.contains(r#""member":"123456""#) || line.contains(r#""member":123456"#),
        "{line}"
    );
    assert!(line.contains(r#""peer":"127.0.0.1:"#), "{line}");

    let (status, log) = gateway.terminate().await;
    assert!(status.success());
    let refused: Vec<serde_json::Value> = log
        .iter()
        .map(|line| parse(line))
        .filter(|value| {
            value["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("member refused"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    assert_eq!(refused[0]["level"], "INFO");
    assert!(
        log.iter()
            .all(|line| !line.contains("a-wrong-secret-token")),
        "the token is never logged"
    );
}

#[tokio::test]
async fn a_flood_of_refused_requests_is_logged_at_a_bounded_rate_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = start(&dir);
    let addr = main_address(&mut gateway).await;

    let started = Instant::now();
    const FLOOD: usize = 300;
    for _ in 0..FLOOD {
        let (status, _, _) = http(addr, "POST", "/push", r#"{"app":"a","text":"x"}"#).await;
        assert_eq!(status, 401);
    }
    // Refused again at a trickle until a line reports the lines held back (the first line of
    // a later second does).
    let sent = Arc::new(AtomicUsize::new(FLOOD));
    let trickle = tokio::spawn({
        let sent = sent.clone();
        async move {
            for _ in 0..200 {
                let (status, _, _) = http(addr, "POST", "/push", "{}").await;
                assert_eq!(status, 401);
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    loop {
        let rest = gateway.wait_for_log(r#""suppressed":"#).await;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if digits.parse::<u64>().unwrap() > 0 {
            break;
        }
    }
    trickle.abort();
    let _ = trickle.await;
    let sent = sent.load(Ordering::SeqCst) + 1; // perhaps one more, answered as it was aborted
    let (_, log) = gateway.terminate().await;
    let elapsed_s = started.elapsed().as_secs() + 2;
    let lines: Vec<serde_json::Value> = log
        .iter()
        .map(|line| parse(line))
        .filter(|value| {
            value["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("request refused: push requires"))
        })
        .collect();
    let suppressed: u64 = lines
        .iter()
        .map(|line| line["fields"]["suppressed"].as_u64().unwrap())
        .sum();
    assert!(suppressed >= 1, "{lines:#?}");
    assert!(
        lines.len() < FLOOD,
        "{} lines for {FLOOD} refusals",
        lines.len()
    );
    assert!(
        lines.len() as u64 <= 20 * elapsed_s,
        "{} lines in {elapsed_s} s",
        lines.len()
    );
    assert!(
        lines.len() as u64 + suppressed <= sent as u64,
        "{sent} sent"
    );
}
