//! Interest: what a node tells its broker (first local subscriber of a topic, last one gone),
//! and the other seams a driver relaying pushes between nodes needs.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use gateway_core::{Action, ConnId, Input, Publication, PushMessage, Reply, Timestamp, Topic};

/// Drives a hub the way the server does and collects what it asks for.
use common::*;

fn public(name: &str) -> Topic {
    Topic::App(app(name))
}

fn private(name: &str, id: i64) -> Topic {
    Topic::Member {
        app: app(name),
        member: member(id),
    }
}

#[test]
fn interest_in_a_public_app_comes_with_its_first_subscriber_and_goes_with_its_last() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.anonymous(2);
    t.subscribe(1, "match");
    assert_eq!(
        t.take_interest_log(),
        [Action::InterestGained(public("match"))]
    );
    t.subscribe(2, "match");
    t.subscribe(1, "match");
    assert_eq!(
        t.take_interest_log(),
        [],
        "not again for a second subscriber"
    );
    t.disconnect(1);
    assert_eq!(t.take_interest_log(), [], "one subscriber is left");
    t.disconnect(2);
    assert_eq!(
        t.take_interest_log(),
        [Action::InterestLost(public("match"))]
    );
    assert!(t.interest.is_empty());
}

#[test]
fn interest_is_declared_before_the_reply_that_confirms_the_subscription() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.hub.handle(Input::Message {
        conn: ConnId::new(1),
        payload: br#"{"app":"match"}"#,
    });
    let actions: Vec<Action> = std::iter::from_fn(|| t.hub.poll_action()).collect();
    assert_eq!(
        actions,
        [
            Action::InterestGained(public("match")),
            Action::Subscribed {
                conn: ConnId::new(1),
                topic: public("match"),
                frame: Reply::Subscribed(app("match")).frame(),
                recovery: None,
            },
        ]
    );
}

#[test]
fn the_subscribe_reply_names_the_topic_it_confirms() {
    let mut t = TestHub::new();
    t.member(1, 7);
    for (payload, topic) in [
        (&br#"{"app":"im"}"#[..], private("im", 7)),
        (br#"{"app":"match"}"#, public("match")),
        // Again: the reply again, for the same topic (still to be held if not live yet).
        (br#"{"app":"im"}"#, private("im", 7)),
    ] {
        t.hub.handle(Input::Message {
            conn: ConnId::new(1),
            payload,
        });
        let subscribed: Vec<Topic> = std::iter::from_fn(|| t.hub.poll_action())
            .filter_map(|action| match action {
                Action::Subscribed { topic, .. } => Some(topic),
                _ => None,
            })
            .collect();
        assert_eq!(subscribed, [topic]);
    }
}

#[test]
fn interest_in_a_private_app_is_per_member() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.member(3, 8);
    t.anonymous(4);
    t.subscribe(1, "im");
    t.subscribe(2, "im");
    t.subscribe(3, "im");
    t.subscribe(4, "im"); // forbidden: no interest
    assert_eq!(
        t.take_interest_log(),
        [
            Action::InterestGained(private("im", 7)),
            Action::InterestGained(private("im", 8)),
        ]
    );
    t.disconnect(1);
    assert_eq!(t.take_interest_log(), [], "member 7 still has a connection");
    // A slow consumer's removal counts like a disconnect.
    t.hub.handle(Input::OutboxFull {
        conn: ConnId::new(2),
    });
    t.drain();
    assert_eq!(
        t.take_interest_log(),
        [Action::InterestLost(private("im", 7))]
    );
    assert_eq!(t.interest, BTreeSet::from([private("im", 8)]));
    assert_eq!(
        t.hub.interests().collect::<BTreeSet<_>>(),
        BTreeSet::from([private("im", 8)])
    );
}

#[test]
fn a_publication_is_addressed_to_its_app_or_to_its_member_in_a_private_app() {
    let t = TestHub::new();
    let publication = |name: &str, member_id| {
        Publication::from(PushMessage {
            app: app(name),
            member_id,
            text: "x".to_owned(),
        })
    };
    assert_eq!(
        t.hub.topic_of(&publication("match", -1)),
        Some(public("match"))
    );
    assert_eq!(
        t.hub.topic_of(&publication("match", 5)),
        Some(public("match"))
    );
    assert_eq!(
        t.hub.topic_of(&publication("im", 5)),
        Some(private("im", 5))
    );
    assert_eq!(
        t.hub.topic_of(&publication("im", -1)),
        None,
        "nobody can receive it"
    );
    assert_eq!(t.hub.topic_of(&publication("im", 0)), None);
}

#[test]
fn time_is_what_the_driver_says_and_never_goes_back() {
    let mut t = TestHub::new();
    assert_eq!(t.hub.now(), Timestamp::default());
    t.hub.handle(Input::Tick {
        now: Timestamp::from_millis(5_000),
    });
    t.hub.handle(Input::Tick {
        now: Timestamp::from_millis(4_000),
    });
    assert_eq!(t.hub.now(), Timestamp::from_millis(5_000));
    assert!(t.drain().is_empty(), "time alone asks for nothing");
}

#[test]
fn the_subscribers_page_lists_private_members_and_counts_public_connections() {
    use gateway_core::AppSubscribers;
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.member(3, 9);
    for conn in 1..=3 {
        t.subscribe(conn, "im");
        t.subscribe(conn, "match");
    }
    let page = t.hub.subscribers_page(None, 10, 100);
    assert!(!page.more);
    assert_eq!(page.apps.len(), 2);
    let (name, AppSubscribers::Members(members)) = &page.apps[0] else {
        panic!("{page:?}")
    };
    let members: BTreeSet<i64> = members.iter().map(|m| m.get()).collect();
    assert_eq!((name.as_str(), members), ("im", BTreeSet::from([7, 9])));
    assert_eq!(page.apps[1], (app("match"), AppSubscribers::Connections(3)));
    let first = t.hub.subscribers_page(None, 1, 100);
    assert!(first.more);
    let rest = t.hub.subscribers_page(first.resume_after(), 1, 100);
    assert_eq!(rest.apps[0].0, app("match"));
    assert!(!rest.more);
    // Past the listing bound, a private app is only counted.
    let counted = t.hub.subscribers_page(None, 1, 1);
    assert_eq!(counted.apps[0], (app("im"), AppSubscribers::MemberCount(2)));
}
