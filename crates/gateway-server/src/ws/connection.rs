//! One WebSocket connection's task: authenticate, then carry frames both ways until the end.
//!
//! The task is the only owner of its socket. Frames for the client arrive through its
//! [`Outbox`]; client messages go to the [`Node`](crate::Node). Protocol
//! decisions (what to reply, when to close) are the hub's; this module moves bytes and keeps
//! the per-connection clocks and counters: the auth deadline, heartbeats; the limits on what
//! the client sends are kept under tungstenite, by a [`FrameMeter`] on the socket.

use std::sync::Arc;

use futures_util::stream::FusedStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use gateway_auth::{Credentials, Decision, Grant};
use gateway_core::{AppName, AuthOutcome, AuthRequest, CloseCode, ConnId, Input, PrivateAccess};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tracing::{debug, warn};

use super::close::{CloseReason, End, socket_error};
use super::frame_meter::{FrameMeter, Metered};
use super::liveness::{Heartbeat, Tick};
use crate::counters::AuthResult;
use crate::io::Io;
use crate::node::outbox::Outbox;
use crate::shared::Shared;

/// Each connection's read buffer, allocated up front: client messages are auth and subscribe
/// requests of a few dozen bytes; a larger one is read in several chunks.
const READ_BUFFER_BYTES: usize = 256;

/// The most bytes coalesced into one socket write.
const WRITE_COALESCE_BYTES: usize = 16 * 1024;

