//! The layered configuration through the real binary: `check-config` (every key, secrets
//! redacted, each value's layer), the precedence defaults < file < `WS_GATEWAY_*` < flags,
//! refusals with exit code 2, host names, `--version`, and the example configurations.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::process::Output;

use common::binary::{BINARY, Gateway};
use common::guard;
use tokio::process::Command;

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    guard(
        "the binary's answer",
        Command::new(BINARY)
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The line of `key` in check-config's output, split into value and origin.
fn line<'a>(printed: &'a str, key: &str) -> (&'a str, &'a str) {
    let line = printed
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no line for {key}: {printed}"));
    let (value, origin) = line.split_once("  # ").unwrap();
    (value[key.len() + 3..].trim(), origin)
}

#[tokio::test]
async fn version_names_the_binary_and_its_version() {
    let output = run(&["--version"], &[]).await;
    assert!(output.status.success());
    assert_eq!(stdout(&output), "ws-gateway 0.1.0\n");
}

#[tokio::test]
async fn check_config_prints_every_key_with_its_layer_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:7000"
stat_listen = "127.0.0.1:7100"
push_api_keys = ["a-push-key-that-is-secret"]
[limits]
max_connections = 100
max_subscriptions = 10
[timeouts]
auth_ms = "5s"
[auth]
kind = "static"
[auth.tokens]
123456 = "654321"
[broker]
kind = "redis"
url = "redis://:hunter2@127.0.0.1:6379/"
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let env = [
        ("WS_GATEWAY_LIMITS__MAX_CONNECTIONS", "200"),
        ("WS_GATEWAY_LISTEN", "127.0.0.1:7001"),
        ("WS_GATEWAY_AUTH__TOKENS__777", "0777"),
    ];
    let output = run(
        &[
            "check-config",
            "--config",
            path,
            "--listen",
            "127.0.0.1:7002",
        ],
        &env,
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let from_file = format!("file {path}");

    assert_eq!(
        line(&printed, "listen"),
        ("\"127.0.0.1:7002\"", "flag --listen")
    );
    assert_eq!(
        line(&printed, "limits.max_connections"),
        ("200", "env WS_GATEWAY_LIMITS__MAX_CONNECTIONS")
    );
    assert_eq!(
        line(&printed, "limits.max_subscriptions"),
        ("10", from_file.as_str())
    );
    assert_eq!(
        line(&printed, "timeouts.auth_ms"),
        ("\"5s\"", from_file.as_str())
    );
    assert_eq!(
        line(&printed, "limits.max_message_bytes"),
        ("4096", "default")
    );
    assert_eq!(
        line(&printed, "auth.tokens.777"),
        ("\"<redacted>\"", "env WS_GATEWAY_AUTH__TOKENS__777")
    );
    assert_eq!(
        line(&printed, "push_api_keys"),
        ("[\"<redacted>\"]", from_file.as_str())
    );
    assert!(
        line(&printed, "broker.url")
            .0
            .contains("<redacted>@127.0.0.1")
    );
    for secret in ["654321", "0777", "a-push-key-that-is-secret", "hunter2"] {
        assert!(!printed.contains(secret), "{secret} leaked: {printed}");
    }
    // Every documented section is there.
    for key in [
        "stat_listen",
        "private_apps",
        "push_allow_from",
        "demo_page",
        "timeouts.idle_ms",
        "limits.fd_reserve",
        "broker.prefix",
        "memory.trim",
        "memory.trim_interval_ms",
        "memory.trim_min_drop",
    ] {
        line(&printed, key);
    }
}

#[tokio::test]
async fn check_config_refuses_a_bad_file_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\n[limits]\nmax_connections = \n",
    )
    .unwrap();
    let output = run(&["check-config", "--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(error.contains("broken.toml"), "{error}");
    assert!(error.contains("line 3"), "{error}");
    assert!(stdout(&output).is_empty());

    std::fs::write(&file, "[limits]\nmax_connections = 0\n").unwrap();
    let output = run(&["check-config", "--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(
            "config file `{}`: key `limits.max_connections`: must be greater than 0"
                .replace("{}", file.to_str().unwrap())
                .as_str()
        ),
        "{}",
        stderr(&output)
    );
}

/// A secret given with the wrong shape is refused without being printed: serde quotes the value
/// it refused, and the message goes to the terminal (and the journal on SIGHUP).
#[tokio::test]
async fn an_error_about_a_secret_never_prints_it() {
    const SECRET: &str = "do-not-print-me-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    for (text, env) in [
        (format!("push_api_keys = \"{SECRET}\"\n"), None),
        (
            format!("[auth]\nkind = \"hmac\"\nsecrets = \"{SECRET}\"\n"),
            None,
        ),
        (String::new(), Some(("WS_GATEWAY_PUSH_API_KEYS", SECRET))),
    ] {
        std::fs::write(&file, text).unwrap();
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let output = run(&["check-config", "--config", file.to_str().unwrap()], &env).await;
        assert_eq!(output.status.code(), Some(2));
        let error = stderr(&output);
        assert!(error.contains("expected a sequence"), "{error}");
        assert!(error.contains("<redacted>"), "{error}");
        assert!(!error.contains(SECRET), "{error}");
    }
}

