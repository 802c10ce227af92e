//! `GET /api/overview`: the dashboard's one request, a small JSON document whatever the number
//! of apps or connections (the top apps, totals, close codes, the sampled history, the nodes).

use std::time::Duration;

use bytes::Bytes;
use gateway_core::CloseCode;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value, json};
use tracing::debug;

use super::Body;
use crate::metrics::series::{self, NodeSummary};
use crate::metrics::{self, top_apps};
use crate::shared::Shared;

/// Apps listed by the dashboard.
pub(crate) const TOP_APPS: usize = 20;

/// How long the overview waits for the broker's cluster view before it answers with the last
/// one it has.
const CLUSTER_WAIT: Duration = Duration::from_secs(1);

pub(crate) async fn overview(shared: &Shared) -> Response<Body> {
    let counters = &shared.counters;
    let not_ready = metrics::not_ready(shared);
    let broker = shared.node.broker();
    let apps = top_apps(&shared.node, TOP_APPS).await;
    let top: Vec<Value> = apps
        .top
        .iter()
        .map(|(app, count)| json!({"app": app.as_str(), "connections": count}))
        .collect();
    let closes: Map<String, Value> = CloseCode::ALL
        .iter()
        .filter_map(|code| {
            let count = counters.closes(*code);
            (count > 0).then(|| (code.code().to_string(), json!(count)))
        })
        .collect();
    let document = json!({
        "node_id": shared.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": counters.uptime().as_secs(),
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "broker": {"kind": broker.kind(), "state": broker.state().as_str()},
        "connections": counters.open_connections(),
        "handshakes": counters.open_handshakes(),
        "apps": {"total": apps.total, "top": top},
        "totals": {
            "connections_opened": counters.connections_opened(),
            "pushes_accepted": counters.pushes_accepted(),
            "pushes_refused": counters.push_refusals_total(),
            "deliveries": counters.deliveries(),
            "slow_consumer_closes": counters.closes(CloseCode::SlowConsumer),
            "auth_refused": counters.auths(crate::counters::AuthResult::Refused)
                + counters.auths(crate::counters::AuthResult::BackendError),
        },
        "closes": closes,
        "series": {
            "interval_s": series::INTERVAL.as_secs(),
            "samples": counters.series.samples(),
        },
        "nodes": nodes(shared).await,
    });
    json_response(StatusCode::OK, &document)
}

/// The cluster's nodes from the broker's reports (at most one read per sampling interval,
/// shared by every dashboard), or this node alone with the local broker or before any
/// report was read.
async fn nodes(shared: &Shared) -> Vec<NodeSummary> {
    let counters = &shared.counters;
    let alone = || {
        vec![NodeSummary {
            node_id: shared.node_id.clone(),
            connections: counters.open_connections(),
            is_self: true,
        }]
    };
    let broker = shared.node.broker();
    if broker.kind() == "local" {
        return alone();
    }
    if let Some(nodes) = counters.series.fresh_nodes() {
        return nodes;
    }
    match tokio::time::timeout(CLUSTER_WAIT, broker.cluster()).await {
        Ok(Ok(reports)) => {
            let nodes = series::summarize(reports, &shared.node_id);
            counters.series.set_nodes(nodes.clone());
            nodes
        }
        Ok(Err(err)) => {
            debug!(%err, "cannot read the cluster's nodes for the overview");
            counters.series.last_nodes().unwrap_or_else(alone)
        }
        Err(_) => counters.series.last_nodes().unwrap_or_else(alone),
    }
}

pub(crate) fn json_response(status: StatusCode, document: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
