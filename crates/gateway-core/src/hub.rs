//! The hub: which connection is who, which apps it subscribed, and who receives a push.
//!
//! A pure state machine in the sans-IO style: the driver feeds [`Input`]s to [`Hub::handle`] and
//! carries out the [`Action`]s that [`Hub::poll_action`] returns, in order. The hub owns no
//! socket, reads no clock and never blocks, so one lock (or one task) around it is enough and it
//! can be tested step by step.
//!
//! Ordering guarantee: the reply to a subscribe request is emitted after the subscription is
//! registered, so a driver that applies actions in order (and answers a push only after
//! handing it to the hub) delivers every push accepted after the client saw "subscribe X
//! success".

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::frame::{CloseCode, Frame, Reply};
use crate::ids::{AppName, ConnId, MemberId};
use crate::message::{Publication, SubscribeRequest};

/// Configuration of the hub's policy. Every value has a documented default.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Apps whose pushes go only to the connections of the push's `member_id`, and which
    /// anonymous connections may not subscribe to. Default: `["im"]`.
    pub private_apps: HashSet<AppName>,
    /// The longest app name accepted, in bytes. Default: [`AppName::DEFAULT_MAX_LEN`].
    pub max_app_name_len: usize,
    /// Subscriptions one connection may hold; one more is answered "too many subscriptions".
    /// Default: [`HubConfig::DEFAULT_MAX_SUBSCRIPTIONS`].
    pub max_subscriptions: usize,
}

impl HubConfig {
    pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
}

impl Default for HubConfig {
    fn default() -> Self {
        let im = AppName::parse("im", AppName::DEFAULT_MAX_LEN).expect("\"im\" is a valid name");
        HubConfig {
            private_apps: HashSet::from([im]),
            max_app_name_len: AppName::DEFAULT_MAX_LEN,
            max_subscriptions: HubConfig::DEFAULT_MAX_SUBSCRIPTIONS,
        }
    }
}

/// Which private apps an accepted member may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PrivateAccess {
    /// Every private app (the authenticator said nothing more specific).
    #[default]
    All,
    /// Only these (for example the apps listed in a JWT claim); others are "forbidden".
    Only(Arc<[AppName]>),
}

impl PrivateAccess {
    pub fn allows(&self, app: &AppName) -> bool {
        match self {
            PrivateAccess::All => true,
            PrivateAccess::Only(apps) => apps.contains(app),
        }
    }
}

/// How a connection's authentication ended, as the driver observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The auth message asked for anonymity (`member_id` < 0).
    Anonymous,
    /// The authenticator accepted the member.
    Accepted {
        member: MemberId,
        access: PrivateAccess,
    },
    /// The authenticator refused the member (or failed); the connection continues anonymously.
    Refused,
    /// The first message was not a valid auth message.
    Missing,
    /// No first message arrived before the auth deadline.
    TimedOut,
}

impl AuthOutcome {
    /// The member was accepted with access to every private app.
    pub fn accepted(member: MemberId) -> Self {
        AuthOutcome::Accepted {
            member,
            access: PrivateAccess::All,
        }
    }
}

/// Who is behind a registered connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    Member(MemberId),
}

/// Something that happened, for the hub to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// The connection's authentication ended. Registers the connection unless the outcome is
    /// [`AuthOutcome::Missing`] or [`AuthOutcome::TimedOut`].
    Authenticated { conn: ConnId, outcome: AuthOutcome },
    /// A client message received after authentication (text or binary frame payload).
    Message { conn: ConnId, payload: &'a [u8] },
    /// A backend push, already encoded.
    Push(Publication),
    /// The connection's outbound queue is full: the client does not keep up.
    OutboxFull { conn: ConnId },
    /// The connection is gone. Removes it from every app at once.
    Disconnected { conn: ConnId },
}

