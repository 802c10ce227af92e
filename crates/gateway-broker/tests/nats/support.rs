//! The recording node and helpers shared by the NATS tests.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use gateway_broker::nats::{NatsAuth, NatsBroker};
use gateway_broker::{Broker, BrokerEvent, BrokerSettings, BrokerState, Inbound, Subscription};
use gateway_core::{AppName, HistoryPolicy, MemberId, Publication, PushMessage, Topic};
use test_servers::NatsServer;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

/// The longest wait for anything the broker or the server should do.
pub const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub enum Seen {
    Publication(Publication),
    Event(BrokerEvent),
}

/// The node, as the broker sees it: everything it is told goes into a channel.
pub struct Recorder {
    seen: mpsc::UnboundedSender<Seen>,
    /// While true, the node takes no publication (a stuck node): `publication` blocks.
    stuck: Mutex<bool>,
    unstuck: Condvar,
}

impl Recorder {
    pub fn new(seen: mpsc::UnboundedSender<Seen>) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen,
            stuck: Mutex::new(false),
            unstuck: Condvar::new(),
        })
    }

    pub fn set_stuck(&self, stuck: bool) {
        *self.stuck.lock().unwrap() = stuck;
        self.unstuck.notify_all();
    }
}

impl Inbound for Recorder {
    fn publication(&self, publication: Publication) {
        let stuck = self.stuck.lock().unwrap();
        drop(self.unstuck.wait_while(stuck, |stuck| *stuck).unwrap());
        let _ = self.seen.send(Seen::Publication(publication));
    }
    fn event(&self, event: BrokerEvent) {
        let _ = self.seen.send(Seen::Event(event));
    }
}

pub struct Node {
    pub name: String,
    pub broker: Arc<NatsBroker>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub inbound: Arc<Recorder>,
}

/// Settings for tests of NATS core: no app keeps history, so publications travel as they did
/// before history (wire version 1, no JetStream).
pub fn settings(prefix: &str, node: &str) -> BrokerSettings {
    BrokerSettings {
        prefix: prefix.to_owned(),
        node_id: node.to_owned(),
        publish_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(250),
        history: HistoryPolicy::off(),
    }
}

impl Node {
    /// A broker on `url`, not waiting for it to connect.
    pub fn start(url: &str, prefix: &str, name: &str) -> Node {
        Node::with_settings(url, settings(prefix, name))
    }

    /// A broker on `url` with `settings`, not waiting for it to connect.
    pub fn with_settings(url: &str, settings: BrokerSettings) -> Node {
        let (tx, seen) = mpsc::unbounded_channel();
        let inbound = Recorder::new(tx);
        let weak: Weak<dyn Inbound> = Arc::downgrade(&inbound) as Weak<Recorder>;
        let name = settings.node_id.clone();
        let broker = NatsBroker::connect(url, NatsAuth::default(), settings, weak).unwrap();
        Node {
            name,
            broker,
            seen,
            inbound,
        }
    }

    /// A broker on `nats`, once it says it is connected.
    pub async fn connected(nats: &NatsServer, prefix: &str, name: &str) -> Node {
        let mut node = Node::start(&nats.url(), prefix, name);
        node.state(BrokerState::Connected).await;
        node
    }

    /// The next event `accept`s, skipping other events; a publication meanwhile is a failure.
    pub async fn event(
        &mut self,
        what: &str,
        accept: impl Fn(&BrokerEvent) -> bool,
    ) -> BrokerEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match timeout_at(deadline, self.seen.recv()).await {
                Err(_) => panic!("{}: no {what} within {DEADLINE:?}", self.name),
                Ok(None) => panic!("{}: the recorder is gone", self.name),
                Ok(Some(Seen::Event(event))) if accept(&event) => return event,
                Ok(Some(Seen::Event(_))) => {}
                Ok(Some(Seen::Publication(p))) => {
                    panic!("{}: publication {p:?} while waiting for {what}", self.name)
                }
            }
        }
    }

    pub async fn state(&mut self, state: BrokerState) {
        let what = format!("state {state:?}");
        self.event(
            &what,
            |e| matches!(e, BrokerEvent::State { state: s, .. } if *s == state),
        )
        .await;
    }

    pub async fn subscribed(&mut self, topic: &Topic, seq: u64) {
        let what = format!("Subscribed {{ {topic}, {seq} }}");
        self.event(&what, |e| {
            matches!(e, BrokerEvent::Subscribed { topic: t, seq: s } if t == topic && *s == seq)
        })
        .await;
    }

    /// Subscribes and waits until the subscription is live.
    pub async fn subscribe(&mut self, topic: &Topic, seq: u64) {
        assert_eq!(self.broker.subscribe(topic, seq), Subscription::Pending);
        self.subscribed(topic, seq).await;
    }

    /// The next publication, skipping events.
    pub async fn publication(&mut self) -> Publication {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match timeout_at(deadline, self.seen.recv()).await {
                Err(_) => panic!("{}: no publication within {DEADLINE:?}", self.name),
                Ok(None) => panic!("{}: the recorder is gone", self.name),
                Ok(Some(Seen::Publication(p))) => return p,
                Ok(Some(Seen::Event(_))) => {}
            }
        }
    }

    /// Publishes once this node is connected (it connects in the background, and a
    /// publication before that is refused, as it should be).
    ///
    /// This polls the broker's state rather than waiting for its `State` event: async-nats
    /// sends its `Connected` event just *before* it sets the state that `publish` checks, so
    /// the event does not promise that a publication is taken yet.
    pub async fn publish(&self, topic: &Topic, publication: &Publication) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.broker.state() != BrokerState::Connected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never connected",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.broker
            .publish(topic, publication.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: publish failed: {e}", self.name));
    }
}

pub fn app(name: &str) -> AppName {
    AppName::parse(name, 128).unwrap()
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

pub fn publication(topic: &Topic, text: &str) -> Publication {
    Publication::from(PushMessage {
        app: topic.app().clone(),
        member_id: topic.member().map_or(-1, MemberId::get),
        text: text.to_owned(),
    })
}

/// Polls the server's subscriptions under `prefix` until they are `expected` (sorted).
pub async fn server_subscriptions_become(nats: &NatsServer, prefix: &str, expected: &[&str]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = nats.subscriptions(prefix);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server subscriptions {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
