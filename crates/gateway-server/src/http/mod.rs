//! The HTTP side: routing of the main listener (WebSocket upgrade, `POST /push`, the backend's
//! `/disconnect`, `/presence` and `/history`, the demo page) and of the stat listener (`GET /stat`, …), and
//! the one place that maps refusals to HTTP responses.
//!
//! - [`handshake`]: a connection's first request, read by hand (the upgrade's fast path);
//! - [`upgrade`]: judging an upgrade request, and upgrades that come to hyper;
//! - [`push`]: `POST /push`, its body read within bounds before it takes a dispatch slot;
//! - [`control`]: `POST /disconnect` and `GET /presence`, asked of every node;
//! - [`history`]: `GET /history`, a stream's recent pushes for backends;
//! - [`admin`]: the stat listener's pages (`GET /stat`);
//! - [`pages`]: the embedded dashboard, the demo client (`GET /`) and the JavaScript client
//!   module it is built on (`GET /ws-gateway.js`).

pub(crate) mod admin;
mod control;
pub(crate) mod handshake;
mod history;
mod overview;
mod pages;
mod push;
mod stat_stack;
pub(crate) use stat_stack::stat_stack;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use tracing::info;

use crate::admission::AddressSlot;
use crate::counters::PushRefusal;
use crate::log_limit::REFUSALS;
use crate::shared::Shared;

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
    /// The broker was unreachable: the push was not sent, nobody received it.
    BrokerUnavailable(String),
    /// The push was sent to the broker, which failed or did not answer in time: it may have
    /// been delivered, so a retry may deliver it twice.
    PushOutcomeUnknown(String),
    /// The cluster view could not be read from the broker, or a question could not be sent
    /// to the nodes (`/disconnect`, `/presence`): nobody acted on it.
    ClusterUnavailable(String),
    /// A question to the nodes was sent, but the broker failed or did not confirm in time:
    /// some nodes may have acted on it.
    ClusterOutcomeUnknown(String),
    /// `limits.max_control_requests` `/disconnect` and `/presence` requests are being answered.
    ControlOverloaded,
    /// A `/disconnect` body that is not a valid request.
    BadControl(String),
    /// A query parameter with a value this server does not know.
    BadQuery(String),
    /// The push bodies being received at once reached `limits.max_buffered_push_bytes`.
    PushBodiesOverBudget,
    /// The push body's bytes were taken back for newer pushes (it was too slow).
    PushBodyEvicted,
    /// The push body did not arrive within `timeouts.push_body_ms`.
    PushBodyTimeout(std::time::Duration),
    BodyTooLarge(usize),
    BadBody(String),
    BadPush(String),
    /// An array of pushes with an invalid element: the whole text of the answer, naming the
    /// element's index. Nothing was published.
    BadPushBatch(String),
    /// An array or `member_ids` push that would make more publications than this
    /// (`limits.max_push_batch`). Nothing was published.
    PushBatchTooLarge(usize),
    /// An array or `member_ids` push whose publication `accepted` (from 0) the broker did not
    /// take: the ones before it were taken; from it on, nothing was delivered, or with
    /// `outcome_unknown` something may have been. Answered with a JSON body.
    PushBatchNotDelivered {
        accepted: usize,
        error: String,
        outcome_unknown: bool,
    },
    /// A `/history` query parameter that is missing, unknown or wrong (named): nothing was
    /// read. Answered with a JSON body, like every `/history` refusal after access control.
    BadHistoryQuery {
        parameter: String,
        error: String,
    },
    /// `/history` of an app whose history is off by policy (`[history]`).
    NoHistory(String),
    /// The history could not be read: the broker is unreachable.
    HistoryUnavailable(String),
    /// The history could not be read: the broker failed or did not answer in time.
    HistoryFailed(String),
    /// `limits.max_control_requests` `/disconnect`, `/presence` and `/history` requests are
    /// being answered.
    HistoryOverloaded,
    /// The stat listener is answering `limits.max_stat_requests` requests already.
    StatOverloaded,
    /// A stat request's answer was not ready within `timeouts.stat_request_ms`.
    StatTimeout(std::time::Duration),
}

impl Refusal {
    /// The reason `/metrics` gives a refused push.
    fn push_reason(&self) -> PushRefusal {
        match self {
            Refusal::PushKeyRequired => PushRefusal::Unauthorized,
            Refusal::PushNotAllowedFrom => PushRefusal::Forbidden,
            Refusal::MethodNotAllowed(_) => PushRefusal::MethodNotAllowed,
            Refusal::PushBodyEvicted | Refusal::PushBodyTimeout(_) => PushRefusal::BodyTimeout,
            Refusal::BodyTooLarge(_) => PushRefusal::TooLarge,
            Refusal::PushOverloaded | Refusal::PushBodiesOverBudget => PushRefusal::Overloaded,
            Refusal::ShuttingDown => PushRefusal::ShuttingDown,
            Refusal::BrokerUnavailable(_) => PushRefusal::BrokerUnavailable,
            Refusal::PushOutcomeUnknown(_) => PushRefusal::OutcomeUnknown,
            Refusal::PushBatchTooLarge(_) => PushRefusal::TooLarge,
            Refusal::PushBatchNotDelivered {
                outcome_unknown, ..
            } => {
                if *outcome_unknown {
                    PushRefusal::OutcomeUnknown
                } else {
                    PushRefusal::BrokerUnavailable
                }
            }
            _ => PushRefusal::BadRequest,
        }
    }

