//! Redis pub/sub between nodes: one channel per topic, apps sharded over one or more Redis
//! servers.
//!
//! # What Redis guarantees, and what it does not
//! - **One order per topic.** A topic's channel lives on one server (its app's shard), and a
//!   Redis server executes commands one at a time, so every subscriber receives a channel's
//!   messages in the order the server took the `PUBLISH`es.
//! - **At most once.** Pub/sub keeps nothing: a message reaches the subscribers connected at the
//!   moment it is published, or nobody. A subscriber whose connection is down misses what was
//!   published meanwhile, for good; this broker reports that as [`BrokerEvent::Gap`] with
//!   [`GapCause::Reconnected`](crate::GapCause::Reconnected) for every topic the shard
//!   carried, once it is subscribed again. A slow subscriber is not dropped message by
//!   message: Redis closes its connection when its output buffer passes
//!   `client-output-buffer-limit pubsub`, which becomes the same gap.
//! - **A push is answered only after Redis took it.** [`Broker::publish`] resolves `Ok` once the
//!   server answered the `PUBLISH`; while a shard is not connected publishes fail at once
//!   (nothing is queued, so memory stays bounded while Redis is away).
//!
//! # What a failed publication means
//! [`BrokerError::Unavailable`] promises that nothing was sent (nobody received it, a retry
//! cannot duplicate it), so it is returned only when the `PUBLISH` never reached a connection:
//!
//! | failure | error |
//! |---|---|
//! | broker closed; shard's publisher not connected (known down, or not yet up) | `Unavailable` |
//! | no answer within `publish_timeout` | `TimedOut` |
//! | the connection failed after the `PUBLISH` was handed to it | `Failed` |
//! | Redis answered with an error, or with something other than an integer | `Failed` |
//! | (history) the script was missing (`NOSCRIPT`): it did not run, and is sent again at once as `EVAL`, within the same deadline | as that `EVAL`'s |
//! | (history, `publish_all`) `NOSCRIPT`, and a later push of the same stream in the same pipeline ran (the script came back meanwhile): sending it now would overtake that one | `Unavailable` (not published) |
//!
//! Once a command is handed to the redis crate's multiplexed connection, a failure cannot
//! tell whether its bytes were written: a connection that broke before the write and one that
//! broke while the server was executing the `PUBLISH` end in the same error. Redis may have
//! delivered it, so such a failure is `Failed`, never `Unavailable`. A connection that died
//! without the publisher noticing yet keeps taking publications until its failed `PING` (or
//! the first failed publish) takes it out of service; those publications are `Failed` (a
//! closed connection) or `TimedOut` (a silent one) too.
//!
//! # Shards
//! Each URL is one server. A topic lives on the shard `wire::shard_of(app, urls.len())`, so all
//! of an app's topics (its members' private topics too) are on one server. Every node must get
//! the same `urls`, in the same order: a node with another list publishes and subscribes some
//! apps on other servers than its peers, and their pushes do not meet.
//!
//! Adding a server (appending a URL) moves the apps whose jump hash changes, about 1/(n + 1) of
//! them, all to the new server; no other app moves. To change the list, change every node's
//! configuration and then restart the nodes. While nodes with the old and the new list run side
//! by side, the moved apps' pushes reach only the nodes with the same list as the pusher's node,
//! and clients of moved apps may miss pushes during the change (expect gaps for them).
//!
//! # Connections and failure detection
//! Per shard: one multiplexed publisher connection (concurrent publishes are pipelined on one
//! socket) and one pub/sub subscriber connection, each supervised by its own task, which
//! reconnects with [`Backoff`](crate::backoff::Backoff) between `reconnect_min` and
//! `reconnect_max`. A connection that closes is noticed at once; one that dies silently (a
//! crashed host, a dropped route) is noticed by a `PING` every [`RedisOptions::ping_interval`]
//! that must be answered within [`RedisOptions::ping_timeout`]: within 3 s with the defaults.
//! [`Broker::state`] is `Connected` only while every shard's two connections are; each change
//! of that state is reported as one [`BrokerEvent::State`].
//!
//! # Subscriptions
//! [`Broker::subscribe`] and [`Broker::unsubscribe`] only queue a command for the shard's
//! subscriber task, which applies them in order, batching whatever queued meanwhile into one
//! `UNSUBSCRIBE` and one `SUBSCRIBE` of many channels. `Subscribed { topic, seq }` (the
//! topic's latest seq) follows the server's confirmation; a topic unsubscribed and subscribed
//! again before anything was sent keeps its server subscription and is announced at once. After
//! a reconnection the task subscribes every wanted topic again, then reports `Subscribed` for
//! each and one `Gap` for all of them.
//!
//! The task hands every message to [`Inbound::publication`] as it arrives: that call must not
//! block. The redis crate queues received messages without a bound between its socket reader
//! and this task, so a node that stalled there would grow that queue instead of Redis dropping
//! the connection at its `client-output-buffer-limit`.
//!
//! # Cluster view
//! [`Broker::report`] writes `<prefix>.node.<node>` (JSON, expiring after the TTL) and adds the
//! node to the set `<prefix>.nodes`, both on shard 0. [`Broker::cluster`] reads the set and
//! the keys, and drops from the set the nodes whose key expired (a node that dropped out this
//! way while it was reporting again comes back with its next report).
//!
//! # History
//! The broker [keeps history](Broker::keeps_history) for every app whose
//! [`HistoryPolicy`](gateway_core::HistoryPolicy) (`BrokerSettings::history`) enables it
//! (docs/protocol.md, "History in a cluster", "Redis"). Each stream (a topic) has two keys on
//! its app's shard, next to its channel: `<channel>.meta`, a hash of the run's `epoch`, newest
//! `offset` and the `server` run that wrote it, and `<channel>.log`, a Redis stream of the kept pushes (entry ID
//! `<offset>-0`, fields `t`, the server's time in ms, and `m`, the wire message).
//! - A publication runs `publish.lua` instead of a bare `PUBLISH`: it takes the stream's run
//!   (or starts one with the epoch the node drew, deleting any older log; also when another
//!   run of the server wrote it, i.e. Redis restarted or failed over since, so that a restore
//!   from an older state never gives out an offset twice: each publisher connection reads its
//!   server's `run_id` with `INFO server`), gives the push the
//!   next offset, appends it with `XADD … MAXLEN <size>`, refreshes the log's expiry (the app's
//!   TTL) and the meta's ([`RedisOptions::history_meta_ttl`], at least the TTL), and
//!   `PUBLISH`es it as wire version 2, and answers with the position. Redis runs a script
//!   alone, so every node sees the same offsets, contiguous, in one order. Apps without history
//!   publish as before: a `PUBLISH` of version 1, no keys.
//! - [`Broker::history`] runs `read.lua`: the run, the oldest offset still within the TTL, and
//!   the entries after a position of the current run, in one step.
//! - The scripts are loaded (`SCRIPT LOAD`) on every new publisher connection, and called by
//!   `EVALSHA`; a server that lost them answers `NOSCRIPT` (the script did not run), and the
//!   call is sent again as `EVAL`, which also loads it.
//!
//! This broker does not use Redis Cluster (sharding is by app, over independent servers) and
//! does not need RESP3 (it speaks RESP2, which every Redis speaks). History needs Redis 5 or
//! later (streams) and the right to run scripts (and `INFO`, without which a restart does not
//! start new runs).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use gateway_broker::{Broker, BrokerSettings, Inbound, redis::RedisBroker};
//! # async fn run(node: Arc<dyn Inbound>) -> Result<(), gateway_broker::BrokerError> {
//! let urls = vec!["redis://:secret@10.0.0.5:6379/".to_owned()];
//! let broker = RedisBroker::connect(&urls, BrokerSettings::default(), Arc::downgrade(&node))?;
//! assert_eq!(broker.kind(), "redis");
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::redis::Client;
use gateway_core::{HistoryRead, Publication, Since, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    BoxFuture, Broker, BrokerError, BrokerEvent, BrokerSettings, BrokerState, Inbound, NodeReport,
    Published, Publishing, Subscription, wire,
};

