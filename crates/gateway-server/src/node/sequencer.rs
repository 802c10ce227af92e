//! Puts a broker's positioned publications back in offset order before the hub sees them, and
//! turns lost ones into a history read.
//!
//! A broker that keeps history gives each publication of a stream the next offset, but what
//! reaches this node may still have holes or come out of order: a reconnect or a slow-consumer
//! drop loses publications (Redis, NATS core), and with NATS two publishers' announcements may
//! arrive in either order, or not at all when a publisher died between storing and announcing.
//! So per topic this node remembers the last offset it passed on. The next one goes straight
//! through; an older one is a duplicate and is dropped; a newer one means a hole: it waits, with
//! what follows it, while the missing ones are read from the history ([`Sequencer::fetched`]),
//! and then everything goes out in order. A broker's gap report starts the same read
//! ([`Sequencer::gap`]). What the history cannot give back any more is reported, so the node
//! can tell the subscribers that asked for positions (`409 pushes to x lost`).
//!
//! Only streams this node has seen a publication of are tracked; a topic is forgotten when the
//! node's interest in it ends.

use std::collections::{BTreeMap, HashMap};

use gateway_core::{Epoch, HistoryRead, Position, Publication, Since, Topic};

/// Publications that may wait behind one hole; past this the hole is given up (reported as
/// lost) rather than hold more.
const MAX_WAITING: usize = 10_000;
/// Bytes of frames that may wait behind holes on one node, all topics together; past this
/// the stream holding the most gives its hole up (reported as lost).
const MAX_WAITING_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub(super) struct Sequencer {
    streams: HashMap<Topic, Stream>,
    /// The bytes of every stream's `waiting`, and their bound.
    waiting_bytes: usize,
    max_waiting_bytes: usize,
}

impl Default for Sequencer {
    fn default() -> Sequencer {
        Sequencer::with_budget(MAX_WAITING_BYTES)
    }
}

#[derive(Debug)]
struct Stream {
    /// The last position passed on.
    last: Position,
    /// A history read for this topic is running: arrivals wait in `waiting`.
    fetching: bool,
    /// Publications that arrived after a hole, by offset.
    waiting: BTreeMap<u64, Publication>,
    /// Their frames' bytes.
    bytes: usize,
    /// The run this stream left for its current one: its late arrivals are stale (epochs have
    /// no order, so without this one would look like yet another new run).
    retired: Option<Epoch>,
}

/// What [`Sequencer::accept`] decided.
#[derive(Debug, Default)]
pub(super) struct Accepted {
    /// To hand to the hub, in this order.
    pub(super) deliver: Vec<Publication>,
    /// Read the topic's history after this position (a hole was found).
    pub(super) fetch: Option<Since>,
    /// The arrival was a duplicate.
    pub(super) duplicate: bool,
    /// Pushes were lost for good before `deliver[index]` (or after the last when `index` is
    /// its length): the position right before that one, what subscribers with positions
    /// continue from. A new run (the stream's history was lost, e.g. the broker lost its
    /// data) is one: what the old run had since the last position is gone.
    pub(super) lost: Vec<(usize, Position)>,
    /// Another topic whose hole was given up to bring the node back within its budget of
    /// waiting bytes: what it held goes out now.
    pub(super) given_up: Option<(Topic, Filled)>,
}

/// What a history read filled in.
#[derive(Debug, Default)]
pub(super) struct Filled {
    pub(super) deliver: Vec<Publication>,
    /// Where pushes were lost for good, in order (see [`Accepted::lost`]).
    pub(super) lost: Vec<(usize, Position)>,
    /// A hole remains that the read could not have seen (it was stored after the read): read
    /// again after this position; what follows the hole keeps waiting.
    pub(super) fetch: Option<Since>,
}

