//! History in Redis: positions given by the publish script, reads, bounds, epochs.

use std::time::Duration;

use gateway_broker::{Broker, BrokerState, Published};
use gateway_core::history::AppPattern;
use gateway_core::{Epoch, HistoryPolicy, HistoryRead, Position, Publication, Since, StreamLimits};
use test_servers::RedisServer;
use tokio::time::Instant;

use crate::support::*;

fn policy(size: usize, ttl: Duration) -> HistoryPolicy {
    HistoryPolicy {
        default: StreamLimits { size, ttl },
        ..HistoryPolicy::default()
    }
}

fn position(publication: &Publication) -> Position {
    publication
        .position
        .clone()
        .expect("a push with history has a position")
}

fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.publications
        .iter()
        .map(|p| position(p).offset)
        .collect()
}

fn after(offset: u64, epoch: &Epoch) -> Since {
    Since::After(Position::new(offset, epoch.clone()))
}

/// Publishes and returns the position the broker answered with.
async fn publish(node: &mut Node, topic: &gateway_core::Topic, text: &str) -> Position {
    node.connected().await;
    let published: Published = node
        .broker
        .publish(topic, push(topic, text))
        .await
        .unwrap_or_else(|e| panic!("publishing to {topic}: {e}"));
    published
        .position
        .expect("an app with history gets a position")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_grow_by_one_per_push_of_each_stream_and_member() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    assert!(node.broker.keeps_history());
    let (news, alice, bob) = (public("news"), private("im", 1), private("im", 2));
    for topic in [&news, &alice, &bob] {
        node.subscribe(topic, 1).await;
    }
    let mut answered = Vec::new();
    for (topic, text) in [
        (&news, "n1"),
        (&alice, "a1"),
        (&news, "n2"),
        (&bob, "b1"),
        (&alice, "a2"),
        (&news, "n3"),
    ] {
        answered.push(publish(&mut node, topic, text).await);
    }
    let mut received = Vec::new();
    while received.len() < answered.len() {
        let (p, _) = node.publication().await;
        received.push(p);
    }
    // Each stream counts on its own; what subscribers get is what the publisher was told.
    let got: Vec<(i64, u64)> = received
        .iter()
        .map(|p| (p.member_id, position(p).offset))
        .collect();
    assert_eq!(got, [(-1, 1), (1, 1), (-1, 2), (2, 1), (1, 2), (-1, 3)]);
    for (p, answered) in received.iter().zip(&answered) {
        assert_eq!(&position(p), answered);
    }
    // One epoch per stream, kept by every push of it.
    assert_eq!(answered[0].epoch, answered[2].epoch);
    assert_eq!(answered[0].epoch, answered[5].epoch);
    assert_eq!(answered[1].epoch, answered[4].epoch);
    assert_ne!(
        answered[1].epoch, answered[3].epoch,
        "two members, two runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_publishing_at_once_give_everyone_one_contiguous_sequence() {
    const EACH: usize = 150;
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (mut a, mut b) = (Node::start("a", &urls), Node::start("b", &urls));
    let topic = public("race");
    a.subscribe(&topic, 1).await;
    b.subscribe(&topic, 1).await;
    a.connected().await;
    b.connected().await;

    let send = |broker: std::sync::Arc<gateway_broker::redis::RedisBroker>, name: &'static str| {
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..EACH {
                let published = broker
                    .publish(&topic, push(&topic, &format!("{name}-{i}")))
                    .await
                    .unwrap();
                offsets.push(published.position.unwrap().offset);
            }
            offsets
        })
    };
    let (from_a, from_b) = (send(a.broker.clone(), "a"), send(b.broker.clone(), "b"));
    let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    // Each publisher's own pushes got increasing offsets; together, every offset once.
    assert!(from_a.windows(2).all(|w| w[0] < w[1]), "{from_a:?}");
    assert!(from_b.windows(2).all(|w| w[0] < w[1]), "{from_b:?}");
    let mut all: Vec<u64> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2 * EACH as u64).collect::<Vec<_>>());

    let mut seen = Vec::new();
    for node in [&mut a, &mut b] {
        let mut stream = Vec::new();
        while stream.len() < 2 * EACH {
            let (p, before) = node.publication().await;
            no_publications(&before);
            stream.push((position(&p), p.frame.as_str().to_owned()));
        }
        seen.push(stream);
    }
    assert_eq!(seen[0], seen[1], "both nodes see one sequence");
    let epoch = seen[0][0].0.epoch.clone();
    for (i, (position, _)) in seen[0].iter().enumerate() {
        assert_eq!(*position, Position::new(i as u64 + 1, epoch.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_position_from_the_start_and_in_another_run() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut writer = Node::start("a", &urls);
    let mut reader = Node::start("b", &urls);
    reader.connected().await;
    let topic = public("match");
    let never = public("never");

    // A stream with no push has no run: only a client that saw nothing missed nothing.
    let empty = reader.broker.history(&never, None, 10).await.unwrap();
    assert_eq!(empty, HistoryRead::default());
    assert!(empty.recovered(&Since::Start));

    let mut pushed = Vec::new();
    for i in 1..=5 {
        pushed.push(push(&topic, &format!("goal {i}")));
        publish(&mut writer, &topic, &format!("goal {i}")).await;
    }
    // Another node reads what this one wrote: the history is the cluster's.
    let all = reader.broker.history(&topic, None, 100).await.unwrap();
    let epoch = all.top.clone().unwrap().epoch;
    assert_eq!(all.top, Some(Position::new(5, epoch.clone())));
    assert_eq!(all.first, Some(1));
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    for (read, pushed) in all.publications.iter().zip(&pushed) {
        assert_eq!(read.frame.as_bytes(), pushed.frame.as_bytes());
        assert_eq!(&unpositioned(read.clone()), pushed);
    }

    let read = |since: Option<Since>, limit: usize| reader.broker.history(&topic, since, limit);
    let start = read(Some(Since::Start), 2).await.unwrap();
    assert_eq!(offsets(&start), [1, 2]);
    assert!(start.recovered(&Since::Start));

    let since = after(2, &epoch);
    let two = read(Some(since.clone()), 2).await.unwrap();
    assert_eq!(offsets(&two), [3, 4]);
    assert!(two.recovered(&since));
    assert_eq!(offsets(&read(Some(since), 10).await.unwrap()), [3, 4, 5]);

    // At the top: nothing missed. Past it, or in another run: nothing of this run, and not
    // recovered.
    let top = after(5, &epoch);
    let at_top = read(Some(top.clone()), 10).await.unwrap();
    assert!(at_top.publications.is_empty() && at_top.recovered(&top));
    let ahead = after(7, &epoch);
    assert!(
        !read(Some(ahead.clone()), 10)
            .await
            .unwrap()
            .recovered(&ahead)
    );
    let other = after(2, &Epoch::parse("another").unwrap());
    let elsewhere = read(Some(other.clone()), 10).await.unwrap();
    assert!(elsewhere.publications.is_empty());
    assert_eq!(elsewhere.top, Some(Position::new(5, epoch)));
    assert!(!elsewhere.recovered(&other));

    // A limit of nothing reads the run alone.
    let bare = read(None, 0).await.unwrap();
    assert!(bare.publications.is_empty() && bare.first == Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_its_size_and_older_positions_are_not_recovered() {
    const SIZE: usize = 4;
    let redis = RedisServer::start();
    let mut node = Node::start_history("a", &[redis.url()], policy(SIZE, Duration::from_secs(60)));
    let topic = private("im", 9);
    for i in 1..=SIZE + 3 {
        publish(&mut node, &topic, &format!("m{i}")).await;
    }
    let read = node.broker.history(&topic, None, 100).await.unwrap();
    let epoch = read.top.clone().unwrap().epoch;
    assert_eq!(read.first, Some(4));
    assert_eq!(offsets(&read), [4, 5, 6, 7]);
    assert_eq!(redis.command(&["XLEN", "gw.m.im.9.log"]).unwrap(), "4");
    let (lost, kept) = (after(2, &epoch), after(3, &epoch));
    assert!(
        !node
            .broker
            .history(&topic, Some(lost.clone()), 100)
            .await
            .unwrap()
            .recovered(&lost)
    );
    let read = node
        .broker
        .history(&topic, Some(kept.clone()), 100)
        .await
        .unwrap();
    assert!(read.recovered(&kept));
    assert_eq!(offsets(&read), [4, 5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_past_their_ttl_are_not_read_and_the_run_outlives_them() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(2);
    let mut node = Node::start_history("a", &[redis.url()], policy(100, ttl));
    let topic = public("ticker");
    let first = publish(&mut node, &topic, "1").await;
    publish(&mut node, &topic, "2").await;
    // Not a synchronisation: the time between the pushes that makes 1 and 2 expire first.
    tokio::time::sleep(ttl / 2).await;
    publish(&mut node, &topic, "3").await;
    let epoch = first.epoch;

    // Poll until 1 and 2 are past their TTL; 3 is kept for another second or so.
    let deadline = Instant::now() + DEADLINE;
    let read = loop {
        let read = node.broker.history(&topic, None, 100).await.unwrap();
        if read.first.is_none_or(|first| first > 2) {
            break read;
        }
        assert!(Instant::now() < deadline, "never expired: {read:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(read.first, Some(3), "{read:?}");
    assert_eq!(offsets(&read), [3]);
    let (gone, kept) = (after(1, &epoch), after(2, &epoch));
    assert!(!read.recovered(&gone));
    assert!(read.recovered(&kept));

    // Then 3 goes too (its log with it), but the run stays: a client at the top missed
    // nothing, one before it cannot know.
    let deadline = Instant::now() + DEADLINE;
    let read = loop {
        let read = node.broker.history(&topic, None, 100).await.unwrap();
        if read.first.is_none() {
            break read;
        }
        assert!(Instant::now() < deadline, "never expired: {read:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(read.top, Some(Position::new(3, epoch.clone())));
    assert!(read.publications.is_empty());
    assert!(read.recovered(&after(3, &epoch)));
    assert!(!read.recovered(&after(2, &epoch)));
    let next = publish(&mut node, &topic, "4").await;
    assert_eq!(next, Position::new(4, epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_history_publishes_version_1_and_keeps_nothing() {
    let redis = RedisServer::start();
    let mut history = policy(100, Duration::from_secs(60));
    history.overrides.push((
        AppPattern::new("plain-*"),
        StreamLimits {
            size: 0,
            ttl: Duration::from_secs(60),
        },
    ));
    let mut node = Node::start_history("a", &[redis.url()], history);
    let topic = public("plain-news");
    node.subscribe(&topic, 1).await;
    node.connected().await;
    let sent = push(&topic, "as before");
    let published = node.broker.publish(&topic, sent.clone()).await.unwrap();
    assert_eq!(published, Published::new());
    // Version 2 always decodes with a position: none means version 1 came.
    let (received, _) = node.publication().await;
    assert_eq!(received, sent);
    assert_eq!(redis.command(&["KEYS", "gw.*"]).unwrap(), "");
    let read = node.broker.history(&topic, None, 10).await.unwrap();
    assert_eq!(read, HistoryRead::default());
}

/// The run of `topic` now, read from the server.
async fn top(node: &Node, topic: &gateway_core::Topic) -> Option<Position> {
    node.broker.history(topic, None, 0).await.unwrap().top
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_starts_a_new_run() {
    let mut redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let topic = public("match");
    publish(&mut node, &topic, "1").await;
    let before = publish(&mut node, &topic, "2").await;

    // FLUSHALL: the run is gone; the next push starts a new one at 1.
    assert_eq!(redis.command(&["FLUSHALL"]).unwrap(), "OK");
    assert_eq!(top(&node, &topic).await, None);
    let flushed = publish(&mut node, &topic, "3").await;
    assert_eq!(flushed.offset, 1);
    assert_ne!(flushed.epoch, before.epoch);
    let old = after(before.offset, &before.epoch);
    assert!(
        !node
            .broker
            .history(&topic, Some(old.clone()), 10)
            .await
            .unwrap()
            .recovered(&old)
    );

    // The run forgotten while its log is still there (a Redis that evicts keys under
    // `maxmemory` may drop one and not the other): a new run, which starts a new log.
    let kept = publish(&mut node, &topic, "3b").await;
    assert_eq!(redis.command(&["DEL", "gw.a.match.meta"]).unwrap(), "1");
    let evicted = publish(&mut node, &topic, "3c").await;
    assert_eq!(evicted.offset, 1);
    assert_ne!(evicted.epoch, kept.epoch);
    let read = node.broker.history(&topic, None, 10).await.unwrap();
    assert_eq!(offsets(&read), [1]);
    let flushed = evicted;

    // A restart (this Redis keeps nothing) likewise, and the scripts are there again.
    tokio::task::block_in_place(|| redis.restart());
    node.state(BrokerState::Connecting).await;
    // The publisher may notice its dead connection only when a push fails on it (the
    // reconnected subscriber already made the broker Connected): try until one is taken.
    let deadline = Instant::now() + DEADLINE;
    let restarted = loop {
        match node.broker.publish(&topic, push(&topic, "4")).await {
            Ok(published) => break published.position.unwrap(),
            Err(error) => assert!(Instant::now() < deadline, "still failing: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(restarted.offset, 1);
    assert_ne!(restarted.epoch, flushed.epoch);
    assert_eq!(top(&node, &topic).await, Some(restarted));
}

/// Publishes until the broker takes one (after a restart, the publisher may notice its dead
/// connection only when a push fails on it).
async fn publish_after_restart(
    node: &mut Node,
    topic: &gateway_core::Topic,
    text: &str,
) -> Position {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match node.broker.publish(topic, push(topic, text)).await {
            Ok(published) => return published.position.unwrap(),
            Err(error) => assert!(Instant::now() < deadline, "still failing: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_starts_a_new_run_rather_than_reuse_offsets() {
    let mut redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let topic = public("match");
    publish(&mut node, &topic, "1").await;
    let saved = publish(&mut node, &topic, "2").await;
    assert_eq!(redis.command(&["SAVE"]).unwrap(), "OK");
    let lost = publish(&mut node, &topic, "3").await;
    assert_eq!((lost.offset, &lost.epoch), (3, &saved.epoch));

    // The restart loads the snapshot: the run as it was at 2, push 3 gone.
    tokio::task::block_in_place(|| redis.restart());
    node.state(BrokerState::Connecting).await;
    let next = publish_after_restart(&mut node, &topic, "4").await;
    // Offset 3 of the same epoch would tell a client that holds push 3 that push 4 is the
    // one it has: a new run instead, which such a client is told about.
    assert_ne!(
        next.epoch, saved.epoch,
        "offsets reused after a restore: {next:?}"
    );
    assert_eq!(next.offset, 1);
    let old = after(lost.offset, &lost.epoch);
    let read = node
        .broker
        .history(&topic, Some(old.clone()), 10)
        .await
        .unwrap();
    assert!(!read.recovered(&old));
    assert_eq!(read.top, Some(next.clone()));

    // The new run carries on as usual on this server.
    let following = publish(&mut node, &topic, "5").await;
    assert_eq!((following.offset, &following.epoch), (2, &next.epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgot_the_scripts_gets_them_again() {
    let redis = RedisServer::start();
    let mut node = Node::start("a", &[redis.url()]);
    let (topic, other) = (public("match"), public("other"));
    node.subscribe(&topic, 1).await;
    publish(&mut node, &topic, "1").await;

    // One publication: NOSCRIPT, then EVAL.
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).unwrap(), "OK");
    assert_eq!(publish(&mut node, &topic, "2").await.offset, 2);

    // A read likewise.
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).unwrap(), "OK");
    let read = node.broker.history(&topic, None, 10).await.unwrap();
    assert_eq!(offsets(&read), [1, 2]);

    // A pipeline: every NOSCRIPT again as EVAL, in order, with the other topics' answers.
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).unwrap(), "OK");
    let batch: Vec<_> = (3..=6)
        .flat_map(|i| {
            [
                (topic.clone(), push(&topic, &i.to_string())),
                (other.clone(), push(&other, &i.to_string())),
            ]
        })
        .collect();
    let outcomes = node.broker.publish_all(batch).await;
    let got: Vec<u64> = outcomes
        .into_iter()
        .map(|o| o.unwrap().position.unwrap().offset)
        .collect();
    assert_eq!(got, [3, 1, 4, 2, 5, 3, 6, 4]);
    let mut received = Vec::new();
    while received.len() < 6 {
        let (p, _) = node.publication().await;
        received.push(position(&p).offset);
    }
    assert_eq!(received, [1, 2, 3, 4, 5, 6]);
}
