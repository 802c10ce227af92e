//! The NATS broker: NATS core pub/sub, one subject per topic ([`wire::channel`]); the history
//! of apps that keep one in a JetStream stream (`nats/history.rs`), the cluster view in a
//! JetStream key-value bucket.
//!
//! A publication to an app with history is first stored in JetStream with its position
//! (offsets given by compare-and-set, the same on every node), and only once JetStream has it
//! published on the topic's live subject, as wire version 2; everything below holds for that
//! live publication. Apps without history publish on the live subject alone, wire version 1.
//!
//! # What NATS guarantees, and what it does not
//! - **Order.** A NATS server reads each connection in order and fans each message out before
//!   it reads the next one from that connection: the publications of one node arrive
//!   everywhere in the order that node published them. It does **not** give *concurrent*
//!   publishers one interleaving: each connection is fanned out by its own reader, so pushes
//!   accepted at the same moment by two nodes may reach two subscribers in different orders
//!   (Redis, single-threaded, does give one order). What holds across nodes is causal order:
//!   a push published after another's confirmation (the round trip behind every `202`) comes
//!   after it everywhere, so a backend that waits for each `202` sees its pushes in its order.
//!   That needs the nodes on one NATS server: connect every gateway node to the same server
//!   (the others serve as fail-over: several URLs).
//!   Every node tries the URLs in the order given, always starting with the first (async-nats
//!   would shuffle them; this broker turns that off), so nodes with the same `url` meet on
//!   one server. After a fail-over, though, nodes may sit on *different* servers: a node that
//!   lost the first server moves to the next one and stays there until it loses that
//!   connection too, while nodes that never lost the first server stay on it. Until then the
//!   order between publishers holds only among the nodes on one server.
//! - **At most once.** NATS core keeps nothing. A node that is disconnected, or whose
//!   subscription was not yet live, misses what was published meanwhile; a reconnect is
//!   reported as [`GapCause::Reconnected`](crate::GapCause::Reconnected) for every
//!   subscribed topic, once the subscriptions are live again on the new connection.
//! - **Slow consumers drop.** Each subscription buffers at most [`SUBSCRIPTION_CAPACITY`]
//!   messages in this process; past that async-nats drops messages and the node gets
//!   [`GapCause::SlowConsumer`](crate::GapCause::SlowConsumer) for *every* subscribed topic
//!   (async-nats 0.51 does not expose which subscription id belongs to which `Subscriber`, so
//!   the affected topic is unknown).
//!   A node too slow to read its socket is cut off by the server (its own slow-consumer rule),
//!   which shows up as a reconnect.
//! - **A successful publish** means the server has read the message: after queueing it, the
//!   publish makes a round trip through the server on the same connection (a request nobody
//!   answers, which the server answers "no responders"); the server reads a connection in
//!   order, so when that answer is back, on the connection the message was queued on (no
//!   disconnection in between), the server had the message and handed it to every subscription
//!   it had. That costs one round trip per push and keeps `202` honest: a publication queued
//!   just as the server died is not reported a success. While the client is not connected a
//!   publish fails at once ([`BrokerError::Unavailable`]) instead of being buffered by
//!   async-nats for an unknown time.
//! - **A subscription is live** ([`BrokerEvent::Subscribed`](crate::BrokerEvent::Subscribed))
//!   once a request sent after the `SUB` came back from the server: the server handles a
//!   connection's messages in order, so it had registered the subscription.
//!   (`Client::flush` only writes the socket; it does not wait for the server.) In a NATS
//!   cluster, publications entering through *another* server may still miss the subscription
//!   for the moment the servers take to share interest.
//!
//! # What a failed publication means
//! NATS core has no answer to a publication: [`Client::publish`] only puts it in async-nats's
//! command queue, and returns `Ok` once it is there. Every way that fails is *before* that, so
//! nothing was sent: [`BrokerError::Unavailable`] (nobody received it; a retry cannot
//! duplicate it). Once it is queued, the confirming round trip decides, and a failure there
//! leaves the outcome unknown ([`BrokerError::Failed`] / [`BrokerError::TimedOut`]):
//!
//! | failure | error |
//! |---|---|
//! | broker closed; client not connected (known down, or not yet up) | `Unavailable` |
//! | refused before queueing: over the server's `max_payload`, bad subject | `Unavailable` |
//! | async-nats's connection task has ended (`PublishErrorKind::Send`) | `Unavailable` |
//! | no room in the command queue within `publish_timeout` | `Unavailable` |
//! | queued; the round trip failed, or the connection was lost before it came back | `Failed` |
//! | queued; no answer to the round trip within `publish_timeout` | `TimedOut` |
//!
//! The `Send` error hands the message back unqueued. The fourth row happens when the
//! connection stalled or broke after the check; it holds because the queue is a tokio `mpsc`
//! channel, whose `send` puts nothing in when it is given up.
//!
//! # Connecting
//! [`NatsBroker::connect`] returns at once; the client connects in the background
//! ([`BrokerState::Connecting`] until then), retries for ever, and reconnects with the backoff
//! of [`crate::backoff`]: the first try at once, then `reconnect_min`/2..`reconnect_min`,
//! doubling up to `reconnect_max`/2..`reconnect_max`. async-nats resubscribes by itself after
//! a reconnect; this broker never subscribes a second time.
//!
//! Interest changes are folded per topic (the latest wish wins) until the subscription task
//! takes them, and while the client is disconnected the task holds them back and applies what
//! is left once it is connected again: memory is bounded by the number of distinct topics,
//! however much the node's clients churn during an outage, and a subscribe and unsubscribe
//! made meanwhile cancel out.
//!
//! # Credentials in URLs
//! A URL may carry credentials (`nats://user:password@host`, `nats://token@host`); every error
//! and log of this broker shows URLs with them redacted. async-nats itself logs server
//! addresses, credentials included, at `debug` level (target `async_nats`): prefer
//! [`NatsAuth`] to credentials in URLs.
//!
//! # The cluster view
//! Reports live in the JetStream key-value bucket `<prefix>-nodes` (history 1, maximum age the
//! report's TTL), one key per node; see [`NatsBroker::report`]. The NATS server needs
//! JetStream (`nats-server -js`) for the cluster view and for history; with history off for
//! every app (`HistoryPolicy::off`), publications and subscriptions work without it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, ServerAddr};
use futures_util::FutureExt;
use gateway_core::{HistoryRead, Publication, Since, Topic};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::{
    BoxFuture, Broker, BrokerError, BrokerSettings, BrokerState, Inbound, NodeReport, Published,
    Publishing, Subscription, wire,
};

