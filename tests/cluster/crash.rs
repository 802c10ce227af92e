//! Nodes as operators run them: the `ws-gateway` binary, configured by a file, one of them
//! killed with SIGKILL (no goodbye to the broker or anyone).

use crate::common::binary::Gateway;
use crate::common::{Client, hello_stranger, http, retry_until};
use crate::{BrokerServer, Kind, envelope, per_broker};

per_broker!(a_killed_node_takes_only_its_own_connections_and_leaves_the_cluster_view);

fn config_file(dir: &std::path::Path, broker: &BrokerServer) -> std::path::PathBuf {
    let table = match broker {
        BrokerServer::Redis(redis) => format!("kind = \"redis\"\nurl = \"{}\"", redis.url()),
        BrokerServer::Nats(nats) => format!("kind = \"nats\"\nurl = \"{}\"", nats.url()),
    };
    let path = dir.join("cluster.toml");
    let text = format!("[broker]\n{table}\nreport_interval_ms = 200\nreconnect_max_ms = 500\n");
    std::fs::write(&path, text).unwrap();
    path
}

async fn subscriber(addr: std::net::SocketAddr, app: &str) -> Client {
    let mut client = Client::connect(&format!("ws://{addr}/")).await;
    client.send(r#"{"member_id":-1}"#).await;
    client.expect(&hello_stranger()).await;
    client.subscribe(app).await;
    client
}

async fn a_killed_node_takes_only_its_own_connections_and_leaves_the_cluster_view(kind: Kind) {
    let broker = BrokerServer::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &broker);
    let config = config.to_str().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut node = Gateway::start(&[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--stat-listen",
            "127.0.0.1:0",
        ]);
        let addresses = node.addresses().await;
        nodes.push((node, addresses));
    }
    let (a, a_stat) = nodes[0].1;
    let b = nodes[1].1.0;
    let c = nodes[2].1.0;
    let mut on_b = subscriber(b, "match").await;
    let mut on_c = subscriber(c, "match").await;
    let cluster_stat = || async move { http(a_stat, "GET", "/stat?scope=cluster", "").await.2 };
    retry_until("every node in the cluster view", || async {
        (cluster_stat().await == "match 2\n").then_some(())
    })
    .await;

    let (killed, _) = nodes.pop().unwrap();
    killed.kill().await;
    assert!(
        on_c.next().await.is_none(),
        "its clients lose their connection"
    );

    let (status, _, _) = http(a, "POST", "/push", r#"{"app":"match","text":"still here"}"#).await;
    assert_eq!(status, 202);
    on_b.expect(&envelope("match", -1, "still here")).await;
    retry_until("the killed node's counts leave the view", || async {
        (cluster_stat().await == "match 1\n").then_some(())
    })
    .await;
}
