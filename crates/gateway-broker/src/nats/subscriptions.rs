//! The subscription task: applies the node's interest changes in order, owns one NATS
//! subscription per topic, tells the node when each is live, and turns the client's events
//! into broker events.
//!
//! Each subscription is read by a forwarding task of its own, so a message costs the same
//! whether the node holds 3 topics or 100 000 (a `StreamMap` polled from this task would scan
//! every subscription for each message). Order within a topic is kept: one subscription, one
//! reader. Across topics there is no order to keep, and none is promised; a
//! [`BrokerEvent::Gap`] may reach the node just after the first publications that arrived on
//! the new connection.
//!
//! The node's interest changes reach the task through [`Interest`], which keeps only the latest
//! wish per topic (subscribe with a `seq`, or unsubscribe) until the task takes them: its size
//! is bounded by the number of distinct topics, whatever the node does meanwhile. The task
//! takes them while the client is connected, as they come. While it is disconnected the task
//! leaves them there and applies what is left when the connection is back: async-nats stops
//! taking commands once its queue (2048) is full, so subscribing during an outage would block
//! the task, and every subscribe and unsubscribe of a churning client would pile up behind it.
//! A topic subscribed and unsubscribed during the outage costs nothing.
//!
//! The task's idea of "connected" follows the client's `Connected`/`Disconnected` events, in
//! the order async-nats sends them, so a change held back while disconnected is always applied
//! by the next `Connected`.

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, Event, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use gateway_core::Topic;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{BrokerEvent, BrokerState, GapCause, Inbound, wire};

/// The node's interest changes not yet taken by the task: per topic, the latest wish
/// (`Some(seq)`: subscribed with `seq`; `None`: unsubscribed). A later wish replaces an earlier
/// one, which keeps the order of changes per topic; across topics there is no order to keep.
#[derive(Default)]
pub(super) struct Interest {
    wishes: Mutex<HashMap<Topic, Option<u64>>>,
    changed: Notify,
}

impl Interest {
    /// Never waits beyond a short lock; called under the node's lock.
    pub(super) fn subscribe(&self, topic: &Topic, seq: u64) {
        self.wish(topic, Some(seq));
    }

    pub(super) fn unsubscribe(&self, topic: &Topic) {
        self.wish(topic, None);
    }

    fn wish(&self, topic: &Topic, wish: Option<u64>) {
        {
            let mut wishes = self.wishes.lock().unwrap_or_else(PoisonError::into_inner);
            match wishes.get_mut(topic) {
                Some(latest) => *latest = wish,
                None => {
                    wishes.insert(topic.clone(), wish);
                }
            }
        }
        // Stores a permit when the task is busy, so the change is not missed.
        self.changed.notify_one();
    }

