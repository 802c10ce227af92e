//! The rules of PROTOCOL.md Part 1, checked on the hub alone: no sockets, no runtime.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic where it happens

mod common;

use std::collections::HashSet;

use gateway_core::{
    Action, AppName, AuthOutcome, CloseCode, ConnId, Hub, HubConfig, Identity, Input,
    PrivateAccess, Reply,
};

/// Drives a hub the way the server does and collects what it asks for.
use common::*;

// --- authentication -------------------------------------------------------------------------

#[test]
fn anonymous_auth_says_hello_stranger() {
    let mut t = TestHub::new();
    assert_eq!(
        t.auth(1, AuthOutcome::Anonymous),
        [reply(1, Reply::HelloStranger)]
    );
    assert_eq!(t.hub.identity(ConnId::new(1)), Some(Identity::Anonymous));
}

#[test]
fn accepted_member_says_hello_with_the_member_id() {
    let mut t = TestHub::new();
    assert_eq!(
        t.auth(1, AuthOutcome::accepted(member(123456))),
        [reply(1, Reply::HelloMember(member(123456)))]
    );
    assert_eq!(
        t.hub.identity(ConnId::new(1)),
        Some(Identity::Member(member(123456)))
    );
}

#[test]
fn refused_member_gets_401_and_continues_as_anonymous() {
    let mut t = TestHub::new();
    assert_eq!(
        t.auth(1, AuthOutcome::Refused),
        [reply(1, Reply::Unauthorized)]
    );
    assert_eq!(t.hub.identity(ConnId::new(1)), Some(Identity::Anonymous));
    // Still connected: a public app works, a private one is forbidden.
    assert_eq!(
        t.subscribe(1, "match"),
        [reply(1, Reply::Subscribed(app("match")))]
    );
    assert_eq!(
        t.subscribe(1, "im"),
        [reply(1, Reply::SubscribeForbidden(app("im")))]
    );
}

#[test]
fn missing_auth_replies_400_then_closes_without_registering() {
    let mut t = TestHub::new();
    assert_eq!(
        t.auth(1, AuthOutcome::Missing),
        [
            reply(1, Reply::MissingAuth),
            Action::Close {
                conn: ConnId::new(1),
                code: CloseCode::MissingAuth
            }
        ]
    );
    assert_eq!(t.hub.connection_count(), 0);
    // A message that races the close is not answered.
    assert_eq!(t.subscribe(1, "match"), []);
}

#[test]
fn auth_timeout_replies_400_then_closes_with_its_own_code() {
    let mut t = TestHub::new();
    assert_eq!(
        t.auth(1, AuthOutcome::TimedOut),
        [
            reply(1, Reply::MissingAuth),
            Action::Close {
                conn: ConnId::new(1),
                code: CloseCode::AuthTimeout
            }
        ]
    );
    assert_eq!(t.hub.connection_count(), 0);
}

#[test]
fn a_second_auth_of_the_same_connection_is_ignored() {
    let mut t = TestHub::new();
    t.anonymous(1);
    assert_eq!(t.auth(1, AuthOutcome::accepted(member(5))), []);
    assert_eq!(t.hub.identity(ConnId::new(1)), Some(Identity::Anonymous));
}

// --- subscriptions --------------------------------------------------------------------------

#[test]
fn subscribe_success_for_public_apps_from_anyone() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.member(2, 7);
    assert_eq!(
        t.subscribe(1, "match"),
        [reply(1, Reply::Subscribed(app("match")))]
    );
    assert_eq!(
        t.subscribe(2, "match"),
        [reply(2, Reply::Subscribed(app("match")))]
    );
}

#[test]
fn bad_subscribe_messages_get_400_and_the_connection_stays() {
    let mut t = TestHub::new();
    t.anonymous(1);
    for payload in [
        "",
        "match",
        "[]",
        "{}",
        r#"{"app":""}"#,
        r#"{"app":5}"#,
        r#"{"app":null}"#,
        r#"{"apps":"match"}"#,
        // A second auth message after authentication is just a bad subscribe message.
        r#"{"member_id":123456,"token":"654321"}"#,
    ] {
        assert_eq!(
            t.send(1, payload),
            [reply(1, Reply::BadSubscribe)],
            "payload {payload:?}"
        );
    }
    assert_eq!(
        t.subscribe(1, "match"),
        [reply(1, Reply::Subscribed(app("match")))]
    );
}

