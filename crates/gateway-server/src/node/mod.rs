//! The node: owns the hub, the connections' outboxes and the broker.
//!
//! The hub and the outboxes sit behind one lock. Every input goes through [`Node::handle`],
//! which applies the hub's actions before returning: replies and deliveries are queued to
//! outboxes (never awaited), closes are requested, interest changes are handed to the broker
//! (which must not block). The lock is never held across an `.await`, and the work under it is
//! bounded by the number of recipients (a refcount increment and a queue push each), by one
//! page of `/stat` ([`Node::stat_page`]) or of presence (O(log n + page), the members are kept
//! sorted), or by one member's connections (`/disconnect`, a member's presence).
//!
//! A push goes out through the broker and comes back through it ([`Node::publish`], then
//! [`Inbound::publication`]), on one node as on many: the local broker hands it straight back
//! (no allocation, no task), Redis and NATS carry it to every node with interest. A node never
//! delivers a push it accepted by a short-cut as well, so each subscriber receives it once, and
//! all of an app's subscribers receive its pushes in the order the broker serialised them.

mod batch;
pub(crate) mod control;
mod held;
#[cfg(test)]
mod history_tests;
pub(crate) mod outbox;
mod positioned;
mod recovery;
mod report;
mod sequencer;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use gateway_broker::local::LocalBroker;
use gateway_broker::{
    Broker, BrokerError, BrokerEvent, BrokerState, Inbound, SharedBroker, Subscription,
};
use gateway_core::history::History;
use gateway_core::{
    Action, AppName, CloseCode, ConnId, Epoch, Frame, HistoryPolicy, HistoryRead, Hub, HubConfig,
    Input, Publication, Since, Stat, StatPage, Timestamp, Topic,
};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{error, info, warn};

use crate::counters::{Counters, HistoryCounters};
use held::Held;
pub(crate) use held::HeldLimits;
use outbox::Outbox;
use recovery::{Purpose, Read, Recoveries};
pub(crate) use report::run_reporter;
use sequencer::Sequencer;

#[derive(Debug)]
struct Inner {
    hub: Hub,
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    /// Set once by [`Node::shut_down`], with the code: every outbox, even one attached
    /// later, closes.
    closing: Option<CloseCode>,
    /// Topics whose broker subscription was requested and not confirmed yet, with the number
    /// of the latest request (a confirmation of an older one — subscribed, unsubscribed,
    /// subscribed again — does not count) and when the first request still pending was made.
    pending: HashMap<Topic, Pending>,
    next_seq: u64,
    held: Held,
    held_limits: HeldLimits,
    /// Frames queued to outboxes since start (a plain count: it is only touched under the
    /// lock); `/metrics` subtracts the frames the connections took to get the outboxes' depth.
    queued_frames: u64,
    counters: Arc<Counters>,
    /// The node's own history, when its broker keeps none (the local broker): positions are
    /// given here, under the lock, in the order pushes reach the hub.
    history: Option<History>,
    /// Which apps keep history (the hub's copy of `[history]`).
    policy: HistoryPolicy,
    /// Subscriptions with history waiting for their read, and what their replays covered.
    recoveries: Recoveries,
    /// The broker's positioned publications put back in order (brokers that keep history).
    sequencer: Sequencer,
    /// The origin of [`Timestamp`]s (the node's `started`).
    started: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    since: Instant,
}

/// The node: owns the hub, the connections' outboxes and the broker.
pub struct Node {
    inner: Mutex<Inner>,
    /// Set once, right after the node is made: the broker needs the node (as its
    /// [`Inbound`]) to be made.
    broker: OnceLock<SharedBroker>,
    /// A copy of the hub's, so a push finds its topic without taking the lock.
    hub_config: HubConfig,
    counters: Arc<Counters>,
    /// At most one broker warning per second in the log; the counters count them all.
    log_gate: LogGate,
    /// The cluster's questions and answers (`/disconnect`, `/presence`).
    control: control::Control,
    /// The origin of the node's [`Timestamp`]s (history's TTLs).
    started: Instant,
    /// The node itself, for the tasks it starts (history reads).
    me: OnceLock<Weak<Node>>,
    /// History reads running at once against the broker (see [`Node::MAX_HISTORY_READS`]).
    read_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("broker", &self.broker.get())
            .finish_non_exhaustive()
    }
}