mod history;
mod publisher;
mod publishing;
mod subscriber;

use publisher::Publisher;
use subscriber::Command;

/// Tuning of the Redis connections, beyond [`BrokerSettings`]. [`RedisBroker::connect`] uses
/// the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// How often each connection sends a `PING`, to find a connection that died without
    /// closing. Default 1 s.
    pub ping_interval: Duration,
    /// How long a `PING` may wait for its answer before the connection counts as dead and is
    /// replaced. Default 2 s, so a silent death is noticed within 3 s.
    pub ping_timeout: Duration,
    /// How long one connection attempt may take (TCP, TLS, `AUTH`). Default 2 s.
    pub connect_timeout: Duration,
    /// Most channels in one `SUBSCRIBE` or `UNSUBSCRIBE`, so that resubscribing a node with
    /// many topics is a few bounded commands rather than one huge one. Default 1000.
    pub batch: usize,
    /// How long a stream's run (its epoch and newest offset) outlives the stream's last push,
    /// when that is longer than the app's history TTL. Default 24 h. While the run is kept, a
    /// client that saw the newest push of an idle stream is told `recovered:true`; after it,
    /// the next push starts a new epoch and such a client is told `recovered:false`.
    pub history_meta_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            batch: 1000,
            history_meta_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The Redis broker. Made by [`RedisBroker::connect`]; dropping it (or [`Broker::close`])
