//! The extensions of `docs/protocol.md` Part 2 that clients and backends use on the hub:
//! unsubscribe, ping, unknown actions, a backend disconnecting a member, and presence.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic where it happens

mod common;

use gateway_core::{Action, AppName, CloseCode, ConnId, Reply, Topic};

use common::*;

fn unsubscribe(t: &mut TestHub, conn: u64, app: &str) -> Vec<Action> {
    t.send(
        conn,
        &format!(r#"{{"app":"{app}","action":"unsubscribe"}}"#),
    )
}

#[test]
fn unsubscribe_replies_and_no_later_push_reaches_the_connection() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.anonymous(2);
    t.subscribe(1, "match");
    t.subscribe(2, "match");
    assert_eq!(
        unsubscribe(&mut t, 1, "match"),
        [reply(1, Reply::Unsubscribed(app("match")))]
    );
    assert_eq!(t.push("match", -1, "goal").0, [2]);
    assert_eq!(t.stat(), "match 1\n");
    // Subscribing again works as the first time did.
    t.subscribe(1, "match");
    assert_eq!(t.push("match", -1, "goal").0, [1, 2]);
}

#[test]
fn unsubscribing_what_is_not_subscribed_is_answered_and_changes_nothing() {
    let mut t = TestHub::new();
    t.anonymous(1);
    t.subscribe(1, "match");
    for app_name in ["chat", "im"] {
        assert_eq!(
            unsubscribe(&mut t, 1, app_name),
            [reply(1, Reply::NotSubscribed(app(app_name)))]
        );
    }
    unsubscribe(&mut t, 1, "match");
    assert_eq!(
        unsubscribe(&mut t, 1, "match"),
        [reply(1, Reply::NotSubscribed(app("match")))]
    );
    assert_eq!(t.stat(), "");
}

#[test]
fn the_last_unsubscribe_of_a_topic_gives_up_its_interest() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.subscribe(1, "im");
    t.subscribe(2, "im");
    t.subscribe(1, "match");
    t.take_interest_log();
    unsubscribe(&mut t, 1, "im");
    assert!(
        t.take_interest_log().is_empty(),
        "member 7 still has conn 2 on im"
    );
    unsubscribe(&mut t, 2, "im");
    unsubscribe(&mut t, 1, "match");
    assert_eq!(
        t.take_interest_log(),
        [
            Action::InterestLost(Topic::Member {
                app: app("im"),
                member: member(7)
            }),
            Action::InterestLost(Topic::App(app("match"))),
        ]
    );
    assert_eq!(t.push("im", 7, "hi").0, Vec::<u64>::new());
}

#[test]
fn unsubscribe_frees_room_under_the_subscription_limit() {
    let mut t = TestHub::with_config(gateway_core::HubConfig {
        max_subscriptions: 1,
        ..Default::default()
    });
    t.anonymous(1);
    t.subscribe(1, "a");
    assert_eq!(t.subscribe(1, "b"), [reply(1, Reply::TooManySubscriptions)]);
    unsubscribe(&mut t, 1, "a");
    assert_eq!(t.subscribe(1, "b"), [reply(1, Reply::Subscribed(app("b")))]);
}

#[test]
fn the_gateways_own_channel_names_are_forbidden_to_clients() {
    let mut t = TestHub::new();
    t.member(1, 7);
    for name in ["$ws-gateway/control", "$ws-gateway/reply/node-a:5000"] {
        assert_eq!(
            t.subscribe(1, name),
            [reply(1, Reply::SubscribeForbidden(app(name)))]
        );
    }
    assert!(t.interest.is_empty());
    // Only the prefix is reserved.
    assert_eq!(
        t.subscribe(1, "$ws-gateway"),
        [reply(1, Reply::Subscribed(app("$ws-gateway")))]
    );
}

