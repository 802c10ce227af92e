//! What every connection task shares: the configuration, the node, the authenticator, the
//! admission bounds and counters, and the shutdown signal. Built once, by
//! [`Gateway`](crate::Gateway), from the configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
use crate::config::{BrokerKind, ServerConfig};
use crate::counters::Counters;
use crate::node::{HeldLimits, Node};

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) node: Arc<Node>,
    /// This node's name in the cluster (`broker.node_id`, or host name and port).
    pub(crate) node_id: String,
    pub(crate) authenticator: Arc<dyn Authenticator>,
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
    /// SHA-256 of each push API key, compared in constant time.
    pub(crate) push_key_digests: Vec<[u8; 32]>,
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
        let limits = &config.limits;
        let evict_after = config.timeouts.evict_after;
        let push_key_digests = config
            .access
            .push_api_keys
            .iter()
            .map(|key| Sha256::digest(key.as_bytes()).into())
            .collect();
        Ok(Shared {
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            push_slots: Semaphore::new(limits.max_inflight_pushes),
            push_bodies: PushBodies::new(limits.max_buffered_push_bytes, evict_after),
            main_handshakes: Handshakes::new(limits.max_handshakes, evict_after, counters.clone()),
            stat_handshakes: Handshakes::new(limits.max_handshakes, evict_after, counters.clone()),
            per_address: PerAddress::new(limits.max_connections_per_ip),
            push_key_digests,
            config,
            node,
            node_id,
            authenticator,
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
