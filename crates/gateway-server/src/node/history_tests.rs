//! Recovery and the sequencer with a broker that keeps history, step by step: the test
//! decides when the broker confirms a topic, when a live publication reaches the node and when
//! a history read answers, so the subscribe-then-read race and the holes are played out in
//! every order that matters.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use gateway_broker::{BoxFuture, Published, Publishing};
use gateway_core::history::History;
use gateway_core::{AuthOutcome, PushMessage};
use tokio::sync::oneshot;

use super::*;

/// Keeps history like Redis would (positions given at publish, one history for all nodes) but
/// delivers nothing by itself: [`HistoryBroker::deliver`] hands a stored publication to the
/// node, and every history read waits until the test answers it.
#[derive(Default)]
struct HistoryBroker {
    inbound: Mutex<Option<Weak<dyn Inbound>>>,
    history: Arc<Mutex<Option<History>>>,
    stored: Mutex<Vec<Publication>>,
    reads: Mutex<Vec<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for HistoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistoryBroker")
    }
}

impl HistoryBroker {
    fn deliver(&self, offset: u64) {
        let publication = self.stored.lock().unwrap()[offset as usize - 1].clone();
        let inbound = self.inbound.lock().unwrap().clone().unwrap();
        inbound.upgrade().unwrap().publication(publication);
    }

    fn reads_waiting(&self) -> usize {
        self.reads.lock().unwrap().len()
    }

    /// Lets the oldest waiting read answer (it reads the history as it is then).
    fn answer_read(&self) {
        let gate = self.reads.lock().unwrap().remove(0);
        gate.send(()).unwrap();
    }
}

impl Broker for HistoryBroker {
    fn kind(&self) -> &'static str {
        "history"
    }

    fn publish(&self, topic: &Topic, publication: Publication) -> Publishing {
        let mut history = self.history.lock().unwrap();
        let publication =
            history
                .as_mut()
                .unwrap()
                .append(topic, publication, Timestamp::from_millis(0));
        let position = publication.position.clone().unwrap();
        self.stored.lock().unwrap().push(publication);
        Publishing::Done(Ok(Published::at(position)))
    }

    fn subscribe(&self, _topic: &Topic, _seq: u64) -> Subscription {
        Subscription::Pending
    }

    fn unsubscribe(&self, _topic: &Topic) {}

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

    fn keeps_history(&self) -> bool {
        true
    }

    fn history(
        &self,
        topic: &Topic,
        since: Option<Since>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HistoryRead, BrokerError>> {
        let (gate, wait) = oneshot::channel();
        self.reads.lock().unwrap().push(gate);
        let history = self.history.clone();
        let topic = topic.clone();
        Box::pin(async move {
            wait.await.ok();
            let mut history = history.lock().unwrap();
            Ok(history.as_mut().unwrap().read(
                &topic,
                since.as_ref(),
                limit,
                Timestamp::from_millis(0),
            ))
        })
    }
}

struct Fixture {
    node: Arc<Node>,
    broker: Arc<HistoryBroker>,
    outbox: Arc<Outbox>,
}

const CONN: ConnId = ConnId::new(1);

impl Fixture {
    fn new(size: usize) -> Fixture {
        let mut config = HubConfig::default();
        config.history.default.size = size;
        let broker = Arc::new(HistoryBroker::default());
        *broker.history.lock().unwrap() = Some(History::new(config.history.clone(), "e"));
        let scripted = broker.clone();
        let limits = HeldLimits {
            messages: 100,
            bytes: 1 << 20,
        };
        let node = Node::with_broker(
            config,
            limits,
            Arc::new(Counters::default()),
            move |inbound| {
                *scripted.inbound.lock().unwrap() = Some(inbound);
                Ok(scripted as SharedBroker)
            },
        )
        .unwrap();
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        node.attach(CONN, outbox.clone());
        node.handle(Input::Authenticated {
            conn: CONN,
            outcome: AuthOutcome::Anonymous,
        });
        outbox.take();
        Fixture {
            node,
            broker,
            outbox,
        }
    }

