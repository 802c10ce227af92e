//! The NATS broker's history on JetStream: positions given by compare-and-set, the same on
//! every node; reads; the app's size and TTL; apps without history; a NATS restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gateway_broker::{Broker, BrokerSettings, BrokerState, Published};
use gateway_core::history::AppPattern;
use gateway_core::{
    Epoch, HistoryPolicy, HistoryRead, Position, Publication, Since, StreamLimits, Topic,
};
use test_servers::NatsServer;
use tokio::time::Instant;

use crate::support::*;

fn with_history(prefix: &str, node: &str, history: HistoryPolicy) -> BrokerSettings {
    BrokerSettings {
        history,
        ..settings(prefix, node)
    }
}

fn limits(size: usize, ttl: Duration) -> StreamLimits {
    StreamLimits { size, ttl }
}

/// The default policy (every app keeps 100 for 300 s) with `overrides`.
fn policy(overrides: &[(&str, StreamLimits)]) -> HistoryPolicy {
    HistoryPolicy {
        overrides: overrides
            .iter()
            .map(|(pattern, limits)| (AppPattern::new(*pattern), *limits))
            .collect(),
        ..HistoryPolicy::default()
    }
}

async fn node(nats: &NatsServer, prefix: &str, name: &str, history: HistoryPolicy) -> Node {
    let mut node = Node::with_settings(&nats.url(), with_history(prefix, name, history));
    node.state(BrokerState::Connected).await;
    node
}

/// Publishes once the broker takes publications; returns what it answered.
async fn publish(node: &Node, topic: &Topic, text: &str) -> Published {
    let deadline = Instant::now() + DEADLINE;
    while node.broker.state() != BrokerState::Connected {
        assert!(Instant::now() < deadline, "{} never connected", node.name);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.broker
        .publish(topic, publication(topic, text))
        .await
        .unwrap_or_else(|e| panic!("{}: publish failed: {e}", node.name))
}

async fn position(node: &Node, topic: &Topic, text: &str) -> Position {
    publish(node, topic, text)
        .await
        .position
        .expect("an app with history gives positions")
}

async fn read(node: &Node, topic: &Topic, since: Option<Since>, limit: usize) -> HistoryRead {
    node.broker
        .history(topic, since, limit)
        .await
        .unwrap_or_else(|e| panic!("{}: history failed: {e}", node.name))
}

fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.publications
        .iter()
        .map(|p| p.position.as_ref().expect("kept with its position").offset)
        .collect()
}

fn text(publication: &Publication) -> String {
    let frame: serde_json::Value = serde_json::from_slice(publication.frame.as_bytes()).unwrap();
    frame["text"].as_str().unwrap().to_owned()
}

