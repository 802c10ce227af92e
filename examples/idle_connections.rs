//! Holds N idle, authenticated, subscribed connections to a running gateway and reports the
//! gateway's resident memory per connection (read from `/proc/<pid>/status`).
//!
//! Run with (gateway started separately, e.g. `target/release/ws-gateway --listen 127.0.0.1:5000`):
//!     cargo run --release --example idle_connections -- <gateway-pid> 10000 ws://127.0.0.1:5000/
//!
//! Each client process holds one socket per connection: keep N under the open-file limit.
//! The clients bind source addresses 127.0.0.2.. so large N does not exhaust one address's
//! ephemeral ports.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

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
    let count: usize = args.next().map_or(10_000, |n| n.parse().expect("a count"));
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:5000/".to_owned());
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("ws://ip:port/");

    let before = rss_kib(pid);
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let socket = TcpSocket::new_v4().expect("a socket");
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i / 20_000) as u8);
        socket
            .bind((source, 0).into())
            .expect("bind a source address");
        let stream = socket.connect(addr).await.expect("connect");
        let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .expect("upgrade");
        for message in [r#"{"member_id":-1,"token":""}"#, r#"{"app":"idle"}"#] {
            ws.send(Message::text(message)).await.expect("send");
        }
        for _ in 0..2 {
            ws.next().await.expect("a reply").expect("a reply");
        }
        held.push(ws);
    }
    let elapsed = started.elapsed();
    // Let the allocator settle; RSS is what the kernel reports, not a timing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / count as f64;
    println!(
        "connections={count} setup_s={:.2} conns_per_s={:.0} rss_before_kib={before} rss_after_kib={after} rss_per_conn_bytes={per_conn:.0}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    drop(held);
}
