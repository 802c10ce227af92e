//! The in-memory history of a node on its own (the local broker).
//!
//! Every operation is bounded by what it changes, never by how many streams are known, because
//! the node calls it under its lock (a private app has one stream per member: a million streams
//! is an ordinary day):
//!
//! | operation | work |
//! |---|---|
//! | `append` | O(log streams), plus O(log streams) per stream it evicts (each stream is evicted at most once after it was created, so amortized O(log streams)) |
//! | `read` | O(log streams + what it drops as expired + what it returns) |
//! | `expire` | O(log streams) per stream with something expired, plus O(1) per push dropped |
//!
//! Two ordered indexes make that possible: the streams by last write (the least recently
//! written give way first under `max_bytes`) and the streams that keep pushes by the deadline
//! of their oldest one (per-app TTLs differ, so a single queue of appends would not be in
//! deadline order, and a queue entry per append would outlive the pushes that the size limit
//! already dropped).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::mem::size_of;

use super::{HistoryPolicy, HistoryRead, StreamLimits};
use crate::frame::Frame;
use crate::message::Publication;
use crate::position::{Epoch, Position, Since};
use crate::topic::{Timestamp, Topic};

/// One kept push: what a read needs besides what its stream knows (the app and member are the
/// topic's, the position follows from the entry's place in the run).
#[derive(Debug)]
struct Entry {
    /// When it was appended, in the caller's milliseconds.
    at: u64,
    member_id: i64,
    /// Shared with every delivery of the push: keeping it costs no copy.
    frame: Frame,
}

impl Entry {
    fn cost(&self) -> usize {
        frame_cost(&self.frame)
    }
}

/// What a kept frame costs: its bytes, and the header `bytes` allocates once a frame is shared
/// (a frame kept here is always shared). This assumes the frame's buffer is no larger than the
/// frame; an encoder that leaves spare capacity in it makes the real cost larger.
fn frame_cost(frame: &Frame) -> usize {
    frame.len() + FRAME_SHARED_HEADER
}

const FRAME_SHARED_HEADER: usize = 3 * size_of::<usize>();

/// One stream: its run (epoch, newest offset) and its kept pushes, which are always the newest
/// `entries.len()` offsets of the run, oldest first (pushes only ever leave from the front, or
/// all at once), so a read is a contiguous run ending at the top.
#[derive(Debug)]
struct Stream {
    epoch: Epoch,
    /// The offset of the newest push (0: none yet).
    offset: u64,
    /// Unique among the streams this history ever made: breaks ties between equal deadlines.
    id: u64,
    /// The stream's key in [`History::by_write`].
    written: u64,
    /// The app's limits, looked up once (the policy never changes).
    size: usize,
    ttl_ms: u64,
    entries: VecDeque<Entry>,
    /// The sum of the kept frames' costs.
    frames: usize,
}

impl Stream {
    /// What the stream costs besides its ring and frames (see [`stream_fixed_cost`]).
    fn fixed(&self) -> usize {
        stream_fixed_cost(&self.epoch)
    }

    /// What the stream is charged now: the ring is charged for its capacity, not its length,
    /// and only a stream that keeps pushes has a place in the deadline index.
    fn charge(&self) -> usize {
        let deadline = if self.entries.is_empty() {
            0
        } else {
            DEADLINE_INDEX
        };
        self.fixed() + deadline + self.entries.capacity() * size_of::<Entry>() + self.frames
    }

    /// When the oldest kept push expires: the stream's key in [`History::by_deadline`].
    fn deadline(&self) -> Option<u64> {
        self.entries
            .front()
            .map(|entry| entry.at.saturating_add(self.ttl_ms))
    }

    /// The oldest kept offset.
    fn first(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.offset + 1 - self.entries.len() as u64)
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.frames -= entry.cost();
        }
    }

    /// Keeps `entry` as the newest push, dropping the oldest beyond the size limit first, so
    /// the ring never holds more than `size` slots.
    fn push(&mut self, entry: Entry) {
        while self.entries.len() >= self.size {
            self.pop_front();
        }
        let (len, capacity) = (self.entries.len(), self.entries.capacity());
        if len == capacity {
            // Doubling from one slot (most streams of a private app keep one or two pushes),
            // but never past the size limit (a plain push would round 100 up to 128 slots).
            let want = capacity.saturating_mul(2).max(1).min(self.size);
            self.entries.reserve_exact(want - len);
        }
        self.frames += entry.cost();
        self.entries.push_back(entry);
    }

    /// Drops the pushes that are `ttl` old at `now`.
    fn drop_expired(&mut self, now: u64) {
        let before = self.entries.len();
        while self.deadline().is_some_and(|deadline| deadline <= now) {
            self.pop_front();
        }
        if self.entries.len() != before {
            self.shrink();
        }
    }

    /// Gives a ring that is mostly empty its memory back (halving when a quarter is used, so
    /// a ring's capacity is amortized O(1) per push); an empty one frees it all: a stream whose
    /// pushes all expired keeps only its run.
    fn shrink(&mut self) {
        let len = self.entries.len();
        if len == 0 {
            self.entries = VecDeque::new();
        } else if len * 4 <= self.entries.capacity() {
            self.entries.shrink_to(len * 2);
        }
    }

    /// Forgets every kept push (the run goes on).
    fn clear(&mut self) {
        self.entries = VecDeque::new();
        self.frames = 0;
    }
}

