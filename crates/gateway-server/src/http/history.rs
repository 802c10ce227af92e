//! `GET /history?app=x[&member_id=N][&since=41&epoch=e1][&limit=100]`: a backend reads the
//! recent pushes of one stream (a public app, or one member of a private app), oldest first,
//! with their positions (docs: `docs/protocol.md`, "History API").
//!
//! Protected like `/push` (a push key, or an allowed network), and answered behind the same
//! tower stack as `/presence` (`LoadShed` over the `limits.max_control_requests` concurrency
//! limit, shared with `/disconnect` and `/presence`): with a broker a read is a round trip to
//! its server, and a burst of them must not pile up. The read itself is
//! [`Node::history`](crate::node::Node::history): the node's own memory with the local broker,
//! the broker's history in a cluster. A failed read is a `503`/`504`, never an empty `200`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway_broker::BrokerError;
use gateway_core::{
    AppName, Epoch, HistoryRead, MemberId, NO_MEMBER, Position, Publication, Since, Topic,
};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};

use super::{Body, Refusal, push::push_allowed};
use crate::shared::Shared;

/// The pushes a page holds when the request does not say (`limit`), at most
/// `limits.max_history_page`.
const DEFAULT_PAGE: usize = 100;

/// The parameters `/history` reads; any other is refused, so that a typo (`sinse=41`) is not
/// silently read as "every kept push".
const PARAMETERS: [&str; 5] = ["app", "member_id", "since", "epoch", "limit"];

/// A checked request.
#[derive(Debug, Clone)]
struct Query {
    topic: Topic,
    since: Option<Since>,
    limit: usize,
}

/// Answers `GET /history` (the caller routed by path).
pub(super) async fn serve(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
) -> Result<Response<Body>, Refusal> {
    if req.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed("GET"));
    }
    push_allowed(&req, &shared.live(), peer)?;
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    // Checked before it takes a slot: a bad request holds none.
    let query = read_query(req.uri().query().unwrap_or_default(), &shared)?;
    let slots = shared.control_requests.clone();
    let answered = ServiceBuilder::new()
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(slots))
        .service_fn(move |query: Query| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(answer(query, &shared).await) }
        })
        .oneshot(query)
        .await;
    match answered {
        Ok(answer) => answer,
        // The only error the stack makes: shed at the concurrency limit.
        Err(_) => Err(Refusal::HistoryOverloaded),
    }
}

fn bad(parameter: &str, error: impl Into<String>) -> Refusal {
    Refusal::BadHistoryQuery {
        parameter: parameter.to_owned(),
        error: error.into(),
    }
}

/// The query string, checked: every refusal names its parameter.
fn read_query(raw: &str, shared: &Shared) -> Result<Query, Refusal> {
    let mut params: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()).into_owned() {
        if !PARAMETERS.contains(&key.as_str()) {
            return Err(bad(
                &key,
                format!(
                    "unknown parameter {key:?}; /history takes {}",
                    PARAMETERS.join(", ")
                ),
            ));
        }
        if params.contains_key(&key) {
            return Err(bad(&key, format!("{key} is given twice")));
        }
        params.insert(key, value);
    }
    let hub = &shared.config.hub;
    let Some(app) = params.get("app") else {
        return Err(bad("app", "app is required: /history?app=<name>"));
    };
    let app = AppName::parse(app, hub.max_app_name_len)
        .map_err(|err| bad("app", format!("bad app: {err}")))?;
    if app.is_reserved() {
        return Err(bad("app", format!("bad app: {app} is reserved")));
    }
    let member = match params.get("member_id") {
        None => None,
        Some(value) => Some(
            value
                .parse::<i64>()
                .ok()
                .and_then(MemberId::new)
                .ok_or_else(|| bad("member_id", "member_id must be a positive integer"))?,
        ),
    };
    let topic = match (hub.private_apps.contains(&app), member) {
        (true, Some(member)) => Topic::Member { app, member },
        (true, None) => {
            return Err(bad(
                "member_id",
                format!("{app} is a private app: its streams are per member; give member_id"),
            ));
        }
        (false, None) => Topic::App(app),
        (false, Some(_)) => {
            return Err(bad(
                "member_id",
                format!("{app} is a public app: it has one stream; leave member_id out"),
            ));
        }
    };
    let since = read_since(params.get("since"), params.get("epoch"))?;
    let max_page = shared.config.limits.max_history_page;
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE.min(max_page),
        Some(value) => match value.parse::<usize>() {
            Ok(n) if n > 0 && n <= max_page => n,
            Ok(n) if n > max_page => {
                return Err(bad(
                    "limit",
                    format!("limit must be at most {max_page} (limits.max_history_page)"),
                ));
            }
            _ => return Err(bad("limit", "limit must be a positive integer")),
        },
    };
    Ok(Query {
        topic,
        since,
        limit,
    })
}

