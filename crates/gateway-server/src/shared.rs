//! What every connection task shares: the configuration, the node, the authenticator, the
//! admission bounds and counters, and the shutdown signal. Built once, by
//! [`Gateway`](crate::Gateway), from the configuration; the part a reload may change
//! ([`LiveSettings`]) sits behind an `ArcSwap`, so reading it takes no lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use gateway_auth::Authenticator;
use gateway_broker::local::LocalBroker;
use gateway_broker::nats::{NatsAuth, NatsBroker};
use gateway_broker::redis::RedisBroker;
use gateway_broker::{BrokerError, BrokerSettings, Inbound, SharedBroker};
use gateway_core::ConnId;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{self, Handshakes, PerAddress, PushBodies};
use crate::config::{Access, BrokerKind, ServerConfig};
use crate::counters::Counters;
use crate::node::{HeldLimits, Node};

/// The settings a reload (SIGHUP) may replace while every connection stays up: each is read
/// afresh by each new connection or push, and none is held by a running connection.
#[derive(Clone)]
pub struct LiveSettings {
    /// Who is a member (HMAC secrets, JWT keys, static tokens, the HTTP callback). A
    /// connection keeps the authenticator it was authenticated with.
    pub authenticator: Arc<dyn Authenticator>,
    /// `push_api_keys`, `push_allow_from`, `allowed_origins`.
    pub access: Access,
    /// `limits.max_push_body_bytes`; at most the running `limits.max_buffered_push_bytes`.
    pub max_push_body_bytes: usize,
    /// `timeouts.push_body_ms`.
    pub push_body_timeout: Duration,
}

impl LiveSettings {
    /// The live part of `config`, with `authenticator`.
    pub fn new(config: &ServerConfig, authenticator: Arc<dyn Authenticator>) -> LiveSettings {
        LiveSettings {
            authenticator,
            access: config.access.clone(),
            max_push_body_bytes: config.limits.max_push_body_bytes,
            push_body_timeout: config.timeouts.push_body,
        }
    }
}

impl std::fmt::Debug for LiveSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSettings")
            .field("authenticator", &self.authenticator.describe())
            .field("access", &self.access)
            .field("max_push_body_bytes", &self.max_push_body_bytes)
            .field("push_body_timeout", &self.push_body_timeout)
            .finish()
    }
}

/// [`LiveSettings`] as the connections read them.
pub(crate) struct Live {
    pub(crate) settings: LiveSettings,
    /// SHA-256 of each push API key, compared in constant time.
    pub(crate) push_key_digests: Vec<[u8; 32]>,
}

impl Live {
    fn new(settings: LiveSettings) -> Live {
        let push_key_digests = settings
            .access
            .push_api_keys
            .iter()
            .map(|key| Sha256::digest(key.as_bytes()).into())
            .collect();
        Live {
            settings,
            push_key_digests,
        }
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    /// The configuration the gateway started with. Its `access`, `max_push_body_bytes` and
    /// `push_body` timeout are the start's: read them through [`Shared::live`].
    pub(crate) config: ServerConfig,
    pub(crate) node: Arc<Node>,
    /// This node's name in the cluster (`broker.node_id`, or host name and port).
    pub(crate) node_id: String,
    live: ArcSwap<Live>,
    /// Cancelled once, when the server starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task (HTTP and WebSocket), so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// The stat listener's own end and tasks: it keeps answering (`/readyz` says 503) while
    /// the other connections close, and stops last.
    pub(crate) stat_stop: CancellationToken,
    pub(crate) stat_tracker: TaskTracker,
    pub(crate) counters: Arc<Counters>,
    /// One permit per WebSocket connection (`limits.max_connections`).
    pub(crate) connection_slots: Arc<Semaphore>,
    /// One permit per stat-listener request being answered (`limits.max_stat_requests`),
    /// shared by the listener's connections (`http::stat_stack`).
    pub(crate) stat_requests: Arc<Semaphore>,
    /// One permit per `/disconnect` or `/presence` request being answered
    /// (`limits.max_control_requests`; `http::control`).
    pub(crate) control_requests: Arc<Semaphore>,
    /// One permit per push being dispatched (`limits.max_inflight_pushes`); taken once the
    /// body has arrived, so that slow senders cannot hold it.
    pub(crate) push_slots: Semaphore,
    /// Bytes of push bodies being received (`limits.max_buffered_push_bytes`).
    pub(crate) push_bodies: Arc<PushBodies>,
    /// Connections still in their request head, per listener (`limits.max_handshakes`).
    pub(crate) main_handshakes: Arc<Handshakes>,
    pub(crate) stat_handshakes: Arc<Handshakes>,
    /// Sockets per address on the main listener, when `limits.max_connections_per_ip` is set.
    pub(crate) per_address: Option<Arc<PerAddress>>,
    next_conn: AtomicU64,
}

impl Shared {
    /// Everything the connections share, for `config`: its limits are first fitted under the
    /// process's open-file limit. Starts connecting to the broker (in the background: a
    /// broker that is down makes pushes fail with 503 until it is back, it does not stop the
    /// gateway from starting); only a broker configuration that cannot work is an error.
    pub(crate) fn new(
        config: ServerConfig,
        authenticator: Arc<dyn Authenticator>,
        listen_port: u16,
    ) -> Result<Shared, BrokerError> {
        let mut config = config;
        admission::fit_to_open_file_limit(&mut config.limits);
        fit_batches_to_outboxes(&mut config.limits);
        let counters = Arc::new(Counters::default());
        let node_id = match config.broker.settings.node_id.as_str() {
            "" => format!("{}:{listen_port}", host_name()),
            id => id.to_owned(),
        };
        let settings = BrokerSettings {
            node_id: node_id.clone(),
            ..config.broker.settings.clone()
        };
        let node = Node::with_broker(
            config.hub.clone(),
            HeldLimits {
                messages: config.limits.outbox_messages,
                bytes: config.limits.outbox_bytes,
            },
            counters.clone(),
            |inbound| connect_broker(&config.broker.kind, settings, inbound),
        )?;
        if node.broker().kind() != "local" {
            // Five report lifetimes: a node whose report lapsed while it was busy is still
            // waited for; one that is gone is named as unanswered for that long.
            node.listen_for_control(&node_id, config.broker.report_ttl() * 5);
        }
        let limits = &config.limits;
        let evict_after = config.timeouts.evict_after;
        let live = ArcSwap::from_pointee(Live::new(LiveSettings::new(&config, authenticator)));
        Ok(Shared {
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            stat_requests: Arc::new(Semaphore::new(limits.max_stat_requests)),
            control_requests: Arc::new(Semaphore::new(limits.max_control_requests)),
            push_slots: Semaphore::new(limits.max_inflight_pushes),
            push_bodies: PushBodies::new(limits.max_buffered_push_bytes, evict_after),
            main_handshakes: Handshakes::new(limits.max_handshakes, evict_after, counters.clone()),
            stat_handshakes: Handshakes::new(limits.max_handshakes, evict_after, counters.clone()),
            per_address: PerAddress::new(limits.max_connections_per_ip),
            live,
            config,
            node,
            node_id,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            stat_stop: CancellationToken::new(),
            stat_tracker: TaskTracker::new(),
            counters,
            next_conn: AtomicU64::new(1),
        })
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId::new(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// The live settings now; a lock-free read. Do not hold the guard across an `.await`.
    pub(crate) fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// The authenticator now; a connection keeps the one it was given.
    pub(crate) fn authenticator(&self) -> Arc<dyn Authenticator> {
        self.live.load().settings.authenticator.clone()
    }
}

/// Replaces the [`LiveSettings`] of a running gateway (what the binary does on SIGHUP).
/// From [`Gateway::reloader`](crate::Gateway::reloader).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>) -> Reloader {
        Reloader { shared }
    }

