//! The hub driven step by step, as the server drives it: shared by the hub's test files.

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};

use gateway_core::{
    Action, AppName, AuthOutcome, ConnId, Frame, Hub, HubConfig, Input, MemberId, Publication,
    PushMessage, Reply, Topic,
};

/// Drives a hub the way the server does and collects what it asks for.
pub struct TestHub {
    pub hub: Hub,
    /// Interest declared by the hub so far (gained minus lost), kept by [`TestHub::drain`].
    pub interest: BTreeSet<Topic>,
    /// Every interest action, in order, since the last [`TestHub::take_interest_log`].
    pub interest_log: Vec<Action>,
}

pub fn app(name: &str) -> AppName {
    AppName::parse(name, AppName::DEFAULT_MAX_LEN).unwrap()
}

pub fn member(id: i64) -> MemberId {
    MemberId::new(id).unwrap()
}

pub fn reply(conn: u64, reply: Reply) -> Action {
    Action::Reply {
        conn: ConnId::new(conn),
        frame: reply.frame(),
    }
}

impl TestHub {
    pub fn new() -> Self {
        Self::with_config(HubConfig::default())
    }

    pub fn with_config(config: HubConfig) -> Self {
        TestHub {
            hub: Hub::new(config),
            interest: BTreeSet::new(),
            interest_log: Vec::new(),
        }
    }

    pub fn auth(&mut self, conn: u64, outcome: AuthOutcome) -> Vec<Action> {
        self.hub.handle(Input::Authenticated {
            conn: ConnId::new(conn),
            outcome,
        });
        self.drain()
    }

    pub fn anonymous(&mut self, conn: u64) {
        self.auth(conn, AuthOutcome::Anonymous);
    }

    pub fn member(&mut self, conn: u64, id: i64) {
        self.auth(conn, AuthOutcome::accepted(member(id)));
    }

    pub fn send(&mut self, conn: u64, payload: &str) -> Vec<Action> {
        self.hub.handle(Input::Message {
            conn: ConnId::new(conn),
            payload: payload.as_bytes(),
        });
        self.drain()
    }

    pub fn subscribe(&mut self, conn: u64, app: &str) -> Vec<Action> {
        self.send(conn, &format!(r#"{{"app":"{app}"}}"#))
    }

    /// Pushes and returns the connections that receive it, sorted, with the frame.
    pub fn push(&mut self, app: &str, member_id: i64, text: &str) -> (Vec<u64>, Option<Frame>) {
        let push = PushMessage {
            app: self::app(app),
            member_id,
            text: text.to_owned(),
        };
        self.hub.handle(Input::Push(Publication::from(push)));
        let actions = self.drain();
        match actions.as_slice() {
            [] => (Vec::new(), None),
            [Action::Deliver { conns, frame }] => {
                let mut ids: Vec<u64> = conns.iter().map(|c| c.get()).collect();
                ids.sort_unstable();
                let unique: HashSet<u64> = ids.iter().copied().collect();
                assert_eq!(unique.len(), ids.len(), "a connection listed twice");
                (ids, Some(frame.clone()))
            }
            other => panic!("unexpected actions for a push: {other:?}"),
        }
    }

    pub fn disconnect(&mut self, conn: u64) -> Vec<Action> {
        self.hub.handle(Input::Disconnected {
            conn: ConnId::new(conn),
        });
        self.drain()
    }

    pub fn stat(&self) -> String {
        self.hub.stat().to_string()
    }

    /// The hub's actions except interest, which is applied to [`TestHub::interest`] (and
    /// logged) with checks: never gained twice, never lost before gained.
    pub fn drain(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(action) = self.hub.poll_action() {
            match &action {
                Action::InterestGained(topic) => {
                    assert!(self.interest.insert(topic.clone()), "{topic} gained twice");
                    self.interest_log.push(action);
                }
                Action::InterestLost(topic) => {
                    assert!(self.interest.remove(topic), "{topic} lost, never gained");
                    self.interest_log.push(action);
                }
                // The reply confirming a subscription, compared as the reply it is.
                Action::Subscribed { conn, frame, .. } => actions.push(Action::Reply {
                    conn: *conn,
                    frame: frame.clone(),
                }),
                _ => actions.push(action),
            }
        }
        actions
    }

    pub fn take_interest_log(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.interest_log)
    }
}
