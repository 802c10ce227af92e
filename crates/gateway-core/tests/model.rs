//! Property tests: arbitrary bytes never break the parsers, and arbitrary sequences of
//! connect / auth / subscribe / push / disconnect keep the hub equal to a simple model.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

use std::collections::{BTreeMap, BTreeSet, HashSet};

use gateway_core::{
    Action, AppName, AuthOutcome, AuthRequest, ClientRequest, CloseCode, ConnId, Hub, HubConfig,
    Input, MemberId, Publication, PushMessage, Reply, SubscribeRequest, Topic,
};
use proptest::prelude::*;

const APPS: [&str; 4] = ["a", "b", "im", "c"];
const PRIVATE: &str = "im";

#[derive(Debug, Clone)]
enum Op {
    Auth {
        conn: u64,
        outcome: u8,
        member: i64,
    },
    Subscribe {
        conn: u64,
        app: usize,
    },
    Unsubscribe {
        conn: u64,
        app: usize,
    },
    /// A backend's `POST /disconnect`: the member's connections, or only their subscriptions
    /// to one app.
    DisconnectMember {
        member: i64,
        app: Option<usize>,
    },
    Garbage {
        conn: u64,
        bytes: Vec<u8>,
    },
    Push {
        app: usize,
        member_id: i64,
    },
    OutboxFull {
        conn: u64,
    },
    Disconnect {
        conn: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..6u64;
    prop_oneof![
        2 => (conn.clone(), 0..5u8, 1..4i64).prop_map(|(conn, outcome, member)| Op::Auth { conn, outcome, member }),
        4 => (conn.clone(), 0..APPS.len()).prop_map(|(conn, app)| Op::Subscribe { conn, app }),
        2 => (conn.clone(), 0..APPS.len()).prop_map(|(conn, app)| Op::Unsubscribe { conn, app }),
        1 => (1..4i64, proptest::option::of(0..APPS.len())).prop_map(|(member, app)| Op::DisconnectMember { member, app }),
        1 => (conn.clone(), proptest::collection::vec(any::<u8>(), 0..24)).prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
        3 => (0..APPS.len(), -2..4i64).prop_map(|(app, member_id)| Op::Push { app, member_id }),
        1 => (conn.clone()).prop_map(|conn| Op::OutboxFull { conn }),
        2 => conn.prop_map(|conn| Op::Disconnect { conn }),
    ]
}

/// What the hub should know: per registered connection, its member (if any) and its apps.
#[derive(Debug, Default)]
struct Model {
    conns: BTreeMap<u64, (Option<i64>, BTreeSet<&'static str>)>,
}

impl Model {
    fn recipients(&self, app: &str, member_id: i64) -> BTreeSet<u64> {
        self.conns
            .iter()
            .filter(|(_, (member, apps))| {
                apps.contains(app) && (app != PRIVATE || *member == Some(member_id))
            })
            .map(|(conn, _)| *conn)
            .collect()
    }

    /// The topics with a local subscriber: what the hub must have declared interest in.
    fn topics(&self) -> BTreeSet<Topic> {
        let mut topics = BTreeSet::new();
        for (member, apps) in self.conns.values() {
            for name in apps {
                topics.insert(if *name == PRIVATE {
                    Topic::Member {
                        app: app(name),
                        member: MemberId::new(member.unwrap()).unwrap(),
                    }
                } else {
                    Topic::App(app(name))
                });
            }
        }
        topics
    }