    /// The settings in force.
    pub fn current(&self) -> LiveSettings {
        self.shared.live().settings.clone()
    }

    /// Puts `settings` in force for every connection and push that starts from now on.
    /// A `max_push_body_bytes` above the running `limits.max_buffered_push_bytes` (which
    /// needs a restart) could never be read whole: the one in force is kept, and the returned
    /// warning says so.
    pub fn apply(&self, mut settings: LiveSettings) -> Option<String> {
        let buffered = self.shared.config.limits.max_buffered_push_bytes;
        let mut warning = None;
        if settings.max_push_body_bytes > buffered {
            let kept = self.shared.live().settings.max_push_body_bytes;
            warning = Some(format!(
                "limits.max_push_body_bytes = {} is above the running \
                 limits.max_buffered_push_bytes = {buffered}: keeping {kept} until a restart",
                settings.max_push_body_bytes
            ));
            settings.max_push_body_bytes = kept;
        }
        self.shared.live.store(Arc::new(Live::new(settings)));
        warning
    }
}

/// The broker `kind` names, connecting in the background.
fn connect_broker(
    kind: &BrokerKind,
    settings: BrokerSettings,
    inbound: std::sync::Weak<dyn Inbound>,
) -> Result<SharedBroker, BrokerError> {
    match kind {
        BrokerKind::Local => Ok(LocalBroker::new(inbound)),
        BrokerKind::Redis { urls } => Ok(RedisBroker::connect(urls, settings, inbound)?),
        BrokerKind::Nats { url, credentials } => {
            let auth = NatsAuth {
                token: credentials.token.clone(),
                user: credentials.user.clone(),
                password: credentials.password.clone(),
                credentials_file: credentials.credentials_file.clone(),
            };
            Ok(NatsBroker::connect(url, auth, settings, inbound)?)
        }
    }
}

/// The machine's name, for a default node id (`/proc`, then `$HOSTNAME`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ws-gateway".to_owned())
}

/// A request's publications to one app reach each subscriber's outbox back to back: a batch as
/// long as the outbox would close a healthy subscriber (4100) by itself. So
/// `limits.max_push_batch` is lowered, with a warning, to half of `limits.outbox_messages` when
/// it is not below it (an operator who shrinks the outboxes need not think of batches).
fn fit_batches_to_outboxes(limits: &mut crate::config::Limits) {
    if limits.max_push_batch >= limits.outbox_messages {
        let lowered = (limits.outbox_messages / 2).max(1);
        tracing::warn!(
            max_push_batch = limits.max_push_batch,
            outbox_messages = limits.outbox_messages,
            lowered,
            "limits.max_push_batch lowered below limits.outbox_messages: one batch to an app must not fill a subscriber's outbox by itself"
        );
        limits.max_push_batch = lowered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_kept_below_the_outbox() {
        let mut limits = crate::config::Limits::default();
        fit_batches_to_outboxes(&mut limits);
        assert_eq!(limits.max_push_batch, 500, "the defaults fit as they are");
        limits.outbox_messages = 8;
        fit_batches_to_outboxes(&mut limits);
        assert_eq!(limits.max_push_batch, 4);
        limits.outbox_messages = 1;
        fit_batches_to_outboxes(&mut limits);
        assert_eq!(limits.max_push_batch, 1);
    }
}