#[test]
fn ping_is_answered_with_pong_and_unknown_actions_change_nothing() {
    let mut t = TestHub::new();
    t.anonymous(1);
    assert_eq!(t.send(1, r#"{"action":"ping"}"#), [reply(1, Reply::Pong)]);
    for unknown in [
        r#"{"app":"match","action":"publish"}"#,
        r#"{"app":"match","action":"UNSUBSCRIBE"}"#,
    ] {
        assert_eq!(t.send(1, unknown), [reply(1, Reply::UnknownAction)]);
    }
    assert_eq!(t.stat(), "", "an unknown action must not subscribe");
    assert_eq!(
        t.send(1, r#"{"app":"match","action":7}"#),
        [reply(1, Reply::BadSubscribe)]
    );
}

#[test]
fn disconnecting_a_member_closes_its_connections_only() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.member(3, 8);
    t.anonymous(4);
    for conn in 1..=4 {
        t.subscribe(conn, "match");
    }
    assert_eq!(t.hub.disconnect_member(member(7), None), 2);
    let mut closed: Vec<Action> = t.drain();
    closed.sort_by_key(|a| format!("{a:?}"));
    let close = |conn| Action::Close {
        conn: ConnId::new(conn),
        code: CloseCode::Disconnected,
    };
    assert_eq!(closed, [close(1), close(2)]);
    assert_eq!(t.push("match", -1, "x").0, [3, 4]);
    assert_eq!(t.hub.connection_count(), 2);
    // An unknown member, or one already gone: nothing to do.
    assert_eq!(t.hub.disconnect_member(member(7), None), 0);
    assert_eq!(t.hub.disconnect_member(member(99), None), 0);
    assert!(t.drain().is_empty());
}

#[test]
fn disconnecting_a_member_from_one_app_unsubscribes_and_tells_them() {
    let mut t = TestHub::new();
    t.member(1, 7);
    t.member(2, 7);
    t.member(3, 8);
    t.subscribe(1, "im");
    t.subscribe(1, "match");
    t.subscribe(2, "match"); // not on im: nothing to tell
    t.subscribe(3, "im");
    assert_eq!(t.hub.disconnect_member(member(7), Some(&app("im"))), 1);
    assert_eq!(
        t.drain(),
        [reply(1, Reply::UnsubscribedByServer(app("im")))]
    );
    assert_eq!(t.push("im", 7, "x").0, Vec::<u64>::new());
    assert_eq!(t.push("match", -1, "x").0, [1, 2]);
    assert_eq!(t.push("im", 8, "x").0, [3]);
}

#[test]
fn presence_lists_members_in_pages_and_each_members_apps() {
    let mut t = TestHub::new();
    // Members 5, 3, 9 on a public app (5 twice), an anonymous one, member 3 on im too.
    for (conn, id) in [(1, 5), (2, 3), (3, 9), (4, 5)] {
        t.member(conn, id);
        t.subscribe(conn, "match");
    }
    t.anonymous(5);
    t.subscribe(5, "match");
    t.subscribe(2, "im");
    let page = t.hub.app_members(&app("match"), None, 2);
    assert_eq!(page.members, [member(3), member(5)]);
    assert!(page.more);
    let page = t.hub.app_members(&app("match"), Some(member(5)), 2);
    assert_eq!(page.members, [member(9)]);
    assert!(!page.more);
    assert_eq!(t.hub.app_members(&app("im"), None, 10).members, [member(3)]);
    assert!(
        t.hub
            .app_members(&app("nobody"), None, 10)
            .members
            .is_empty()
    );

    let presence = t.hub.member_presence(member(3)).unwrap();
    assert_eq!(presence.connections, 1);
    assert_eq!(presence.apps, [app("im"), app("match")]);
    assert_eq!(t.hub.member_presence(member(5)).unwrap().connections, 2);
    t.disconnect(1);
    t.disconnect(4);
    assert_eq!(t.hub.member_presence(member(5)), None);
    let names: Vec<&str> = presence.apps.iter().map(AppName::as_str).collect();
    assert_eq!(names, ["im", "match"]);
}
