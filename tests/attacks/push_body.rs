//! Finding 1: push requests whose bodies stall must not starve legitimate pushes.

use std::time::Duration;

use gateway_server::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::*;

/// A push head announcing `declared` body bytes, followed by `sent` of them.
async fn stalled_push(server: &TestServer, declared: usize, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

#[tokio::test]
async fn stalled_push_bodies_do_not_starve_other_pushes() {
    let mut config = ServerConfig::default();
    // Fewer dispatch slots than stalled senders: they must hold none of them.
    config.limits.max_inflight_pushes = 8;
    config.timeouts.push_body = Duration::from_secs(2);
    let server = TestServer::with_config(config).await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("match").await;

    let mut stalled = Vec::new();
    for _ in 0..128 {
        stalled.push(stalled_push(&server, 65536, b"{").await);
    }
    // Every legitimate push is accepted and delivered while they stall.
    for i in 0..20 {
        server.push_ok("match", -1, &format!("push {i}")).await;
        subscriber
            .expect(&format!(
                r#"{{"app":"match","member_id":-1,"text":"push {i}"}}"#
            ))
            .await;
    }
    assert_eq!(server.counters.pushes_refused(), 0);

    // Past the body deadline each stalled sender gets 408 and its connection is closed.
    for stream in &mut stalled {
        let answer = read_until_closed(stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("push body not received within 2000 ms\n"));
    }
    assert_eq!(server.counters.push_body_timeouts(), 128);
    subscriber.expect_nothing_more().await;
}

#[tokio::test]
async fn the_push_body_deadline_is_total_not_per_byte() {
    let mut config = ServerConfig::default();
    config.timeouts.push_body = Duration::from_millis(600);
    let server = TestServer::with_config(config).await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("match").await;

    let body = br#"{"app":"match","text":"trickled"}"#;
    let trickler = stalled_push(&server, body.len(), b"").await;
    let (mut reader, mut writer) = trickler.into_split();
    let started = tokio::time::Instant::now();
    // One byte every 100 ms: each gap is far below the deadline, the whole is far above it.
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let answer = read_until_closed(&mut reader).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(3 * 1000));
    trickle.abort();
    // Nothing of it was delivered.
    subscriber.expect_nothing_more().await;
}

#[tokio::test]
async fn bodies_stalled_near_the_limit_give_way_to_live_pushes() {
    let mut config = ServerConfig::default();
    config.limits.max_push_body_bytes = 100_000;
    config.limits.max_buffered_push_bytes = 400_000;
    config.timeouts.evict_after = Duration::from_millis(300);
    config.timeouts.push_body = Duration::from_secs(2);
    let server = TestServer::with_config(config).await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("match").await;

    // Eight senders each stall 1,000 bytes short of a 100 kB body: together more than the
    // bytes the gateway buffers for bodies.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(stalled_push(&server, 100_000, &[b' '; 99_000]).await);
    }
    // A live 50 kB push gets through: at first perhaps after a 503 (while the stalled bodies
    // are younger than timeouts.evict_after_ms), then at once, every time.
    let text = "x".repeat(50_000);
    let body = format!(r#"{{"app":"match","text":"{text}"}}"#);
    let expected = format!(r#"{{"app":"match","member_id":-1,"text":"{text}"}}"#);
    retry_until("a live push through", || async {
        let (status, reason) = server.push(&body).await;
        if status != hyper::StatusCode::ACCEPTED {
            assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE, "{reason}");
        }
        (status == hyper::StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert_eq!(subscriber.recv().await, expected);
    for _ in 0..10 {
        let (status, reason) = server.push(&body).await;
        assert_eq!(status, hyper::StatusCode::ACCEPTED, "{reason}");
        assert_eq!(subscriber.recv().await, expected);
    }
    // The stalled senders that gave way were told so, the others were refused (503) or ran
    // out of time (408); none of them was delivered.
    let mut evicted = 0;
    for stream in &mut stalled {
        let answer = read_until_closed(stream).await;
        if answer.ends_with("push body too slow: its room was needed by other pushes\n") {
            evicted += 1;
        } else {
            assert!(
                answer.starts_with("HTTP/1.1 503") || answer.starts_with("HTTP/1.1 408"),
                "{answer}"
            );
        }
    }
    assert!(evicted >= 1);
    subscriber.expect_nothing_more().await;
}
