//! History on JetStream: one stream per cluster prefix keeps the recent publications of every
//! app with history, and gives each its position (`docs/protocol.md`, "NATS JetStream").
//!
//! - **The stream** `<prefix>-history` (the prefix escaped as for the cluster bucket) captures
//!   `<prefix>.h.>`, a subject space no node core-subscribes: the history subject of a topic is
//!   its live subject ([`wire::channel`]) with `.h` after the prefix (`p.h.a.match`,
//!   `p.h.m.im.7`). Its limits are the policy's largest: `max_msgs_per_subject` = the largest
//!   `size`, `max_age` = the largest `ttl`, `max_bytes` = `history.max_bytes`, discard old,
//!   file storage. It is created or updated to this node's policy on every connection.
//! - **Offsets** grow by one per subject and are the same on every node, because each is
//!   written with compare-and-set: the message carrying offset `n + 1` is published with the
//!   header `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of the message
//!   that carried `n`, so of two nodes that both saw `n` only one stores `n + 1`; the other
//!   is refused, reads the subject's new last message and tries again. A subject with no
//!   message starts a new run: offset 1 under a fresh random epoch, expected sequence 0.
//! - **The last position** of each subject this node wrote or read is cached ([`Tails`],
//!   bounded), so a node that publishes to a topic in a row asks the server nothing but the
//!   publication itself. A stale entry costs one refusal and one read, never a wrong offset.
//! - **Reads**: see [`read`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use gateway_core::{Epoch, HistoryPolicy, Position, Publication, Topic};
use tokio::time::{Instant, timeout_at};

use crate::{BrokerError, wire};

mod read;

/// Attempts at storing one publication when other nodes keep writing the same subject first;
/// past them the publication is refused unsent ([`BrokerError::Unavailable`]).
pub const MAX_ATTEMPTS: usize = 16;

/// Subjects whose last position is cached; past it the entries not in use are dropped (a
/// dropped entry costs one read of the subject's last message at its next publication).
pub const TAIL_CACHE_CAPACITY: usize = 16 * 1024;

/// The history of one cluster prefix on JetStream.
pub(super) struct HistoryStore {
    js: Context,
    /// `<prefix>.` — history subjects are this, `h.`, then the live subject's rest.
    prefix: String,
    policy: HistoryPolicy,
    stream_name: String,
    /// `None` when no app keeps history: then there is no stream either.
    config: Option<stream::Config>,
    timeout: Duration,
    /// The client's disconnection count (from its event callback).
    disconnections: Arc<AtomicU64>,
    /// `disconnections + 1` as it was when the stream was last created or updated: the
    /// stream is known to be there with this node's limits while that is still the count
    /// (a NATS server restarted without its store lost it).
    ready: AtomicU64,
    ensuring: tokio::sync::Mutex<()>,
    tails: Tails,
}

