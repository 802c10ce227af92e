//! The built `ws-gateway` binary itself: configuration file, flags, start-up log, a full
//! session, SIGTERM, and refusal of a bad configuration.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::time::Duration;

use common::binary::{BINARY, Gateway};
use common::*;
use tokio::process::Command;

#[tokio::test]
async fn the_binary_serves_the_protocol_from_a_config_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        r#"
listen = "127.0.0.1:0"
stat_listen = "127.0.0.1:1"   # overridden by --stat-listen below
private_apps = ["im", "dm"]
[auth]
kind = "static"
[auth.tokens]
123456 = "654321"
777 = "777secret"
"#,
    )
    .unwrap();
    let mut gateway = Gateway::start(&[
        "--config",
        config.to_str().unwrap(),
        "--stat-listen",
        "127.0.0.1:0",
    ]);
    let addr = gateway
        .wait_for_log("websocket and push listener on ")
        .await;
    let stat_addr = gateway.wait_for_log("stat listener on ").await;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let stat_addr: std::net::SocketAddr = stat_addr.parse().unwrap();

    let mut member = Client::connect(&format!("ws://{addr}/")).await;
    member
        .send(r#"{"member_id":777,"token":"777secret"}"#)
        .await;
    member.expect(&hello(777)).await;
    member.subscribe("dm").await;
    let mut stranger = Client::connect(&format!("ws://{addr}/")).await;
    stranger.send(r#"{"member_id":123456,"token":"bad"}"#).await;
    stranger.expect(&unauthorized()).await;
    stranger.send(r#"{"app":"dm"}"#).await;
    stranger.expect(&forbidden("dm")).await;

    let (status, _, _) = http(
        addr,
        "POST",
        "/push",
        r#"{"app":"dm","member_id":777,"text":"hi"}"#,
    )
    .await;
    assert_eq!(status, 202);
    member
        .expect(r#"{"app":"dm","member_id":777,"text":"hi"}"#)
        .await;
    let (status, _, stat) = http(stat_addr, "GET", "/stat", "").await;
    assert_eq!(status, 200);
    assert_eq!(stat, "dm 1\n");

    let closing: Vec<_> = [member, stranger]
        .into_iter()
        .map(|mut client| tokio::spawn(async move { client.expect_close(1001).await }))
        .collect();
    let (status, log) = gateway.terminate().await;
    assert!(status.success(), "exit status {status}");
    for client in closing {
        guard("a close frame", client).await.unwrap();
    }
    let log = log.join("\n");
    assert!(log.contains("auth: static tokens (2 members)"), "{log}");
    assert!(log.contains(r#"private apps: ["dm", "im"]"#), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    for secret in ["654321", "777secret"] {
        assert!(!log.contains(secret), "a token leaked into the log: {log}");
    }
}

#[tokio::test]
async fn without_auth_config_the_binary_says_it_is_anonymous_only() {
    let mut gateway = Gateway::start(&["--listen", "127.0.0.1:0", "--stat-listen", "127.0.0.1:0"]);
    let warning = gateway.wait_for_log("auth: ").await;
    assert!(warning.starts_with("anonymous only"), "{warning}");
    let addr = gateway
        .wait_for_log("websocket and push listener on ")
        .await;
    let mut client = Client::connect(&format!("ws://{addr}/")).await;
    client
        .send(r#"{"member_id":123456,"token":"654321"}"#)
        .await;
    client.expect(&unauthorized()).await;
    let (status, _) = gateway.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_bad_config_file_is_refused_with_its_name_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[auth]\nkind = \"static\"\n[auth.tokens]\nbob = \"x\"\n",
    )
    .unwrap();
    let output = guard(
        "the refusal",
        Command::new(BINARY)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.toml"), "{stderr}");
    assert!(stderr.contains("key `auth.tokens.bob`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_refused() {
    let output = Command::new(BINARY)
        .args(["--config", "/nonexistent/gateway.toml"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/gateway.toml"));
}

#[tokio::test]
async fn an_address_in_use_is_refused_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(BINARY)
            .args(["--listen", &addr, "--stat-listen", "127.0.0.1:0"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches(&format!("cannot listen on {addr}")).count(),
        1,
        "the error once: {stderr}"
    );
}

#[tokio::test]
async fn a_wildcard_listener_is_announced_with_addresses_clients_can_use() {
    let mut gateway = Gateway::start(&["--listen", "0.0.0.0:0", "--stat-listen", "127.0.0.1:0"]);
    let addr: std::net::SocketAddr = gateway
        .wait_for_log("websocket and push listener on ")
        .await
        .parse()
        .unwrap();
    let urls = gateway.wait_for_log("clients connect to ").await;
    let loopback = format!("ws://127.0.0.1:{}/", addr.port());
    assert!(urls.starts_with(&loopback), "{urls}");
    assert!(!urls.contains("0.0.0.0"), "{urls}");
    let mut client = Client::connect(&loopback).await;
    client.send(r#"{"member_id":-1,"token":""}"#).await;
    client.expect(&hello_stranger()).await;
    drop(client);
    let (status, _) = gateway.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn the_token_subcommand_mints_what_the_gateway_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hmac.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nstat_listen = \"127.0.0.1:0\"\n[auth]\nkind = \"hmac\"\n\
         secrets = [\"the-current-secret-123\", \"the-previous-secret-456\"]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let minted = Command::new(BINARY)
        .args([
            "token", "--member", "4242", "--ttl", "15m", "--config", config,
        ])
        .output()
        .await
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("v1.4242."), "{token}");

    let mut gateway = Gateway::start(&["--config", config]);
    let addr = gateway
        .wait_for_log("websocket and push listener on ")
        .await;
    let mut client = Client::connect(&format!("ws://{addr}/")).await;
    client
        .send(&format!(r#"{{"member_id":4242,"token":"{token}"}}"#))
        .await;
    client.expect(&hello(4242)).await;
    let mut other = Client::connect(&format!("ws://{addr}/")).await;
    other
        .send(&format!(r#"{{"member_id":4243,"token":"{token}"}}"#))
        .await;
    other.expect(&unauthorized()).await;
    drop((client, other));
    let (status, log) = gateway.terminate().await;
    assert!(status.success());
    assert!(!log.join("\n").contains("the-current-secret"));

    // Without an hmac configuration the subcommand refuses.
    let static_config = dir.path().join("static.toml");
    std::fs::write(&static_config, "[auth]\nkind = \"anonymous\"\n").unwrap();
    let refused = Command::new(BINARY)
        .args([
            "token",
            "--member",
            "1",
            "--config",
            static_config.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs kind = \"hmac\""));
}
