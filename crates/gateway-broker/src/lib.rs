//! The link between gateway nodes: a [`Broker`] carries each push to every node with local
//! interest in its topic, and tells the node what arrived ([`Inbound`]).
//!
//! - [`local::LocalBroker`]: one process, no server. A publication is handed straight back to
//!   the node: the single-node path, and the default.
//! - [`redis::RedisBroker`]: Redis pub/sub, one channel per topic, apps sharded over several
//!   Redis servers by a consistent hash.
//! - [`nats::NatsBroker`]: NATS core pub/sub, one subject per topic.
//!
//! Semantics every implementation keeps (docs/protocol.md, "Running a cluster"):
//! - **Interest-based routing.** A node subscribes to a topic when its first local subscriber
//!   appears and unsubscribes when the last one leaves ([`Broker::subscribe`],
//!   [`Broker::unsubscribe`], driven by the hub's interest actions), so it receives only what
//!   its clients asked for.
//! - **Exactly once.** A node delivers only what comes back from the broker, never a local
//!   short-cut as well, and holds one subscription per topic.
//! - **Order.** All pushes of a topic pass through one broker channel. Redis serialises it:
//!   every node receives a topic's pushes in one order. NATS keeps each publishing node's
//!   order and causal order (a push published after another was confirmed comes after it), but
//!   not one interleaving of concurrent publishers (see [`nats`]); with history, every
//!   publication carries its offset and the node restores the one order.
//! - **Failure is reported.** A publication the broker did not take is an error (the push API
//!   answers 503); a reconnect or a slow-consumer drop is reported as a possible gap per topic
//!   ([`BrokerEvent::Gap`]).
//!
//! - **History.** A broker that [keeps history](Broker::keeps_history) (Redis: a Lua script
//!   per push over a Redis stream; NATS: JetStream) gives each publication of an app with
//!   history its [`Position`], the same at every node, and reads it back
//!   ([`Broker::history`]) for recoveries and for holes in a node's live stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gateway_core::{HistoryPolicy, HistoryRead, Position, Publication, Since, Topic};

pub mod backoff;
pub mod local;
pub mod nats;
pub mod redis;
pub mod report;
pub mod wire;

pub use report::NodeReport;

/// A boxed future, for the trait's few asynchronous methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the broker could not do what it was asked.
///
/// For a publication the difference matters to the pusher: [`BrokerError::Unavailable`] means
/// nothing was sent (nobody received it; retrying cannot duplicate it), while
/// [`BrokerError::TimedOut`] and [`BrokerError::Failed`] mean it was sent and its outcome is
/// unknown (it may have been delivered; see [`BrokerError::may_have_been_delivered`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker's server is not reachable now (the node is reconnecting), and nothing was
    /// sent.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request was sent, and the broker answered with an error or the connection failed
    /// before its answer.
    #[error("broker error: {0}")]
    Failed(String),
    /// The request was sent, and the broker did not answer in time.
    #[error("broker did not answer within {0:?}")]
    TimedOut(Duration),
    /// The configuration cannot work (a bad URL, an unknown option).
    #[error("broker configuration: {0}")]
    Config(String),
}

impl BrokerError {
    /// Whether a publication that failed this way may still have reached subscribers (it was
    /// sent, and no answer says otherwise).
    pub fn may_have_been_delivered(&self) -> bool {
        matches!(self, BrokerError::Failed(_) | BrokerError::TimedOut(_))
    }
}

/// The outcome of a publication, once the broker took it: with the position the broker gave it
/// when its app keeps history. A broker makes it with [`Published::new`] or [`Published::at`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Published {
    pub position: Option<Position>,
}

impl Published {
    pub fn new() -> Self {
        Published { position: None }
    }

    pub fn at(position: Position) -> Self {
        Published {
            position: Some(position),
        }
    }
}

/// What [`Broker::publish`] returns: done already (the local broker, a refusal), or a future
/// for a server's answer. The local case allocates nothing, which keeps the single-node push
/// path as cheap as it was.
#[must_use = "a publication's outcome decides the push's answer"]
pub enum Publishing {
    Done(Result<Published, BrokerError>),
    Pending(BoxFuture<'static, Result<Published, BrokerError>>),
}

impl fmt::Debug for Publishing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Publishing::Done(result) => f.debug_tuple("Done").field(result).finish(),
            Publishing::Pending(_) => f.write_str("Pending"),
        }
    }
}