impl Sequencer {
    /// A sequencer that holds at most `max_waiting_bytes` behind holes, all topics together.
    pub(super) fn with_budget(max_waiting_bytes: usize) -> Sequencer {
        Sequencer {
            streams: HashMap::new(),
            waiting_bytes: 0,
            max_waiting_bytes,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// A positioned publication of `topic` arrived from the broker.
    pub(super) fn accept(&mut self, topic: &Topic, publication: Publication) -> Accepted {
        let before = self.streams.get(topic).map_or(0, |stream| stream.bytes);
        let mut accepted = self.accept_in(topic, publication);
        self.recount(topic, before);
        if self.waiting_bytes > self.max_waiting_bytes
            && let Some((biggest, filled)) = self.give_up_biggest()
        {
            if biggest == *topic {
                let at = accepted.deliver.len();
                accepted
                    .lost
                    .extend(filled.lost.into_iter().map(|(i, p)| (at + i, p)));
                accepted.deliver.extend(filled.deliver);
                accepted.fetch = None;
            } else {
                accepted.given_up = Some((biggest, filled));
            }
        }
        accepted
    }

    /// Gives up the hole of the stream holding the most bytes behind one: what waits goes
    /// out, the hole reported lost, and its read's answer will be ignored. Scans the streams:
    /// only when the node is past its budget.
    fn give_up_biggest(&mut self) -> Option<(Topic, Filled)> {
        let topic = self
            .streams
            .iter()
            .filter(|(_, stream)| stream.bytes > 0)
            .max_by_key(|(_, stream)| stream.bytes)
            .map(|(topic, _)| topic.clone())?;
        let stream = self.streams.get_mut(&topic)?;
        let before = stream.bytes;
        stream.fetching = false;
        let filled = stream.drain(Vec::new(), None);
        self.waiting_bytes = self.waiting_bytes - before + stream.bytes;
        Some((topic, filled))
    }

    /// Moves the node's total by what `topic`'s waiting bytes became since `before`.
    fn recount(&mut self, topic: &Topic, before: usize) {
        let after = self.streams.get(topic).map_or(0, |stream| stream.bytes);
        self.waiting_bytes = self.waiting_bytes - before + after;
    }

    fn accept_in(&mut self, topic: &Topic, publication: Publication) -> Accepted {
        let Some(position) = publication.position.clone() else {
            return Accepted {
                deliver: vec![publication],
                ..Accepted::default()
            };
        };
        let Some(stream) = self.streams.get_mut(topic) else {
            self.streams.insert(
                topic.clone(),
                Stream {
                    last: position,
                    fetching: false,
                    waiting: BTreeMap::new(),
                    bytes: 0,
                    retired: None,
                },
            );
            return Accepted {
                deliver: vec![publication],
                ..Accepted::default()
            };
        };
        if stream.retired.as_ref() == Some(&position.epoch) {
            return Accepted {
                duplicate: true,
                ..Accepted::default()
            };
        }
        if stream.fetching {
            if position.epoch != stream.last.epoch {
                // A new run while a hole of the old one is read (the broker lost its data):
                // what waits of the old run goes out, its holes announced, then the new run
                // starts over from this push; the read's answer will be ignored.
                stream.fetching = false;
                let mut filled = stream.drain(Vec::new(), None);
                let before = Position::new(position.offset - 1, position.epoch.clone());
                filled.lost.push((filled.deliver.len(), before));
                stream.start_run(position);
                filled.deliver.push(publication);
                return Accepted {
                    deliver: filled.deliver,
                    lost: filled.lost,
                    ..Accepted::default()
                };
            }
            if position.offset <= stream.last.offset {
                return Accepted {
                    duplicate: true,
                    ..Accepted::default()
                };
            }
            stream.wait(position.offset, publication);
            if stream.waiting.len() > MAX_WAITING {
                // The read takes too long: stop holding; the hole (if any) is lost.
                stream.fetching = false;
                let filled = stream.drain(Vec::new(), None);
                return Accepted {
                    deliver: filled.deliver,
                    lost: filled.lost,
                    ..Accepted::default()
                };
            }
            return Accepted::default();
        }
        if position.epoch != stream.last.epoch {
            // A new run (the stream's history was reset): start over from it, and say so.
            let before = Position::new(position.offset - 1, position.epoch.clone());
            stream.start_run(position);
            return Accepted {
                deliver: vec![publication],
                lost: vec![(0, before)],
                ..Accepted::default()
            };
        }
        if position.offset <= stream.last.offset {
            return Accepted {
                duplicate: true,
                ..Accepted::default()
            };
        }
        if position.offset == stream.last.offset + 1 {
            stream.last = position;
            return Accepted {
                deliver: vec![publication],
                ..Accepted::default()
            };
        }
        stream.fetching = true;
        stream.wait(position.offset, publication);
        Accepted {
            fetch: Some(Since::After(stream.last.clone())),
            ..Accepted::default()
        }
    }

    /// The broker reported that publications of `topic` may have been lost: the position to
    /// read the history after, unless a read is running already or nothing was seen yet.
    pub(super) fn gap(&mut self, topic: &Topic) -> Option<Since> {
        let stream = self.streams.get_mut(topic)?;
        if stream.fetching {
            return None;
        }
        stream.fetching = true;
        Some(Since::After(stream.last.clone()))
    }

    /// The history read of `topic` ended (`Err`: it failed): what can go out now, in order.
    pub(super) fn fetched(&mut self, topic: &Topic, read: Option<HistoryRead>) -> Filled {
        let before = self.streams.get(topic).map_or(0, |stream| stream.bytes);
        let filled = self.fetched_in(topic, read);
        self.recount(topic, before);
        filled
    }

    fn fetched_in(&mut self, topic: &Topic, read: Option<HistoryRead>) -> Filled {
        let Some(stream) = self.streams.get_mut(topic) else {
            return Filled::default();
        };
        if !stream.fetching {
            return Filled::default();
        }
        stream.fetching = false;
        let Some(read) = read else {
            // The read failed: what is missing cannot be had now. With nothing waiting (a
            // gap report) nothing shows a hole, yet pushes may have been lost: say so.
            let mut filled = stream.drain(Vec::new(), None);
            if filled.lost.is_empty() && filled.deliver.is_empty() {
                filled.lost.push((0, stream.last.clone()));
            }
            return filled;
        };
        if let Some(top) = &read.top
            && top.epoch != stream.last.epoch
        {
            // The stream started a new run meanwhile (its history was lost): what waited of the
            // old run goes out first (its holes are lost with it), then the new run's pushes
            // from its start, the change announced between them.
            let epoch = top.epoch.clone();
            let top_offset = top.offset;
            let mut filled = stream.drain(Vec::new(), None);
            filled
                .lost
                .push((filled.deliver.len(), Position::new(0, epoch.clone())));
            stream.start_run(Position::new(0, epoch.clone()));
            let read_the_new_run = read
                .publications
                .iter()
                .any(|p| p.position.as_ref().is_some_and(|p| p.epoch == epoch));
            if !read_the_new_run {
                // The read asked for the old run (and got nothing of it): read the new one
                // from its start.
                stream.fetching = true;
                filled.fetch = Some(Since::Start);
                return filled;
            }
            let at = filled.deliver.len();
            let new_run = stream.drain(read.publications, Some(top_offset));
            for (index, position) in new_run.lost {
                // A hole at the new run's start says the same as the change's notice.
                if index == 0 && filled.lost.last().is_some_and(|(i, _)| *i == at) {
                    filled.lost.pop();
                }
                filled.lost.push((at + index, position));
            }
            filled.deliver.extend(new_run.deliver);
            filled.fetch = new_run.fetch;
            if filled.fetch.is_some() {
                stream.fetching = true;
            }
            return filled;
        }
        // No run at all: this run's history is gone, a hole in it cannot be filled.
        let top = read
            .top
            .as_ref()
            .filter(|top| top.epoch == stream.last.epoch)
            .map(|top| top.offset);
        let filled = stream.drain(read.publications, top);
        if filled.fetch.is_some() {
            stream.fetching = true;
        }
        filled
    }

    /// The node's interest in `topic` ended.
    pub(super) fn forget(&mut self, topic: &Topic) {
        if let Some(stream) = self.streams.remove(topic) {
            self.waiting_bytes -= stream.bytes;
        }
    }
}

impl Stream {
    /// Moves to another run at `position`, retiring the current one.
    fn start_run(&mut self, position: Position) {
        let old = std::mem::replace(&mut self.last, position);
        self.retired = Some(old.epoch);
    }

    /// Holds `publication` behind the hole.
    fn wait(&mut self, offset: u64, publication: Publication) {
        self.bytes += publication.frame.len();
        if let Some(replaced) = self.waiting.insert(offset, publication) {
            self.bytes -= replaced.frame.len();
        }
    }

    /// Passes on `found` (from the history) and what waited, in offset order, without
    /// duplicates. A hole that a read with newest offset `read_top` saw past (its pushes were
    /// stored, and are no longer kept) or that no read can fill (`None`: the read failed, or
    /// too much waits) is reported lost and passed over; a hole above `read_top` was stored
    /// after the read: what follows it keeps waiting for another read.
    fn drain(&mut self, found: Vec<Publication>, read_top: Option<u64>) -> Filled {
        let mut ordered = std::mem::take(&mut self.waiting);
        self.bytes = 0;
        for publication in found {
            if let Some(position) = &publication.position
                && position.epoch == self.last.epoch
                && position.offset > self.last.offset
            {
                ordered.entry(position.offset).or_insert(publication);
            }
        }
        let mut filled = Filled::default();
        let mut ordered = ordered.into_iter();
        while let Some((offset, publication)) = ordered.next() {
            let Some(position) = publication.position.clone() else {
                continue;
            };
            if self.retired.as_ref() == Some(&position.epoch) {
                continue; // what waited of the run left behind: gone with it
            }
            let same_run = position.epoch == self.last.epoch;
            if same_run && offset <= self.last.offset {
                continue;
            }
            let hole = !same_run || offset != self.last.offset + 1;
            if hole
                && same_run
                && let Some(top) = read_top
                && top <= self.last.offset
            {
                // Stored after the read: read again; this and what follows wait.
                self.wait(offset, publication);
                for (offset, publication) in ordered {
                    self.wait(offset, publication);
                }
                filled.fetch = Some(Since::After(self.last.clone()));
                return filled;
            }
            if hole {
                let before = Position::new(offset - 1, position.epoch.clone());
                filled.lost.push((filled.deliver.len(), before));
            }
            self.last = position;
            filled.deliver.push(publication);
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gateway_core::{AppName, Epoch, PushMessage};

    fn topic() -> Topic {
        Topic::App(AppName::parse("match", 128).unwrap())
    }

    fn push(offset: u64, epoch: &str) -> Publication {
        let mut p = Publication::from(PushMessage {
            app: AppName::parse("match", 128).unwrap(),
            member_id: -1,
            text: offset.to_string(),
        });
        p.position = Some(Position::new(offset, Epoch::parse(epoch).unwrap()));
        p
    }

    fn offsets(publications: &[Publication]) -> Vec<u64> {
        publications
            .iter()
            .map(|p| p.position.as_ref().unwrap().offset)
            .collect()
    }

    #[test]
    fn in_order_arrivals_pass_and_duplicates_are_dropped() {
        let mut s = Sequencer::default();
        for offset in [5, 6, 7] {
            assert_eq!(
                offsets(&s.accept(&topic(), push(offset, "e")).deliver),
                [offset]
            );
        }
        let again = s.accept(&topic(), push(6, "e"));
        assert!(again.duplicate && again.deliver.is_empty());
    }

    #[test]
    fn a_hole_waits_for_the_history_and_everything_goes_out_in_order() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(1, "e"));
        // 4 arrives before 2 and 3 (another publisher's, or they were lost).
        let hole = s.accept(&topic(), push(4, "e"));
        assert!(hole.deliver.is_empty());
        assert_eq!(
            hole.fetch,
            Some(Since::After(Position::new(1, Epoch::parse("e").unwrap())))
        );
        // 5 waits behind the hole; 2 arrives live meanwhile and waits too.
        assert!(s.accept(&topic(), push(5, "e")).deliver.is_empty());
        assert!(s.accept(&topic(), push(2, "e")).deliver.is_empty());
        let read = HistoryRead {
            top: Some(Position::new(5, Epoch::parse("e").unwrap())),
            publications: vec![push(2, "e"), push(3, "e"), push(4, "e")],
            ..HistoryRead::default()
        };
        let filled = s.fetched(&topic(), Some(read));
        assert_eq!(offsets(&filled.deliver), [2, 3, 4, 5]);
        assert_eq!(filled.lost, []);
        // The late live copy of 3 is a duplicate now.
        assert!(s.accept(&topic(), push(3, "e")).duplicate);
        assert_eq!(offsets(&s.accept(&topic(), push(6, "e")).deliver), [6]);
    }

    #[test]
    fn a_hole_stored_after_the_read_waits_for_another_read() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(1, "e"));
        let _ = s.accept(&topic(), push(3, "e"));
        // While 2 is read, 5 arrives (4 is still on its way).
        let _ = s.accept(&topic(), push(5, "e"));
        let read = HistoryRead {
            top: Some(Position::new(3, Epoch::parse("e").unwrap())),
            publications: vec![push(2, "e"), push(3, "e")],
            ..HistoryRead::default()
        };
        let filled = s.fetched(&topic(), Some(read));
        assert_eq!(offsets(&filled.deliver), [2, 3]);
        assert_eq!(filled.lost, [], "4 was stored after the read: not lost");
        assert_eq!(
            filled.fetch,
            Some(Since::After(Position::new(3, Epoch::parse("e").unwrap())))
        );
        // The second read has it.
        let read = HistoryRead {
            top: Some(Position::new(5, Epoch::parse("e").unwrap())),
            publications: vec![push(4, "e"), push(5, "e")],
            ..HistoryRead::default()
        };
        let filled = s.fetched(&topic(), Some(read));
        assert_eq!(offsets(&filled.deliver), [4, 5]);
        assert_eq!((filled.lost, filled.fetch), (vec![], None));
    }

