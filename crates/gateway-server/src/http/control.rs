//! `POST /disconnect` and `GET /presence`: a backend cuts a member off, or asks who is online.
//!
//! Both are protected like `/push` (a push key, or an allowed network), and both may ask every
//! node of the cluster ([`Node::ask_cluster`]), so they run behind a tower stack that bounds
//! how many are answered at once: `LoadShed` over a concurrency limit
//! (`limits.max_control_requests`), a request beyond it answered `503` at once. A node that does
//! not answer within `timeouts.cluster_query_ms` turns the answer into a `504` that lists it:
//! what it holds is unknown, and the caller should know.
//!
//! [`Node::ask_cluster`]: crate::node::Node

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway_core::{AppName, MemberId};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};
use tracing::info;

use super::{Body, Refusal, push::push_allowed};
use crate::node::control::{Answer, Gathered, Query};
use crate::shared::Shared;

/// The members a page lists when the request does not say (`limit`).
const DEFAULT_PAGE: usize = 100;

/// Answers `/disconnect` or `/presence` (the caller routed by path).
pub(super) async fn serve(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
) -> Result<Response<Body>, Refusal> {
    let (path_is_disconnect, method) = (req.uri().path() == "/disconnect", req.method().clone());
    match (path_is_disconnect, &method) {
        (true, &Method::POST) | (false, &Method::GET) => {}
        (true, _) => return Err(Refusal::MethodNotAllowed("POST")),
        (false, _) => return Err(Refusal::MethodNotAllowed("GET")),
    }
    push_allowed(&req, &shared.live(), peer)?;
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    // The request is read and checked before it takes a slot: a slow body holds none.
    let query = if path_is_disconnect {
        read_disconnect(req, &shared).await?
    } else {
        read_presence(&req, &shared)?
    };
    let slots = shared.control_requests.clone();
    let answered = ServiceBuilder::new()
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(slots))
        .service_fn(move |query: Query| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(answer(query, &shared, peer).await) }
        })
        .oneshot(query)
        .await;
    match answered {
        Ok(answer) => answer,
        // The only error the stack makes: shed at the concurrency limit.
        Err(_) => Err(Refusal::ControlOverloaded),
    }
}

#[derive(Deserialize)]
struct DisconnectRequest {
    member_id: i64,
    #[serde(default, deserialize_with = "string_if_present")]
    app: Option<String>,
}

fn string_if_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// `POST /disconnect` `{"member_id":7}` or `{"member_id":7,"app":"im"}`, read within the push
/// body's bounds and checked.
async fn read_disconnect(req: Request<Incoming>, shared: &Shared) -> Result<Query, Refusal> {
    let (max, body_timeout) = {
        let live = shared.live();
        (
            live.settings.max_push_body_bytes,
            live.settings.push_body_timeout,
        )
    };
    let body = match tokio::time::timeout(
        body_timeout,
        Limited::new(req.into_body(), max).collect(),
    )
    .await
    {
        Err(_) => return Err(Refusal::PushBodyTimeout(body_timeout)),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal::BodyTooLarge(max));
        }
        Ok(Err(err)) => return Err(Refusal::BadBody(err.to_string())),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // serde would also take an array of the fields in order; the API is objects only.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(Refusal::BadControl(
            "the body must be a JSON object".to_owned(),
        ));
    }
    let request: DisconnectRequest = serde_json::from_slice(&body)
        .map_err(|err| Refusal::BadControl(format!("bad disconnect request: {err}")))?;
    let member = MemberId::new(request.member_id).ok_or_else(|| {
        Refusal::BadControl("member_id must be a positive integer (a member)".to_owned())
    })?;
    if let Some(app) = &request.app {
        AppName::parse(app, shared.config.hub.max_app_name_len)
            .map_err(|err| Refusal::BadControl(format!("bad app: {err}")))?;
    }
    Ok(Query::Disconnect {
        member_id: member.get(),
        app: request.app,
    })
}

