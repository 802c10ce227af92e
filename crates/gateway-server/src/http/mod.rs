//! The HTTP side: routing of the main listener (WebSocket upgrade, `POST /push`) and of the
//! stat listener (`GET /stat`), and the one place that maps refusals to HTTP responses.

pub(crate) mod admin;
pub(crate) mod handshake;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gateway_core::{Publication, PushMessage};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{debug, warn};

use crate::admission::{AddressSlot, BodyCharge};
use crate::shared::Shared;
use crate::ws;

pub(crate) type Body = Full<Bytes>;

/// Every refusal of the HTTP side, mapped to its status in [`Refusal::response`].
#[derive(Debug)]
pub(crate) enum Refusal {
    NotFound,
    MethodNotAllowed(&'static str),
    BadUpgrade(&'static str),
    UnsupportedWebSocketVersion,
    OriginNotAllowed,
    TooManyConnections,
    ShuttingDown,
    PushKeyRequired,
    PushNotAllowedFrom,
    PushOverloaded,
    /// The push bodies being received at once reached `limits.max_buffered_push_bytes`.
    PushBodiesOverBudget,
    /// The push body's bytes were taken back for newer pushes (it was too slow).
    PushBodyEvicted,
    /// The push body did not arrive within `timeouts.push_body_ms`.
    PushBodyTimeout(std::time::Duration),
    BodyTooLarge(usize),
    BadBody(String),
    BadPush(String),
}

impl Refusal {
    fn response(self) -> Response<Body> {
        let (status, text) = match &self {
            Refusal::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            Refusal::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed".to_owned(),
            ),
            Refusal::BadUpgrade(why) => (
                StatusCode::BAD_REQUEST,
                format!("bad WebSocket upgrade: {why}"),
            ),
            Refusal::UnsupportedWebSocketVersion => (
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version; use 13".to_owned(),
            ),
            Refusal::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin not allowed".to_owned()),
            Refusal::TooManyConnections => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections".to_owned(),
            ),
            Refusal::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned()),
            Refusal::PushKeyRequired => (
                StatusCode::UNAUTHORIZED,
                "push requires Authorization: Bearer <push api key>".to_owned(),
            ),
            Refusal::PushNotAllowedFrom => (
                StatusCode::FORBIDDEN,
                "push is not allowed from this address".to_owned(),
            ),
            Refusal::PushOverloaded | Refusal::PushBodiesOverBudget => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded".to_owned())
            }
            Refusal::PushBodyEvicted => (
                StatusCode::REQUEST_TIMEOUT,
                "push body too slow: its room was needed by other pushes".to_owned(),
            ),
            Refusal::PushBodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                format!("push body not received within {} ms", limit.as_millis()),
            ),
            Refusal::BodyTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("push body larger than {max} bytes"),
            ),
            Refusal::BadBody(why) => (StatusCode::BAD_REQUEST, format!("cannot read body: {why}")),
            Refusal::BadPush(why) => (StatusCode::BAD_REQUEST, format!("bad push message: {why}")),
        };
        // Only an accepted pusher keeps its connection for the next request: anyone else's
        // connection is closed after the answer, so that refused peers cannot hold sockets.
        let keep_alive = matches!(
            self,
            Refusal::PushOverloaded | Refusal::BadBody(_) | Refusal::BadPush(_)
        );
        let mut response = text_response(status, format!("{text}\n"));
        let headers = response.headers_mut();
        if !keep_alive {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match self {
            Refusal::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Refusal::UnsupportedWebSocketVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Refusal::PushKeyRequired => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::TooManyConnections
            | Refusal::ShuttingDown
            | Refusal::PushOverloaded
            | Refusal::PushBodiesOverBudget => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The main listener: any path that is a WebSocket upgrade, and `POST /push`.
pub(crate) async fn main_service(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    address: Option<Arc<AddressSlot>>,
) -> Result<Response<Body>, Infallible> {
    let result = if wants_websocket(req.headers()) {
        upgrade(req, shared, peer, address)
    } else if req.uri().path() == "/push" {
        if req.method() == Method::POST {
            push(req, &shared, peer).await
        } else {
            Err(Refusal::MethodNotAllowed("POST"))
        }
    } else {
        Err(Refusal::NotFound)
    };
    Ok(result.unwrap_or_else(Refusal::response))
}

/// The stat listener: `GET /stat`, streamed a page at a time ([`admin`]).
pub(crate) async fn stat_service(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<admin::ServiceBody>, Infallible> {
    use http_body_util::Either;
    let response = match (req.uri().path(), req.method()) {
        ("/stat", &Method::GET) => admin::response(shared).map(Either::Right),
        ("/stat", _) => Refusal::MethodNotAllowed("GET")
            .response()
            .map(Either::Left),
        _ => Refusal::NotFound.response().map(Either::Left),
    };
    Ok(response)
}

/// The header fields of a request head, from hyper or from the hand-read first request
/// (`handshake`), so both judge an upgrade by the same rules.
pub(crate) trait Head {
    /// Every value of the header `name` (case-insensitive), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// Whether a comma-separated header `name` holds `token` (case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name).any(|value| {
            std::str::from_utf8(value)
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    }

    fn value<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl Head for http::HeaderMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl Head for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

pub(crate) fn wants_websocket(head: &(impl Head + ?Sized)) -> bool {
    head.has_token("upgrade", "websocket")
}

/// Judges a WebSocket upgrade request; on success, the `Sec-WebSocket-Accept` value.
/// Taking a place under `limits.max_connections` is the caller's next step.
pub(crate) fn check_upgrade(
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
    if let (Some(allowed), Some(origin)) =
        (&shared.config.access.allowed_origins, head.value("origin"))
    {
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
fn upgrade(
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
                ws::serve(socket, conn, shared, slot).await;
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

/// Whether this request may push: with keys configured, it must present one; without, it
/// must come from an allowed network.
fn push_allowed(req: &Request<Incoming>, shared: &Shared, peer: SocketAddr) -> Result<(), Refusal> {
    if shared.push_key_digests.is_empty() {
        let ip = peer.ip().to_canonical();
        return if shared
            .config
            .access
            .push_allow_from
            .iter()
            .any(|net| net.contains(&ip))
        {
            Ok(())
        } else {
            debug!(%peer, "push refused: address not in push_allow_from");
            Err(Refusal::PushNotAllowedFrom)
        };
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let Some(presented) = presented else {
        return Err(Refusal::PushKeyRequired);
    };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Compare with every key, each in constant time, without stopping at a match.
    let matched = shared
        .push_key_digests
        .iter()
        .fold(Choice::from(0), |any, key| any | key.ct_eq(&digest));
    if bool::from(matched) {
        Ok(())
    } else {
        debug!(%peer, "push refused: wrong key");
        Err(Refusal::PushKeyRequired)
    }
}

async fn push(
    req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Response<Body>, Refusal> {
    push_allowed(&req, shared, peer)?;
    if shared.shutdown.is_cancelled() {
        shared.counters.push_refused();
        return Err(Refusal::ShuttingDown);
    }
    let max = shared.config.limits.max_push_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(Refusal::BodyTooLarge(max));
    }
    // The body is read before a dispatch slot is taken, within its own deadline: a sender
    // that is slow or stalls holds no slot, only its own bytes (bounded in total).
    let (body, charge) = match receive_body(req.into_body(), shared).await {
        Ok(received) => received,
        Err(refusal) => {
            match refusal {
                Refusal::PushBodiesOverBudget | Refusal::ShuttingDown => {
                    let total = shared.counters.push_refused();
                    warn!(total, "push refused: {refusal:?}");
                }
                Refusal::PushBodyEvicted | Refusal::PushBodyTimeout(_) => {
                    let total = shared.counters.push_body_timed_out();
                    debug!(%peer, total, "push body too slow: {refusal:?}");
                }
                _ => {}
            }
            return Err(refusal);
        }
    };
    // A shutdown that began while the body arrived: every client is being closed.
    if shared.shutdown.is_cancelled() {
        shared.counters.push_refused();
        return Err(Refusal::ShuttingDown);
    }
    // Held until the push is handed over: 202 means delivered to every recipient's queue.
    let Ok(_slot) = shared.push_slots.try_acquire() else {
        let total = shared.counters.push_refused();
        warn!(total, "push refused: limits.max_inflight_pushes reached");
        return Err(Refusal::PushOverloaded);
    };
    let push = PushMessage::parse(&body, shared.config.hub.max_app_name_len)
        .map_err(|err| Refusal::BadPush(err.to_string()))?;
    drop(charge);
    shared
        .dispatcher
        .handle(gateway_core::Input::Push(Publication::from(push)));
    let mut accepted = Response::new(Full::new(Bytes::new()));
    *accepted.status_mut() = StatusCode::ACCEPTED;
    Ok(accepted)
}

/// Receives a push body of at most `limits.max_push_body_bytes`, within
/// `timeouts.push_body_ms` from now. A body that comes in one piece (nearly all of them) is
/// kept as it is; one that takes several reads is charged, read by read, to the bytes of
/// bodies being received, and the charge (returned) holds its share until it is dropped.
async fn receive_body(
    mut body: Incoming,
    shared: &Shared,
) -> Result<(Bytes, Option<BodyCharge>), Refusal> {
    let max = shared.config.limits.max_push_body_bytes;
    let limit = shared.config.timeouts.push_body;
    let deadline = tokio::time::Instant::now() + limit;
    let timed_out = |_| Refusal::PushBodyTimeout(limit);
    let first = tokio::select! {
        biased;
        frame = tokio::time::timeout_at(deadline, next_data(&mut body)) => frame.map_err(timed_out)??,
        () = shared.shutdown.cancelled() => return Err(Refusal::ShuttingDown),
    };
    let Some(first) = first else {
        return Ok((Bytes::new(), None));
    };
    if first.len() > max {
        return Err(Refusal::BodyTooLarge(max));
    }
    if hyper::body::Body::is_end_stream(&body) {
        return Ok((first, None));
    }
    let mut charge = shared.push_bodies.start();
    if !charge.add(first.len()) {
        return Err(Refusal::PushBodiesOverBudget);
    }
    let evicted = charge.evicted.clone();
    let mut collected = BytesMut::from(first);
    loop {
        let data = tokio::select! {
            biased;
            frame = tokio::time::timeout_at(deadline, next_data(&mut body)) => frame.map_err(timed_out)??,
            () = evicted.cancelled() => return Err(Refusal::PushBodyEvicted),
            () = shared.shutdown.cancelled() => return Err(Refusal::ShuttingDown),
        };
        let Some(data) = data else {
            return Ok((collected.freeze(), Some(charge)));
        };
        if collected.len() + data.len() > max {
            return Err(Refusal::BodyTooLarge(max));
        }
        if !charge.add(data.len()) {
            return Err(Refusal::PushBodiesOverBudget);
        }
        collected.extend_from_slice(&data);
    }
}

/// The next piece of data of `body` (trailers skipped); `None` at its end.
async fn next_data(body: &mut Incoming) -> Result<Option<Bytes>, Refusal> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| Refusal::BadBody(err.to_string()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}
