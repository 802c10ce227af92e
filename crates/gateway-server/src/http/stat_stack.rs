//! The stat listener's service as a tower stack: the layers bound what its answers may cost,
//! so that a runaway scraper or a stalled broker cannot pile up work behind the dashboard.
//!
//! Outside in: `TraceLayer` (a `debug` span and line per request), then, for every path but
//! the health probes (`/healthz`, `/readyz`, which are cheap and must always answer), the
//! refusals the layers below produce turned into answers, `LoadShed` (a request beyond the limit is refused
//! at once rather than queued), a concurrency limit shared by every connection of the listener
//! (`limits.max_stat_requests`), and a `Timeout` on producing the answer's head
//! (`timeouts.stat_request_ms`; a long `/stat` body that has started is not cut).

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::timeout::error::Elapsed;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use super::{Refusal, admin::ServiceBody, stat_service};
use crate::shared::Shared;

/// The stat listener's service for one connection; the concurrency limit is the listener's.
/// `/healthz` and `/readyz` bypass the limit and the timeout: a load balancer's probe must not
/// read "not ready" because dashboards or scrapers are busy.
pub(crate) fn stat_stack(
    shared: Arc<Shared>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<
        impl hyper::body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static,
    >,
    Error = BoxError,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let timeout = shared.config.timeouts.stat_request;
    let slots = shared.stat_requests.clone();
    // Boxed: one allocation per stat request, and it spares the compiler a higher-ranked
    // lifetime puzzle in the routing closure below.
    let limited = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_result(move |result| answer_refusals(result, timeout))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(slots))
            .timeout(timeout)
            .service_fn({
                let shared = shared.clone();
                move |req| stat_service(req, shared.clone())
            }),
    );
    ServiceBuilder::new()
        // Refusals are answers here, and `/readyz` answers 503 by design: not errors to log.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .service_fn(move |req: Request<Incoming>| {
            let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
            let (shared, limited) = (shared.clone(), limited.clone());
            async move {
                if probe {
                    let Ok(response) = stat_service(req, shared).await;
                    Ok(response)
                } else {
                    limited.oneshot(req).await
                }
            }
        })
}

/// A shed or timed-out request gets its documented `503` answer instead of a dropped
/// connection. (The error type stays `BoxError` because tower converts readiness errors with
/// `From`; the layers below have none.)
fn answer_refusals(
    result: Result<Response<ServiceBody>, BoxError>,
    timeout: std::time::Duration,
) -> Result<Response<ServiceBody>, BoxError> {
    let refusal = match result {
        Ok(response) => return Ok(response),
        Err(err) if err.is::<Overloaded>() => Refusal::StatOverloaded,
        Err(err) if err.is::<Elapsed>() => Refusal::StatTimeout(timeout),
        // The inner service is infallible and the layers fail only in the two ways above.
        Err(_) => Refusal::StatTimeout(timeout),
    };
    Ok(refusal.response().map(Either::Left))
}