/// `GET /presence?app=im[&limit=N][&cursor=C]` or `GET /presence?member_id=N`, checked.
fn read_presence(req: &Request<Incoming>, shared: &Shared) -> Result<Query, Refusal> {
    let params: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let bad = |why: &str| Refusal::BadQuery(why.to_owned());
    let positive = |key: &str| -> Result<Option<i64>, Refusal> {
        params
            .get(key)
            .map(|value| {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(&format!("{key} must be a positive integer")))
            })
            .transpose()
    };
    match (params.get("app"), positive("member_id")?) {
        (Some(app), None) => {
            let max_page = shared.config.limits.max_presence_page;
            let limit = match positive("limit")? {
                None => DEFAULT_PAGE.min(max_page),
                Some(n) if n as u64 <= max_page as u64 => n as usize,
                Some(_) => {
                    return Err(bad(&format!(
                        "limit must be at most {max_page} (limits.max_presence_page)"
                    )));
                }
            };
            let app = AppName::parse(app, shared.config.hub.max_app_name_len)
                .map_err(|err| bad(&format!("bad app: {err}")))?;
            Ok(Query::AppMembers {
                app: app.to_string(),
                after: positive("cursor")?,
                limit,
            })
        }
        (None, Some(member_id)) => Ok(Query::Member { member_id }),
        (Some(_), Some(_)) => Err(bad("presence takes app=<name> or member_id=<id>, not both")),
        (None, None) => Err(bad("presence needs app=<name> or member_id=<id>")),
    }
}

/// Asks the cluster `query` and answers with what every node said.
async fn answer(
    query: Query,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Response<Body>, Refusal> {
    let gathered = ask(shared, query.clone()).await?;
    let unanswered = &gathered.unanswered;
    match query {
        Query::Disconnect { member_id, app } => {
            let connections: usize = gathered
                .answers
                .iter()
                .map(|(_, answer)| match answer {
                    Answer::Disconnect { connections } => *connections,
                    _ => 0,
                })
                .sum();
            info!(
                %peer,
                member = member_id,
                app = app.as_deref().unwrap_or(""),
                connections,
                unanswered = unanswered.len(),
                "member disconnected by a backend"
            );
            let body = Disconnected {
                connections,
                unanswered,
            };
            Ok(json_answer(&body, unanswered))
        }
        Query::AppMembers { app, limit, .. } => {
            let (members, next) = merge_pages(&gathered, limit);
            let page = AppPresence {
                app: &app,
                members,
                next_cursor: next.map(|m| m.to_string()),
                unanswered,
            };
            Ok(json_answer(&page, unanswered))
        }
        Query::Member { member_id } => {
            let mut connections = 0;
            let mut apps = BTreeSet::new();
            for (_, answer) in &gathered.answers {
                if let Answer::Member {
                    connections: n,
                    apps: theirs,
                } = answer
                {
                    connections += n;
                    apps.extend(theirs.iter().cloned());
                }
            }
            let presence = MemberPresence {
                member_id,
                online: connections > 0,
                connections,
                apps,
                unanswered,
            };
            Ok(json_answer(&presence, unanswered))
        }
    }
}

/// The first `limit` members of every node's page, merged: each node listed its own first
/// `limit` after the cursor, so the cluster's first `limit` are among them.
fn merge_pages(gathered: &Gathered, limit: usize) -> (Vec<i64>, Option<i64>) {
    let mut all = BTreeSet::new();
    let mut more = false;
    for (_, answer) in &gathered.answers {
        if let Answer::AppMembers { members, more: m } = answer {
            all.extend(members.iter().copied());
            more |= m;
        }
    }
    more |= all.len() > limit;
    let page: Vec<i64> = all.into_iter().take(limit).collect();
    let next = if more { page.last().copied() } else { None };
    (page, next)
}

async fn ask(shared: &Shared, query: Query) -> Result<Gathered, Refusal> {
    shared
        .node
        .ask_cluster(query, shared.config.timeouts.cluster_query)
        .await
        .map_err(|err| {
            if err.may_have_been_delivered() {
                Refusal::ClusterOutcomeUnknown(err.to_string())
            } else {
                Refusal::ClusterUnavailable(err.to_string())
            }
        })
}

/// The answers, in the documented key order; `unanswered` only when a node was silent.
#[derive(Serialize)]
struct Disconnected<'a> {
    connections: usize,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unanswered: &'a [String],
}

#[derive(Serialize)]
struct AppPresence<'a> {
    app: &'a str,
    members: Vec<i64>,
    next_cursor: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unanswered: &'a [String],
}

#[derive(Serialize)]
struct MemberPresence<'a> {
    member_id: i64,
    online: bool,
    connections: usize,
    apps: BTreeSet<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unanswered: &'a [String],
}

/// `200` with `body`, or `504` when some node did not answer (`body` names them).
fn json_answer(body: &impl Serialize, unanswered: &[String]) -> Response<Body> {
    let status = if unanswered.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    let json = serde_json::to_vec(body).expect("answers serialize");
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