/// `since` (an offset) and `epoch`: a position (`since=41&epoch=e1`), the start of the current
/// run (`since=0`, no epoch or an empty one), or nothing (every kept push).
fn read_since(since: Option<&String>, epoch: Option<&String>) -> Result<Option<Since>, Refusal> {
    let epoch = epoch.filter(|e| !e.is_empty());
    let Some(since) = since else {
        return match epoch {
            None => Ok(None),
            Some(_) => Err(bad(
                "epoch",
                "epoch goes with since (since=<offset>&epoch=<epoch>)",
            )),
        };
    };
    let offset: u64 = since
        .parse()
        .map_err(|_| bad("since", "since must be an offset (an integer ≥ 0)"))?;
    match (offset, epoch) {
        (0, None) => Ok(Some(Since::Start)),
        (_, None) => Err(bad(
            "epoch",
            "since above 0 needs the epoch of that position (since=<offset>&epoch=<epoch>)",
        )),
        (offset, Some(epoch)) => {
            let epoch = Epoch::parse(epoch).map_err(|err| bad("epoch", err.to_string()))?;
            Ok(Some(Since::After(Position::new(offset, epoch))))
        }
    }
}

/// Reads the stream and answers with the page.
async fn answer(query: Query, shared: &Shared) -> Result<Response<Body>, Refusal> {
    let Query {
        topic,
        since,
        limit,
    } = query;
    if !shared.config.hub.history.enabled(topic.app()) {
        return Err(Refusal::NoHistory(topic.app().to_string()));
    }
    // The brokers bound their own reads; this bounds one that would not answer at all.
    let deadline = shared.config.broker.settings.publish_timeout;
    let read = tokio::time::timeout(deadline, shared.node.history(&topic, since.clone(), limit))
        .await
        .unwrap_or(Err(BrokerError::TimedOut(deadline)))
        .map_err(refusal_of)?;
    let page = page(&topic, since.as_ref(), &read)?;
    let json = serde_json::to_vec(&page).expect("a page serializes");
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A failed read's refusal, as `/presence` maps a broker's failure: the request was sent and
/// failed or went unanswered (`504`), or it could not be sent at all (`503`, retry later).
fn refusal_of(err: BrokerError) -> Refusal {
    if err.may_have_been_delivered() {
        Refusal::HistoryFailed(err.to_string())
    } else {
        Refusal::HistoryUnavailable(err.to_string())
    }
}

/// The answer's body, in the documented key order.
#[derive(Serialize)]
struct Page<'a> {
    app: &'a str,
    /// The stream's member (private apps), `-1` for a public app's stream.
    member_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    publications: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    offset: u64,
    /// Only when the push named another member than the stream's: a push to a public app may
    /// carry a member id, which its subscribers saw in the envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    member_id: Option<i64>,
    text: String,
}

/// The one key of the seed's envelope this answer needs.
#[derive(Deserialize)]
struct Envelope {
    text: String,
}

fn page<'a>(
    topic: &'a Topic,
    since: Option<&Since>,
    read: &'a HistoryRead,
) -> Result<Page<'a>, Refusal> {
    let member_id = topic.member().map_or(NO_MEMBER, MemberId::get);
    let publications = read
        .publications
        .iter()
        .map(|publication| entry(publication, member_id))
        .collect::<Result<_, _>>()?;
    Ok(Page {
        app: topic.app().as_str(),
        member_id,
        epoch: read.top.as_ref().map(|top| top.epoch.as_str()),
        offset: read.top.as_ref().map(|top| top.offset),
        first: read.first,
        recovered: since.map(|since| read.recovered(since)),
        publications,
    })
}

