//! The admin pages, served on the stat listener: `GET /stat`, streamed a page at a time.
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

/// The answer to `GET /stat`: 200, `text/plain; charset=utf-8`, the counts as a [`StatBody`].
pub(crate) fn response(shared: Arc<Shared>) -> Response<StatBody> {
    let mut response = Response::new(StatBody::new(shared));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to `GET /stat?scope=cluster`: the seed's format, with the counts of every live
/// node merged (public apps add up, a private app counts distinct members). One node alone
/// (the local broker) answers with its own counts.
pub(crate) async fn cluster_response(shared: &Shared) -> Result<Response<super::Body>, Refusal> {
    let text = if shared.node.broker().kind() == "local" {
        shared.node.stat().to_string()
    } else {
        let counts = shared
            .node
            .cluster_stat()
            .await
            .map_err(|err| Refusal::ClusterUnavailable(err.to_string()))?;
        let mut text = String::new();
        for (app, count) in counts {
            text.push_str(&format!("{app} {count}\n"));
        }
        text
    };
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
    fn new(shared: Arc<Shared>) -> StatBody {
        let page = next_page(&shared.node, None);
        let resume_after = page.resume_after().cloned();
        StatBody {
            shared,
            first: Some(render(&page)),
            resume_after,
            yield_first: false,
        }
    }
}

fn next_page(node: &Node, after: Option<&AppName>) -> StatPage {
    node.stat_page(after, Node::STAT_PAGE_APPS)
}

/// Renders outside the lock: only the page's refcounted names were taken under it.
fn render(page: &StatPage) -> Bytes {
    Bytes::from(page.to_string())
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
            if !page.apps.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(render(&page)))));
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