#[test]
fn too_long_app_names_are_bad_subscribe_messages() {
    let mut t = TestHub::with_config(HubConfig {
        max_app_name_len: 5,
        ..HubConfig::default()
    });
    t.anonymous(1);
    assert_eq!(
        t.subscribe(1, "12345"),
        [reply(1, Reply::Subscribed(app("12345")))]
    );
    assert_eq!(t.subscribe(1, "123456"), [reply(1, Reply::BadSubscribe)]);
}

#[test]
fn private_app_is_forbidden_to_anonymous_and_allowed_to_members() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.member(2, 7);
    assert_eq!(
        t.subscribe(1, "im"),
        [reply(1, Reply::SubscribeForbidden(app("im")))]
    );
    assert_eq!(
        t.subscribe(2, "im"),
        [reply(2, Reply::Subscribed(app("im")))]
    );
    assert_eq!(t.stat(), "im 1\n");
}

#[test]
fn duplicate_subscribe_repeats_the_reply_but_delivers_once() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.member(2, 7);
    for _ in 0..3 {
        assert_eq!(
            t.subscribe(1, "match"),
            [reply(1, Reply::Subscribed(app("match")))]
        );
        assert_eq!(
            t.subscribe(2, "im"),
            [reply(2, Reply::Subscribed(app("im")))]
        );
    }
    assert_eq!(t.push("match", -1, "x").0, [1]);
    assert_eq!(t.push("im", 7, "x").0, [2]);
    assert_eq!(t.stat(), "im 1\nmatch 1\n");
    // One disconnect removes the (single) subscription.
    t.disconnect(1);
    t.disconnect(2);
    assert_eq!(t.stat(), "");
}

#[test]
fn private_apps_are_configuration() {
    let mut t = TestHub::with_config(HubConfig {
        private_apps: HashSet::from([app("secret")]),
        ..HubConfig::default()
    });
    t.anonymous(1);
    assert_eq!(
        t.subscribe(1, "im"),
        [reply(1, Reply::Subscribed(app("im")))]
    );
    assert_eq!(
        t.subscribe(1, "secret"),
        [reply(1, Reply::SubscribeForbidden(app("secret")))]
    );
}

#[test]
fn messages_from_unknown_connections_are_ignored() {
    let mut t = TestHub::new();
    assert_eq!(t.subscribe(9, "match"), []);
    assert_eq!(t.disconnect(9), []);
}

// --- routing --------------------------------------------------------------------------------

#[test]
fn public_push_fans_out_to_every_subscriber_and_nobody_else() {
    let mut t = TestHub::new();
    for conn in 1..=5 {
        t.anonymous(conn);
    }
    t.member(6, 7);
    for conn in [1, 2, 3, 6] {
        t.subscribe(conn, "match");
    }
    t.subscribe(4, "chat");
    let (conns, frame) = t.push("match", -1, r#"{"hello":"world"}"#);
    assert_eq!(conns, [1, 2, 3, 6]);
    assert_eq!(
        frame.unwrap().as_str(),
        r#"{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}"#
    );
}

#[test]
fn public_push_carries_member_id_through() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.subscribe(1, "match");
    let (conns, frame) = t.push("match", 42, "x");
    assert_eq!(conns, [1]);
    assert_eq!(
        frame.unwrap().as_str(),
        r#"{"app":"match","member_id":42,"text":"x"}"#
    );
}

#[test]
fn push_to_an_app_without_subscribers_delivers_nothing() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.subscribe(1, "match");
    assert_eq!(t.push("chat", -1, "x"), (vec![], None));
}

