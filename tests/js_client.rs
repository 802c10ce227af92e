//! The JavaScript client, `ws-gateway.js`: how the gateway serves it (`GET /ws-gateway.js`, with
//! the demo page), and its own tests, `tests/js/*.test.mjs`, run with Node's built-in test
//! runner (`node --test`, no npm package) against this build's binary. Without Node.js the test
//! fails saying so, never skips.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::path::Path;
use std::process::Command;

use common::{TestServer, http};
use gateway_server::ServerConfig;
use hyper::StatusCode;

const INSTALL: &str = "run ./test.sh: it installs Node.js (20 or newer)";

#[tokio::test]
async fn the_client_module_is_served_beside_the_demo_page() {
    let server = TestServer::start().await;
    let (status, headers, body) = http(server.addr, "GET", "/ws-gateway.js", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(
        body,
        include_str!("../crates/gateway-server/assets/ws-gateway.js")
    );
    let (status, headers, body) = http(server.addr, "HEAD", "/ws-gateway.js", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    let (status, headers, _) = http(server.addr, "POST", "/ws-gateway.js", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");

    // The demo page imports it from its own origin: its policy allows that and nothing else.
    let (_, headers, _) = http(server.addr, "GET", "/", "").await;
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self' 'unsafe-inline';"),
        "{policy}"
    );
}

#[tokio::test]
async fn without_the_demo_page_the_client_module_is_not_found_either() {
    let config = ServerConfig {
        demo_page: false,
        ..ServerConfig::default()
    };
    let server = TestServer::with_config(config).await;
    for path in ["/", "/ws-gateway.js"] {
        let (status, _, body) = http(server.addr, "GET", path, "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "not found\n")
        );
    }
}

#[test]
fn the_javascript_client_passes_its_node_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests in {}", dir.display());

    // Node 20 has a global WebSocket only behind a flag; 22 and later have it by default.
    let has_websocket = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"))
        .success();
    let mut node = Command::new("node");
    if !has_websocket {
        node.arg("--experimental-websocket");
    }
    let output = node
        .args(["--test", "--test-reporter=spec"])
        .args(&files)
        .current_dir(&dir)
        // Not a WS_GATEWAY_* name: the gateway would read it as configuration and refuse it.
        .env("GATEWAY_BINARY", env!("CARGO_BIN_EXE_ws-gateway"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"));
    // The runner's report (one line per test, the gateway's log on failure), shown by cargo
    // when this test fails or with --nocapture.
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the JavaScript client's tests failed ({}); their report is above",
        output.status
    );
}