    /// The status and the one-line text this refusal is answered with.
    fn status_and_text(&self) -> (StatusCode, String) {
        match self {
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
            Refusal::BrokerUnavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("push not delivered: {why}"),
            ),
            Refusal::PushOutcomeUnknown(why) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("push outcome unknown (it may have been delivered): {why}"),
            ),
            Refusal::ClusterUnavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cluster view unavailable: {why}"),
            ),
            Refusal::ClusterOutcomeUnknown(why) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("outcome unknown (some nodes may have acted): {why}"),
            ),
            Refusal::ControlOverloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many /disconnect and /presence requests at once (limits.max_control_requests)"
                    .to_owned(),
            ),
            Refusal::BadControl(why) | Refusal::BadQuery(why) => {
                (StatusCode::BAD_REQUEST, why.clone())
            }
            Refusal::BadHistoryQuery { error, .. } => (StatusCode::BAD_REQUEST, error.clone()),
            Refusal::NoHistory(app) => (StatusCode::NOT_FOUND, format!("no history for app {app}")),
            Refusal::HistoryUnavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("history unavailable: {why}"),
            ),
            Refusal::HistoryFailed(why) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("history not read: {why}"),
            ),
            Refusal::HistoryOverloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many /disconnect, /presence and /history requests at once (limits.max_control_requests)"
                    .to_owned(),
            ),
            Refusal::StatOverloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many stat requests at once (limits.max_stat_requests)".to_owned(),
            ),
            Refusal::StatTimeout(limit) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no answer within {} ms (timeouts.stat_request_ms)",
                    limit.as_millis()
                ),
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
            Refusal::BadPushBatch(text) => (StatusCode::BAD_REQUEST, text.clone()),
            Refusal::PushBatchTooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {max} publications in one request (limits.max_push_batch)"),
            ),
            Refusal::PushBatchNotDelivered {
                accepted,
                error,
                outcome_unknown: false,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not delivered from publication {accepted} on: {error}"),
            ),
            Refusal::PushBatchNotDelivered {
                accepted,
                error,
                outcome_unknown: true,
            } => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "outcome unknown from publication {accepted} on (they may have been delivered): {error}"
                ),
            ),
        }
    }

    /// Logs the refusal at `info` with its reason (rate-limited: see [`crate::log_limit`]).
    fn log(&self, peer: SocketAddr, method: &Method) {
        if let Some(suppressed) = REFUSALS.admit() {
            let (status, text) = self.status_and_text();
            info!(%peer, %method, status = status.as_u16(), suppressed, "request refused: {text}");
        }
    }

    fn response(self) -> Response<Body> {
        let (status, text) = self.status_and_text();
        // Only an accepted pusher keeps its connection for the next request: anyone else's
        // connection is closed after the answer, so that refused peers cannot hold sockets.
        let keep_alive = matches!(
            self,
            Refusal::PushOverloaded
                | Refusal::BrokerUnavailable(_)
                | Refusal::PushOutcomeUnknown(_)
                | Refusal::BadBody(_)
                | Refusal::BadPush(_)
                | Refusal::BadPushBatch(_)
                | Refusal::PushBatchTooLarge(_)
                | Refusal::PushBatchNotDelivered { .. }
                | Refusal::ControlOverloaded
                | Refusal::ClusterUnavailable(_)
                | Refusal::ClusterOutcomeUnknown(_)
                | Refusal::BadControl(_)
                | Refusal::BadHistoryQuery { .. }
                | Refusal::NoHistory(_)
                | Refusal::HistoryUnavailable(_)
                | Refusal::HistoryFailed(_)
                | Refusal::HistoryOverloaded
        );
        let mut response = match &self {
            // The pusher needs the count to know what to send again: a JSON body.
            Refusal::PushBatchNotDelivered { accepted, .. } => json_response(
                status,
                serde_json::json!({"accepted": accepted, "error": text}).to_string(),
            ),
            // `/history` answers JSON, its refusals too; a bad parameter is named.
            Refusal::BadHistoryQuery { parameter, .. } => json_response(
                status,
                serde_json::json!({"error": text, "parameter": parameter}).to_string(),
            ),
            Refusal::NoHistory(_)
            | Refusal::HistoryUnavailable(_)
            | Refusal::HistoryFailed(_)
            | Refusal::HistoryOverloaded => {
                json_response(status, serde_json::json!({ "error": text }).to_string())
            }
            _ => text_response(status, format!("{text}\n")),
        };
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
            | Refusal::BrokerUnavailable(_)
            | Refusal::ClusterUnavailable(_)
            | Refusal::ControlOverloaded
            | Refusal::HistoryUnavailable(_)
            | Refusal::HistoryOverloaded
            | Refusal::StatOverloaded
            | Refusal::StatTimeout(_)
            | Refusal::PushBodiesOverBudget
            | Refusal::PushBatchNotDelivered {
                outcome_unknown: false,
                ..
            } => {
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

/// A JSON answer of the push API (`{"accepted":N}` and its refusals).
fn json_response(status: StatusCode, json: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The main listener: any path that is a WebSocket upgrade, `POST /push`, the backend's
/// `POST /disconnect`, `GET /presence` and `GET /history`, and the demo page.
pub(crate) async fn main_service(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    address: Option<Arc<AddressSlot>>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let result = if upgrade::wants_websocket(req.headers()) {
        upgrade::upgrade(req, shared, peer, address)
    } else if req.uri().path() == "/push" {
        let result = if req.method() == Method::POST {
            push::push(req, &shared, peer).await
        } else {
            Err(Refusal::MethodNotAllowed("POST"))
        };
        if let Err(refusal) = &result {
            shared.counters.push_answered_with(refusal.push_reason());
        }
        result
    } else if matches!(req.uri().path(), "/disconnect" | "/presence") {
        control::serve(req, shared, peer).await
    } else if req.uri().path() == "/history" {
        history::serve(req, shared, peer).await
    } else if req.uri().path() == "/" && shared.config.demo_page {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            Ok(pages::demo())
        } else {
            Err(Refusal::MethodNotAllowed("GET"))
        }
    } else if req.uri().path() == "/ws-gateway.js" && shared.config.demo_page {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            Ok(pages::client_module())
        } else {
            Err(Refusal::MethodNotAllowed("GET"))
        }
    } else {
        Err(Refusal::NotFound)
    };
    Ok(result.unwrap_or_else(|refusal| {
        refusal.log(peer, &method);
        refusal.response()
    }))
}

/// The stat listener: `GET /stat` (streamed a page at a time, [`admin`]), `/metrics`,
/// `/healthz`, `/readyz`, `/api/overview` and the dashboard at `/`.
pub(crate) async fn stat_service(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<admin::ServiceBody>, Infallible> {
    use http_body_util::Either;
    let path = req.uri().path();
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    let response = match path {
        _ if !read && STAT_PATHS.contains(&path) => Refusal::MethodNotAllowed("GET")
            .response()
            .map(Either::Left),
        "/stat" => match (stat_format(&req), query_value(req.uri().query(), "scope")) {
            (Err(refusal), _) => refusal.response().map(Either::Left),
            (Ok(format), None | Some("node")) => admin::response(shared, format).map(Either::Right),
            (Ok(format), Some("cluster")) => admin::cluster_response(&shared, format)
                .await
                .unwrap_or_else(Refusal::response)
                .map(Either::Left),
            (Ok(_), Some(other)) => Refusal::BadQuery(format!(
                "scope must be \"node\" or \"cluster\", not {other:?}"
            ))
            .response()
            .map(Either::Left),
        },
        "/metrics" => {
            let mut response = text_response(
                StatusCode::OK,
                crate::metrics::exposition::render(&shared).await,
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::exposition::CONTENT_TYPE),
            );
            response.map(Either::Left)
        }
        "/healthz" => text_response(StatusCode::OK, "ok\n").map(Either::Left),
        "/readyz" => admin::readiness(&shared).map(Either::Left),
        "/api/overview" => overview::overview(&shared).await.map(Either::Left),
        "/" => pages::dashboard().map(Either::Left),
        _ => Refusal::NotFound.response().map(Either::Left),
    };
    Ok(response)
}

/// `/stat`'s format: `?format=json|text`, else JSON when `Accept` names `application/json`,
/// else the seed's text.
fn stat_format(req: &Request<Incoming>) -> Result<admin::Format, Refusal> {
    match query_value(req.uri().query(), "format") {
        Some("json") => Ok(admin::Format::Json),
        Some("text") => Ok(admin::Format::Text),
        Some(other) => Err(Refusal::BadQuery(format!(
            "format must be \"text\" or \"json\", not {other:?}"
        ))),
        None if req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|media| {
                media
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim() == "application/json")
            }) =>
        {
            Ok(admin::Format::Json)
        }
        None => Ok(admin::Format::Text),
    }
}

/// The stat listener's paths; each answers `GET` (and `HEAD`) only.
const STAT_PATHS: [&str; 6] = [
    "/stat",
    "/metrics",
    "/healthz",
    "/readyz",
    "/api/overview",
    "/",
];

/// The value of `key` in a query string (`a=1&scope=cluster`), as written (no decoding: the
/// values this server reads are plain words).
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
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
