//! Embedding the pure hub of `gateway-core` in your own service, with your own transport:
//! no sockets, no runtime, every step visible.
//!
//! Run with:
//!     cargo run --example embedded_hub

use std::collections::HashSet;

use gateway_core::{
    Action, AppName, AuthOutcome, ConnId, Hub, HubConfig, Input, MemberId, Publication, PushMessage,
};

fn main() {
    let dm = AppName::parse("dm", AppName::DEFAULT_MAX_LEN).expect("a valid app name");
    let mut hub = Hub::new(HubConfig {
        private_apps: HashSet::from([dm]),
        ..HubConfig::default()
    });

    // Your transport numbers connections and reports what happens on them.
    let (alice, stranger) = (ConnId::new(1), ConnId::new(2));
    let alice_id = MemberId::new(42).expect("42 > 0");
    hub.handle(Input::Authenticated {
        conn: alice,
        outcome: AuthOutcome::accepted(alice_id),
    });
    hub.handle(Input::Authenticated {
        conn: stranger,
        outcome: AuthOutcome::Anonymous,
    });
    hub.handle(Input::Message {
        conn: alice,
        payload: br#"{"app":"dm"}"#,
    });
    hub.handle(Input::Message {
        conn: stranger,
        payload: br#"{"app":"dm"}"#,
    });

    let push = PushMessage::parse(br#"{"app":"dm","member_id":42,"text":"hi alice"}"#, 128)
        .expect("a valid push");
    hub.handle(Input::Push(Publication::from(push)));

    // ... and carries out what the hub asks for, in order.
    while let Some(action) = hub.poll_action() {
        match action {
            // A single process sends the subscribe reply at once; a driver relaying pushes
            // between nodes would wait until its broker confirmed `topic`.
            Action::Reply { conn, frame } | Action::Subscribed { conn, frame, .. } => {
                println!("{conn} <- {}", frame.as_str())
            }
            Action::Deliver { conns, frame } => {
                for conn in conns {
                    println!("{conn} <- {}", frame.as_str());
                }
            }
            Action::Close { conn, code } => println!("close {conn} with {}", code.code()),
            Action::InterestGained(topic) => println!("first local subscriber of {topic}"),
            Action::InterestLost(topic) => println!("no local subscriber of {topic} left"),
            // Actions added by later versions: ignore what this driver does not know.
            _ => {}
        }
    }
    print!("stat:\n{}", hub.stat());
}
