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
//!
//! Memory: a subscription to an app that exists already stores a refcount of the app's name,
//! never a copy, and tables that were emptied give their memory back (see [`shrink_if_sparse`]),
//! so a hub that held a million subscriptions is small again once they are gone.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque, btree_map};
use std::hash::Hash;
use std::ops::Bound;
use std::sync::Arc;

use crate::frame::{CloseCode, Frame, Reply};
use crate::history::HistoryPolicy;
use crate::ids::{AppName, ConnId, MemberId};
use crate::message::{ClientRequest, Publication};
use crate::position::{Position, Recovery, positioned_frame};
use crate::topic::{Timestamp, Topic};
use crate::views::{AppSubscribers, MemberPresence, MembersPage, Stat, StatPage, SubscribersPage};

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
    /// Which apps keep history (and give their pushes positions), and how much: the
    /// `[history]` section. The hub itself keeps none; the node's history store and the
    /// brokers read it from here. Default: [`HistoryPolicy::default`] (on for every app).
    pub history: HistoryPolicy,
}

impl HubConfig {
    pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;

    /// The topic a publication is addressed to under this configuration: see
    /// [`Hub::topic_of`], which a driver can call without the hub at hand through this.
    pub fn topic_of(&self, publication: &Publication) -> Option<Topic> {
        if self.private_apps.contains(&publication.app) {
            MemberId::new(publication.member_id).map(|member| Topic::Member {
                app: publication.app.clone(),
                member,
            })
        } else {
            Some(Topic::App(publication.app.clone()))
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        let im = AppName::parse("im", AppName::DEFAULT_MAX_LEN).expect("\"im\" is a valid name");
        HubConfig {
            private_apps: HashSet::from([im]),
            max_app_name_len: AppName::DEFAULT_MAX_LEN,
            max_subscriptions: HubConfig::DEFAULT_MAX_SUBSCRIPTIONS,
            history: HistoryPolicy::default(),
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
///
/// Non-exhaustive: new inputs arrive with new features, and a driver built against an older list
/// keeps compiling (it never sends what it does not know).
#[non_exhaustive]
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
    /// Time passed: the hub's notion of "now" (see [`Hub::now`]) moves to `now`, never back.
    /// The hub reads no clock; whatever needs time (history, presence) reads this one.
    Tick { now: Timestamp },
}

/// Something the driver must do, in the order the hub emits them.
///
/// Non-exhaustive: a driver should ignore (and may log) an action it does not know, so that new
/// features do not break embedders. The interest actions are the link to a broker: a
/// single-process driver may ignore them.
#[must_use]
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `frame` to one connection, after everything queued to it before.
    Reply { conn: ConnId, frame: Frame },
    /// Send the same `frame` to each of `conns`.
    Deliver { conns: Vec<ConnId>, frame: Frame },
    /// Send the same `frame`, a push of `app` with its `position` (the positioned frame), to
    /// each of `conns`: subscriptions with history. A driver that replays history to a
    /// connection uses the position to leave out what it replayed already.
    DeliverAt {
        conns: Vec<ConnId>,
        frame: Frame,
        app: AppName,
        /// Boxed: every action is as large as the largest.
        position: Box<Position>,
    },
    /// Close the connection with `code` after the frames already queued to it. The hub has
    /// already forgotten it.
    Close { conn: ConnId, code: CloseCode },
    /// The first local subscriber of `topic` appeared: pushes to it should start arriving here.
    /// Emitted before the reply that confirms the subscription, so a driver that relays pushes
    /// from other nodes can hold that reply until its broker confirmed the topic.
    InterestGained(Topic),
    /// The last local subscriber of `topic` is gone: pushes to it are of no use here any more.
    InterestLost(Topic),
    /// Send `frame` (the "subscribe X success" reply) to `conn`, like [`Action::Reply`], once
    /// pushes to `topic` reach this node: a driver that waits for its broker to confirm a new
    /// topic holds it (and what follows it to `conn`) until then, so that every push accepted
    /// after the client saw the reply reaches it. A driver without a broker sends it at once.
    ///
    /// With `recovery` (the client subscribed with `recover` or `since`), `frame` is the plain
    /// reply and the driver answers with [`Reply::SubscribedAt`] instead, once it knows where
    /// the stream stands, and with `since` sends the missed pushes right after it (see
    /// `docs/protocol.md`, "History and recovery"). The subscription is live already: pushes
    /// to `topic` that follow this action reach `conn` with their positions.
    Subscribed {
        conn: ConnId,
        topic: Topic,
        frame: Frame,
        /// Boxed: it is rare, and every action is as large as the largest.
        recovery: Option<Box<Recovery>>,
    },
}

#[derive(Debug)]
struct Connection {
    identity: Identity,
    /// Meaningful for members only: anonymous connections never join a private app.
    access: PrivateAccess,
    /// The apps this connection subscribed, so that a disconnect touches only those. Each is a
    /// clone of the key in [`Hub::apps`] (a refcount, 16 bytes), not a name of its own.
    apps: Vec<AppName>,
}

/// The subscribers of one app. Members are kept sorted (a B-tree) so that presence reads a
/// page of them as a range, never the whole app, under the node's lock.
#[derive(Debug)]
enum Subscribers {
    /// Every subscribed connection (a push goes to all), and how many of them each member
    /// has (anonymous connections are not counted there).
    Public(HashSet<ConnId>, BTreeMap<MemberId, u32>),
    /// Keyed by member: a private push goes to one member's connections.
    Private(BTreeMap<MemberId, Vec<ConnId>>),
}

impl Subscribers {
    fn count(&self) -> usize {
        match self {
            Subscribers::Public(conns, _) => conns.len(),
            Subscribers::Private(members) => members.len(),
        }
    }
}

/// Hash tables never shrink by themselves: without this, a set that once held 100,000
/// subscribers keeps its table (and `push` keeps scanning it) after all but ten left. Shrinking
/// only below a quarter of the capacity, to twice the length, leaves room to grow back and
/// makes it amortized O(1) per removal; small tables are not worth the reallocation.
fn shrink_if_sparse<K: Hash + Eq, V>(table: &mut HashMap<K, V>) {
    if table.capacity() > SHRINK_ABOVE_CAPACITY && table.len() <= table.capacity() / 4 {
        table.shrink_to(table.len() * 2);
    }
}

/// [`shrink_if_sparse`] for a set.
fn shrink_set_if_sparse<K: Hash + Eq>(set: &mut HashSet<K>) {
    if set.capacity() > SHRINK_ABOVE_CAPACITY && set.len() <= set.capacity() / 4 {
        set.shrink_to(set.len() * 2);
    }
}

/// Every connection of a public app, for one delivery. Kept out of line: inlined into
/// `Hub::handle`, this loop (the per-recipient cost of a push) compiled ~25 % slower.
#[inline(never)]
fn recipients(conns: &HashSet<ConnId>) -> Vec<ConnId> {
    conns.iter().copied().collect()
}

/// Tables at most this large are left as they are: a few KiB at most.
const SHRINK_ABOVE_CAPACITY: usize = 64;

/// The hub state machine. See the module docs.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    connections: HashMap<ConnId, Connection>,
    /// Sorted by name, so that `/stat` can be read a page at a time ([`Hub::stat_page`]) and an
    /// emptied app gives its memory back at once (a B-tree frees its nodes as they empty).
    /// An app is here exactly while it has a subscriber.
    apps: BTreeMap<AppName, Subscribers>,
    /// Each member's connections, for `POST /disconnect` and presence: a connection of a
    /// member is found without scanning them all. Anonymous connections are not here.
    members: HashMap<MemberId, Vec<ConnId>>,
    /// Per app, the connections that subscribed with history: they receive a push's
    /// positioned frame instead of the seed's. Apps without such a subscriber have no entry,
    /// so the fan-out of every other app pays one emptiness check.
    positioned: HashMap<AppName, HashSet<ConnId>>,
    actions: VecDeque<Action>,
    now: Timestamp,
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Hub {
            config,
            connections: HashMap::new(),
            apps: BTreeMap::new(),
            members: HashMap::new(),
            positioned: HashMap::new(),
            actions: VecDeque::new(),
            now: Timestamp::default(),
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
            Input::Tick { now } => self.now = self.now.max(now),
        }
    }

