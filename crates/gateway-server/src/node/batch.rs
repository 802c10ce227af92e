//! The publications of one `POST /push` request with an array or `member_ids`, published in
//! order with the broker's round trips shared.
//!
//! Order. Issuing many [`gateway_broker::Broker::publish`]es at once would not keep their
//! order: Redis and NATS hand each to a connection's bounded queue when the publish is first
//! polled, and when that queue is full, two publishes let in together on a multi-threaded
//! runtime are sent in either order (about 1 message in 10,000 of batches of 100 through
//! Redis, in the bench). So the publications go to [`gateway_broker::Broker::publish_all`] in
//! chunks, one chunk after the other: the local broker delivers each as it is called, Redis
//! sends a chunk as one pipeline per shard, NATS queues it message by message and confirms it
//! with one round trip.
//!
//! Memory. Envelopes are encoded as they are put in a chunk, and a chunk holds at most
//! `max_chunk_bytes` of them (one is always allowed), so a `member_ids` push of a large text
//! to many members never holds every copy at once.

use gateway_broker::{BrokerError, Published};
use gateway_core::{Publication, Topic};
use tracing::warn;

use super::Node;

/// Why a request's publications were not all taken, and how far they went.
#[derive(Debug)]
pub(crate) struct BatchFailure {
    /// Publications taken by the broker before the first one it did not take: those were
    /// delivered.
    pub(crate) accepted: usize,
    /// Why the first one was not taken.
    pub(crate) error: BrokerError,
    /// Whether anything from publication `accepted` on may have reached subscribers (it was
    /// sent and its outcome is unknown, or a later one was taken). Otherwise none of them did.
    pub(crate) outcome_unknown: bool,
}

/// What the broker answered so far.
#[derive(Default)]
struct Outcome {
    /// The lowest-numbered publication the broker did not take.
    first_failure: Option<(usize, BrokerError)>,
    /// The highest-numbered publication it took.
    last_taken: Option<usize>,
    /// A failed publication was sent and may have been delivered.
    maybe_delivered: bool,
}

impl Node {
    /// Publishes `publications` in order through the broker, as [`Node::publish`] does one:
    /// each one taken counts as a push accepted. Returns how many there were once all were
    /// taken. After a chunk with a failure nothing more is sent, so that the failure says
    /// exactly what may have been delivered.
    pub(crate) async fn publish_in_order(
        &self,
        publications: impl Iterator<Item = Publication>,
        max_chunk_bytes: usize,
    ) -> Result<usize, BatchFailure> {
        let mut publications = publications.enumerate().peekable();
        let mut published = 0usize;
        let mut outcome = Outcome::default();
        while outcome.first_failure.is_none() && publications.peek().is_some() {
            // The chunk's publications with their numbers; those without a topic (a private
            // push without a member) reach nobody and are accepted, as on their own.
            let mut chunk: Vec<(Topic, Publication)> = Vec::new();
            let mut numbers: Vec<usize> = Vec::new();
            let mut bytes = 0usize;
            while chunk.is_empty() || bytes < max_chunk_bytes {
                let Some((number, publication)) = publications.next() else {
                    break;
                };
                published = number + 1;
                if let Some(topic) = self.hub_config.topic_of(&publication) {
                    bytes += publication.frame.len();
                    chunk.push((topic, publication));
                    numbers.push(number);
                }
            }
            if chunk.is_empty() {
                continue;
            }
            let outcomes = self.broker().publish_all(chunk).await;
            let answered = outcomes.len();
            for (&number, result) in numbers.iter().zip(outcomes) {
                self.record(&mut outcome, number, result);
            }
            if answered < numbers.len() && outcome.first_failure.is_none() {
                // A broker that returns fewer outcomes stopped at a failure; be safe if not.
                let error = BrokerError::Failed("the broker did not answer for it".into());
                outcome.first_failure = Some((numbers[answered], error));
            }
        }
        match outcome.first_failure {
            None => Ok(published),
            Some((accepted, error)) => {
                let outcome_unknown =
                    outcome.maybe_delivered || outcome.last_taken.is_some_and(|i| i > accepted);
                if self.log_gate.allow() {
                    warn!(
                        accepted,
                        outcome_unknown,
                        %error,
                        "push batch refused part-way: the broker did not take all of it"
                    );
                }
                Err(BatchFailure {
                    accepted,
                    error,
                    outcome_unknown,
                })
            }
        }
    }

