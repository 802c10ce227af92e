//! `POST /disconnect` and `GET /presence` across nodes: asked at any node, answered by all.

use std::sync::{Arc, Weak};
use std::time::Duration;

use gateway_broker::nats::{NatsAuth, NatsBroker};
use gateway_broker::redis::RedisBroker;
use gateway_broker::{BrokerEvent, BrokerSettings, BrokerState, Inbound, NodeReport, SharedBroker};
use gateway_core::Publication;
use hyper::StatusCode;

use crate::common::{TestServer, http, retry_until};
use crate::{BrokerServer, Cluster, Kind, per_broker};

per_broker!(
    disconnect_closes_the_members_connections_on_every_node,
    presence_merges_every_nodes_members_into_one_paged_list,
    a_node_that_does_not_answer_is_named_in_a_504,
    a_node_that_shut_down_is_not_waited_for,
);

async fn get(node: &TestServer, path: &str) -> (StatusCode, String) {
    let (status, _, body) = http(node.addr, "GET", path, "").await;
    (status, body)
}

/// Waits until `node` sees `n` nodes in the cluster view: a node is waited for once its
/// first report is there (within one report interval of its start).
async fn until_cluster_of(node: &TestServer, n: usize) {
    retry_until("every node in the cluster view", || async {
        let (_, _, body) = http(node.stat_addr, "GET", "/api/overview", "").await;
        let overview: serde_json::Value = serde_json::from_str(&body).ok()?;
        (overview["nodes"].as_array()?.len() == n).then_some(())
    })
    .await;
}

/// Waits until `path` asked at `node` answers `expected` with every node answering: the
/// nodes' reports and control channels are live by then.
async fn until_answer(node: &TestServer, path: &str, expected: &str) {
    retry_until(&format!("{path} = {expected}"), || async {
        (get(node, path).await == (StatusCode::OK, expected.to_owned())).then_some(())
    })
    .await;
}

async fn disconnect_closes_the_members_connections_on_every_node(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    until_cluster_of(c, 3).await;
    let mut on_a = a.member(777, "777secret").await;
    let mut on_b = b.member(777, "777secret").await;
    let mut other = c.member(888, "888secret").await;
    for client in [&mut on_a, &mut on_b, &mut other] {
        client.subscribe("match").await;
    }
    until_answer(
        c,
        "/presence?member_id=777",
        r#"{"member_id":777,"online":true,"connections":2,"apps":["match"]}"#,
    )
    .await;
    until_answer(
        c,
        "/presence?app=match",
        r#"{"app":"match","members":[777,888],"next_cursor":null}"#,
    )
    .await;

    let (status, _, body) = http(c.addr, "POST", "/disconnect", r#"{"member_id":777}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"connections":2}"#)
    );
    on_a.expect_close(4403).await;
    on_b.expect_close(4403).await;
    other.expect_nothing_more().await;

    // From one app only, across nodes: each connection is told and stays open.
    let mut on_a = a.member(777, "777secret").await;
    let mut on_b = b.member(777, "777secret").await;
    for client in [&mut on_a, &mut on_b] {
        client.subscribe("im").await;
    }
    until_answer(
        c,
        "/presence?member_id=777",
        r#"{"member_id":777,"online":true,"connections":2,"apps":["im"]}"#,
    )
    .await;
    let (status, _, body) = http(
        c.addr,
        "POST",
        "/disconnect",
        r#"{"member_id":777,"app":"im"}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"connections":2}"#)
    );
    for client in [&mut on_a, &mut on_b] {
        client
            .expect(&crate::common::reply(410, "unsubscribe im by server"))
            .await;
    }
    on_a.close().await;
    on_b.close().await;
    until_answer(
        a,
        "/presence?member_id=777",
        r#"{"member_id":777,"online":false,"connections":0,"apps":[]}"#,
    )
    .await;
    assert_eq!(
        get(a, "/presence?member_id=777").await,
        (
            StatusCode::OK,
            r#"{"member_id":777,"online":false,"connections":0,"apps":[]}"#.to_owned()
        )
    );
}

async fn presence_merges_every_nodes_members_into_one_paged_list(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let nodes = &cluster.nodes;
    for node in nodes {
        until_cluster_of(node, 3).await;
    }
    let mut clients = Vec::new();
    for (node, member, token) in [
        (0, 777, "777secret"),
        (1, 888, "888secret"),
        (2, 123456, "654321"),
        (2, 777, "777secret"),
    ] {
        let mut client = nodes[node].member(member, token).await;
        client.subscribe("im").await;
        clients.push(client);
    }
    // Every node's member in one answer: all three answer by now.
    until_answer(
        &nodes[1],
        "/presence?app=im",
        r#"{"app":"im","members":[777,888,123456],"next_cursor":null}"#,
    )
    .await;
    assert_eq!(
        get(&nodes[1], "/presence?app=im&limit=2").await,
        (
            StatusCode::OK,
            r#"{"app":"im","members":[777,888],"next_cursor":"888"}"#.to_owned()
        )
    );
    assert_eq!(
        get(&nodes[0], "/presence?app=im&limit=2&cursor=888").await,
        (
            StatusCode::OK,
            r#"{"app":"im","members":[123456],"next_cursor":null}"#.to_owned()
        )
    );
    assert_eq!(
        get(&nodes[2], "/presence?member_id=777").await,
        (
            StatusCode::OK,
            r#"{"member_id":777,"online":true,"connections":2,"apps":["im"]}"#.to_owned()
        )
    );
}

