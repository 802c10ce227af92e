//! The first request of a connection, read by hand, within one deadline. Nearly every
//! connection starts with a WebSocket upgrade: when it is one the gateway accepts, it is
//! answered here and the connection becomes a WebSocket in the same task. Anything else (a
//! push, an upgrade to be refused, a malformed head, any request on the stat listener) goes to
//! hyper together with the bytes already read, and hyper answers it as it answers every later
//! request.
//!
//! Why by hand: through hyper, every set-up paid for hyper's connection state and buffers, a
//! second task, and the hand-over of the upgraded socket between the two (BENCHMARKS.md,
//! step 8). And so that a head has one deadline in total (`timeouts.head_ms`, from the accept,
//! TLS included), and a connection still in its head holds a place in the listener's
//! [`Handshakes`](crate::admission::Handshakes) pool, which closes the oldest to make room.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use super::Head;
use super::upgrade::{check_upgrade, wants_websocket};
use crate::admission::Ticket;
use crate::io::Io;
use crate::shared::Shared;

/// The first request head is read into a buffer of this size inside the task, not on the
/// heap: the task is allocated at the size of its largest state, and with this buffer the
/// head's state stays smaller than the WebSocket's (1 KiB made every connection's task
/// 160 bytes larger). Most upgrade requests are 150–500 bytes; a larger head continues on the
/// heap, for as long as it is read.
const HEAD_BYTES: usize = 512;
/// The largest request head accepted (large cookies fit); a larger one is answered `431` and
/// the connection closed.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header fields in a request head (hyper's default); more are answered `431`.
pub(crate) const MAX_HEADERS: usize = 100;
/// How long writing a refusal of our own may take before the connection is dropped.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// What the first request turned out to be. Kept small: it is returned into the task's
/// state, where a large value would take room for the connection's whole life.
pub(crate) enum FirstRequest<I> {
    /// An accepted upgrade, its 101 already written; `pipelined` holds the bytes the client
    /// sent behind its request (see [`ws::websocket`](crate::ws::websocket)).
    WebSocket {
        io: I,
        pipelined: Option<Vec<u8>>,
        slot: OwnedSemaphorePermit,
    },
    /// For hyper: the connection, replaying what was read of it.
    Http(Prefixed<I>),
    /// The peer left, was too slow, or the gateway is shutting down.
    Gone,
}

/// The verdict on a complete request head.
enum Verdict {
    /// Accept the upgrade with this `Sec-WebSocket-Accept`.
    Upgrade(String),
    /// Let hyper answer it.
    Http,
    /// Too many header fields: answered `431`, like a head that is too long.
    TooLarge,
}

/// How reading the head ended.
enum Ending {
    Complete(Verdict, usize),
    /// The peer closed (or the read failed) before the head was complete.
    Closed,
    TooLarge,
    TimedOut,
    /// The pool needed this connection's place for a newer one.
    Evicted,
    ShuttingDown,
}