/// Buffers sized for many idle connections rather than for throughput: tungstenite's
/// defaults (128 KiB read buffer, 128 KiB write buffer) cost ~135 KB per idle connection;
/// these cost well under 1 KB.
fn websocket_config(shared: &Shared) -> WebSocketConfig {
    // The exact limits (the auth message's, then the message limit) are the frame meter's,
    // which sees every frame first; tungstenite's are only a backstop.
    let limits = &shared.config.limits;
    let max = limits.max_auth_message_bytes.max(limits.max_message_bytes);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames fed before a flush are written together, up to this many bytes per
        // write: a batch from the outbox (replies to pipelined requests, a burst of
        // pushes) costs one syscall. The buffer only grows as large as the batches.
        .write_buffer_size(WRITE_COALESCE_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The WebSocket of an accepted upgrade: `io` after the 101, and `pipelined`, the bytes the
/// client sent right behind its upgrade request (already read with the head). Every frame
/// read from here on, before and after auth, is metered.
pub(crate) async fn websocket<I: Io>(
    io: I,
    mut pipelined: Option<Vec<u8>>,
    shared: &Shared,
) -> WebSocketStream<Metered<I>> {
    let now = Instant::now();
    let mut meter = FrameMeter::new(now, &shared.config.limits);
    if let Some(bytes) = &mut pipelined {
        meter.read_pipelined(now, bytes);
    }
    let io = Metered::new(io, meter);
    let config = Some(websocket_config(shared));
    match pipelined {
        None => WebSocketStream::from_raw_socket(io, Role::Server, config).await,
        Some(bytes) => WebSocketStream::from_partially_read(io, bytes, Role::Server, config).await,
    }
}

/// Serves one upgraded connection until it ends. `_slot` is this connection's place under
/// `limits.max_connections`, released when the task ends.
pub(crate) async fn serve<I: Io>(
    mut socket: WebSocketStream<Metered<I>>,
    conn: ConnId,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
) {
    let limits = &shared.config.limits;
    let outbox = Arc::new(Outbox::new(limits.outbox_messages, limits.outbox_bytes));
    shared.node.attach(conn, outbox.clone());
    shared.counters.connection_opened();

    let end = run(&mut socket, conn, &shared, &outbox).await;
    // Leave the hub first: no push is queued to a connection that is closing.
    shared.node.detach(conn);
    match end {
        End::Close(reason) => {
            reason.record(conn, &shared.counters);
            // Replies already queued (say, to the requests before a flood) still go out first,
            // unless the client is not reading at all.
            if reason.flushes_queue() {
                let queued = outbox.take().frames;
                shared.counters.frames_taken(queued.len());
                if !queued.is_empty() {
                    let grace = shared.config.timeouts.close;
                    let _ = tokio::time::timeout(grace, write_all(&mut socket, queued)).await;
                }
            }
            close(&mut socket, reason.code(), &shared).await;
        }
        End::ClientClosed => {
            shared.counters.client_closed();
            finish_close(&mut socket, &shared).await;
        }
        End::Gone => shared.counters.connection_lost(),
    }
    // Whatever the outbox still holds goes with the connection: it is no longer waiting.
    shared.counters.frames_taken(outbox.take().frames.len());
    shared.counters.connection_closed();
    debug!(%conn, "connection ended");
}

async fn run(
    socket: &mut WebSocketStream<impl Io>,
    conn: ConnId,
    shared: &Shared,
    outbox: &Outbox,
) -> End {
    let outcome = tokio::select! {
        outcome = authenticate(socket, conn, shared) => match outcome {
            Ok(outcome) => outcome,
            Err(end) => return end,
        },
        () = shared.shutdown.cancelled() => return End::Close(CloseReason::ShuttingDown),
    };
    shared.node.handle(Input::Authenticated { conn, outcome });

    let timeouts = &shared.config.timeouts;
    let mut heartbeat = Heartbeat::new(Instant::now(), timeouts.ping_interval, timeouts.idle);
    // Requests pipelined behind the auth message are answered in the same write.
    while let Some(message) = socket.next().now_or_never() {
        if let Some(end) = receive(message, conn, shared, &mut heartbeat) {
            return end;
        }
    }
    // One timer for the connection's whole life, re-armed lazily: it fires at the
    // heartbeat's deadline, which only moves later as signs of life arrive.
    let timer = tokio::time::sleep_until(heartbeat.deadline());
    tokio::pin!(timer);
    let mut last_read = Instant::now();
    loop {
        let mut batch = outbox.take();
        let wrote = !batch.frames.is_empty();
        shared.counters.frames_taken(batch.frames.len());
        if wrote {
            let write = write_all(socket, std::mem::take(&mut batch.frames));
            tokio::pin!(write);
            loop {
                tokio::select! {
                    result = &mut write => {
                        if result.is_err() {
                            return End::Gone;
                        }
                        if let Some(since) = batch.oldest_push {
                            shared.counters.push_written(since);
                        }
                        break;
                    }
                    // A slow consumer is closed without waiting for its write to finish;
                    // other closes (shutdown) come after the frames already queued.
                    () = outbox.wait() => {
                        if let Some(code @ CloseCode::SlowConsumer) = outbox.close_code() {
                            return End::Close(CloseReason::Requested(code));
                        }
                    }
                    // A write that makes no progress until the idle timeout: a dead peer.
                    () = &mut timer => {
                        if let Some(end) = on_timer(&mut heartbeat, outbox, shared, timer.as_mut()) {
                            return end;
                        }
                    }
                }
            }
        }
        if let Some(code) = batch.close {
            return End::Close(CloseReason::Requested(code));
        }
        if wrote {
            // A client kept busy by a steady stream of frames still gets its pongs read,
            // once per ping interval, so that it is not mistaken for a dead one.
            if last_read.elapsed() >= timeouts.ping_interval {
                last_read = Instant::now();
                while let Some(message) = socket.next().now_or_never() {
                    if let Some(end) = receive(message, conn, shared, &mut heartbeat) {
                        return end;
                    }
                }
            }
            // More may have been queued while writing (its wake-up was consumed above).
            continue;
        }
        last_read = Instant::now();
        tokio::select! {
            biased;
            () = outbox.wait() => {}
            () = &mut timer => {
                if let Some(end) = on_timer(&mut heartbeat, outbox, shared, timer.as_mut()) {
                    return end;
                }
            }
            message = socket.next() => {
                if let Some(end) = receive(message, conn, shared, &mut heartbeat) {
                    return end;
                }
                // Handle every message that has already arrived before writing the replies,
                // so that pipelined requests are answered with one write.
                while let Some(message) = socket.next().now_or_never() {
                    if let Some(end) = receive(message, conn, shared, &mut heartbeat) {
                        return end;
                    }
                }
            }
        }
    }
}

/// The connection's timer fired: ping a quiet client, give up on a dead one, and re-arm.
fn on_timer(
    heartbeat: &mut Heartbeat,
    outbox: &Outbox,
    shared: &Shared,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Option<End> {
    match heartbeat.on_deadline(Instant::now()) {
        // A full outbox already means the client is about to be closed.
        Some(Tick::Ping) if outbox.push(Message::Ping(Bytes::new())).is_ok() => {
            shared.counters.frame_self_queued();
        }
        Some(Tick::Ping) | None => {}
        Some(Tick::Dead) => return Some(End::Close(CloseReason::IdleTimeout)),
    }
    timer.reset(heartbeat.deadline());
    None
}

/// Handles one read from the client; `Some(end)` when the connection must end.
fn receive(
    message: Option<Result<Message, tungstenite::Error>>,
    conn: ConnId,
    shared: &Shared,
    heartbeat: &mut Heartbeat,
) -> Option<End> {
    heartbeat.seen(Instant::now());
    match message {
        Some(Ok(Message::Text(text))) => {
            shared.node.handle(Input::Message {
                conn,
                payload: text.as_bytes(),
            });
        }
        Some(Ok(Message::Binary(bytes))) => {
            shared.node.handle(Input::Message {
                conn,
                payload: &bytes,
            });
        }
        // Pongs are queued by tungstenite and flushed by the next read or write.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
        Some(Ok(Message::Close(_))) => return Some(End::ClientClosed),
        None => return Some(End::Gone),
        Some(Err(err)) => return Some(socket_error(conn, err)),
    }
    None
}

/// Waits for the auth message (within the deadline) and asks the authenticator; counts the
/// outcome.
async fn authenticate(
    socket: &mut WebSocketStream<impl Io>,
    conn: ConnId,
    shared: &Shared,
) -> Result<AuthOutcome, End> {
    let (outcome, result) = decide(socket, conn, shared).await?;
    shared.counters.authenticated(result);
    Ok(outcome)
}

async fn decide(
    socket: &mut WebSocketStream<impl Io>,
    conn: ConnId,
    shared: &Shared,
) -> Result<(AuthOutcome, AuthResult), End> {
    let deadline = shared.config.timeouts.auth;
    let payload = match tokio::time::timeout(deadline, first_message(socket, conn)).await {
        Ok(Ok(payload)) => payload,
        Ok(Err(end)) => return Err(end),
        Err(_elapsed) => {
            debug!(%conn, "no auth message before the deadline");
            return Ok((AuthOutcome::TimedOut, AuthResult::Timeout));
        }
    };
    let (member, token) = match AuthRequest::parse(&payload) {
        Ok(AuthRequest::Anonymous) => return Ok((AuthOutcome::Anonymous, AuthResult::Anonymous)),
        Ok(AuthRequest::Member { member, token }) => (member, token),
        Err(err) => {
            debug!(%conn, %err, "bad auth message");
            return Ok((AuthOutcome::Missing, AuthResult::BadMessage));
        }
    };
    let asked = Instant::now();
    let decision = shared
        .authenticator
        .authenticate(Credentials::new(member, &token))
        .await;
    shared.counters.auth_decided_in(asked.elapsed());
    match decision {
        Ok(Decision::Accept(grant)) => {
            debug!(%conn, %member, "member authenticated");
            let access = private_access(grant, shared.config.hub.max_app_name_len);
            Ok((AuthOutcome::Accepted { member, access }, AuthResult::Member))
        }
        Ok(_refused) => {
            debug!(%conn, %member, "member refused");
            Ok((AuthOutcome::Refused, AuthResult::Refused))
        }
        Err(err) => {
            let total = shared.counters.auth_backend_error();
            warn!(%conn, %member, %err, auth_backend_errors = total, "auth backend error; treating the member as refused");
            Ok((AuthOutcome::Refused, AuthResult::BackendError))
        }
    }
}

/// What an authenticator's grant means to the hub. Names that are not valid app names can
/// match no app, so they are dropped.
fn private_access(grant: Grant, max_app_name_len: usize) -> PrivateAccess {
    match grant.private_apps {
        None => PrivateAccess::All,
        Some(names) => PrivateAccess::Only(
            names
                .iter()
                .filter_map(|name| AppName::parse(name, max_app_name_len).ok())
                .collect(),
        ),
    }
}

/// The payload of the first text or binary message.
async fn first_message(socket: &mut WebSocketStream<impl Io>, conn: ConnId) -> Result<Bytes, End> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Bytes::from(text)),
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) => return Err(End::ClientClosed),
            None => return Err(End::Gone),
            Some(Err(err)) => return Err(socket_error(conn, err)),
        }
    }
}