    /// The latest time given with [`Input::Tick`] (zero before the first).
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The topic a publication is addressed to: its app, or for a private app the pair of the
    /// app and the push's member; `None` for a private push without a valid member, which
    /// nobody can receive.
    pub fn topic_of(&self, publication: &Publication) -> Option<Topic> {
        self.config.topic_of(publication)
    }

    /// Every topic with a local subscriber now, in no particular order: what a driver
    /// (re)subscribes on a broker it just connected.
    pub fn interests(&self) -> impl Iterator<Item = Topic> + '_ {
        self.apps.iter().flat_map(
            |(app, subscribers)| -> Box<dyn Iterator<Item = Topic> + '_> {
                match subscribers {
                    Subscribers::Public(..) => Box::new(std::iter::once(Topic::App(app.clone()))),
                    Subscribers::Private(members) => {
                        Box::new(members.keys().map(move |member| Topic::Member {
                            app: app.clone(),
                            member: *member,
                        }))
                    }
                }
            },
        )
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
    /// out. O(apps): a server with many apps reads them with [`Hub::stat_page`] instead.
    pub fn stat(&self) -> Stat {
        let apps = self
            .apps
            .iter()
            .map(|(app, subscribers)| (app.clone(), subscribers.count()))
            .filter(|(_, count)| *count > 0)
            .collect();
        Stat { apps }
    }

    /// At most `limit` (at least 1) counts of `GET /stat`, for the apps sorted after `after`
    /// (from the first app when `None`); resume with the page's [`StatPage::resume_after`].
    ///
    /// Costs O(limit + log apps), so a driver can hold its lock for one page only and let other
    /// inputs in between pages. Pages read that way are each consistent, not the whole: an app
    /// created or dropped between two pages shows up (or not) depending on which side of the
    /// cursor it sorts.
    pub fn stat_page(&self, after: Option<&AppName>, limit: usize) -> StatPage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut counts = self
            .apps
            .range::<AppName, _>((start, Bound::Unbounded))
            .map(|(app, subscribers)| (app, subscribers.count()))
            .filter(|(_, count)| *count > 0);
        let apps: Vec<(AppName, usize)> = counts
            .by_ref()
            .take(limit.max(1))
            .map(|(app, count)| (app.clone(), count))
            .collect();
        let more = counts.next().is_some();
        StatPage { apps, more }
    }

    /// Like [`Hub::stat_page`], with the members of each private app listed rather than
    /// counted (up to `max_members` per app; a larger app is only counted): what a node
    /// reports for the cluster view, where a member connected to two nodes counts once.
    /// Costs O(limit + members listed).
    pub fn subscribers_page(
        &self,
        after: Option<&AppName>,
        limit: usize,
        max_members: usize,
    ) -> SubscribersPage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut apps = self
            .apps
            .range::<AppName, _>((start, Bound::Unbounded))
            .filter(|(_, subscribers)| subscribers.count() > 0);
        let page: Vec<(AppName, AppSubscribers)> = apps
            .by_ref()
            .take(limit.max(1))
            .map(|(app, subscribers)| {
                let listed = match subscribers {
                    Subscribers::Public(conns, _) => AppSubscribers::Connections(conns.len()),
                    Subscribers::Private(members) if members.len() > max_members => {
                        AppSubscribers::MemberCount(members.len())
                    }
                    Subscribers::Private(members) => {
                        AppSubscribers::Members(members.keys().copied().collect())
                    }
                };
                (app.clone(), listed)
            })
            .collect();
        let more = apps.next().is_some();
        SubscribersPage { apps: page, more }
    }

    /// Closes every connection of `member` with [`CloseCode::Disconnected`] (4403) or, given
    /// an `app`, only unsubscribes those subscribed to it and tells each
    /// ([`Reply::UnsubscribedByServer`]): what a backend's `POST /disconnect` asks for.
    /// Returns how many connections it closed or unsubscribed; their actions are queued.
    pub fn disconnect_member(&mut self, member: MemberId, app: Option<&AppName>) -> usize {
        let conns = self.members.get(&member).cloned().unwrap_or_default();
        let mut affected = 0;
        for conn in conns {
            match app {
                None => {
                    if self.remove_connection(conn) {
                        self.actions.push_back(Action::Close {
                            conn,
                            code: CloseCode::Disconnected,
                        });
                        affected += 1;
                    }
                }
                Some(app) => {
                    if self.leave(conn, app) {
                        self.reply(conn, Reply::UnsubscribedByServer(app.clone()));
                        affected += 1;
                    }
                }
            }
        }
        affected
    }

    /// The members with a connection subscribed to `app`, in increasing order, starting after
    /// `after`: at most `limit` (at least 1) of them, and whether more follow. Anonymous
    /// connections are not listed.
    ///
    /// Costs O(log n + limit): the app's members are kept sorted.
    pub fn app_members(&self, app: &AppName, after: Option<MemberId>, limit: usize) -> MembersPage {
        let limit = limit.max(1);
        let range = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        let mut members: Vec<MemberId> = match self.apps.get(app) {
            None => Vec::new(),
            Some(Subscribers::Private(members)) => members
                .range(range)
                .map(|(m, _)| *m)
                .take(limit + 1)
                .collect(),
            Some(Subscribers::Public(_, members)) => members
                .range(range)
                .map(|(m, _)| *m)
                .take(limit + 1)
                .collect(),
        };
        let more = members.len() > limit;
        members.truncate(limit);
        MembersPage { members, more }
    }

    /// Whether `member` has a registered connection here, how many, and the apps they are
    /// subscribed to (sorted, each once); `None` when the member has none.
    pub fn member_presence(&self, member: MemberId) -> Option<MemberPresence> {
        let conns = self.members.get(&member)?;
        let mut apps: Vec<AppName> = conns
            .iter()
            .filter_map(|conn| self.connections.get(conn))
            .flat_map(|connection| connection.apps.iter().cloned())
            .collect();
        apps.sort_unstable();
        apps.dedup();
        Some(MemberPresence {
            connections: conns.len(),
            apps,
        })
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
        if let Identity::Member(member) = identity {
            self.members.entry(member).or_default().push(conn);
        }
        self.reply(conn, reply);
    }

    fn message(&mut self, conn: ConnId, payload: &[u8]) {
        if !self.connections.contains_key(&conn) {
            // Not registered (yet, or any more): a message racing a close. Nothing to answer.
            return;
        }
        match ClientRequest::parse(payload, self.config.max_app_name_len) {
            Ok(ClientRequest::Subscribe(app)) => self.subscribe(conn, app, None),
            Ok(ClientRequest::SubscribeWithHistory(app, recovery)) => {
                self.subscribe(conn, app, Some(recovery))
            }
            Ok(ClientRequest::Unsubscribe(app)) => {
                let reply = if self.leave(conn, &app) {
                    Reply::Unsubscribed(app)
                } else {
                    Reply::NotSubscribed(app)
                };
                self.reply(conn, reply);
            }
            Ok(ClientRequest::Ping) => self.reply(conn, Reply::Pong),
            Ok(_) => self.reply(conn, Reply::UnknownAction),
            Err(_) => self.reply(conn, Reply::BadSubscribe),
        }
    }

    fn subscribe(&mut self, conn: ConnId, app: AppName, recovery: Option<Recovery>) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        if app.is_reserved() {
            return self.reply(conn, Reply::SubscribeForbidden(app));
        }
        let private = self.config.private_apps.contains(&app);
        if connection.apps.len() >= self.config.max_subscriptions && !connection.apps.contains(&app)
        {
            return self.reply(conn, Reply::TooManySubscriptions);
        }
        match (private, connection.identity) {
            (true, Identity::Anonymous) => {
                return self.reply(conn, Reply::SubscribeForbidden(app));
            }
            (true, Identity::Member(_)) if !connection.access.allows(&app) => {
                return self.reply(conn, Reply::SubscribeForbidden(app));
            }
            (true, Identity::Member(_)) | (false, _) => {}
        }
        // From here on `app` is the map's own key: the name just parsed is dropped when the
        // app exists, so a subscription costs a refcount, not a copy of the name.
        let (app, subscribers) = match self.apps.entry(app) {
            btree_map::Entry::Occupied(entry) => (entry.key().clone(), entry.into_mut()),
            btree_map::Entry::Vacant(entry) => {
                let app = entry.key().clone();
                let subscribers = if private {
                    Subscribers::Private(BTreeMap::new())
                } else {
                    self.actions
                        .push_back(Action::InterestGained(Topic::App(app.clone())));
                    Subscribers::Public(HashSet::new(), BTreeMap::new())
                };
                (app, entry.insert(subscribers))
            }
        };
        let newly_subscribed = match (subscribers, connection.identity) {
            (Subscribers::Private(members), Identity::Member(member)) => {
                let conns = members.entry(member).or_insert_with(|| {
                    self.actions
                        .push_back(Action::InterestGained(Topic::Member {
                            app: app.clone(),
                            member,
                        }));
                    Vec::new()
                });
                let new = !conns.contains(&conn);
                if new {
                    conns.push(conn);
                }
                new
            }
            (Subscribers::Public(conns, members), identity) => {
                let new = conns.insert(conn);
                if let (true, Identity::Member(member)) = (new, identity) {
                    *members.entry(member).or_default() += 1;
                }
                new
            }
            (Subscribers::Private(_), Identity::Anonymous) => {
                unreachable!("anonymous connections were refused private apps above")
            }
        };
        if newly_subscribed {
            connection.apps.push(app.clone());
        }
        let topic = match connection.identity {
            Identity::Member(member) if private => Topic::Member {
                app: app.clone(),
                member,
            },
            _ => Topic::App(app.clone()),
        };
        // A subscribe request says how this subscription's pushes look from now on: with
        // positions, or (asked again without `recover`/`since`) as the seed's.
        if recovery.is_some() {
            self.positioned.entry(app.clone()).or_default().insert(conn);
        } else if !self.positioned.is_empty() {
            self.stop_positions(conn, &app);
        }
        self.actions.push_back(Action::Subscribed {
            conn,
            topic,
            frame: Reply::Subscribed(app).frame(),
            recovery: recovery.map(Box::new),
        });
    }

    fn stop_positions(&mut self, conn: ConnId, app: &AppName) {
        if let Some(conns) = self.positioned.get_mut(app) {
            conns.remove(&conn);
            if conns.is_empty() {
                self.positioned.remove(app);
                shrink_if_sparse(&mut self.positioned);
            }
        }
    }

    /// The connections of `topic` that subscribed with history (they receive positions), for
    /// a driver that must tell them something about their stream.
    pub fn positioned_subscribers(&self, topic: &Topic) -> Vec<ConnId> {
        let Some(positioned) = self.positioned.get(topic.app()) else {
            return Vec::new();
        };
        match (self.apps.get(topic.app()), topic.member()) {
            (Some(Subscribers::Private(members)), Some(member)) => members
                .get(&member)
                .map(|conns| {
                    conns
                        .iter()
                        .copied()
                        .filter(|c| positioned.contains(c))
                        .collect()
                })
                .unwrap_or_default(),
            (Some(Subscribers::Public(..)), None) => positioned.iter().copied().collect(),
            _ => Vec::new(),
        }
    }

    fn push(&mut self, publication: Publication) {
        let mut conns: Vec<ConnId> = match self.apps.get(&publication.app) {
            None => return,
            Some(Subscribers::Public(conns, _)) => recipients(conns),
            Some(Subscribers::Private(members)) => {
                match MemberId::new(publication.member_id).and_then(|m| members.get(&m)) {
                    Some(conns) => conns.clone(),
                    None => return,
                }
            }
        };
        // Subscribers with history get the positioned frame (encoded once here, whatever
        // their number); the others the seed's, as before.
        if let Some(position) = &publication.position
            && !self.positioned.is_empty()
            && let Some(positioned) = self.positioned.get(&publication.app)
        {
            let (with, without): (Vec<ConnId>, Vec<ConnId>) =
                conns.into_iter().partition(|c| positioned.contains(c));
            conns = without;
            if !with.is_empty() {
                self.actions.push_back(Action::DeliverAt {
                    conns: with,
                    frame: positioned_frame(&publication.frame, position),
                    app: publication.app.clone(),
                    position: Box::new(position.clone()),
                });
            }
        }
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
        shrink_if_sparse(&mut self.connections);
        if let Identity::Member(member) = connection.identity
            && let Some(conns) = self.members.get_mut(&member)
        {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.members.remove(&member);
                shrink_if_sparse(&mut self.members);
            }
        }
        for app in &connection.apps {
            self.remove_subscriber(conn, connection.identity, app);
        }
        true
    }

    /// Unsubscribes `conn` from `app`. Returns whether it was subscribed.
    fn leave(&mut self, conn: ConnId, app: &AppName) -> bool {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return false;
        };
        let Some(at) = connection.apps.iter().position(|a| a == app) else {
            return false;
        };
        connection.apps.swap_remove(at);
        let identity = connection.identity;
        self.remove_subscriber(conn, identity, app);
        true
    }

    /// Takes `conn` out of `app`'s subscribers (not out of its own list of apps), and the app
    /// or the member's topic out of the interests when it was the last.
    fn remove_subscriber(&mut self, conn: ConnId, identity: Identity, app: &AppName) {
        if !self.positioned.is_empty() {
            self.stop_positions(conn, app);
        }
        let Some(subscribers) = self.apps.get_mut(app) else {
            return;
        };
        match (&mut *subscribers, identity) {
            (Subscribers::Public(conns, members), identity) => {
                let removed = conns.remove(&conn);
                shrink_set_if_sparse(conns);
                if let (true, Identity::Member(member)) = (removed, identity)
                    && let btree_map::Entry::Occupied(mut count) = members.entry(member)
                {
                    *count.get_mut() -= 1;
                    if *count.get() == 0 {
                        count.remove();
                    }
                }
            }
            (Subscribers::Private(members), Identity::Member(member)) => {
                if let Some(conns) = members.get_mut(&member) {
                    conns.retain(|c| *c != conn);
                    if conns.is_empty() {
                        members.remove(&member);
                        self.actions.push_back(Action::InterestLost(Topic::Member {
                            app: app.clone(),
                            member,
                        }));
                    }
                }
            }
            (Subscribers::Private(_), Identity::Anonymous) => {}
        }
        if subscribers.count() == 0 {
            if let Subscribers::Public(..) = subscribers {
                self.actions
                    .push_back(Action::InterestLost(Topic::App(app.clone())));
            }
            self.apps.remove(app);
        }
    }
}
