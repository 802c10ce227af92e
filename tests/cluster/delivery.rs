//! Exactly once, to the right connections, in each pusher's order (and, over Redis, in one
//! order per app), across nodes.

use crate::common::{Client, GUARD};
use crate::{Cluster, Kind, envelope, per_broker};

per_broker!(
    a_push_to_one_node_reaches_every_subscriber_on_every_node_exactly_once,
    a_private_push_reaches_only_its_members_connections_wherever_they_are,
    every_node_sees_each_pushers_pushes_in_order,
);

async fn a_push_to_one_node_reaches_every_subscriber_on_every_node_exactly_once(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        let mut client = node.anonymous().await;
        // The reply comes once this node's broker subscription is live: a push accepted after
        // it must arrive, with no other wait.
        client.subscribe("match").await;
        clients.push(client);
    }
    // Two subscribers on one node: one broker subscription, two deliveries.
    let mut second = cluster.nodes[1].anonymous().await;
    second.subscribe("match").await;
    clients.push(second);

    // Through another node: a 202 means the broker had the push, so the next one, wherever it
    // is pushed, comes after it (docs/protocol.md, Part 3).
    cluster.nodes[0].push_ok("match", -1, "goal").await;
    cluster.nodes[2].push_ok("match", -1, "marker").await;
    for client in &mut clients {
        client.expect(&envelope("match", -1, "goal")).await;
        // The next push arrives next: the first one was not delivered twice.
        client.expect(&envelope("match", -1, "marker")).await;
    }
}

async fn a_private_push_reaches_only_its_members_connections_wherever_they_are(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let mut members: Vec<Client> = Vec::new();
    for node in [b, b, c] {
        let mut client = node.member(777, "777secret").await;
        client.subscribe("im").await;
        members.push(client);
    }
    let mut other = a.member(888, "888secret").await;
    other.subscribe("im").await;
    let mut anonymous_on_a = a.anonymous().await;
    anonymous_on_a.subscribe("match").await;

    a.push_ok("im", 777, "for 777").await;
    for client in &mut members {
        client.expect(&envelope("im", 777, "for 777")).await;
    }
    // Member 888 saw nothing of it: its first push is its own.
    a.push_ok("im", 888, "for 888").await;
    other.expect(&envelope("im", 888, "for 888")).await;
    // Markers through the broker: what each client receives next shows it received nothing
    // else before (member 777 not 888's push, the anonymous client no private push).
    a.push_ok("im", 777, "marker").await;
    a.push_ok("match", -1, "marker").await;
    for client in &mut members {
        client.expect(&envelope("im", 777, "marker")).await;
    }
    anonymous_on_a
        .expect(&envelope("match", -1, "marker"))
        .await;
}

async fn every_node_sees_each_pushers_pushes_in_order(kind: Kind) {
    const EACH: usize = 100;
    let cluster = Cluster::start(kind, 3).await;
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        let mut client = node.anonymous().await;
        client.subscribe("race").await;
        clients.push(client);
    }
    // Two backends push concurrently, to two different nodes.
    let pushers: Vec<_> = [0, 1]
        .into_iter()
        .map(|i| {
            let addr = cluster.nodes[i].addr;
            tokio::spawn(async move {
                for n in 0..EACH {
                    let body = format!(r#"{{"app":"race","text":"{i}-{n}"}}"#);
                    let (status, _, _) = crate::common::http(addr, "POST", "/push", &body).await;
                    assert_eq!(status, 202);
                }
            })
        })
        .collect();
    for pusher in pushers {
        tokio::time::timeout(GUARD, pusher).await.unwrap().unwrap();
    }
    let mut orders = Vec::new();
    for client in &mut clients {
        let mut order = Vec::new();
        for _ in 0..2 * EACH {
            order.push(client.recv().await);
        }
        orders.push(order);
    }
    // Each pusher's own pushes in its order, at every node.
    for order in &orders {
        for pusher in ["0-", "1-"] {
            let own: Vec<&String> = order
                .iter()
                .filter(|m| m.contains(&format!("\"text\":\"{pusher}")))
                .collect();
            let expected: Vec<String> = (0..EACH)
                .map(|n| envelope("race", -1, &format!("{pusher}{n}")))
                .collect();
            assert_eq!(own, expected.iter().collect::<Vec<_>>());
        }
    }
    // One interleaving at every node: Redis serialises a channel, and with history (on by
    // default) every push has its offset, which each node follows (docs/protocol.md,
    // "History in a cluster"; NATS core alone does not order concurrent publishers).
    assert_eq!(orders[0], orders[1], "{kind:?}");
    assert_eq!(orders[0], orders[2], "{kind:?}");
}
