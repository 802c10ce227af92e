//! Where each stream subscribed with recovery stands: the position the client last handed out
//! (the `since` of its next resubscription), the de-duplication of pushes against it, and the
//! counters of [`ClientStats`]. No I/O here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::{ClientStats, Event, Position, Push};
use crate::protocol::Reply;

/// The counters behind [`ClientStats`], shared with every `Client` handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    duplicates_dropped: AtomicU64,
    offsets_skipped: AtomicU64,
    losses_announced: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ClientStats {
        ClientStats {
            duplicates_dropped: self.duplicates_dropped.load(Ordering::Relaxed),
            offsets_skipped: self.offsets_skipped.load(Ordering::Relaxed),
            losses_announced: self.losses_announced.load(Ordering::Relaxed),
        }
    }
}

/// The apps subscribed with recovery whose subscription the gateway accepted, each with the
/// newest position the client knows of: the last push it handed out, or where the gateway said
/// the stream stood ([`Position::start`] when it named none).
#[derive(Debug, Default)]
pub(crate) struct Streams {
    positions: HashMap<String, Position>,
    counters: Arc<Counters>,
}

impl Streams {
    pub(crate) fn new(counters: Arc<Counters>) -> Streams {
        Streams {
            positions: HashMap::new(),
            counters,
        }
    }

    /// Whether `app` was subscribed with recovery (and the client keeps it).
    pub(crate) fn is_recovering(&self, app: &str) -> bool {
        self.positions.contains_key(app)
    }

    /// The position to resubscribe from (`since`).
    pub(crate) fn since(&self, app: &str) -> Option<&Position> {
        self.positions.get(app)
    }

    /// Stops tracking `app` (unsubscribed, removed by the gateway, subscribed again without
    /// recovery).
    pub(crate) fn forget(&mut self, app: &str) {
        self.positions.remove(app);
    }

    /// The gateway accepted a subscribe with recovery with `reply`. With `"recovered":true`
    /// every missed push follows, so the client's position stays where it is (the reply's
    /// offset is the newest, not the next to come). Otherwise the client continues from the
    /// reply's position; `"recovered":false` means pushes were lost, which becomes an event.
    pub(crate) fn subscribed(&mut self, app: &str, reply: &Reply) -> Option<Event> {
        let now = reply.position.clone().unwrap_or_else(Position::start);
        match reply.recovered {
            Some(true) => {
                self.positions.entry(app.to_owned()).or_insert(now);
                None
            }
            Some(false) => Some(self.lost(app, reply.position.clone())),
            None => {
                self.advance(app, now);
                None
            }
        }
    }

    /// The gateway says pushes of `app` were lost and the stream now stands at `position`:
    /// the client continues from there.
    pub(crate) fn lost(&mut self, app: &str, position: Option<Position>) -> Event {
        self.counters
            .losses_announced
            .fetch_add(1, Ordering::Relaxed);
        if self.is_recovering(app) {
            self.advance(app, position.clone().unwrap_or_else(Position::start));
        }
        Event::PushesLost {
            app: app.to_owned(),
            position,
        }
    }

    /// Whether to hand `push` out. A positioned push of a tracked stream whose offset is not
    /// past the last one of its epoch is a duplicate: dropped and counted. Otherwise its
    /// position becomes the stream's, and offsets it skipped within the epoch are counted.
    pub(crate) fn admit(&mut self, push: &Push) -> bool {
        let (Some(position), Some(last)) = (&push.position, self.positions.get_mut(&push.app))
        else {
            return true;
        };
        if position.epoch == last.epoch {
            if position.offset <= last.offset {
                self.counters
                    .duplicates_dropped
                    .fetch_add(1, Ordering::Relaxed);
                return false;
            }
            skipped(&self.counters, position.offset - last.offset - 1);
        } else if *last == Position::start() {
            // A run's offsets start at 1, and "start" stands before its first push.
            skipped(&self.counters, position.offset.saturating_sub(1));
        }
        *last = position.clone();
        true
    }