    /// Every wish made since the last call.
    fn take(&self) -> HashMap<Topic, Option<u64>> {
        mem::take(&mut *self.wishes.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Hands a client event to the task, from async-nats's event callback. Only what changes the
/// task's state is queued, at most one slow-consumer report at a time: the queue holds a few
/// events per connection, however long the task is busy.
pub(super) fn on_event(
    event: Event,
    events: &mpsc::UnboundedSender<Event>,
    slow_consumer_reported: &AtomicBool,
) {
    match event {
        Event::Connected | Event::Disconnected => {
            let _ = events.send(event);
        }
        // Reported by async-nats for each dropped message; one pending report is enough.
        Event::SlowConsumer(_) => {
            if !slow_consumer_reported.swap(true, Ordering::AcqRel) {
                let _ = events.send(event);
            }
        }
        Event::ServerError(error) => tracing::warn!(%error, "NATS server error"),
        // Failed connection attempts while reconnecting; the state event said it.
        Event::ClientError(error) => tracing::debug!(%error, "NATS client error"),
        Event::LameDuckMode => {
            tracing::info!("the NATS server is shutting down (lame duck mode)");
        }
        Event::Draining | Event::Closed => {}
    }
}

/// The task's state. Only the task touches it, so nothing is locked.
pub(super) struct Worker {
    client: Client,
    inbound: Weak<dyn Inbound>,
    prefix: String,
    interest: Arc<Interest>,
    /// The client is connected, as its events said last. Interest changes wait while not.
    connected: bool,
    /// One live NATS subscription per topic the node has interest in.
    forwarders: HashMap<Topic, Forwarder>,
    /// Topics subscribed but not yet announced live, with the latest `seq` asked for.
    unconfirmed: HashMap<Topic, u64>,
    /// Round trips in flight, each confirming the subscriptions sent before it.
    barriers: JoinSet<Barrier>,
    /// A disconnection was seen since the last `Connected`: the next one is a gap.
    lost_connection: bool,
    /// Set by the event callback when it queued a slow-consumer event, cleared here.
    slow_consumer_reported: Arc<AtomicBool>,
    /// Wait before repeating a round trip that failed while connected.
    retry_delay: Duration,
}

impl Worker {
    pub(super) fn new(
        client: Client,
        inbound: Weak<dyn Inbound>,
        prefix: String,
        interest: Arc<Interest>,
        slow_consumer_reported: Arc<AtomicBool>,
        retry_delay: Duration,
    ) -> Worker {
        Worker {
            client,
            inbound,
            prefix,
            interest,
            connected: false,
            forwarders: HashMap::new(),
            unconfirmed: HashMap::new(),
            barriers: JoinSet::new(),
            lost_connection: false,
            slow_consumer_reported,
            retry_delay,
        }
    }
}

/// Runs until `shutdown`, until the broker is dropped, or until the node is gone. Dropping the
/// worker aborts every forwarding task and round trip.
pub(super) async fn run(
    mut worker: Worker,
    mut events: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
) {
    let interest = worker.interest.clone();
    loop {
        let alive = tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            event = events.recv() => match event {
                Some(event) => worker.handle_event(event).await,
                // The client is gone.
                None => false,
            },
            Some(done) = worker.barriers.join_next() => match done {
                Ok(barrier) => worker.barrier_done(barrier),
                // Aborted or panicked: the next `Connected` confirms what it covered.
                Err(_) => true,
            },
            // While disconnected the permit stays, and `Connected` takes the wishes.
            () = interest.changed.notified(), if worker.connected => {
                let confirm = worker.change_interest(interest.take()).await;
                if !confirm.is_empty() {
                    worker.start_barrier(confirm, None, Duration::ZERO);
                }
                true
            }
        };
        if !alive {
            break;
        }
    }
}

impl Worker {
    /// Applies the latest wish per topic; returns the topics to confirm with a round trip.
    async fn change_interest(&mut self, wishes: HashMap<Topic, Option<u64>>) -> Vec<(Topic, u64)> {
        let mut to_confirm = Vec::new();
        for (topic, wish) in wishes {
            match wish {
                Some(seq) => {
                    // A topic already held keeps its subscription (subscribe → unsubscribe →
                    // subscribe makes one, never two); it is confirmed again so the node hears
                    // about this `seq`.
                    if !self.forwarders.contains_key(&topic) {
                        match self.spawn_forwarder(&topic).await {
                            Some(forwarder) => {
                                self.forwarders.insert(topic.clone(), forwarder);
                            }
                            None => continue,
                        }
                    }
                    self.unconfirmed.insert(topic.clone(), seq);
                    to_confirm.push((topic, seq));
                }
                None => {
                    self.unconfirmed.remove(&topic);
                    if let Some(forwarder) = self.forwarders.remove(&topic) {
                        forwarder.stop().await;
                    }
                }
            }
        }
        to_confirm
    }

    async fn spawn_forwarder(&self, topic: &Topic) -> Option<Forwarder> {
        let subject = wire::channel(&self.prefix, topic);
        match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => {
                let (stop, stopped) = oneshot::channel();
                let task = tokio::spawn(forward(subscriber, stopped, self.inbound.clone()));
                Some(Forwarder {
                    stop: Some(stop),
                    task,
                })
            }
            Err(e) => {
                // The prefix was validated and names are escaped, so only a closed client
                // gets here; nothing can be subscribed any more.
                tracing::error!(subject, error = %e, "NATS subscription failed");
                None
            }
        }
    }

    /// Sends a round trip that confirms every subscription sent before it.
    fn start_barrier(
        &mut self,
        topics: Vec<(Topic, u64)>,
        gap: Option<Vec<Topic>>,
        delay: Duration,
    ) {
        let client = self.client.clone();
        self.barriers.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = round_trip(&client).await;
            Barrier {
                topics,
                gap,
                result,
            }
        });
    }

    /// Whether the node is still there.
    fn barrier_done(&mut self, barrier: Barrier) -> bool {
        let Barrier {
            topics,
            gap,
            result,
        } = barrier;
        if let Err(error) = result {
            // Failed while connected (the server was slow): try again. Failed because the
            // connection broke: the next `Connected` confirms all that is unconfirmed and
            // reports the gap.
            if self.connected {
                tracing::debug!(%error, "NATS subscription round trip failed; retrying");
                self.start_barrier(topics, gap, self.retry_delay);
            }
            return true;
        }
        for (topic, seq) in topics {
            // A later subscribe of the topic has its own round trip, and an unsubscribe
            // removed it: only the latest wish is announced.
            if self.unconfirmed.get(&topic) == Some(&seq) {
                self.unconfirmed.remove(&topic);
                if !self.emit(BrokerEvent::Subscribed { topic, seq }) {
                    return false;
                }
            }
        }
        if let Some(topics) = gap {
            let topics: Vec<Topic> = topics
                .into_iter()
                .filter(|topic| self.forwarders.contains_key(topic))
                .collect();
            if !topics.is_empty() {
                return self.emit(BrokerEvent::Gap {
                    topics,
                    cause: GapCause::Reconnected,
                });
            }
        }
        true
    }

    /// Whether the node is still there.
    async fn handle_event(&mut self, event: Event) -> bool {
        match event {
            Event::Connected => {
                self.connected = true;
                if !self.emit(BrokerEvent::State {
                    state: BrokerState::Connected,
                    error: None,
                }) {
                    return false;
                }
                // The topics held through the outage, which async-nats resubscribed; a topic
                // the node has let go of meanwhile is left out when the gap is reported.
                let gap = mem::take(&mut self.lost_connection)
                    .then(|| self.forwarders.keys().cloned().collect::<Vec<_>>());
                // What the node asked for while disconnected. async-nats has queued its
                // resubscriptions before anything sent from here, so one round trip after
                // these changes confirms them all; the gap is reported once they are live.
                let wishes = self.interest.take();
                self.change_interest(wishes).await;
                let pending: Vec<(Topic, u64)> = self
                    .unconfirmed
                    .iter()
                    .map(|(topic, seq)| (topic.clone(), *seq))
                    .collect();
                if gap.is_some() || !pending.is_empty() {
                    self.start_barrier(pending, gap, Duration::ZERO);
                }
                true
            }
            Event::Disconnected => {
                self.connected = false;
                self.lost_connection = true;
                self.emit(BrokerEvent::State {
                    state: BrokerState::Connecting,
                    error: Some("lost the connection to the NATS server".into()),
                })
            }
            Event::SlowConsumer(sid) => {
                self.slow_consumer_reported.store(false, Ordering::Release);
                tracing::debug!(sid, "NATS slow consumer: messages dropped");
                let topics: Vec<Topic> = self.forwarders.keys().cloned().collect();
                topics.is_empty()
                    || self.emit(BrokerEvent::Gap {
                        topics,
                        cause: GapCause::SlowConsumer,
                    })
            }
            // `on_event` queues nothing else.
            _ => true,
        }
    }

    /// Whether the node is still there.
    fn emit(&self, event: BrokerEvent) -> bool {
        match self.inbound.upgrade() {
            Some(inbound) => {
                inbound.event(event);
                true
            }
            None => false,
        }
    }
}