#[tokio::test]
async fn environment_errors_name_the_variable() {
    let unknown = run(
        &["check-config"],
        &[("WS_GATEWAY_LIMITS__MAX_CONECTIONS", "5")],
    )
    .await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).starts_with(
            "error: environment variable `WS_GATEWAY_LIMITS__MAX_CONECTIONS`: key \
             `limits.max_conections`: unknown key"
        ),
        "{}",
        stderr(&unknown)
    );
    let invalid = run(&["check-config"], &[("WS_GATEWAY_TIMEOUTS__IDLE_MS", "0s")]).await;
    assert_eq!(invalid.status.code(), Some(2));
    assert!(
        stderr(&invalid).contains(
            "environment variable `WS_GATEWAY_TIMEOUTS__IDLE_MS`: key `timeouts.idle_ms`: must be"
        ),
        "{}",
        stderr(&invalid)
    );
    // The binary refuses to start on the same error.
    let start = run(&["--listen", "127.0.0.1:0"], &[("WS_GATEWAY_NOPE", "1")]).await;
    assert_eq!(start.status.code(), Some(2));
    assert!(
        stderr(&start).contains("WS_GATEWAY_NOPE"),
        "{}",
        stderr(&start)
    );
}

#[tokio::test]
async fn ws_gateway_config_names_the_file_and_log_format_is_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "[limits]\nmax_subscriptions = 7\n").unwrap();
    let output = run(
        &["check-config"],
        &[
            ("WS_GATEWAY_CONFIG", file.to_str().unwrap()),
            ("WS_GATEWAY_LOG_FORMAT", "json"),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert_eq!(line(&printed, "limits.max_subscriptions").0, "7");
    assert!(!printed.contains("config ="), "{printed}");
    assert!(!printed.contains("log_format"), "{printed}");
}

#[tokio::test]
async fn listeners_sharing_a_port_are_refused_at_load() {
    for (listen, stat) in [
        ("0.0.0.0:7300", "127.0.0.1:7300"),
        ("127.0.0.1:7300", "127.0.0.1:7300"),
        ("127.0.0.1:7300", "[::]:7300"),
    ] {
        let output = run(
            &["check-config", "--listen", listen, "--stat-listen", stat],
            &[],
        )
        .await;
        assert_eq!(output.status.code(), Some(2), "{listen} {stat}");
        assert!(
            stderr(&output).contains("flag `--stat-listen`: key `stat_listen`:")
                && stderr(&output).contains("would share port 7300"),
            "{}",
            stderr(&output)
        );
    }
    let distinct = run(
        &[
            "check-config",
            "--listen",
            "127.0.0.1:7300",
            "--stat-listen",
            "127.0.0.2:7300",
        ],
        &[],
    )
    .await;
    assert!(distinct.status.success(), "{}", stderr(&distinct));
}

#[tokio::test]
async fn a_host_name_is_resolved_and_served() {
    let mut gateway = Gateway::start(&["--listen", "localhost:0", "--stat-listen", "localhost:0"]);
    let (addr, stat) = gateway.addresses().await;
    assert!(addr.ip().is_loopback(), "{addr}");
    assert!(stat.ip().is_loopback(), "{stat}");
    let (status, _, _) = common::http(stat, "GET", "/stat", "").await;
    assert_eq!(status, 200);
    let (status, _) = gateway.terminate().await;
    assert!(status.success());
}

/// `[history]` through every layer: its defaults, the file (overrides by pattern), the
/// environment over the file, and refusals naming the key and the layer.
#[tokio::test]
async fn history_keys_come_from_every_layer_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        r#"
[history]
size = 50
[history.apps."chat-*"]
size = 500
ttl_s = 60
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let output = run(
        &["check-config", "--config", path],
        &[("WS_GATEWAY_HISTORY__TTL_S", "90")],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let from_file = format!("file {path}");
    assert_eq!(line(&printed, "history.size"), ("50", from_file.as_str()));
    assert_eq!(
        line(&printed, "history.ttl_s"),
        ("90", "env WS_GATEWAY_HISTORY__TTL_S")
    );
    assert_eq!(line(&printed, "history.max_bytes"), ("67108864", "default"));
    assert_eq!(
        line(&printed, "history.apps.chat-*.size"),
        ("500", from_file.as_str())
    );
    assert_eq!(
        line(&printed, "limits.max_history_page"),
        ("1000", "default")
    );

    let too_big = run(
        &["check-config", "--config", path],
        &[("WS_GATEWAY_HISTORY__SIZE", "100001")],
    )
    .await;
    assert_eq!(too_big.status.code(), Some(2));
    assert!(
        stderr(&too_big).starts_with(
            "error: environment variable `WS_GATEWAY_HISTORY__SIZE`: key `history.size`: at most 100000"
        ),
        "{}",
        stderr(&too_big)
    );
    std::fs::write(&file, "[history.apps.\"chat-*\"]\nttl_s = 0\n").unwrap();
    let no_ttl = run(&["check-config", "--config", path], &[]).await;
    assert_eq!(no_ttl.status.code(), Some(2));
    assert!(
        stderr(&no_ttl).contains(&format!(
            "config file `{path}`: key `history.apps.chat-*.ttl_s`: must be at least 1"
        )),
        "{}",
        stderr(&no_ttl)
    );
}

/// Every example configuration loads, so that none of them rots.
#[test]
fn every_example_configuration_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            gateway_server::Layers::default()
                .file(&path)
                .load()
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            loaded.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    loaded.sort();
    assert_eq!(
        loaded,
        ["anonymous", "cluster", "hmac", "http", "jwt", "static"],
        "examples/config/ changed: keep this list and the README in step"
    );
}