async fn write_all(
    socket: &mut WebSocketStream<impl Io>,
    frames: std::collections::VecDeque<Message>,
) -> Result<(), tungstenite::Error> {
    for frame in frames {
        socket.feed(frame).await?;
    }
    socket.flush().await
}

/// Sends a close frame and waits (briefly) for the client's answer, so the client sees the
/// code and reason rather than a reset.
async fn close<I: Io>(socket: &mut WebSocketStream<Metered<I>>, code: CloseCode, shared: &Shared) {
    let frame = CloseFrame {
        code: code.code().into(),
        reason: code.reason().into(),
    };
    let grace = shared.config.timeouts.close;
    let _ = tokio::time::timeout(grace, async {
        if socket.close(Some(frame)).await.is_ok() {
            // After a failed read (a broken limit, a bad frame) tungstenite reads no more.
            if socket.is_terminated() {
                socket.get_mut().linger().await;
            } else {
                drain(socket).await;
            }
        }
    })
    .await;
}

/// After the client's close frame: reading on flushes tungstenite's echo of it, then ends.
async fn finish_close(socket: &mut WebSocketStream<impl Io>, shared: &Shared) {
    let _ = tokio::time::timeout(shared.config.timeouts.close, drain(socket)).await;
}

/// Reads until the client's close frame (or the end of the stream).
async fn drain(socket: &mut WebSocketStream<impl Io>) {
    while let Some(Ok(_)) = socket.next().await {}
}