/// Hears nothing: a stand-in for a node whose report is alive but which does not answer.
struct Deaf;

impl Inbound for Deaf {
    fn publication(&self, _: Publication) {}
    fn event(&self, _: BrokerEvent) {}
}

/// A report for a node that does not exist, alive for a minute.
async fn ghost_report(server: &BrokerServer, deaf: &Arc<Deaf>) -> SharedBroker {
    let inbound: Weak<dyn Inbound> = Arc::downgrade(deaf) as Weak<dyn Inbound>;
    let settings = BrokerSettings {
        node_id: "ghost".to_owned(),
        ..BrokerSettings::default()
    };
    let broker: SharedBroker = match server {
        BrokerServer::Redis(redis) => {
            RedisBroker::connect(&[redis.url()], settings, inbound).unwrap()
        }
        BrokerServer::Nats(nats) => {
            NatsBroker::connect(&nats.url(), NatsAuth::default(), settings, inbound).unwrap()
        }
    };
    retry_until("the ghost's broker connected", || {
        let connected = broker.state() == BrokerState::Connected;
        async move { connected.then_some(()) }
    })
    .await;
    let report = NodeReport {
        node: "ghost".to_owned(),
        version: NodeReport::VERSION,
        ..NodeReport::default()
    };
    broker
        .report(&report, Duration::from_secs(60))
        .await
        .unwrap();
    broker
}

async fn a_node_that_does_not_answer_is_named_in_a_504(kind: Kind) {
    let mut cluster = Cluster::start(kind, 0).await;
    let mut config = cluster.config();
    config.timeouts.cluster_query = Duration::from_millis(300);
    config.limits.max_control_requests = 1;
    cluster.nodes.push(TestServer::with_config(config).await);
    let node = &cluster.nodes[0];
    let mut member = node.member(777, "777secret").await;
    member.subscribe("im").await;
    until_answer(
        node,
        "/presence?member_id=777",
        r#"{"member_id":777,"online":true,"connections":1,"apps":["im"]}"#,
    )
    .await;

    let deaf = Arc::new(Deaf);
    let ghost = ghost_report(&cluster.broker, &deaf).await;
    // What the answering nodes hold is there; the silence is named, and the status says so.
    assert_eq!(
        get(node, "/presence?member_id=777").await,
        (
            StatusCode::GATEWAY_TIMEOUT,
            r#"{"member_id":777,"online":true,"connections":1,"apps":["im"],"unanswered":["ghost"]}"#
                .to_owned()
        )
    );
    // While one question waits for the ghost, a second is refused at once
    // (limits.max_control_requests = 1).
    let addr = node.addr;
    let waiting = tokio::spawn(async move {
        loop {
            http(addr, "GET", "/presence?app=im", "").await;
        }
    });
    retry_until("a request shed at the concurrency limit", || async {
        let (status, headers, body) = http(node.addr, "GET", "/presence?app=im", "").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then(|| {
            assert_eq!(headers["retry-after"], "1");
            assert_eq!(
                body,
                "too many /disconnect and /presence requests at once (limits.max_control_requests)\n"
            );
        })
    })
    .await;
    waiting.abort();
    ghost.close();
}

async fn a_node_that_shut_down_is_not_waited_for(kind: Kind) {
    let mut cluster = Cluster::start(kind, 0).await;
    let mut config = cluster.config();
    config.timeouts.cluster_query = Duration::from_millis(300);
    for _ in 0..3 {
        cluster
            .nodes
            .push(TestServer::with_config(config.clone()).await);
    }
    until_cluster_of(&cluster.nodes[0], 3).await;
    let expected = r#"{"app":"im","members":[],"next_cursor":null}"#;
    until_answer(&cluster.nodes[0], "/presence?app=im", expected).await;

    // Its report outlives it, and nodes are remembered for five report lifetimes: without
    // its goodbye the others would wait for it and answer 504 for seconds.
    cluster.nodes.remove(2).shutdown().await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let answer = get(&cluster.nodes[0], "/presence?app=im").await;
        if answer == (StatusCode::OK, expected.to_owned()) {
            return;
        }
        answers.push(answer);
    }
    panic!("still waiting for the node that left: {answers:?}");
}
