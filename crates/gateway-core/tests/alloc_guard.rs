//! A performance regression guard that times nothing: it counts heap allocations.
//!
//! Routing a push must cost a constant number of allocations whatever the number of
//! recipients (the frame is encoded once and shared; the recipient list is one vector). If a
//! change makes allocations grow with the fan-out, this fails in CI long before anyone
//! measures a slowdown.

#![allow(clippy::unwrap_used)]
// tests: a failure should panic where it happens
// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gateway_core::{
    Action, AuthOutcome, ConnId, Hub, HubConfig, Input, MemberId, Publication, PushMessage,
};

struct Counting;

thread_local! {
    // Per thread, so that tests running in parallel do not count each other.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards its arguments unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn hub_with_subscribers(n: u64, app: &str) -> Hub {
    let mut hub = Hub::new(HubConfig::default());
    for conn in 0..n {
        let outcome = AuthOutcome::accepted(MemberId::new(1 + (conn % 10) as i64).unwrap());
        hub.handle(Input::Authenticated {
            conn: ConnId::new(conn),
            outcome,
        });
        hub.handle(Input::Message {
            conn: ConnId::new(conn),
            payload: format!(r#"{{"app":"{app}"}}"#).as_bytes(),
        });
    }
    while hub.poll_action().is_some() {}
    hub
}

/// Allocations made by encoding and routing one push, and its number of recipients.
fn allocations_for_push(hub: &mut Hub, body: &[u8]) -> (usize, usize) {
    let before = allocations();
    let push = PushMessage::parse(body, 128).unwrap();
    hub.handle(Input::Push(Publication::from(push)));
    let recipients = match hub.poll_action() {
        Some(Action::Deliver { conns, .. }) => conns.len(),
        other => panic!("expected a delivery, got {other:?}"),
    };
    (allocations() - before, recipients)
}

#[test]
fn a_push_costs_the_same_allocations_for_10_or_10000_recipients() {
    let body = br#"{"app":"match","member_id":-1,"text":"{\"score\":\"1:0\"}"}"#;
    let mut small = hub_with_subscribers(10, "match");
    let mut large = hub_with_subscribers(10_000, "match");
    // Warm up (the action queue's first growth).
    allocations_for_push(&mut small, body);
    allocations_for_push(&mut large, body);

    let (few, n_small) = allocations_for_push(&mut small, body);
    let (many, n_large) = allocations_for_push(&mut large, body);
    assert_eq!((n_small, n_large), (10, 10_000));
    assert_eq!(few, many, "allocations grew with the number of recipients");
    // Parse (app name, text), encode (JSON writer, shared frame), recipient list: a handful,
    // fixed (7 when this guard was written).
    assert!(many <= 8, "{many} allocations for one push");
}

#[test]
fn a_private_push_costs_a_constant_handful_of_allocations() {
    let mut hub = hub_with_subscribers(10_000, "im");
    let body = br#"{"app":"im","member_id":3,"text":"hi"}"#;
    allocations_for_push(&mut hub, body);
    let (allocations, recipients) = allocations_for_push(&mut hub, body);
    assert_eq!(recipients, 1_000);
    assert!(
        allocations <= 8,
        "{allocations} allocations for one private push"
    );
}