/// What a stream costs besides its ring, frames and deadline, as an upper bound of the heap
/// it holds: the boxed [`Stream`], its epoch's allocation, its slot in the map of streams at
/// the map's lowest load (see [`History::shrink_map`]) and its entry in the write index at
/// its lowest fill (a B-tree node other than the root holds at least 5 of its 11 slots).
fn stream_fixed_cost(epoch: &Epoch) -> usize {
    size_of::<Stream>() + arc_str_cost(epoch.as_str().len()) + MAP_SLOT + WRITE_INDEX
}

/// An `Arc<str>`: two counters and the text, rounded up to the allocator's 8-byte alignment.
const fn arc_str_cost(len: usize) -> usize {
    2 * size_of::<usize>() + len.div_ceil(8) * 8
}

/// The map's slot (key, box, one control byte) at a load of at least 0.35 of its buckets:
/// hashbrown fills up to 7/8 and doubles, and [`History::shrink_map`] shrinks it when less
/// than 0.4 of its capacity (7/8 of the buckets) is used.
const MAP_SLOT: usize = (size_of::<(Topic, Box<Stream>)>() + 1) * 20 / 7 + 1;
const WRITE_INDEX: usize = btree_entry_cost(size_of::<u64>() + size_of::<Topic>());
const DEADLINE_INDEX: usize = btree_entry_cost(size_of::<(u64, u64)>() + size_of::<Topic>());

/// One entry of a `BTreeMap` whose key and value take `kv` bytes: a leaf (parent pointer,
/// index and length, 11 slots) shared by at least 5 entries, and the internal nodes above (the
/// same plus 12 edges, at least 6 of them used) shared by at least 5 × 5 entries.
const fn btree_entry_cost(kv: usize) -> usize {
    let leaf = 2 * size_of::<usize>() + 11 * kv;
    let internal = leaf + 12 * size_of::<usize>();
    leaf / 5 + internal / 25 + 1
}

/// A node's in-memory history (the local broker): one ring per stream, bounded by the stream's
/// limits and all of it by [`HistoryPolicy::max_bytes`]. Pure: the caller passes the time and
/// the epoch seed (something unique to this process, so a restarted node starts new runs).
///
/// What `max_bytes` bounds ([`History::bytes`]): every kept frame, the ring slots that hold
/// them, and per stream its record, its epoch and its place in the map and the two indexes
/// (see [`stream_fixed_cost`]), each at its worst case, so the real heap use stays below it.
/// Not counted: the few KiB the empty tables themselves take, and the app names, which the
/// hub's tables share.
///
/// Limits, in the order they apply to an append:
/// - a push that cannot be kept even alone in an otherwise empty history (its frame, one slot
///   and its stream's record exceed `max_bytes`) is not kept: it still gets its position (the
///   run moves on), and the stream's older pushes are forgotten, since a read must reach the
///   top; a client behind it gets `recovered:false`;
/// - the app's `size`: the oldest push of the stream gives way;
/// - `max_bytes`: the least recently written streams give way whole (run and all: their next
///   push starts a new epoch); when the stream appended to is the only one left, its own
///   oldest pushes, and at last its run.
///
/// Pushes older than the app's `ttl` are dropped by [`History::expire`] (and skipped by reads
/// before it runs); a stream whose pushes all expired keeps its run (epoch and offset), charged
/// like any stream, so a client at the top still recovers and the epoch does not change
/// needlessly; it gives way under `max_bytes` like any stream.
///
/// Time: the clock is taken as never going back (a smaller `now` than one seen before counts as
/// the one seen before), so the deadline order holds whatever the caller passes.
#[derive(Debug)]
pub struct History {
    policy: HistoryPolicy,
    epoch_seed: String,
    next_epoch: u64,
    streams: HashMap<Topic, Box<Stream>>,
    /// Every stream by its last write: the first gives way first.
    by_write: BTreeMap<u64, Topic>,
    /// Every stream that keeps pushes, by the deadline of its oldest (and its id, for ties).
    by_deadline: BTreeMap<(u64, u64), Topic>,
    /// The last write's key in `by_write`.
    writes: u64,
    /// The latest `now` seen, in milliseconds.
    now: u64,
    bytes: usize,
    /// Streams looked at by `expire` and `fit`: the tests check that neither scans.
    #[cfg(test)]
    visits: usize,
}

