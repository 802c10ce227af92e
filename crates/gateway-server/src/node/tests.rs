//! The node's broker logic, step by step and deterministic: a scripted broker stands in for
//! Redis and NATS (whose own behaviour `gateway-broker`'s tests check against real servers),
//! so that the order of confirmations, losses and time is the test's to choose.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use gateway_broker::{BoxFuture, Published, Publishing};
use gateway_core::{AuthOutcome, MemberId, PushMessage};

use super::*;

/// Every subscription is pending until the test confirms it; publications come back at once.
#[derive(Debug, Default)]
struct ScriptedBroker {
    inbound: Mutex<Option<Weak<dyn Inbound>>>,
    calls: Mutex<Vec<String>>,
}

impl ScriptedBroker {
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Broker for ScriptedBroker {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn publish(&self, _topic: &Topic, publication: Publication) -> Publishing {
        let inbound = self.inbound.lock().unwrap().clone().unwrap();
        inbound.upgrade().unwrap().publication(publication);
        Publishing::Done(Ok(Published::new()))
    }

    fn subscribe(&self, topic: &Topic, seq: u64) -> Subscription {
        self.calls
            .lock()
            .unwrap()
            .push(format!("subscribe {topic} {seq}"));
        Subscription::Pending
    }

    fn unsubscribe(&self, topic: &Topic) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("unsubscribe {topic}"));
    }

    fn state(&self) -> BrokerState {
        BrokerState::Connected
    }

    fn report(
        &self,
        _report: &gateway_broker::NodeReport,
        _ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn cluster(&self) -> BoxFuture<'static, Result<Vec<gateway_broker::NodeReport>, BrokerError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn close(&self) {}
}

struct Fixture {
    node: Arc<Node>,
    broker: Arc<ScriptedBroker>,
    outboxes: HashMap<u64, Arc<Outbox>>,
}

const LIMITS: HeldLimits = HeldLimits {
    messages: 4,
    bytes: 1 << 20,
};

impl Fixture {
    fn new() -> Fixture {
        let broker = Arc::new(ScriptedBroker::default());
        let scripted = broker.clone();
        let node = Node::with_broker(
            HubConfig::default(),
            LIMITS,
            Arc::new(Counters::default()),
            move |inbound| {
                *scripted.inbound.lock().unwrap() = Some(inbound);
                Ok(scripted as SharedBroker)
            },
        )
        .unwrap();
        Fixture {
            node,
            broker,
            outboxes: HashMap::new(),
        }
    }

    fn connect(&mut self, conn: u64, member: Option<i64>) {
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        self.node.attach(ConnId::new(conn), outbox.clone());
        self.outboxes.insert(conn, outbox);
        let outcome = match member {
            Some(id) => AuthOutcome::accepted(MemberId::new(id).unwrap()),
            None => AuthOutcome::Anonymous,
        };
        self.node.handle(Input::Authenticated {
            conn: ConnId::new(conn),
            outcome,
        });
        self.frames(conn); // the hello
    }

