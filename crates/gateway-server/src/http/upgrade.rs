//! WebSocket upgrade requests: the rules that judge them (the same for a head read by hand in
//! [`handshake`](super::handshake) and for one parsed by hyper), and the upgrades that come to
//! hyper, finished in a task of their own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, warn};

use super::{Body, Head, Refusal};
use crate::admission::AddressSlot;
use crate::shared::Shared;
use crate::ws;

pub(super) fn wants_websocket(head: &(impl Head + ?Sized)) -> bool {
    head.has_token("upgrade", "websocket")
}

/// Judges a WebSocket upgrade request; on success, the `Sec-WebSocket-Accept` value.
/// Taking a place under `limits.max_connections` is the caller's next step.
pub(super) fn check_upgrade(
    is_get: bool,
    head: &(impl Head + ?Sized),
    shared: &Shared,
    peer: SocketAddr,
) -> Result<String, Refusal> {
    if !is_get {
        return Err(Refusal::MethodNotAllowed("GET"));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(Refusal::BadUpgrade(
            "the Connection header must include `upgrade`",
        ));
    }
    if head.value("sec-websocket-version") != Some(b"13") {
        return Err(Refusal::UnsupportedWebSocketVersion);
    }
    let Some(key) = head.value("sec-websocket-key") else {
        return Err(Refusal::BadUpgrade("Sec-WebSocket-Key is missing"));
    };
    if let (Some(allowed), Some(origin)) = (
        &shared.live().settings.access.allowed_origins,
        head.value("origin"),
    ) {
        let origin = std::str::from_utf8(origin).unwrap_or("");
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            debug!(%peer, origin, "upgrade refused: origin not allowed");
            return Err(Refusal::OriginNotAllowed);
        }
    }
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    Ok(derive_accept_key(key))
}

/// An upgrade that came to hyper: after another request on the same connection, or refused.
/// (The first request of a connection is normally read by `handshake`.)
pub(super) fn upgrade(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    address: Option<Arc<AddressSlot>>,
) -> Result<Response<Body>, Refusal> {
    let accept = check_upgrade(req.method() == Method::GET, req.headers(), &shared, peer)?;
    let Ok(slot) = shared.connection_slots.clone().try_acquire_owned() else {
        let total = shared.counters.upgrade_refused();
        warn!(%peer, total, "upgrade refused: limits.max_connections reached");
        return Err(Refusal::TooManyConnections);
    };
    let conn = shared.next_conn_id();
    debug!(%conn, %peer, "websocket upgrade");

    shared.clone().tracker.spawn(async move {
        // The WebSocket keeps its address's share after the HTTP connection hands it over.
        let _address = address;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let socket = ws::websocket(TokioIo::new(upgraded), None, &shared).await;
                ws::serve(socket, conn, peer, shared, slot).await;
            }
            Err(err) => debug!(%conn, %err, "upgrade failed"),
        }
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}
