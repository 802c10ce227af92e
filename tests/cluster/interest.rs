//! Interest-based routing, checked on the broker itself: a node subscribes to a topic while it
//! has local subscribers of it, and only then.

use crate::common::retry_until;
use crate::{Cluster, Kind, envelope, per_broker};

per_broker!(a_node_subscribes_on_the_broker_only_to_what_its_clients_subscribed);

async fn a_node_subscribes_on_the_broker_only_to_what_its_clients_subscribed(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    assert_eq!(
        cluster.broker.interest(),
        Vec::<String>::new(),
        "no client, no subscription"
    );

    let mut fan = cluster.nodes[1].anonymous().await;
    fan.subscribe("match").await;
    // The reply waited for the broker: the subscription is there already, no polling.
    assert_eq!(cluster.broker.interest(), ["ws-gateway.a.match"]);
    let mut again = cluster.nodes[1].anonymous().await;
    again.subscribe("match").await;
    let mut member = cluster.nodes[2].member(777, "777secret").await;
    member.subscribe("im").await;
    // One subscription per node and topic, whatever the number of local subscribers; the
    // nodes without a subscriber of "match" receive none of its traffic.
    assert_eq!(
        cluster.broker.interest(),
        ["ws-gateway.a.match", "ws-gateway.m.im.777"]
    );
    assert_eq!(cluster.broker.subscribers("ws-gateway.a.match"), 1);

    cluster.nodes[0].push_ok("match", -1, "one").await;
    fan.expect(&envelope("match", -1, "one")).await;
    again.expect(&envelope("match", -1, "one")).await;

    // The last local subscriber leaves: the node unsubscribes.
    fan.close().await;
    assert_eq!(
        cluster.broker.subscribers("ws-gateway.a.match"),
        1,
        "one is left"
    );
    again.close().await;
    member.close().await;
    retry_until("the broker shows no subscription", || async {
        cluster.broker.interest().is_empty().then_some(())
    })
    .await;
}

/// Sharding is Redis's (a NATS cluster spreads subjects by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_spread_apps_over_several_redis_servers_and_deliver_once() {
    let first = test_servers::RedisServer::start();
    let second = test_servers::RedisServer::start();
    let config = gateway_server::ServerConfig {
        broker: crate::redis_config(&[first.url(), second.url()]),
        ..gateway_server::ServerConfig::default()
    };
    let a = crate::common::TestServer::with_config(config.clone()).await;
    let b = crate::common::TestServer::with_config(config).await;
    let apps: Vec<String> = (0..20).map(|i| format!("app-{i}")).collect();
    let mut client = b.anonymous().await;
    for app in &apps {
        client.subscribe(app).await;
    }
    // The nodes' own control channels (`$ws-gateway/…`) are not the apps' interest.
    let apps_only = |channels: Vec<String>| -> Vec<String> {
        channels
            .into_iter()
            .filter(|c| !c.starts_with("ws-gateway.a.~24ws-gateway~2F"))
            .collect()
    };
    let (on_first, on_second) = (
        apps_only(first.channels("ws-gateway.*")),
        apps_only(second.channels("ws-gateway.*")),
    );
    assert!(
        !on_first.is_empty() && !on_second.is_empty(),
        "{on_first:?} / {on_second:?}"
    );
    assert_eq!(
        on_first.len() + on_second.len(),
        apps.len(),
        "each app on one shard"
    );

    for round in ["first", "second"] {
        for app in &apps {
            a.push_ok(app, -1, round).await;
        }
        let mut received: Vec<String> = Vec::new();
        for _ in &apps {
            received.push(client.recv().await);
        }
        received.sort();
        let mut expected: Vec<String> = apps.iter().map(|app| envelope(app, -1, round)).collect();
        expected.sort();
        // Exactly one per app: a duplicate of the first round would show up before (per
        // shard, in channel order) the second round's push of the same app.
        assert_eq!(received, expected);
    }
}