/// stops its tasks and closes its connections.
pub struct RedisBroker {
    settings: BrokerSettings,
    options: RedisOptions,
    shards: Vec<Shard>,
    shared: Arc<Shared>,
}

/// One Redis server's share of the work.
struct Shard {
    /// `host:port`, for messages: never the URL, which may hold a password.
    addr: String,
    /// To the shard's subscriber task. Unbounded so that `subscribe` never blocks nor fails
    /// under the node's lock; the task folds every command into its desired set at once, so
    /// the queue holds at most what the node asked for since the task last ran.
    commands: mpsc::UnboundedSender<Command>,
    publisher: Arc<Publisher>,
}

impl RedisBroker {
    /// Validates `urls` (one per shard: `redis://`, `rediss://` for TLS, a password as
    /// `redis://:password@host` or `redis://user:password@host`), starts each shard's
    /// publisher and subscriber tasks and returns at once: the broker is `Connecting` until
    /// they are connected. Must be called within a tokio runtime.
    pub fn connect(
        urls: &[String],
        settings: BrokerSettings,
        inbound: Weak<dyn Inbound>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        RedisBroker::connect_with(urls, settings, RedisOptions::default(), inbound)
    }

    /// [`RedisBroker::connect`] with other [`RedisOptions`].
    pub fn connect_with(
        urls: &[String],
        settings: BrokerSettings,
        options: RedisOptions,
        inbound: Weak<dyn Inbound>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let clients = validate(urls)?;
        if options.batch == 0
            || options.ping_interval.is_zero()
            || options.ping_timeout.is_zero()
            || options.connect_timeout.is_zero()
            || options.history_meta_ttl.is_zero()
        {
            return Err(BrokerError::Config(
                "redis: batch, ping_interval, ping_timeout, connect_timeout and \
                 history_meta_ttl must be positive"
                    .into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BrokerError::Config("the Redis broker must be started within a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared::new(inbound, clients.len()));
        let mut shards = Vec::with_capacity(clients.len());
        for (index, client) in clients.into_iter().enumerate() {
            let addr = client.get_connection_info().addr().to_string();
            let publisher = Arc::new(Publisher::default());
            let (commands, receiver) = mpsc::unbounded_channel();
            runtime.spawn(publisher::run(publisher::Task {
                slot: publisher.clone(),
                client: client.clone(),
                shard: index,
                addr: addr.clone(),
                shared: shared.clone(),
                options: options.clone(),
                settings: settings.clone(),
            }));
            runtime.spawn(
                subscriber::Subscriber::new(subscriber::Setup {
                    client,
                    shard: index,
                    addr: addr.clone(),
                    shared: shared.clone(),
                    options: options.clone(),
                    settings: settings.clone(),
                    commands: receiver,
                })
                .run(),
            );
            shards.push(Shard {
                addr,
                commands,
                publisher,
            });
        }
        Ok(Arc::new(RedisBroker {
            settings,
            options,
            shards,
            shared,
        }))
    }

    fn shard(&self, topic: &Topic) -> &Shard {
        &self.shards[wire::shard_of(topic.app(), self.shards.len())]
    }

    fn key(&self, node: &str) -> String {
        format!("{}.node.{}", self.settings.prefix, wire::escape(node))
    }

    fn nodes_key(&self) -> String {
        format!("{}.nodes", self.settings.prefix)
    }

    /// Shard 0's publisher connection, which carries the cluster view.
    fn view_connection(&self) -> Result<::redis::aio::MultiplexedConnection, BrokerError> {
        let shard = &self.shards[0];
        match shard.publisher.connection() {
            Some(connection) if !self.shared.is_closed() => Ok(connection),
            _ => Err(not_connected(&shard.addr)),
        }
    }
}

/// One `Client` per URL; the first bad one is a configuration error, which shows the URL with
/// its password redacted ([`redact_userinfo`]).
fn validate(urls: &[String]) -> Result<Vec<Client>, BrokerError> {
    if urls.is_empty() {
        return Err(BrokerError::Config("redis: no server URL".into()));
    }
    let mut seen = HashSet::new();
    urls.iter()
        .enumerate()
        .map(|(index, url)| {
            let bad = |why: &dyn fmt::Display| {
                BrokerError::Config(format!(
                    "redis URL #{} {:?}: {why}",
                    index + 1,
                    crate::redact_url(url)
                ))
            };
            // The redis crate also takes `unix://` and host-only strings; a typo should not
            // quietly become one of those.
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(bad(&"must start with redis:// or rediss://"));
            }
            // The parser's error text does not repeat the URL.
            let client = Client::open(url.as_str()).map_err(|e| bad(&e))?;
            let addr = client.get_connection_info().addr().to_string();
            if !seen.insert(addr.clone()) {
                return Err(bad(&format_args!("the same server twice ({addr})")));
            }
            Ok(client)
        })
        .collect()
}

fn not_connected(addr: &str) -> BrokerError {
    BrokerError::Unavailable(format!("redis {addr} is not connected"))
}

/// What a failed command means for the caller: it was handed to a connection, so it may have
/// been executed, whatever the error (see the module docs).
fn command_error(error: &::redis::RedisError) -> BrokerError {
    BrokerError::Failed(error.to_string())
}

/// A command handed to the connection failed: it may have been executed.
fn sent_and_failed(error: &::redis::RedisError, publisher: &Publisher) -> BrokerError {
    if is_connection_error(error) {
        // Let the supervisor check now rather than at its next PING.
        publisher.suspect();
    }
    command_error(error)
}

fn is_connection_error(error: &::redis::RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shards: Vec<&str> = self.shards.iter().map(|s| s.addr.as_str()).collect();
        f.debug_struct("RedisBroker")
            .field("shards", &shards)
            .field("prefix", &self.settings.prefix)
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, topic: &Topic, publication: Publication) -> Publishing {
        self.publish_one(topic, publication)
    }

    /// One pipeline per shard, in the order given; see [`RedisBroker::publish_many`].
    fn publish_all(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> BoxFuture<'_, Vec<Result<Published, BrokerError>>> {
        self.publish_many(publications)
    }

    fn subscribe(&self, topic: &Topic, seq: u64) -> Subscription {
        // A failed send means the task stopped (closed): nothing will ever be live, and the
        // node learns that from the state, not from here.
        let _ = self.shard(topic).commands.send(Command::Subscribe {
            topic: topic.clone(),
            seq,
        });
        Subscription::Pending
    }

    fn unsubscribe(&self, topic: &Topic) {
        let _ = self
            .shard(topic)
            .commands
            .send(Command::Unsubscribe(topic.clone()));
    }

    fn state(&self) -> BrokerState {
        self.shared.state()
    }

    fn report(
        &self,
        report: &NodeReport,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let prepared = serde_json::to_vec(report)
            .map_err(|e| BrokerError::Failed(format!("report: {e}")))
            .and_then(|json| Ok((json, self.view_connection()?)));
        let (json, mut connection) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let mut pipe = ::redis::pipe();
        // PX takes whole milliseconds; a TTL under 1 ms would be refused.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        pipe.cmd("SET")
            .arg(self.key(&report.node))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(self.nodes_key())
            .arg(&report.node)
            .ignore();
        let timeout = self.settings.publish_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut connection)).await {
                Err(_) => Err(BrokerError::TimedOut(timeout)),
                Ok(result) => result.map_err(|e| command_error(&e)),
            }
        })
    }

    fn cluster(&self) -> BoxFuture<'static, Result<Vec<NodeReport>, BrokerError>> {
        let mut connection = match self.view_connection() {
            Ok(connection) => connection,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let nodes_key = self.nodes_key();
        let key_prefix = self.key("");
        let timeout = self.settings.publish_timeout;
        Box::pin(async move {
            let read = async {
                let nodes: Vec<String> = ::redis::cmd("SMEMBERS")
                    .arg(&nodes_key)
                    .query_async(&mut connection)
                    .await?;
                if nodes.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<String> = nodes
                    .iter()
                    .map(|node| format!("{key_prefix}{}", wire::escape(node)))
                    .collect();
                let values: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await?;
                let mut reports = Vec::with_capacity(nodes.len());
                let mut expired = Vec::new();
                for (node, value) in nodes.into_iter().zip(values) {
                    match value {
                        None => expired.push(node),
                        // A report this node cannot read (another version, a stray key) is
                        // left out of the view rather than failing it.
                        Some(json) => match serde_json::from_slice::<NodeReport>(&json) {
                            Ok(report) => reports.push(report),
                            Err(error) => tracing::debug!(%node, %error, "unreadable node report"),
                        },
                    }
                }
                if !expired.is_empty() {
                    ::redis::cmd("SREM")
                        .arg(&nodes_key)
                        .arg(&expired)
                        .query_async::<()>(&mut connection)
                        .await?;
                }
                reports.sort_by(|a, b| a.node.cmp(&b.node));
                Ok(reports)
            };
            match tokio::time::timeout(timeout, read).await {
                Err(_) => Err(BrokerError::TimedOut(timeout)),
                Ok(result) => result.map_err(|e: ::redis::RedisError| command_error(&e)),
            }
        })
    }

    fn close(&self) {
        self.shared.close();
        for shard in &self.shards {
            shard.publisher.clear();
        }
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn history(
        &self,
        topic: &Topic,
        since: Option<Since>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HistoryRead, BrokerError>> {
        self.read_history(topic, since, limit)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        // The tasks hold no reference to the broker, so without this they would outlive it.
        self.shared.close();
    }
}

/// Which connection of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Subscriber,
    Publisher,
}

