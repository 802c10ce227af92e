//! Frames held back until the broker confirms a topic.
//!
//! A client that saw "subscribe X success" must receive every push accepted after it. On one
//! node that holds by construction; with a broker, pushes to X reach this node only once the
//! broker confirmed its subscription to X. So the reply confirming a subscription to a topic
//! that is not live yet waits here, and so does everything queued to that connection after it
//! (a connection's frames never overtake each other), until the broker says the topic is live
//! ([`gateway_broker::BrokerEvent::Subscribed`]) or the interest is gone.
//!
//! Nothing is held on a single node (the local broker's topics are live at once), and a
//! delivery checks one empty map before taking the usual path, so the push path is unchanged.

use std::collections::{HashMap, VecDeque};

use gateway_core::{ConnId, Topic};
use tokio_tungstenite::tungstenite::Message;

/// Held frames per connection, and which connections wait for each pending topic.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// In order; an entry with a topic waits until that topic is live, and everything after
    /// it waits with it.
    queues: HashMap<ConnId, VecDeque<(Option<Topic>, Message)>>,
    /// Connections with an entry waiting for the topic. May name a connection whose queue is
    /// gone (closed meanwhile): releasing skips it.
    waiting: HashMap<Topic, Vec<ConnId>>,
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
        limit: usize,
    ) -> Result<(), Overflow> {
        let queue = self.queues.entry(conn).or_default();
        if queue.len() >= limit {
            return Err(Overflow);
        }
        if let Some(topic) = &until {
            self.waiting.entry(topic.clone()).or_default().push(conn);
        }
        queue.push_back((until, message));
        Ok(())
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
            while let Some((until, _)) = queue.front() {
                if until.as_ref().is_some_and(&pending) {
                    break;
                }
                let (_, message) = queue.pop_front().expect("front exists");
                released.push((conn, message));
            }
            if queue.is_empty() {
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

    #[test]
    fn frames_wait_for_their_topic_and_keep_their_order() {
        let mut held = Held::default();
        let conn = ConnId::new(1);
        held.hold(conn, Some(topic("a")), text("subscribe a"), 10)
            .unwrap();
        held.hold(conn, None, text("push b"), 10).unwrap();
        held.hold(conn, Some(topic("c")), text("subscribe c"), 10)
            .unwrap();
        held.hold(conn, None, text("push a"), 10).unwrap();
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
    fn a_connection_holds_at_most_its_limit_and_a_closed_one_is_forgotten() {
        let mut held = Held::default();
        let conn = ConnId::new(1);
        held.hold(conn, Some(topic("a")), text("1"), 2).unwrap();
        held.hold(conn, None, text("2"), 2).unwrap();
        assert!(held.hold(conn, None, text("3"), 2).is_err());
        held.forget(conn);
        assert!(held.is_empty());
        assert!(held.release(&topic("a"), |_| false).is_empty());
    }
}