/// A round trip through the server on the client's connection: a request to a fresh inbox
/// nobody listens on, answered by the server with "no responders". The server reads a
/// connection in order, so when the answer is back every `SUB` sent before is registered.
pub(super) async fn round_trip(client: &Client) -> Result<(), async_nats::RequestError> {
    match client.request(client.new_inbox(), Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e),
    }
}

/// The outcome of a round trip, and what it confirms.
struct Barrier {
    topics: Vec<(Topic, u64)>,
    /// After a reconnect: the topics to report a gap for once the round trip is back.
    gap: Option<Vec<Topic>>,
    result: Result<(), async_nats::RequestError>,
}

/// One topic's subscription, read by its own task.
struct Forwarder {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Ends the subscription: once this returns, the `UNSUB` is queued on the client ahead
    /// of anything sent later (a new `SUB` of the same subject included), and nothing more is
    /// delivered from it.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Shutting down: dropping its `Subscriber` unsubscribes as well as async-nats can.
        self.task.abort();
    }
}

async fn forward(
    mut subscriber: Subscriber,
    mut stop: oneshot::Receiver<()>,
    inbound: Weak<dyn Inbound>,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut stop => break,
            message = subscriber.next() => message,
        };
        // `None`: the client was closed.
        let Some(message) = message else { return };
        let Some(inbound) = inbound.upgrade() else {
            return;
        };
        match wire::decode(message.payload) {
            Ok(publication) => inbound.publication(publication),
            Err(error) => inbound.event(BrokerEvent::Unreadable {
                channel: message.subject.to_string(),
                error: error.to_string(),
            }),
        }
    }
    // Awaited (unlike dropping the subscriber), so the UNSUB is queued before returning.
    let _ = subscriber.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::AppName;

    fn topic(name: &str) -> Topic {
        Topic::App(AppName::parse(name, 128).expect("a valid app name"))
    }

    #[test]
    fn churn_folds_into_one_wish_per_topic() {
        let interest = Interest::default();
        let topics: Vec<Topic> = ["a", "b", "c"].into_iter().map(topic).collect();
        for seq in 0..10_000 {
            for topic in &topics {
                interest.subscribe(topic, seq);
                interest.unsubscribe(topic);
            }
            // Bounded by the topics, not by the changes.
            assert!(interest.wishes.lock().expect("not poisoned").len() <= topics.len());
        }
        interest.subscribe(&topics[0], 20_000);
        let wishes = interest.take();
        assert_eq!(
            wishes,
            HashMap::from([
                (topics[0].clone(), Some(20_000)),
                (topics[1].clone(), None),
                (topics[2].clone(), None),
            ])
        );
        assert!(interest.take().is_empty(), "taken once");
    }
}
