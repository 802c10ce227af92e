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
