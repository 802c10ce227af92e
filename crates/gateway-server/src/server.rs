//! The server: binds the listeners, accepts connections, and shuts down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_auth::Authenticator;
use gateway_core::ConnId;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::{self, Listener};
use crate::admission::{self, Handshakes, PerAddress, PushBodies};
use crate::config::ServerConfig;
use crate::counters::Counters;
use crate::dispatcher::Dispatcher;
use crate::error::ServerError;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) dispatcher: Dispatcher,
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
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId::new(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}

/// A bound, not yet running, gateway.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use gateway_server::{Gateway, ServerConfig};
///
/// let gateway = Gateway::bind(ServerConfig::default(), Arc::new(gateway_auth::AnonymousOnly)).await?;
/// println!("clients connect to ws://{}/", gateway.local_addr());
/// gateway.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    stat_listener: TcpListener,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.local_addr())
            .field("stat_listen", &self.stat_addr())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Binds `config.listen` and `config.stat_listen`.
    pub async fn bind(
        config: ServerConfig,
        authenticator: Arc<dyn Authenticator>,
    ) -> Result<Gateway, ServerError> {
        let backlog = config.limits.accept_backlog;
        let bind = |what, addr| {
            listen(addr, backlog).map_err(|source| ServerError::Bind { what, addr, source })
        };
        let listener = bind("websocket and push", config.listen)?;
        let stat_listener = bind("stat", config.stat_listen)?;
        Ok(Gateway::from_listeners(
            config,
            authenticator,
            listener,
            stat_listener,
        ))
    }

    /// Uses listeners bound by the caller (tests bind `127.0.0.1:0` first, so they know the
    /// ports before the server runs). `config.listen` and `config.stat_listen` are ignored.
    pub fn from_listeners(
        config: ServerConfig,
        authenticator: Arc<dyn Authenticator>,
        listener: TcpListener,
        stat_listener: TcpListener,
    ) -> Gateway {
        let mut config = config;
        admission::fit_to_open_file_limit(&mut config.limits);
        let dispatcher = Dispatcher::new(config.hub.clone());
        let counters = Arc::new(Counters::default());
        let limits = &config.limits;
        let evict_after = config.timeouts.evict_after;
        let push_key_digests = config
            .access
            .push_api_keys
            .iter()
            .map(|key| Sha256::digest(key.as_bytes()).into())
            .collect();
        Gateway {
            shared: Arc::new(Shared {
                connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
                push_slots: Semaphore::new(limits.max_inflight_pushes),
                push_bodies: PushBodies::new(limits.max_buffered_push_bytes, evict_after),
                main_handshakes: Handshakes::new(
                    limits.max_handshakes,
                    evict_after,
                    counters.clone(),
                ),
                stat_handshakes: Handshakes::new(
                    limits.max_handshakes,
                    evict_after,
                    counters.clone(),
                ),
                per_address: PerAddress::new(limits.max_connections_per_ip),
                push_key_digests,
                config,
                dispatcher,
                authenticator,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                counters,
                next_conn: AtomicU64::new(1),
            }),
            listener,
            stat_listener,
        }
    }

    /// The address of the WebSocket and push listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The address of the stat listener.
    pub fn stat_addr(&self) -> SocketAddr {
        self.stat_listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Event counters, readable while (and after) the gateway runs.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// The hub's driver, for a service that embeds the gateway and pushes in-process.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.shared.dispatcher
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes every WebSocket with 1001
    /// (going away), lets HTTP requests in flight finish, and returns once every connection is
    /// done or `timeouts.shutdown` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            shared,
            listener,
            stat_listener,
        } = self;
        let main = tokio::spawn(accept::accept_loop(
            listener,
            shared.clone(),
            Listener::Main,
        ));
        let stat = tokio::spawn(accept::accept_loop(
            stat_listener,
            shared.clone(),
            Listener::Stat,
        ));

        shutdown.await;
        info!("shutting down: closing connections");
        shared.shutdown.cancel();
        shared.dispatcher.shut_down();
        let _ = main.await;
        let _ = stat.await;
        shared.tracker.close();
        let deadline = shared.config.timeouts.shutdown;
        if tokio::time::timeout(deadline, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = shared.tracker.len(),
                "shutdown deadline passed with connections still open"
            );
        }
        info!("stopped");
    }
}

/// A listening socket with an explicit accept backlog: the default of the standard library
/// (128) overflows under a burst of connections, and every dropped SYN costs its client a
/// one-second retransmission. `SO_REUSEADDR` lets a restarted gateway bind at once.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which saves a
    // setsockopt per connection; `accept_loop` checks and sets it where that is not so.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Each connection's task is allocated once, at the size of its largest state: reading
    /// the first head (the head buffer lives in the task) or serving the WebSocket. That is
    /// most of the ~3.4 KB of RSS an idle connection costs (BENCHMARKS.md), so growing it is
    /// a decision to make on purpose, with `bench/ab.sh`, not by accident.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stat = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = Gateway::from_listeners(
            ServerConfig::default(),
            Arc::new(gateway_auth::AnonymousOnly),
            listener,
            stat,
        );
        let shared = gateway.shared.clone();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let admitted = accept::Admitted {
            ticket: shared.main_handshakes.enter(),
            deadline: tokio::time::Instant::now(),
            address: None,
        };
        let task = accept::serve_connection(stream, addr, shared, Listener::Main, admitted);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1856, "a connection's task grew to {size} bytes");
    }
}
