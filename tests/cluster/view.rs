//! `/stat?scope=cluster`: every live node's counts, merged; `/stat` stays the node's own.

use crate::common::{http, retry_until};
use crate::{Cluster, Kind, per_broker};

per_broker!(the_cluster_view_adds_nodes_up_counts_members_once_and_forgets_dead_nodes);

async fn cluster_stat(cluster: &Cluster, node: usize) -> String {
    let (status, _, body) = http(
        cluster.nodes[node].stat_addr,
        "GET",
        "/stat?scope=cluster",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn the_cluster_view_adds_nodes_up_counts_members_once_and_forgets_dead_nodes(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3).await;
    let mut clients = Vec::new();
    for node in [0, 0, 1] {
        let mut client = cluster.nodes[node].anonymous().await;
        client.subscribe("match").await;
        clients.push(client);
    }
    // Member 777 on two nodes counts once; 888 on the third node counts too.
    for (node, member, token) in [
        (0, 777, "777secret"),
        (1, 777, "777secret"),
        (2, 888, "888secret"),
    ] {
        let mut client = cluster.nodes[node].member(member, token).await;
        client.subscribe("im").await;
        clients.push(client);
    }
    // The seed's plain /stat is the node's own.
    assert_eq!(cluster.nodes[0].stat().await, "im 1\nmatch 2\n");
    retry_until("the cluster view shows every node", || async {
        (cluster_stat(&cluster, 1).await == "im 2\nmatch 3\n").then_some(())
    })
    .await;

    // A node dies without a word: its counts leave the view within the report's lifetime.
    let node = cluster.nodes.remove(2);
    node.shutdown().await;
    retry_until("the dead node's counts are gone", || async {
        (cluster_stat(&cluster, 0).await == "im 1\nmatch 3\n").then_some(())
    })
    .await;

    let (status, _, body) = http(cluster.nodes[0].stat_addr, "GET", "/stat?scope=galaxy", "").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (
            400,
            "scope must be \"node\" or \"cluster\", not \"galaxy\"\n"
        )
    );
}
