//! The in-memory history (`gateway_core::history::History`): positions, the size, TTL and
//! `max_bytes` bounds, eviction order, and the rule that decides "recovered". No clock: every
//! call is given its time.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

use std::collections::HashMap;
use std::time::Duration;

use gateway_core::history::{AppPattern, History};
use gateway_core::{
    AppName, Epoch, HistoryPolicy, HistoryRead, MemberId, Position, Publication, PushMessage,
    Since, StreamLimits, Timestamp, Topic,
};
use proptest::prelude::*;

fn app(name: &str) -> AppName {
    AppName::parse(name, 128).unwrap()
}

fn topic(name: &str) -> Topic {
    Topic::App(app(name))
}

fn member(name: &str, id: i64) -> Topic {
    Topic::Member {
        app: app(name),
        member: MemberId::new(id).unwrap(),
    }
}

/// A push to `topic` as the push API makes it.
fn push(topic: &Topic, text: &str) -> Publication {
    let member_id = topic.member().map_or(-1, MemberId::get);
    let body = format!(
        r#"{{"app":"{}","member_id":{member_id},"text":"{text}"}}"#,
        topic.app()
    );
    Publication::from(PushMessage::parse(body.as_bytes(), 128).unwrap())
}

fn at(millis: u64) -> Timestamp {
    Timestamp::from_millis(millis)
}

fn limits(size: usize, ttl_ms: u64) -> StreamLimits {
    StreamLimits {
        size,
        ttl: Duration::from_millis(ttl_ms),
    }
}

fn policy(size: usize, ttl_ms: u64, max_bytes: usize) -> HistoryPolicy {
    HistoryPolicy {
        default: limits(size, ttl_ms),
        overrides: Vec::new(),
        max_bytes,
    }
}

fn position(publication: &Publication) -> Position {
    publication.position.clone().unwrap()
}

fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.publications
        .iter()
        .map(|p| p.position.as_ref().unwrap().offset)
        .collect()
}

fn after(position: &Position) -> Since {
    Since::After(position.clone())
}

#[test]
fn offsets_start_at_one_and_grow_by_one_per_stream() {
    let mut history = History::new(HistoryPolicy::default(), "seed");
    let streams = [
        topic("match"),
        topic("news"),
        member("im", 1),
        member("im", 2),
    ];
    let mut epochs = Vec::new();
    for round in 1..=3 {
        for stream in &streams {
            let kept = history.append(stream, push(stream, "x"), at(round));
            let position = position(&kept);
            assert_eq!(position.offset, round, "{stream}");
            if round == 1 {
                epochs.push(position.epoch);
            } else {
                assert!(epochs.contains(&position.epoch));
            }
            // The publication is the push with its position, nothing else changed.
            assert_eq!(
                Publication {
                    position: None,
                    ..kept
                },
                push(stream, "x")
            );
        }
    }
    epochs.sort();
    epochs.dedup();
    assert_eq!(epochs.len(), streams.len(), "each stream has its own run");
    assert_eq!(history.streams(), 4);

    let read = history.read(&member("im", 2), None, usize::MAX, at(3));
    assert_eq!(offsets(&read), [1, 2, 3]);
    assert_eq!(read.first, Some(1));
    assert_eq!(read.top.unwrap().offset, 3);
    assert_eq!(
        read.publications[0].frame,
        push(&member("im", 2), "x").frame
    );
}

#[test]
fn an_app_without_history_gets_no_position_and_nothing_is_kept() {
    let mut policy = HistoryPolicy::default();
    policy
        .overrides
        .push((AppPattern::new("quiet-*"), limits(0, 60_000)));
    let mut history = History::new(policy, "e");
    let stream = topic("quiet-room");
    let kept = history.append(&stream, push(&stream, "x"), at(0));
    assert_eq!(kept, push(&stream, "x"));
    assert_eq!(history.streams(), 0);
    assert_eq!(history.bytes(), 0);
    assert_eq!(
        history.read(&stream, None, 10, at(0)),
        HistoryRead::default()
    );
}