impl Future for Publishing {
    type Output = Result<Published, BrokerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Publishing::Done(result) => Poll::Ready(std::mem::replace(
                result,
                Err(BrokerError::Failed("polled after completion".into())),
            )),
            Publishing::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// Whether a subscription is live as [`Broker::subscribe`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// Live now: publications to the topic reach this node from here on.
    Live,
    /// Requested; [`BrokerEvent::Subscribed`] with the same `seq` (or a later one for the
    /// same topic) says when it is live.
    Pending,
}

/// The broker's connection, as the node reports it (`/stat`, later `/readyz` and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerState {
    /// Connected: publications and subscriptions work.
    Connected,
    /// Not connected now (not yet, or lost); reconnecting with backoff.
    Connecting,
    /// Closed for good (the node is shutting down).
    Closed,
}

impl BrokerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Connected => "connected",
            BrokerState::Connecting => "connecting",
            BrokerState::Closed => "closed",
        }
    }
}

/// Why publications may have been lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapCause {
    /// The subscription connection was lost and has been restored: Redis and NATS core drop
    /// what was published meanwhile.
    Reconnected,
    /// The broker dropped messages this node did not read fast enough (NATS `SlowConsumer`).
    SlowConsumer,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Reconnected => "reconnected",
            GapCause::SlowConsumer => "slow consumer",
        }
    }
}

/// Something the broker tells its node, besides publications.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// The subscription to `topic` requested with `seq` is live.
    Subscribed { topic: Topic, seq: u64 },
    /// Publications to these topics may have been lost.
    Gap { topics: Vec<Topic>, cause: GapCause },
    /// The connection state changed (`error` says why when it was lost).
    State {
        state: BrokerState,
        error: Option<String>,
    },
    /// A message on a broker channel that this node cannot read: another version of the wire
    /// format, or not ours at all. It is dropped, loudly.
    Unreadable { channel: String, error: String },
}

/// The node, as its broker sees it.
pub trait Inbound: Send + Sync + 'static {
    /// A publication for this node's local subscribers of its topic.
    fn publication(&self, publication: Publication);
    /// Anything else.
    fn event(&self, event: BrokerEvent);
}

