//! The client's one error type: what went wrong connecting, and how the gateway answered a
//! request it refused.

use std::time::Duration;

/// Why a connection or a request failed.
///
/// The refusals (`Forbidden`, `TooManySubscriptions`, `NotSubscribed`, `Refused`) are the
/// gateway's own answers: the connection is fine and stays open. The others say the request
/// could not be carried out at all.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("invalid gateway URL {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    /// An app name is empty or holds a control character; it was not sent (the gateway would
    /// answer `400 bad subscribe message`).
    #[error("invalid app name {0:?}: it must be a non-empty string without control characters")]
    InvalidApp(String),
    /// TCP, TLS or the WebSocket upgrade failed (refused, reset, certificate, HTTP status…).
    #[error("cannot connect to the gateway: {0}")]
    Connect(String),
    /// The connection, its upgrade and the auth reply together took longer than
    /// [`ClientBuilder::connect_timeout`](crate::ClientBuilder::connect_timeout).
    #[error("no connection and auth reply within {0:?}")]
    ConnectTimeout(Duration),
    /// The gateway closed the connection, or answered something that is not the protocol,
    /// before the auth reply.
    #[error("the gateway did not complete the handshake: {0}")]
    Handshake(String),
    /// The gateway refused the connection before its auth reply in a way that retrying
    /// unchanged cannot fix: it closed it with one of
    /// [`FINAL_CLOSE_CODES`](crate::FINAL_CLOSE_CODES) (`code`, `reason`), for example 4400
    /// after `400 missing auth message`, or 1009 for an auth message over its
    /// `limits.max_auth_message_bytes`. After `400 missing auth message` with no close frame,
    /// `code` is 1005 ("no status"). [`ClientBuilder::connect`](crate::ClientBuilder::connect)
    /// returns it; during a reconnection the client stops.
    #[error("the gateway refused the connection for good: close {code} {reason:?}")]
    HandshakeRefused { code: u16, reason: String },
    /// `403 subscribe <app> forbidden`: a private app, and this connection is not a member
    /// (anonymous, or its token was refused with 401).
    #[error("subscribe {app} forbidden")]
    Forbidden { app: String },
    /// `429 too many subscriptions`: the connection holds the gateway's
    /// `limits.max_subscriptions` apps already.
    #[error("too many subscriptions")]
    TooManySubscriptions,
    /// `404 unsubscribe <app> not subscribed`: nothing changed.
    #[error("unsubscribe {app}: not subscribed")]
    NotSubscribed { app: String },
    /// Any other refusal, such as `400 bad subscribe message` (an app name over the gateway's
    /// `limits.max_app_name_bytes`) or `400 unknown action` (a gateway older than the
    /// `unsubscribe` verb).
    #[error("refused by the gateway: {code} {message}")]
    Refused { code: u16, message: String },
    /// [`ClientBuilder::max_queued`](crate::ClientBuilder::max_queued) requests already wait
    /// in the client (the gateway is unreachable, or slow to answer); this one was not taken.
    #[error("{0} requests already wait for the gateway")]
    QueueFull(usize),
    /// No answer within [`ClientBuilder::request_timeout`](crate::ClientBuilder::request_timeout),
    /// including time spent waiting for a reconnection. The request may still take effect.
    #[error("no answer within {0:?}")]
    RequestTimeout(Duration),
    /// The client has stopped: [`Client::close`](crate::Client::close) was called, or the
    /// gateway closed the connection with a code after which it does not reconnect (see
    /// [`DisconnectCause::is_final`](crate::DisconnectCause::is_final)).
    #[error("the client is closed")]
    Closed,
}