#[test]
fn private_push_reaches_only_that_members_connections() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.member(3, 8);
    t.member(4, 7); // member 7, but not subscribed to im
    for conn in [1, 2, 3] {
        t.subscribe(conn, "im");
    }
    let (conns, frame) = t.push("im", 7, "hi");
    assert_eq!(conns, [1, 2]);
    assert_eq!(
        frame.unwrap().as_str(),
        r#"{"app":"im","member_id":7,"text":"hi"}"#
    );
    assert_eq!(t.push("im", 8, "hi").0, [3]);
    assert_eq!(t.push("im", 9, "hi").0, Vec::<u64>::new());
    assert_eq!(t.push("im", -1, "hi").0, Vec::<u64>::new());
    assert_eq!(t.push("im", 0, "hi").0, Vec::<u64>::new());
}

// --- counts and cleanup ---------------------------------------------------------------------

#[test]
fn stat_counts_connections_for_public_and_members_for_private_sorted() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.member(3, 8);
    t.anonymous(4);
    for conn in [1, 2, 3] {
        t.subscribe(conn, "im");
    }
    for conn in [1, 2, 4] {
        t.subscribe(conn, "match");
    }
    t.subscribe(4, "chat");
    assert_eq!(t.stat(), "chat 1\nim 2\nmatch 3\n");
    assert_eq!(t.hub.stat().count("im"), 2);
    assert_eq!(t.hub.stat().count("nope"), 0);
}

#[test]
fn disconnect_removes_the_connection_from_every_app_at_once() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    for app in ["im", "match", "chat"] {
        t.subscribe(1, app);
    }
    t.subscribe(2, "im");
    assert_eq!(t.stat(), "chat 1\nim 1\nmatch 1\n");
    assert_eq!(t.disconnect(1), []);
    // Member 7 still has connection 2 on im.
    assert_eq!(t.stat(), "im 1\n");
    assert_eq!(t.push("im", 7, "x").0, [2]);
    assert_eq!(t.push("match", -1, "x").0, Vec::<u64>::new());
    t.disconnect(2);
    assert_eq!(t.stat(), "");
    assert_eq!(t.hub.connection_count(), 0);
}

#[test]
fn a_full_outbox_closes_that_connection_alone() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.anonymous(2);
    t.subscribe(1, "match");
    t.subscribe(2, "match");
    t.hub.handle(Input::OutboxFull {
        conn: ConnId::new(1),
    });
    assert_eq!(
        t.drain(),
        [Action::Close {
            conn: ConnId::new(1),
            code: CloseCode::SlowConsumer
        }]
    );
    assert_eq!(t.push("match", -1, "x").0, [2]);
    assert_eq!(t.stat(), "match 1\n");
    // Reported twice (two pushes overflowed before the close): closed once.
    t.hub.handle(Input::OutboxFull {
        conn: ConnId::new(1),
    });
    assert_eq!(t.drain(), []);
}

#[test]
fn a_member_restricted_to_some_private_apps_is_forbidden_the_others() {
    let mut t = TestHub::with_config(HubConfig {
        private_apps: HashSet::from([app("im"), app("dm")]),
        ..HubConfig::default()
    });
    t.auth(
        1,
        AuthOutcome::Accepted {
            member: member(7),
            access: PrivateAccess::Only(vec![app("dm")].into()),
        },
    );
    assert_eq!(
        t.subscribe(1, "dm"),
        [reply(1, Reply::Subscribed(app("dm")))]
    );
    assert_eq!(
        t.subscribe(1, "im"),
        [reply(1, Reply::SubscribeForbidden(app("im")))]
    );
    // Public apps are not restricted.
    assert_eq!(
        t.subscribe(1, "match"),
        [reply(1, Reply::Subscribed(app("match")))]
    );
}

#[test]
fn the_subscription_limit_holds_at_its_boundary_and_repeats_stay_idempotent() {
    let mut t = TestHub::with_config(HubConfig {
        max_subscriptions: 2,
        ..HubConfig::default()
    });
    t.member(1, 7);
    t.subscribe(1, "a");
    t.subscribe(1, "im");
    assert_eq!(t.subscribe(1, "c"), [reply(1, Reply::TooManySubscriptions)]);
    // Repeating a held subscription is still a success.
    assert_eq!(t.subscribe(1, "a"), [reply(1, Reply::Subscribed(app("a")))]);
    assert_eq!(t.stat(), "a 1\nim 1\n");
}

