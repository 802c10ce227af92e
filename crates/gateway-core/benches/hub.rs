//! Criterion benchmarks of the pure core: parsing and encoding a push, and routing it to
//! many subscribers. Run with:
//!     cargo bench -p gateway-core

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_core::{
    Action, AuthOutcome, ConnId, Hub, HubConfig, Input, MemberId, Publication, PushMessage,
};

const BODY: &[u8] = br#"{"app":"match","member_id":-1,"text":"{\"score\":\"1:0\",\"minute\":73}"}"#;

fn hub_with(n: u64) -> Hub {
    let mut hub = Hub::new(HubConfig::default());
    for conn in 0..n {
        let outcome = AuthOutcome::accepted(MemberId::new(1 + conn as i64).expect("> 0"));
        hub.handle(Input::Authenticated {
            conn: ConnId::new(conn),
            outcome,
        });
        hub.handle(Input::Message {
            conn: ConnId::new(conn),
            payload: br#"{"app":"match"}"#,
        });
    }
    while hub.poll_action().is_some() {}
    hub
}

fn parse_and_encode(c: &mut Criterion) {
    c.bench_function("push: parse + encode once", |b| {
        b.iter(|| {
            let push = PushMessage::parse(black_box(BODY), 128).expect("valid");
            black_box(Publication::from(push))
        })
    });
}

fn route(c: &mut Criterion) {
    for n in [1_000u64, 10_000] {
        let mut hub = hub_with(n);
        let publication = Publication::from(PushMessage::parse(BODY, 128).expect("valid"));
        c.bench_function(&format!("route one push to {n} subscribers"), |b| {
            b.iter(|| {
                hub.handle(Input::Push(publication.clone()));
                match hub.poll_action() {
                    Some(Action::Deliver { conns, .. }) => black_box(conns.len()),
                    _ => unreachable!("every connection subscribed"),
                }
            })
        });
    }
}

/// The same push when the hub also holds 100,000 other apps (128-byte names): the app lookup
/// must stay cheap however many apps exist.
fn route_among_many_apps(c: &mut Criterion) {
    let mut hub = Hub::new(HubConfig {
        max_subscriptions: 100_000,
        ..HubConfig::default()
    });
    let many = ConnId::new(u64::MAX);
    hub.handle(Input::Authenticated {
        conn: many,
        outcome: AuthOutcome::Anonymous,
    });
    for i in 0..100_000 {
        let payload = format!(r#"{{"app":"{i:0>128}"}}"#);
        hub.handle(Input::Message {
            conn: many,
            payload: payload.as_bytes(),
        });
    }
    for conn in 0..1_000 {
        hub.handle(Input::Authenticated {
            conn: ConnId::new(conn),
            outcome: AuthOutcome::Anonymous,
        });
        hub.handle(Input::Message {
            conn: ConnId::new(conn),
            payload: br#"{"app":"match"}"#,
        });
    }
    while hub.poll_action().is_some() {}
    let publication = Publication::from(PushMessage::parse(BODY, 128).expect("valid"));
    c.bench_function(
        "route one push to 1000 subscribers among 100000 apps",
        |b| {
            b.iter(|| {
                hub.handle(Input::Push(publication.clone()));
                match hub.poll_action() {
                    Some(Action::Deliver { conns, .. }) => black_box(conns.len()),
                    _ => unreachable!("every connection subscribed"),
                }
            })
        },
    );
}

criterion_group!(benches, parse_and_encode, route, route_among_many_apps);
criterion_main!(benches);