/// Carries publications between nodes. See the crate docs for the semantics.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// `"local"`, `"redis"` or `"nats"`.
    fn kind(&self) -> &'static str;

    /// Sends `publication`, addressed to `topic`, to every node with interest in the topic
    /// (this one included: a node delivers what comes back, never a short-cut as well).
    fn publish(&self, topic: &Topic, publication: Publication) -> Publishing;

    /// Sends `publications` as [`Broker::publish`] sends one, in this order: every node
    /// receives those of one topic in the order given (what one request's array of pushes
    /// needs). Returns one outcome per publication, in order, or fewer when it stopped at a
    /// failure: those past the returned outcomes were not sent.
    ///
    /// Issuing many [`Broker::publish`]es at once does not keep their order: on a runtime
    /// with several threads, two of them waiting for room in a connection's queue can be let
    /// in together and sent in either order. So the default awaits each publication before the
    /// next, and Redis and NATS override it to pipeline them in order (one pipeline per Redis
    /// shard; NATS messages queued one by one, then confirmed by one round trip).
    fn publish_all(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> BoxFuture<'_, Vec<Result<Published, BrokerError>>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(publications.len());
            for (topic, publication) in publications {
                let outcome = self.publish(&topic, publication).await;
                let failed = outcome.is_err();
                outcomes.push(outcome);
                if failed {
                    break;
                }
            }
            outcomes
        })
    }

    /// Starts receiving publications to `topic`. Must not block nor wait: the node calls it
    /// under its lock, in the order interest changed, and the broker applies changes in that
    /// order.
    fn subscribe(&self, topic: &Topic, seq: u64) -> Subscription;

    /// Stops receiving publications to `topic`. Same rules as [`Broker::subscribe`].
    fn unsubscribe(&self, topic: &Topic);

    fn state(&self) -> BrokerState;

    /// Publishes this node's short-lived report for the cluster view; it expires by itself
    /// after `ttl` unless renewed.
    fn report(
        &self,
        report: &NodeReport,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// The reports of every live node (this one included).
    fn cluster(&self) -> BoxFuture<'static, Result<Vec<NodeReport>, BrokerError>>;

    /// Stops background work and closes connections.
    fn close(&self);

    /// Whether this broker gives publications their positions and keeps the history
    /// ([`BrokerSettings::history`] says which apps have one). When it does, every
    /// publication it delivers for such an app carries its position, and
    /// [`Broker::history`] reads the history. The local broker does not: a node on its own
    /// keeps its history in its own memory ([`gateway_core::history::History`]).
    fn keeps_history(&self) -> bool {
        false
    }

    /// Reads the history of `topic`: the newest position, the oldest offset kept, and the
    /// kept publications after `since` (every kept one with `None`; none when `since` names
    /// another epoch), oldest first, at most `limit`, each with its position. See
    /// [`HistoryRead`].
    fn history(
        &self,
        topic: &Topic,
        since: Option<Since>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HistoryRead, BrokerError>> {
        let _ = (topic, since, limit);
        let kind = self.kind();
        Box::pin(async move {
            Err(BrokerError::Config(format!(
                "the {kind} broker keeps no history"
            )))
        })
    }
}

/// Where a broker runs and how to reach it (the `[broker]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Prefix of every channel, subject and key, so several clusters can share one server.
    pub prefix: String,
    /// One identifier per node, unique in the cluster (reports are keyed by it).
    pub node_id: String,
    /// Longest wait for the broker's answer to a publication.
    pub publish_timeout: Duration,
    /// Reconnection backoff: first delay and cap (each try waits a random share of it).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Which apps keep history and how much (`[history]`): a broker that
    /// [keeps history](Broker::keeps_history) gives their publications positions.
    pub history: HistoryPolicy,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            prefix: "ws-gateway".to_owned(),
            node_id: "node".to_owned(),
            publish_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            history: HistoryPolicy::default(),
        }
    }
}

/// `url` as it may be shown in an error, a log or a `Debug`: the secret of its user info
/// replaced, `user:password@` by `user:<redacted>@` and `token@` by `<redacted>@`. Shared by
/// the Redis and the NATS broker and the server's configuration.
///
/// Everything up to the *last* `@` counts as user info: in a URL too broken to parse, a
/// password may hold `/`, `#` or `@` itself, and hiding too much is the safe mistake. A list
/// of URLs (`a,b`) is redacted one URL at a time.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let start = url.find("://").map_or(0, |scheme| scheme + 3);
    let Some(at) = url[start..].rfind('@').map(|at| start + at) else {
        return url.to_owned();
    };
    let shown = match url[start..at].split_once(':') {
        Some((user, _)) => format!("{user}:<redacted>"),
        None => "<redacted>".to_owned(),
    };
    format!("{}{shown}{}", &url[..start], &url[at..])
}

/// A broker shared by the node and its tasks.
pub type SharedBroker = Arc<dyn Broker>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_secret() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://gw:hunter2@10.0.0.5:6379/",
                "redis://gw:<redacted>@10.0.0.5:6379/",
            ),
            ("redis://:hunter2@h/", "redis://:<redacted>@h/"),
            ("nats://hunter2@a:4222", "nats://<redacted>@a:4222"),
            ("gw:hunter2@a:4222", "gw:<redacted>@a:4222"),
            // Broken URLs: a password with `/`, `@` or `#` in it is still hidden.
            (
                "nats://gw:hun/ter@2@a:99999",
                "nats://gw:<redacted>@a:99999",
            ),
            (
                "redis://gw:hun#ter2@[::1:6379/",
                "redis://gw:<redacted>@[::1:6379/",
            ),
            (
                "nats://gw:hunter2@a:4222, tls://tok@b,nats://c",
                "nats://gw:<redacted>@a:4222, tls://<redacted>@b,nats://c",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