#[test]
fn a_stream_keeps_its_newest_pushes_up_to_the_size() {
    let mut history = History::new(policy(3, 60_000, usize::MAX), "e");
    let stream = topic("match");
    let mut last = None;
    for i in 0..5 {
        last = Some(history.append(&stream, push(&stream, &format!("p{i}")), at(i)));
    }
    let top = position(&last.unwrap());
    let read = history.read(&stream, None, usize::MAX, at(5));
    assert_eq!(offsets(&read), [3, 4, 5]);
    assert_eq!(read.first, Some(3));
    assert_eq!(read.top, Some(top.clone()));
    assert_eq!(read.publications[0].frame, push(&stream, "p2").frame);

    // Reads after a position, limited, oldest first; nothing for another epoch.
    let from_3 = history.read(
        &stream,
        Some(&after(&Position::new(3, top.epoch.clone()))),
        1,
        at(5),
    );
    assert_eq!(offsets(&from_3), [4]);
    let other = after(&Position::new(3, Epoch::parse("other").unwrap()));
    let read = history.read(&stream, Some(&other), usize::MAX, at(5));
    assert!(read.publications.is_empty());
    assert!(!read.recovered(&other));
    // Too far back: offsets 1 and 2 are gone.
    let behind = after(&Position::new(1, top.epoch.clone()));
    let read = history.read(&stream, Some(&behind), usize::MAX, at(5));
    assert_eq!(offsets(&read), [3, 4, 5]);
    assert!(!read.recovered(&behind));
    let just = after(&Position::new(2, top.epoch));
    assert!(
        history
            .read(&stream, Some(&just), usize::MAX, at(5))
            .recovered(&just)
    );
}

#[test]
fn pushes_expire_after_their_apps_ttl_and_the_run_stays() {
    let mut policy = policy(10, 10_000, usize::MAX);
    policy
        .overrides
        .push((AppPattern::new("fast-*"), limits(10, 1_000)));
    let mut history = History::new(policy, "e");
    let (slow, fast) = (topic("slow"), topic("fast-lane"));
    for (text, time) in [("1", 0), ("2", 500)] {
        for stream in [&slow, &fast] {
            history.append(stream, push(stream, text), at(time));
        }
    }
    let full = history.bytes();

    history.expire(at(999));
    assert_eq!(history.bytes(), full, "nothing is 1 s old yet");
    history.expire(at(1_000));
    let read = history.read(&fast, None, usize::MAX, at(1_000));
    assert_eq!(
        offsets(&read),
        [2],
        "the first push of fast-lane is 1 s old"
    );
    assert_eq!(
        offsets(&history.read(&slow, None, usize::MAX, at(1_000))),
        [1, 2]
    );
    history.expire(at(1_500));
    let read = history.read(&fast, None, usize::MAX, at(1_500));
    assert!(read.publications.is_empty());
    assert_eq!(read.first, None);
    let top = read.top.clone().unwrap();
    assert_eq!(top.offset, 2, "the run outlives its pushes");
    // A client at the top missed nothing; one behind it cannot know.
    assert!(read.recovered(&after(&top)));
    assert!(!read.recovered(&after(&Position::new(1, top.epoch.clone()))));
    assert!(history.bytes() < full);

    history.expire(at(10_500));
    assert!(
        history
            .read(&slow, None, usize::MAX, at(10_500))
            .publications
            .is_empty()
    );
    assert_eq!(history.streams(), 2);
    let expired = history.bytes();
    // The run records alone are what remains; the next push continues the run.
    let next = history.append(&fast, push(&fast, "3"), at(10_600));
    assert_eq!(position(&next), Position::new(3, top.epoch));
    assert!(history.bytes() > expired);
}

#[test]
fn a_read_never_returns_what_outlived_its_ttl_even_before_expire_runs() {
    let mut history = History::new(policy(10, 1_000, usize::MAX), "e");
    let stream = topic("match");
    history.append(&stream, push(&stream, "old"), at(0));
    history.append(&stream, push(&stream, "new"), at(600));
    let read = history.read(&stream, None, usize::MAX, at(1_200));
    assert_eq!(offsets(&read), [2]);
}

