//! The gateway: binds the listeners, runs their accept loops (`accept`), and shuts down
//! cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use gateway_auth::Authenticator;
use tokio::net::{TcpListener, TcpSocket};
use tracing::{info, warn};

use crate::accept::{self, Listener};
use crate::config::ServerConfig;
use crate::counters::Counters;
use crate::error::ServerError;
use crate::node::{self, Node};
use crate::shared::Shared;
use crate::ws::close::CloseReason;

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
        Gateway::from_listeners(config, authenticator, listener, stat_listener)
    }

    /// Uses listeners bound by the caller (tests bind `127.0.0.1:0` first, so they know the
    /// ports before the server runs). `config.listen` and `config.stat_listen` are ignored.
    /// Must be called within a tokio runtime: the broker starts connecting at once.
    pub fn from_listeners(
        config: ServerConfig,
        authenticator: Arc<dyn Authenticator>,
        listener: TcpListener,
        stat_listener: TcpListener,
    ) -> Result<Gateway, ServerError> {
        let port = listener.local_addr().map_or(0, |addr| addr.port());
        Ok(Gateway {
            shared: Arc::new(Shared::new(config, authenticator, port)?),
            listener,
            stat_listener,
        })
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

    /// The node (the hub and the connections' outboxes), for a service that embeds the
    /// gateway and pushes in-process.
    pub fn node(&self) -> &Arc<Node> {
        &self.shared.node
    }

    /// A handle that replaces the settings a reload may change (the authenticator, who may
    /// push, the allowed origins, the push body's bounds) while the gateway runs.
    pub fn reloader(&self) -> crate::shared::Reloader {
        crate::shared::Reloader::new(self.shared.clone())
    }

    /// This node's name in the cluster view (`broker.node_id`, or host name and port).
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
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
        let sampler = tokio::spawn(crate::metrics::series::run_sampler(
            shared.counters.clone(),
            shared.shutdown.clone(),
        ));
        shared.counters.set_listening(true);
        let broker = &shared.config.broker;
        let reporter = tokio::spawn(node::run_reporter(
            shared.node.clone(),
            shared.node_id.clone(),
            broker.report_interval,
            broker.report_ttl(),
            broker.subscribe_timeout,
            shared.shutdown.clone(),
        ));

        shutdown.await;
        info!("shutting down: closing connections");
        shared.shutdown.cancel();
        // Before the broker closes: the other nodes stop waiting for this one's answers.
        shared
            .node
            .leave_cluster(std::time::Duration::from_millis(500))
            .await;
        shared.node.shut_down(CloseReason::ShuttingDown.code());
        let _ = main.await;
        let _ = reporter.await;
        let _ = sampler.await;
        shared.tracker.close();
        let deadline = tokio::time::Instant::now() + shared.config.timeouts.shutdown;
        if tokio::time::timeout_at(deadline, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = shared.tracker.len(),
                "shutdown deadline passed with connections still open"
            );
        }
        // The stat listener last: until now it answered /readyz (503, shutting down).
        shared.counters.set_listening(false);
        shared.stat_stop.cancel();
        let _ = stat.await;
        shared.stat_tracker.close();
        let _ = tokio::time::timeout_at(deadline, shared.stat_tracker.wait()).await;
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
    /// a decision to make on purpose, with `bench/ab.sh`, not by accident. (Issue 11 grew it
    /// from 1,824 to 1,928 bytes on purpose: the connection's `conn` span and its peer's
    /// address, so that every refusal line names who was refused.)
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
        )
        .unwrap();
        let shared = gateway.shared.clone();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let admitted = accept::Admitted {
            ticket: shared.main_handshakes.enter(),
            deadline: tokio::time::Instant::now(),
            address: None,
        };
        let task = accept::serve_connection(stream, addr, shared, Listener::Main, admitted);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1936, "a connection's task grew to {size} bytes");
    }
}
