//! The stat listener's own bounds (its tower stack): requests answered at once
//! (`limits.max_stat_requests`) and the time an answer may take (`timeouts.stat_request_ms`).
//! A request it cannot take is answered `503` with its reason, never left hanging.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::time::Duration;

use common::{TestServer, http, retry_until};
use gateway_broker::BrokerSettings;
use gateway_server::{BrokerConfig, BrokerKind, ServerConfig};
use hyper::StatusCode;
use test_servers::RedisServer;

/// A node over a real Redis: `/stat?scope=cluster` waits for Redis, which a test can stall
/// with `DEBUG SLEEP`.
async fn node_over_redis(redis: &RedisServer, config: ServerConfig) -> TestServer {
    let broker = BrokerConfig {
        kind: BrokerKind::Redis {
            urls: vec![redis.url()],
        },
        settings: BrokerSettings {
            publish_timeout: Duration::from_secs(10),
            ..BrokerSettings::default()
        },
        report_interval: Duration::from_millis(200),
        subscribe_timeout: Duration::from_secs(10),
    };
    let server = TestServer::with_config(ServerConfig { broker, ..config }).await;
    retry_until("the broker to connect", || async {
        let (status, _, _) = http(server.stat_addr, "GET", "/readyz", "").await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    server
}

/// Stalls every other client of Redis for `ms` (`CLIENT PAUSE … ALL`).
fn stall(redis: &RedisServer, ms: &str) {
    let paused = redis.command(&["CLIENT", "PAUSE", ms, "ALL"]).unwrap();
    assert_eq!(paused.trim(), "OK");
}

#[tokio::test]
async fn a_request_beyond_max_stat_requests_is_answered_503_at_once() {
    let redis = RedisServer::start();
    let mut config = ServerConfig::default();
    config.limits.max_stat_requests = 1;
    let server = node_over_redis(&redis, config).await;

    stall(&redis, "2000");
    // The cluster view waits for the stalled Redis and holds the one slot...
    let slow = tokio::spawn(http(server.stat_addr, "GET", "/stat?scope=cluster", ""));
    // ...so another request is refused at once, with its reason.
    let (status, headers, body) = retry_until("a request refused for want of a slot", || async {
        let answer = http(server.stat_addr, "GET", "/metrics", "").await;
        (answer.0 != StatusCode::OK).then_some(answer)
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "too many stat requests at once (limits.max_stat_requests)\n"
    );
    assert_eq!(headers["retry-after"], "1");
    // The health probes are outside the limit: a busy stat listener does not make a load
    // balancer drain the node.
    let (status, _, body) = http(server.stat_addr, "GET", "/readyz", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
    // The slow one is answered once Redis wakes up, and the slot is free again.
    let (status, _, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = http(server.stat_addr, "GET", "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_answer_not_ready_within_stat_request_ms_is_503() {
    let redis = RedisServer::start();
    let mut config = ServerConfig::default();
    config.timeouts.stat_request = Duration::from_millis(300);
    let server = node_over_redis(&redis, config).await;

    // Stall Redis, then ask for the cluster view: it cannot be answered within 300 ms.
    let (status, headers, body) = retry_until("a cluster view cut by the timeout", || async {
        stall(&redis, "1000");
        let answer = http(server.stat_addr, "GET", "/stat?scope=cluster", "").await;
        (answer.0 != StatusCode::OK).then_some(answer)
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no answer within 300 ms (timeouts.stat_request_ms)\n");
    assert_eq!(headers["retry-after"], "1");
}
