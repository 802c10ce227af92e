//! Reading one topic's history from JetStream.
//!
//! A read first gets the subject's last message (a direct get): it names the run (`top`). The
//! app's history is then the run's messages with an offset above `top - size` and not older
//! than the app's TTL (the stream keeps the largest size and TTL of all apps, so a read trims
//! to the app's own). When only `first` is needed (no publication asked for, or none newer
//! than `since`), the subject's first message usually answers it: one more direct get. Else
//! an ephemeral pull consumer filtered by the subject, starting at the app's TTL, fetches the
//! subject's kept messages up to `top` in one batch (at most the stream's
//! `max_msgs_per_subject`); those at or before `since` are skipped here. The consumer is
//! deleted afterwards (and would expire by itself). A read costs two to four round trips and
//! at most one subject's kept messages, whatever the size of the gap.

use std::time::{Duration, SystemTime};

use async_nats::datetime::{self, DateTime};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures_util::StreamExt;
use gateway_core::{HistoryRead, Position, Publication, Since, StreamLimits, Topic};
use tokio::time::{Instant, timeout_at};

use super::HistoryStore;
use crate::{BrokerError, wire};

/// The longest a fetch waits for messages the server counts but no longer has (expired
/// between the consumer's creation and the fetch); a fetch with messages answers at once.
const FETCH_WAIT: Duration = Duration::from_millis(200);

/// What makes a kept message part of an app's history in the current run.
struct Window {
    top: Position,
    /// The lowest offset within the app's size.
    lowest: u64,
    /// Messages stored before this are past the app's TTL.
    not_before: DateTime,
}

impl Window {
    fn holds(&self, position: &Position, stored: DateTime) -> bool {
        position.epoch == self.top.epoch
            && position.offset >= self.lowest
            && position.offset <= self.top.offset
            && stored >= self.not_before
    }
}

impl HistoryStore {
    /// See [`crate::Broker::history`]. Bounded by `deadline`.
    pub(in crate::nats) async fn read(
        &self,
        topic: &Topic,
        live: &str,
        since: Option<Since>,
        limit: usize,
        deadline: Instant,
    ) -> Result<HistoryRead, BrokerError> {
        let limits = self.policy.limits(topic.app());
        if !limits.enabled() {
            return Ok(HistoryRead::default());
        }
        self.ensure(deadline).await?;
        let subject = self.subject(live);
        let stream = self.stream().await?;
        let last = match timeout_at(deadline, stream.direct_get_last_for_subject(&subject)).await {
            Ok(Ok(message)) => message,
            // Nothing kept: no run (the next push starts one).
            Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => {
                return Ok(HistoryRead::default());
            }
            Ok(Err(e)) => {
                // The stream may be gone (deleted, or the server lost its store): the next
                // read or push creates it again.
                self.ready.store(0, std::sync::atomic::Ordering::Release);
                return Err(failed(&e));
            }
            Err(_) => return Err(BrokerError::TimedOut(self.timeout)),
        };
        let Some(top) = wire::decode(last.payload)
            .ok()
            .and_then(|publication| publication.position)
        else {
            // Not ours: the next push starts a new run after it.
            return Ok(HistoryRead::default());
        };
        let window = window(top, limits)?;
        let after = match &since {
            None => Some(0),
            Some(since) => HistoryRead::start_after(since, &window.top),
        };
        let wanted = after.filter(|after| limit > 0 && *after < window.top.offset);
        let mut read = HistoryRead {
            top: Some(window.top.clone()),
            first: None,
            publications: Vec::new(),
        };
        if wanted.is_none() {
            // The subject's first message is the history's first when it is in the window
            // (later ones then are too: they are newer and of the same run).
            let first = timeout_at(deadline, stream.direct_get_first_for_subject(&subject)).await;
            if let Ok(Ok(message)) = first
                && let Some(position) = wire::decode(message.payload)
                    .ok()
                    .and_then(|publication| publication.position)
                && position.epoch == window.top.epoch
                && message.time >= window.not_before
            {
                read.first = Some(position.offset.max(window.lowest));
                return Ok(read);
            }
        }
        let scan = Scan {
            stream: &stream,
            subject,
            last_seq: last.sequence,
            window: &window,
            after: wanted,
            limit,
            batch: usize::try_from(self.config_size()).unwrap_or(usize::MAX),
            deadline,
            timeout: self.timeout,
            inactive: self.timeout + Duration::from_secs(5),
        };
        let (first, publications) = scan.run().await?;
        read.first = first;
        read.publications = publications;
        Ok(read)
    }

