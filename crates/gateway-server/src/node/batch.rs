//! The publications of one `POST /push` request with an array or `member_ids`, published in
//! order with the broker's round trips overlapped.
//!
//! Order. Every broker keeps the order in which its publishes are first polled: the local
//! broker delivers inside [`gateway_broker::Broker::publish`] itself; Redis hands each `PUBLISH` to its
//! multiplexed connection's bounded tokio channel, and NATS each message to its client's
//! bounded tokio channel, on the future's first poll; a tokio channel admits waiting senders
//! first come, first served, and sends in the order the senders are polled once admitted. So
//! the publications are issued in order, and every pending one is polled in order on every
//! wake-up: each app's subscribers see them in array order, and with Redis or NATS the
//! `PUBLISH`es of one request are pipelined instead of waiting a round trip each.
//!
//! Memory. Envelopes are encoded as they are issued, and issuing pauses while the ones the
//! broker has not answered add up to `max_in_flight_bytes` (one is always allowed), so a
//! `member_ids` push of a large text to many members never holds every copy at once.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use gateway_broker::{BrokerError, Publishing};
use gateway_core::Publication;
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

/// A publication the broker has not answered yet.
struct InFlight {
    index: usize,
    bytes: usize,
    publishing: Publishing,
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
    /// taken. After a failure nothing more is issued, and the ones already issued are awaited,
    /// so that the failure says exactly what may have been delivered.
    pub(crate) async fn publish_in_order(
        &self,
        publications: impl Iterator<Item = Publication>,
        max_in_flight_bytes: usize,
    ) -> Result<usize, BatchFailure> {
        let mut publications = publications.enumerate();
        let mut in_flight: Vec<InFlight> = Vec::new();
        let mut in_flight_bytes = 0usize;
        let mut issued = 0usize;
        let mut outcome = Outcome::default();
        loop {
            while outcome.first_failure.is_none()
                && (in_flight.is_empty() || in_flight_bytes < max_in_flight_bytes)
            {
                let Some((index, publication)) = publications.next() else {
                    break;
                };
                issued = index + 1;
                // A private push without a member reaches nobody: accepted, as on its own.
                let Some(topic) = self.hub_config.topic_of(&publication) else {
                    continue;
                };
                let bytes = publication.frame.len();
                match self.broker().publish(&topic, publication) {
                    Publishing::Done(result) => self.record(&mut outcome, index, result),
                    publishing => {
                        in_flight_bytes += bytes;
                        in_flight.push(InFlight {
                            index,
                            bytes,
                            publishing,
                        });
                    }
                }
            }
            if in_flight.is_empty() {
                break;
            }
            // Until at least one answer: every pending publication polled, oldest first.
            poll_fn(|cx| {
                let before = in_flight.len();
                in_flight.retain_mut(|pending| match Pin::new(&mut pending.publishing).poll(cx) {
                    Poll::Ready(result) => {
                        in_flight_bytes -= pending.bytes;
                        self.record(&mut outcome, pending.index, result);
                        false
                    }
                    Poll::Pending => true,
                });
                if in_flight.len() < before {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        match outcome.first_failure {
            None => Ok(issued),
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

    fn record<T>(&self, outcome: &mut Outcome, index: usize, result: Result<T, BrokerError>) {
        match result {
            Ok(_) => {
                self.counters.push_accepted();
                outcome.last_taken = outcome.last_taken.max(Some(index));
            }
            Err(error) => {
                self.counters.broker_publish_failed();
                outcome.maybe_delivered |= error.may_have_been_delivered();
                if outcome
                    .first_failure
                    .as_ref()
                    .is_none_or(|(first, _)| index < *first)
                {
                    outcome.first_failure = Some((index, error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, Weak};
    use std::time::Duration;

    use gateway_broker::{
        BoxFuture, Broker, BrokerState, Inbound, NodeReport, Published, SharedBroker, Subscription,
    };
    use gateway_core::{HubConfig, PushMessage, Topic};
    use tokio::sync::mpsc;

    use super::*;
    use crate::counters::Counters;
    use crate::node::HeldLimits;

    /// How the fake broker answers one publication (by its `member_id`); taken when absent.
    #[derive(Debug)]
    enum Answer {
        /// At once, without sending anything (a broker that is not connected).
        RefusedAtOnce(BrokerError),
        /// After sending, like a server's error answer.
        FailedAfterSending(BrokerError),
    }

    /// Sends each publication's number into a bounded tokio channel on its future's first
    /// poll, as Redis and NATS hand theirs to their connection's channel.
    #[derive(Debug)]
    struct ChannelBroker {
        sent: mpsc::Sender<i64>,
        answers: Mutex<HashMap<i64, Answer>>,
        waiting: Arc<AtomicUsize>,
        most_waiting: Arc<AtomicUsize>,
    }

    impl Broker for ChannelBroker {
        fn kind(&self) -> &'static str {
            "channel"
        }

        fn publish(&self, _topic: &Topic, publication: Publication) -> Publishing {
            let number = publication.member_id;
            let answer = self.answers.lock().unwrap().remove(&number);
            let failure = match answer {
                Some(Answer::RefusedAtOnce(error)) => return Publishing::Done(Err(error)),
                Some(Answer::FailedAfterSending(error)) => Some(error),
                None => None,
            };
            let (sent, waiting, most) = (
                self.sent.clone(),
                self.waiting.clone(),
                self.most_waiting.clone(),
            );
            Publishing::Pending(Box::pin(async move {
                let now = waiting.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let result = sent.send(number).await;
                // The server's answer comes later than the send.
                tokio::task::yield_now().await;
                waiting.fetch_sub(1, Ordering::SeqCst);
                result.map_err(|_| BrokerError::Unavailable("channel closed".into()))?;
                failure.map_or(Ok(Published::new()), Err)
            }))
        }

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
    }

    struct Fixture {
        node: Arc<Node>,
        counters: Arc<Counters>,
        received: mpsc::Receiver<i64>,
        most_waiting: Arc<AtomicUsize>,
    }

    fn fixture(capacity: usize, answers: impl IntoIterator<Item = (i64, Answer)>) -> Fixture {
        let (sent, received) = mpsc::channel(capacity);
        let most_waiting = Arc::new(AtomicUsize::new(0));
        let broker = Arc::new(ChannelBroker {
            sent,
            answers: Mutex::new(answers.into_iter().collect()),
            waiting: Arc::new(AtomicUsize::new(0)),
            most_waiting: most_waiting.clone(),
        });
        let counters = Arc::new(Counters::default());
        let limits = HeldLimits {
            messages: 4,
            bytes: 1 << 20,
        };
        let node = Node::with_broker(
            HubConfig::default(),
            limits,
            counters.clone(),
            |_: Weak<dyn Inbound>| Ok(broker as SharedBroker),
        )
        .unwrap();
        Fixture {
            node,
            counters,
            received,
            most_waiting,
        }
    }

    /// Publications to the public app "a", numbered by their `member_id`.
    fn numbered(n: i64) -> impl Iterator<Item = Publication> {
        (0..n).map(|number| {
            let json = format!(r#"{{"app":"a","member_id":{number},"text":"x"}}"#);
            Publication::from(PushMessage::parse(json.as_bytes(), 128).unwrap())
        })
    }

    fn drain(received: &mut mpsc::Receiver<i64>) -> Vec<i64> {
        std::iter::from_fn(|| received.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn order_holds_through_a_full_bounded_channel() {
        // One slot: nearly every publication waits its turn to be admitted.
        let Fixture {
            node,
            counters,
            mut received,
            most_waiting,
        } = fixture(1, []);
        let publishing =
            tokio::spawn(async move { node.publish_in_order(numbered(200), usize::MAX).await });
        let mut order = Vec::new();
        while let Some(number) = received.recv().await {
            order.push(number);
            // A slow reader, so that senders queue up behind the full channel.
            tokio::task::yield_now().await;
            if order.len() == 200 {
                break;
            }
        }
        assert_eq!(publishing.await.unwrap().unwrap(), 200);
        assert_eq!(order, (0..200).collect::<Vec<_>>());
        assert_eq!(counters.pushes_accepted(), 200);
        assert!(most_waiting.load(Ordering::SeqCst) > 100, "not overlapped");
    }

    #[tokio::test]
    async fn the_in_flight_bytes_bound_keeps_one_waiting_when_tiny() {
        let mut f = fixture(1000, []);
        assert_eq!(f.node.publish_in_order(numbered(20), 1).await.unwrap(), 20);
        assert_eq!(f.most_waiting.load(Ordering::SeqCst), 1);
        assert_eq!(drain(&mut f.received), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_refusal_part_way_stops_issuing_and_says_how_many_were_taken() {
        let unavailable = BrokerError::Unavailable("down".into());
        let mut f = fixture(1000, [(3, Answer::RefusedAtOnce(unavailable))]);
        let failure = f
            .node
            .publish_in_order(numbered(10), usize::MAX)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (3, false));
        assert_eq!(drain(&mut f.received), [0, 1, 2]);
        assert_eq!(f.counters.pushes_accepted(), 3);
    }

    #[tokio::test]
    async fn a_failure_after_sending_leaves_the_outcome_unknown() {
        let timed_out = BrokerError::TimedOut(Duration::from_secs(2));
        let f = fixture(1000, [(1, Answer::FailedAfterSending(timed_out))]);
        let failure = f
            .node
            .publish_in_order(numbered(2), usize::MAX)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (1, true));
    }

    #[tokio::test]
    async fn a_later_publication_taken_after_a_failure_leaves_the_outcome_unknown() {
        // Sent, then refused: by itself nothing delivered; but 2..5 went out meanwhile.
        let refused = BrokerError::Unavailable("refused".into());
        let f = fixture(1000, [(1, Answer::FailedAfterSending(refused))]);
        let failure = f
            .node
            .publish_in_order(numbered(5), usize::MAX)
            .await
            .unwrap_err();
        assert_eq!((failure.accepted, failure.outcome_unknown), (1, true));
        assert_eq!(f.counters.pushes_accepted(), 4);
    }
}
