//! What every connection task shares: the configuration, the node, the authenticator, the
//! admission bounds and counters, and the shutdown signal. Built once, by
//! [`Gateway`](crate::Gateway), from the configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_auth::Authenticator;
use gateway_core::ConnId;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{self, Handshakes, PerAddress, PushBodies};
use crate::config::ServerConfig;
use crate::counters::Counters;
use crate::node::Node;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) node: Node,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    /// Cancelled once, when the server starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task (HTTP and WebSocket), so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
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
    /// process's open-file limit.
    pub(crate) fn new(config: ServerConfig, authenticator: Arc<dyn Authenticator>) -> Shared {
        let mut config = config;
        admission::fit_to_open_file_limit(&mut config.limits);
        let node = Node::new(config.hub.clone());
        let counters = Arc::new(Counters::default());
        let limits = &config.limits;
        let evict_after = config.timeouts.evict_after;
        let push_key_digests = config
            .access
            .push_api_keys
            .iter()
            .map(|key| Sha256::digest(key.as_bytes()).into())
            .collect();
        Shared {
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            push_slots: Semaphore::new(limits.max_inflight_pushes),
            push_bodies: PushBodies::new(limits.max_buffered_push_bytes, evict_after),
            main_handshakes: Handshakes::new(limits.max_handshakes, evict_after, counters.clone()),
            stat_handshakes: Handshakes::new(limits.max_handshakes, evict_after, counters.clone()),
            per_address: PerAddress::new(limits.max_connections_per_ip),
            push_key_digests,
            config,
            node,
            authenticator,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            counters,
            next_conn: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId::new(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}
