//! The admin pages, served on the stat listener: `GET /stat`, streamed a page at a time (as
//! the seed's text, or as JSON with `?format=json` or `Accept: application/json`), and
//! `GET /readyz`.
//!
//! With a million apps the answer is ~150 MB. Built under the node's lock in one piece,
//! it stalled every push and subscription for about a second and held the whole text in
//! memory. Instead the body takes [`Node::STAT_PAGE_APPS`] counts at a time, each page
//! under the lock for O(page) work, and renders it outside the lock; hyper asks for the next
//! page only once the previous one is on its way to the socket, so a slow reader holds one
//! page, not the whole answer.
//!
//! The bytes are the seed's (`"<app> <count>\n"` per app, sorted by name). An answer of one
//! page goes out with `Content-Length`, exactly as before; a longer one is chunked. Pages are
//! each consistent, the answer as a whole is not an atomic snapshot.
//!
//! [`Node::STAT_PAGE_APPS`]: crate::Node::STAT_PAGE_APPS

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use gateway_core::{AppName, StatPage};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::Refusal;
use crate::node::Node;
use crate::shared::Shared;

/// The stat listener's bodies: a refusal, or the counts.
pub(crate) type ServiceBody = http_body_util::Either<super::Body, StatBody>;

/// How `/stat` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The seed's: `"<app> <count>\n"` per app.
    Text,
    /// `{"node_id":…,"version":…,"uptime_s":…,"connections":…,"apps":{"<app>":<count>,…},
    /// "subscriptions":<sum of the counts>}`.
    Json,
}