    fn record(&self, outcome: &mut Outcome, number: usize, result: Result<Published, BrokerError>) {
        match result {
            Ok(_) => {
                self.counters.push_accepted();
                outcome.last_taken = outcome.last_taken.max(Some(number));
            }
            Err(error) => {
                self.counters.broker_publish_failed();
                outcome.maybe_delivered |= error.may_have_been_delivered();
                if outcome
                    .first_failure
                    .as_ref()
                    .is_none_or(|(first, _)| number < *first)
                {
                    outcome.first_failure = Some((number, error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};
    use std::time::Duration;

    use gateway_broker::{
        BoxFuture, Broker, BrokerState, Inbound, NodeReport, Publishing, SharedBroker, Subscription,
    };
    use gateway_core::{HubConfig, PushMessage};
    use tokio::sync::mpsc;

    use super::*;
    use crate::counters::Counters;
    use crate::node::HeldLimits;

    /// Sends each publication's number into a bounded tokio channel when its future is
    /// polled, as Redis and NATS hand theirs to their connection's queue; `publish_all` is
    /// the trait's default. Numbers in `refused` fail at once (nothing sent), numbers in
    /// `failed` fail after sending.
    #[derive(Debug)]
    struct ChannelBroker {
        sent: mpsc::Sender<i64>,
        refused: HashMap<i64, BrokerError>,
        failed: HashMap<i64, BrokerError>,
    }

    /// Answers `publish_all` from a script, by publication number, after a few yields (a
    /// round trip), and records each chunk's numbers and when its answer came.
    #[derive(Debug, Default)]
    struct ChunkBroker {
        answers: HashMap<i64, BrokerError>,
        chunks: Mutex<Vec<Vec<i64>>>,
        events: Arc<Mutex<Vec<String>>>,
    }

    macro_rules! quiet_broker_methods {
        () => {
            fn subscribe(&self, _topic: &Topic, _seq: u64) -> Subscription {
                Subscription::Live
            }

            fn unsubscribe(&self, _topic: &Topic) {}

            fn state(&self) -> BrokerState {
                BrokerState::Connected
            }

            fn report(
                &self,
                _report: &NodeReport,
                _ttl: Duration,
            ) -> BoxFuture<'static, Result<(), BrokerError>> {
                Box::pin(async { Ok(()) })
            }

            fn cluster(&self) -> BoxFuture<'static, Result<Vec<NodeReport>, BrokerError>> {
                Box::pin(async { Ok(Vec::new()) })
            }

            fn close(&self) {}
        };
    }

    impl Broker for ChannelBroker {
        fn kind(&self) -> &'static str {
            "channel"
        }

        fn publish(&self, _topic: &Topic, publication: Publication) -> Publishing {
            let number = publication.member_id;
            if let Some(error) = self.refused.get(&number) {
                return Publishing::Done(Err(error.clone()));
            }
            let failure = self.failed.get(&number).cloned();
            let sent = self.sent.clone();
            Publishing::Pending(Box::pin(async move {
                let result = sent.send(number).await;
                // The server's answer comes later than the send.
                tokio::task::yield_now().await;
                result.map_err(|_| BrokerError::Unavailable("channel closed".into()))?;
                failure.map_or(Ok(Published::new()), Err)
            }))
        }

        quiet_broker_methods!();
    }

    impl Broker for ChunkBroker {
        fn kind(&self) -> &'static str {
            "chunks"
        }

        fn publish(&self, _topic: &Topic, _publication: Publication) -> Publishing {
            unreachable!("batches go through publish_all")
        }

        fn publish_all(
            &self,
            publications: Vec<(Topic, Publication)>,
        ) -> BoxFuture<'_, Vec<Result<Published, BrokerError>>> {
            let numbers: Vec<i64> = publications.iter().map(|(_, p)| p.member_id).collect();
            let outcomes = numbers
                .iter()
                .map(|n| {
                    self.answers
                        .get(n)
                        .cloned()
                        .map_or(Ok(Published::new()), Err)
                })
                .collect();
            let events = self.events.clone();
            events.lock().unwrap().push(format!("sent {numbers:?}"));
            self.chunks.lock().unwrap().push(numbers);
            Box::pin(async move {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                events.lock().unwrap().push("answered".to_owned());
                outcomes
            })
        }

        quiet_broker_methods!();
    }

