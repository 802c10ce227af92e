//! The Redis broker against real `redis-server` processes (test-servers), never a mock.
//!
//! Every wait is for an event (a channel-backed recording `Inbound`) or for the server to
//! show a state, each under a deadline; nothing sleeps to synchronise. "Nothing else arrived"
//! is shown with a marker: a later publication that does arrive, with nothing before it.
//!
//! Run with: `cargo test -p gateway-broker --test redis` (needs `redis-server` on the PATH).

#![allow(clippy::unwrap_used)]

mod faults;
mod history;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_broker::redis::RedisBroker;
use gateway_broker::{
    Broker, BrokerError, BrokerEvent, BrokerSettings, BrokerState, Inbound, NodeReport, wire,
};
use gateway_core::{HistoryPolicy, MemberId, Topic};
use test_servers::RedisServer;
use tokio::sync::mpsc;
use tokio::time::Instant;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_reaches_each_interested_node_once_byte_for_byte() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut a = Node::start("a", &urls);
    let mut b = Node::start("b", &urls);
    let (match_, other, nobody) = (public("match"), public("other"), public("nobody"));
    b.subscribe(&match_, 1).await;
    // A's only interest, for its marker at the end.
    a.subscribe(&other, 1).await;

    let goal = push(&match_, "goal");
    a.publish(&match_, &goal).await;
    let (received, before) = b.publication().await;
    no_publications(&before);
    // Apps keep history by default: the push comes with the stream's first position.
    assert_eq!(received.position.as_ref().map(|p| p.offset), Some(1));
    assert_eq!(unpositioned(received.clone()), goal);
    assert_eq!(received.frame.as_bytes(), goal.frame.as_bytes());
    assert_eq!(
        received.frame.as_bytes(),
        br#"{"app":"match","member_id":-1,"text":"goal"}"#
    );

    // Nobody is subscribed to `nobody`: nothing of it reaches B before the later marker,
    // and goal came once.
    a.publish(&nobody, &push(&nobody, "lost")).await;
    let marker = push(&match_, "marker");
    a.publish(&match_, &marker).await;
    let (received, before) = b.publication().await;
    no_publications(&before);
    assert_eq!(unpositioned(received), marker);

    // A had no interest in `match`: its first publication is its own marker.
    let own = push(&other, "own marker");
    b.publish(&other, &own).await;
    let (received, before) = a.publication().await;
    no_publications(&before);
    assert_eq!(unpositioned(received), own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_shows_on_the_server_and_leaves_with_the_unsubscribe() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let (news, member) = (public("news"), private("im", 7));
    node.subscribe(&news, 1).await;
    node.subscribe(&member, 2).await;
    assert_eq!(redis.channels("gw.*"), ["gw.a.news", "gw.m.im.7"]);

    node.broker.unsubscribe(&news);
    until_server("news unsubscribed", || {
        redis.channels("gw.*") == ["gw.m.im.7"]
    })
    .await;

    // Subscribe, unsubscribe, subscribe in one go: subscribed in the end, announced last with
    // the last seq. Several topics at once go out in batches (of 3 here). The marker topic,
    // asked for last, is announced after every earlier command was applied.
    let many: Vec<Topic> = (0..7).map(|i| public(&format!("room-{i}"))).collect();
    for topic in &many {
        let _ = node.broker.subscribe(topic, 10);
        node.broker.unsubscribe(topic);
        let _ = node.broker.subscribe(topic, 11);
    }
    let marker = public("marker");
    let _ = node.broker.subscribe(&marker, 1);
    let mut expected: Vec<(Topic, u64)> = many.iter().map(|t| (t.clone(), 11)).collect();
    expected.push((marker.clone(), 1));
    let announced = node.subscribed_all(&expected).await;
    for topic in &many {
        assert_eq!(announced[topic].last(), Some(&11), "{topic}: {announced:?}");
    }
    let mut expected: Vec<String> = many.iter().chain([&marker]).map(channel).collect();
    expected.push("gw.m.im.7".to_owned());
    expected.sort();
    assert_eq!(redis.channels("gw.*"), expected);

    // Unsubscribed and subscribed again at once while live: whether the two are folded into
    // nothing (the server kept the subscription) or sent as two commands, the new seq is
    // announced and the subscription stays.
    let room = &many[1];
    node.broker.unsubscribe(room);
    let _ = node.broker.subscribe(room, 13);
    node.subscribed(room, 13).await;
    assert!(redis.channels("gw.*").contains(&channel(room)));

    // The same after the subscription was live: unsubscribe (gone from the server), then
    // subscribe again with a new seq (back on the server, then announced).
    let room = &many[0];
    node.broker.unsubscribe(room);
    until_server("room-0 unsubscribed", || {
        !redis.channels("gw.*").contains(&channel(room))
    })
    .await;
    node.subscribe(room, 12).await;
    assert!(redis.channels("gw.*").contains(&channel(room)));
    let hello = push(room, "hello");
    node.publish(room, &hello).await;
    let (received, before) = node.publication().await;
    no_publications(&before);
    assert_eq!(unpositioned(received), hello);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_sees_one_topic_in_the_same_order() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (Node::start("a", &urls), Node::start("b", &urls));
    let (mut c, mut d) = (Node::start("c", &urls), Node::start("d", &urls));
    let topic = public("race");
    c.subscribe(&topic, 1).await;
    d.subscribe(&topic, 1).await;

    let send = |mut node: Node, name: &'static str| {
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                node.publish(&topic, &push(&topic, &format!("{name}-{i}")))
                    .await;
            }
            node
        })
    };
    let (a, b) = (send(a, "a"), send(b, "b"));
    let (_a, _b) = (a.await.unwrap(), b.await.unwrap());

    let mut orders = Vec::new();
    for node in [&mut c, &mut d] {
        let mut texts = Vec::new();
        while texts.len() < 400 {
            let (p, before) = node.publication().await;
            no_publications(&before);
            texts.push(String::from_utf8(p.frame.as_bytes().to_vec()).unwrap());
        }
        orders.push(texts);
    }
    assert_eq!(orders[0], orders[1]);
    // Each publisher's own sequence keeps its order, and both were interleaved by the server.
    for name in ["a", "b"] {
        let own: Vec<&String> = orders[0]
            .iter()
            .filter(|t| t.contains(&format!("\"{name}-")))
            .collect();
        let expected: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"app":"race","member_id":-1,"text":"{name}-{i}"}}"#))
            .collect();
        assert_eq!(own, expected.iter().collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_spread_over_two_shards_and_each_push_arrives_once() {
    let (redis0, redis1) = (RedisServer::start(), RedisServer::start());
    let urls = [redis0.url(), redis1.url()];
    let mut a = Node::start("a", &urls);
    let mut b = Node::start("b", &urls);
    let topics: Vec<Topic> = (0..20)
        .flat_map(|i| {
            let name = format!("app-{i}");
            [public(&name), private(&name, i + 1)]
        })
        .collect();
    for topic in &topics {
        let _ = b.broker.subscribe(topic, 1);
    }
    let expected: Vec<(Topic, u64)> = topics.iter().map(|t| (t.clone(), 1)).collect();
    b.subscribed_all(&expected).await;

    let on = [redis0.channels("gw.*"), redis1.channels("gw.*")];
    assert!(!on[0].is_empty() && !on[1].is_empty(), "{on:?}");
    for topic in &topics {
        let shard = wire::shard_of(topic.app(), 2);
        assert!(
            on[shard].contains(&channel(topic)),
            "{topic} not on {shard}"
        );
        assert!(!on[1 - shard].contains(&channel(topic)), "{topic} on both");
    }

    for topic in &topics {
        a.publish(topic, &push(topic, "once")).await;
    }
    let mut received = Vec::new();
    while received.len() < topics.len() {
        let (p, before) = b.publication().await;
        no_publications(&before);
        received.push((p.app.as_str().to_owned(), p.member_id));
    }
    let mut expected: Vec<(String, i64)> = topics
        .iter()
        .map(|t| {
            (
                t.app().as_str().to_owned(),
                t.member().map_or(-1, MemberId::get),
            )
        })
        .collect();
    received.sort();
    expected.sort();
    assert_eq!(received, expected);
    // Nothing came twice: the next publication is the marker.
    let marker = push(&topics[0], "marker");
    a.publish(&topics[0], &marker).await;
    let (p, before) = b.publication().await;
    no_publications(&before);
    assert_eq!(unpositioned(p), marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_wire_version_is_reported_not_delivered() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let topic = public("match");
    node.subscribe(&topic, 1).await;

    let chan = channel(&topic);
    let raw = "\u{3}\0\0\0\0\0\0\0\u{1}\0\u{5}match{\"text\":\"from the future\"}";
    assert_eq!(redis.command(&["PUBLISH", &chan, raw]).unwrap(), "1");
    let ((channel_name, error), before) = node
        .until("Unreadable", |seen| match seen {
            Seen::Event(BrokerEvent::Unreadable { channel, error }) => {
                Some((channel.clone(), error.clone()))
            }
            _ => None,
        })
        .await;
    no_publications(&before);
    assert_eq!(channel_name, chan);
    assert!(error.contains("version 3"), "{error}");

    let marker = push(&topic, "marker");
    node.publish(&topic, &marker).await;
    let (p, before) = node.publication().await;
    no_publications(&before);
    assert_eq!(unpositioned(p), marker);
}

fn report(node: &str, connections: u64) -> NodeReport {
    NodeReport {
        node: node.to_owned(),
        version: NodeReport::VERSION,
        at_ms: 1,
        connections,
        apps: BTreeMap::from([("match".to_owned(), connections)]),
        members: BTreeMap::new(),
        member_counts: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_holds_the_live_reports_and_drops_the_expired() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut a = Node::start("a", &urls);
    let mut b = Node::start("b.2", &urls);
    a.state(BrokerState::Connected).await;
    b.state(BrokerState::Connected).await;
    let ttl = Duration::from_millis(300);

    // A keeps reporting, as a node does; B reports once and then "dies".
    let a = Arc::new(a);
    let renew = {
        let a = a.clone();
        tokio::spawn(async move {
            loop {
                a.broker.report(&report("a", 1), ttl).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    b.broker.report(&report("b.2", 2), ttl).await.unwrap();
    // A stray member whose report nobody can read is left out, not an error.
    redis.command(&["SET", "gw.node.junk", "not json"]).unwrap();
    redis.command(&["SADD", "gw.nodes", "junk"]).unwrap();

    let view = a.broker.cluster().await.unwrap();
    assert_eq!(view, [report("a", 1), report("b.2", 2)]);
    assert!(
        redis
            .command(&["GET", "gw.node.b~2E2"])
            .unwrap()
            .contains("\"b.2\"")
    );

    let deadline = Instant::now() + DEADLINE;
    loop {
        let view = a.broker.cluster().await.unwrap();
        if view == [report("a", 1)] {
            break;
        }
        assert!(Instant::now() < deadline, "b never expired: {view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut members: Vec<String> = redis
        .command(&["SMEMBERS", "gw.nodes"])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    members.sort();
    assert_eq!(members, ["a", "junk"], "the expired member left the set");
    renew.abort();
}

#[tokio::test]
async fn bad_urls_are_configuration_errors() {
    let inbound: Arc<dyn Inbound> = Arc::new(Recorder(mpsc::unbounded_channel().0));
    let connect = |urls: &[&str]| {
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
        RedisBroker::connect(&urls, BrokerSettings::default(), Arc::downgrade(&inbound))
    };
    for urls in [
        &[][..],
        &["http://127.0.0.1:6379"],
        &["127.0.0.1:6379"],
        &["unix:///run/redis.sock"],
        &["redis://127.0.0.1:notaport/"],
        &["redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/1"],
    ] {
        let result = connect(urls);
        assert!(
            matches!(result, Err(BrokerError::Config(_))),
            "{urls:?}: {result:?}"
        );
    }
    // A bad URL is named in the error, with its password (or token) redacted.
    for urls in [
        &["redis://:secret@[::1:6379/"][..],
        &["redis://gw:secret@127.0.0.1:notaport/"],
        &["redis://gw:secret@127.0.0.1/not-a-db"],
        &["http://gw:secret@127.0.0.1:6379"],
        &["gw:secret@127.0.0.1:6379"],
        &["rediss://secret@127.0.0.1:6379/#bad"],
        &[
            "redis://:secret@127.0.0.1:6379/",
            "redis://gw:secret@127.0.0.1/",
        ],
    ] {
        match connect(urls) {
            Err(BrokerError::Config(message)) => {
                assert!(
                    !message.contains("secret"),
                    "the password leaked: {message}"
                );
                assert!(message.contains("<redacted>@"), "{message}");
            }
            other => panic!("{urls:?}: {other:?}"),
        }
    }
    // Valid, including TLS and a password; nothing listens there, so it stays Connecting and
    // refuses pushes instead of queueing them.
    let broker = connect(&["redis://:secret@127.0.0.1:1/", "rediss://127.0.0.1:2/"]).unwrap();
    assert_eq!(broker.state(), BrokerState::Connecting);
    assert!(!format!("{broker:?}").contains("secret"));
    let topic = public("match");
    let refused = broker.publish(&topic, push(&topic, "x")).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(matches!(
        broker.cluster().await,
        Err(BrokerError::Unavailable(_))
    ));
    broker.close();
    assert_eq!(broker.state(), BrokerState::Closed);
}

#[test]
fn connecting_outside_a_runtime_is_a_configuration_error() {
    let inbound: Arc<dyn Inbound> = Arc::new(Recorder(mpsc::unbounded_channel().0));
    let result = RedisBroker::connect(
        &["redis://127.0.0.1:1/".to_owned()],
        BrokerSettings::default(),
        Arc::downgrade(&inbound),
    );
    assert!(matches!(result, Err(BrokerError::Config(_))), "{result:?}");
}

/// The push path's throughput through one Redis: 50 concurrent pushers, as 50 HTTP clients
/// would be, with history off (a `PUBLISH` each) and on (a run of the publish script each:
/// offset, `XADD` with `MAXLEN`, `PUBLISH`). Run with:
/// `cargo test --release -p gateway-broker --test redis -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check; run it in release"]
async fn publish_throughput_through_one_redis() {
    for (label, history) in [
        ("history off", HistoryPolicy::off()),
        ("history on ", HistoryPolicy::default()),
        ("history off", HistoryPolicy::off()),
        ("history on ", HistoryPolicy::default()),
    ] {
        measure_throughput(label, history).await;
    }
}

async fn measure_throughput(label: &str, history: HistoryPolicy) {
    const PUSHERS: usize = 50;
    const EACH: usize = 4_000;
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut sender = Node::start_history("a", &urls, history.clone());
    let mut receiver = Node::start_history("b", &urls, history);
    sender.state(BrokerState::Connected).await;
    let topic = public("match");
    receiver.subscribe(&topic, 1).await;
    let publication = push(&topic, "a push of typical size, some tens of bytes of text");
    let broker = sender.broker.clone();
    let started = Instant::now();
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|_| {
            let (broker, topic, publication) = (broker.clone(), topic.clone(), publication.clone());
            tokio::spawn(async move {
                for _ in 0..EACH {
                    broker.publish(&topic, publication.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for pusher in pushers {
        pusher.await.unwrap();
    }
    let published = started.elapsed();
    for _ in 0..PUSHERS * EACH {
        receiver.publication().await;
    }
    let delivered = started.elapsed();
    let total = (PUSHERS * EACH) as f64;
    println!(
        "{label}: {} pushes: published at {:.0}/s, delivered at {:.0}/s; the log key: {} bytes",
        PUSHERS * EACH,
        total / published.as_secs_f64(),
        total / delivered.as_secs_f64(),
        redis
            .command(&["MEMORY", "USAGE", "gw.a.match.log"])
            .unwrap_or_default()
    );
}
