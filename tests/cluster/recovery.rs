//! Recovery in a cluster (issue 13), end to end with the Rust client (`gateway-client`): a
//! client that moves to another node recovers from the history every node shares; a broker
//! restart loses nothing silently; a client away for longer than the history reaches is told
//! (`recovered:false`) and continues live.
//!
//! The client cannot be pointed at another URL, so it connects through a [`Switch`], a TCP
//! proxy the test retargets: it cuts the client's connection, keeps it away while pushes flow
//! (new connections are closed at once), and then sends it to another node. Every wait is on
//! an event (a push received, pushes accepted, a counter) bounded by `GUARD`; the pushes' pace
//! is the only timer.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_client::{Client, ClientStats, Event, Position, Pushes, SubscribeOptions};
use gateway_core::history::{HistoryPolicy, StreamLimits};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, MissedTickBehavior};

use crate::common::{GUARD, TestServer, guard, http, retry_until};
use crate::{Cluster, Kind, per_broker};

per_broker!(
    a_client_moved_to_another_node_recovers_every_push_from_the_shared_history,
    a_broker_restart_loses_no_accepted_push_silently,
    a_client_away_longer_than_the_history_is_told_and_continues_live,
);

const APP: &str = "match";
/// The backend's pace, pushes per second.
const RATE: u32 = 100;

// --- A proxy the test moves between nodes -------------------------------------------------

/// A TCP proxy on `127.0.0.1:0` whose target the test moves. Connections are forwarded to the
/// target they were accepted for; [`move_to`](Switch::move_to) and [`pause`](Switch::pause)
/// cut every live one (both sockets dropped: the client sees the connection end and
/// reconnects). While paused, new connections are closed as soon as they are accepted.
struct Switch {
    addr: SocketAddr,
    state: Arc<Mutex<SwitchState>>,
    accept: JoinHandle<()>,
}

