//! Issue 13's headline test: a `gateway-client` subscribed with recovery, connected to the real
//! `ws-gateway` binary through a `test_servers::FaultProxy` that cuts its connection every
//! 200–500 ms, while a backend pushes numbered texts at a steady 100/s for 30 s. With recovery
//! every number arrives exactly once, in order; without it, pushes sent while the client was
//! reconnecting are lost (so the test can fail). Once per broker: `local` (the default
//! configuration), `redis` and `nats` (a real server from `test-servers`), and a private app.
//!
//! `RECOVERY_TEST_SECONDS` shortens (or lengthens) the 30 s of pushes. Waits are on pushes and
//! events, bounded by deadlines; the pushes' pace is the only timer.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::binary::Gateway;
use common::http;
use gateway_client::{Client, ClientStats, Event, SubscribeOptions};
use test_servers::{Cut, FaultProxy, NatsServer, RedisServer};
use tokio::time::{Instant, MissedTickBehavior};

/// Pushes per second, and how long they flow unless `RECOVERY_TEST_SECONDS` says otherwise.
const RATE: u64 = 100;
const DEFAULT_SECONDS: u64 = 30;
/// How long the client may take, once the pushes and the cuts have stopped, to receive the
/// last push.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// The proxy cuts every connection after a random wait in this range.
const CUT_EVERY: std::ops::Range<Duration> = Duration::from_millis(200)..Duration::from_millis(500);

const MEMBER: i64 = 777;
const TOKEN: &str = "777secret";

fn seconds() -> u64 {
    std::env::var("RECOVERY_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS)
        .max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Local,
    Redis,
    Nats,
}

/// A broker's server process, kept alive for the test.
#[allow(dead_code)] // held for its drop
enum BrokerServer {
    None,
    Redis(RedisServer),
    Nats(NatsServer),
}

impl BrokerServer {
    fn start(broker: Broker) -> BrokerServer {
        match broker {
            Broker::Local => BrokerServer::None,
            Broker::Redis => BrokerServer::Redis(RedisServer::start()),
            Broker::Nats => BrokerServer::Nats(NatsServer::start()),
        }
    }

    /// The `[broker]` section that reaches it, with quick reconnects as in the cluster tests.
    fn section(&self) -> String {
        let (kind, url) = match self {
            BrokerServer::None => return String::new(),
            BrokerServer::Redis(redis) => ("redis", redis.url()),
            BrokerServer::Nats(nats) => ("nats", nats.url()),
        };
        format!("[broker]\nkind = \"{kind}\"\nurl = \"{url}\"\nreconnect_max_ms = 500\n")
    }
}

/// The stream under test: a public app, or a private app's stream of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Public,
    Private,
}

impl Stream {
    fn app(self) -> &'static str {
        match self {
            Stream::Public => "match",
            Stream::Private => "im",
        }
    }

    fn member_id(self) -> i64 {
        match self {
            Stream::Public => -1,
            Stream::Private => MEMBER,
        }
    }

    fn push_body(self, text: &str) -> String {
        serde_json::json!({"app": self.app(), "member_id": self.member_id(), "text": text})
            .to_string()
    }
}

/// The binary with the default configuration plus a private app `im`, member 777 and the
/// broker's section.
async fn start_gateway(dir: &tempfile::TempDir, broker: &BrokerServer) -> (Gateway, SocketAddr) {
    let config = format!(
        "private_apps = [\"im\"]\n{}\n[auth]\nkind = \"static\"\n[auth.tokens]\n{MEMBER} = \"{TOKEN}\"\n",
        broker.section()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut gateway = Gateway::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--stat-listen",
        "127.0.0.1:0",
    ]);
    let (addr, _) = gateway.addresses().await;
    (gateway, addr)
}

async fn push(addr: SocketAddr, stream: Stream, text: &str) {
    let (status, _, answer) = http(addr, "POST", "/push", &stream.push_body(text)).await;
    assert_eq!(status.as_u16(), 202, "push {text} refused: {answer}");
}

/// What one run saw.
#[derive(Debug)]
struct Outcome {
    sent: u64,
    /// The numbers received, in the order they arrived.
    received: Vec<u64>,
    /// Their positions (`offset@epoch`), to tell where the stream broke.
    positions: Vec<String>,
    stats: ClientStats,
    cuts: u64,
    connections: u64,
    losses: u64,
}

