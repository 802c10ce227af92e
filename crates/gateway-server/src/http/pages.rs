//! The two pages embedded in the binary: the live dashboard (`GET /` on the stat listener) and
//! the demo client (`GET /` on the main listener, unless `demo_page = false`), and the
//! JavaScript client module the demo page imports (`GET /ws-gateway.js`, with the demo page).
//! Each is one file under `assets/`, compiled in: no CDN, no build step.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::Body;

const DASHBOARD: &str = include_str!("../../assets/dashboard.html");
const DEMO: &str = include_str!("../../assets/demo.html");
const CLIENT_MODULE: &str = include_str!("../../assets/ws-gateway.js");

/// `GET /` on the stat listener.
pub(crate) fn dashboard() -> Response<Body> {
    html(DASHBOARD)
}

/// `GET /` on the main listener.
pub(crate) fn demo() -> Response<Body> {
    html(DEMO)
}

/// `GET /ws-gateway.js` on the main listener: the JavaScript client, an ES module.
pub(crate) fn client_module() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(CLIENT_MODULE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    // Any site may import the client from its gateway: a module script from another origin
    // loads only with CORS. The file is public and the same for everyone.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn html(page: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The pages load nothing from elsewhere (the demo page imports /ws-gateway.js from its own
    // origin); say so, so a browser refuses anything injected.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:; img-src 'self' data:",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