/// Size 1, so every stream costs the same whatever it was sent: `max_bytes` holds three.
fn three_stream_history() -> (History, usize) {
    let mut probe = History::new(policy(1, 60_000, usize::MAX), "e");
    let stream = topic("a");
    probe.append(&stream, push(&stream, "x"), at(0));
    let one = probe.bytes();
    (History::new(policy(1, 60_000, 3 * one + one / 2), "e"), one)
}

#[test]
fn the_least_recently_written_streams_give_way_under_max_bytes() {
    let (mut history, one) = three_stream_history();
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(topic);
    history.append(&a, push(&a, "x"), at(0));
    let b_top = position(&history.append(&b, push(&b, "x"), at(1)));
    history.append(&c, push(&c, "x"), at(2));
    history.append(&a, push(&a, "x"), at(3)); // a is now the most recently written
    assert_eq!(history.bytes(), 3 * one);

    history.append(&d, push(&d, "x"), at(4));
    assert_eq!(history.streams(), 3);
    assert!(history.bytes() <= history.policy().max_bytes);
    let gone = history.read(&b, Some(&after(&b_top)), usize::MAX, at(4));
    assert_eq!(gone.top, None, "b, written least recently, gave way");
    assert!(!gone.recovered(&after(&b_top)));
    for kept in [&a, &c, &d] {
        assert!(history.read(kept, None, 1, at(4)).top.is_some(), "{kept}");
    }

    history.append(&e, push(&e, "x"), at(5));
    assert_eq!(history.read(&c, None, 1, at(5)).top, None, "then c");
    assert!(history.read(&a, None, 1, at(5)).top.is_some());

    // b starts a new run: offset 1 under a new epoch, and the old position does not recover.
    let again = position(&history.append(&b, push(&b, "x"), at(6)));
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, b_top.epoch);
    let read = history.read(&b, Some(&after(&b_top)), usize::MAX, at(6));
    assert!(read.publications.is_empty());
    assert!(!read.recovered(&after(&b_top)));
    assert_eq!(history.read(&a, None, 1, at(6)).top, None, "and then a");
    assert!(history.read(&d, None, 1, at(6)).top.is_some());
}

#[test]
fn streams_whose_pushes_expired_give_way_too() {
    let (mut history, one) = three_stream_history();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(topic);
    for (i, stream) in [&a, &b, &c].into_iter().enumerate() {
        history.append(stream, push(stream, "x"), at(i as u64));
    }
    history.expire(at(120_000));
    let runs = history.bytes();
    assert!(runs < 3 * one);
    assert_eq!(history.streams(), 3);
    // Run records are charged: new streams push the oldest out once they no longer fit.
    let mut evicted = 0;
    for (i, stream) in ["d1", "d2", "d3"].map(topic).iter().enumerate() {
        history.append(stream, push(stream, "x"), at(120_000 + i as u64));
        assert!(history.bytes() <= history.policy().max_bytes);
        evicted = 3 + i + 1 - history.streams();
    }
    assert!(evicted >= 2, "only {evicted} run records gave way");
    assert_eq!(
        history.read(&a, None, 1, at(130_000)).top,
        None,
        "a went first"
    );
    let _ = d;
}

