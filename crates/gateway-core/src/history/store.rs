//! The in-memory history of a node on its own (the local broker).

use std::collections::{HashMap, VecDeque};

use super::{HistoryPolicy, HistoryRead, StreamLimits};
use crate::message::Publication;
use crate::position::{Epoch, Position, Since};
use crate::topic::{Timestamp, Topic};

/// One stream's kept pushes, oldest first.
#[derive(Debug)]
struct Stream {
    epoch: Epoch,
    /// The offset of the newest push (0: none yet).
    offset: u64,
    entries: VecDeque<(Timestamp, Publication)>,
    bytes: usize,
    /// When the stream was last written: the least recently written give way first.
    written: Timestamp,
}

/// Bookkeeping charged per stream and per entry on top of the frames' bytes, so that
/// [`HistoryPolicy::max_bytes`] bounds memory even for tiny pushes.
const STREAM_OVERHEAD: usize = 160;
const ENTRY_OVERHEAD: usize = 96;

/// A node's in-memory history (the local broker): one ring per stream, bounded by the stream's
/// limits and all of it by [`HistoryPolicy::max_bytes`]. Pure: the caller passes the time and
/// the epoch seed (something unique to this process, so a restarted node starts new runs).
#[derive(Debug)]
pub struct History {
    policy: HistoryPolicy,
    epoch_seed: String,
    next_epoch: u64,
    streams: HashMap<Topic, Stream>,
    bytes: usize,
}

impl History {
    /// `epoch_seed`: 1 to 48 ASCII letters or digits, unique to this process (random).
    pub fn new(policy: HistoryPolicy, epoch_seed: &str) -> Self {
        History {
            policy,
            epoch_seed: epoch_seed.to_owned(),
            next_epoch: 0,
            streams: HashMap::new(),
            bytes: 0,
        }
    }

    pub fn policy(&self) -> &HistoryPolicy {
        &self.policy
    }

    /// Bytes charged now (frames and bookkeeping), at most the policy's `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The number of streams known (with or without kept pushes).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Gives `publication` (to `topic`) its position and keeps it, when its app has history;
    /// returns it with [`Publication::position`] set, or unchanged when the app has none.
    pub fn append(
        &mut self,
        topic: &Topic,
        mut publication: Publication,
        now: Timestamp,
    ) -> Publication {
        let limits = self.policy.limits(topic.app());
        if !limits.enabled() {
            return publication;
        }
        if !self.streams.contains_key(topic) {
            let epoch = self.new_epoch();
            self.bytes += STREAM_OVERHEAD;
            self.streams.insert(
                topic.clone(),
                Stream {
                    epoch,
                    offset: 0,
                    entries: VecDeque::new(),
                    bytes: 0,
                    written: now,
                },
            );
        }
        let stream = self.streams.get_mut(topic).expect("inserted above");
        stream.offset += 1;
        stream.written = now;
        let position = Position::new(stream.offset, stream.epoch.clone());
        publication.position = Some(position);
        let cost = publication.frame.len() + ENTRY_OVERHEAD;
        stream.entries.push_back((now, publication.clone()));
        stream.bytes += cost;
        self.bytes += cost;
        while stream.entries.len() > limits.size {
            let (_, old) = stream.entries.pop_front().expect("longer than size");
            let cost = old.frame.len() + ENTRY_OVERHEAD;
            stream.bytes -= cost;
            self.bytes -= cost;
        }
        self.expire_stream(topic, limits, now);
        self.fit(topic);
        publication
    }

    /// The kept pushes of `topic` after `since` (all kept with `None`... see
    /// [`HistoryRead::publications`]), at most `limit`, as of `now`.
    pub fn read(
        &mut self,
        topic: &Topic,
        since: Option<&Since>,
        limit: usize,
        now: Timestamp,
    ) -> HistoryRead {
        let limits = self.policy.limits(topic.app());
        self.expire_stream(topic, limits, now);
        let Some(stream) = self.streams.get(topic) else {
            return HistoryRead::default();
        };
        let top = Position::new(stream.offset, stream.epoch.clone());
        let first = stream
            .entries
            .front()
            .and_then(|(_, p)| p.position.as_ref())
            .map(|p| p.offset);
        let after = match since {
            None => Some(0),
            Some(since) => HistoryRead::start_after(since, &top),
        };
        let publications = match after {
            None => Vec::new(),
            Some(after) => stream
                .entries
                .iter()
                .map(|(_, p)| p)
                .filter(|p| p.position.as_ref().is_some_and(|pos| pos.offset > after))
                .take(limit)
                .cloned()
                .collect(),
        };
        HistoryRead {
            top: (stream.offset > 0).then_some(top),
            first,
            publications,
        }
    }

    /// Drops what outlived its TTL everywhere (bounded work is the caller's choice of how
    /// often to call it).
    pub fn expire(&mut self, now: Timestamp) {
        let topics: Vec<Topic> = self.streams.keys().cloned().collect();
        for topic in topics {
            let limits = self.policy.limits(topic.app());
            self.expire_stream(&topic, limits, now);
        }
    }

    fn expire_stream(&mut self, topic: &Topic, limits: StreamLimits, now: Timestamp) {
        let Some(stream) = self.streams.get_mut(topic) else {
            return;
        };
        let ttl = u64::try_from(limits.ttl.as_millis()).unwrap_or(u64::MAX);
        while let Some((at, _)) = stream.entries.front() {
            if now.as_millis().saturating_sub(at.as_millis()) < ttl {
                break;
            }
            let (_, old) = stream.entries.pop_front().expect("front exists");
            let cost = old.frame.len() + ENTRY_OVERHEAD;
            stream.bytes -= cost;
            self.bytes -= cost;
        }
    }

    /// Evicts the least recently written streams (never `keep`) until within `max_bytes`.
    fn fit(&mut self, keep: &Topic) {
        while self.bytes > self.policy.max_bytes {
            let oldest = self
                .streams
                .iter()
                .filter(|(topic, _)| *topic != keep)
                .min_by_key(|(_, stream)| stream.written)
                .map(|(topic, _)| topic.clone());
            let Some(oldest) = oldest else {
                break;
            };
            if let Some(stream) = self.streams.remove(&oldest) {
                self.bytes -= stream.bytes + STREAM_OVERHEAD;
            }
        }
    }

    fn new_epoch(&mut self) -> Epoch {
        self.next_epoch += 1;
        Epoch::parse(&format!("{}{:x}", self.epoch_seed, self.next_epoch))
            .expect("a seed of letters and digits and a hex number make an epoch")
    }
}