mod cluster;
mod history;
mod publish;
mod subscriptions;

use history::HistoryStore;
pub use history::{MAX_ATTEMPTS, TAIL_CACHE_CAPACITY};
use publish::{confirm, ensure_history_on_connect, published, send};
use subscriptions::Interest;

/// Messages one subscription may hold in this process before async-nats drops new ones and
/// reports a slow consumer ([`crate::GapCause::SlowConsumer`]). 64 Ki messages: seconds of a
/// busy topic, so only a node that has stopped keeping up loses anything, and a stuck node
/// does not buffer without bound.
pub const SUBSCRIPTION_CAPACITY: usize = 64 * 1024;

/// How often the client pings the server. A server that vanished without closing the TCP
/// connection (a partition, a dead host) is noticed when a third ping in a row goes
/// unanswered, so within 20-30 s; async-nats' default of 60 s would leave a node publishing
/// into nothing for minutes.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How the node authenticates to the NATS servers: at most one of a token, a user and
/// password, or a credentials file (JWT and NKey seed, as `nsc` writes them).
///
/// `Debug` shows which one is set but never the token nor the password.
#[derive(Default, Clone)]
pub struct NatsAuth {
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A `.creds` file, read once by [`NatsBroker::connect`].
    pub credentials_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsAuth")
            .field("token", &redacted(&self.token))
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
}

