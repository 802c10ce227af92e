//! The demo page and the live dashboard in a real browser: runs `tests/browser/run.mjs`
//! (Node.js, npm's `playwright-core`, Debian's headless chromium) against this build's binary
//! and passes when it does. `./test.sh` installs what it needs; without it this test fails
//! saying so, never skips.

use std::path::Path;
use std::process::Command;

const INSTALL: &str = "run ./test.sh: it installs chromium and the npm packages";

#[test]
fn demo_page_and_dashboard_work_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "no chromium at {chromium}: {INSTALL}"
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "no {}: {INSTALL}",
        dir.join("node_modules/playwright-core").display()
    );

    let output = Command::new("node")
        .arg("run.mjs")
        .arg(env!("CARGO_BIN_EXE_ws-gateway"))
        .current_dir(&dir)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"));
    // The runner's report (one line per scenario, the gateway's log on failure), shown by
    // cargo when this test fails or with --nocapture.
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the browser tests failed ({}); their report is above, screenshots are in target/screenshots/",
        output.status
    );
}