    /// Moves `app`'s position to `to`: forward within one epoch (never back, since pushes
    /// may have been handed out past a reply's offset), or to `to` in another epoch.
    fn advance(&mut self, app: &str, to: Position) {
        match self.positions.get_mut(app) {
            Some(last) if last.epoch == to.epoch => last.offset = last.offset.max(to.offset),
            Some(last) => *last = to,
            None => {
                self.positions.insert(app.to_owned(), to);
            }
        }
    }
}

fn skipped(counters: &Counters, offsets: u64) {
    if offsets > 0 {
        counters
            .offsets_skipped
            .fetch_add(offsets, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn push(app: &str, offset: u64, epoch: &str) -> Push {
        Push {
            app: app.into(),
            member_id: -1,
            text: offset.to_string(),
            position: Some(Position::new(offset, epoch)),
        }
    }

    fn reply(recovered: Option<bool>, position: Option<(u64, &str)>) -> Reply {
        Reply {
            code: 200,
            message: "subscribe a success".into(),
            recovered,
            position: position.map(|(offset, epoch)| Position::new(offset, epoch)),
        }
    }

    fn streams() -> (Streams, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (Streams::new(counters.clone()), counters)
    }

    #[test]
    fn pushes_move_the_position_and_duplicates_are_dropped_and_counted() {
        let (mut streams, counters) = streams();
        assert!(
            streams
                .subscribed("a", &reply(None, Some((4, "e"))))
                .is_none()
        );
        assert_eq!(streams.since("a"), Some(&Position::new(4, "e")));
        assert!(streams.admit(&push("a", 5, "e")));
        assert!(!streams.admit(&push("a", 5, "e")));
        assert!(!streams.admit(&push("a", 3, "e")));
        assert!(streams.admit(&push("a", 6, "e")));
        assert_eq!(streams.since("a"), Some(&Position::new(6, "e")));
        // Untracked apps and pushes without positions pass untouched.
        assert!(streams.admit(&push("b", 1, "e")));
        let mut plain = push("a", 1, "e");
        plain.position = None;
        assert!(streams.admit(&plain));
        let stats = counters.snapshot();
        assert_eq!((stats.duplicates_dropped, stats.offsets_skipped), (2, 0));
    }

    #[test]
    fn skipped_offsets_are_counted_within_an_epoch_and_from_the_start() {
        let (mut streams, counters) = streams();
        streams.subscribed("a", &reply(None, None));
        assert_eq!(streams.since("a"), Some(&Position::start()));
        assert!(streams.admit(&push("a", 3, "e")));
        assert!(streams.admit(&push("a", 7, "e")));
        // A new epoch is a new run: nothing to compare with.
        assert!(streams.admit(&push("a", 9, "f")));
        assert_eq!(counters.snapshot().offsets_skipped, 2 + 3);
    }

    #[test]
    fn replies_set_where_the_client_continues() {
        let (mut streams, counters) = streams();
        streams.subscribed("a", &reply(None, Some((4, "e"))));
        streams.admit(&push("a", 6, "e"));
        // Recovered: the missed pushes follow, the position stays.
        assert!(
            streams
                .subscribed("a", &reply(Some(true), Some((9, "e"))))
                .is_none()
        );
        assert_eq!(streams.since("a"), Some(&Position::new(6, "e")));
        // Not recovered: an event, and the client continues from the reply's position.
        match streams.subscribed("a", &reply(Some(false), Some((2, "f")))) {
            Some(Event::PushesLost { app, position }) => {
                assert_eq!((app.as_str(), position), ("a", Some(Position::new(2, "f"))));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(streams.since("a"), Some(&Position::new(2, "f")));
        // A reply never moves the position back within an epoch.
        streams.subscribed("a", &reply(None, Some((1, "f"))));
        assert_eq!(streams.since("a"), Some(&Position::new(2, "f")));
        // The 409 notice: the client continues from its position.
        streams.lost("a", Some(Position::new(8, "f")));
        assert_eq!(streams.since("a"), Some(&Position::new(8, "f")));
        assert!(streams.admit(&push("a", 9, "f")));
        assert_eq!(counters.snapshot().losses_announced, 2);
        assert_eq!(counters.snapshot().offsets_skipped, 1); // 4 -> 6 before
        streams.forget("a");
        assert!(!streams.is_recovering("a"));
    }
}