// --- /stat a page at a time ----------------------------------------------------------------

/// Every page from the start, each resumed after the previous one, rendered and joined.
fn all_pages(hub: &Hub, limit: usize) -> (String, usize) {
    let (mut text, mut pages) = (String::new(), 0);
    let mut after: Option<AppName> = None;
    loop {
        let page = hub.stat_page(after.as_ref(), limit);
        pages += 1;
        text.push_str(&page.to_string());
        match page.resume_after() {
            // A cursor that does not move would loop forever.
            Some(last) if after.as_ref() == Some(last) => {
                panic!("the page after {last:?} is itself")
            }
            Some(last) => after = Some(last.clone()),
            None => return (text, pages),
        }
    }
}

#[test]
fn stat_pages_resume_after_a_name_and_join_to_the_whole_stat() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.anonymous(2);
    t.subscribe(1, "im");
    for app in ["e", "b", "a", "d", "c", "B", "é"] {
        t.subscribe(2, app);
    }
    // Byte order: upper case before lower case, non-ASCII last.
    let whole = "B 1\na 1\nb 1\nc 1\nd 1\ne 1\nim 1\né 1\n";
    assert_eq!(t.stat(), whole);
    assert_eq!(all_pages(&t.hub, 3), (whole.to_owned(), 3));
    assert_eq!(all_pages(&t.hub, 8), (whole.to_owned(), 1));
    assert_eq!(all_pages(&t.hub, 1000), (whole.to_owned(), 1));
    // A limit of 0 still makes progress.
    assert_eq!(all_pages(&t.hub, 0), (whole.to_owned(), 8));

    let page = t.hub.stat_page(Some(&app("c")), 2);
    assert_eq!(page.to_string(), "d 1\ne 1\n");
    assert!(page.more);
    assert_eq!(page.resume_after(), Some(&app("e")));
    // Resuming after a name that is not (or no longer) an app starts at the next one.
    assert_eq!(
        t.hub.stat_page(Some(&app("cc")), 2).to_string(),
        "d 1\ne 1\n"
    );
    let last = t.hub.stat_page(Some(&app("im")), 2);
    assert_eq!((last.to_string().as_str(), last.more), ("é 1\n", false));
    assert_eq!(last.resume_after(), None);
    let past_the_end = t.hub.stat_page(Some(&app("ü")), 2);
    assert_eq!((past_the_end.apps.len(), past_the_end.more), (0, false));
}

#[test]
fn stat_pages_see_apps_dropped_and_added_between_pages_by_their_place() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.anonymous(2);
    for app in ["a", "b", "c", "d"] {
        t.subscribe(1, app);
    }
    t.subscribe(2, "b");
    let first = t.hub.stat_page(None, 2);
    assert_eq!(first.to_string(), "a 1\nb 2\n");
    // Between pages: `b` (already read) loses a subscriber, `c` (not yet read) and `a` lose
    // their only one, `bb` appears after the cursor and `0` before it.
    t.disconnect(1);
    t.subscribe(2, "bb");
    t.subscribe(2, "0");
    assert_eq!(t.stat(), "0 1\nb 1\nbb 1\n");
    let second = t.hub.stat_page(first.resume_after(), 2);
    assert_eq!(second.to_string(), "bb 1\n");
    assert!(!second.more);
}

#[test]
fn stat_pages_leave_out_apps_whose_last_subscriber_left() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.anonymous(2);
    t.subscribe(1, "im");
    t.subscribe(2, "a");
    t.subscribe(2, "z");
    t.disconnect(1);
    assert_eq!(all_pages(&t.hub, 1), ("a 1\nz 1\n".to_owned(), 2));
    let page = t.hub.stat_page(Some(&app("a")), 5);
    assert_eq!(page.apps, vec![(app("z"), 1)]);
}