impl HistoryStore {
    /// Must be called inside a tokio runtime (the JetStream context spawns its acker).
    pub(super) fn new(
        client: Client,
        prefix: &str,
        policy: HistoryPolicy,
        timeout: Duration,
        disconnections: Arc<AtomicU64>,
    ) -> HistoryStore {
        let stream_name = stream_name(prefix);
        let config = stream_config(&stream_name, prefix, &policy);
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client);
        HistoryStore {
            js,
            prefix: format!("{prefix}."),
            policy,
            stream_name,
            config,
            timeout,
            disconnections,
            ready: AtomicU64::new(0),
            ensuring: tokio::sync::Mutex::new(()),
            tails: Tails::default(),
        }
    }

    /// Whether publications to `topic`'s app get positions and are kept.
    pub(super) fn enabled(&self, topic: &Topic) -> bool {
        self.policy.enabled(topic.app())
    }

    /// The history subject of `topic`, whose live subject is `live`.
    fn subject(&self, live: &str) -> String {
        let rest = live.strip_prefix(&self.prefix).unwrap_or(live);
        let mut subject = String::with_capacity(self.prefix.len() + 2 + rest.len());
        subject.push_str(&self.prefix);
        subject.push_str("h.");
        subject.push_str(rest);
        subject
    }

    /// Creates the stream, or updates it to this node's limits, unless that was done on the
    /// current connection already. Nothing to do when no app keeps history.
    pub(super) async fn ensure(&self, deadline: Instant) -> Result<(), BrokerError> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let current = || self.disconnections.load(Ordering::Acquire) + 1;
        if self.ready.load(Ordering::Acquire) == current() {
            return Ok(());
        }
        let _one_at_a_time = timeout_at(deadline, self.ensuring.lock())
            .await
            .map_err(|_| self.not_sent("the history stream was not ready in time"))?;
        let connection = current();
        if self.ready.load(Ordering::Acquire) == connection {
            return Ok(());
        }
        match timeout_at(deadline, self.js.create_or_update_stream(config.clone())).await {
            Ok(Ok(_)) => {
                self.ready.store(connection, Ordering::Release);
                Ok(())
            }
            Ok(Err(e)) => Err(BrokerError::Unavailable(format!(
                "history stream {}: {e} (history on NATS needs JetStream: nats-server -js, \
                 or [history] size = 0)",
                self.stream_name
            ))),
            Err(_) => Err(self.not_sent("no answer about the history stream")),
        }
    }

    fn not_sent(&self, why: &str) -> BrokerError {
        BrokerError::Unavailable(format!("not sent: {why} within {:?}", self.timeout))
    }

    /// Stores `publication` (to the topic whose live subject is `live`) with the next position
    /// of its stream, then queues the same bytes on `live` with `announce`, before any later
    /// publication of this node to the topic is stored. Returns the position.
    ///
    /// Errors: [`BrokerError::Unavailable`] when nothing was stored (refused, the stream is
    /// missing, too much contention); [`BrokerError::TimedOut`] / [`BrokerError::Failed`]
    /// when it may have been stored, or was stored but could not be announced.
    pub(super) async fn append<F, Fut>(
        &self,
        live: String,
        mut publication: Publication,
        deadline: Instant,
        announce: F,
    ) -> Result<Position, BrokerError>
    where
        F: FnOnce(String, Bytes) -> Fut,
        Fut: Future<Output = Result<(), BrokerError>>,
    {
        self.ensure(deadline).await?;
        let subject = self.subject(&live);
        let slot = self.tails.slot(&subject);
        // One publication of a subject at a time in this node: its own publications never
        // conflict, and they are stored and announced in the order they were made.
        let mut tail = timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| self.not_sent("earlier pushes to this topic were not stored"))?;
        for _ in 0..MAX_ATTEMPTS {
            let last = match tail.take() {
                Some(last) => last,
                None => self.last(&subject, deadline).await?,
            };
            let position = last.next();
            publication.position = Some(position.clone());
            let payload = wire::encode(&publication);
            match self
                .store(&subject, payload.clone(), last.seq, deadline)
                .await
            {
                Ok(seq) => {
                    *tail = Some(Tail {
                        seq,
                        position: Some(position.clone()),
                    });
                    announce(live, payload).await.map_err(|e| {
                        BrokerError::Failed(format!(
                            "the push was kept in the history at offset {} but not \
                             announced live ({e}); nodes fetch it from the history at the \
                             topic's next push or reconnect",
                            position.offset
                        ))
                    })?;
                    return Ok(position);
                }
                // Another node wrote the subject since: read its last message again.
                Err(Refused::Conflict) => {}
                Err(Refused::NoStream) => {
                    self.ready.store(0, Ordering::Release);
                    self.ensure(deadline).await?;
                }
                Err(Refused::Error(e)) => return Err(e),
            }
        }
        Err(BrokerError::Unavailable(format!(
            "not sent: other nodes kept pushing to this topic first ({MAX_ATTEMPTS} attempts)"
        )))
    }

    /// Publishes `payload` to `subject` if the subject's last message is still `expected`
    /// (0: none); returns its stream sequence.
    async fn store(
        &self,
        subject: &str,
        payload: Bytes,
        expected: u64,
        deadline: Instant,
    ) -> Result<u64, Refused> {
        let publish = PublishMessage::build()
            .payload(payload)
            .expected_last_subject_sequence(expected);
        // Fails only before the message is queued: nothing was sent.
        let ack =
            match timeout_at(deadline, self.js.send_publish(subject.to_owned(), publish)).await {
                Ok(Ok(ack)) => ack,
                Ok(Err(e)) => {
                    return Err(Refused::Error(BrokerError::Unavailable(format!(
                        "not sent: {e}"
                    ))));
                }
                Err(_) => {
                    return Err(Refused::Error(
                        self.not_sent("the NATS client took nothing"),
                    ));
                }
            };
        match timeout_at(deadline, ack.into_future()).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => Err(match e.kind() {
                PublishErrorKind::WrongLastSequence => Refused::Conflict,
                // "No responders": no stream took the message.
                PublishErrorKind::StreamNotFound => Refused::NoStream,
                PublishErrorKind::TimedOut => Refused::Error(BrokerError::TimedOut(self.timeout)),
                PublishErrorKind::BrokenPipe => Refused::Error(BrokerError::Failed(format!(
                    "no answer from JetStream: {e}"
                ))),
                // An error answer: JetStream did not keep it, and nothing was announced.
                _ => Refused::Error(BrokerError::Unavailable(format!(
                    "not sent: JetStream refused the push: {e}"
                ))),
            }),
            Err(_) => Err(Refused::Error(BrokerError::TimedOut(self.timeout))),
        }
    }

    /// The last message of `subject` now (sequence 0 when there is none).
    async fn last(&self, subject: &str, deadline: Instant) -> Result<Tail, BrokerError> {
        let stream = self.stream().await?;
        match timeout_at(deadline, stream.direct_get_last_for_subject(subject)).await {
            Ok(Ok(message)) => Ok(Tail {
                seq: message.sequence,
                position: wire::decode(message.payload)
                    .ok()
                    .and_then(|publication| publication.position),
            }),
            Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(Tail {
                seq: 0,
                position: None,
            }),
            Ok(Err(e)) => Err(BrokerError::Unavailable(format!(
                "not sent: reading the topic's last position: {e}"
            ))),
            Err(_) => Err(self.not_sent("no answer about the topic's last position")),
        }
    }

    async fn stream(&self) -> Result<stream::Stream<()>, BrokerError> {
        self.js
            .get_stream_no_info(&self.stream_name)
            .await
            .map_err(|e| BrokerError::Config(format!("history stream name: {e}")))
    }
}