    fn node_with(broker: SharedBroker) -> (Arc<Node>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let limits = HeldLimits {
            messages: 4,
            bytes: 1 << 20,
        };
        let node = Node::with_broker(
            HubConfig::default(),
            limits,
            counters.clone(),
            |_: Weak<dyn Inbound>| Ok(broker),
        )
        .unwrap();
        (node, counters)
    }

    /// A node whose broker sends into a channel of `capacity`, and that channel's receiver.
    fn channel_node(
        capacity: usize,
        refused: impl IntoIterator<Item = (i64, BrokerError)>,
        failed: impl IntoIterator<Item = (i64, BrokerError)>,
    ) -> (Arc<Node>, Arc<Counters>, mpsc::Receiver<i64>) {
        let (sent, received) = mpsc::channel(capacity);
        let broker = Arc::new(ChannelBroker {
            sent,
            refused: refused.into_iter().collect(),
            failed: failed.into_iter().collect(),
        });
        let (node, counters) = node_with(broker);
        (node, counters, received)
    }

    /// Publications to the public app "a", numbered by their `member_id`.
    fn numbered(numbers: std::ops::Range<i64>) -> impl Iterator<Item = Publication> {
        numbers.map(|number| {
            let json = format!(r#"{{"app":"a","member_id":{number},"text":"x"}}"#);
            Publication::from(PushMessage::parse(json.as_bytes(), 128).unwrap())
        })
    }

    fn drain(received: &mut mpsc::Receiver<i64>) -> Vec<i64> {
        std::iter::from_fn(|| received.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn chunks_are_bounded_by_bytes_and_sent_in_order() {
        let broker = Arc::new(ChunkBroker::default());
        let (node, counters) = node_with(broker.clone());
        // Each envelope is ~40 bytes: a chunk closes once it holds 100 bytes or more.
        assert_eq!(node.publish_in_order(numbered(0..7), 100).await.unwrap(), 7);
        assert_eq!(
            *broker.chunks.lock().unwrap(),
            [vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );
        assert_eq!(counters.pushes_accepted(), 7);
        // A chunk is sent only once the one before it was answered: a later chunk cannot
        // overtake an earlier one.
        assert_eq!(
            *broker.events.lock().unwrap(),
            [
                "sent [0, 1, 2]",
                "answered",
                "sent [3, 4, 5]",
                "answered",
                "sent [6]",
                "answered"
            ]
        );
        // One byte: one publication per chunk (a chunk always takes one).
        broker.chunks.lock().unwrap().clear();
        node.publish_in_order(numbered(0..3), 1).await.unwrap();
        assert_eq!(*broker.chunks.lock().unwrap(), [vec![0], vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn a_refusal_part_way_stops_and_says_how_many_were_taken() {
        let unavailable = BrokerError::Unavailable("down".into());
        let (node, counters, mut received) = channel_node(1000, [(3, unavailable)], []);
        let failure = node
            .publish_in_order(numbered(0..10), usize::MAX)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (3, false));
        assert_eq!(drain(&mut received), [0, 1, 2]);
        assert_eq!(counters.pushes_accepted(), 3);
    }

    #[tokio::test]
    async fn a_failure_after_sending_leaves_the_outcome_unknown() {
        let timed_out = BrokerError::TimedOut(Duration::from_secs(2));
        let (node, _, _received) = channel_node(1000, [], [(1, timed_out)]);
        let failure = node
            .publish_in_order(numbered(0..5), usize::MAX)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (1, true));
    }

    #[tokio::test]
    async fn nothing_is_sent_after_a_chunk_with_a_failure() {
        let broker = Arc::new(ChunkBroker {
            answers: HashMap::from([(4, BrokerError::Unavailable("down".into()))]),
            ..ChunkBroker::default()
        });
        let (node, _) = node_with(broker.clone());
        let failure = node
            .publish_in_order(numbered(0..9), 100)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (4, true));
        // Publication 5, in the failing chunk, was taken: the outcome from 4 on is unknown.
        assert_eq!(
            *broker.chunks.lock().unwrap(),
            [vec![0, 1, 2], vec![3, 4, 5]]
        );
    }

    #[tokio::test]
    async fn a_failure_at_the_end_of_the_batch_is_not_unknown() {
        let broker = Arc::new(ChunkBroker {
            answers: HashMap::from([(2, BrokerError::Unavailable("down".into()))]),
            ..ChunkBroker::default()
        });
        let (node, _) = node_with(broker);
        let failure = node
            .publish_in_order(numbered(0..3), 100)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (2, false));
    }
}
