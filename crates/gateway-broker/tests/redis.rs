//! The Redis broker against real `redis-server` processes (test-servers), never a mock.
//!
//! Every wait is for an event (a channel-backed recording `Inbound`) or for the server to
//! show a state, each under a deadline; nothing sleeps to synchronise. "Nothing else arrived"
//! is shown with a marker: a later publication that does arrive, with nothing before it.
//!
//! Run with: `cargo test -p gateway-broker --test redis` (needs `redis-server` on the PATH).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gateway_broker::redis::{RedisBroker, RedisOptions};
use gateway_broker::{
    Broker, BrokerError, BrokerEvent, BrokerSettings, BrokerState, GapCause, Inbound, NodeReport,
    wire,
};
use gateway_core::{AppName, MemberId, Publication, PushMessage, Topic};
use test_servers::RedisServer;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

/// Longest wait for anything a test expects; only a guard against hangs.
const DEADLINE: Duration = Duration::from_secs(10);
const PREFIX: &str = "gw";

#[derive(Debug)]
enum Seen {
    Publication(Publication),
    Event(BrokerEvent),
}

/// The node as the broker sees it: everything it is handed goes into a channel.
struct Recorder(mpsc::UnboundedSender<Seen>);

impl Inbound for Recorder {
    fn publication(&self, publication: Publication) {
        let _ = self.0.send(Seen::Publication(publication));
    }

    fn event(&self, event: BrokerEvent) {
        let _ = self.0.send(Seen::Event(event));
    }
}

/// One gateway node: a broker and what reached it.
struct Node {
    broker: Arc<RedisBroker>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Read from `seen` while waiting for the broker to connect, kept for the test's next
    /// waits, in order.
    backlog: VecDeque<Seen>,
    /// The state the broker reported last ([`BrokerEvent::State`]).
    state: BrokerState,
    /// The broker holds only a `Weak`; the test keeps the node alive.
    _inbound: Arc<dyn Inbound>,
}

impl Node {
    fn start(name: &str, urls: &[String]) -> Node {
        Node::start_with(name, urls, Duration::from_secs(2))
    }

    fn start_with(name: &str, urls: &[String], publish_timeout: Duration) -> Node {
        let (sender, seen) = mpsc::unbounded_channel();
        let inbound: Arc<dyn Inbound> = Arc::new(Recorder(sender));
        let settings = BrokerSettings {
            prefix: PREFIX.to_owned(),
            node_id: name.to_owned(),
            publish_timeout,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(200),
        };
        // Fast failure detection, so that fault tests finish quickly.
        let options = RedisOptions {
            ping_interval: Duration::from_millis(200),
            ping_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            batch: 3,
        };
        let broker =
            RedisBroker::connect_with(urls, settings, options, Arc::downgrade(&inbound)).unwrap();
        Node {
            broker,
            seen,
            backlog: VecDeque::new(),
            state: BrokerState::Connecting,
            _inbound: inbound,
        }
    }

    /// The next thing the broker handed over, noting the state it reports; `None` at the
    /// deadline.
    async fn receive(&mut self, deadline: Instant) -> Option<Seen> {
        let seen = timeout_at(deadline, self.seen.recv())
            .await
            .ok()?
            .expect("the broker holds the recorder's sender");
        if let Seen::Event(BrokerEvent::State { state, .. }) = &seen {
            self.state = *state;
        }
        Some(seen)
    }

