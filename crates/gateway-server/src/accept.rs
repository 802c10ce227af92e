//! Accepting connections and serving each one: the admission bounds (`admission`), the first
//! request head (`http::handshake`), then a WebSocket (`ws`) or HTTP (`http`, through hyper).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::admission::{AddressSlot, Ticket};
use crate::http;
use crate::http::handshake::{self, FirstRequest};
use crate::io::Io;
use crate::shared::Shared;
use crate::ws;

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Listener {
    Main,
    Stat,
}

/// HTTP/1.1 settings shared by both listeners. A keep-alive connection must send its next
/// request head within `timeouts.head_ms` (hyper's header read timeout runs from the moment
/// it waits for a head, so it also bounds idleness between requests).
fn http_builder(shared: &Shared) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.timeouts.head)
        // Later heads have the first one's bounds (answered 431 beyond them).
        .max_buf_size(handshake::MAX_HEAD_BYTES)
        .max_headers(handshake::MAX_HEADERS);
    builder
}

/// Accepts the connections of one listener. Each gets a place among the connections in their
/// handshake and a deadline for its first request head; with `limits.max_connections_per_ip`,
/// a share of its address's sockets.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, which: Listener) {
    let tls = match which {
        Listener::Main => shared.config.tls.clone(),
        Listener::Stat => shared.config.stat_tls.clone(),
    }
    .map(TlsAcceptor::from);
    let handshakes = match which {
        Listener::Main => shared.main_handshakes.clone(),
        Listener::Stat => shared.stat_handshakes.clone(),
    };
    let stop = stop_of(&shared, which);
    // Whether accepted sockets come with TCP_NODELAY already (inherited from a listener made
    // by `listen`), learned from the first one with a single getsockopt.
    let mut inherits_nodelay: Option<bool> = None;
    let mut exhaustion = Exhaustion::new();
    loop {
        // While the handshakes fill their pool with young connections, new ones wait in the
        // kernel's backlog.
        tokio::select! {
            () = handshakes.room() => {}
            () = stop.cancelled() => return,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    exhaustion.on_accept_error(&listener, &err, &shared, which).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        exhaustion.on_accept();
        let address = match (&shared.per_address, which) {
            (Some(per_address), Listener::Main) => match per_address.take(peer.ip()) {
                // Behind an `Arc` (only when the limit is on): a WebSocket's task then holds
                // one pointer for it, and an upgrade through hyper can share it.
                Some(slot) => Some(Arc::new(slot)),
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
            address,
        };
        let shared = shared.clone();
        let tracker = match which {
            Listener::Main => shared.tracker.clone(),
            Listener::Stat => shared.stat_tracker.clone(),
        };
        let stop = stop.clone();
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
                () = stop.cancelled() => {}
            }
        });
    }
}

/// When a listener stops: the main one when shutdown starts, the stat one last, so that it
/// answers (`/readyz`: 503) while the others close.
fn stop_of(shared: &Shared, which: Listener) -> CancellationToken {
    match which {
        Listener::Main => shared.shutdown.clone(),
        Listener::Stat => shared.stat_stop.clone(),
    }
}

/// What an accepted connection was given: its place among the handshakes, the deadline of its
/// first head, and its share of its address's sockets (held for the connection's life).
pub(crate) struct Admitted {
    pub(crate) ticket: Ticket,
    pub(crate) deadline: Instant,
    pub(crate) address: Option<Arc<AddressSlot>>,
}

/// Accepting when file descriptors run out. The kernel keeps completing connections into the
/// backlog, where they would wait with no answer; instead, one descriptor is kept spare: on
/// EMFILE it is released, the longest-waiting connection is accepted and closed at once (its
/// client fails fast and retries), and the spare is taken back. Then accepting pauses, from
/// 10 ms doubling up to 500 ms while it keeps failing, so that the gateway serves its
/// connected clients, and recovers by itself once descriptors are free. With the limits
/// fitted to the open-file limit (`admission::fit`), this is the last line of defence.
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
        self.keep_spare();
    }

    /// Takes the spare descriptor (back) if it is not held: opening it may have failed while
    /// descriptors were short.
    fn keep_spare(&mut self) {
        if self.spare.is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
        }
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
        }
        self.keep_spare();
        tokio::select! {
            () = tokio::time::sleep(self.pause) => {}
            () = shared.shutdown.cancelled() => {}
        }
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
    }
}

/// `EMFILE` and `ENFILE` on Linux (and most Unix systems).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Serves one accepted connection (plain or TLS). Its first request is read by `handshake`:
/// on the main listener, an accepted WebSocket upgrade is served right here, in this task;
/// anything else goes to hyper.
pub(crate) async fn serve_connection<I: Io>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    which: Listener,
    admitted: Admitted,
) {
    let Admitted {
        ticket,
        deadline,
        address,
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
        FirstRequest::Http(io) => {
            return Box::pin(serve_http(io, peer, shared, which, address)).await;
        }
        FirstRequest::Gone => return,
    };
    let socket = ws::websocket(io, pipelined, &shared).await;
    let conn = shared.next_conn_id();
    debug!(%conn, %peer, "websocket upgrade");
    ws::serve(socket, conn, peer, shared, slot).await;
}

/// Serves HTTP/1.1 on one connection until it ends or, on shutdown, until its request in
/// flight is answered.
/// `address`: the connection's share of its address's sockets, also held by a WebSocket this
/// connection is upgraded to.
async fn serve_http(
    io: impl Io,
    peer: SocketAddr,
    shared: Arc<Shared>,
    which: Listener,
    address: Option<Arc<AddressSlot>>,
) {
    let io = TokioIo::new(io);
    let shutdown = stop_of(&shared, which);
    let builder = http_builder(&shared);
    let result = match which {
        Listener::Main => {
            let service = service_fn(move |req| {
                http::main_service(req, shared.clone(), peer, address.clone())
            });
            let conn = builder.serve_connection(io, service).with_upgrades();
            until_shutdown(conn, &shutdown).await
        }
        Listener::Stat => {
            let service = TowerToHyperService::new(http::stat_stack(shared));
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
