//! The server: binds the listeners, accepts connections, and shuts down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_auth::Authenticator;
use gateway_core::ConnId;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{self, AddressSlot, Handshakes, PerAddress, Ticket};
use crate::config::ServerConfig;
use crate::connection::{self, Io};
use crate::counters::Counters;
use crate::dispatcher::Dispatcher;
use crate::error::ServerError;
use crate::handshake::{self, FirstRequest};
use crate::http;

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
    pub(crate) push_body_bytes: crate::http::BodyBudget,
    /// Connections still in their request head, per listener (`limits.max_handshakes`).
    main_handshakes: Arc<Handshakes>,
    stat_handshakes: Arc<Handshakes>,
    /// Sockets per address on the main listener, when `limits.max_connections_per_ip` is set.
    per_address: Option<Arc<PerAddress>>,
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
                push_body_bytes: crate::http::BodyBudget::new(limits.max_buffered_push_bytes),
                main_handshakes: Handshakes::new(limits.max_handshakes, counters.clone()),
                stat_handshakes: Handshakes::new(limits.max_handshakes, counters.clone()),
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
        let main = tokio::spawn(accept_loop(listener, shared.clone(), Listener::Main));
        let stat = tokio::spawn(accept_loop(stat_listener, shared.clone(), Listener::Stat));

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

#[derive(Debug, Clone, Copy)]
enum Listener {
    Main,
    Stat,
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

/// HTTP/1.1 settings shared by both listeners. A keep-alive connection must send its next
/// request head within `timeouts.head_ms` (hyper's header read timeout runs from the moment
/// it waits for a head, so it also bounds idleness between requests).
fn http_builder(shared: &Shared) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.timeouts.head);
    builder
}

/// Accepts the connections of one listener. Each gets a place among the connections in their
/// handshake and a deadline for its first request head; with `limits.max_connections_per_ip`,
/// a share of its address's sockets.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, which: Listener) {
    let tls = match which {
        Listener::Main => shared.config.tls.clone(),
        Listener::Stat => shared.config.stat_tls.clone(),
    }
    .map(TlsAcceptor::from);
    let handshakes = match which {
        Listener::Main => shared.main_handshakes.clone(),
        Listener::Stat => shared.stat_handshakes.clone(),
    };
    // Whether accepted sockets come with TCP_NODELAY already (inherited from a listener made
    // by `listen`), learned from the first one with a single getsockopt.
    let mut inherits_nodelay: Option<bool> = None;
    let mut exhaustion = Exhaustion::new();
    loop {
        // While the handshakes fill their pool with young connections, new ones wait in the
        // kernel's backlog.
        tokio::select! {
            () = handshakes.room() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    exhaustion.on_accept_error(&listener, &err, &shared, which).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return,
        };
        exhaustion.on_accept();
        let address = match (&shared.per_address, which) {
            (Some(per_address), Listener::Main) => match per_address.take(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    let total = shared.counters.address_refused();
                    debug!(%peer, total, "closed at once: limits.max_connections_per_ip reached");
                    continue;
                }
            },
            _ => None,
        };
        // Small frames must leave at once (no Nagle delay).
        let inherited = *inherits_nodelay.get_or_insert_with(|| stream.nodelay().unwrap_or(false));
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        let admitted = Admitted {
            ticket: handshakes.enter(),
            deadline: Instant::now() + shared.config.timeouts.head,
            _address: address,
        };
        let shared = shared.clone();
        let tracker = shared.tracker.clone();
        // Two separate tasks, so that a plain connection's task has no room for TLS state.
        let Some(tls) = tls.clone() else {
            tracker.spawn(serve_connection(stream, peer, shared, which, admitted));
            continue;
        };
        tracker.spawn(async move {
            // The TLS handshake counts against the head's deadline and place.
            let handshake = tokio::time::timeout_at(admitted.deadline, tls.accept(stream));
            tokio::select! {
                biased;
                result = handshake => match result {
                    Ok(Ok(stream)) => serve_connection(stream, peer, shared, which, admitted).await,
                    Ok(Err(err)) => debug!(%err, %peer, "TLS handshake failed"),
                    Err(_) => {
                        let total = shared.counters.head_timed_out();
                        debug!(%peer, total, "TLS handshake not complete within timeouts.head_ms");
                    }
                },
                () = admitted.ticket.evicted.cancelled() => {
                    debug!(%peer, "closed in its TLS handshake to make room (limits.max_handshakes)");
                }
            }
        });
    }
}

