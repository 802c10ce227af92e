//! History: the recent pushes of each stream, kept so a client that reconnects can recover what
//! it missed (`docs/protocol.md`, "History and recovery").
//!
//! - [`HistoryPolicy`]: how much each app keeps (`[history]` in the configuration: a default and
//!   overrides by name pattern), shared by every broker.
//! - [`HistoryRead`]: what a read of one stream returns, and [`HistoryRead::recovered`], the one
//!   rule that decides whether a client missed nothing.
//! - [`History`]: the in-memory history of a node on its own (the local broker), pure like the
//!   hub: the caller passes the time in.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::ids::AppName;
use crate::message::Publication;
use crate::position::{Epoch, Position, Since};
use crate::topic::{Timestamp, Topic};

/// How much history one stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Pushes kept per stream; 0 turns history (and positions) off.
    pub size: usize,
    /// How long a push is kept.
    pub ttl: Duration,
}

impl StreamLimits {
    pub const DEFAULT_SIZE: usize = 100;
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            size: Self::DEFAULT_SIZE,
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// An app name pattern of `[history.apps]`: a name, or a name with `*` standing for any run of
/// characters (`chat-*`, `*-live`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPattern(String);

impl AppPattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        AppPattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, app: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = app.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// The `[history]` section: a default for every app and overrides by pattern (the first
/// pattern that matches wins), and the bound on a node's in-memory history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub default: StreamLimits,
    pub overrides: Vec<(AppPattern, StreamLimits)>,
    /// The most all in-memory history of a node may take, in bytes (frames and bookkeeping);
    /// the streams written least recently give way first.
    pub max_bytes: usize,
}

impl HistoryPolicy {
    pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

    /// No history for any app: no positions, nothing kept.
    pub fn off() -> Self {
        HistoryPolicy {
            default: StreamLimits {
                size: 0,
                ttl: StreamLimits::DEFAULT_TTL,
            },
            overrides: Vec::new(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    /// The limits of `app`'s streams.
    pub fn limits(&self, app: &AppName) -> StreamLimits {
        self.overrides
            .iter()
            .find(|(pattern, _)| pattern.matches(app.as_str()))
            .map_or(self.default, |(_, limits)| *limits)
    }

    /// Whether pushes to `app` get positions and are kept.
    pub fn enabled(&self, app: &AppName) -> bool {
        self.limits(app).enabled()
    }
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        HistoryPolicy {
            default: StreamLimits::default(),
            overrides: Vec::new(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// What a read of one stream's history found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRead {
    /// The newest position of the stream now; `None` when the stream has no run (nothing was
    /// pushed, or everything about it was forgotten).
    pub top: Option<Position>,
    /// The oldest offset still kept in the current run (`None` when nothing is kept).
    pub first: Option<u64>,
    /// The kept pushes after the position asked for, oldest first, at most the limit asked
    /// for; each has its position. Empty when the epoch asked for is not the current one.
    pub publications: Vec<Publication>,
}

impl HistoryRead {
    /// Whether a client that stands at `since` can be given every push it missed from this
    /// read: the run is the same, and either nothing was pushed since or the history reaches
    /// back to the push right after `since`.
    pub fn recovered(&self, since: &Since) -> bool {
        let Some(top) = &self.top else {
            // No run: nothing was ever pushed (or all is forgotten). Only a client that saw
            // nothing either missed nothing.
            return since.offset() == 0;
        };
        match since {
            Since::After(position) if position.epoch != top.epoch => false,
            _ if since.offset() > top.offset => false,
            _ if since.offset() == top.offset => true,
            _ => self.first.is_some_and(|first| first <= since.offset() + 1),
        }
    }

    /// The offset a read should start after, for `since` in the run of `top`: `None` when the
    /// client's epoch is not the current one (nothing of this run is its to recover).
    pub fn start_after(since: &Since, top: &Position) -> Option<u64> {
        match since {
            Since::Start => Some(0),
            Since::After(position) if position.epoch == top.epoch => Some(position.offset),
            Since::After(_) => None,
        }
    }
}

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