impl History {
    /// `epoch_seed`: 1 to 48 ASCII letters or digits, unique to this process (random).
    pub fn new(policy: HistoryPolicy, epoch_seed: &str) -> Self {
        History {
            policy,
            epoch_seed: epoch_seed.to_owned(),
            next_epoch: 0,
            streams: HashMap::new(),
            by_write: BTreeMap::new(),
            by_deadline: BTreeMap::new(),
            writes: 0,
            now: 0,
            bytes: 0,
            #[cfg(test)]
            visits: 0,
        }
    }

    pub fn policy(&self) -> &HistoryPolicy {
        &self.policy
    }

    /// Bytes charged now (frames and bookkeeping, see [`History`]), at most the policy's
    /// `max_bytes` whenever an append has returned.
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
        let now = self.tick(now);
        if !self.streams.contains_key(topic) {
            let limits = self.policy.limits(topic.app());
            if !limits.enabled() {
                return publication;
            }
            self.create(topic, limits);
        }
        let max_bytes = self.policy.max_bytes;
        let Some(stream) = self.streams.get_mut(topic) else {
            return publication;
        };
        let (before, old_deadline, id) = (stream.charge(), stream.deadline(), stream.id);
        // The most recently written stream keeps its place in the write order: a busy app's
        // appends leave that index alone.
        let newest = self
            .by_write
            .last_key_value()
            .is_some_and(|(last, _)| *last == stream.written);
        if !newest {
            self.writes += 1;
            let old_written = std::mem::replace(&mut stream.written, self.writes);
            let key = self
                .by_write
                .remove(&old_written)
                .unwrap_or_else(|| topic.clone());
            self.by_write.insert(self.writes, key);
        }
        stream.offset += 1;
        publication.position = Some(Position::new(stream.offset, stream.epoch.clone()));
        stream.drop_expired(now);
        let entry = Entry {
            at: now,
            member_id: publication.member_id,
            frame: publication.frame.clone(),
        };
        if stream.fixed() + DEADLINE_INDEX + size_of::<Entry>() + entry.cost() > max_bytes {
            // Keeping it would evict every other stream and still not fit.
            stream.clear();
        } else {
            stream.push(entry);
        }
        let new_deadline = stream.deadline();
        self.bytes = self.bytes - before + stream.charge();
        self.rekey(topic, id, old_deadline, new_deadline);
        self.fit(topic);
        publication
    }

    /// The kept pushes of `topic` after `since` (all kept with `None`; see
    /// [`HistoryRead::publications`]), at most `limit`, as of `now`.
    pub fn read(
        &mut self,
        topic: &Topic,
        since: Option<&Since>,
        limit: usize,
        now: Timestamp,
    ) -> HistoryRead {
        let now = self.tick(now);
        let Some(stream) = self.streams.get_mut(topic) else {
            return HistoryRead::default();
        };
        let (before, old_deadline, id) = (stream.charge(), stream.deadline(), stream.id);
        stream.drop_expired(now);
        let new_deadline = stream.deadline();
        self.bytes = self.bytes - before + stream.charge();
        self.rekey(topic, id, old_deadline, new_deadline);

        let Some(stream) = self.streams.get(topic) else {
            return HistoryRead::default();
        };
        let top = Position::new(stream.offset, stream.epoch.clone());
        let first = stream.first();
        let after = match since {
            None => Some(0),
            Some(since) => HistoryRead::start_after(since, &top),
        };
        let publications = match (after, first) {
            (Some(after), Some(first)) => {
                // Offsets are contiguous, so the first one asked for is found by its place.
                let skip = usize::try_from((after + 1).saturating_sub(first))
                    .unwrap_or(usize::MAX)
                    .min(stream.entries.len());
                stream
                    .entries
                    .range(skip..)
                    .take(limit)
                    .zip(first + skip as u64..)
                    .map(|(entry, offset)| Publication {
                        app: topic.app().clone(),
                        member_id: entry.member_id,
                        frame: entry.frame.clone(),
                        position: Some(Position::new(offset, stream.epoch.clone())),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        HistoryRead {
            top: (stream.offset > 0).then_some(top),
            first,
            publications,
        }
    }

    /// Drops every push that is its app's `ttl` old at `now`; the work is proportional to the
    /// streams and pushes that expire, however many streams are known.
    pub fn expire(&mut self, now: Timestamp) {
        let now = self.tick(now);
        while let Some(next) = self.by_deadline.first_entry() {
            if next.key().0 > now {
                break;
            }
            let ((_, id), topic) = next.remove_entry();
            #[cfg(test)]
            {
                self.visits += 1;
            }
            let Some(stream) = self.streams.get_mut(&topic) else {
                continue;
            };
            let before = stream.charge();
            stream.drop_expired(now);
            self.bytes = self.bytes - before + stream.charge();
            if let Some(deadline) = stream.deadline() {
                self.by_deadline.insert((deadline, id), topic);
            }
        }
    }

    fn tick(&mut self, now: Timestamp) -> u64 {
        self.now = self.now.max(now.as_millis());
        self.now
    }

    fn create(&mut self, topic: &Topic, limits: StreamLimits) {
        let epoch = self.new_epoch();
        let stream = Box::new(Stream {
            epoch,
            offset: 0,
            id: self.next_epoch,
            written: 0,
            size: limits.size,
            ttl_ms: u64::try_from(limits.ttl.as_millis()).unwrap_or(u64::MAX),
            entries: VecDeque::new(),
            frames: 0,
        });
        self.bytes += stream.charge();
        self.streams.insert(topic.clone(), stream);
    }

    /// Moves the stream `id` in the deadline index from `old` to `new`.
    fn rekey(&mut self, topic: &Topic, id: u64, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let key = old.and_then(|old| self.by_deadline.remove(&(old, id)));
        if let Some(new) = new {
            let key = key.unwrap_or_else(|| topic.clone());
            self.by_deadline.insert((new, id), key);
        }
    }

    /// Brings the charge within `max_bytes` after an append to `keep`, which is the most
    /// recently written stream: the others give way from the least recently written; if that
    /// is not enough, `keep`'s own oldest pushes, and at last its run.
    fn fit(&mut self, keep: &Topic) {
        let max_bytes = self.policy.max_bytes;
        while self.bytes > max_bytes {
            let Some(entry) = self.by_write.first_entry() else {
                break;
            };
            #[cfg(test)]
            {
                self.visits += 1;
            }
            if entry.get() == keep {
                break;
            }
            let oldest = entry.remove();
            self.remove(&oldest);
        }
        while self.bytes > max_bytes {
            let Some(stream) = self.streams.get_mut(keep) else {
                break;
            };
            if stream.entries.is_empty() {
                self.remove(keep);
                break;
            }
            let (before, old_deadline, id) = (stream.charge(), stream.deadline(), stream.id);
            stream.pop_front();
            stream.shrink();
            let new_deadline = stream.deadline();
            self.bytes = self.bytes - before + stream.charge();
            self.rekey(keep, id, old_deadline, new_deadline);
        }
    }

    /// Forgets `topic` entirely: its next push starts a new run.
    fn remove(&mut self, topic: &Topic) {
        let Some(stream) = self.streams.remove(topic) else {
            return;
        };
        self.bytes -= stream.charge();
        self.by_write.remove(&stream.written);
        if let Some(deadline) = stream.deadline() {
            self.by_deadline.remove(&(deadline, stream.id));
        }
        self.shrink_map();
    }

    /// Keeps the map of streams at least 0.4 full (of its capacity) after removals, so its
    /// slots cost what [`MAP_SLOT`] charges. Rehashing is O(streams), after at least 0.6 of
    /// the capacity was removed since the map last had that size: amortized O(1) per removal.
    /// Small maps are left alone (their slack is part of the tables' fixed few KiB).
    fn shrink_map(&mut self) {
        let (len, capacity) = (self.streams.len(), self.streams.capacity());
        if capacity > 64 && len * 5 < capacity * 2 {
            self.streams.shrink_to(len);
        }
    }

    fn new_epoch(&mut self) -> Epoch {
        self.next_epoch += 1;
        Epoch::parse(&format!("{}{:x}", self.epoch_seed, self.next_epoch))
            .expect("a seed of letters and digits and a hex number make an epoch")
    }
}

#[cfg(test)]
mod tests;
