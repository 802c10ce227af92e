//! Failures are visible, never silent: a broker that is down answers 503, clients stay
//! connected, the nodes come back by themselves and count the possible gap; a node that dies
//! takes only its own connections.

use crate::common::{http, retry_until, subscribed};
use crate::{Cluster, Kind, envelope, per_broker};

per_broker!(
    a_broker_outage_answers_503_keeps_clients_and_recovers_by_itself,
    a_dead_node_takes_only_its_own_connections,
    a_subscription_the_broker_cannot_confirm_is_answered_when_it_can_or_closed_with_1013,
);

async fn a_broker_outage_answers_503_keeps_clients_and_recovers_by_itself(kind: Kind) {
    let mut cluster = Cluster::start(kind, 2).await;
    let mut client = cluster.nodes[1].anonymous().await;
    client.subscribe("match").await;
    cluster.nodes[0].push_ok("match", -1, "before").await;
    client.expect(&envelope("match", -1, "before")).await;
    let gaps_before = cluster.nodes[1].counters.broker_gaps();

    cluster.broker.stop();
    // The texts of pushes answered 504: sent as the connection broke, they may have been
    // stored (NATS keeps history on disk, and the nodes repair their gap from it after the
    // restart), so the client may see them. Never one answered 503.
    let unknown = std::sync::Mutex::new(Vec::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let headers = retry_until("a push answered 503 while the broker is down", || async {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = format!("during-{n}");
        let push = format!(r#"{{"app":"match","text":"{text}"}}"#);
        let (status, headers, body) = http(cluster.nodes[0].addr, "POST", "/push", &push).await;
        // Never 202 without the broker. A push sent as the connection broke has an unknown
        // outcome (504); once the node knows the broker is gone, nothing is sent (503).
        match status.as_u16() {
            504 => {
                assert!(body.starts_with("push outcome unknown"), "{body}");
                unknown.lock().unwrap().push(envelope("match", -1, &text));
                None
            }
            503 => {
                assert!(body.starts_with("push not delivered: "), "{body}");
                Some(headers)
            }
            other => panic!("{other}: {body}"),
        }
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
    // The client stayed connected through it all, and sees the push after the restart with
    // nothing refused before it: at most pushes whose outcome was unknown, in order.
    let unknown = unknown.into_inner().unwrap();
    let mut seen = Vec::new();
    loop {
        let frame = client.recv().await;
        if frame == envelope("match", -1, "after") {
            break;
        }
        assert!(
            unknown.contains(&frame),
            "a push that was not answered 504 (unknown outcome) reached the client: {frame}"
        );
        seen.push(frame);
    }
    assert!(
        seen.is_sorted_by_key(|f| unknown.iter().position(|u| u == f)),
        "{seen:?}"
    );
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
    // Once, not twice: the next push is the next thing it receives.
    cluster.nodes[0].push_ok("match", -1, "marker").await;
    survivor.expect(&envelope("match", -1, "marker")).await;
}

async fn a_subscription_the_broker_cannot_confirm_is_answered_when_it_can_or_closed_with_1013(
    kind: Kind,
) {
    let mut cluster = Cluster::start(kind, 1).await;
    cluster.broker.stop();
    // No reply while the broker cannot confirm: past `broker.subscribe_timeout_ms` the client
    // is closed with 1013, to reconnect (maybe to a healthier node).
    let mut early = cluster.nodes[0].anonymous().await;
    early.send(r#"{"app":"late"}"#).await;
    assert_eq!(early.expect_close(1013).await, Vec::<String>::new());

    // A subscription made while the broker is down is answered once it is back.
    let mut patient = cluster.nodes[0].anonymous().await;
    patient.send(r#"{"app":"late"}"#).await;
    cluster.broker.restart();
    patient.expect(&subscribed("late")).await;
    let push = r#"{"app":"late","text":"finally"}"#;
    retry_until("a push accepted after the restart", || async {
        let (status, _, _) = http(cluster.nodes[0].addr, "POST", "/push", push).await;
        (status == 202).then_some(())
    })
    .await;
    patient.expect(&envelope("late", -1, "finally")).await;
}
