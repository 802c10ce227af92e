//! The node: owns the hub and the connections' outboxes (and, soon, the broker).
//!
//! The hub and the outboxes sit behind one lock. Every input goes through [`Node::handle`],
//! which applies the hub's actions before returning: replies and deliveries are queued to
//! outboxes (never awaited), closes are requested. The lock is never held across an
//! `.await`, and the work under it is bounded by the number of recipients (a refcount
//! increment and a queue push each), or by one page of `/stat` ([`Node::stat_page`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_core::{Action, AppName, ConnId, Frame, Hub, HubConfig, Input, Stat, StatPage};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::ws::close::CloseReason;
use crate::ws::outbox::Outbox;

#[derive(Debug)]
struct Inner {
    hub: Hub,
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    /// Set once by [`Node::shut_down`]: every outbox, even one attached later, closes.
    closing: bool,
}

/// The node: owns the hub and the connections' outboxes (and, soon, the broker).
#[derive(Debug)]
pub struct Node {
    inner: Mutex<Inner>,
}

fn to_message(frame: Frame) -> Message {
    let text = Utf8Bytes::try_from(frame.into_bytes()).expect("frames are valid UTF-8");
    Message::Text(text)
}

impl Node {
    /// Apps per page of `/stat`: the lock is held for one page (some tens of µs with 128-byte
    /// names), so pushes wait for that at most, whatever the number of apps.
    pub const STAT_PAGE_APPS: usize = 512;

    pub fn new(config: HubConfig) -> Self {
        Node {
            inner: Mutex::new(Inner {
                hub: Hub::new(config),
                outboxes: HashMap::new(),
                closing: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The hub completes each input before returning; a poisoned lock means a bug in it
        // that has already been reported, and refusing every later client would be worse.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the hub a connection's outbox, before its first input.
    pub(crate) fn attach(&self, conn: ConnId, outbox: Arc<Outbox>) {
        let mut inner = self.lock();
        if inner.closing {
            outbox.close(CloseReason::ShuttingDown.code());
        }
        inner.outboxes.insert(conn, outbox);
    }

    /// Asks every connection to close with 1001 after the frames already queued to it.
    pub(crate) fn shut_down(&self) {
        let mut inner = self.lock();
        inner.closing = true;
        for outbox in inner.outboxes.values() {
            outbox.close(CloseReason::ShuttingDown.code());
        }
    }

    /// Forgets a connection that has ended, whatever its state.
    pub(crate) fn detach(&self, conn: ConnId) {
        let mut inner = self.lock();
        inner.remove_outbox(conn);
        inner.hub.handle(Input::Disconnected { conn });
        inner.apply();
    }

    /// Feeds one input to the hub and carries out what it asks for.
    pub fn handle(&self, input: Input<'_>) {
        let mut inner = self.lock();
        inner.hub.handle(input);
        inner.apply();
    }

    /// The counts of `GET /stat`, read [`Node::STAT_PAGE_APPS`] at a time with the lock
    /// released in between: each page is consistent, the whole is not an atomic snapshot (an
    /// app that appears or goes away meanwhile is listed or not depending on where it sorts).
    pub fn stat(&self) -> Stat {
        let mut stat = Stat::default();
        let mut after: Option<AppName> = None;
        loop {
            let page = self.stat_page(after.as_ref(), Self::STAT_PAGE_APPS);
            after = page.resume_after().cloned();
            stat.apps.extend(page.apps);
            if after.is_none() {
                return stat;
            }
        }
    }

    /// One page of `GET /stat` (see [`Hub::stat_page`]), under the lock for O(limit) work.
    pub fn stat_page(&self, after: Option<&AppName>, limit: usize) -> StatPage {
        self.lock().hub.stat_page(after, limit)
    }

    /// The number of authenticated connections.
    pub fn connection_count(&self) -> usize {
        self.lock().hub.connection_count()
    }
}

impl Inner {
    /// Forgets an outbox; the table gives its memory back once it is mostly empty (amortized,
    /// like the hub's tables), so RSS falls after a crowd of connections left.
    fn remove_outbox(&mut self, conn: ConnId) -> Option<Arc<Outbox>> {
        let outbox = self.outboxes.remove(&conn);
        let capacity = self.outboxes.capacity();
        if capacity > 64 && self.outboxes.len() <= capacity / 4 {
            self.outboxes.shrink_to(self.outboxes.len() * 2);
        }
        outbox
    }

    fn apply(&mut self) {
        while let Some(action) = self.hub.poll_action() {
            match action {
                Action::Reply { conn, frame } | Action::Subscribed { conn, frame, .. } => {
                    if let Some(outbox) = self.outboxes.get(&conn)
                        && outbox.push(to_message(frame)).is_err()
                    {
                        self.hub.handle(Input::OutboxFull { conn });
                    }
                }
                Action::Deliver { conns, frame } => {
                    let message = to_message(frame);
                    for conn in conns {
                        if let Some(outbox) = self.outboxes.get(&conn)
                            && outbox.push(message.clone()).is_err()
                        {
                            // Queues a Close; the loop applies it after this delivery.
                            self.hub.handle(Input::OutboxFull { conn });
                        }
                    }
                }
                Action::Close { conn, code } => {
                    if let Some(outbox) = self.remove_outbox(conn) {
                        outbox.close(code);
                    }
                }
                // Interest matters to a broker only; a single node has every topic already.
                Action::InterestGained(_) | Action::InterestLost(_) => {}
                other => debug_assert!(false, "an action this driver does not know: {other:?}"),
            }
        }
    }
}