/// What the broker and its tasks share: the node, the stop signal, and which connections are
/// up, from which [`Broker::state`] is computed.
struct Shared {
    inbound: Weak<dyn Inbound>,
    cancel: CancellationToken,
    /// Per shard: subscriber up, publisher up.
    up: Vec<[AtomicBool; 2]>,
    /// The state last reported through [`BrokerEvent::State`]. The lock also serialises
    /// reports, so that two connections changing at once cannot report out of order. It is
    /// held while the node takes the event; that cannot deadlock, because nothing the node
    /// calls on the broker ([`Broker::state`] reads the atomics) takes it.
    reported: Mutex<BrokerState>,
}

impl Shared {
    fn new(inbound: Weak<dyn Inbound>, shards: usize) -> Self {
        Shared {
            inbound,
            cancel: CancellationToken::new(),
            up: (0..shards)
                .map(|_| [AtomicBool::new(false), AtomicBool::new(false)])
                .collect(),
            reported: Mutex::new(BrokerState::Connecting),
        }
    }

    fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn state(&self) -> BrokerState {
        if self.is_closed() {
            BrokerState::Closed
        } else if self
            .up
            .iter()
            .flatten()
            .all(|up| up.load(Ordering::Acquire))
        {
            BrokerState::Connected
        } else {
            BrokerState::Connecting
        }
    }

    /// Records that one connection came up or went down, and reports the broker's state if
    /// that changed it. `error` says why a connection went down.
    fn set_up(&self, shard: usize, role: Role, up: bool, error: Option<String>) {
        let index = match role {
            Role::Subscriber => 0,
            Role::Publisher => 1,
        };
        // A poisoned lock only means another task panicked while reporting; the state itself
        // is in the atomics, so go on.
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        self.up[shard][index].store(up, Ordering::Release);
        let state = self.state();
        if state != *reported && state != BrokerState::Closed {
            *reported = state;
            self.event(BrokerEvent::State {
                state,
                error: if up { None } else { error },
            });
        }
    }

    /// Hands `event` to the node; false (and every task stops) when the node is gone.
    fn event(&self, event: BrokerEvent) -> bool {
        match self.inbound.upgrade() {
            Some(inbound) => {
                inbound.event(event);
                true
            }
            None => {
                self.close();
                false
            }
        }
    }

    fn close(&self) {
        self.cancel.cancel();
    }
}
