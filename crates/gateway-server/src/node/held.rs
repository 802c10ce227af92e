//! Frames held back until the broker confirms a topic.
//!
//! A client that saw "subscribe X success" must receive every push accepted after it. On one
//! node that holds by construction; with a broker, pushes to X reach this node only once the
//! broker confirmed its subscription to X. So the reply confirming a subscription to a topic
//! that is not live yet waits here, and so does everything queued to that connection after it
//! (a connection's frames never overtake each other), until the broker says the topic is live
//! ([`gateway_broker::BrokerEvent::Subscribed`]) or the interest is gone.
//!
//! A recovery (a subscription with `recover` or `since`, see `node::recovery`) holds the same
//! way: its place in the connection's queue is kept by an entry that becomes the reply and the
//! replayed pushes once the history is read, and the live pushes queued behind it that the
//! replay already carried are left out then.
//!
//! Nothing is held on a single node (the local broker's topics are live at once), and a
//! delivery checks one empty map before taking the usual path, so the push path is unchanged.

use std::collections::{HashMap, VecDeque};

use gateway_core::{AppName, ConnId, Position, Topic};
use tokio_tungstenite::tungstenite::Message;

/// Held frames per connection, and which connections wait for each pending topic.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// In order; an entry with a topic waits until that topic is live, and everything after
    /// it waits with it.
    queues: HashMap<ConnId, Queue>,
    /// Connections with an entry waiting for the topic. May name a connection whose queue is
    /// gone (closed meanwhile): releasing skips it.
    waiting: HashMap<Topic, Vec<ConnId>>,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<(Option<Topic>, Item)>,
    /// The payload bytes of `entries`.
    bytes: usize,
}

/// What a held entry is.
#[derive(Debug)]
pub(super) enum Item {
    /// A frame, sent as it is.
    Frame(Message),
    /// A push of a subscription with history: a recovery completed behind it may leave it out.
    Push {
        message: Message,
        app: AppName,
        position: Position,
    },
    /// The place of recovery `id`'s reply and replay: it blocks everything behind it until
    /// [`Held::complete_recovery`] replaces it.
    Recovery(u64),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Frame(message) | Item::Push { message, .. } => message.len(),
            Item::Recovery(_) => 0,
        }
    }

    fn into_message(self) -> Option<Message> {
        match self {
            Item::Frame(message) | Item::Push { message, .. } => Some(message),
            Item::Recovery(_) => None,
        }
    }
}

/// The most a connection may have held: `limits.outbox_messages` and `limits.outbox_bytes`,
/// as for its outbox (one frame always fits an empty queue).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

/// Holding one more frame would exceed the connection's bound: it does not keep up (or the
/// broker does not answer), like a full outbox.
#[derive(Debug)]
pub(super) struct Overflow;

impl Held {
    /// Whether nothing is held for anyone: the fast path.
    pub(super) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Whether frames for `conn` are held (so a new one must queue behind them).
    pub(super) fn holds(&self, conn: ConnId) -> bool {
        !self.queues.is_empty() && self.queues.contains_key(&conn)
    }

    /// Holds `message` for `conn`, behind what is held already; with `until`, it (and what
    /// follows it) waits until that topic is released.
    pub(super) fn hold(
        &mut self,
        conn: ConnId,
        until: Option<Topic>,
        message: Message,
        limits: HeldLimits,
    ) -> Result<(), Overflow> {
        self.hold_item(conn, until, Item::Frame(message), limits)
    }

    /// Holds `item` for `conn` (see [`Held::hold`]).
    pub(super) fn hold_item(
        &mut self,
        conn: ConnId,
        until: Option<Topic>,
        item: Item,
        limits: HeldLimits,
    ) -> Result<(), Overflow> {
        let queue = self.queues.entry(conn).or_default();
        let len = item.len();
        if queue.entries.len() >= limits.messages
            || (!queue.entries.is_empty() && queue.bytes + len > limits.bytes)
        {
            return Err(Overflow);
        }
        if let Some(topic) = &until {
            self.waiting.entry(topic.clone()).or_default().push(conn);
        }
        queue.bytes += len;
        queue.entries.push_back((until, item));
        Ok(())
    }

