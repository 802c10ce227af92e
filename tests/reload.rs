//! SIGHUP against the real binary: what can change without dropping a connection is put in
//! force, a configuration that does not load leaves the running one alone, and a key that
//! needs a restart is named.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::path::Path;

use common::binary::Gateway;
use common::*;
use gateway_auth::HmacTokens;
use gateway_core::MemberId;

const OLD_SECRET: &str = "the-old-secret-of-32-bytes-length";
const NEW_SECRET: &str = "the-new-secret-of-32-bytes-length";

fn hmac_config(listen: &str, secret: &str) -> String {
    format!(
        "listen = \"{listen}\"\nstat_listen = \"127.0.0.1:0\"\n\
         [auth]\nkind = \"hmac\"\nsecrets = [\"{secret}\"]\n"
    )
}

fn token(secret: &str, member: i64) -> String {
    HmacTokens::new(vec![secret.as_bytes().to_vec()], 5)
        .unwrap()
        .mint(MemberId::new(member).unwrap(), 3600)
}

async fn member(addr: std::net::SocketAddr, member: i64, secret: &str) -> Client {
    let mut client = Client::connect(&format!("ws://{addr}/")).await;
    client
        .send(&format!(
            r#"{{"member_id":{member},"token":"{}"}}"#,
            token(secret, member)
        ))
        .await;
    client
}

async fn start(config: &Path) -> (Gateway, std::net::SocketAddr) {
    let mut gateway = Gateway::start(&["--config", config.to_str().unwrap()]);
    let (addr, _stat) = gateway.addresses().await;
    (gateway, addr)
}

#[tokio::test]
async fn sighup_rotates_the_hmac_secret_and_keeps_connected_clients() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, hmac_config("127.0.0.1:0", OLD_SECRET)).unwrap();
    let (mut gateway, addr) = start(&config).await;

    let mut before = member(addr, 7, OLD_SECRET).await;
    before.expect(&hello(7)).await;
    before.subscribe("match").await;

    std::fs::write(&config, hmac_config("127.0.0.1:0", NEW_SECRET)).unwrap();
    gateway.signal("HUP").await;
    let applied = gateway.wait_for_log("configuration reloaded").await;
    assert!(applied.contains("auth.secrets"), "{applied}");

    let mut rotated = member(addr, 8, NEW_SECRET).await;
    rotated.expect(&hello(8)).await;
    let mut stale = member(addr, 9, OLD_SECRET).await;
    stale.expect(&unauthorized()).await;

    let (status, _, _) = http(addr, "POST", "/push", r#"{"app":"match","text":"after"}"#).await;
    assert_eq!(status, 202);
    before
        .expect(r#"{"app":"match","member_id":-1,"text":"after"}"#)
        .await;

    drop((rotated, stale));
    let closing = tokio::spawn(async move { before.expect_close(1001).await });
    let (status, log) = gateway.terminate().await;
    assert!(status.success(), "exit status {status}");
    guard("the close frame", closing).await.unwrap();
    let log = log.join("\n");
    assert!(
        !log.contains(NEW_SECRET) && !log.contains(OLD_SECRET),
        "{log}"
    );
}

#[tokio::test]
async fn sighup_with_a_broken_file_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, hmac_config("127.0.0.1:0", OLD_SECRET)).unwrap();
    let (mut gateway, addr) = start(&config).await;

    std::fs::write(&config, "[auth]\nkind = \"hmac\"\nsecrets = [\"x\"\n").unwrap();
    gateway.signal("HUP").await;
    let error = gateway.wait_for_log("reload failed").await;
    assert!(error.contains("gateway.toml"), "{error}");
    assert!(error.contains("line 3"), "{error}");

    // Still running, with the old secret in force.
    let mut client = member(addr, 7, OLD_SECRET).await;
    client.expect(&hello(7)).await;
    drop(client);
    let (status, _) = gateway.terminate().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sighup_names_a_changed_listen_as_needing_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, hmac_config("127.0.0.1:0", OLD_SECRET)).unwrap();
    let (mut gateway, addr) = start(&config).await;

    std::fs::write(&config, hmac_config("127.0.0.1:1", OLD_SECRET)).unwrap();
    gateway.signal("HUP").await;
    let warning = gateway.wait_for_log("reload: `").await;
    assert!(
        warning.starts_with("listen` changed, but it needs a restart"),
        "{warning}"
    );
    gateway.wait_for_log("configuration reloaded").await;

    // Still on the address it started with.
    let mut client = member(addr, 7, OLD_SECRET).await;
    client.expect(&hello(7)).await;
    drop(client);
    let (status, _) = gateway.terminate().await;
    assert!(status.success(), "exit status {status}");
}
