//! The helpers of the Redis broker tests: a recording node, names, pushes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gateway_broker::redis::{RedisBroker, RedisOptions};
use gateway_broker::{Broker, BrokerEvent, BrokerSettings, BrokerState, Inbound, wire};
use gateway_core::{AppName, HistoryPolicy, MemberId, Publication, PushMessage, Topic};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

/// Longest wait for anything a test expects; only a guard against hangs.
pub const DEADLINE: Duration = Duration::from_secs(10);
pub const PREFIX: &str = "gw";

#[derive(Debug)]
pub enum Seen {
    Publication(Publication),
    Event(BrokerEvent),
}

/// The node as the broker sees it: everything it is handed goes into a channel.
pub struct Recorder(pub mpsc::UnboundedSender<Seen>);

impl Inbound for Recorder {
    fn publication(&self, publication: Publication) {
        let _ = self.0.send(Seen::Publication(publication));
    }

    fn event(&self, event: BrokerEvent) {
        let _ = self.0.send(Seen::Event(event));
    }
}

/// One gateway node: a broker and what reached it.
pub struct Node {
    pub broker: Arc<RedisBroker>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Read from `seen` while waiting for the broker to connect, kept for the test's next
    /// waits, in order.
    pub backlog: VecDeque<Seen>,
    /// The state the broker reported last ([`BrokerEvent::State`]).
    pub state: BrokerState,
    /// The broker holds only a `Weak`; the test keeps the node alive.
    _inbound: Arc<dyn Inbound>,
}

impl Node {
    pub fn start(name: &str, urls: &[String]) -> Node {
        Node::start_with(name, urls, Duration::from_secs(2))
    }

    pub fn start_with(name: &str, urls: &[String], publish_timeout: Duration) -> Node {
        Node::start_full(name, urls, publish_timeout, HistoryPolicy::default())
    }

    /// A node whose apps keep history as `history` says.
    pub fn start_history(name: &str, urls: &[String], history: HistoryPolicy) -> Node {
        Node::start_full(name, urls, Duration::from_secs(2), history)
    }

    pub fn start_full(
        name: &str,
        urls: &[String],
        publish_timeout: Duration,
        history: HistoryPolicy,
    ) -> Node {
        let (sender, seen) = mpsc::unbounded_channel();
        let inbound: Arc<dyn Inbound> = Arc::new(Recorder(sender));
        let settings = BrokerSettings {
            prefix: PREFIX.to_owned(),
            node_id: name.to_owned(),
            publish_timeout,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(200),
            history,
        };
        // Fast failure detection, so that fault tests finish quickly.
        let options = RedisOptions {
            ping_interval: Duration::from_millis(200),
            ping_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            batch: 3,
            ..RedisOptions::default()
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
    pub async fn receive(&mut self, deadline: Instant) -> Option<Seen> {
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
    pub async fn until<T>(
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

    pub async fn subscribed(&mut self, topic: &Topic, seq: u64) -> Vec<Seen> {
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
    pub async fn subscribed_all(&mut self, expected: &[(Topic, u64)]) -> BTreeMap<Topic, Vec<u64>> {
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

    pub async fn subscribe(&mut self, topic: &Topic, seq: u64) {
        let _ = self.broker.subscribe(topic, seq);
        self.subscribed(topic, seq).await;
    }

    /// The next publication, and what came before it.
    pub async fn publication(&mut self) -> (Publication, Vec<Seen>) {
        self.until("publication", |seen| match seen {
            Seen::Publication(p) => Some(p.clone()),
            Seen::Event(_) => None,
        })
        .await
    }

    pub async fn state(&mut self, state: BrokerState) -> Option<String> {
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
    pub async fn connected(&mut self) {
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
    pub async fn publish(&mut self, topic: &Topic, publication: &Publication) {
        self.connected().await;
        self.broker
            .publish(topic, publication.clone())
            .await
            .unwrap_or_else(|e| panic!("publishing to {topic}: {e}"));
    }
}

pub fn no_publications(seen: &[Seen]) {
    let publications: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Publication(_)))
        .collect();
    assert!(publications.is_empty(), "unexpected: {publications:#?}");
}

pub fn app(name: &str) -> AppName {
    AppName::parse(name, AppName::DEFAULT_MAX_LEN).unwrap()
}

pub fn public(name: &str) -> Topic {
    Topic::App(app(name))
}

pub fn private(name: &str, member: i64) -> Topic {
    Topic::Member {
        app: app(name),
        member: MemberId::new(member).unwrap(),
    }
}

/// A publication to `topic`, as a push to it would make.
pub fn push(topic: &Topic, text: &str) -> Publication {
    Publication::from(PushMessage {
        app: topic.app().clone(),
        member_id: topic.member().map_or(-1, MemberId::get),
        text: text.to_owned(),
    })
}

/// `publication` without its position, to compare with what was pushed.
pub fn unpositioned(mut publication: Publication) -> Publication {
    publication.position = None;
    publication
}

pub fn channel(topic: &Topic) -> String {
    wire::channel(PREFIX, topic)
}

/// Polls the server until `check` holds (the server shows state, it sends no events).
pub async fn until_server(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
