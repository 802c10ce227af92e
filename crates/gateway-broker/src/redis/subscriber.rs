//! A shard's subscriber: one pub/sub connection, and the task that owns it.
//!
//! The task keeps the set of topics the node wants (topic → latest `seq`) and makes the
//! server's subscriptions follow it. Commands from the node only change that set and mark the
//! topic; whenever no `SUBSCRIBE`/`UNSUBSCRIBE` is in flight, every marked topic is compared
//! with what the server has, and the differences go out as one round: one `UNSUBSCRIBE` and one
//! `SUBSCRIBE`, each with many channels (at most `batch` per command). So changes are applied
//! in the order the node made them, and whatever queued meanwhile is batched.
//!
//! `Subscribed { topic, seq }` is emitted once the server confirmed the topic's subscription,
//! with the topic's latest `seq`; a topic the node unsubscribed and subscribed again while the
//! server kept the subscription (nothing was sent) is announced with its new `seq` at once,
//! since its subscription never stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ::redis::aio::{PubSub, PubSubSink};
use ::redis::{Client, Msg, Value};
use bytes::Bytes;
use futures_util::StreamExt;
use gateway_core::Topic;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{RedisOptions, Role, Shared};
use crate::backoff::Backoff;
use crate::{BoxFuture, BrokerEvent, BrokerSettings, GapCause, wire};

/// What the node asks of a shard's subscriber, in the order it asked.
#[derive(Debug)]
pub(super) enum Command {
    Subscribe { topic: Topic, seq: u64 },
    Unsubscribe(Topic),
}

pub(super) struct Setup {
    pub(super) client: Client,
    pub(super) shard: usize,
    pub(super) addr: String,
    pub(super) shared: Arc<Shared>,
    pub(super) options: RedisOptions,
    pub(super) settings: BrokerSettings,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
}

pub(super) struct Subscriber {
    setup: Setup,
    /// The topics the node wants, with the `seq` of its latest subscribe. Survives
    /// reconnections: it is what a new connection subscribes to.
    desired: HashMap<Topic, u64>,
    /// Topics changed by a command since the last round was planned.
    dirty: HashSet<Topic>,
}

/// How a connection's session ended.
enum End {
    /// The broker closed, or the node is gone.
    Stop,
    /// The connection failed (why); `live` says whether it had been subscribed.
    Lost { error: String, live: bool },
}

/// One batch of changes sent to the server, and the future of its confirmations.
struct Round {
    unsubscribe: Vec<Topic>,
    subscribe: Vec<Topic>,
    confirmed: BoxFuture<'static, Result<(), String>>,
}

/// What the server has on the current connection.
#[derive(Default)]
struct Server {
    subscribed: HashSet<Topic>,
    /// The `seq` last announced with `Subscribed`, per subscribed topic.
    announced: HashMap<Topic, u64>,
}