struct SwitchState {
    /// `None` while paused.
    target: Option<SocketAddr>,
    live: Vec<AbortHandle>,
    /// Connections forwarded, per target.
    forwarded: HashMap<SocketAddr, u64>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SwitchState {
            target: Some(target),
            live: Vec::new(),
            forwarded: HashMap::new(),
        }));
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    // Spawned under the lock, so a move that follows cuts this one too: no
                    // connection to the old target outlives a move.
                    let mut state = state.lock().unwrap();
                    let Some(target) = state.target else {
                        continue; // paused: `inbound` is dropped, i.e. closed
                    };
                    *state.forwarded.entry(target).or_default() += 1;
                    let forward = tokio::spawn(forward(inbound, target));
                    state.live.retain(|live| !live.is_finished());
                    state.live.push(forward.abort_handle());
                }
            }
        });
        Switch {
            addr,
            state,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Cuts every connection and closes new ones until [`move_to`](Self::move_to).
    fn pause(&self) {
        self.retarget(None);
    }

    /// Cuts every connection; new ones go to `target`.
    fn move_to(&self, target: SocketAddr) {
        self.retarget(Some(target));
    }

    fn retarget(&self, target: Option<SocketAddr>) {
        let mut state = self.state.lock().unwrap();
        state.target = target;
        for live in state.live.drain(..) {
            live.abort();
        }
    }

    fn forwarded(&self, target: SocketAddr) -> u64 {
        let state = self.state.lock().unwrap();
        state.forwarded.get(&target).copied().unwrap_or(0)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accept.abort();
        self.pause();
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr) {
    if let Ok(mut outbound) = TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

// --- A recovering client and what it received ---------------------------------------------

/// A `gateway-client` subscribed to [`APP`] with recovery, the numbers it received (in
/// arrival order, with their positions) and the events it counted.
struct Recovering {
    name: &'static str,
    client: Client,
    pushes: Pushes,
    numbers: Vec<u64>,
    positions: Vec<Option<Position>>,
    /// `Event::Connected`, and `Event::PushesLost` with the positions they named.
    connections: Arc<AtomicU64>,
    lost: Arc<Mutex<Vec<Option<Position>>>>,
    events: JoinHandle<()>,
}

impl Recovering {
    async fn connect(name: &'static str, url: String, recover: bool) -> Recovering {
        let (client, pushes, mut events) = Client::builder(url)
            .anonymous()
            .connect_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        client
            .subscribe_with(APP, SubscribeOptions::new().recover(recover))
            .await
            .unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let events = tokio::spawn({
            let (connections, lost) = (connections.clone(), lost.clone());
            async move {
                while let Some(event) = events.next().await {
                    match event {
                        Event::Connected { .. } => {
                            connections.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::PushesLost { position, .. } => lost.lock().unwrap().push(position),
                        _ => {}
                    }
                }
            }
        });
        Recovering {
            name,
            client,
            pushes,
            numbers: Vec::new(),
            positions: Vec::new(),
            connections,
            lost,
            events,
        }
    }

    /// Receives until a push whose text satisfies `done` arrives (numbers are recorded,
    /// other texts are markers); fails after `GUARD` with what arrived.
    async fn receive_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + GUARD;
        loop {
            let push = tokio::select! {
                push = self.pushes.next() => push.expect("the push stream ended"),
                () = tokio::time::sleep_until(deadline) => panic!(
                    "{}: never received {what}; {} numbers, the last {:?}, losses {:?}",
                    self.name, self.numbers.len(), self.numbers.last(), self.lost()
                ),
            };
            assert_eq!(push.app, APP);
            if let Ok(number) = push.text.parse::<u64>() {
                self.numbers.push(number);
                self.positions.push(push.position);
            }
            if done(&push.text) {
                return;
            }
        }
    }

    /// Receives until number `n` or a later one has arrived.
    async fn receive_through(&mut self, n: u64) {
        if self.numbers.last().is_some_and(|last| *last >= n) {
            return;
        }
        self.receive_until(&format!("number {n}"), |text| {
            text.parse::<u64>().is_ok_and(|got| got >= n)
        })
        .await;
    }

    fn lost(&self) -> Vec<Option<Position>> {
        self.lost.lock().unwrap().clone()
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The stats, after closing the client (so every event has been counted).
    async fn close(
        self,
    ) -> (
        Vec<u64>,
        Vec<Option<Position>>,
        ClientStats,
        Vec<Option<Position>>,
    ) {
        let stats = self.client.stats();
        self.client.close().await;
        guard("the client's event stream to end", self.events)
            .await
            .unwrap();
        let lost = self.lost.lock().unwrap().clone();
        (self.numbers, self.positions, stats, lost)
    }
}

/// Why `numbers` are not `expected`, with the positions around the first difference.
fn explain(numbers: &[u64], positions: &[Option<Position>], expected: &[u64]) -> String {
    let at = numbers
        .iter()
        .zip(expected)
        .position(|(got, want)| got != want)
        .unwrap_or(numbers.len().min(expected.len()));
    let around: Vec<String> = (at.saturating_sub(3)..(at + 3).min(numbers.len()))
        .map(|i| match &positions[i] {
            Some(p) => format!("{} at {}@{}", numbers[i], p.offset, p.epoch),
            None => format!("{} unpositioned", numbers[i]),
        })
        .collect();
    let got: BTreeSet<u64> = numbers.iter().copied().collect();
    let missing = expected.iter().filter(|n| !got.contains(n)).count();
    format!(
        "{} received of {} expected, {missing} missing, in order: {}; around the first difference: {around:?}",
        numbers.len(),
        expected.len(),
        numbers.is_sorted()
    )
}

/// Positions of one run, one offset apart: the stream was handed out whole and in order, and
/// the nodes agreed on the positions.
fn assert_consecutive(name: &str, positions: &[Option<Position>]) {
    for pair in positions.windows(2) {
        let (a, b) = (pair[0].as_ref().unwrap(), pair[1].as_ref().unwrap());
        assert!(
            a.epoch == b.epoch && b.offset == a.offset + 1,
            "{name}: {}@{} then {}@{}",
            a.offset,
            a.epoch,
            b.offset,
            b.epoch
        );
    }
}

// --- The backend ---------------------------------------------------------------------------

fn push_body(text: &str) -> String {
    serde_json::json!({"app": APP, "text": text}).to_string()
}

/// Pushes `0..count` at [`RATE`]/s, number `n` through `through[n % len]`, each asserted
/// `202`; `accepted` counts them.
fn pushing(count: u64, through: Vec<SocketAddr>) -> (JoinHandle<()>, watch::Receiver<u64>) {
    let (accepted, progress) = watch::channel(0u64);
    let pusher = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_secs(1) / RATE);
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for n in 0..count {
            pace.tick().await;
            let addr = through[n as usize % through.len()];
            let (status, _, answer) = http(addr, "POST", "/push", &push_body(&n.to_string())).await;
            assert_eq!(status, 202, "push {n} refused: {answer}");
            accepted.send_replace(n + 1);
        }
    });
    (pusher, progress)
}