    /// Recovery `id` of `conn` is done: its entry becomes `frames` (the reply, then the
    /// replayed pushes), the pushes held behind it for which `replayed` is true are left out,
    /// and what is no longer blocked is returned, in order.
    pub(super) fn complete_recovery(
        &mut self,
        conn: ConnId,
        id: u64,
        frames: Vec<Message>,
        replayed: impl Fn(&AppName, &Position) -> bool,
        pending: impl Fn(&Topic) -> bool,
    ) -> Vec<(ConnId, Message)> {
        let Some(queue) = self.queues.get_mut(&conn) else {
            return Vec::new();
        };
        let Some(at) = queue
            .entries
            .iter()
            .position(|(_, item)| matches!(item, Item::Recovery(r) if *r == id))
        else {
            return Vec::new();
        };
        let (until, _) = queue.entries.remove(at).expect("found above");
        let mut behind: VecDeque<(Option<Topic>, Item)> = queue.entries.split_off(at);
        behind.retain(|(_, item)| match item {
            Item::Push { app, position, .. } => !replayed(app, position),
            _ => true,
        });
        let mut first = true;
        for message in frames {
            // The first frame (the reply) keeps the entry's topic gate, if any.
            let gate = if first { until.clone() } else { None };
            first = false;
            queue.entries.push_back((gate, Item::Frame(message)));
        }
        queue.entries.append(&mut behind);
        queue.bytes = queue.entries.iter().map(|(_, item)| item.len()).sum();
        let mut released = Vec::new();
        Self::drain_front(conn, queue, &pending, &mut released);
        if queue.entries.is_empty() {
            self.queues.remove(&conn);
        }
        released
    }

    /// Takes entries from the front of `queue` up to the first one still blocked.
    fn drain_front(
        conn: ConnId,
        queue: &mut Queue,
        pending: &impl Fn(&Topic) -> bool,
        released: &mut Vec<(ConnId, Message)>,
    ) {
        while let Some((until, item)) = queue.entries.front() {
            if until.as_ref().is_some_and(pending) || matches!(item, Item::Recovery(_)) {
                break;
            }
            let (_, item) = queue.entries.pop_front().expect("front exists");
            queue.bytes -= item.len();
            if let Some(message) = item.into_message() {
                released.push((conn, message));
            }
        }
    }

    /// Takes the connections waiting for `topic` (their frames stay held; the caller closes
    /// them and forgets their frames).
    pub(super) fn take_waiting(&mut self, topic: &Topic) -> Vec<ConnId> {
        self.waiting.remove(topic).unwrap_or_default()
    }

    /// `topic` is live (or no longer wanted): the frames of every connection that waited for
    /// it, up to the next entry that waits for a topic still in `pending`, in order.
    pub(super) fn release(
        &mut self,
        topic: &Topic,
        pending: impl Fn(&Topic) -> bool,
    ) -> Vec<(ConnId, Message)> {
        let mut released = Vec::new();
        for conn in self.waiting.remove(topic).unwrap_or_default() {
            let Some(queue) = self.queues.get_mut(&conn) else {
                continue;
            };
            Self::drain_front(conn, queue, &pending, &mut released);
            if queue.entries.is_empty() {
                self.queues.remove(&conn);
            }
        }
        released
    }

    /// Drops whatever is held for a connection that is closed or gone.
    pub(super) fn forget(&mut self, conn: ConnId) {
        if !self.queues.is_empty() {
            self.queues.remove(&conn);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gateway_core::AppName;

    fn topic(name: &str) -> Topic {
        Topic::App(AppName::parse(name, 128).unwrap())
    }

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    const ROOMY: HeldLimits = HeldLimits {
        messages: 10,
        bytes: 1 << 20,
    };

    #[test]
    fn frames_wait_for_their_topic_and_keep_their_order() {
        let mut held = Held::default();
        let conn = ConnId::new(1);
        held.hold(conn, Some(topic("a")), text("subscribe a"), ROOMY)
            .unwrap();
        held.hold(conn, None, text("push b"), ROOMY).unwrap();
        held.hold(conn, Some(topic("c")), text("subscribe c"), ROOMY)
            .unwrap();
        held.hold(conn, None, text("push a"), ROOMY).unwrap();
        assert!(held.holds(conn));
        // c is confirmed first: nothing moves, a is still pending at the front.
        let pending = |t: &Topic| *t == topic("a");
        assert!(held.release(&topic("c"), pending).is_empty());
        // a is confirmed: everything goes, in order.
        let released: Vec<String> = held
            .release(&topic("a"), |_| false)
            .into_iter()
            .map(|(_, m)| m.into_text().unwrap().to_string())
            .collect();
        assert_eq!(released, ["subscribe a", "push b", "subscribe c", "push a"]);
        assert!(held.is_empty());
    }

    #[test]
    fn a_connection_holds_at_most_its_limits_and_a_closed_one_is_forgotten() {
        let mut held = Held::default();
        let conn = ConnId::new(1);
        let two = HeldLimits {
            messages: 2,
            bytes: 1 << 20,
        };
        held.hold(conn, Some(topic("a")), text("1"), two).unwrap();
        held.hold(conn, None, text("2"), two).unwrap();
        assert!(held.hold(conn, None, text("3"), two).is_err(), "messages");
        // Bytes: a frame always fits an empty queue, and then no more than the budget.
        let tiny = HeldLimits {
            messages: 10,
            bytes: 4,
        };
        let other = ConnId::new(2);
        held.hold(other, Some(topic("a")), text("12345678"), tiny)
            .unwrap();
        assert!(held.hold(other, None, text("1"), tiny).is_err(), "bytes");
        held.forget(conn);
        held.forget(other);
        assert!(held.is_empty());
        assert!(held.release(&topic("a"), |_| false).is_empty());
    }
}