/// Why a publication was not stored.
enum Refused {
    /// Another node stored a publication of the subject first.
    Conflict,
    /// No stream captures the subject (deleted, or the server lost its store).
    NoStream,
    Error(BrokerError),
}

/// Where a subject stands: its last message's stream sequence (0: none) and position (`None`
/// when there is no message, or it is not one of ours).
#[derive(Debug, Clone)]
struct Tail {
    seq: u64,
    position: Option<Position>,
}

impl Tail {
    /// The position of the next publication: the next offset of the run, or a new run.
    fn next(&self) -> Position {
        match &self.position {
            Some(last) => Position::new(last.offset + 1, last.epoch.clone()),
            None => Position::new(1, Epoch::from_random(fastrand::u64(..))),
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Tail>>>;

/// Per subject, a lock held while one publication is stored and announced, and the subject's
/// last known [`Tail`] (`None`: unknown, read it).
#[derive(Default)]
struct Tails {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Tails {
    fn slot(&self, subject: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(subject) {
            return slot.clone();
        }
        if slots.len() >= TAIL_CACHE_CAPACITY {
            // Entries in use (held by a publication) stay, so their lock stays unique.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = Slot::default();
        slots.insert(subject.to_owned(), slot.clone());
        slot
    }
}

/// `<prefix>-history`, escaped as bucket names are.
pub(super) fn stream_name(prefix: &str) -> String {
    let mut name = super::cluster::escape(prefix);
    name.push_str("-history");
    name
}

/// The stream for `policy`: limits every app's history fits in. `None` when no app keeps any.
pub(super) fn stream_config(
    name: &str,
    prefix: &str,
    policy: &HistoryPolicy,
) -> Option<stream::Config> {
    let enabled: Vec<_> = std::iter::once(&policy.default)
        .chain(policy.overrides.iter().map(|(_, limits)| limits))
        .filter(|limits| limits.enabled())
        .collect();
    let size = enabled.iter().map(|limits| limits.size).max()?;
    let ttl = enabled.iter().map(|limits| limits.ttl).max()?;
    Some(stream::Config {
        name: name.to_owned(),
        description: Some("ws-gateway history: recent pushes of each stream".to_owned()),
        subjects: vec![format!("{prefix}.h.>")],
        max_messages_per_subject: i64::try_from(size).unwrap_or(i64::MAX),
        max_age: ttl,
        max_bytes: i64::try_from(policy.max_bytes).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        allow_direct: true,
        num_replicas: 1,
        ..stream::Config::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gateway_core::StreamLimits;
    use gateway_core::history::AppPattern;

    #[test]
    fn the_stream_fits_the_largest_limits_of_apps_with_history() {
        let policy = HistoryPolicy {
            overrides: vec![
                (
                    AppPattern::new("big-*"),
                    StreamLimits {
                        size: 1_000,
                        ttl: Duration::from_secs(60),
                    },
                ),
                // Off: its huge TTL does not count.
                (
                    AppPattern::new("off"),
                    StreamLimits {
                        size: 0,
                        ttl: Duration::from_secs(86_400),
                    },
                ),
            ],
            ..HistoryPolicy::default()
        };
        let config = stream_config("p-history", "p", &policy).unwrap();
        assert_eq!(config.subjects, ["p.h.>"]);
        assert_eq!(config.max_messages_per_subject, 1_000);
        assert_eq!(config.max_age, StreamLimits::DEFAULT_TTL);
        assert_eq!(config.max_bytes, 64 << 20);
        assert_eq!(config.storage, stream::StorageType::File);
        assert!(stream_config("p-history", "p", &HistoryPolicy::off()).is_none());
        assert_eq!(stream_name("prod.eu"), "prod_2Eeu-history");
    }

    #[test]
    fn a_tail_continues_its_run_or_starts_one() {
        let e1 = Epoch::parse("e1").unwrap();
        let tail = Tail {
            seq: 9,
            position: Some(Position::new(41, e1.clone())),
        };
        assert_eq!(tail.next(), Position::new(42, e1));
        let empty = Tail {
            seq: 0,
            position: None,
        };
        assert_eq!(empty.next().offset, 1);
        assert_ne!(
            empty.next().epoch,
            empty.next().epoch,
            "a fresh epoch each time"
        );
    }
}