/// A kept push as the answer lists it. A push without a position, or whose envelope is not
/// one, means the history store broke its contract: a failure, never a silent omission.
fn entry(publication: &Publication, stream_member: i64) -> Result<Entry, Refusal> {
    let Some(position) = &publication.position else {
        return Err(Refusal::HistoryFailed(
            "the history returned a push without a position".to_owned(),
        ));
    };
    let envelope: Envelope = serde_json::from_slice(publication.frame.as_bytes())
        .map_err(|err| Refusal::HistoryFailed(format!("a kept push is not an envelope: {err}")))?;
    Ok(Entry {
        offset: position.offset,
        member_id: (publication.member_id != stream_member).then_some(publication.member_id),
        text: envelope.text,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gateway_core::PushMessage;

    fn read_since_of(since: Option<&str>, epoch: Option<&str>) -> Result<Option<Since>, String> {
        read_since(
            since.map(str::to_owned).as_ref(),
            epoch.map(str::to_owned).as_ref(),
        )
        .map_err(|refusal| match refusal {
            Refusal::BadHistoryQuery { parameter, .. } => parameter,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn since_and_epoch_make_a_position_the_start_or_nothing() {
        let e1 = Epoch::parse("e1").unwrap();
        assert_eq!(read_since_of(None, None), Ok(None));
        assert_eq!(read_since_of(Some("0"), None), Ok(Some(Since::Start)));
        assert_eq!(read_since_of(Some("0"), Some("")), Ok(Some(Since::Start)));
        assert_eq!(
            read_since_of(Some("41"), Some("e1")),
            Ok(Some(Since::After(Position::new(41, e1))))
        );
        assert_eq!(read_since_of(Some("41"), None), Err("epoch".to_owned()));
        assert_eq!(read_since_of(None, Some("e1")), Err("epoch".to_owned()));
        assert_eq!(
            read_since_of(Some("-1"), Some("e1")),
            Err("since".to_owned())
        );
        assert_eq!(read_since_of(Some("x"), None), Err("since".to_owned()));
        assert_eq!(
            read_since_of(Some("4"), Some("a b")),
            Err("epoch".to_owned())
        );
    }

    #[test]
    fn a_broker_failure_is_503_or_504_never_an_answer() {
        use std::time::Duration;
        let status = |err| refusal_of(err).status_and_text().0;
        assert_eq!(
            status(BrokerError::Unavailable("down".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(BrokerError::Config("keeps no history".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(BrokerError::Failed("ERR".into())),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            status(BrokerError::TimedOut(Duration::from_secs(2))),
            StatusCode::GATEWAY_TIMEOUT
        );
        let response = refusal_of(BrokerError::Unavailable("down".into())).response();
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["content-type"], "application/json");
    }

    #[test]
    fn a_page_lists_text_and_offset_and_a_foreign_member_only_when_there_is_one() {
        let epoch = Epoch::parse("e1").unwrap();
        let kept = |body: &str, offset: u64| {
            let mut publication =
                Publication::from(PushMessage::parse(body.as_bytes(), 128).unwrap());
            publication.position = Some(Position::new(offset, epoch.clone()));
            publication
        };
        let read = HistoryRead {
            top: Some(Position::new(8, epoch.clone())),
            first: Some(7),
            publications: vec![
                kept(r#"{"app":"match","text":"{\"goal\":1}"}"#, 7),
                kept(r#"{"app":"match","member_id":5,"text":"é\n"}"#, 8),
            ],
        };
        let topic = Topic::App(AppName::parse("match", 128).unwrap());
        let since = Since::After(Position::new(6, epoch.clone()));
        let full = page(&topic, Some(&since), &read).unwrap();
        assert_eq!(
            serde_json::to_string(&full).unwrap(),
            r#"{"app":"match","member_id":-1,"epoch":"e1","offset":8,"first":7,"recovered":true,"publications":[{"offset":7,"text":"{\"goal\":1}"},{"offset":8,"member_id":5,"text":"é\n"}]}"#
        );
        let nothing = HistoryRead::default();
        let empty = page(&topic, None, &nothing).unwrap();
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"app":"match","member_id":-1,"publications":[]}"#
        );
        let mut unpositioned = read.clone();
        unpositioned.publications[0].position = None;
        assert!(matches!(
            page(&topic, None, &unpositioned),
            Err(Refusal::HistoryFailed(_))
        ));
    }
}