/// Pushes `0..RATE·seconds` to `stream` at `RATE`/s while the proxy cuts the client's
/// connection every 200–500 ms; then stops the cuts and pushes `end` markers until one
/// arrives, so the run ends on an event whether or not pushes were lost.
async fn run(broker: Broker, stream: Stream, recover: bool) -> Outcome {
    let server = BrokerServer::start(broker);
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, addr) = start_gateway(&dir, &server).await;
    let proxy = FaultProxy::start(addr);
    let (client, mut pushes, mut events) = Client::builder(format!("ws://{}/", proxy.addr()))
        .member(MEMBER, TOKEN)
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    client
        .subscribe_with(stream.app(), SubscribeOptions::new().recover(recover))
        .await
        .unwrap();

    // Events: how many connections were made, and losses the gateway announced.
    let connections = Arc::new(AtomicU64::new(0));
    let losses = Arc::new(AtomicU64::new(0));
    let counting = {
        let (connections, losses) = (connections.clone(), losses.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::Connected { .. } => connections.fetch_add(1, Ordering::Relaxed),
                    Event::PushesLost { .. } => losses.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
        })
    };

    let sent = RATE * seconds();
    proxy.cut_randomly(CUT_EVERY, Cut::Reset);
    let mut pusher = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_secs(1) / RATE as u32);
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for n in 0..sent {
            pace.tick().await;
            push(addr, stream, &n.to_string()).await;
        }
    });
    let mut pushing = true;
    let mut deadline = Instant::now() + Duration::from_secs(seconds() * 3) + SETTLE_WITHIN;
    // End markers pace themselves from the moment the pushes stop. (An interval left unpolled
    // through the pushes would fire every missed tick at once: ~150 markers, more than the
    // history keeps, so a client cut at that moment would rightly be told it lost pushes.)
    let mut marker = tokio::time::interval(Duration::from_millis(200));
    marker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut markers = 0u64;
    // Markers still on their way when the run ends are dropped (aborted) before the gateway.
    let mut marker_pushes = tokio::task::JoinSet::new();
    let mut received = Vec::with_capacity(sent as usize);
    let mut positions = Vec::with_capacity(sent as usize);
    loop {
        tokio::select! {
            push = pushes.next() => {
                let push = push.expect("the push stream ended");
                assert_eq!((push.app.as_str(), push.member_id), (stream.app(), stream.member_id()));
                assert_eq!(push.position.is_some(), recover, "{push:?}");
                if push.text.starts_with("end") {
                    break;
                }
                received.push(push.text.parse::<u64>().unwrap());
                positions.push(push.position.map(|p| format!("{}@{}", p.offset, p.epoch)).unwrap_or_default());
            }
            done = &mut pusher, if pushing => {
                done.unwrap();
                pushing = false;
                proxy.stop_cutting();
                deadline = Instant::now() + SETTLE_WITHIN;
                marker.reset_immediately();
            }
            _ = marker.tick(), if !pushing => {
                markers += 1;
                let text = format!("end-{markers}");
                marker_pushes.spawn(async move { push(addr, stream, &text).await });
            }
            () = tokio::time::sleep_until(deadline) => panic!(
                "no end marker within the deadline: {} of {sent} received, the last {:?}",
                received.len(),
                received.last()
            ),
        }
    }
    let outcome = Outcome {
        sent,
        received,
        positions,
        stats: client.stats(),
        cuts: proxy.cuts(),
        connections: connections.load(Ordering::Relaxed),
        losses: losses.load(Ordering::Relaxed),
    };
    client.close().await;
    counting.await.unwrap();
    eprintln!(
        "{broker:?} {stream:?} recover={recover}: {} of {} received, {} cuts, {} connections, {:?}",
        outcome.received.len(),
        outcome.sent,
        outcome.cuts,
        outcome.connections,
        outcome.stats
    );
    outcome
}

/// The cuts did happen, and the client came back after them.
fn assert_chaos(outcome: &Outcome) {
    let expected = seconds() * 1000 / 500 / 2; // half the fewest the schedule allows
    assert!(
        outcome.cuts >= expected.max(1),
        "only {} cuts in {} s",
        outcome.cuts,
        seconds()
    );
    assert!(
        outcome.connections > outcome.cuts / 2,
        "{} connections after {} cuts",
        outcome.connections,
        outcome.cuts
    );
}

/// Every number exactly once, in order; no duplicate dropped, no offset skipped, no loss.
async fn recovers(broker: Broker, stream: Stream) {
    let outcome = run(broker, stream, true).await;
    assert_chaos(&outcome);
    let expected: Vec<u64> = (0..outcome.sent).collect();
    if outcome.received != expected {
        let missing = expected
            .iter()
            .filter(|n| !outcome.received.contains(n))
            .count();
        // The pushes around the first break, with their positions.
        let at = outcome
            .received
            .iter()
            .zip(&expected)
            .position(|(got, want)| got != want)
            .unwrap_or(outcome.received.len());
        let around: Vec<String> = (at.saturating_sub(3)..(at + 3).min(outcome.received.len()))
            .map(|i| format!("{} at {}", outcome.received[i], outcome.positions[i]))
            .collect();
        panic!(
            "{} of {} received, {missing} missing, in order: {}; around the first break: {around:?}",
            outcome.received.len(),
            outcome.sent,
            outcome.received.is_sorted(),
        );
    }
    assert_eq!(outcome.stats, ClientStats::default());
    assert_eq!(outcome.losses, 0);
}

/// Without recovery the cuts lose pushes (what the recovering runs are measured against);
/// what arrives still arrives once and in order.
async fn loses_without_recovery(broker: Broker) {
    let outcome = run(broker, Stream::Public, false).await;
    assert_chaos(&outcome);
    assert!(
        outcome.received.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice"
    );
    assert!(
        (outcome.received.len() as u64) < outcome.sent,
        "nothing lost in {} cuts: the test cannot tell recovery from luck",
        outcome.cuts
    );
    assert_eq!(outcome.stats, ClientStats::default());
}

mod local {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn public_app_recovers_every_push() {
        recovers(Broker::Local, Stream::Public).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_app_recovers_every_push() {
        recovers(Broker::Local, Stream::Private).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_recovery_pushes_are_lost() {
        loses_without_recovery(Broker::Local).await;
    }
}

mod redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn public_app_recovers_every_push() {
        recovers(Broker::Redis, Stream::Public).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_recovery_pushes_are_lost() {
        loses_without_recovery(Broker::Redis).await;
    }
}

mod nats {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn public_app_recovers_every_push() {
        recovers(Broker::Nats, Stream::Public).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_recovery_pushes_are_lost() {
        loses_without_recovery(Broker::Nats).await;
    }
}