#[test]
fn a_push_too_big_to_keep_moves_the_run_on_without_it() {
    let (mut history, one) = three_stream_history();
    let mut policy = history.policy().clone();
    policy.default.size = 10;
    history = History::new(policy, "e");
    let [a, b] = ["a", "b"].map(topic);
    history.append(&b, push(&b, "x"), at(0));
    history.append(&a, push(&a, "1"), at(1));
    let second = position(&history.append(&a, push(&a, "2"), at(2)));
    let big = "y".repeat(4 * one);
    let third = position(&history.append(&a, push(&a, &big), at(3)));
    assert_eq!(third, Position::new(3, second.epoch.clone()));
    assert!(history.bytes() <= history.policy().max_bytes);

    let read = history.read(&a, Some(&after(&second)), usize::MAX, at(3));
    assert_eq!(read.top, Some(third.clone()));
    assert!(read.publications.is_empty());
    assert!(!read.recovered(&after(&second)), "the big push is lost");
    assert!(read.recovered(&after(&third)));
    assert!(
        history.read(&b, None, 1, at(3)).top.is_some(),
        "b did not give way for it"
    );

    let fourth = position(&history.append(&a, push(&a, "4"), at(4)));
    let read = history.read(&a, Some(&after(&third)), usize::MAX, at(4));
    assert_eq!(offsets(&read), [4]);
    assert_eq!(read.top, Some(fourth));
    assert!(read.recovered(&after(&third)));
}

#[test]
fn recovered_says_whether_a_client_missed_nothing() {
    let e1 = Epoch::parse("e1").unwrap();
    let at_ = |offset| after(&Position::new(offset, e1.clone()));
    let stream = |first: Option<u64>| HistoryRead {
        top: Some(Position::new(10, e1.clone())),
        first,
        publications: Vec::new(),
    };
    let no_run = HistoryRead::default();
    let cases: [(&str, &HistoryRead, Since, bool); 12] = [
        ("no run, client saw nothing", &no_run, Since::Start, true),
        ("no run, client saw a push", &no_run, at_(3), false),
        (
            "start, history from 1",
            &stream(Some(1)),
            Since::Start,
            true,
        ),
        (
            "start, history from 2",
            &stream(Some(2)),
            Since::Start,
            false,
        ),
        ("start, nothing kept", &stream(None), Since::Start, false),
        ("at the top, nothing kept", &stream(None), at_(10), true),
        ("behind, history reaches", &stream(Some(5)), at_(4), true),
        (
            "behind, history reaches further",
            &stream(Some(1)),
            at_(4),
            true,
        ),
        ("too far back", &stream(Some(6)), at_(4), false),
        ("behind, nothing kept", &stream(None), at_(9), false),
        ("past the top", &stream(Some(1)), at_(11), false),
        (
            "another epoch",
            &stream(Some(1)),
            after(&Position::new(10, Epoch::parse("e0").unwrap())),
            false,
        ),
    ];
    for (case, read, since, recovered) in cases {
        assert_eq!(read.recovered(&since), recovered, "{case}");
    }
}

#[test]
fn the_clock_never_goes_back() {
    let mut history = History::new(policy(10, 1_000, usize::MAX), "e");
    let stream = topic("match");
    history.append(&stream, push(&stream, "1"), at(5_000));
    // An earlier time counts as 5 s: the push is not kept "from 0 s" and expires at 6 s.
    history.append(&stream, push(&stream, "2"), at(0));
    history.expire(at(5_999));
    assert_eq!(
        offsets(&history.read(&stream, None, usize::MAX, at(0))),
        [1, 2]
    );
    history.expire(at(6_000));
    assert!(
        history
            .read(&stream, None, usize::MAX, at(0))
            .publications
            .is_empty()
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        len: usize,
        dt: u64,
    },
    Read {
        stream: usize,
        since: usize,
        limit: usize,
    },
    Expire {
        dt: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..STREAMS, 0..400usize, 0..300u64)
            .prop_map(|(stream, len, dt)| Op::Append { stream, len, dt }),
        2 => (0..STREAMS, 0..8usize, 0..4usize)
            .prop_map(|(stream, since, limit)| Op::Read { stream, since, limit }),
        1 => (0..2_000u64).prop_map(|dt| Op::Expire { dt }),
    ]
}

const STREAMS: usize = 6;