impl NatsAuth {
    /// `options` with this authentication, or why it cannot work.
    fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, BrokerError> {
        let user_password = match (&self.user, &self.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => {
                return Err(BrokerError::Config(
                    "NATS user and password go together: set both or neither".into(),
                ));
            }
        };
        let methods = usize::from(self.token.is_some())
            + usize::from(user_password.is_some())
            + usize::from(self.credentials_file.is_some());
        if methods > 1 {
            return Err(BrokerError::Config(
                "NATS authentication: set one of token, user and password, credentials file".into(),
            ));
        }
        if let Some(token) = &self.token {
            return Ok(options.token(token.clone()));
        }
        if let Some((user, password)) = user_password {
            return Ok(options.user_and_password(user, password));
        }
        if let Some(path) = &self.credentials_file {
            // Read here, synchronously and once, so that a missing or broken file is a
            // configuration error at start-up rather than an endless reconnect loop.
            let text = std::fs::read_to_string(path).map_err(|e| {
                BrokerError::Config(format!("NATS credentials file {}: {e}", path.display()))
            })?;
            return options.credentials(&text).map_err(|e| {
                BrokerError::Config(format!("NATS credentials file {}: {e}", path.display()))
            });
        }
        Ok(options)
    }
}

/// A [`Broker`] on NATS core pub/sub. See the module docs for its guarantees.
pub struct NatsBroker {
    client: Client,
    settings: BrokerSettings,
    /// The node's interest changes, folded per topic until the subscription task takes them:
    /// `subscribe`/`unsubscribe` run under the node's lock and must neither wait nor fail,
    /// and the task may not take them for as long as an outage lasts.
    interest: Arc<Interest>,
    /// Counts the client's disconnections (from its event callback): a publication whose
    /// confirming round trip came back over a later connection may have been lost with the
    /// earlier one.
    disconnections: Arc<AtomicU64>,
    /// The apps' history on JetStream (see `nats/history.rs`).
    history: Arc<HistoryStore>,
    shutdown: CancellationToken,
    closed: AtomicBool,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.settings.prefix)
            .field("node_id", &self.settings.node_id)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Starts a broker on the NATS servers in `url` (`nats://host:port` or `tls://host:port`,
    /// several separated by commas) and returns at once: connecting happens in the
    /// background, for ever. Must be called inside a tokio runtime.
    ///
    /// Fails only on configuration ([`BrokerError::Config`]): a bad URL, a prefix that is not a
    /// NATS subject prefix, contradictory or unreadable authentication, no runtime.
    pub fn connect(
        url: &str,
        auth: NatsAuth,
        settings: BrokerSettings,
        inbound: Weak<dyn Inbound>,
    ) -> Result<Arc<NatsBroker>, BrokerError> {
        let servers = parse_servers(url)?;
        validate_prefix(&settings.prefix)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BrokerError::Config("NatsBroker::connect must be called inside a tokio runtime".into())
        })?;
        let (events, receiver) = mpsc::unbounded_channel();
        let slow_consumer_reported = Arc::new(AtomicBool::new(false));
        let slow = slow_consumer_reported.clone();
        let disconnections = Arc::new(AtomicU64::new(0));
        let counted = disconnections.clone();
        let connected = Arc::new(Notify::new());
        let connected_now = connected.clone();
        let backoff = Mutex::new(Backoff::new(settings.reconnect_min, settings.reconnect_max));
        let options = auth
            .apply(ConnectOptions::new())?
            .name(format!("ws-gateway {}", settings.node_id))
            .retry_on_initial_connect()
            // One order per topic needs every node on the same server: the first URL that
            // answers, not a random one.
            .retain_servers_order()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .ping_interval(PING_INTERVAL)
            // Bounds the subscription round trips and every JetStream request.
            .request_timeout(Some(settings.publish_timeout))
            .reconnect_delay_callback(move |attempts| {
                let mut backoff = backoff.lock().unwrap_or_else(PoisonError::into_inner);
                // async-nats counts tries since the last success, from 1.
                if attempts <= 1 {
                    backoff.reset();
                    Duration::ZERO
                } else {
                    backoff.next_delay()
                }
            })
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Disconnected => {
                        counted.fetch_add(1, Ordering::AcqRel);
                    }
                    async_nats::Event::Connected => connected_now.notify_one(),
                    _ => {}
                }
                subscriptions::on_event(event, &events, &slow);
                std::future::ready(())
            });
        // With `retry_on_initial_connect` async-nats builds the client and spawns its tasks
        // without waiting for anything, so the future is complete at its first poll.
        let client = match options.connect(servers).now_or_never() {
            Some(Ok(client)) => client,
            Some(Err(e)) => return Err(BrokerError::Config(e.to_string())),
            None => {
                return Err(BrokerError::Failed(
                    "async-nats wanted to wait while creating its client; this async-nats \
                     version is not supported"
                        .into(),
                ));
            }
        };
        let shutdown = CancellationToken::new();
        let history = Arc::new(HistoryStore::new(
            client.clone(),
            &settings.prefix,
            settings.history.clone(),
            settings.publish_timeout,
            disconnections.clone(),
        ));
        runtime.spawn(ensure_history_on_connect(
            history.clone(),
            connected,
            settings.publish_timeout,
            shutdown.clone(),
        ));
        let interest = Arc::new(Interest::default());
        runtime.spawn(subscriptions::run(
            subscriptions::Worker::new(
                client.clone(),
                inbound,
                settings.prefix.clone(),
                interest.clone(),
                slow_consumer_reported,
                settings.reconnect_min,
            ),
            receiver,
            shutdown.clone(),
        ));
        Ok(Arc::new(NatsBroker {
            client,
            settings,
            interest,
            disconnections,
            history,
            shutdown,
            closed: AtomicBool::new(false),
        }))
    }

    fn connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.client.connection_state() == State::Connected
    }
}

impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    /// Succeeds once the message is queued on the connected client's connection (see the
    /// module docs: at most once, no acknowledgement from the server). Every failure is
    /// [`BrokerError::Unavailable`]: nothing was queued, so nothing was sent.
    fn publish(&self, topic: &Topic, publication: Publication) -> Publishing {
        if !self.connected() {
            return Publishing::Done(Err(BrokerError::Unavailable(
                "not connected to a NATS server".into(),
            )));
        }
        let client = self.client.clone();
        let history = self.history.clone();
        let prefix = self.settings.prefix.clone();
        let topic = topic.clone();
        let timeout = self.settings.publish_timeout;
        let disconnections = self.disconnections.clone();
        Publishing::Pending(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let epoch = disconnections.load(Ordering::Acquire);
            let position = send(
                &client,
                &history,
                &prefix,
                &topic,
                publication,
                deadline,
                timeout,
            )
            .await?;
            confirm(&client, &disconnections, epoch, deadline, timeout).await?;
            Ok(published(position))
        }))
    }

    /// Queues the messages one after another (each waits for room in the client's queue
    /// before the next is queued: the server reads them in this order), then confirms them
    /// all with one round trip. Stops at the first message that could not be queued.
    fn publish_all(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> BoxFuture<'_, Vec<Result<Published, BrokerError>>> {
        Box::pin(async move {
            if !self.connected() {
                return vec![Err(BrokerError::Unavailable(
                    "not connected to a NATS server".into(),
                ))];
            }
            let timeout = self.settings.publish_timeout;
            let deadline = tokio::time::Instant::now() + timeout;
            let epoch = self.disconnections.load(Ordering::Acquire);
            let mut queued = Vec::with_capacity(publications.len());
            let mut refused = None;
            for (topic, publication) in publications {
                let prefix = &self.settings.prefix;
                let sent = send(
                    &self.client,
                    &self.history,
                    prefix,
                    &topic,
                    publication,
                    deadline,
                    timeout,
                );
                match sent.await {
                    Ok(position) => queued.push(position),
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            let confirmed = if queued.is_empty() {
                Ok(())
            } else {
                confirm(&self.client, &self.disconnections, epoch, deadline, timeout).await
            };
            let mut outcomes: Vec<_> = queued
                .into_iter()
                .map(|position| confirmed.clone().map(|()| published(position)))
                .collect();
            outcomes.extend(refused.map(Err));
            outcomes
        })
    }

    /// Always: apps with history keep it in JetStream (docs/protocol.md, "NATS JetStream").
    fn keeps_history(&self) -> bool {
        true
    }

    /// Reads `topic`'s history from JetStream, within `publish_timeout` (see
    /// `nats/history/read.rs`).
    fn history(
        &self,
        topic: &Topic,
        since: Option<Since>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HistoryRead, BrokerError>> {
        let ready = if self.connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(
                "not connected to a NATS server".into(),
            ))
        };
        let history = self.history.clone();
        let topic = topic.clone();
        let live = wire::channel(&self.settings.prefix, &topic);
        let timeout = self.settings.publish_timeout;
        Box::pin(async move {
            ready?;
            let deadline = tokio::time::Instant::now() + timeout;
            history.read(&topic, &live, since, limit, deadline).await
        })
    }

    fn subscribe(&self, topic: &Topic, seq: u64) -> Subscription {
        // Once closed nothing is live and nothing will be; nobody would take the change.
        if !self.closed.load(Ordering::Acquire) {
            self.interest.subscribe(topic, seq);
        }
        Subscription::Pending
    }

    fn unsubscribe(&self, topic: &Topic) {
        if !self.closed.load(Ordering::Acquire) {
            self.interest.unsubscribe(topic);
        }
    }

    fn state(&self) -> BrokerState {
        if self.closed.load(Ordering::Acquire) {
            return BrokerState::Closed;
        }
        match self.client.connection_state() {
            State::Connected => BrokerState::Connected,
            State::Pending | State::Disconnected => BrokerState::Connecting,
        }
    }

    /// Puts `report` under the node's key in the bucket `<prefix>-nodes`, creating the bucket
    /// (history 1, maximum age `ttl`) if it is missing. If the bucket exists with a shorter
    /// maximum age than `ttl`, it is raised to `ttl`; it is never lowered. So with nodes
    /// configured with different TTLs (during a rolling change) no node's report expires
    /// before it is renewed, and a dead node disappears within the longest TTL in use.
    ///
    /// Bucket and key are the prefix and node id escaped for JetStream: ASCII letters, digits
    /// and `-` stay, every other byte becomes `_` and two hex digits (the channel escape's `~`
    /// is not allowed in bucket names or keys).
    fn report(
        &self,
        report: &NodeReport,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let ready = self.cluster_ready();
        let client = self.client.clone();
        let bucket = cluster::bucket_name(&self.settings.prefix);
        let key = cluster::key(&self.settings.node_id);
        let value = serde_json::to_vec(report);
        Box::pin(async move {
            ready?;
            let value = value.map_err(|e| BrokerError::Failed(format!("report: {e}")))?;
            cluster::put(client, &bucket, &key, value.into(), ttl).await
        })
    }

    /// Every report in the bucket that has not expired and parses, sorted by node.
    fn cluster(&self) -> BoxFuture<'static, Result<Vec<NodeReport>, BrokerError>> {
        let ready = self.cluster_ready();
        let client = self.client.clone();
        let bucket = cluster::bucket_name(&self.settings.prefix);
        Box::pin(async move {
            ready?;
            cluster::read_all(client, &bucket).await
        })
    }

    /// Stops the subscription task and every subscription, then drains the client (its last
    /// publications are written, its subscriptions removed on the server) in the background,
    /// for at most `publish_timeout`.
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shutdown.cancel();
        let client = self.client.clone();
        let timeout = self.settings.publish_timeout;
        // Without a runtime (dropped while the process exits) there is nothing to drain into;
        // dropping the client closes its connection once its tasks end.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, client.drain()).await;
            });
        }
    }
}

