//! Faults: a lost server, a publication lost after it was sent, a silently dead connection.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_broker::{Broker, BrokerError, BrokerEvent, BrokerState, GapCause};
use test_servers::RedisServer;
use tokio::time::{Instant, timeout};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_fails_pushes_and_its_return_is_a_gap() {
    let mut redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let (match_, member) = (public("match"), private("im", 3));
    node.state(BrokerState::Connected).await;
    node.subscribe(&match_, 1).await;
    node.subscribe(&member, 2).await;

    redis.stop();
    let error = node.state(BrokerState::Connecting).await;
    assert!(error.is_some(), "a lost connection says why");
    assert_eq!(node.broker.state(), BrokerState::Connecting);
    // The state may have changed with the subscriber's connection while the publisher's has
    // not noticed yet: a publication handed to it is sent into a dead connection, with an
    // unknown outcome (Failed), and makes the publisher check. Once it knows, nothing is sent:
    // Unavailable, at once.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let refused = timeout(
            Duration::from_secs(3),
            node.broker.publish(&match_, push(&match_, "lost")),
        )
        .await
        .expect("a publish fails promptly while Redis is away");
        match refused {
            Err(BrokerError::Unavailable(_)) => break,
            Err(BrokerError::Failed(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the publisher never noticed the loss"
        );
        tokio::task::yield_now().await;
    }

    tokio::task::block_in_place(|| redis.restart());
    let mut subscribed = BTreeMap::new();
    let mut gap = None;
    let mut connected = false;
    while !(connected && gap.is_some() && subscribed.len() == 2) {
        let (event, _) = node
            .until("the reconnection's events", |seen| match seen {
                Seen::Event(event) => Some(event.clone()),
                Seen::Publication(_) => None,
            })
            .await;
        match event {
            BrokerEvent::State { state, .. } => connected = state == BrokerState::Connected,
            BrokerEvent::Subscribed { topic, seq } => {
                assert!(gap.is_none(), "Subscribed comes before the gap");
                subscribed.insert(topic, seq);
            }
            BrokerEvent::Gap { mut topics, cause } => {
                assert_eq!(cause, GapCause::Reconnected);
                topics.sort();
                gap = Some(topics);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        subscribed,
        BTreeMap::from([(match_.clone(), 1), (member.clone(), 2)])
    );
    assert_eq!(gap.unwrap(), [match_.clone(), member.clone()]);
    assert_eq!(node.broker.state(), BrokerState::Connected);
    assert_eq!(redis.channels("gw.*"), ["gw.a.match", "gw.m.im.3"]);

    let back = push(&member, "back");
    node.publish(&member, &back).await;
    let (received, before) = node.publication().await;
    no_publications(&before);
    assert_eq!(unpositioned(received), back);
}

/// The ids of the connections whose `PUBLISH` (or publish script) the server holds (paused,
/// flag `b`).
fn held_publishers(redis: &RedisServer) -> Vec<String> {
    let clients = redis.command(&["CLIENT", "LIST"]).unwrap();
    clients
        .lines()
        .filter(|client| {
            let fields: Vec<&str> = client.split(' ').collect();
            (fields.contains(&"cmd=publish") || fields.contains(&"cmd=evalsha"))
                && fields
                    .iter()
                    .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('b')))
        })
        .filter_map(|client| client.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_lost_after_it_was_sent_has_an_unknown_outcome() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut hasty = Node::start_with("a", &urls, Duration::from_millis(300));
    let mut patient = Node::start_with("b", &urls, DEADLINE);
    hasty.connected().await;
    patient.connected().await;
    let topic = public("match");
    // Redis holds write commands, PUBLISH among them, until unpaused.
    assert_eq!(
        redis
            .command(&["CLIENT", "PAUSE", "30000", "WRITE"])
            .unwrap(),
        "OK"
    );

    // Sent, and not answered in time: it may still be delivered.
    let late = hasty.broker.publish(&topic, push(&topic, "late")).await;
    assert!(matches!(late, Err(BrokerError::TimedOut(_))), "{late:?}");
    assert!(late.unwrap_err().may_have_been_delivered());

    // Sent, and the connection breaks while Redis holds it: the outcome is unknown too. Never
    // Unavailable, which would promise that nobody got it.
    let held = held_publishers(&redis).len();
    let publishing = tokio::spawn(patient.broker.publish(&topic, push(&topic, "held")));
    until_server("the server holding the PUBLISH", || {
        held_publishers(&redis).len() == held + 1
    })
    .await;
    for id in held_publishers(&redis) {
        redis.command(&["CLIENT", "KILL", "ID", &id]).unwrap();
    }
    let broken = timeout(DEADLINE, publishing)
        .await
        .expect("the publication fails once its connection is gone")
        .unwrap();
    assert!(matches!(broken, Err(BrokerError::Failed(_))), "{broken:?}");
    assert!(broken.unwrap_err().may_have_been_delivered());
    assert_eq!(redis.command(&["CLIENT", "UNPAUSE"]).unwrap(), "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_is_noticed_by_its_ping() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let topic = public("match");
    node.state(BrokerState::Connected).await;
    node.subscribe(&topic, 1).await;

    // The server holds every client's commands, PING included, but keeps the sockets open:
    // from the client's side, a connection that stopped answering.
    let paused = Instant::now();
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "2000", "ALL"]).unwrap(),
        "OK"
    );
    let error = node.state(BrokerState::Connecting).await.unwrap();
    assert!(error.contains("PING"), "{error}");
    // ping_interval + ping_timeout (0.7 s here) plus scheduling slack.
    assert!(
        paused.elapsed() < Duration::from_millis(1500),
        "{:?}",
        paused.elapsed()
    );

    let (gap, _) = node
        .until("the gap", |seen| match seen {
            Seen::Event(BrokerEvent::Gap { topics, cause }) => Some((topics.clone(), *cause)),
            _ => None,
        })
        .await;
    assert_eq!(gap, (vec![topic], GapCause::Reconnected));
}