/// Reads the first request head of `io` and acts on it. `upgrades`: whether this listener
/// accepts WebSocket upgrades. `deadline`: when the head must be complete.
pub(crate) async fn first_request<I: Io>(
    mut io: I,
    shared: &Shared,
    peer: SocketAddr,
    upgrades: bool,
    ticket: &Ticket,
    deadline: Instant,
) -> FirstRequest<I> {
    let mut head = [0u8; HEAD_BYTES];
    let mut len = 0;
    // A head longer than `head` continues here.
    let mut spilled: Vec<u8> = Vec::new();
    let read = async {
        loop {
            let read = if spilled.is_empty() {
                io.read(&mut head[len..]).await
            } else {
                spilled.reserve(HEAD_BYTES);
                io.read_buf(&mut spilled).await
            };
            match read {
                Ok(0) | Err(_) => return Ending::Closed,
                Ok(n) if spilled.is_empty() => len += n,
                Ok(_) => {}
            }
            let bytes = if spilled.is_empty() {
                &head[..len]
            } else {
                &spilled[..]
            };
            match judge(bytes, shared, peer, upgrades) {
                Some((verdict, head_len)) => return Ending::Complete(verdict, head_len),
                None if bytes.len() >= MAX_HEAD_BYTES => return Ending::TooLarge,
                None if len == HEAD_BYTES && spilled.is_empty() => {
                    spilled.extend_from_slice(&head);
                }
                None => {}
            }
        }
    };
    // The read comes first: a connection asked to make room still goes ahead if its head has
    // already arrived (in a burst of real clients, the oldest is often just not read yet).
    // Only one whose head is still incomplete gives way.
    let ending = tokio::select! {
        biased;
        ending = tokio::time::timeout_at(deadline, read) => ending.unwrap_or(Ending::TimedOut),
        () = ticket.evicted.cancelled() => Ending::Evicted,
        // The stat listener (no upgrades) stops last, after the others closed.
        () = if upgrades { &shared.shutdown } else { &shared.stat_stop }.cancelled() => Ending::ShuttingDown,
    };
    let read: &[u8] = if spilled.is_empty() {
        &head[..len]
    } else {
        &spilled
    };
    let (verdict, head_len) = match ending {
        Ending::Complete(verdict, head_len) => (verdict, head_len),
        // Bytes but no complete head (the peer half-closed): hyper answers what it can.
        Ending::Closed if !read.is_empty() => return FirstRequest::Http(Prefixed::new(io, read)),
        Ending::Closed | Ending::ShuttingDown => return FirstRequest::Gone,
        Ending::TimedOut => {
            let total = shared.counters.head_timed_out();
            debug!(%peer, total, "request head not complete within timeouts.head_ms");
            return FirstRequest::Gone;
        }
        Ending::Evicted => {
            debug!(%peer, "closed in its handshake to make room (limits.max_handshakes)");
            return FirstRequest::Gone;
        }
        Ending::TooLarge => {
            refuse_head_too_large(&mut io).await;
            return FirstRequest::Gone;
        }
    };
    let accept = match verdict {
        Verdict::Http => return FirstRequest::Http(Prefixed::new(io, read)),
        Verdict::TooLarge => {
            refuse_head_too_large(&mut io).await;
            return FirstRequest::Gone;
        }
        Verdict::Upgrade(accept) => accept,
    };
    // A refusal for want of a place is hyper's to answer (and to count).
    let Ok(slot) = shared.connection_slots.clone().try_acquire_owned() else {
        return FirstRequest::Http(Prefixed::new(io, read));
    };
    // A client may send its first messages right behind the upgrade request.
    let pipelined = (head_len < read.len()).then(|| read[head_len..].to_vec());
    drop(spilled);
    // The 101 is written from the head's buffer: the task needs no room for another one.
    let response = switching_protocols(&mut head, &accept);
    if let Err(err) = io.write_all(response).await {
        debug!(%peer, %err, "upgrade failed");
        return FirstRequest::Gone;
    }
    FirstRequest::WebSocket {
        io,
        pipelined,
        slot,
    }
}

/// Answers a head over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] with `431`; the caller closes.
async fn refuse_head_too_large(io: &mut impl Io) {
    let body =
        format!("request head larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header fields\n");
    let response = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, io.write_all(response.as_bytes())).await;
}

const SWITCHING_HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
    upgrade: websocket\r\nsec-websocket-accept: ";

/// Writes the 101 response into `buf` (no heap allocation per set-up); returns its bytes.
/// The accept value is 28 bytes (the base64 of a SHA-1), so the response is 129.
fn switching_protocols<'a>(buf: &'a mut [u8; HEAD_BYTES], accept: &str) -> &'a [u8] {
    let parts: [&[u8]; 3] = [SWITCHING_HEAD, accept.as_bytes(), b"\r\n\r\n"];
    let mut len = 0;
    for part in parts {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    &buf[..len]
}

/// Judges what has been read so far: `None` while the head is incomplete, else the verdict
/// and the head's length.
fn judge(
    buf: &[u8],
    shared: &Shared,
    peer: SocketAddr,
    upgrades: bool,
) -> Option<(Verdict, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some((Verdict::TooLarge, buf.len())),
        // Malformed: hyper, which parses with the same rules, answers 400 at once.
        Err(_) => return Some((Verdict::Http, buf.len())),
    };
    if !upgrades {
        return Some((Verdict::Http, head_len));
    }
    let headers: &[httparse::Header<'_>] = request.headers;
    // An upgrade with a body, or over HTTP/1.0, is unusual enough to leave to hyper.
    let plain = request.version == Some(1)
        && headers.value("content-length").is_none()
        && headers.value("transfer-encoding").is_none();
    if !(plain && wants_websocket(headers)) {
        return Some((Verdict::Http, head_len));
    }
    let is_get = request.method == Some("GET");
    match check_upgrade(is_get, headers, shared, peer) {
        Ok(accept) => Some((Verdict::Upgrade(accept), head_len)),
        Err(_) => Some((Verdict::Http, head_len)),
    }
}

/// A connection that first replays bytes already read from it.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    fn new(io: I, prefix: &[u8]) -> Prefixed<I> {
        Prefixed {
            prefix: Bytes::copy_from_slice(prefix),
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Free the copy of the first read.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut prefixed = Prefixed::new(client, b"GET / HTTP/1.1\r\n");
        server.write_all(b"rest").await.unwrap();
        drop(server);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nrest");
    }
}