impl NatsBroker {
    /// Whether the cluster view can be read or written now.
    fn cluster_ready(&self) -> Result<(), BrokerError> {
        if !self.connected() {
            return Err(BrokerError::Unavailable(
                "not connected to a NATS server".into(),
            ));
        }
        if !self.client.server_info().jetstream {
            return Err(BrokerError::Failed(
                "cluster view needs JetStream, and this NATS server has it disabled \
                 (start nats-server with -js, or enable jetstream in its configuration)"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        // The subscription task holds the client and the client's event callback holds the
        // task's event queue, so neither would end by itself.
        self.close();
    }
}

/// The servers in `url`: `nats://` or `tls://` URLs with a host, separated by commas. An
/// error shows the URL with its credentials redacted.
fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, BrokerError> {
    let bad = |part: &str, why: &str| {
        BrokerError::Config(format!("NATS URL {:?}: {why}", crate::redact_url(part)))
    };
    let mut servers = Vec::new();
    for part in url.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad(
                url,
                "expected nats://host:port, several separated by commas",
            ));
        }
        let (scheme, _) = part
            .split_once("://")
            .ok_or_else(|| bad(part, "expected nats://host:port or tls://host:port"))?;
        if scheme != "nats" && scheme != "tls" {
            return Err(bad(part, "the scheme must be nats:// or tls://"));
        }
        let server = ServerAddr::from_str(part).map_err(|e| bad(part, &e.to_string()))?;
        if server.host().is_empty() {
            return Err(bad(part, "no host"));
        }
        servers.push(server);
    }
    Ok(servers)
}

