//! What subscriptions cost in memory, counted exactly: a global allocator that tracks the bytes
//! this thread holds (requested sizes, without the allocator's own overhead).
//!
//! A subscription to an app that exists must cost a few dozen bytes (a refcount of the app's
//! name and a slot in its subscriber set), not a copy of the name; and a hub whose clients left
//! must give the memory of its tables back.

#![allow(clippy::unwrap_used)]
// tests: a failure should panic where it happens

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live_bytes;
use gateway_core::{AuthOutcome, ConnId, Hub, HubConfig, Input, MemberId};

/// A 128-byte app name (the default maximum), the case where copying it hurt most.
fn long_name(i: usize) -> String {
    format!("{i:x>128}")
}

fn connect(hub: &mut Hub, conn: u64, outcome: AuthOutcome) {
    hub.handle(Input::Authenticated {
        conn: ConnId::new(conn),
        outcome,
    });
    while hub.poll_action().is_some() {}
}

fn subscribe(hub: &mut Hub, conn: u64, app: &str) {
    hub.handle(Input::Message {
        conn: ConnId::new(conn),
        payload: format!(r#"{{"app":"{app}"}}"#).as_bytes(),
    });
    // The reply is dropped at once, as the driver would after queueing it.
    while hub.poll_action().is_some() {}
}

fn disconnect(hub: &mut Hub, conn: u64) {
    hub.handle(Input::Disconnected {
        conn: ConnId::new(conn),
    });
    while hub.poll_action().is_some() {}
}

/// 1,000 connections × 64 subscriptions to apps that exist: each subscription stores the
/// app's name as a refcount (16 bytes in the connection's list) plus one slot in the app's
/// subscriber set (~18 bytes here, between 10 and 37 depending on how full the table is).
/// Copying the name, as the hub once did, cost 144 bytes more per subscription.
#[test]
fn a_subscription_to_an_existing_app_costs_a_refcount_not_a_copy_of_the_name() {
    const CONNS: u64 = 1_000;
    const APPS: usize = 64;
    let mut hub = Hub::new(HubConfig::default());
    // Connection 0 creates the apps; the others are registered before counting starts, so
    // only their subscriptions are counted.
    for conn in 0..=CONNS {
        connect(&mut hub, conn, AuthOutcome::Anonymous);
    }
    for i in 0..APPS {
        subscribe(&mut hub, 0, &long_name(i));
    }

    let before = live_bytes();
    for conn in 1..=CONNS {
        for i in 0..APPS {
            subscribe(&mut hub, conn, &long_name(i));
        }
    }
    let per_subscription = (live_bytes() - before) / (CONNS as isize * APPS as isize);
    eprintln!("public: {per_subscription} bytes per subscription to an existing app");

    assert_eq!(hub.stat().count(&long_name(0)), CONNS as usize + 1);
    assert!(
        per_subscription <= 40,
        "a subscription to an existing app holds {per_subscription} bytes"
    );
}

/// Private apps keep subscribers per member; the name is shared the same way.
#[test]
fn a_private_subscription_shares_the_name_too() {
    const CONNS: u64 = 1_000;
    let config = HubConfig {
        private_apps: [long_name(0)]
            .iter()
            .map(|name| gateway_core::AppName::parse(name, 128).unwrap())
            .collect(),
        ..HubConfig::default()
    };
    let mut hub = Hub::new(config);
    for conn in 0..=CONNS {
        let member = MemberId::new(1 + conn as i64 % 10).unwrap();
        connect(&mut hub, conn, AuthOutcome::accepted(member));
    }
    subscribe(&mut hub, 0, &long_name(0));

    let before = live_bytes();
    for conn in 1..=CONNS {
        subscribe(&mut hub, conn, &long_name(0));
    }
    // The first subscription of each connection also allocates its list (4 names, 64 bytes);
    // each member's list of connections holds 8 bytes per connection.
    let per_subscription = (live_bytes() - before) / CONNS as isize;
    eprintln!("private: {per_subscription} bytes per subscription to an existing app");
    assert_eq!(hub.stat().count(&long_name(0)), 10);
    assert!(
        per_subscription <= 96,
        "a private subscription holds {per_subscription} bytes"
    );
}

/// Everyone leaves: the hub is back to (almost) the bytes it held empty, not to the size of
/// its tables at the peak.
#[test]
fn a_hub_gives_its_memory_back_after_every_client_left() {
    let mut hub = Hub::new(HubConfig::default());
    let empty = live_bytes();
    for conn in 0..2_000 {
        connect(&mut hub, conn, AuthOutcome::Anonymous);
        for i in 0..16 {
            // Half the apps are shared by everyone, half are the connection's own.
            subscribe(&mut hub, conn, &format!("shared-{i}"));
            subscribe(&mut hub, conn, &format!("own-{conn}-{i}"));
        }
    }
    let peak = live_bytes() - empty;
    for conn in 0..2_000 {
        disconnect(&mut hub, conn);
    }
    let left = live_bytes() - empty;
    eprintln!("peak {peak} bytes, {left} left after every client left");

    assert_eq!(hub.stat().to_string(), "");
    assert!(
        peak > 1_000_000,
        "the peak ({peak} bytes) is too small to tell"
    );
    assert!(
        left <= 8 * 1024,
        "{left} bytes left after every client left"
    );
}

/// A popular app that most of its subscribers left shrinks its subscriber set, so a push to
/// it no longer walks (and the hub no longer holds) a table sized for the peak.
#[test]
fn an_app_that_most_subscribers_left_shrinks() {
    let mut hub = Hub::new(HubConfig::default());
    let empty = live_bytes();
    for conn in 0..10 {
        connect(&mut hub, conn, AuthOutcome::Anonymous);
        subscribe(&mut hub, conn, "match");
    }
    let ten = live_bytes() - empty;
    for conn in 10..20_000 {
        connect(&mut hub, conn, AuthOutcome::Anonymous);
        subscribe(&mut hub, conn, "match");
    }
    for conn in 10..20_000 {
        disconnect(&mut hub, conn);
    }
    let left = live_bytes() - empty;
    eprintln!("10 subscribers: {ten} bytes at first, {left} after 19,990 left");

    assert_eq!(hub.stat().to_string(), "match 10\n");
    assert!(
        left <= ten + 8 * 1024,
        "{left} bytes held for 10 subscribers (at first: {ten})"
    );
}