/// Something the driver must do, in the order the hub emits them.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `frame` to one connection, after everything queued to it before.
    Reply { conn: ConnId, frame: Frame },
    /// Send the same `frame` to each of `conns`.
    Deliver { conns: Vec<ConnId>, frame: Frame },
    /// Close the connection with `code` after the frames already queued to it. The hub has
    /// already forgotten it.
    Close { conn: ConnId, code: CloseCode },
}

#[derive(Debug)]
struct Connection {
    identity: Identity,
    /// Meaningful for members only: anonymous connections never join a private app.
    access: PrivateAccess,
    /// The apps this connection subscribed, so that a disconnect touches only those.
    apps: Vec<AppName>,
}

/// The subscribers of one app.
#[derive(Debug)]
enum Subscribers {
    Public(HashSet<ConnId>),
    /// Keyed by member: a private push goes to one member's connections.
    Private(HashMap<MemberId, Vec<ConnId>>),
}

impl Subscribers {
    fn count(&self) -> usize {
        match self {
            Subscribers::Public(conns) => conns.len(),
            Subscribers::Private(members) => members.len(),
        }
    }
}

/// The hub state machine. See the module docs.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    connections: HashMap<ConnId, Connection>,
    apps: HashMap<AppName, Subscribers>,
    actions: VecDeque<Action>,
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Hub {
            config,
            connections: HashMap::new(),
            apps: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Applies one input. Its consequences are queued; take them with [`Hub::poll_action`].
    pub fn handle(&mut self, input: Input<'_>) {
        match input {
            Input::Authenticated { conn, outcome } => self.authenticated(conn, outcome),
            Input::Message { conn, payload } => self.message(conn, payload),
            Input::Push(publication) => self.push(publication),
            Input::OutboxFull { conn } => {
                if self.remove_connection(conn) {
                    self.actions.push_back(Action::Close {
                        conn,
                        code: CloseCode::SlowConsumer,
                    });
                }
            }
            Input::Disconnected { conn } => {
                self.remove_connection(conn);
            }
        }
    }

    /// The next action to carry out, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The number of registered (authenticated) connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Who is behind `conn`, if it is registered.
    pub fn identity(&self, conn: ConnId) -> Option<Identity> {
        self.connections.get(&conn).map(|c| c.identity)
    }

    /// The per-app counts of `GET /stat`, sorted by app name. Apps with no subscriber are left
    /// out.
    pub fn stat(&self) -> Stat {
        let mut apps: Vec<(AppName, usize)> = self
            .apps
            .iter()
            .map(|(app, subscribers)| (app.clone(), subscribers.count()))
            .filter(|(_, count)| *count > 0)
            .collect();
        apps.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Stat { apps }
    }

    fn reply(&mut self, conn: ConnId, reply: Reply) {
        self.actions.push_back(Action::Reply {
            conn,
            frame: reply.frame(),
        });
    }

    fn authenticated(&mut self, conn: ConnId, outcome: AuthOutcome) {
        if self.connections.contains_key(&conn) {
            // A driver bug; registering twice would orphan subscriptions. Keep the first.
            return;
        }
        let (identity, access, reply) = match outcome {
            AuthOutcome::Anonymous => (
                Identity::Anonymous,
                PrivateAccess::All,
                Reply::HelloStranger,
            ),
            AuthOutcome::Accepted { member, access } => {
                (Identity::Member(member), access, Reply::HelloMember(member))
            }
            AuthOutcome::Refused => (Identity::Anonymous, PrivateAccess::All, Reply::Unauthorized),
            AuthOutcome::Missing | AuthOutcome::TimedOut => {
                self.reply(conn, Reply::MissingAuth);
                let code = if outcome == AuthOutcome::Missing {
                    CloseCode::MissingAuth
                } else {
                    CloseCode::AuthTimeout
                };
                self.actions.push_back(Action::Close { conn, code });
                return;
            }
        };
        self.connections.insert(
            conn,
            Connection {
                identity,
                access,
                apps: Vec::new(),
            },
        );
        self.reply(conn, reply);
    }

    fn message(&mut self, conn: ConnId, payload: &[u8]) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            // Not registered (yet, or any more): a message racing a close. Nothing to answer.
            return;
        };
        let app = match SubscribeRequest::parse(payload, self.config.max_app_name_len) {
            Ok(request) => request.app,
            Err(_) => return self.reply(conn, Reply::BadSubscribe),
        };
        let private = self.config.private_apps.contains(&app);
        if connection.apps.len() >= self.config.max_subscriptions && !connection.apps.contains(&app)
        {
            return self.reply(conn, Reply::TooManySubscriptions);
        }
        let newly_subscribed = match (private, connection.identity) {
            (true, Identity::Anonymous) => {
                return self.reply(conn, Reply::SubscribeForbidden(app));
            }
            (true, Identity::Member(_)) if !connection.access.allows(&app) => {
                return self.reply(conn, Reply::SubscribeForbidden(app));
            }
            (true, Identity::Member(member)) => {
                let members = match self
                    .apps
                    .entry(app.clone())
                    .or_insert_with(|| Subscribers::Private(HashMap::new()))
                {
                    Subscribers::Private(members) => members,
                    Subscribers::Public(_) => unreachable!("an app's privacy is fixed by config"),
                };
                let conns = members.entry(member).or_default();
                let new = !conns.contains(&conn);
                if new {
                    conns.push(conn);
                }
                new
            }
            (false, _) => {
                match self
                    .apps
                    .entry(app.clone())
                    .or_insert_with(|| Subscribers::Public(HashSet::new()))
                {
                    Subscribers::Public(conns) => conns.insert(conn),
                    Subscribers::Private(_) => unreachable!("an app's privacy is fixed by config"),
                }
            }
        };
        if newly_subscribed {
            connection.apps.push(app.clone());
        }
        self.reply(conn, Reply::Subscribed(app));
    }

    fn push(&mut self, publication: Publication) {
        let conns: Vec<ConnId> = match self.apps.get(&publication.app) {
            None => return,
            Some(Subscribers::Public(conns)) => conns.iter().copied().collect(),
            Some(Subscribers::Private(members)) => {
                match MemberId::new(publication.member_id).and_then(|m| members.get(&m)) {
                    Some(conns) => conns.clone(),
                    None => return,
                }
            }
        };
        if !conns.is_empty() {
            self.actions.push_back(Action::Deliver {
                conns,
                frame: publication.frame,
            });
        }
    }

    /// Forgets `conn` and its subscriptions. Returns whether it was registered.
    fn remove_connection(&mut self, conn: ConnId) -> bool {
        let Some(connection) = self.connections.remove(&conn) else {
            return false;
        };
        for app in connection.apps {
            let Some(subscribers) = self.apps.get_mut(&app) else {
                continue;
            };
            match (subscribers, connection.identity) {
                (Subscribers::Public(conns), _) => {
                    conns.remove(&conn);
                }
                (Subscribers::Private(members), Identity::Member(member)) => {
                    if let Some(conns) = members.get_mut(&member) {
                        conns.retain(|c| *c != conn);
                        if conns.is_empty() {
                            members.remove(&member);
                        }
                    }
                }
                (Subscribers::Private(_), Identity::Anonymous) => {}
            }
            if self.apps.get(&app).is_some_and(|s| s.count() == 0) {
                self.apps.remove(&app);
            }
        }
        true
    }
}

/// The answer of `GET /stat`: `"<app> <count>\n"` per app, sorted by app name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    pub apps: Vec<(AppName, usize)>,
}

impl Stat {
    /// The count for `app`, `0` if it is not listed.
    pub fn count(&self, app: &str) -> usize {
        self.apps
            .iter()
            .find(|(name, _)| name.as_str() == app)
            .map_or(0, |(_, count)| *count)
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (app, count) in &self.apps {
            writeln!(f, "{app} {count}")?;
        }
        Ok(())
    }
}
