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

criterion_group!(benches, parse_and_encode, route);
criterion_main!(benches);