/// Before each try of a history read: at once, then twice more, about 1.2 s in all.
const READ_RETRY_DELAYS_MS: [u64; 3] = [0, 300, 900];

fn timestamp(started: Instant) -> Timestamp {
    Timestamp::from_millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

fn to_message(frame: Frame) -> Message {
    let text = Utf8Bytes::try_from(frame.into_bytes()).expect("frames are valid UTF-8");
    Message::Text(text)
}

impl Node {
    /// Apps per page of `/stat`: the lock is held for one page (some tens of µs with 128-byte
    /// names), so pushes wait for that at most, whatever the number of apps.
    pub const STAT_PAGE_APPS: usize = 512;

    /// History reads a node runs against its broker at once; more wait for a slot. Enough to
    /// keep a Redis or NATS connection's pipeline busy, few enough that a reconnect with
    /// thousands of topics does not flood the broker.
    pub const MAX_HISTORY_READS: usize = 32;

    /// A node on its own: the local broker.
    pub fn local(config: HubConfig, counters: Arc<Counters>) -> Arc<Node> {
        // Nothing is ever held with the local broker: its topics are live at once.
        let unbounded = HeldLimits {
            messages: usize::MAX,
            bytes: usize::MAX,
        };
        Node::with_broker(config, unbounded, counters, |inbound| {
            Ok(LocalBroker::new(inbound) as SharedBroker)
        })
        .expect("the local broker cannot fail")
    }

    /// A node whose broker `connect` makes, given the node as the broker's [`Inbound`].
    /// `held_limits` bound the frames held for one connection while its broker subscription
    /// is being confirmed.
    pub(crate) fn with_broker(
        config: HubConfig,
        held_limits: HeldLimits,
        counters: Arc<Counters>,
        connect: impl FnOnce(Weak<dyn Inbound>) -> Result<SharedBroker, BrokerError>,
    ) -> Result<Arc<Node>, BrokerError> {
        let started = Instant::now();
        let policy = config.history.clone();
        let node = Arc::new(Node {
            hub_config: config.clone(),
            inner: Mutex::new(Inner {
                hub: Hub::new(config),
                outboxes: HashMap::new(),
                closing: None,
                pending: HashMap::new(),
                next_seq: 0,
                held: Held::default(),
                held_limits,
                queued_frames: 0,
                counters: counters.clone(),
                history: None,
                policy: policy.clone(),
                recoveries: Recoveries::default(),
                sequencer: Sequencer::default(),
                started,
            }),
            broker: OnceLock::new(),
            counters,
            log_gate: LogGate::default(),
            control: control::Control::default(),
            started,
            me: OnceLock::new(),
            read_slots: tokio::sync::Semaphore::new(Self::MAX_HISTORY_READS),
        });
        node.me.set(Arc::downgrade(&node)).expect("set once, here");
        let weak: Weak<dyn Inbound> = Arc::downgrade(&node) as Weak<dyn Inbound>;
        let broker = connect(weak)?;
        if !broker.keeps_history() {
            // A new seed per process: a restarted node starts new runs, never reuses an
            // epoch whose pushes it forgot.
            let seed = Epoch::from_random(fastrand::u64(..));
            node.lock().history =
                Some(History::new(node.hub_config.history.clone(), seed.as_str()));
        }
        node.broker
            .set(broker)
            .expect("the broker is set once, here");
        Ok(node)
    }

    /// Now, as the history's clock reads it.
    pub(crate) fn now(&self) -> Timestamp {
        timestamp(self.started)
    }

    /// Releases the lock, then starts the history reads that what was done under it asked
    /// for (they await the broker, which must never happen under the lock).
    fn unlock(&self, mut inner: MutexGuard<'_, Inner>) {
        let reads = std::mem::take(&mut inner.recoveries.reads);
        drop(inner);
        if reads.is_empty() {
            return;
        }
        let (Some(node), Ok(runtime)) = (
            self.me.get().and_then(Weak::upgrade),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        for read in reads {
            let node = node.clone();
            runtime.spawn(async move {
                // Bounded: a broker reconnect can ask for one read per topic, and a crowd of
                // clients reconnecting at once for one each.
                let _slot = node.read_slots.acquire().await;
                let mut result = Err(BrokerError::Unavailable("not read yet".into()));
                // A read right after a broker reconnect can meet a connection not yet
                // restored: retry a little before answering "not recovered" or "lost".
                for delay_ms in READ_RETRY_DELAYS_MS {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    let since = read.since.clone();
                    result = node.broker().history(&read.topic, since, read.limit).await;
                    if result.is_ok() {
                        break;
                    }
                }
                node.read_done(read, result);
            });
        }
    }

    /// A history read started by [`Node::unlock`] answered.
    fn read_done(&self, read: Read, result: Result<HistoryRead, BrokerError>) {
        let result = match result {
            Ok(found) => Some(found),
            Err(err) => {
                HistoryCounters::add(&self.counters.history.reads_failed);
                if self.log_gate.allow() {
                    warn!(topic = %read.topic, %err, "history read failed");
                }
                None
            }
        };
        let mut inner = self.lock();
        match read.purpose {
            Purpose::Recovery(id) => inner.complete_recovery(id, result),
            Purpose::Hole => inner.fill_hole(&read.topic, result, self.broker()),
        }
        inner.apply(self.broker());
        self.unlock(inner);
    }

    /// Drops what outlived its TTL from the node's own history (the local broker), so idle
    /// streams give their memory back without waiting for a push or a read.
    pub(crate) fn expire_history(&self) {
        let now = self.now();
        if let Some(history) = self.lock().history.as_mut() {
            history.expire(now);
        }
    }

    /// Reads `topic`'s history (see [`Broker::history`]): from the node's own memory with the
    /// local broker, else from the broker.
    pub async fn history(
        &self,
        topic: &Topic,
        since: Option<Since>,
        limit: usize,
    ) -> Result<HistoryRead, BrokerError> {
        let now = self.now();
        let read = {
            let mut inner = self.lock();
            inner
                .history
                .as_mut()
                .map(|history| history.read(topic, since.as_ref(), limit, now))
        };
        match read {
            Some(read) => Ok(read),
            None => self.broker().history(topic, since, limit).await,
        }
    }

    pub fn broker(&self) -> &dyn Broker {
        self.broker
            .get()
            .expect("set when the node is made")
            .as_ref()
    }

    /// The broker's kind, for log lines; events can arrive while the broker is still being
    /// made (its tasks start connecting at once), before [`Node::broker`] is set.
    fn broker_kind(&self) -> &'static str {
        self.broker.get().map_or("broker", |broker| broker.kind())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The hub completes each input before returning; a poisoned lock means a bug in it
        // that has already been reported, and refusing every later client would be worse.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the hub a connection's outbox, before its first input.
    pub(crate) fn attach(&self, conn: ConnId, outbox: Arc<Outbox>) {
        let mut inner = self.lock();
        if let Some(code) = inner.closing {
            outbox.close(code);
        }
        inner.outboxes.insert(conn, outbox);
    }

    /// Asks every connection to close with `code` (the server's choice: 1001) after the
    /// frames already queued to it, and closes the broker.
    pub(crate) fn shut_down(&self, code: CloseCode) {
        let mut inner = self.lock();
        inner.closing = Some(code);
        for outbox in inner.outboxes.values() {
            outbox.close(code);
        }
        drop(inner);
        self.broker().close();
    }

    /// Forgets a connection that has ended, whatever its state.
    pub(crate) fn detach(&self, conn: ConnId) {
        let mut inner = self.lock();
        inner.remove_outbox(conn);
        inner.held.forget(conn);
        inner.hub.handle(Input::Disconnected { conn });
        inner.apply(self.broker());
        self.unlock(inner);
    }

    /// Feeds one input to the hub and carries out what it asks for. Pushes go through
    /// [`Node::publish`] instead, so that they reach the other nodes too.
    pub(crate) fn handle(&self, input: Input<'_>) {
        let mut inner = self.lock();
        inner.hub.handle(input);
        inner.apply(self.broker());
        self.unlock(inner);
    }

    /// Sends a push to every subscriber of its topic, on every node, through the broker.
    /// `Ok` once the broker took it (the local broker: once it is in every local recipient's
    /// queue); an error means nobody received it and the pusher should retry.
    pub async fn publish(&self, publication: Publication) -> Result<(), BrokerError> {
        // A private push without a member: nobody can receive it, as on one node.
        let Some(topic) = self.hub_config.topic_of(&publication) else {
            return Ok(());
        };
        match self.broker().publish(&topic, publication).await {
            Ok(_) => {
                self.counters.push_accepted();
                Ok(())
            }
            Err(err) => {
                let total = self.counters.broker_publish_failed();
                if self.log_gate.allow() {
                    warn!(total, %err, "push refused: the broker did not take it");
                }
                Err(err)
            }
        }
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

    /// Frames queued to outboxes since start (see [`Counters::frames_waiting`]).
    pub(crate) fn queued_frames(&self) -> u64 {
        self.lock().queued_frames
    }

    /// The number of authenticated connections.
    pub fn connection_count(&self) -> usize {
        self.lock().hub.connection_count()
    }

    /// The broker's connection now.
    pub fn broker_state(&self) -> BrokerState {
        self.broker().state()
    }

    /// Closes, with 1013 (try again later), every connection that has waited longer than
    /// `timeout` for the broker to confirm a topic it subscribed to: rather than leave a client
    /// without its reply while the broker is away, let it reconnect (through the load balancer,
    /// maybe to a node whose broker answers). Returns how many were closed.
    pub(crate) fn expire_pending(&self, now: Instant, timeout: Duration) -> usize {
        let mut inner = self.lock();
        let overdue: Vec<Topic> = inner
            .pending
            .iter()
            .filter(|(_, pending)| now.saturating_duration_since(pending.since) > timeout)
            .map(|(topic, _)| topic.clone())
            .collect();
        let mut closed = 0;
        for topic in &overdue {
            for conn in inner.held.take_waiting(topic) {
                inner.held.forget(conn);
                if let Some(outbox) = inner.remove_outbox(conn) {
                    outbox.close(CloseCode::TryAgainLater);
                    closed += 1;
                }
                inner.hub.handle(Input::Disconnected { conn });
            }
        }
        if closed > 0 {
            let sample: Vec<String> = overdue.iter().take(5).map(Topic::to_string).collect();
            warn!(closed, topics = overdue.len(), sample = ?sample, "closed connections (1013) whose subscriptions the broker did not confirm in time");
        }
        inner.apply(self.broker());
        self.unlock(inner);
        closed
    }
}

impl Inbound for Node {
    fn publication(&self, publication: Publication) {
        if publication.app.is_reserved() {
            return self.control_message(publication);
        }
        let mut inner = self.lock();
        match inner.history.as_mut() {
            Some(history) => {
                let publication = match self.hub_config.topic_of(&publication) {
                    Some(topic) => history.append(&topic, publication, self.now()),
                    None => publication,
                };
                inner.hub.handle(Input::Push(publication));
            }
            None if publication.position.is_some() => {
                let Some(topic) = self.hub_config.topic_of(&publication) else {
                    return;
                };
                let accepted = inner.sequencer.accept(&topic, publication);
                if accepted.duplicate {
                    HistoryCounters::add(&self.counters.history.duplicates_dropped);
                }
                if let Some(since) = accepted.fetch.clone() {
                    let limit = inner.policy.limits(topic.app()).size;
                    inner.recoveries.reads.push(Read {
                        purpose: Purpose::Hole,
                        topic: topic.clone(),
                        since: Some(since),
                        limit,
                    });
                }
                inner.pass_on(&topic, accepted.deliver, &accepted.lost, self.broker());
                if let Some((other, filled)) = accepted.given_up {
                    inner.pass_on(&other, filled.deliver, &filled.lost, self.broker());
                }
            }
            None => inner.hub.handle(Input::Push(publication)),
        }
        inner.apply(self.broker());
        self.unlock(inner);
    }

    fn event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Subscribed { topic, seq } => {
                // Only ever an answer to `subscribe`, which needs the broker set; a confirmation
                // without a request is nothing to act on.
                let Some(broker) = self.broker.get() else {
                    return;
                };
                let mut inner = self.lock();
                inner.confirmed(&topic, seq);
                inner.apply(broker.as_ref());
                self.unlock(inner);
            }
            BrokerEvent::Gap { topics, cause } => {
                let total = self.counters.broker_gap(topics.len());
                let mut inner = self.lock();
                if !inner.sequencer.is_empty() {
                    for topic in &topics {
                        if let Some(since) = inner.sequencer.gap(topic) {
                            let limit = inner.policy.limits(topic.app()).size;
                            inner.recoveries.reads.push(Read {
                                purpose: Purpose::Hole,
                                topic: topic.clone(),
                                since: Some(since),
                                limit,
                            });
                        }
                    }
                }
                self.unlock(inner);
                let sample: Vec<String> = topics.iter().take(5).map(Topic::to_string).collect();
                warn!(
                    topics = topics.len(),
                    total,
                    cause = cause.as_str(),
                    sample = ?sample,
                    "pushes to these topics may have been lost on the way from the broker; those with history are read back from it"
                );
            }
            BrokerEvent::State { state, error } => match state {
                BrokerState::Connected => info!(broker = self.broker_kind(), "broker connected"),
                BrokerState::Connecting => {
                    let total = self.counters.broker_disconnected();
                    warn!(
                        broker = self.broker_kind(),
                        total,
                        error = error.as_deref().unwrap_or(""),
                        "broker connection lost; reconnecting (pushes answer 503 meanwhile)"
                    );
                }
                _ => info!(
                    broker = self.broker_kind(),
                    state = state.as_str(),
                    "broker state"
                ),
            },
            BrokerEvent::Unreadable { channel, error } => {
                let total = self.counters.broker_message_unreadable();
                if self.log_gate.allow() {
                    error!(
                        total,
                        channel,
                        error,
                        "dropped a broker message this node cannot read (a node of another version in the cluster?)"
                    );
                }
            }
            other => info!(event = ?other, "broker event"),
        }
    }
}

impl Inner {
    /// Forgets an outbox; the table gives its memory back once it is mostly empty (amortized,
    /// like the hub's tables), so RSS falls after a crowd of connections left.
    fn remove_outbox(&mut self, conn: ConnId) -> Option<Arc<Outbox>> {
        self.recoveries.forget(conn);
        let outbox = self.outboxes.remove(&conn);
        let capacity = self.outboxes.capacity();
        if capacity > 64 && self.outboxes.len() <= capacity / 4 {
            self.outboxes.shrink_to(self.outboxes.len() * 2);
        }
        outbox
    }

    /// Queues `message` to `conn`: behind its held frames if it has any, else to its outbox.
    fn send(&mut self, conn: ConnId, message: Message) {
        if self.held.holds(conn) {
            if self
                .held
                .hold(conn, None, message, self.held_limits)
                .is_err()
            {
                self.hub.handle(Input::OutboxFull { conn });
            }
        } else if let Some(outbox) = self.outboxes.get(&conn) {
            if outbox.push(message).is_ok() {
                self.queued_frames += 1;
            } else {
                self.hub.handle(Input::OutboxFull { conn });
            }
        }
    }

    /// The broker confirmed `topic` (request `seq`): release what waited for it.
    fn confirmed(&mut self, topic: &Topic, seq: u64) {
        match self.pending.get(topic) {
            Some(latest) if seq >= latest.seq => {
                self.pending.remove(topic);
                self.release(topic);
                for id in self.recoveries.confirmed(topic) {
                    self.start_read(id);
                }
            }
            _ => {}
        }
    }

    /// Sends the reply to a subscription (`frame`): held until the broker confirmed `topic`
    /// if it has not yet, else queued.
    fn subscribed(&mut self, conn: ConnId, topic: Topic, frame: Frame) {
        // Nothing is ever pending with the local broker: skip hashing the topic.
        if !self.pending.is_empty() && self.pending.contains_key(&topic) {
            let message = to_message(frame);
            if self
                .held
                .hold(conn, Some(topic), message, self.held_limits)
                .is_err()
            {
                self.hub.handle(Input::OutboxFull { conn });
            }
        } else {
            self.send(conn, to_message(frame));
        }
    }

    fn release(&mut self, topic: &Topic) {
        let pending = &self.pending;
        let released = self.held.release(topic, |t| pending.contains_key(t));
        self.queue_released(released);
    }

    /// Queues frames no longer held to their outboxes.
    fn queue_released(&mut self, released: Vec<(ConnId, Message)>) {
        for (conn, message) in released {
            if let Some(outbox) = self.outboxes.get(&conn) {
                if outbox.push(message).is_ok() {
                    self.queued_frames += 1;
                } else {
                    self.hub.handle(Input::OutboxFull { conn });
                }
            }
        }
    }

    fn apply(&mut self, broker: &dyn Broker) {
        while let Some(action) = self.hub.poll_action() {
            match action {
                Action::Reply { conn, frame } => self.send(conn, to_message(frame)),
                Action::Subscribed {
                    conn,
                    topic,
                    frame,
                    recovery,
                } => match recovery {
                    None => self.subscribed(conn, topic, frame),
                    Some(recovery) => self.subscribed_with_history(conn, topic, *recovery),
                },
                Action::DeliverAt {
                    conns,
                    frame,
                    app,
                    position,
                } => self.deliver_at(conns, frame, app, *position),
                Action::Deliver { conns, frame } => {
                    let message = to_message(frame);
                    // One clock read per publication, copied into each outbox: the start of
                    // its push-to-write latency.
                    let at = Instant::now();
                    let mut delivered = 0;
                    if self.held.is_empty() {
                        for conn in conns {
                            if let Some(outbox) = self.outboxes.get(&conn) {
                                if outbox.push_delivery(message.clone(), at).is_ok() {
                                    delivered += 1;
                                } else {
                                    // Queues a Close; the loop applies it after this delivery.
                                    self.hub.handle(Input::OutboxFull { conn });
                                }
                            }
                        }
                        self.queued_frames += delivered;
                    } else {
                        for conn in conns {
                            let before = self.queued_frames;
                            self.send(conn, message.clone());
                            delivered += self.queued_frames - before;
                        }
                    }
                    self.counters.delivered(delivered);
                }
                Action::Close { conn, code } => {
                    self.held.forget(conn);
                    if let Some(outbox) = self.remove_outbox(conn) {
                        outbox.close(code);
                    }
                }
                // The cluster's own channels are the node's, not a client's to open or close.
                Action::InterestGained(topic) | Action::InterestLost(topic)
                    if topic.app().is_reserved() => {}
                Action::InterestGained(topic) => {
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    if broker.subscribe(&topic, seq) == Subscription::Pending {
                        let since = Instant::now();
                        self.pending
                            .entry(topic)
                            .and_modify(|pending| pending.seq = seq)
                            .or_insert(Pending { seq, since });
                    }
                }
                Action::InterestLost(topic) => {
                    broker.unsubscribe(&topic);
                    if !self.sequencer.is_empty() {
                        self.sequencer.forget(&topic);
                    }
                    if self.pending.remove(&topic).is_some() {
                        self.release(&topic);
                        for id in self.recoveries.confirmed(&topic) {
                            self.start_read(id);
                        }
                    }
                }
                other => debug_assert!(false, "an action this driver does not know: {other:?}"),
            }
        }
    }
}

/// Lets one log line through per second.
#[derive(Debug, Default)]
struct LogGate {
    next_s: AtomicU64,
}

impl LogGate {
    fn allow(&self) -> bool {
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            + 1;
        let next = self.next_s.load(Ordering::Relaxed);
        now >= next
            && self
                .next_s
                .compare_exchange(next, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