    /// Waits until `pick` accepts something; returns it and everything that came before it.
    async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Seen) -> Option<T>,
    ) -> (T, Vec<Seen>) {
        let deadline = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        loop {
            let next = match self.backlog.pop_front() {
                Some(seen) => Some(seen),
                None => self.receive(deadline).await,
            };
            let Some(seen) = next else {
                panic!("no {what} within {DEADLINE:?}; before it: {before:#?}");
            };
            if let Some(found) = pick(&seen) {
                return (found, before);
            }
            before.push(seen);
        }
    }

    async fn subscribed(&mut self, topic: &Topic, seq: u64) -> Vec<Seen> {
        let what = format!("Subscribed {{ {topic}, {seq} }}");
        self.until(&what, |seen| match seen {
            Seen::Event(BrokerEvent::Subscribed { topic: t, seq: s })
                if t == topic && *s == seq =>
            {
                Some(())
            }
            _ => None,
        })
        .await
        .1
    }

    /// Waits until each of `expected` was announced; returns every seq announced per topic,
    /// in order, meanwhile (publications are not expected meanwhile).
    async fn subscribed_all(&mut self, expected: &[(Topic, u64)]) -> BTreeMap<Topic, Vec<u64>> {
        let mut announced: BTreeMap<Topic, Vec<u64>> = BTreeMap::new();
        let mut missing: Vec<&(Topic, u64)> = expected.iter().collect();
        while !missing.is_empty() {
            let ((topic, seq), before) = self
                .until("Subscribed", |seen| match seen {
                    Seen::Event(BrokerEvent::Subscribed { topic, seq }) => {
                        Some((topic.clone(), *seq))
                    }
                    _ => None,
                })
                .await;
            no_publications(&before);
            missing.retain(|(t, s)| !(t == &topic && *s == seq));
            announced.entry(topic).or_default().push(seq);
        }
        announced
    }

    async fn subscribe(&mut self, topic: &Topic, seq: u64) {
        let _ = self.broker.subscribe(topic, seq);
        self.subscribed(topic, seq).await;
    }

    /// The next publication, and what came before it.
    async fn publication(&mut self) -> (Publication, Vec<Seen>) {
        self.until("publication", |seen| match seen {
            Seen::Publication(p) => Some(p.clone()),
            Seen::Event(_) => None,
        })
        .await
    }

    async fn state(&mut self, state: BrokerState) -> Option<String> {
        self.until(state.as_str(), |seen| match seen {
            Seen::Event(BrokerEvent::State { state: s, error }) if *s == state => {
                Some(error.clone())
            }
            _ => None,
        })
        .await
        .0
    }

    /// Waits until the broker has reported that it is connected (it connects in the
    /// background, and a publication before that is refused, as it should be). What arrives
    /// meanwhile stays for the test's next waits.
    async fn connected(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        while self.state != BrokerState::Connected {
            let Some(seen) = self.receive(deadline).await else {
                panic!(
                    "not connected within {DEADLINE:?}; meanwhile: {:#?}",
                    self.backlog
                );
            };
            self.backlog.push_back(seen);
        }
    }

    /// Publishes once this node's connections are up.
    async fn publish(&mut self, topic: &Topic, publication: &Publication) {
        self.connected().await;
        self.broker
            .publish(topic, publication.clone())
            .await
            .unwrap_or_else(|e| panic!("publishing to {topic}: {e}"));
    }
}

fn no_publications(seen: &[Seen]) {
    let publications: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Publication(_)))
        .collect();
    assert!(publications.is_empty(), "unexpected: {publications:#?}");
}

fn app(name: &str) -> AppName {
    AppName::parse(name, AppName::DEFAULT_MAX_LEN).unwrap()
}

fn public(name: &str) -> Topic {
    Topic::App(app(name))
}

fn private(name: &str, member: i64) -> Topic {
    Topic::Member {
        app: app(name),
        member: MemberId::new(member).unwrap(),
    }
}

/// A publication to `topic`, as a push to it would make.
fn push(topic: &Topic, text: &str) -> Publication {
    Publication::from(PushMessage {
        app: topic.app().clone(),
        member_id: topic.member().map_or(-1, MemberId::get),
        text: text.to_owned(),
    })
}

fn channel(topic: &Topic) -> String {
    wire::channel(PREFIX, topic)
}