/// Waits until at least `n` pushes were accepted.
async fn accepted_at_least(progress: &mut watch::Receiver<u64>, n: u64) {
    guard(
        &format!("{n} pushes accepted"),
        progress.wait_for(|a| *a >= n),
    )
    .await
    .unwrap();
}

// --- 1. Moving to another node ---------------------------------------------------------------

/// A 3-node cluster; the client starts on node A, pushes flow through all three in turn, and
/// twice the client is cut, kept away while 20 pushes are accepted, and sent to another node
/// (B, then C), which replays what it missed from the broker's history.
async fn a_client_moved_to_another_node_recovers_every_push_from_the_shared_history(kind: Kind) {
    const COUNT: u64 = 300;
    const AWAY_FOR: u64 = 20;
    let cluster = Cluster::start(kind, 3).await;
    let [a, b, c] = [0, 1, 2].map(|i| cluster.nodes[i].addr);
    let switch = Switch::start(a).await;
    let mut client = Recovering::connect("client", switch.url(), true).await;
    let (pusher, mut progress) = pushing(COUNT, vec![c, a, b]);

    for (at, to) in [(80, b), (180, c)] {
        client.receive_through(at).await;
        switch.pause();
        let away_from = *progress.borrow();
        accepted_at_least(&mut progress, away_from + AWAY_FOR).await;
        switch.move_to(to);
    }
    client.receive_through(COUNT - 1).await;
    guard("the pusher", pusher).await.unwrap();

    assert!(switch.forwarded(b) >= 1 && switch.forwarded(c) >= 1);
    assert!(
        client.connections() >= 3,
        "{} connections",
        client.connections()
    );
    let name = client.name;
    let (numbers, positions, stats, lost) = client.close().await;
    let expected: Vec<u64> = (0..COUNT).collect();
    assert!(
        numbers == expected,
        "{}",
        explain(&numbers, &positions, &expected)
    );
    assert_consecutive(name, &positions);
    assert_eq!(lost, Vec::new(), "losses announced");
    assert_eq!(stats, ClientStats::default());
    // Nodes B and C each answered a `since` with `recovered:true`, none with `false`.
    for node in &cluster.nodes[1..] {
        let history = &node.counters.history;
        assert!(history.recovered.load(Ordering::Relaxed) >= 1);
        assert_eq!(history.not_recovered.load(Ordering::Relaxed), 0);
    }
}

// --- 2. Broker restart -------------------------------------------------------------------------

/// What the backend learnt of each number during a broker outage.
#[derive(Debug, Default)]
struct Ledger {
    /// Answered 202.
    accepted: BTreeSet<u64>,
    /// Answered 504 (outcome unknown): not sent again, since it may have been published;
    /// may arrive, at most once.
    unknown: BTreeSet<u64>,
    /// 503 answers (sent again until accepted).
    refusals: u64,
}

