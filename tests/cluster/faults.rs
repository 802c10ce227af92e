//! Failures are visible, never silent: a broker that is down answers 503, clients stay
//! connected, the nodes come back by themselves and count the possible gap; a node that dies
//! takes only its own connections.

use crate::common::{http, retry_until};
use crate::{Cluster, Kind, envelope, per_broker};

per_broker!(
    a_broker_outage_answers_503_keeps_clients_and_recovers_by_itself,
    a_dead_node_takes_only_its_own_connections,
);

async fn a_broker_outage_answers_503_keeps_clients_and_recovers_by_itself(kind: Kind) {
    let mut cluster = Cluster::start(kind, 2).await;
    let mut client = cluster.nodes[1].anonymous().await;
    client.subscribe("match").await;
    cluster.nodes[0].push_ok("match", -1, "before").await;
    client.expect(&envelope("match", -1, "before")).await;
    let gaps_before = cluster.nodes[1].counters.broker_gaps();

    cluster.broker.stop();
    let push = r#"{"app":"match","text":"during"}"#;
    let headers = retry_until("a push answered 503 while the broker is down", || async {
        let (status, headers, body) = http(cluster.nodes[0].addr, "POST", "/push", push).await;
        // Never 202 without the broker: while it is unreachable, every answer is a 503.
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("push not delivered: "), "{body}");
        Some(headers)
    })
    .await;
    assert_eq!(headers["retry-after"], "1");
    assert!(cluster.nodes[0].counters.broker_publish_failures() >= 1);

    cluster.broker.restart();
    // Node 1 reconnects, resubscribes, and reports that pushes may have been lost meanwhile.
    retry_until("node 1 counted the gap", || async {
        (cluster.nodes[1].counters.broker_gaps() > gaps_before).then_some(())
    })
    .await;
    // Node 0 publishes again once it is reconnected (503 until then, never a lost 202).
    let after = r#"{"app":"match","text":"after"}"#;
    retry_until("a push accepted after the restart", || async {
        let (status, _, _) = http(cluster.nodes[0].addr, "POST", "/push", after).await;
        assert!(status == 202 || status == 503, "{status}");
        (status == 202).then_some(())
    })
    .await;
    // The client stayed connected through it all, and the first thing it sees is the push
    // after the restart: nothing refused was delivered.
    client.expect(&envelope("match", -1, "after")).await;
    assert!(cluster.nodes[1].counters.broker_disconnects() >= 1);
}

async fn a_dead_node_takes_only_its_own_connections(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3).await;
    let mut survivor = cluster.nodes[1].anonymous().await;
    survivor.subscribe("match").await;
    let mut doomed = cluster.nodes[2].anonymous().await;
    doomed.subscribe("match").await;

    let node = cluster.nodes.remove(2);
    node.shutdown().await;
    doomed.expect_close(1001).await;

    cluster.nodes[0].push_ok("match", -1, "still here").await;
    survivor.expect(&envelope("match", -1, "still here")).await;
    survivor.expect_nothing_more().await;
}