/// Polls the server until `check` holds (the server shows state, it sends no events).
async fn until_server(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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
    assert_eq!(received, goal);
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
    assert_eq!(received, marker);

    // A had no interest in `match`: its first publication is its own marker.
    let own = push(&other, "own marker");
    b.publish(&other, &own).await;
    let (received, before) = a.publication().await;
    no_publications(&before);
    assert_eq!(received, own);
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
    assert_eq!(received, hello);
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
async fn a_lost_server_fails_pushes_and_its_return_is_a_gap() {
    let mut redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let (match_, member) = (public("match"), private("im", 3));
    node.state(BrokerState::Connected).await;
    node.subscribe(&match_, 1).await;
    node.subscribe(&member, 2).await;

    redis.stop();
    let error = node.state(BrokerState::Connecting).await;
    assert!(error.is_some(), "a lost connection says why");
    assert_eq!(node.broker.state(), BrokerState::Connecting);
    // The state may have changed with the subscriber's connection while the publisher's has
    // not noticed yet: a publication handed to it is sent into a dead connection, with an
    // unknown outcome (Failed), and makes the publisher check. Once it knows, nothing is sent:
    // Unavailable, at once.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let refused = timeout(
            Duration::from_secs(3),
            node.broker.publish(&match_, push(&match_, "lost")),
        )
        .await
        .expect("a publish fails promptly while Redis is away");
        match refused {
            Err(BrokerError::Unavailable(_)) => break,
            Err(BrokerError::Failed(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the publisher never noticed the loss"
        );
        tokio::task::yield_now().await;
    }

    tokio::task::block_in_place(|| redis.restart());
    let mut subscribed = BTreeMap::new();
    let mut gap = None;
    let mut connected = false;
    while !(connected && gap.is_some() && subscribed.len() == 2) {
        let (event, _) = node
            .until("the reconnection's events", |seen| match seen {
                Seen::Event(event) => Some(event.clone()),
                Seen::Publication(_) => None,
            })
            .await;
        match event {
            BrokerEvent::State { state, .. } => connected = state == BrokerState::Connected,
            BrokerEvent::Subscribed { topic, seq } => {
                assert!(gap.is_none(), "Subscribed comes before the gap");
                subscribed.insert(topic, seq);
            }
            BrokerEvent::Gap { mut topics, cause } => {
                assert_eq!(cause, GapCause::Reconnected);
                topics.sort();
                gap = Some(topics);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        subscribed,
        BTreeMap::from([(match_.clone(), 1), (member.clone(), 2)])
    );
    assert_eq!(gap.unwrap(), [match_.clone(), member.clone()]);
    assert_eq!(node.broker.state(), BrokerState::Connected);
    assert_eq!(redis.channels("gw.*"), ["gw.a.match", "gw.m.im.3"]);

    let back = push(&member, "back");
    node.publish(&member, &back).await;
    let (received, before) = node.publication().await;
    no_publications(&before);
    assert_eq!(received, back);
}

/// The ids of the connections whose `PUBLISH` the server holds (paused, flag `b`).
fn held_publishers(redis: &RedisServer) -> Vec<String> {
    let clients = redis.command(&["CLIENT", "LIST"]).unwrap();
    clients
        .lines()
        .filter(|client| {
            let fields: Vec<&str> = client.split(' ').collect();
            fields.contains(&"cmd=publish")
                && fields
                    .iter()
                    .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('b')))
        })
        .filter_map(|client| client.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_lost_after_it_was_sent_has_an_unknown_outcome() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut hasty = Node::start_with("a", &urls, Duration::from_millis(300));
    let mut patient = Node::start_with("b", &urls, DEADLINE);
    hasty.connected().await;
    patient.connected().await;
    let topic = public("match");
    // Redis holds write commands, PUBLISH among them, until unpaused.
    assert_eq!(
        redis
            .command(&["CLIENT", "PAUSE", "30000", "WRITE"])
            .unwrap(),
        "OK"
    );

    // Sent, and not answered in time: it may still be delivered.
    let late = hasty.broker.publish(&topic, push(&topic, "late")).await;
    assert!(matches!(late, Err(BrokerError::TimedOut(_))), "{late:?}");
    assert!(late.unwrap_err().may_have_been_delivered());

    // Sent, and the connection breaks while Redis holds it: the outcome is unknown too. Never
    // Unavailable, which would promise that nobody got it.
    let held = held_publishers(&redis).len();
    let publishing = tokio::spawn(patient.broker.publish(&topic, push(&topic, "held")));
    until_server("the server holding the PUBLISH", || {
        held_publishers(&redis).len() == held + 1
    })
    .await;
    for id in held_publishers(&redis) {
        redis.command(&["CLIENT", "KILL", "ID", &id]).unwrap();
    }
    let broken = timeout(DEADLINE, publishing)
        .await
        .expect("the publication fails once its connection is gone")
        .unwrap();
    assert!(matches!(broken, Err(BrokerError::Failed(_))), "{broken:?}");
    assert!(broken.unwrap_err().may_have_been_delivered());
    assert_eq!(redis.command(&["CLIENT", "UNPAUSE"]).unwrap(), "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_is_noticed_by_its_ping() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let topic = public("match");
    node.state(BrokerState::Connected).await;
    node.subscribe(&topic, 1).await;

    // The server holds every client's commands, PING included, but keeps the sockets open:
    // from the client's side, a connection that stopped answering.
    let paused = Instant::now();
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "2000", "ALL"]).unwrap(),
        "OK"
    );
    let error = node.state(BrokerState::Connecting).await.unwrap();
    assert!(error.contains("PING"), "{error}");
    // ping_interval + ping_timeout (0.7 s here) plus scheduling slack.
    assert!(
        paused.elapsed() < Duration::from_millis(1500),
        "{:?}",
        paused.elapsed()
    );

    let (gap, _) = node
        .until("the gap", |seen| match seen {
            Seen::Event(BrokerEvent::Gap { topics, cause }) => Some((topics.clone(), *cause)),
            _ => None,
        })
        .await;
    assert_eq!(gap, (vec![topic], GapCause::Reconnected));
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
    assert_eq!(p, marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_wire_version_is_reported_not_delivered() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let topic = public("match");
    node.subscribe(&topic, 1).await;

    let chan = channel(&topic);
    let raw = "\u{2}\0\0\0\0\0\0\0\u{1}\0\u{5}match{\"text\":\"from the future\"}";
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
    assert!(error.contains("version 2"), "{error}");

    let marker = push(&topic, "marker");
    node.publish(&topic, &marker).await;
    let (p, before) = node.publication().await;
    no_publications(&before);
    assert_eq!(p, marker);
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
/// would be. Run with:
/// `cargo test --release -p gateway-broker --test redis -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check; run it in release"]
async fn publish_throughput_through_one_redis() {
    const PUSHERS: usize = 50;
    const EACH: usize = 4_000;
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut sender = Node::start("a", &urls);
    let mut receiver = Node::start("b", &urls);
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
        "{} pushes: published at {:.0}/s, delivered at {:.0}/s",
        PUSHERS * EACH,
        total / published.as_secs_f64(),
        total / delivered.as_secs_f64()
    );
}
