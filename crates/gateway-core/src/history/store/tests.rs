//! The store's own bookkeeping, checked from inside: whatever happens, the charge is the sum of
//! the streams' charges and both indexes name exactly the streams they should, under the keys
//! they should. (Behaviour is tested through the public API in `tests/history.rs`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::history::AppPattern;
use crate::ids::{AppName, MemberId};
use crate::message::PushMessage;

fn audit(history: &History) {
    let charged: usize = history.streams.values().map(|s| s.charge()).sum();
    assert_eq!(history.bytes, charged, "the charge is the streams' sum");
    assert_eq!(history.by_write.len(), history.streams.len());
    for (written, topic) in &history.by_write {
        assert_eq!(history.streams[topic].written, *written, "{topic}");
    }
    let keeping = history
        .streams
        .values()
        .filter(|s| !s.entries.is_empty())
        .count();
    assert_eq!(history.by_deadline.len(), keeping);
    for ((deadline, id), topic) in &history.by_deadline {
        let stream = &history.streams[topic];
        assert_eq!((stream.deadline(), stream.id), (Some(*deadline), *id));
    }
    for stream in history.streams.values() {
        assert!(stream.entries.len() <= stream.size);
        assert!(stream.entries.capacity() <= stream.size.max(1));
        let frames: usize = stream.entries.iter().map(Entry::cost).sum();
        assert_eq!(stream.frames, frames);
        let times: Vec<u64> = stream.entries.iter().map(|e| e.at).collect();
        assert!(times.is_sorted(), "a ring is in time order");
    }
}

fn topic(i: usize) -> Topic {
    let app = AppName::parse(["a", "b-1", "b-2", "im"][i % 4], 128).unwrap();
    if i % 4 == 3 {
        Topic::Member {
            app,
            member: MemberId::new(1 + i as i64 / 4).unwrap(),
        }
    } else {
        Topic::App(app)
    }
}

fn push(topic: &Topic, len: usize) -> Publication {
    let member_id = topic.member().map_or(-1, MemberId::get);
    let body = format!(
        r#"{{"app":"{}","member_id":{member_id},"text":"{}"}}"#,
        topic.app(),
        "t".repeat(len)
    );
    Publication::from(PushMessage::parse(body.as_bytes(), 128).unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Append { topic: usize, len: usize, dt: u64 },
    Read { topic: usize, dt: u64 },
    Expire { dt: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..12usize, 0..300usize, 0..200u64)
            .prop_map(|(topic, len, dt)| Op::Append { topic, len, dt }),
        1 => (0..12usize, 0..500u64).prop_map(|(topic, dt)| Op::Read { topic, dt }),
        1 => (0..1_500u64).prop_map(|dt| Op::Expire { dt }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_indexes_and_the_charge_always_agree_with_the_streams(
        size in 1..8usize,
        b_ttl in 1..800u64,
        max_bytes in 0..8_000usize,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let policy = HistoryPolicy {
            default: StreamLimits { size, ttl: Duration::from_millis(1_000) },
            overrides: vec![(
                AppPattern::new("b-*"),
                StreamLimits { size: 2, ttl: Duration::from_millis(b_ttl) },
            )],
            max_bytes,
        };
        let mut history = History::new(policy, "e");
        let mut now = 0;
        for op in ops {
            match op {
                Op::Append { topic: i, len, dt } => {
                    now += dt;
                    history.append(&topic(i), push(&topic(i), len), Timestamp::from_millis(now));
                    prop_assert!(history.bytes() <= max_bytes);
                }
                Op::Read { topic: i, dt } => {
                    now += dt;
                    history.read(&topic(i), None, usize::MAX, Timestamp::from_millis(now));
                }
                Op::Expire { dt } => {
                    now += dt;
                    history.expire(Timestamp::from_millis(now));
                    prop_assert!(history.by_deadline.keys().all(|(deadline, _)| *deadline > now));
                }
            }
            audit(&history);
        }
    }
}

/// `expire` touches only what expires: with 20,000 streams that keep pushes for 10 s and one
/// that keeps them for 1 s, an expiry at 1 s visits the one stream (counted by the deadline
/// index's pops: the other streams' entries stay where they were).
#[test]
fn expire_visits_only_the_streams_that_expire() {
    let policy = HistoryPolicy {
        default: StreamLimits {
            size: 10,
            ttl: Duration::from_secs(10),
        },
        overrides: vec![(
            AppPattern::new("b-*"),
            StreamLimits {
                size: 10,
                ttl: Duration::from_secs(1),
            },
        )],
        max_bytes: usize::MAX,
    };
    let mut history = History::new(policy, "e");
    for member in 1..=20_000 {
        let topic = Topic::Member {
            app: AppName::parse("im", 128).unwrap(),
            member: MemberId::new(member).unwrap(),
        };
        history.append(&topic, push(&topic, 10), Timestamp::from_millis(0));
    }
    let fast = Topic::App(AppName::parse("b-1", 128).unwrap());
    history.append(&fast, push(&fast, 10), Timestamp::from_millis(0));
    history.expire(Timestamp::from_millis(999));
    assert_eq!(history.visits, 0, "nothing expires before 1 s");
    history.expire(Timestamp::from_millis(1_000));
    assert_eq!(history.visits, 1);
    assert_eq!(history.by_deadline.len(), 20_000);
    assert!(history.streams[&fast].entries.is_empty());
    assert_eq!(history.by_deadline.keys().next().unwrap().0, 10_000);
    audit(&history);
}

/// Eviction takes the least recently written stream from the front of the write index, not by
/// a scan: after 20,000 streams, a full history evicts exactly one per new stream of that size.
#[test]
fn eviction_takes_one_stream_per_new_stream() {
    let mut probe = History::new(HistoryPolicy::default(), "e");
    let one = Topic::App(AppName::parse("a", 128).unwrap());
    probe.append(&one, push(&one, 10), Timestamp::from_millis(0));
    let per_stream = probe.bytes();
    let policy = HistoryPolicy {
        max_bytes: per_stream * 1_000,
        ..HistoryPolicy::default()
    };
    let mut history = History::new(policy, "e");
    let topic = |member: i64| Topic::Member {
        app: AppName::parse("im", 128).unwrap(),
        member: MemberId::new(member).unwrap(),
    };
    for member in 1..=20_000 {
        history.append(
            &topic(member),
            push(&topic(member), 10),
            Timestamp::from_millis(0),
        );
    }
    assert!(history.streams() >= 990 && history.streams() <= 1_000);
    // Each new stream looked at exactly the one it evicted: the front of the write index.
    assert_eq!(history.visits, 20_000 - history.streams());
    let survivors: Vec<i64> = history
        .by_write
        .values()
        .map(|t| t.member().unwrap().get())
        .collect();
    let newest = 20_000 - survivors.len() as i64 + 1;
    assert_eq!(survivors, (newest..=20_000).collect::<Vec<_>>());
    audit(&history);
}
