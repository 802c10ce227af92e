//! NATS core pub/sub, the cluster view and configuration, for apps without history (the
//! settings of `support::settings` turn history off; `history.rs` tests it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_broker::nats::{NatsAuth, NatsBroker};
use gateway_broker::{
    Broker, BrokerError, BrokerEvent, BrokerState, GapCause, Inbound, NodeReport, Subscription,
};
use gateway_core::Topic;
use test_servers::NatsServer;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_reaches_a_subscribed_node_exactly_once_and_byte_for_byte() {
    let nats = NatsServer::start();
    let a = Node::connected(&nats, "t1", "a").await;
    let mut b = Node::connected(&nats, "t1", "b").await;
    let topic = public("match");
    b.subscribe(&topic, 1).await;

    let goal = publication(&topic, "goal");
    a.publish(&topic, &goal).await;
    let received = b.publication().await;
    assert_eq!(received, goal);
    assert_eq!(
        received.frame.as_bytes(),
        br#"{"app":"match","member_id":-1,"text":"goal"}"#
    );

    // Nobody subscribed "news": nothing of it arrives. The next publication b sees is the
    // later one to "match": neither the "news" one nor a second copy of "goal".
    a.publish(&public("news"), &publication(&public("news"), "nobody"))
        .await;
    let next = publication(&topic, "next");
    a.publish(&topic, &next).await;
    assert_eq!(b.publication().await, next);
    assert_eq!(a.broker.kind(), "nats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_holds_one_subscription_per_topic_until_unsubscribe() {
    let nats = NatsServer::start();
    let a = Node::connected(&nats, "t2", "a").await;
    let mut b = Node::connected(&nats, "t2", "b").await;
    let (matches, member) = (public("match"), private("im", 7));
    b.subscribe(&matches, 1).await;
    b.subscribe(&member, 2).await;
    // Subscribed means the server has it: no polling needed.
    assert_eq!(nats.subscriptions("t2."), ["t2.a.match", "t2.m.im.7"]);

    b.broker.unsubscribe(&matches);
    server_subscriptions_become(&nats, "t2.", &["t2.m.im.7"]).await;

    // Subscribe, unsubscribe, subscribe in a row: one subscription, announced with the
    // last seq, one delivery per publication.
    b.broker.subscribe(&matches, 3);
    b.broker.unsubscribe(&matches);
    b.broker.subscribe(&matches, 4);
    b.subscribed(&matches, 4).await;
    assert_eq!(nats.subscriptions("t2."), ["t2.a.match", "t2.m.im.7"]);
    // The same on a live subscription: it is kept, not doubled.
    b.broker.unsubscribe(&matches);
    b.broker.subscribe(&matches, 5);
    b.subscribed(&matches, 5).await;
    assert_eq!(nats.subscriptions("t2."), ["t2.a.match", "t2.m.im.7"]);

    let (once, marker) = (
        publication(&matches, "once"),
        publication(&member, "marker"),
    );
    a.publish(&matches, &once).await;
    a.publish(&member, &marker).await;
    let mut got = vec![b.publication().await, b.publication().await];
    got.sort_by(|x, y| x.frame.as_bytes().cmp(y.frame.as_bytes()));
    assert_eq!(got, [marker.clone(), once.clone()]);
    // A second copy of "once" would come before this one on its subject.
    let again = publication(&matches, "again");
    a.publish(&matches, &again).await;
    assert_eq!(b.publication().await, again);

    b.broker.unsubscribe(&matches);
    b.broker.unsubscribe(&member);
    server_subscriptions_become(&nats, "t2.", &[]).await;
}

/// What NATS core orders: each publisher's messages, everywhere. It does *not* give concurrent
/// publishers one interleaving for every subscriber: the server fans each connection's
/// messages out from that connection's own reader, so two subscribers may see p1's and p2's
/// messages interleaved differently (seen here under load; the docs say so).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_sees_each_publishers_messages_once_and_in_its_order() {
    let nats = NatsServer::start();
    let topic = public("match");
    let mut subscribers = Vec::new();
    for name in ["s1", "s2"] {
        let mut node = Node::connected(&nats, "t3", name).await;
        node.subscribe(&topic, 1).await;
        subscribers.push(node);
    }
    let mut publishers = Vec::new();
    for name in ["p1", "p2"] {
        publishers.push(Node::connected(&nats, "t3", name).await);
    }
    const EACH: usize = 200;
    let tasks: Vec<_> = publishers
        .iter()
        .map(|node| {
            let (broker, name, topic) = (node.broker.clone(), node.name.clone(), topic.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let p = publication(&topic, &format!("{name}-{i:03}"));
                    broker.publish(&topic, p).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let mut orders = Vec::new();
    for node in &mut subscribers {
        let mut texts = Vec::new();
        for _ in 0..2 * EACH {
            let p = node.publication().await;
            texts.push(String::from_utf8(p.frame.as_bytes().to_vec()).unwrap());
        }
        orders.push(texts);
    }
    // Everything once, each publisher's messages in the order it sent them, at every
    // subscriber.
    for order in &orders {
        for name in ["p1", "p2"] {
            let own: Vec<&String> = order
                .iter()
                .filter(|t| t.contains(&format!("\"{name}-")))
                .collect();
            assert_eq!(own.len(), EACH);
            assert!(own.windows(2).all(|w| w[0] < w[1]), "{name} out of order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_refuses_publications_and_its_return_is_a_reported_gap() {
    let mut nats = NatsServer::start();
    let mut a = Node::connected(&nats, "t4", "a").await;
    let mut b = Node::connected(&nats, "t4", "b").await;
    let (matches, member) = (public("match"), private("im", 9));
    b.subscribe(&matches, 1).await;
    b.subscribe(&member, 2).await;

    nats.stop();
    a.state(BrokerState::Connecting).await;
    b.state(BrokerState::Connecting).await;
    assert_eq!(a.broker.state(), BrokerState::Connecting);
    let refused = timeout(
        Duration::from_millis(500),
        a.broker
            .publish(&matches, publication(&matches, "into the void")),
    )
    .await
    .expect("a publication while disconnected fails at once");
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );

    tokio::task::block_in_place(|| nats.restart());
    a.state(BrokerState::Connected).await;
    b.state(BrokerState::Connected).await;
    let gap = b
        .event("Gap", |e| matches!(e, BrokerEvent::Gap { .. }))
        .await;
    let BrokerEvent::Gap { topics, cause } = gap else {
        unreachable!()
    };
    assert_eq!(cause, GapCause::Reconnected);
    assert_eq!(
        topics.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([matches.clone(), member.clone()])
    );
    // The gap is reported once async-nats' resubscriptions are live: once each.
    assert_eq!(nats.subscriptions("t4."), ["t4.a.match", "t4.m.im.9"]);
    assert_eq!(b.broker.state(), BrokerState::Connected);

    let back = publication(&matches, "back");
    a.publish(&matches, &back).await;
    assert_eq!(b.publication().await, back);
    let marker = publication(&matches, "marker");
    a.publish(&matches, &marker).await;
    assert_eq!(b.publication().await, marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_happens_in_the_background_and_early_subscriptions_go_live() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    nats.stop();
    let mut b = Node::start(&url, "t5", "b");
    assert_eq!(b.broker.state(), BrokerState::Connecting);
    let topic = public("match");
    assert_eq!(b.broker.subscribe(&topic, 1), Subscription::Pending);

    tokio::task::block_in_place(|| nats.restart());
    b.state(BrokerState::Connected).await;
    b.subscribed(&topic, 1).await;
    assert_eq!(nats.subscriptions("t5."), ["t5.a.match"]);
    let a = Node::connected(&nats, "t5", "a").await;
    let p = publication(&topic, "hello");
    a.publish(&topic, &p).await;
    assert_eq!(b.publication().await, p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_wire_version_is_reported_not_delivered() {
    let nats = NatsServer::start();
    let mut b = Node::connected(&nats, "t6", "b").await;
    let topic = public("match");
    b.subscribe(&topic, 1).await;

    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut message = gateway_broker::wire::encode(&publication(&topic, "future")).to_vec();
    message[0] = 3; // versions 1 and 2 are read
    raw.publish("t6.a.match", Bytes::from(message))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    // `event` fails on any publication before the report.
    let unreadable = b
        .event("Unreadable", |e| {
            matches!(e, BrokerEvent::Unreadable { .. })
        })
        .await;
    let BrokerEvent::Unreadable { channel, error } = unreadable else {
        unreachable!()
    };
    assert_eq!(channel, "t6.a.match");
    assert!(error.contains("version 3"), "{error}");

    let a = Node::connected(&nats, "t6", "a").await;
    let fine = publication(&topic, "fine");
    a.publish(&topic, &fine).await;
    assert_eq!(b.publication().await, fine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stops_reading_loses_messages_and_is_told() {
    let nats = NatsServer::start();
    let mut b = Node::connected(&nats, "t10", "b").await;
    let (matches, member) = (public("match"), private("im", 1));
    b.subscribe(&matches, 1).await;
    b.subscribe(&member, 2).await;
    b.inbound.set_stuck(true);
    // Unstuck however the test ends: a worker thread blocked for ever would hang the runtime.
    struct Unstick(Arc<Recorder>);
    impl Drop for Unstick {
        fn drop(&mut self) {
            self.0.set_stuck(false);
        }
    }
    let _unstick = Unstick(b.inbound.clone());

    // More than a subscription holds (`SUBSCRIPTION_CAPACITY`) while the node takes nothing.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let payload = gateway_broker::wire::encode(&publication(&matches, "flood"));
    for _ in 0..gateway_broker::nats::SUBSCRIPTION_CAPACITY + 1_000 {
        raw.publish("t10.a.match", payload.clone()).await.unwrap();
    }
    raw.flush().await.unwrap();
    let gap = b
        .event("Gap", |e| matches!(e, BrokerEvent::Gap { .. }))
        .await;
    let BrokerEvent::Gap { topics, cause } = gap else {
        unreachable!()
    };
    assert_eq!(cause, GapCause::SlowConsumer);
    // async-nats does not say which subscription dropped: every topic is named.
    assert_eq!(
        topics.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([matches, member])
    );
}

fn report(node: &str, connections: u64) -> NodeReport {
    NodeReport {
        node: node.to_owned(),
        version: NodeReport::VERSION,
        at_ms: 1,
        connections,
        ..NodeReport::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_holds_live_reports_and_drops_a_silent_node() {
    let nats = NatsServer::start();
    let a = Node::connected(&nats, "t7", "a").await;
    let b = Node::connected(&nats, "t7", "b").await;
    assert_eq!(a.broker.cluster().await.unwrap(), [], "no bucket yet");

    // JetStream's expiry works to about a second; a 1 s TTL keeps the test short.
    let ttl = Duration::from_secs(1);
    a.broker.report(&report("a", 3), ttl).await.unwrap();
    b.broker.report(&report("b", 5), ttl).await.unwrap();
    assert_eq!(
        a.broker.cluster().await.unwrap(),
        [report("a", 3), report("b", 5)]
    );

    // b stops reporting; a keeps reporting. b is gone within the TTL (and the server's expiry
    // check), a stays.
    let deadline = Instant::now() + DEADLINE;
    loop {
        a.broker.report(&report("a", 4), ttl).await.unwrap();
        let nodes: Vec<String> = a
            .broker
            .cluster()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.node)
            .collect();
        if nodes == ["a"] {
            break;
        }
        assert_eq!(nodes, ["a", "b"]);
        assert!(Instant::now() < deadline, "b's report never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_bucket_age_is_raised_to_the_longest_ttl_never_lowered() {
    let nats = NatsServer::start();
    let a = Node::connected(&nats, "t8.eu", "node 1").await;
    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let max_age = || async {
        let store = raw.get_key_value("t8_2Eeu-nodes").await.unwrap();
        store.stream.cached_info().config.max_age
    };
    a.broker
        .report(&report("node 1", 1), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(max_age().await, Duration::from_secs(2));
    a.broker
        .report(&report("node 1", 1), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(max_age().await, Duration::from_secs(30));
    a.broker
        .report(&report("node 1", 1), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(max_age().await, Duration::from_secs(30));
    // A node id that is no KV key as it stands is escaped, and read back.
    assert_eq!(a.broker.cluster().await.unwrap(), [report("node 1", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_removes_the_subscriptions_and_refuses_work() {
    let nats = NatsServer::start();
    let mut b = Node::connected(&nats, "t9", "b").await;
    let topic = public("match");
    b.subscribe(&topic, 1).await;
    b.broker.close();
    assert_eq!(b.broker.state(), BrokerState::Closed);
    let refused = b.broker.publish(&topic, publication(&topic, "late")).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(b.broker.cluster().await.is_err());
    server_subscriptions_become(&nats, "t9.", &[]).await;
}

/// The names of the clients connected to `nats` (`/connz`), sorted.
fn connection_names(nats: &NatsServer) -> Vec<String> {
    let body = nats.monitor("/connz?limit=1000").unwrap();
    let mut names: Vec<String> = body
        .split("\"name\":")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split_once('"').map(|(name, _)| name.to_owned())
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_connects_to_the_first_server_of_its_list() {
    let mut first = NatsServer::start();
    let second = NatsServer::start();
    let url = format!("{},{}", first.url(), second.url());
    // async-nats would pick a random server for each node: 8 nodes would all be on the first
    // one once in 256 runs.
    let mut nodes = Vec::new();
    for i in 0..8 {
        let mut node = Node::start(&url, "t11", &format!("n{i}"));
        node.state(BrokerState::Connected).await;
        nodes.push(node);
    }
    let names: Vec<String> = (0..8).map(|i| format!("ws-gateway n{i}")).collect();
    assert_eq!(connection_names(&first), names);
    assert_eq!(connection_names(&second), Vec::<String>::new());

    // The first one fails: every node moves to the next.
    first.stop();
    for node in &mut nodes {
        node.state(BrokerState::Connecting).await;
        node.state(BrokerState::Connected).await;
    }
    assert_eq!(connection_names(&second), names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_churned_during_an_outage_ends_as_the_last_wishes() {
    let mut nats = NatsServer::start();
    let a = Node::connected(&nats, "t12", "a").await;
    let mut b = Node::connected(&nats, "t12", "b").await;
    let (kept, dropped) = (public("kept"), public("dropped"));
    let (added, flicker) = (public("added"), private("im", 4));
    b.subscribe(&kept, 1).await;
    b.subscribe(&dropped, 2).await;

    nats.stop();
    b.state(BrokerState::Connecting).await;
    // 10 000 subscribe/unsubscribe pairs per topic, and thousands of topics that come and
    // go: far more changes than async-nats queues (2048) while it is disconnected.
    let mut seq = 10;
    for _ in 0..10_000 {
        for topic in [&kept, &dropped, &added, &flicker] {
            seq += 1;
            assert_eq!(b.broker.subscribe(topic, seq), Subscription::Pending);
            b.broker.unsubscribe(topic);
        }
    }
    let passing: Vec<Topic> = (0..3_000).map(|i| public(&format!("p{i}"))).collect();
    for topic in &passing {
        let _ = b.broker.subscribe(topic, 1);
    }
    for topic in &passing {
        b.broker.unsubscribe(topic);
    }
    let (kept_seq, added_seq) = (seq + 1, seq + 2);
    let _ = b.broker.subscribe(&kept, kept_seq);
    let _ = b.broker.subscribe(&added, added_seq);

    tokio::task::block_in_place(|| nats.restart());
    let mut announced: BTreeMap<Topic, Vec<u64>> = BTreeMap::new();
    let mut gap = None;
    let mut connected = false;
    let last = |announced: &BTreeMap<Topic, Vec<u64>>, topic: &Topic, seq: u64| {
        announced.get(topic).and_then(|seqs| seqs.last()) == Some(&seq)
    };
    while !(connected
        && gap.is_some()
        && last(&announced, &kept, kept_seq)
        && last(&announced, &added, added_seq))
    {
        match b.event("the reconnection's events", |_| true).await {
            BrokerEvent::State { state, .. } => connected = state == BrokerState::Connected,
            BrokerEvent::Subscribed { topic, seq } => {
                announced.entry(topic).or_default().push(seq);
            }
            BrokerEvent::Gap { topics, cause } => {
                assert_eq!(cause, GapCause::Reconnected);
                gap = Some(topics);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Only the last wishes, each announced once, and once the server has them.
    assert_eq!(
        announced,
        BTreeMap::from([
            (kept.clone(), vec![kept_seq]),
            (added.clone(), vec![added_seq])
        ])
    );
    assert_eq!(nats.subscriptions("t12."), ["t12.a.added", "t12.a.kept"]);
    // `kept` was held through the outage, so it may have missed publications; `dropped` was
    // let go, and `added` is new.
    assert_eq!(gap.unwrap(), std::slice::from_ref(&kept));

    let (k, n) = (publication(&kept, "k"), publication(&added, "n"));
    a.publish(&kept, &k).await;
    a.publish(&added, &n).await;
    let mut got = vec![b.publication().await, b.publication().await];
    got.sort_by(|x, y| x.frame.as_bytes().cmp(y.frame.as_bytes()));
    assert_eq!(got, [n, k]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_too_large_for_the_server_is_refused_unsent() {
    let nats = NatsServer::start();
    let mut a = Node::connected(&nats, "t13", "a").await;
    let topic = public("match");
    a.subscribe(&topic, 1).await;
    // nats-server's default max_payload is 1 MiB.
    let huge = publication(&topic, &"x".repeat(2 * 1024 * 1024));
    let refused = a.broker.publish(&topic, huge).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(!refused.unwrap_err().may_have_been_delivered());
    let fine = publication(&topic, "fine");
    a.publish(&topic, &fine).await;
    assert_eq!(a.publication().await, fine);
}

#[tokio::test]
async fn a_bad_url_is_reported_without_its_password() {
    let connect = |url: &str| {
        let inbound: Arc<dyn Inbound> = Recorder::new(mpsc::unbounded_channel().0);
        NatsBroker::connect(
            url,
            NatsAuth::default(),
            settings("ok", "n"),
            Arc::downgrade(&inbound),
        )
    };
    for (url, shown) in [
        ("nats://gw:hunter2@a:99999", "gw:<redacted>@a:99999"),
        ("nats://hunter2@a:99999", "nats://<redacted>@a:99999"),
        ("http://gw:hunter2@a:4222", "gw:<redacted>@a"),
        ("gw:hunter2@a:4222", "gw:<redacted>@a"),
        ("nats://gw:hun/ter2@a:4222", "gw:<redacted>@a"),
        ("nats://gw:hunter2@a:4222,,nats://b", "gw:<redacted>@a"),
    ] {
        match connect(url) {
            Err(BrokerError::Config(message)) => {
                assert!(
                    !message.contains("hunter2"),
                    "the password leaked: {message}"
                );
                assert!(message.contains(shown), "{url}: {message}");
            }
            other => panic!("{url:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_configuration_is_refused_at_once() {
    let connect = |url: &str, prefix: &str, auth: NatsAuth| {
        let inbound: Arc<dyn Inbound> = Recorder::new(mpsc::unbounded_channel().0);
        NatsBroker::connect(url, auth, settings(prefix, "n"), Arc::downgrade(&inbound))
    };
    for url in [
        "",
        "localhost:4222",
        "http://127.0.0.1:4222",
        "nats://",
        "nats://127.0.0.1:70000",
        "nats://127.0.0.1:4222,,nats://127.0.0.1:4223",
    ] {
        let result = connect(url, "ok", NatsAuth::default());
        assert!(
            matches!(result, Err(BrokerError::Config(_))),
            "{url:?}: {result:?}"
        );
    }
    let bad_prefix = connect("nats://127.0.0.1:4222", "a b", NatsAuth::default());
    assert!(matches!(bad_prefix, Err(BrokerError::Config(_))));
    let half_auth = NatsAuth {
        user: Some("gw".into()),
        ..NatsAuth::default()
    };
    let half = connect("nats://127.0.0.1:4222", "ok", half_auth);
    assert!(matches!(half, Err(BrokerError::Config(_))));
    // Several servers are fine, and nothing is contacted yet.
    let several = connect(
        "nats://127.0.0.1:1, tls://127.0.0.1:2",
        "ok",
        NatsAuth::default(),
    );
    assert_eq!(several.unwrap().state(), BrokerState::Connecting);
}

#[test]
fn connect_outside_a_runtime_is_a_configuration_error() {
    let inbound: Arc<dyn Inbound> = Recorder::new(mpsc::unbounded_channel().0);
    let result = NatsBroker::connect(
        "nats://127.0.0.1:4222",
        NatsAuth::default(),
        settings("ok", "n"),
        Arc::downgrade(&inbound),
    );
    assert!(matches!(result, Err(BrokerError::Config(_))), "{result:?}");
}
