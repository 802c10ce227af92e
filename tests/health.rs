//! `GET /healthz` and `GET /readyz` on the stat listener: alive, and ready for traffic (the
//! listeners up, the broker connected, not shutting down), with the reasons when not.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::time::Duration;

use common::{TestServer, http, retry_until};
use gateway_broker::BrokerSettings;
use gateway_server::{BrokerConfig, BrokerKind, ServerConfig};
use hyper::StatusCode;
use test_servers::RedisServer;

#[tokio::test]
async fn a_running_gateway_is_alive_and_ready() {
    let server = TestServer::start().await;
    let (status, headers, body) = http(server.stat_addr, "GET", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let (status, _, body) = http(server.stat_addr, "GET", "/readyz", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
    let (status, headers, _) = http(server.stat_addr, "POST", "/readyz", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
}

/// Once shutdown starts the gateway is not ready, and says so while its connections are still
/// closing (the stat listener is the last to stop).
#[tokio::test]
async fn readyz_answers_503_while_shutdown_closes_the_connections() {
    let mut config = ServerConfig::default();
    // The client below does not answer the close frame until told: the gateway waits for it.
    config.timeouts.close = Duration::from_secs(30);
    config.timeouts.shutdown = Duration::from_secs(30);
    let server = TestServer::with_config(config).await;
    let stat = server.stat_addr;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;

    let stopping = tokio::spawn(server.shutdown());
    let (status, body) = retry_until("readyz to answer 503", || async {
        let (status, _, body) = http(stat, "GET", "/readyz", "").await;
        (status != StatusCode::OK).then_some((status, body))
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "shutting down\n");
    assert!(!stopping.is_finished(), "the connection is still closing");
    let (status, _, body) = http(stat, "GET", "/healthz", "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "ok\n"),
        "still alive"
    );

    // The client takes the close and goes: the gateway finishes, the stat listener last.
    client.expect_close(1001).await;
    drop(client);
    common::guard("the shutdown", stopping).await.unwrap();
    // The stat listener is gone. (Another test's server may already have been given the
    // freed port: then whatever answers there is not this gateway's stat listener.)
    if let Ok(mut stream) = tokio::net::TcpStream::connect(stat).await {
        use tokio::io::AsyncWriteExt;
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            common::read_until_closed(&mut stream),
        )
        .await
        .unwrap_or_default();
        assert!(
            !answer.ends_with("\r\n\r\nok\n"),
            "still answering: {answer}"
        );
    }
}

/// A node whose broker is lost is not ready until it is connected again.
#[tokio::test]
async fn readyz_follows_the_broker_connection() {
    let mut redis = RedisServer::start();
    let broker = BrokerConfig {
        kind: BrokerKind::Redis {
            urls: vec![redis.url()],
        },
        settings: BrokerSettings {
            reconnect_max: Duration::from_millis(300),
            ..BrokerSettings::default()
        },
        report_interval: Duration::from_millis(200),
        subscribe_timeout: Duration::from_secs(3),
    };
    let config = ServerConfig {
        broker,
        ..ServerConfig::default()
    };
    let server = TestServer::with_config(config).await;
    let readyz = || async {
        let (status, _, body) = http(server.stat_addr, "GET", "/readyz", "").await;
        (status, body)
    };
    retry_until("the broker to connect", || async {
        (readyz().await.0 == StatusCode::OK).then_some(())
    })
    .await;

    redis.stop();
    let (status, body) = retry_until("readyz to see the broker lost", || async {
        let (status, body) = readyz().await;
        (status != StatusCode::OK).then_some((status, body))
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "broker disconnected: redis is connecting\n");
    let (_, _, overview) = http(server.stat_addr, "GET", "/api/overview", "").await;
    let overview: serde_json::Value = serde_json::from_str(&overview).unwrap();
    assert_eq!(overview["ready"], false);
    assert_eq!(
        overview["not_ready"],
        serde_json::json!(["broker disconnected: redis is connecting"])
    );
    assert_eq!(
        overview["broker"],
        serde_json::json!({"kind": "redis", "state": "connecting"})
    );

    redis.restart();
    let body = retry_until("readyz to see the broker back", || async {
        let (status, body) = readyz().await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body, "ready\n");
    server.shutdown().await;
}
