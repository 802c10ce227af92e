//! A bounded soak: holds N subscribed connections to a running gateway, pushes at a fixed rate
//! for a fixed time, and reports the gateway's RSS over time, deliveries and loss; then closes
//! everything and reports RSS again.
//!
//! Run with (gateway started separately, e.g. `target/release/ws-gateway --listen 127.0.0.1:5000`):
//!     cargo run --release --example soak -- <gateway-pid> [connections=3000] [seconds=180] [pushes_per_s=20]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const ADDR: &str = "127.0.0.1:5000";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a running pid");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let pid: u32 = args.next().expect("gateway pid").parse().expect("a pid");
    let count: usize = args.next().map_or(3000, |n| n.parse().expect("a count"));
    let seconds: u64 = args.next().map_or(180, |n| n.parse().expect("seconds"));
    let rate: u64 = args
        .next()
        .map_or(20, |n| n.parse().expect("pushes per second"));
    let addr: std::net::SocketAddr = ADDR.parse().expect("an address");

    let baseline = rss_kib(pid);
    println!("baseline rss_kib={baseline}");
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(count);
    for i in 0..count {
        let socket = TcpSocket::new_v4().expect("a socket");
        let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i / 20_000) as u8);
        socket
            .bind((source, 0).into())
            .expect("bind a source address");
        let stream = socket.connect(addr).await.expect("connect");
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{ADDR}/"), stream)
            .await
            .expect("upgrade");
        for message in [r#"{"member_id":-1,"token":""}"#, r#"{"app":"soak"}"#] {
            ws.send(Message::text(message)).await.expect("send");
        }
        for _ in 0..2 {
            ws.next().await.expect("a reply").expect("a reply");
        }
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let connected = rss_kib(pid);
    println!(
        "connected={count} rss_kib={connected} rss_per_conn_bytes={}",
        (connected.saturating_sub(baseline) * 1024) / count as u64
    );

    let stream = TcpStream::connect(addr).await.expect("connect for pushes");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut pushes = 0u64;
    let mut next_report = Duration::from_secs(10);
    let payload = format!(r#"{{"app":"soak","text":"{}"}}"#, "x".repeat(200));
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let request = hyper::Request::post("/push")
            .header("host", ADDR)
            .body(Full::new(Bytes::from(payload.clone())))
            .expect("a request");
        sender.ready().await.expect("the push connection is usable");
        let response = sender.send_request(request).await.expect("a response");
        assert_eq!(response.status(), 202);
        // Read the (empty) body so the keep-alive connection takes the next request.
        response.into_body().collect().await.expect("a body");
        pushes += 1;
        if started.elapsed() >= next_report {
            println!(
                "t_s={} rss_kib={} pushes={pushes} deliveries={}",
                next_report.as_secs(),
                rss_kib(pid),
                received.load(Ordering::Relaxed)
            );
            next_report += Duration::from_secs(10);
        }
    }
    // Let the last deliveries land, then account.
    let expected = pushes * count as u64;
    let settle = Instant::now();
    while received.load(Ordering::Relaxed) < expected && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.load(Ordering::Relaxed);
    println!(
        "pushes={pushes} expected_deliveries={expected} deliveries={got} lost={}",
        expected - got.min(expected)
    );

    for reader in &readers {
        reader.abort();
    }
    drop(readers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after_close rss_kib={} (baseline {baseline})", rss_kib(pid));
}