/// What an accepted connection was given: its place among the handshakes, the deadline of its
/// first head, and its share of its address's sockets (held for the connection's life).
struct Admitted {
    ticket: Ticket,
    deadline: Instant,
    _address: Option<AddressSlot>,
}

/// Accepting when file descriptors run out. The kernel keeps completing connections into the
/// backlog, where they would wait with no answer; instead, one descriptor is kept spare: on
/// EMFILE it is released, one waiting connection is accepted and closed at once (its client
/// fails fast and retries), and the spare is taken back. Then accepting pauses, a little
/// longer each time it fails again, so that the gateway serves its connected clients, and
/// recovers by itself once descriptors are free.
struct Exhaustion {
    spare: Option<std::fs::File>,
    pause: Duration,
    last_warning: Option<Instant>,
}

impl Exhaustion {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_millis(500);

    fn new() -> Exhaustion {
        Exhaustion {
            spare: std::fs::File::open("/dev/null").ok(),
            pause: Self::FIRST_PAUSE,
            last_warning: None,
        }
    }

    fn on_accept(&mut self) {
        self.pause = Self::FIRST_PAUSE;
    }

    async fn on_accept_error(
        &mut self,
        listener: &TcpListener,
        err: &std::io::Error,
        shared: &Shared,
        which: Listener,
    ) {
        let total = shared.counters.accept_failed();
        // One line a second at most: a flood must not become a flood of log lines.
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.last_warning = Some(Instant::now());
            warn!(%err, ?which, accept_errors = total, "accept failed; pausing accepts");
        }
        let out_of_descriptors = matches!(err.raw_os_error(), Some(EMFILE | ENFILE));
        if out_of_descriptors && self.spare.take().is_some() {
            // With the spare released, one waiting connection can be accepted and closed.
            if let Ok(Ok((stream, peer))) =
                tokio::time::timeout(Duration::ZERO, listener.accept()).await
            {
                debug!(%peer, "closed at once: out of file descriptors");
                drop(stream);
            }
            self.spare = std::fs::File::open("/dev/null").ok();
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
    }
}

/// `EMFILE` and `ENFILE` on Linux (and most Unix systems).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Serves one accepted connection (plain or TLS). Its first request is read by `handshake`:
/// on the main listener, an accepted WebSocket upgrade is served right here, in this task;
/// anything else goes to hyper.
async fn serve_connection<I: Io>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    which: Listener,
    admitted: Admitted,
) {
    let Admitted {
        ticket,
        deadline,
        _address,
    } = admitted;
    let upgrades = matches!(which, Listener::Main);
    let first = handshake::first_request(io, &shared, peer, upgrades, &ticket, deadline).await;
    drop(ticket);
    let (io, pipelined, slot) = match first {
        FirstRequest::WebSocket {
            io,
            pipelined,
            slot,
        } => (io, pipelined, slot),
        // Boxed, so that a WebSocket's task does not carry room for hyper's connection state.
        FirstRequest::Http(io) => return Box::pin(serve_http(io, peer, shared, which)).await,
        FirstRequest::Gone => return,
    };
    let socket = connection::websocket(io, pipelined, &shared).await;
    let conn = shared.next_conn_id();
    debug!(%conn, %peer, "websocket upgrade");
    connection::serve(socket, conn, shared, slot).await;
}

/// Serves HTTP/1.1 on one connection until it ends or, on shutdown, until its request in
/// flight is answered.
async fn serve_http(io: impl Io, peer: SocketAddr, shared: Arc<Shared>, which: Listener) {
    let io = TokioIo::new(io);
    let shutdown = shared.shutdown.clone();
    let builder = http_builder(&shared);
    let result = match which {
        Listener::Main => {
            let service = service_fn(move |req| http::main_service(req, shared.clone(), peer));
            let conn = builder.serve_connection(io, service).with_upgrades();
            until_shutdown(conn, &shutdown).await
        }
        Listener::Stat => {
            let service = service_fn(move |req| http::stat_service(req, shared.clone()));
            let conn = builder.serve_connection(io, service);
            until_shutdown(conn, &shutdown).await
        }
    };
    if let Err(err) = result {
        debug!(%err, %peer, "http connection error");
    }
}
/// A hyper connection that can be asked to finish its request in flight and stop.
/// (hyper-util's `GracefulConnection` does not cover connections with upgrades.)
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Graceful for http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Drives `conn` to its end; on shutdown, lets it answer the request in flight, then stops.
async fn until_shutdown(conn: impl Graceful, shutdown: &CancellationToken) -> hyper::Result<()> {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