/// A prefix must be one or more NATS subject tokens, without wildcards, so that every
/// channel name is a literal subject.
fn validate_prefix(prefix: &str) -> Result<(), BrokerError> {
    let valid_token = |token: &str| {
        !token.is_empty()
            && !token
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>')
    };
    if prefix.split('.').all(valid_token) {
        Ok(())
    } else {
        Err(BrokerError::Config(format!(
            "broker prefix {prefix:?} is not a NATS subject prefix (dot-separated non-empty \
             tokens, no spaces, no * or >)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_urls_are_checked_one_by_one() {
        assert_eq!(parse_servers("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert_eq!(
            parse_servers("nats://a:4222, tls://b:4443,nats://c")
                .unwrap()
                .len(),
            3
        );
        for bad in [
            "",
            "127.0.0.1:4222",
            "http://a:4222",
            "ws://a:80",
            "nats://",
            "nats://a:99999",
            "nats://a:4222,",
            "nats://a:4222,redis://b",
        ] {
            assert!(
                matches!(parse_servers(bad), Err(BrokerError::Config(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_prefix_is_literal_subject_tokens() {
        for good in ["ws-gateway", "prod.eu", "a_b"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "x*"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_is_one_method_and_secrets_stay_out_of_debug() {
        let auth = NatsAuth {
            user: Some("gw".into()),
            password: Some("hunter2".into()),
            ..NatsAuth::default()
        };
        let shown = format!("{auth:?}");
        assert!(
            shown.contains("gw") && !shown.contains("hunter2"),
            "{shown}"
        );
        let token = NatsAuth {
            token: Some("s3cret".into()),
            ..NatsAuth::default()
        };
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(auth.apply(ConnectOptions::new()).is_ok());
        assert!(token.apply(ConnectOptions::new()).is_ok());
        for bad in [
            NatsAuth {
                user: Some("gw".into()),
                ..NatsAuth::default()
            },
            NatsAuth {
                token: Some("t".into()),
                user: Some("gw".into()),
                password: Some("p".into()),
                ..NatsAuth::default()
            },
            NatsAuth {
                credentials_file: Some("/nonexistent/ws-gateway.creds".into()),
                ..NatsAuth::default()
            },
        ] {
            assert!(matches!(
                bad.apply(ConnectOptions::new()),
                Err(BrokerError::Config(_))
            ));
        }
    }
}