    fn stat(&self) -> String {
        let mut counts: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
        for (conn, (member, apps)) in &self.conns {
            for app in apps {
                // Public apps count connections, private apps count members.
                let key = if *app == PRIVATE {
                    member.unwrap()
                } else {
                    *conn as i64
                };
                counts.entry(app).or_default().insert(key);
            }
        }
        counts
            .iter()
            .map(|(app, set)| format!("{app} {}\n", set.len()))
            .collect()
    }
}

fn app(name: &str) -> AppName {
    AppName::parse(name, 128).unwrap()
}

thread_local! {
    /// The interest the hub declared so far (gained minus lost), kept by [`drain`].
    static INTEREST: std::cell::RefCell<BTreeSet<Topic>> = const { std::cell::RefCell::new(BTreeSet::new()) };
}

/// The hub's actions, with the interest actions taken out and applied to [`INTEREST`]: a topic
/// is never gained twice nor lost before it was gained.
fn drain(hub: &mut Hub) -> Vec<Action> {
    std::iter::from_fn(|| hub.poll_action())
        .filter(|action| match action {
            Action::InterestGained(topic) => {
                let new = INTEREST.with_borrow_mut(|set| set.insert(topic.clone()));
                assert!(new, "interest in {topic} gained twice");
                false
            }
            Action::InterestLost(topic) => {
                let known = INTEREST.with_borrow_mut(|set| set.remove(topic));
                assert!(known, "interest in {topic} lost before it was gained");
                false
            }
            _ => true,
        })
        .map(|action| match action {
            Action::Subscribed { conn, frame, .. } => Action::Reply { conn, frame },
            other => other,
        })
        .collect()
}

/// `/stat` read a page at a time, as the server does.
fn paged_stat(hub: &Hub, limit: usize) -> String {
    let mut text = String::new();
    let mut after: Option<AppName> = None;
    loop {
        let page = hub.stat_page(after.as_ref(), limit);
        text.push_str(&page.to_string());
        match page.resume_after() {
            // A cursor that does not move would loop forever.
            Some(last) if after.as_ref() == Some(last) => {
                panic!("the page after {last:?} is itself")
            }
            Some(last) => after = Some(last.clone()),
            None => return text,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = AuthRequest::parse(&bytes);
        let _ = SubscribeRequest::parse(&bytes, 128);
        let _ = ClientRequest::parse(&bytes, 128);
        let _ = PushMessage::parse(&bytes, 128);
    }

    #[test]
    fn any_message_gets_exactly_one_reply(text in ".{0,64}") {
        let mut hub = Hub::new(HubConfig::default());
        let conn = ConnId::new(1);
        hub.handle(Input::Authenticated { conn, outcome: AuthOutcome::Anonymous });
        drain(&mut hub);
        hub.handle(Input::Message { conn, payload: text.as_bytes() });
        let actions = drain(&mut hub);
        prop_assert_eq!(actions.len(), 1);
        let to_sender = matches!(actions[0], Action::Reply { conn: c, .. } if c == conn);
        prop_assert!(to_sender);
    }

    #[test]
    fn the_hub_matches_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        page_limit in 1..4usize,
    ) {
        let mut hub = Hub::new(HubConfig {
            private_apps: HashSet::from([app(PRIVATE)]),
            ..HubConfig::default()
        });
        let mut model = Model::default();
        INTEREST.with_borrow_mut(BTreeSet::clear);
        // A connection id is used for one connection only, as the server guarantees.
        let mut retired: HashSet<u64> = HashSet::new();

        for op in ops {
            match op {
                Op::Auth { conn, outcome, member } => {
                    if retired.contains(&conn) || model.conns.contains_key(&conn) {
                        continue;
                    }
                    let (outcome, identity) = match outcome {
                        0 => (AuthOutcome::Anonymous, Some(None)),
                        1 | 2 => (AuthOutcome::accepted(MemberId::new(member).unwrap()), Some(Some(member))),
                        3 => (AuthOutcome::Refused, Some(None)),
                        _ => (AuthOutcome::Missing, None),
                    };
                    hub.handle(Input::Authenticated { conn: ConnId::new(conn), outcome });
                    let actions = drain(&mut hub);
                    match identity {
                        Some(member) => {
                            prop_assert_eq!(actions.len(), 1);
                            model.conns.insert(conn, (member, BTreeSet::new()));
                        }
                        None => {
                            prop_assert_eq!(actions.len(), 2, "a reply and a close");
                            retired.insert(conn);
                        }
                    }
                }
                Op::Subscribe { conn, app: index } => {
                    let name = APPS[index];
                    hub.handle(Input::Message { conn: ConnId::new(conn), payload: format!(r#"{{"app":"{name}"}}"#).as_bytes() });
                    let actions = drain(&mut hub);
                    match model.conns.get_mut(&conn) {
                        None => prop_assert!(actions.is_empty()),
                        Some((member, apps)) => {
                            let expected = if name == PRIVATE && member.is_none() {
                                Reply::SubscribeForbidden(app(name))
                            } else {
                                apps.insert(name);
                                Reply::Subscribed(app(name))
                            };
                            prop_assert_eq!(actions, vec![Action::Reply { conn: ConnId::new(conn), frame: expected.frame() }]);
                        }
                    }
                }
                Op::Garbage { conn, bytes } => {
                    hub.handle(Input::Message { conn: ConnId::new(conn), payload: &bytes });
                    let actions = drain(&mut hub);
                    prop_assert!(actions.len() <= 1);
                    // Garbage never subscribes to anything; if it happened to be a valid
                    // request, mirror it.
                    if let Some((member, apps)) = model.conns.get_mut(&conn) {
                        match ClientRequest::parse(&bytes, 128) {
                            Ok(ClientRequest::Subscribe(request)) => {
                                if let Some(name) = APPS.iter().find(|a| **a == request.as_str())
                                    && !(*name == PRIVATE && member.is_none())
                                {
                                    apps.insert(name);
                                }
                            }
                            Ok(ClientRequest::Unsubscribe(request)) => {
                                apps.retain(|a| *a != request.as_str());
                            }
                            _ => {}
                        }
                    }
                }
                Op::Unsubscribe { conn, app: index } => {
                    let name = APPS[index];
                    let payload = format!(r#"{{"app":"{name}","action":"unsubscribe"}}"#);
                    hub.handle(Input::Message { conn: ConnId::new(conn), payload: payload.as_bytes() });
                    let actions = drain(&mut hub);
                    match model.conns.get_mut(&conn) {
                        None => prop_assert!(actions.is_empty()),
                        Some((_, apps)) => {
                            let expected = if apps.remove(name) {
                                Reply::Unsubscribed(app(name))
                            } else {
                                Reply::NotSubscribed(app(name))
                            };
                            prop_assert_eq!(actions, vec![Action::Reply { conn: ConnId::new(conn), frame: expected.frame() }]);
                        }
                    }
                }
                Op::DisconnectMember { member, app: index } => {
                    let target = index.map(|i| app(APPS[i]));
                    let affected = hub.disconnect_member(MemberId::new(member).unwrap(), target.as_ref());
                    let actions = drain(&mut hub);
                    let mut expected = Vec::new();
                    let theirs: Vec<u64> = model.conns.iter().filter(|(_, (m, _))| *m == Some(member)).map(|(c, _)| *c).collect();
                    for conn in theirs {
                        match index {
                            None => {
                                model.conns.remove(&conn);
                                retired.insert(conn);
                                expected.push(Action::Close { conn: ConnId::new(conn), code: CloseCode::Disconnected });
                            }
                            Some(i) => {
                                let apps = &mut model.conns.get_mut(&conn).unwrap().1;
                                if apps.remove(APPS[i]) {
                                    expected.push(Action::Reply { conn: ConnId::new(conn), frame: Reply::UnsubscribedByServer(app(APPS[i])).frame() });
                                }
                            }
                        }
                    }
                    prop_assert_eq!(affected, expected.len());
                    let sorted = |mut v: Vec<Action>| { v.sort_by_key(|a| format!("{a:?}")); v };
                    prop_assert_eq!(sorted(actions), sorted(expected));
                }
                Op::Push { app: index, member_id } => {
                    let name = APPS[index];
                    let push = PushMessage { app: app(name), member_id, text: "t".to_owned() };
                    let publication = Publication::from(push);
                    let frame = publication.frame.clone();
                    hub.handle(Input::Push(publication));
                    let delivered: BTreeSet<u64> = match drain(&mut hub).as_slice() {
                        [] => BTreeSet::new(),
                        [Action::Deliver { conns, frame: f }] => {
                            prop_assert_eq!(f, &frame);
                            let set: BTreeSet<u64> = conns.iter().map(|c| c.get()).collect();
                            prop_assert_eq!(set.len(), conns.len(), "a recipient listed twice");
                            set
                        }
                        other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                    };
                    prop_assert_eq!(delivered, model.recipients(name, member_id));
                }
                Op::OutboxFull { conn } => {
                    hub.handle(Input::OutboxFull { conn: ConnId::new(conn) });
                    let actions = drain(&mut hub);
                    let was = model.conns.remove(&conn).is_some();
                    prop_assert_eq!(actions.len(), usize::from(was));
                    retired.insert(conn);
                }
                Op::Disconnect { conn } => {
                    hub.handle(Input::Disconnected { conn: ConnId::new(conn) });
                    prop_assert!(drain(&mut hub).is_empty());
                    model.conns.remove(&conn);
                    retired.insert(conn);
                }
            }
            prop_assert_eq!(hub.stat().to_string(), model.stat());
            prop_assert_eq!(paged_stat(&hub, page_limit), model.stat());
            prop_assert_eq!(hub.connection_count(), model.conns.len());
            // Presence: each member's connections and apps, each app's members, in pages.
            for member in 1..4i64 {
                let theirs: Vec<&(Option<i64>, BTreeSet<&str>)> = model.conns.values().filter(|(m, _)| *m == Some(member)).collect();
                let presence = hub.member_presence(MemberId::new(member).unwrap());
                if theirs.is_empty() {
                    prop_assert_eq!(presence, None);
                } else {
                    let presence = presence.unwrap();
                    prop_assert_eq!(presence.connections, theirs.len());
                    let apps: BTreeSet<&str> = theirs.iter().flat_map(|(_, apps)| apps.iter().copied()).collect();
                    let listed: Vec<&str> = presence.apps.iter().map(AppName::as_str).collect();
                    prop_assert_eq!(listed, apps.into_iter().collect::<Vec<_>>());
                }
            }
            for name in APPS {
                let expected: BTreeSet<i64> = model.conns.values().filter(|(_, apps)| apps.contains(name)).filter_map(|(m, _)| *m).collect();
                let mut listed = Vec::new();
                let mut after = None;
                loop {
                    let page = hub.app_members(&app(name), after, page_limit);
                    prop_assert!(page.members.len() <= page_limit);
                    listed.extend(page.members.iter().map(|m| m.get()));
                    if !page.more {
                        break;
                    }
                    after = page.members.last().copied();
                }
                prop_assert_eq!(listed, expected.into_iter().collect::<Vec<_>>());
            }
            // Interest appears with a topic's first subscriber and goes with its last.
            prop_assert_eq!(INTEREST.with_borrow(Clone::clone), model.topics());
            prop_assert_eq!(hub.interests().collect::<BTreeSet<_>>(), model.topics());
        }

        // Everyone leaves: nothing is left behind.
        for conn in 0..6 {
            hub.handle(Input::Disconnected { conn: ConnId::new(conn) });
        }
        prop_assert_eq!(hub.stat().to_string(), "");
        prop_assert_eq!(hub.connection_count(), 0);
        prop_assert!(drain(&mut hub).is_empty());
        prop_assert!(INTEREST.with_borrow(BTreeSet::is_empty));
    }
}