/// The answer to `GET /stat`: 200, the counts as a [`StatBody`] in `format`.
pub(crate) fn response(shared: Arc<Shared>, format: Format) -> Response<StatBody> {
    let mut response = Response::new(StatBody::new(shared, format));
    *response.status_mut() = StatusCode::OK;
    let content_type = match format {
        Format::Text => "text/plain; charset=utf-8",
        Format::Json => "application/json",
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The JSON document's head, up to the opening of `apps`.
fn json_head(shared: &Shared) -> String {
    let head = serde_json::json!({
        "node_id": shared.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": shared.counters.uptime().as_secs(),
        "connections": shared.counters.open_connections(),
    })
    .to_string();
    // `{…}` → `{…,"apps":{`: the apps follow a page at a time.
    format!("{},\"apps\":{{", &head[..head.len() - 1])
}

/// Appends `"app":count` pairs, a comma before each but the document's first.
fn json_apps<'a>(
    out: &mut String,
    apps: impl IntoIterator<Item = (&'a str, u64)>,
    sum: &mut u64,
    first: &mut bool,
) {
    for (app, count) in apps {
        if !std::mem::take(first) {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(app).to_string());
        out.push(':');
        out.push_str(&count.to_string());
        *sum += count;
    }
}

fn json_tail(out: &mut String, sum: u64) {
    out.push_str(&format!("}},\"subscriptions\":{sum}}}"));
}

/// The answer to `GET /stat?scope=cluster`: the seed's format, with the counts of every live
/// node merged (public apps add up, a private app counts distinct members). One node alone
/// (the local broker) answers with its own counts.
pub(crate) async fn cluster_response(
    shared: &Shared,
    format: Format,
) -> Result<Response<super::Body>, Refusal> {
    let counts: Vec<(String, u64)> = if shared.node.broker().kind() == "local" {
        let stat = shared.node.stat();
        stat.apps
            .into_iter()
            .map(|(app, count)| (app.to_string(), count as u64))
            .collect()
    } else {
        shared
            .node
            .cluster_stat()
            .await
            .map_err(|err| Refusal::ClusterUnavailable(err.to_string()))?
    };
    if format == Format::Json {
        let mut text = json_head(shared);
        let (mut sum, mut first) = (0, true);
        let apps = counts.iter().map(|(app, count)| (app.as_str(), *count));
        json_apps(&mut text, apps, &mut sum, &mut first);
        json_tail(&mut text, sum);
        let mut response = super::text_response(StatusCode::OK, text);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let mut text = String::new();
    for (app, count) in counts {
        text.push_str(&format!("{app} {count}\n"));
    }
    Ok(super::text_response(StatusCode::OK, text))
}

/// `GET /readyz`: 200 `ready` when the listeners are up, the broker (if any) is connected and
/// the server is not shutting down; else 503 with each reason on a line of its own.
pub(crate) fn readiness(shared: &Shared) -> Response<super::Body> {
    let reasons = crate::metrics::not_ready(shared);
    if reasons.is_empty() {
        return super::text_response(StatusCode::OK, "ready\n");
    }
    let mut text = reasons.join("\n");
    text.push('\n');
    super::text_response(StatusCode::SERVICE_UNAVAILABLE, text)
}

/// The counts of `/stat`, read from the hub a page at a time as hyper polls for them.
pub(crate) struct StatBody {
    shared: Arc<Shared>,
    format: Format,
    /// JSON: whether the head is written, the counts so far (the document's
    /// `subscriptions`), and whether no app has been written yet (no comma before the next).
    head_written: bool,
    sum: u64,
    none_yet: bool,
    /// The first page, read when the response was made, so that a small answer's length is
    /// known up front; `None` once sent.
    first: Option<Bytes>,
    /// Where the next page starts; `None` when the last page has been read.
    resume_after: Option<AppName>,
    /// Set after each page read from the hub: the next poll yields to the runtime first.
    yield_first: bool,
}

impl std::fmt::Debug for StatBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatBody")
            .field("first", &self.first.as_ref().map(Bytes::len))
            .field("resume_after", &self.resume_after)
            .finish_non_exhaustive()
    }
}

impl StatBody {
    fn new(shared: Arc<Shared>, format: Format) -> StatBody {
        let page = next_page(&shared.node, None);
        let resume_after = page.resume_after().cloned();
        let mut body = StatBody {
            shared,
            format,
            head_written: false,
            sum: 0,
            none_yet: true,
            first: None,
            resume_after,
            yield_first: false,
        };
        body.first = Some(body.render(&page));
        body
    }

    /// Renders outside the lock: only the page's refcounted names were taken under it. The
    /// JSON document's head comes with the first page, its tail with the last.
    fn render(&mut self, page: &StatPage) -> Bytes {
        match self.format {
            Format::Text => Bytes::from(page.to_string()),
            Format::Json => {
                let mut out = String::new();
                if !std::mem::replace(&mut self.head_written, true) {
                    out = json_head(&self.shared);
                }
                let apps = page
                    .apps
                    .iter()
                    .map(|(app, count)| (app.as_str(), *count as u64));
                json_apps(&mut out, apps, &mut self.sum, &mut self.none_yet);
                if page.resume_after().is_none() {
                    json_tail(&mut out, self.sum);
                }
                Bytes::from(out)
            }
        }
    }
}

fn next_page(node: &Node, after: Option<&AppName>) -> StatPage {
    node.stat_page(after, Node::STAT_PAGE_APPS)
}

impl Body for StatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take().filter(|page| !page.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        // To a fast reader hyper would pull page after page in one poll of this task (each
        // page ~0.1 ms of work), for as long as the socket takes them: 100+ ms during which
        // the tasks queued behind it on this worker (pushes among them) wait. Yielding after
        // every page puts them first; hyper flushes what it has meanwhile.
        if std::mem::take(&mut this.yield_first) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // The lock is taken for one page, never across polls: pushes and subscriptions get in
        // between any two pages.
        while let Some(after) = this.resume_after.take() {
            let page = next_page(&this.shared.node, Some(&after));
            this.resume_after = page.resume_after().cloned();
            this.yield_first = true;
            // An empty last page still carries the JSON document's tail.
            let data = this.render(&page);
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.first.as_ref().is_none_or(Bytes::is_empty) && self.resume_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.first, &self.resume_after) {
            // One page: its length is the answer's (hyper sends it as `Content-Length`).
            (first, None) => SizeHint::with_exact(first.as_ref().map_or(0, |b| b.len() as u64)),
            (first, Some(_)) => {
                let mut hint = SizeHint::new();
                hint.set_lower(first.as_ref().map_or(0, |b| b.len() as u64));
                hint
            }
        }
    }
}