    /// The stream's `max_msgs_per_subject`: the most one subject holds.
    fn config_size(&self) -> i64 {
        self.config
            .as_ref()
            .map_or(1, |config| config.max_messages_per_subject.max(1))
    }
}

fn window(top: Position, limits: StreamLimits) -> Result<Window, BrokerError> {
    let size = u64::try_from(limits.size).unwrap_or(u64::MAX);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let not_before = i128::try_from(now.saturating_sub(limits.ttl.as_nanos())).unwrap_or(0);
    let not_before = datetime::from_nanos(not_before)
        .map_err(|e| BrokerError::Failed(format!("history TTL: {e}")))?;
    Ok(Window {
        lowest: top.offset.saturating_sub(size) + 1,
        top,
        not_before,
    })
}

/// One pass of an ephemeral consumer over a subject's kept messages.
struct Scan<'a> {
    stream: &'a Stream<()>,
    subject: String,
    /// The sequence of the message that gave `top`: the scan ends there.
    last_seq: u64,
    window: &'a Window,
    /// Collect publications after this offset (`None`: only find `first`).
    after: Option<u64>,
    limit: usize,
    batch: usize,
    deadline: Instant,
    /// What `deadline` allowed in all, for the error.
    timeout: Duration,
    inactive: Duration,
}

impl Scan<'_> {
    async fn run(self) -> Result<(Option<u64>, Vec<Publication>), BrokerError> {
        let config = pull::Config {
            filter_subject: self.subject.clone(),
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: self.window.not_before,
            },
            ack_policy: AckPolicy::None,
            memory_storage: true,
            // Removed by the server if this node cannot delete it.
            inactive_threshold: self.inactive,
            ..pull::Config::default()
        };
        let consumer = match timeout_at(self.deadline, self.stream.create_consumer(config)).await {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => return Err(failed(&e)),
            Err(_) => return Err(BrokerError::TimedOut(self.timeout)),
        };
        let name = consumer.cached_info().name.clone();
        let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
        let outcome = if pending == 0 {
            Ok((None, Vec::new()))
        } else {
            let batch = pending.min(self.batch);
            timeout_at(self.deadline, self.collect(&consumer, batch))
                .await
                .unwrap_or_else(|_| Err(BrokerError::TimedOut(self.timeout)))
        };
        // Off the read's path: the server drops it after `inactive` anyway.
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.delete_consumer(&name)).await;
        });
        outcome
    }

    /// Fetches in batches until `top`'s message, the limit, or the end of what is kept.
    async fn collect(
        &self,
        consumer: &PullConsumer,
        mut budget: usize,
    ) -> Result<(Option<u64>, Vec<Publication>), BrokerError> {
        let mut first = None;
        let mut publications = Vec::new();
        while budget > 0 {
            // A fetch that finds nothing answers at once; one the server still counts messages
            // for that have expired meanwhile answers when it expires.
            let wait = self
                .deadline
                .saturating_duration_since(Instant::now())
                .min(FETCH_WAIT);
            let mut messages = consumer
                .fetch()
                .max_messages(budget)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| failed(&e))?;
            while let Some(message) = messages.next().await {
                budget = budget.saturating_sub(1);
                let message = message.map_err(|e| failed(&e))?;
                let info = message.info().map_err(|e| failed(&e))?;
                let (seq, stored) = (info.stream_sequence, info.published);
                if seq > self.last_seq {
                    return Ok((first, publications));
                }
                if let Ok(publication) = wire::decode(message.message.payload.clone())
                    && let Some(position) = publication.position.clone()
                    && self.window.holds(&position, stored)
                {
                    first.get_or_insert(position.offset);
                    match self.after {
                        None => return Ok((first, publications)),
                        Some(after) if position.offset > after => publications.push(publication),
                        Some(_) => {}
                    }
                    if publications.len() >= self.limit {
                        return Ok((first, publications));
                    }
                }
                if seq == self.last_seq {
                    return Ok((first, publications));
                }
            }
            // The batch ended before `top`'s message. If that message is gone (expired or
            // discarded meanwhile), so is everything before it: what was read is the rest.
            // If it is still there, the server has more to give: fetch again.
            match self.stream.direct_get(self.last_seq).await {
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(failed(&e)),
                Ok(_) if Instant::now() >= self.deadline => {
                    return Err(BrokerError::TimedOut(self.timeout));
                }
                Ok(_) => {}
            }
        }
        Ok((first, publications))
    }
}

fn failed(error: &dyn std::fmt::Display) -> BrokerError {
    BrokerError::Failed(format!("reading the history: {error}"))
}
