//! The two pages embedded in the binary: the live dashboard (`GET /` on the stat listener) and
//! the demo client (`GET /` on the main listener, unless `demo_page = false`). Each is one
//! self-contained HTML file under `assets/`, compiled in: no CDN, no build step.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::Body;

const DASHBOARD: &str = include_str!("../../assets/dashboard.html");
const DEMO: &str = include_str!("../../assets/demo.html");

/// `GET /` on the stat listener.
pub(crate) fn dashboard() -> Response<Body> {
    html(DASHBOARD)
}

/// `GET /` on the main listener.
pub(crate) fn demo() -> Response<Body> {
    html(DEMO)
}

fn html(page: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The pages load nothing from elsewhere; say so, so a browser refuses anything injected.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:; img-src 'self' data:",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