/// Two clients with recovery, on nodes A and B; pushes through node C at a steady rate; the
/// broker's server is killed and started again. Client A stays connected to its node
/// throughout (the node repairs the stream); client B is kept away during the outage and comes
/// back with `since` after it. Every number accepted with 202 reaches both, once and in order,
/// unless the client was told pushes were lost — never a silent gap.
async fn a_broker_restart_loses_no_accepted_push_silently(kind: Kind) {
    const COUNT: u64 = 400;
    let mut cluster = Cluster::start(kind, 3).await;
    let [a, b, c] = [0, 1, 2].map(|i| cluster.nodes[i].addr);
    let mut stays = Recovering::connect("client on A", format!("ws://{a}/"), true).await;
    let switch = Switch::start(b).await;
    let mut returns = Recovering::connect("client on B", switch.url(), true).await;
    let gaps_before = [0, 1].map(|i| cluster.nodes[i].counters.broker_gaps());

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (refusals_tx, mut refusals) = watch::channel(0u64);
    let (accepted_tx, mut accepted) = watch::channel(0u64);
    let pusher = tokio::spawn({
        let ledger = ledger.clone();
        async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / RATE);
            pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for n in 0..COUNT {
                pace.tick().await;
                loop {
                    let (status, _, answer) =
                        http(c, "POST", "/push", &push_body(&n.to_string())).await;
                    let settled = {
                        let mut ledger = ledger.lock().unwrap();
                        match status.as_u16() {
                            202 => {
                                ledger.accepted.insert(n);
                                accepted_tx.send_replace(ledger.accepted.len() as u64);
                                true
                            }
                            504 => ledger.unknown.insert(n),
                            503 => {
                                ledger.refusals += 1;
                                refusals_tx.send_replace(ledger.refusals);
                                false
                            }
                            other => panic!("push {n}: {other} {answer}"),
                        }
                    };
                    if settled {
                        break;
                    }
                    // The node answers 503 at once while the broker is down: a backend's
                    // retry interval (`Retry-After` is 1 s; shorter keeps the test short).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });

    stays.receive_through(50).await;
    returns.receive_through(50).await;
    switch.pause();
    cluster.broker.stop();
    guard("a push refused", refusals.wait_for(|r| *r >= 5))
        .await
        .unwrap();
    tokio::task::block_in_place(|| cluster.broker.restart());
    let at_restart = *accepted.borrow();
    accepted_at_least(&mut accepted, at_restart + 20).await;
    switch.move_to(b);
    guard("the pusher", pusher).await.unwrap();
    // A marker after the last number, sent until accepted: receiving it ends each client's run.
    retry_until("the end marker accepted", || async {
        let (status, _, _) = http(c, "POST", "/push", &push_body("end")).await;
        (status == 202).then_some(())
    })
    .await;
    for client in [&mut stays, &mut returns] {
        client
            .receive_until("the end marker", |text| text == "end")
            .await;
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    eprintln!(
        "{kind:?}: {} accepted, {} unknown (504), {} refusals (503); node A {:?}, node B {:?}",
        ledger.accepted.len(),
        ledger.unknown.len(),
        ledger.refusals,
        holes(&cluster.nodes[0]),
        holes(&cluster.nodes[1]),
    );
    assert!(ledger.refusals >= 5);
    for (i, node) in cluster.nodes[..2].iter().enumerate() {
        assert!(
            node.counters.broker_gaps() > gaps_before[i],
            "node {i} saw no gap"
        );
    }
    for client in [stays, returns] {
        let name = client.name;
        let (numbers, positions, stats, lost) = client.close().await;
        eprintln!(
            "{kind:?} {name}: {} numbers, lost {lost:?}, {stats:?}",
            numbers.len()
        );
        // Once and in order, nothing the backend did not send.
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{name}: {}",
            explain(&numbers, &positions, &got_sorted(&numbers))
        );
        assert!(
            numbers
                .iter()
                .all(|n| ledger.accepted.contains(n) || ledger.unknown.contains(n)),
            "{name}: received a push that was refused"
        );
        assert_eq!(stats.duplicates_dropped, 0, "{name}");
        assert_eq!(stats.offsets_skipped, 0, "{name}: offsets skipped silently");
        let got: BTreeSet<u64> = numbers.iter().copied().collect();
        let missing: Vec<u64> = ledger.accepted.difference(&got).copied().collect();
        let epochs: BTreeSet<&str> = positions
            .iter()
            .flatten()
            .map(|p| p.epoch.as_str())
            .collect();
        match kind {
            // JetStream keeps the streams on disk: the run goes on, every push is recovered.
            Kind::Nats => {
                let expected: Vec<u64> = ledger.accepted.iter().copied().collect();
                assert!(
                    missing.is_empty(),
                    "{name}: {}",
                    explain(&numbers, &positions, &expected)
                );
                assert_eq!(epochs.len(), 1, "{name}: {epochs:?}");
                assert_eq!(lost, Vec::new(), "{name}: losses announced");
            }
            // The test Redis keeps nothing: the streams start a new run, and a client that
            // asks for the old one is told it is gone.
            Kind::Redis => {
                assert_eq!(epochs.len(), 2, "{name}: {epochs:?}");
                if name == "client on B" {
                    assert!(!lost.is_empty(), "{name}: not told of the new run");
                }
                assert!(
                    missing.is_empty() || !lost.is_empty(),
                    "{name}: accepted pushes {missing:?} missing and no loss announced"
                );
            }
        }
    }
}

fn got_sorted(numbers: &[u64]) -> Vec<u64> {
    let set: BTreeSet<u64> = numbers.iter().copied().collect();
    set.into_iter().collect()
}

/// A node's `ws_gateway_history_*` counters, for the log.
fn holes(node: &TestServer) -> String {
    let h = &node.counters.history;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    format!(
        "recovered {} not_recovered {} reads_failed {} duplicates_dropped {} holes_filled {} holes_lost {}",
        load(&h.recovered),
        load(&h.not_recovered),
        load(&h.reads_failed),
        load(&h.duplicates_dropped),
        load(&h.holes_filled),
        load(&h.holes_lost),
    )
}

// --- 3. Bounds -------------------------------------------------------------------------------

/// Every node keeps 5 pushes per stream (hub and broker given the same policy). Client X is
/// away while 18 pushes are accepted and comes back on another node: `recovered:false`, then
/// the live stream. Client Y, away for 3 of them, recovers them all: the bound is the size.
async fn a_client_away_longer_than_the_history_is_told_and_continues_live(kind: Kind) {
    const SIZE: usize = 5;
    let mut cluster = Cluster::start(kind, 0).await;
    let policy = HistoryPolicy {
        default: StreamLimits {
            size: SIZE,
            ttl: StreamLimits::DEFAULT_TTL,
        },
        ..HistoryPolicy::default()
    };
    for _ in 0..3 {
        let mut config = cluster.config();
        config.hub.history = policy.clone();
        config.broker.settings.history = policy.clone();
        cluster.nodes.push(TestServer::with_config(config).await);
    }
    let [a, b, c] = [0, 1, 2].map(|i| cluster.nodes[i].addr);
    let (switch_x, switch_y) = (Switch::start(a).await, Switch::start(a).await);
    let mut x = Recovering::connect("client X", switch_x.url(), true).await;
    let mut y = Recovering::connect("client Y", switch_y.url(), true).await;
    let push = |from: u64, to: u64| async move {
        for n in from..to {
            let (status, _, answer) = http(c, "POST", "/push", &push_body(&n.to_string())).await;
            assert_eq!(status, 202, "push {n}: {answer}");
        }
    };

    push(0, 10).await;
    x.receive_through(9).await;
    y.receive_through(9).await;
    switch_x.pause();
    push(10, 25).await;
    y.receive_through(24).await;
    switch_y.pause();
    push(25, 28).await;
    // Back on other nodes: each subscribes again with `since` its last position.
    switch_x.move_to(b);
    switch_y.move_to(b);
    // Told, and then live: X's loss comes before the pushes that follow it.
    // Both answered before the next pushes, or those would push what they missed out of the
    // history too.
    retry_until("client X told of the loss", || async {
        (!x.lost().is_empty()).then_some(())
    })
    .await;
    retry_until("client Y subscribed again", || async {
        (y.connections() >= 2).then_some(())
    })
    .await;
    push(28, 38).await;
    x.receive_through(37).await;
    y.receive_through(37).await;

    let (numbers, positions, stats, lost) = x.close().await;
    let expected: Vec<u64> = (0..10).chain(28..38).collect();
    assert!(
        numbers == expected,
        "X: {}",
        explain(&numbers, &positions, &expected)
    );
    assert_consecutive("X before", &positions[..10]);
    assert_consecutive("X after", &positions[10..]);
    // Told where the stream stood (number 27 is offset 28), skipped nothing silently.
    let top = positions[9]
        .as_ref()
        .map(|p| Position::new(28, p.epoch.clone()));
    assert_eq!(lost, vec![top]);
    assert_eq!((stats.losses_announced, stats.offsets_skipped), (1, 0));
    assert_eq!(stats.duplicates_dropped, 0);

    let (numbers, positions, stats, lost) = y.close().await;
    let expected: Vec<u64> = (0..38).collect();
    assert!(
        numbers == expected,
        "Y: {}",
        explain(&numbers, &positions, &expected)
    );
    assert_consecutive("Y", &positions);
    assert_eq!((lost, stats), (Vec::new(), ClientStats::default()));

    let history = &cluster.nodes[1].counters.history;
    assert_eq!(history.not_recovered.load(Ordering::Relaxed), 1);
    assert_eq!(history.recovered.load(Ordering::Relaxed), 1);
}
