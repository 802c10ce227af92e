//! One WebSocket connection's task: authenticate, then carry frames both ways until the end.
//!
//! The task is the only owner of its socket. Frames for the client arrive through its
//! [`Outbox`]; client messages go to the [`Dispatcher`]. Protocol decisions (what to reply,
//! when to close) are the hub's; this module only moves bytes and keeps the auth deadline.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use gateway_auth::{Credentials, Decision, Grant};
use gateway_core::{AppName, AuthOutcome, AuthRequest, CloseCode, ConnId, Input, PrivateAccess};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tracing::{debug, info, warn};

use crate::outbox::Outbox;
use crate::server::Shared;

pub(crate) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Why the connection loop ended.
enum End {
    /// Close the socket with this code (after writing what was queued).
    Close(CloseCode),
    /// The client sent a close frame: let tungstenite send the echo, then drop.
    ClientClosed,
    /// The client vanished or broke the protocol at the WebSocket level.
    Gone,
}

pub(crate) async fn serve(mut socket: Socket, conn: ConnId, shared: Arc<Shared>) {
    let outbox = Arc::new(Outbox::new(shared.config.limits.outbox_messages));
    shared.dispatcher.attach(conn, outbox.clone());

    let end = tokio::select! {
        end = run(&mut socket, conn, &shared, &outbox) => end,
        () = shared.shutdown.cancelled() => End::Close(CloseCode::GoingAway),
    };
    // Leave the hub first: no push is queued to a connection that is closing.
    shared.dispatcher.detach(conn);
    match end {
        End::Close(code) => close(&mut socket, code, &shared).await,
        End::ClientClosed => finish_close(&mut socket, &shared).await,
        End::Gone => {}
    }
    debug!(%conn, "connection ended");
}

async fn run(socket: &mut Socket, conn: ConnId, shared: &Shared, outbox: &Outbox) -> End {
    let outcome = match authenticate(socket, conn, shared).await {
        Ok(outcome) => outcome,
        Err(end) => return end,
    };
    shared
        .dispatcher
        .handle(Input::Authenticated { conn, outcome });

    loop {
        let mut batch = outbox.take();
        let wrote = !batch.frames.is_empty();
        if wrote {
            // A client that does not read blocks this write; the hub then closes the
            // connection when its outbox fills, and that close must not wait for the write.
            let write = write_all(socket, std::mem::take(&mut batch.frames));
            tokio::pin!(write);
            loop {
                tokio::select! {
                    result = &mut write => {
                        if result.is_err() {
                            return End::Gone;
                        }
                        break;
                    }
                    () = outbox.wait() => {
                        // A close requested after this batch was taken (a slow consumer) does
                        // not wait for the write; one taken with the batch comes after it.
                        if batch.close.is_none()
                            && let Some(code) = outbox.close_code()
                        {
                            return End::Close(code);
                        }
                    }
                }
            }
        }
        if let Some(code) = batch.close {
            return End::Close(code);
        }
        if wrote {
            // More may have been queued while writing (its wake-up was consumed above).
            continue;
        }
        tokio::select! {
            biased;
            () = outbox.wait() => {}
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    shared.dispatcher.handle(Input::Message { conn, payload: text.as_bytes() });
                }
                Some(Ok(Message::Binary(bytes))) => {
                    shared.dispatcher.handle(Input::Message { conn, payload: &bytes });
                }
                // Pongs are queued by tungstenite and flushed by the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) => return End::ClientClosed,
                None => return End::Gone,
                Some(Err(err)) => return socket_error(conn, err),
            },
        }
    }
}

/// Waits for the auth message (within the deadline) and asks the authenticator.
async fn authenticate(
    socket: &mut Socket,
    conn: ConnId,
    shared: &Shared,
) -> Result<AuthOutcome, End> {
    let deadline = shared.config.timeouts.auth;
    let payload = match tokio::time::timeout(deadline, first_message(socket, conn)).await {
        Ok(Ok(payload)) => payload,
        Ok(Err(end)) => return Err(end),
        Err(_elapsed) => {
            debug!(%conn, "no auth message before the deadline");
            return Ok(AuthOutcome::TimedOut);
        }
    };
    let (member, token) = match AuthRequest::parse(&payload) {
        Ok(AuthRequest::Anonymous) => return Ok(AuthOutcome::Anonymous),
        Ok(AuthRequest::Member { member, token }) => (member, token),
        Err(err) => {
            debug!(%conn, %err, "bad auth message");
            return Ok(AuthOutcome::Missing);
        }
    };
    match shared
        .authenticator
        .authenticate(Credentials::new(member, &token))
        .await
    {
        Ok(Decision::Accept(grant)) => {
            debug!(%conn, %member, "member authenticated");
            Ok(AuthOutcome::Accepted {
                member,
                access: private_access(grant, shared.config.hub.max_app_name_len),
            })
        }
        Ok(_refused) => {
            debug!(%conn, %member, "member refused");
            Ok(AuthOutcome::Refused)
        }
        Err(err) => {
            let total = shared.counters.auth_backend_error();
            warn!(%conn, %member, %err, auth_backend_errors = total, "auth backend error; treating the member as refused");
            Ok(AuthOutcome::Refused)
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
async fn first_message(socket: &mut Socket, conn: ConnId) -> Result<Bytes, End> {
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

fn socket_error(conn: ConnId, err: tungstenite::Error) -> End {
    match err {
        tungstenite::Error::Capacity(err) => {
            info!(%conn, %err, "client message too big; closing with 1009");
            End::Close(CloseCode::MessageTooBig)
        }
        err => {
            debug!(%conn, %err, "connection error");
            End::Gone
        }
    }
}

async fn write_all(
    socket: &mut Socket,
    frames: std::collections::VecDeque<Message>,
) -> Result<(), tungstenite::Error> {
    for frame in frames {
        socket.feed(frame).await?;
    }
    socket.flush().await
}

/// Sends a close frame and waits (briefly) for the client's answer, so the client sees the
/// code and reason rather than a reset.
async fn close(socket: &mut Socket, code: CloseCode, shared: &Shared) {
    let frame = CloseFrame {
        code: code.code().into(),
        reason: code.reason().into(),
    };
    let grace = shared.config.timeouts.close;
    let _ = tokio::time::timeout(grace, async {
        if socket.close(Some(frame)).await.is_ok() {
            drain(socket).await;
        }
    })
    .await;
}

/// After the client's close frame: reading on flushes tungstenite's echo of it, then ends.
async fn finish_close(socket: &mut Socket, shared: &Shared) {
    let _ = tokio::time::timeout(shared.config.timeouts.close, drain(socket)).await;
}

/// Reads until the client's close frame (or the end of the stream).
async fn drain(socket: &mut Socket) {
    while let Some(Ok(_)) = socket.next().await {}
}