impl Subscriber {
    pub(super) fn new(setup: Setup) -> Self {
        Subscriber {
            setup,
            desired: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// Connects, subscribes, delivers, reconnects with backoff, until the broker closes.
    pub(super) async fn run(mut self) {
        let reconnect = (
            self.setup.settings.reconnect_min,
            self.setup.settings.reconnect_max,
        );
        let mut backoff = Backoff::new(reconnect.0, reconnect.1);
        let cancel = self.setup.shared.cancel.clone();
        let connect_timeout = self.setup.options.connect_timeout;
        // The first connection is no gap: nothing was subscribed before it.
        let mut was_live = false;
        loop {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return,
                attempt = tokio::time::timeout(
                    connect_timeout,
                    self.setup.client.get_async_pubsub(),
                ) => attempt,
            };
            let error = match attempt {
                Err(_) => format!("no connection within {connect_timeout:?}"),
                Ok(Err(error)) => error.to_string(),
                Ok(Ok(pubsub)) => match self.session(pubsub, was_live).await {
                    End::Stop => return,
                    End::Lost { error, live } => {
                        if live {
                            was_live = true;
                            backoff.reset();
                            let Setup { shard, addr, .. } = &self.setup;
                            self.setup.shared.set_up(
                                *shard,
                                Role::Subscriber,
                                false,
                                Some(format!("redis {addr} (shard {shard}) subscriber: {error}")),
                            );
                        }
                        error
                    }
                },
            };
            tracing::warn!(
                shard = self.setup.shard,
                addr = %self.setup.addr,
                %error,
                "redis subscriber connection down, reconnecting"
            );
            if !self.pause(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Waits `delay` before the next connection attempt, taking the node's commands meanwhile
    /// (they only change the desired set). False when the broker closed.
    async fn pause(&mut self, delay: std::time::Duration) -> bool {
        let cancel = self.setup.shared.cancel.clone();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = &mut sleep => return true,
                command = self.setup.commands.recv() => match command {
                    Some(command) => self.apply(command),
                    None => return false,
                },
            }
        }
    }

    /// One connection: subscribes every desired topic, then follows the node's commands and
    /// delivers messages until the connection fails or the broker closes.
    async fn session(&mut self, pubsub: PubSub, reconnected: bool) -> End {
        let (sink, mut stream) = pubsub.split();
        let cancel = self.setup.shared.cancel.clone();
        let RedisOptions {
            ping_interval,
            ping_timeout,
            ..
        } = self.setup.options;
        let mut server = Server::default();
        if !self.absorb() {
            return End::Stop;
        }
        // A new connection has nothing: its first round subscribes everything desired.
        self.dirty.clear();
        let all: Vec<Topic> = self.desired.keys().cloned().collect();
        let mut round = Some(self.start_round(&sink, Vec::new(), all));
        let mut live = false;
        let mut ping: Option<BoxFuture<'static, Result<(), String>>> = None;
        // One timer for the session, re-armed after each answer: a timer made afresh in every
        // turn of the loop would cost a timer-wheel entry per message.
        let ping_timer = tokio::time::sleep(ping_interval);
        tokio::pin!(ping_timer);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return End::Stop,
                message = stream.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return lost("the connection closed", live),
                },
                confirmed = confirmation(&mut round) => {
                    let done = round.take().expect("a round was in flight");
                    if let Err(error) = confirmed {
                        return lost(&error, live);
                    }
                    let first = !live;
                    if first {
                        live = true;
                        let Setup { shard, shared, .. } = &self.setup;
                        shared.set_up(*shard, Role::Subscriber, true, None);
                    }
                    self.confirm(&mut server, done);
                    if first && reconnected && !self.desired.is_empty() {
                        // Redis kept nothing for this node while it was away.
                        self.setup.shared.event(BrokerEvent::Gap {
                            topics: self.desired.keys().cloned().collect(),
                            cause: GapCause::Reconnected,
                        });
                    }
                }
                command = self.setup.commands.recv() => match command {
                    Some(command) => self.apply(command),
                    None => return End::Stop,
                },
                () = &mut ping_timer, if ping.is_none() => {
                    let mut sink = sink.clone();
                    ping = Some(Box::pin(async move {
                        match tokio::time::timeout(ping_timeout, sink.ping::<Value>()).await {
                            Err(_) => Err(format!("no answer to PING within {ping_timeout:?}")),
                            Ok(Err(error)) => Err(error.to_string()),
                            Ok(Ok(_)) => Ok(()),
                        }
                    }));
                }
                answered = answer(&mut ping) => {
                    ping = None;
                    ping_timer.as_mut().reset(Instant::now() + ping_interval);
                    if let Err(error) = answered {
                        return lost(&error, live);
                    }
                }
            }
            if round.is_none() {
                if !self.absorb() {
                    return End::Stop;
                }
                let (unsubscribe, subscribe) = self.plan(&mut server);
                if !(unsubscribe.is_empty() && subscribe.is_empty()) {
                    round = Some(self.start_round(&sink, unsubscribe, subscribe));
                }
            }
        }
    }

    /// Records one command of the node.
    fn apply(&mut self, command: Command) {
        match command {
            Command::Subscribe { topic, seq } => {
                self.desired.insert(topic.clone(), seq);
                self.dirty.insert(topic);
            }
            Command::Unsubscribe(topic) => {
                self.desired.remove(&topic);
                self.dirty.insert(topic);
            }
        }
    }

    /// Takes every command already queued, so that one round carries them all. False when the
    /// broker is gone.
    fn absorb(&mut self) -> bool {
        loop {
            match self.setup.commands.try_recv() {
                Ok(command) => self.apply(command),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// The next round's changes (unsubscribe, subscribe) for the topics changed since the last
    /// one. A topic the server still has and the node wants again is announced at once.
    fn plan(&mut self, server: &mut Server) -> (Vec<Topic>, Vec<Topic>) {
        let (mut unsubscribe, mut subscribe) = (Vec::new(), Vec::new());
        for topic in std::mem::take(&mut self.dirty) {
            match (self.desired.get(&topic), server.subscribed.contains(&topic)) {
                (Some(_), false) => subscribe.push(topic),
                (None, true) => unsubscribe.push(topic),
                (Some(&seq), true) => {
                    if server.announced.get(&topic) != Some(&seq) {
                        server.announced.insert(topic.clone(), seq);
                        self.setup
                            .shared
                            .event(BrokerEvent::Subscribed { topic, seq });
                    }
                }
                (None, false) => {}
            }
        }
        (unsubscribe, subscribe)
    }

    /// The server confirmed `done`: record it, and announce each subscribed topic the node
    /// still wants with its latest `seq`. A topic the node changed its mind about meanwhile is
    /// marked dirty already, so the next round puts it right.
    fn confirm(&mut self, server: &mut Server, done: Round) {
        for topic in done.unsubscribe {
            server.announced.remove(&topic);
            server.subscribed.remove(&topic);
        }
        for topic in done.subscribe {
            if let Some(&seq) = self.desired.get(&topic) {
                server.announced.insert(topic.clone(), seq);
                self.setup.shared.event(BrokerEvent::Subscribed {
                    topic: topic.clone(),
                    seq,
                });
            }
            server.subscribed.insert(topic);
        }
    }

    /// Sends `unsubscribe`, then `subscribe`, in commands of at most `batch` channels.
    fn start_round(
        &self,
        sink: &PubSubSink,
        unsubscribe: Vec<Topic>,
        subscribe: Vec<Topic>,
    ) -> Round {
        let prefix = &self.setup.settings.prefix;
        let channels = |topics: &[Topic]| -> Vec<String> {
            topics.iter().map(|t| wire::channel(prefix, t)).collect()
        };
        let (leave, join) = (channels(&unsubscribe), channels(&subscribe));
        let batch = self.setup.options.batch;
        let mut sink = sink.clone();
        // Commands on one connection are executed in order, so unsubscribing before
        // subscribing cannot undo a newer subscription to the same channel.
        let confirmed = Box::pin(async move {
            for chunk in leave.chunks(batch) {
                sink.unsubscribe(chunk)
                    .await
                    .map_err(|e| format!("UNSUBSCRIBE failed: {e}"))?;
            }
            for chunk in join.chunks(batch) {
                sink.subscribe(chunk)
                    .await
                    .map_err(|e| format!("SUBSCRIBE failed: {e}"))?;
            }
            Ok(())
        });
        Round {
            unsubscribe,
            subscribe,
            confirmed,
        }
    }

    /// Hands one message to the node: a publication, or `Unreadable` when it is not one.
    fn deliver(&self, message: &Msg) {
        let Some(inbound) = self.setup.shared.inbound.upgrade() else {
            self.setup.shared.close();
            return;
        };
        match wire::decode(Bytes::copy_from_slice(message.get_payload_bytes())) {
            Ok(publication) => inbound.publication(publication),
            Err(error) => inbound.event(BrokerEvent::Unreadable {
                channel: message.get_channel_name().to_owned(),
                error: error.to_string(),
            }),
        }
    }
}

fn lost(error: &str, live: bool) -> End {
    End::Lost {
        error: error.to_owned(),
        live,
    }
}

/// The confirmation of the round in flight, or never when there is none.
async fn confirmation(round: &mut Option<Round>) -> Result<(), String> {
    match round {
        Some(round) => round.confirmed.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The answer to the PING in flight, or never when there is none.
async fn answer(ping: &mut Option<BoxFuture<'static, Result<(), String>>>) -> Result<(), String> {
    match ping {
        Some(ping) => ping.as_mut().await,
        None => std::future::pending().await,
    }
}