fn stream_topic(i: usize) -> Topic {
    match i {
        0 => topic("a"),
        1 => topic("b-1"),
        2 => topic("b-2"),
        3 => member("im", 1),
        4 => member("im", 2),
        _ => topic("c"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever is appended, read and expired: `max_bytes` holds after every append; a read is
    /// the newest pushes of the stream's run, contiguous up to its top, each exactly as the
    /// append returned it, none older than its app's TTL nor more than its size; offsets grow
    /// by one within a run and a new run starts at 1 under an epoch never seen before; and
    /// "recovered" is only said when the read gives every push after the client's position.
    #[test]
    fn reads_are_contiguous_runs_ending_at_the_top_within_every_bound(
        size in 1..6usize,
        ttl in 200..3_000u64,
        b_size in 1..4usize,
        b_ttl in 50..1_000u64,
        max_bytes in 0..6_000usize,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut policy = policy(size, ttl, max_bytes);
        policy.overrides.push((AppPattern::new("b-*"), limits(b_size, b_ttl)));
        let mut history = History::new(policy.clone(), "e");
        let mut now = 0u64;
        // Every publication appended, by position, with its time; each stream's last position.
        let mut appended: HashMap<Position, (Publication, u64)> = HashMap::new();
        let mut last: HashMap<usize, Position> = HashMap::new();
        let mut seen: Vec<Position> = Vec::new();
        for op in ops {
            match op {
                Op::Append { stream, len, dt } => {
                    now += dt;
                    let topic = stream_topic(stream);
                    let kept = history.append(&topic, push(&topic, &"t".repeat(len)), at(now));
                    let pos = position(&kept);
                    match last.get(&stream) {
                        Some(prev) if prev.epoch == pos.epoch => {
                            prop_assert_eq!(pos.offset, prev.offset + 1);
                        }
                        _ => {
                            prop_assert_eq!(pos.offset, 1);
                            prop_assert!(!seen.iter().any(|p| p.epoch == pos.epoch));
                        }
                    }
                    prop_assert!(history.bytes() <= max_bytes, "{} > {}", history.bytes(), max_bytes);
                    last.insert(stream, pos.clone());
                    seen.push(pos.clone());
                    appended.insert(pos, (kept, now));
                }
                Op::Read { stream, since, limit } => {
                    let topic = stream_topic(stream);
                    let limits = policy.limits(topic.app());
                    let all = history.read(&topic, None, usize::MAX, at(now));
                    let Some(top) = all.top.clone() else {
                        prop_assert!(all.publications.is_empty() && all.first.is_none());
                        continue;
                    };
                    prop_assert_eq!(Some(&top), last.get(&stream));
                    prop_assert!(all.publications.len() <= limits.size);
                    prop_assert_eq!(all.first, all.publications.first().map(|p| position(p).offset));
                    let expected: Vec<u64> = match all.first {
                        Some(first) => (first..=top.offset).collect(),
                        None => Vec::new(),
                    };
                    prop_assert_eq!(offsets(&all), expected);
                    for kept in &all.publications {
                        let (publication, time) = &appended[&position(kept)];
                        prop_assert_eq!(kept, publication);
                        prop_assert!(now - time < u64::try_from(limits.ttl.as_millis()).unwrap());
                    }
                    // From some position the client may hold (or the start).
                    let since = match seen.get(since) {
                        Some(p) if since % 4 != 3 => Since::After(p.clone()),
                        _ => Since::Start,
                    };
                    let read = history.read(&topic, Some(&since), limit, at(now));
                    prop_assert_eq!(&read.top, &all.top);
                    let wanted: Vec<u64> = match HistoryRead::start_after(&since, &top) {
                        Some(after) => offsets(&all).into_iter().filter(|o| *o > after).take(limit).collect(),
                        None => Vec::new(),
                    };
                    prop_assert_eq!(offsets(&read), wanted);
                    if read.recovered(&since) {
                        // Everything after the client's position is in the history.
                        let after = since.offset();
                        let whole = history.read(&topic, Some(&since), usize::MAX, at(now));
                        let missed: Vec<u64> = (after + 1..=top.offset).collect();
                        prop_assert_eq!(offsets(&whole), missed);
                    }
                }
                Op::Expire { dt } => {
                    now += dt;
                    history.expire(at(now));
                }
            }
            prop_assert!(history.bytes() <= max_bytes);
        }
    }
}