    fn subscribe(&self, conn: u64, app: &str) {
        self.node.handle(Input::Message {
            conn: ConnId::new(conn),
            payload: format!(r#"{{"app":"{app}"}}"#).as_bytes(),
        });
    }

    fn push(&self, app: &str, member_id: i64, text: &str) {
        let push = PushMessage::parse(
            format!(r#"{{"app":"{app}","member_id":{member_id},"text":"{text}"}}"#).as_bytes(),
            128,
        )
        .unwrap();
        let publishing = self.node.publish(Publication::from(push));
        // The scripted broker completes at once.
        futures_util::FutureExt::now_or_never(publishing)
            .unwrap()
            .unwrap();
    }

    fn confirm(&self, topic: &str, seq: u64) {
        self.node.event(BrokerEvent::Subscribed {
            topic: Topic::App(AppName::parse(topic, 128).unwrap()),
            seq,
        });
    }

    /// The texts queued to `conn` since the last call (the `text` of pushes, the `message` of
    /// replies), and its close code.
    fn frames(&self, conn: u64) -> (Vec<String>, Option<u16>) {
        let batch = self.outboxes[&conn].take();
        let texts = batch
            .frames
            .into_iter()
            .map(|m| {
                let value: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                let text = value["text"].as_str().unwrap().to_owned();
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(reply) if reply.get("message").is_some() => {
                        reply["message"].as_str().unwrap().to_owned()
                    }
                    _ => text,
                }
            })
            .collect();
        (texts, batch.close.map(|c| c.code()))
    }
}

fn texts(list: &[&str]) -> (Vec<String>, Option<u16>) {
    (list.iter().map(|s| (*s).to_owned()).collect(), None)
}

#[test]
fn the_subscribe_reply_waits_for_the_broker_and_nothing_overtakes_it() {
    let mut f = Fixture::new();
    f.connect(1, None);
    f.subscribe(1, "a");
    assert_eq!(f.broker.calls(), ["subscribe a 1"]);
    assert_eq!(
        f.frames(1),
        texts(&[]),
        "no reply before the broker confirmed"
    );
    // A second subscriber of the pending topic waits too; no second broker subscription.
    f.connect(2, None);
    f.subscribe(2, "a");
    assert_eq!(f.broker.calls(), Vec::<String>::new());
    // Conn 1 subscribes to a live topic meanwhile: that reply queues behind the held one.
    f.subscribe(1, "b");
    f.confirm("b", 2);
    assert_eq!(f.frames(1), texts(&[]));
    // A push to a (from the broker, as it would be once subscribed) lands behind the reply.
    f.confirm("a", 1);
    f.push("a", -1, "first");
    assert_eq!(
        f.frames(1),
        texts(&["subscribe a success", "subscribe b success", "first"])
    );
    assert_eq!(f.frames(2), texts(&["subscribe a success", "first"]));
}

#[test]
fn a_confirmation_of_an_older_request_does_not_release_a_newer_one() {
    let mut f = Fixture::new();
    f.connect(1, None);
    f.subscribe(1, "a");
    f.node.detach(ConnId::new(1));
    f.connect(2, None);
    f.subscribe(2, "a");
    assert_eq!(
        f.broker.calls(),
        ["subscribe a 1", "unsubscribe a", "subscribe a 2"]
    );
    f.confirm("a", 1);
    assert_eq!(
        f.frames(2),
        texts(&[]),
        "seq 1 confirms the old subscription only"
    );
    f.confirm("a", 2);
    assert_eq!(f.frames(2), texts(&["subscribe a success"]));
}

#[test]
fn private_topics_are_per_member_and_wait_separately() {
    let mut f = Fixture::new();
    f.connect(1, Some(7));
    f.connect(2, Some(8));
    f.subscribe(1, "im");
    f.subscribe(2, "im");
    assert_eq!(f.broker.calls(), ["subscribe im#7 1", "subscribe im#8 2"]);
    f.node.event(BrokerEvent::Subscribed {
        topic: Topic::Member {
            app: AppName::parse("im", 128).unwrap(),
            member: MemberId::new(8).unwrap(),
        },
        seq: 2,
    });
    assert_eq!(f.frames(1), texts(&[]));
    assert_eq!(f.frames(2), texts(&["subscribe im success"]));
}

#[test]
fn a_connection_that_overflows_while_held_is_closed_as_a_slow_consumer() {
    let mut f = Fixture::new();
    f.connect(1, None);
    f.subscribe(1, "a");
    f.connect(2, None);
    f.subscribe(2, "b");
    f.confirm("b", 2);
    f.frames(2);
    // Conn 1 also subscribed to b, which is live: pushes to b pile up behind a's reply.
    f.subscribe(1, "b");
    for n in 0..4 {
        f.push("b", -1, &format!("{n}"));
    }
    let (_, close) = f.frames(1);
    assert_eq!(close, Some(4100), "held past limits.outbox_messages");
    // The others are served as usual.
    assert_eq!(f.frames(2), texts(&["0", "1", "2", "3"]));
}

#[test]
fn connections_waiting_too_long_for_the_broker_are_closed_with_1013() {
    let mut f = Fixture::new();
    f.connect(1, None);
    f.subscribe(1, "a");
    let later = Instant::now() + Duration::from_secs(30);
    assert_eq!(
        f.node
            .expire_pending(Instant::now(), Duration::from_secs(10)),
        0
    );
    assert_eq!(f.node.expire_pending(later, Duration::from_secs(10)), 1);
    assert_eq!(f.frames(1), (Vec::new(), Some(1013)));
    // The node forgot it, and with it the interest.
    assert_eq!(f.broker.calls(), ["subscribe a 1", "unsubscribe a"]);
    assert_eq!(f.node.connection_count(), 0);
}

#[test]
fn unsubscribing_while_the_broker_has_not_confirmed_releases_both_replies_in_order() {
    let mut f = Fixture::new();
    f.connect(1, None);
    f.connect(2, None);
    f.subscribe(1, "a");
    f.subscribe(2, "b");
    assert_eq!(f.broker.calls(), ["subscribe a 1", "subscribe b 2"]);
    f.node.handle(Input::Message {
        conn: ConnId::new(1),
        payload: br#"{"app":"a","action":"unsubscribe"}"#,
    });
    // The topic is given up: nothing is pending for it any more, so the held reply goes out,
    // followed by the unsubscribe reply; a late confirmation changes nothing.
    assert_eq!(f.broker.calls(), ["unsubscribe a"]);
    assert_eq!(
        f.frames(1),
        texts(&["subscribe a success", "unsubscribe a success"])
    );
    f.confirm("a", 1);
    assert_eq!(f.frames(1), texts(&[]));
    // Another connection's held reply is not disturbed.
    assert_eq!(f.frames(2), texts(&[]));
    f.confirm("b", 2);
    assert_eq!(f.frames(2), texts(&["subscribe b success"]));
}

#[test]
fn an_unsubscribe_reply_waits_behind_a_held_subscribe_reply_of_the_same_connection() {
    let mut f = Fixture::new();
    f.connect(1, None);
    f.subscribe(1, "a");
    f.subscribe(1, "b");
    f.broker.calls();
    f.node.handle(Input::Message {
        conn: ConnId::new(1),
        payload: br#"{"app":"b","action":"unsubscribe"}"#,
    });
    assert_eq!(f.broker.calls(), ["unsubscribe b"]);
    // "a" is still pending: everything to this connection waits behind its reply, in order.
    assert_eq!(f.frames(1), texts(&[]));
    f.confirm("a", 1);
    assert_eq!(
        f.frames(1),
        texts(&[
            "subscribe a success",
            "subscribe b success",
            "unsubscribe b success"
        ])
    );
}