fn after(position: &Position) -> Since {
    Since::After(position.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_grow_by_one_per_stream_and_every_node_receives_them() {
    let nats = NatsServer::start();
    let a = node(&nats, "h1", "a", HistoryPolicy::default()).await;
    let mut b = node(&nats, "h1", "b", HistoryPolicy::default()).await;
    let (matches, im1, im2) = (public("match"), private("im", 1), private("im", 2));
    b.subscribe(&matches, 1).await;

    let mut seen: BTreeMap<Topic, Vec<Position>> = BTreeMap::new();
    for (topic, text) in [
        (&matches, "m1"),
        (&im1, "a1"),
        (&matches, "m2"),
        (&im2, "b1"),
        (&im1, "a2"),
        (&matches, "m3"),
    ] {
        let at = position(&a, topic, text).await;
        seen.entry(topic.clone()).or_default().push(at);
    }
    for (topic, expected) in [
        (&matches, vec![1, 2, 3]),
        (&im1, vec![1, 2]),
        (&im2, vec![1]),
    ] {
        let positions = &seen[topic];
        let got: Vec<u64> = positions.iter().map(|p| p.offset).collect();
        assert_eq!(got, expected, "{topic}");
        assert!(positions.iter().all(|p| p.epoch == positions[0].epoch));
    }
    // One run per stream, each its own epoch.
    assert_ne!(seen[&im1][0].epoch, seen[&im2][0].epoch);
    assert_ne!(seen[&matches][0].epoch, seen[&im1][0].epoch);

    // Live: with the position each was given, in order.
    for (i, sent) in ["m1", "m2", "m3"].into_iter().enumerate() {
        let live = b.publication().await;
        assert_eq!(live.position.as_ref(), Some(&seen[&matches][i]));
        assert_eq!(text(&live), sent);
        assert_eq!(live.frame, publication(&matches, sent).frame);
    }
    // The history, read by another node.
    let history = read(&b, &matches, None, 100).await;
    assert_eq!(history.top.as_ref(), seen[&matches].last());
    assert_eq!(history.first, Some(1));
    assert_eq!(offsets(&history), [1, 2, 3]);
    assert_eq!(
        history.publications.iter().map(text).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    assert_eq!(
        read(&b, &im2, None, 100).await.top,
        Some(seen[&im2][0].clone())
    );
    assert_eq!(
        read(&b, &private("im", 3), None, 100).await,
        HistoryRead::default()
    );
}

/// Two nodes push to one app at once: JetStream's compare-and-set gives every push its own
/// offset, 1..2N in one run, and every node's live stream holds each offset once (each
/// publisher's in its order; the two publishers' may interleave differently per node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_share_one_contiguous_run() {
    const EACH: usize = 150;
    let nats = NatsServer::start();
    let history = policy(&[("match", limits(1_000, StreamLimits::DEFAULT_TTL))]);
    let topic = public("match");
    let mut nodes = Vec::new();
    for name in ["p1", "p2", "watcher"] {
        let mut node = node(&nats, "h2", name, history.clone()).await;
        node.subscribe(&topic, 1).await;
        nodes.push(node);
    }
    let tasks: Vec<_> = nodes[..2]
        .iter()
        .map(|node| {
            let (broker, name, topic) = (node.broker.clone(), node.name.clone(), topic.clone());
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for i in 0..EACH {
                    let p = publication(&topic, &format!("{name}-{i:03}"));
                    let published = broker.publish(&topic, p).await.unwrap();
                    positions.push(published.position.unwrap());
                }
                positions
            })
        })
        .collect();
    let mut given = Vec::new();
    for task in tasks {
        let positions = task.await.unwrap();
        // Each publisher's own pushes got increasing offsets.
        assert!(positions.windows(2).all(|w| w[0].offset < w[1].offset));
        given.extend(positions);
    }
    let epoch = given[0].epoch.clone();
    assert!(given.iter().all(|p| p.epoch == epoch), "one run");
    let mut all: Vec<u64> = given.iter().map(|p| p.offset).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2 * EACH as u64).collect::<Vec<_>>());

    let kept = read(&nodes[2], &topic, None, 10_000).await;
    assert_eq!(offsets(&kept), (1..=2 * EACH as u64).collect::<Vec<_>>());
    assert_eq!(
        kept.top,
        Some(Position::new(2 * EACH as u64, epoch.clone()))
    );

    for node in &mut nodes {
        let mut offsets = BTreeSet::new();
        let mut per_publisher: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for _ in 0..2 * EACH {
            let live = node.publication().await;
            let position = live.position.clone().unwrap();
            assert_eq!(position.epoch, epoch);
            assert!(offsets.insert(position.offset), "offset {position:?} twice");
            let publisher = text(&live)[..2].to_owned();
            per_publisher
                .entry(publisher)
                .or_default()
                .push(position.offset);
        }
        assert_eq!(offsets.len(), 2 * EACH);
        for (publisher, offsets) in per_publisher {
            assert_eq!(offsets.len(), EACH);
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{}: {publisher} out of order",
                node.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_start_after_a_position_and_stop_at_the_limit() {
    let nats = NatsServer::start();
    let a = node(&nats, "h3", "a", HistoryPolicy::default()).await;
    let topic = public("match");
    let mut positions = Vec::new();
    for i in 1..=10 {
        positions.push(position(&a, &topic, &format!("t{i}")).await);
    }
    let top = positions[9].clone();

    let some = read(&a, &topic, Some(after(&positions[3])), 3).await;
    assert_eq!(offsets(&some), [5, 6, 7]);
    assert_eq!((some.top.as_ref(), some.first), (Some(&top), Some(1)));
    assert!(some.recovered(&after(&positions[3])));

    assert_eq!(
        offsets(&read(&a, &topic, Some(Since::Start), 100).await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        offsets(&read(&a, &topic, None, 100).await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(offsets(&read(&a, &topic, None, 4).await), [1, 2, 3, 4]);

    // At the top: nothing missed.
    let none = read(&a, &topic, Some(after(&top)), 100).await;
    assert!(none.publications.is_empty());
    assert_eq!((none.top.as_ref(), none.first), (Some(&top), Some(1)));
    assert!(none.recovered(&after(&top)));

    // Another run: nothing of this one, and not recovered.
    let stranger = Since::After(Position::new(4, Epoch::parse("elsewhere").unwrap()));
    let other = read(&a, &topic, Some(stranger.clone()), 100).await;
    assert!(other.publications.is_empty());
    assert_eq!((other.top.as_ref(), other.first), (Some(&top), Some(1)));
    assert!(!other.recovered(&stranger));

    // Limit 0: only where the stream stands.
    let bare = read(&a, &topic, Some(Since::Start), 0).await;
    assert!(bare.publications.is_empty());
    assert_eq!((bare.top.as_ref(), bare.first), (Some(&top), Some(1)));
}

/// The stream keeps the largest size of all apps per subject; each app's reads keep its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_holds_the_apps_own_size() {
    let nats = NatsServer::start();
    let ttl = StreamLimits::DEFAULT_TTL;
    let history = HistoryPolicy {
        default: limits(5, ttl),
        ..policy(&[("big", limits(20, ttl))])
    };
    let a = node(&nats, "h4", "a", history).await;
    let (small, big) = (public("small"), public("big"));
    let mut smalls = Vec::new();
    for i in 1..=12 {
        smalls.push(position(&a, &small, &format!("s{i}")).await);
    }
    for i in 1..=25 {
        position(&a, &big, &format!("b{i}")).await;
    }
    let kept = read(&a, &small, None, 100).await;
    assert_eq!(offsets(&kept), (8..=12).collect::<Vec<_>>());
    assert_eq!(kept.first, Some(8));
    // Offset 6 is past the size: a client that saw 6 missed 7, which is gone.
    assert!(!kept.recovered(&after(&smalls[5])));
    assert!(
        read(&a, &small, Some(after(&smalls[6])), 100)
            .await
            .recovered(&after(&smalls[6]))
    );
    // Limit 0 answers `first` without reading the pushes.
    assert_eq!(read(&a, &small, None, 0).await.first, Some(8));

    let kept = read(&a, &big, None, 100).await;
    assert_eq!(offsets(&kept), (6..=25).collect::<Vec<_>>());
    assert_eq!(kept.first, Some(6));
}

/// What outlives the TTL is forgotten: a read finds no run, and the next push starts a new
/// one. An app whose TTL is shorter than the stream's loses its pushes at its own TTL while
/// the run goes on (the stream still holds the last message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_past_the_ttl_are_forgotten() {
    let nats = NatsServer::start();
    let second = Duration::from_secs(1);
    let history = HistoryPolicy {
        default: limits(100, second),
        ..policy(&[])
    };
    let a = node(&nats, "h5", "a", history).await;
    let topic = public("match");
    let first = position(&a, &topic, "old").await;
    position(&a, &topic, "older").await;
    assert_eq!(offsets(&read(&a, &topic, None, 100).await), [1, 2]);
    let deadline = Instant::now() + DEADLINE;
    while read(&a, &topic, None, 100).await != HistoryRead::default() {
        assert!(Instant::now() < deadline, "the pushes never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = position(&a, &topic, "new").await;
    assert_eq!(fresh.offset, 1);
    assert_ne!(fresh.epoch, first.epoch);

    // A short TTL for one app, the default for the rest: the stream keeps 300 s.
    let b = node(&nats, "h6", "b", policy(&[("brief", limits(100, second))])).await;
    let brief = public("brief");
    let first = position(&b, &brief, "b1").await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = read(&b, &brief, None, 100).await;
        assert_eq!(now.top.as_ref(), Some(&first), "the run goes on");
        if now.publications.is_empty() {
            assert_eq!(now.first, None);
            assert!(!now.recovered(&Since::Start));
            assert!(now.recovered(&after(&first)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the push never left the app's history"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = position(&b, &brief, "b2").await;
    assert_eq!(next, Position::new(2, first.epoch));
    assert_eq!(offsets(&read(&b, &brief, None, 100).await), [2]);
}

/// An app with history off publishes exactly as before: wire version 1, no position, nothing
/// kept; an app with history travels as version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_history_travels_as_wire_version_1() {
    let nats = NatsServer::start();
    let history = policy(&[("plain", limits(0, StreamLimits::DEFAULT_TTL))]);
    let a = node(&nats, "h7", "a", history).await;
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut wire = raw.subscribe("h7.a.>").await.unwrap();
    raw.flush().await.unwrap();
    // A round trip: the server has the subscription before anything is published.
    let _ = raw.request(raw.new_inbox(), "".into()).await;

    let (plain, kept) = (public("plain"), public("kept"));
    assert_eq!(publish(&a, &plain, "p").await.position, None);
    assert_eq!(position(&a, &kept, "k").await.offset, 1);
    use futures_util::StreamExt;
    let message = tokio::time::timeout(DEADLINE, wire.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.subject.as_str(), "h7.a.plain");
    assert_eq!(
        message.payload,
        gateway_broker::wire::encode(&publication(&plain, "p"))
    );
    assert_eq!(message.payload[0], 1);
    let message = tokio::time::timeout(DEADLINE, wire.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.subject.as_str(), "h7.a.kept");
    assert_eq!(message.payload[0], 2);
    assert_eq!(read(&a, &plain, None, 100).await, HistoryRead::default());
    // Nothing of `plain` in the stream: only `kept`'s one message.
    let js = async_nats::jetstream::new(raw);
    let mut stream = js.get_stream("h7-history").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

/// The stream is file-backed: a NATS server restarted on its store directory (as test-servers
/// does) still has every run, and the next push continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_and_its_epoch_survive_a_nats_restart() {
    let mut nats = NatsServer::start();
    let mut a = node(&nats, "h8", "a", HistoryPolicy::default()).await;
    let topic = public("match");
    let mut positions = Vec::new();
    for i in 1..=3 {
        positions.push(position(&a, &topic, &format!("t{i}")).await);
    }
    tokio::task::block_in_place(|| nats.restart());
    a.state(BrokerState::Connecting).await;
    a.state(BrokerState::Connected).await;
    let kept = read(&a, &topic, Some(Since::Start), 100).await;
    assert_eq!(offsets(&kept), [1, 2, 3]);
    assert_eq!(kept.top.as_ref(), positions.last());
    let next = position(&a, &topic, "t4").await;
    assert_eq!(next, Position::new(4, positions[0].epoch.clone()));
}

/// A stream deleted under the nodes (or lost with a server's store) is created again by the
/// next push, which starts a new run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_is_created_again_and_a_new_run_starts() {
    let nats = NatsServer::start();
    let a = node(&nats, "h9", "a", HistoryPolicy::default()).await;
    let topic = public("match");
    let before = position(&a, &topic, "t1").await;
    position(&a, &topic, "t2").await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.delete_stream("h9-history").await.unwrap();
    let after_loss = position(&a, &topic, "t3").await;
    assert_eq!(after_loss.offset, 1);
    assert_ne!(after_loss.epoch, before.epoch);
    assert_eq!(offsets(&read(&a, &topic, None, 100).await), [1]);
}

/// Every node makes the stream fit its policy when it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_follows_the_policy_of_the_node_that_connects() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let config = || async {
        js.get_stream("h10-history")
            .await
            .map(|s| s.cached_info().config.clone())
    };
    let ttl = Duration::from_secs(60);
    let _a = node(
        &nats,
        "h10",
        "a",
        HistoryPolicy {
            default: limits(10, ttl),
            ..policy(&[])
        },
    )
    .await;
    let deadline = Instant::now() + DEADLINE;
    let first = loop {
        if let Ok(config) = config().await {
            break config;
        }
        assert!(Instant::now() < deadline, "no stream after connecting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.subjects, ["h10.h.>"]);
    assert_eq!((first.max_messages_per_subject, first.max_age), (10, ttl));
    assert_eq!(first.max_bytes, 64 << 20);

    let raised = HistoryPolicy {
        default: limits(50, ttl),
        max_bytes: 1 << 20,
        ..policy(&[("long", limits(5, 2 * ttl))])
    };
    let _b = node(&nats, "h10", "b", raised).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = config().await.unwrap();
        if now.max_messages_per_subject == 50 {
            assert_eq!((now.max_age, now.max_bytes), (2 * ttl, 1 << 20));
            break;
        }
        assert!(Instant::now() < deadline, "the stream was not updated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publish throughput with history on and off, one topic and 16 topics at once.
/// Run with: `cargo test --release -p gateway-broker --test nats -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_with_and_without_history() {
    const PUSHES: usize = 4_000;
    let nats = NatsServer::start();
    for (label, history) in [
        ("off", HistoryPolicy::off()),
        ("on", HistoryPolicy::default()),
    ] {
        let a = node(&nats, &format!("tp-{label}"), "a", history).await;
        for topics in [1usize, 16] {
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..topics)
                .map(|t| {
                    let broker = a.broker.clone();
                    let topic = public(&format!("t{t}"));
                    tokio::spawn(async move {
                        for i in 0..PUSHES / topics {
                            let p = publication(&topic, &format!("push {i} with some text"));
                            broker.publish(&topic, p).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let elapsed = started.elapsed();
            println!(
                "history {label}, {topics:2} topic(s): {PUSHES} pushes in {elapsed:?}: {:.0}/s",
                PUSHES as f64 / elapsed.as_secs_f64()
            );
        }
        let topic = public("t0");
        let started = std::time::Instant::now();
        for _ in 0..100 {
            read(&a, &topic, Some(Since::Start), 100).await;
        }
        println!(
            "history {label}: a read of 100 pushes: {:?}",
            started.elapsed() / 100
        );
    }
}