    /// Publishes `n` pushes (stored with positions, not delivered yet).
    fn publish(&self, n: usize) {
        for _ in 0..n {
            let count = self.broker.stored.lock().unwrap().len() + 1;
            let push = PushMessage::parse(
                format!(r#"{{"app":"match","text":"m{count}"}}"#).as_bytes(),
                128,
            )
            .unwrap();
            let publishing = self.node.publish(Publication::from(push));
            futures_util::FutureExt::now_or_never(publishing)
                .unwrap()
                .unwrap();
        }
    }

    fn send(&self, message: &str) {
        self.node.handle(Input::Message {
            conn: CONN,
            payload: message.as_bytes(),
        });
    }

    fn confirm(&self) {
        self.node.event(BrokerEvent::Subscribed {
            topic: Topic::App(AppName::parse("match", 128).unwrap()),
            seq: 1,
        });
    }

    /// What reached the connection since the last call: pushes as `text@offset`, replies as
    /// their `text`.
    fn frames(&self) -> Vec<String> {
        self.outbox
            .take()
            .frames
            .into_iter()
            .map(|m| {
                let value: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                let text = value["text"].as_str().unwrap();
                if value["app"] == "gateway" {
                    text.to_owned()
                } else {
                    format!("{text}@{}", value["offset"])
                }
            })
            .collect()
    }

    /// Waits (bounded) for the node to have started a history read.
    async fn read_started(&self) {
        for _ in 0..1000 {
            if self.broker.reads_waiting() > 0 {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("no history read started");
    }

    /// Answers the waiting read and waits (bounded) until its outcome reached the connection.
    async fn answer_read(&self) -> Vec<String> {
        self.broker.answer_read();
        for _ in 0..1000 {
            let frames = self.frames();
            if !frames.is_empty() {
                return frames;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the read's outcome never reached the connection");
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

const SINCE_1: &str = r#"{"app":"match","since":{"offset":1,"epoch":"e1"}}"#;

#[tokio::test]
async fn a_live_push_that_the_read_also_saw_is_sent_once() {
    let f = Fixture::new(100);
    f.publish(3);
    f.send(SINCE_1);
    assert!(f.frames().is_empty(), "nothing before the broker confirmed");
    f.confirm();
    f.read_started().await;
    // Published and delivered live while the read is on its way: it is both in the read
    // (which answers after it was stored) and in the live stream.
    f.publish(1);
    f.broker.deliver(4);
    assert!(
        f.frames().is_empty(),
        "live pushes wait behind the recovery"
    );
    // Stored before the read answers, but still on its way from the broker.
    f.publish(1);
    assert_eq!(
        f.answer_read().await,
        strings(&[
            r#"{"code":200,"message":"subscribe match success","recovered":true,"offset":5,"epoch":"e1"}"#,
            "m2@2",
            "m3@3",
            "m4@4",
            "m5@5",
        ])
    );
    // It arrives: the replay carried it already.
    f.broker.deliver(5);
    assert!(f.frames().is_empty());
    f.publish(1);
    f.broker.deliver(6);
    assert_eq!(f.frames(), strings(&["m6@6"]));
}

#[tokio::test]
async fn a_push_published_after_the_read_comes_from_the_live_stream() {
    let f = Fixture::new(100);
    f.publish(2);
    f.send(SINCE_1);
    f.confirm();
    f.read_started().await;
    let replay = f.answer_read().await;
    assert_eq!(replay.len(), 2, "{replay:?}");
    assert_eq!(replay[1], "m2@2");
    f.publish(1);
    f.broker.deliver(3);
    assert_eq!(f.frames(), strings(&["m3@3"]));
}

#[tokio::test]
async fn a_hole_in_the_live_stream_is_filled_from_the_history_in_order() {
    let f = Fixture::new(100);
    f.send(r#"{"app":"match","recover":true}"#);
    f.confirm();
    f.read_started().await;
    assert_eq!(
        f.answer_read().await,
        strings(&[r#"{"code":200,"message":"subscribe match success"}"#])
    );
    f.publish(4);
    f.broker.deliver(1);
    // 2 and 3 never arrive (lost on the way); 4 does: the node reads the history.
    f.broker.deliver(4);
    f.read_started().await;
    assert_eq!(f.frames(), strings(&["m1@1"]));
    assert_eq!(f.answer_read().await, strings(&["m2@2", "m3@3", "m4@4"]));
    // Late copies are duplicates.
    f.broker.deliver(3);
    assert!(f.frames().is_empty());
}

#[tokio::test]
async fn a_hole_the_history_cannot_fill_is_announced() {
    let f = Fixture::new(2);
    f.send(r#"{"app":"match","recover":true}"#);
    f.confirm();
    f.read_started().await;
    f.answer_read().await;
    f.publish(5);
    f.broker.deliver(1);
    assert_eq!(f.frames(), strings(&["m1@1"]));
    f.broker.deliver(5);
    f.read_started().await;
    // Only 4 and 5 are kept: 2 and 3 are lost, and the subscriber is told before 4.
    assert_eq!(
        f.answer_read().await,
        strings(&[
            r#"{"code":409,"message":"pushes to match lost","recovered":false,"offset":3,"epoch":"e1"}"#,
            "m4@4",
            "m5@5",
        ])
    );
}

#[tokio::test]
async fn a_broker_gap_reads_back_what_was_missed() {
    let f = Fixture::new(100);
    f.send(r#"{"app":"match","recover":true}"#);
    f.confirm();
    f.read_started().await;
    f.answer_read().await;
    f.publish(3);
    f.broker.deliver(1);
    assert_eq!(f.frames(), strings(&["m1@1"]));
    // 2 and 3 were published while the broker connection was down; nothing follows them.
    f.node.event(BrokerEvent::Gap {
        topics: vec![Topic::App(AppName::parse("match", 128).unwrap())],
        cause: gateway_broker::GapCause::Reconnected,
    });
    f.read_started().await;
    assert_eq!(f.answer_read().await, strings(&["m2@2", "m3@3"]));
}

#[tokio::test]
async fn a_replay_longer_than_half_the_queue_bounds_is_not_recovered_but_told() {
    // The fixture's queues hold 100 frames: a replay may carry 50.
    let missed = |since: u64| {
        let f = Fixture::new(100);
        f.publish(60);
        f.send(&format!(
            r#"{{"app":"match","since":{{"offset":{since},"epoch":"e1"}}}}"#
        ));
        f.confirm();
        f
    };
    let f = missed(10);
    f.read_started().await;
    let replay = f.answer_read().await;
    assert_eq!(replay.len(), 51, "the reply and 50 pushes");
    assert_eq!(
        replay[0],
        r#"{"code":200,"message":"subscribe match success","recovered":true,"offset":60,"epoch":"e1"}"#
    );
    assert_eq!(
        (replay[1].as_str(), replay[50].as_str()),
        ("m11@11", "m60@60")
    );

    // One more missed: the history has it, but the replay would be too long for the queue.
    let f = missed(9);
    f.read_started().await;
    assert_eq!(
        f.answer_read().await,
        strings(&[
            r#"{"code":200,"message":"subscribe match success","recovered":false,"offset":60,"epoch":"e1"}"#
        ])
    );
    // It continues live.
    f.publish(1);
    f.broker.deliver(61);
    assert_eq!(f.frames(), strings(&["m61@61"]));
}

#[tokio::test]
async fn each_hole_the_history_cannot_fill_is_announced_in_its_place() {
    let f = Fixture::new(3);
    f.send(r#"{"app":"match","recover":true}"#);
    f.confirm();
    f.read_started().await;
    f.answer_read().await;
    f.publish(8);
    f.broker.deliver(1);
    assert_eq!(f.frames(), strings(&["m1@1"]));
    // 4 and 8 arrive; the history keeps 6 to 8: 2-3 and 5 are gone.
    f.broker.deliver(4);
    f.read_started().await;
    f.broker.deliver(8);
    assert_eq!(
        f.answer_read().await,
        strings(&[
            r#"{"code":409,"message":"pushes to match lost","recovered":false,"offset":3,"epoch":"e1"}"#,
            "m4@4",
            r#"{"code":409,"message":"pushes to match lost","recovered":false,"offset":5,"epoch":"e1"}"#,
            "m6@6",
            "m7@7",
            "m8@8",
        ])
    );
}