    #[test]
    fn what_the_history_no_longer_holds_is_reported_lost() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(1, "e"));
        let _ = s.accept(&topic(), push(9, "e"));
        let read = HistoryRead {
            top: Some(Position::new(9, Epoch::parse("e").unwrap())),
            publications: vec![push(7, "e"), push(8, "e")],
            ..HistoryRead::default()
        };
        let filled = s.fetched(&topic(), Some(read));
        assert_eq!(offsets(&filled.deliver), [7, 8, 9]);
        assert_eq!(
            filled.lost,
            [(0, Position::new(6, Epoch::parse("e").unwrap()))]
        );
        // A failed read gives out what waited, and reports the hole.
        let _ = s.accept(&topic(), push(12, "e"));
        let filled = s.fetched(&topic(), None);
        assert_eq!(offsets(&filled.deliver), [12]);
        assert_eq!(filled.lost[0].1.offset, 11);
    }

    #[test]
    fn a_gap_report_reads_after_the_last_position_once() {
        let mut s = Sequencer::default();
        assert_eq!(s.gap(&topic()), None, "nothing seen: nothing to read after");
        let _ = s.accept(&topic(), push(3, "e"));
        assert!(s.gap(&topic()).is_some());
        assert_eq!(s.gap(&topic()), None, "a read is running");
        let filled = s.fetched(
            &topic(),
            Some(HistoryRead {
                top: Some(Position::new(4, Epoch::parse("e").unwrap())),
                publications: vec![push(3, "e"), push(4, "e")],
                ..HistoryRead::default()
            }),
        );
        assert_eq!(offsets(&filled.deliver), [4]);
        assert_eq!(filled.lost, []);
    }

    #[test]
    fn a_failed_read_after_a_gap_report_is_announced() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(3, "e"));
        assert!(s.gap(&topic()).is_some());
        let filled = s.fetched(&topic(), None);
        assert!(filled.deliver.is_empty());
        assert_eq!(
            filled.lost,
            [(0, Position::new(3, Epoch::parse("e").unwrap()))]
        );
    }

    #[test]
    fn a_read_that_finds_a_new_run_passes_it_on_and_announces_the_change() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(7, "e1"));
        assert!(s.gap(&topic()).is_some());
        // The broker lost its data; three pushes of a new run were stored meanwhile.
        let read = HistoryRead {
            top: Some(Position::new(3, Epoch::parse("e2").unwrap())),
            first: Some(1),
            publications: vec![push(1, "e2"), push(2, "e2"), push(3, "e2")],
        };
        let filled = s.fetched(&topic(), Some(read.clone()));
        assert_eq!(offsets(&filled.deliver), [1, 2, 3]);
        assert_eq!(
            filled.lost,
            [(0, Position::new(0, Epoch::parse("e2").unwrap()))]
        );
        assert_eq!(offsets(&s.accept(&topic(), push(4, "e2")).deliver), [4]);

        // A read after a position of the old run gets none of the new run (another epoch):
        // the change is announced and the new run is read from its start.
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(7, "e1"));
        assert!(s.gap(&topic()).is_some());
        let filled = s.fetched(
            &topic(),
            Some(HistoryRead {
                publications: Vec::new(),
                ..read.clone()
            }),
        );
        assert!(filled.deliver.is_empty());
        assert_eq!(filled.fetch, Some(Since::Start));
        assert_eq!(filled.lost[0].1.epoch.as_str(), "e2");
        let filled = s.fetched(&topic(), Some(read));
        assert_eq!(offsets(&filled.deliver), [1, 2, 3]);
        assert_eq!(filled.lost, []);
    }

    #[test]
    fn a_new_run_starts_over() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(40, "e1"));
        let new_run = s.accept(&topic(), push(1, "e2"));
        assert_eq!(offsets(&new_run.deliver), [1]);
        assert_eq!(
            new_run.lost,
            [(0, Position::new(0, Epoch::parse("e2").unwrap()))],
            "the old run's tail may be lost: announced"
        );
        assert_eq!(offsets(&s.accept(&topic(), push(2, "e2")).deliver), [2]);
    }

    #[test]
    fn every_hole_a_read_cannot_fill_is_reported_in_its_place() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(1, "e"));
        let _ = s.accept(&topic(), push(4, "e"));
        let _ = s.accept(&topic(), push(8, "e"));
        // The history lost 2-3 and 5-6; it still has 7.
        let read = HistoryRead {
            top: Some(Position::new(8, Epoch::parse("e").unwrap())),
            publications: vec![push(7, "e"), push(8, "e")],
            ..HistoryRead::default()
        };
        let filled = s.fetched(&topic(), Some(read));
        assert_eq!(offsets(&filled.deliver), [4, 7, 8]);
        let e = || Epoch::parse("e").unwrap();
        assert_eq!(
            filled.lost,
            [(0, Position::new(3, e())), (1, Position::new(6, e()))]
        );
    }

    #[test]
    fn past_the_node_budget_the_stream_holding_the_most_gives_its_hole_up() {
        let frame = push(1, "e").frame.len();
        let mut s = Sequencer::with_budget(4 * frame);
        let other = Topic::App(AppName::parse("other", 128).unwrap());
        for t in [topic(), other.clone()] {
            let _ = s.accept(&t, push(1, "e"));
            assert!(s.accept(&t, push(3, "e")).fetch.is_some());
        }
        assert!(s.accept(&topic(), push(4, "e")).deliver.is_empty());
        assert!(s.accept(&topic(), push(5, "e")).deliver.is_empty());
        assert_eq!(s.waiting_bytes, 4 * frame);
        // `other`'s arrival goes past the budget, but `topic` holds the most: it gives up.
        let accepted = s.accept(&other, push(4, "e"));
        assert!(accepted.deliver.is_empty() && accepted.lost.is_empty());
        let (given_up, filled) = accepted.given_up.unwrap();
        assert_eq!(given_up, topic());
        assert_eq!(offsets(&filled.deliver), [3, 4, 5]);
        assert_eq!(
            filled.lost,
            [(0, Position::new(2, Epoch::parse("e").unwrap()))]
        );
        assert_eq!(s.waiting_bytes, 2 * frame, "other's 3 and 4 still wait");
        // Its read's late answer changes nothing; the stream goes on from 5.
        assert!(s.fetched(&topic(), None).deliver.is_empty());
        assert_eq!(offsets(&s.accept(&topic(), push(6, "e")).deliver), [6]);

        // When the arrival's own stream holds the most, its answer carries what it held.
        for offset in [5, 6, 7] {
            let accepted = s.accept(&other, push(offset, "e"));
            if offset < 7 {
                assert!(accepted.deliver.is_empty());
            } else {
                assert_eq!(offsets(&accepted.deliver), [3, 4, 5, 6, 7]);
                assert_eq!(accepted.lost[0].1.offset, 2);
                assert!(accepted.given_up.is_none() && accepted.fetch.is_none());
            }
        }
        assert_eq!(s.waiting_bytes, 0);
        s.forget(&other);
        assert_eq!(s.waiting_bytes, 0);
    }

    #[test]
    fn a_new_run_while_a_hole_is_read_passes_on_what_waited_and_late_old_pushes_are_stale() {
        let mut s = Sequencer::default();
        let _ = s.accept(&topic(), push(1, "e1"));
        let _ = s.accept(&topic(), push(3, "e1"));
        // The broker lost its data; a push of the new run arrives while 2 is read.
        let new_run = s.accept(&topic(), push(1, "e2"));
        assert_eq!(offsets(&new_run.deliver), [3, 1]);
        let e = |name: &str| Epoch::parse(name).unwrap();
        assert_eq!(
            new_run.lost,
            [
                (0, Position::new(2, e("e1"))),
                (1, Position::new(0, e("e2")))
            ]
        );
        // The read of the old run answers late: ignored. A late push of the old run is stale.
        assert!(s.fetched(&topic(), None).deliver.is_empty());
        assert!(s.accept(&topic(), push(4, "e1")).duplicate);
        assert_eq!(offsets(&s.accept(&topic(), push(2, "e2")).deliver), [2]);
    }
}
