//! Questions a node asks the whole cluster, and their answers: which connections a member has
//! (to close them, `POST /disconnect`) and who is online (`GET /presence`).
//!
//! With a broker, a node publishes the question to a control channel every node listens to,
//! each node (the asking one too) answers on the asker's own reply channel, and the asker
//! gathers the answers of every node of the cluster view until all have answered or
//! `timeouts.cluster_query_ms` passed. The channels are topics of reserved app names (starting
//! with [`AppName::RESERVED_PREFIX`]) that are never given to the hub: a client may not
//! subscribe to such a name, a backend may not push to it. Alone (the local broker), a node
//! answers itself directly.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_broker::{BrokerError, SharedBroker};
use gateway_core::{AppName, Frame, MemberId, NO_MEMBER, Publication, Topic};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Node;

const RESERVED_PREFIX: &str = AppName::RESERVED_PREFIX;

/// A question for every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Query {
    /// Close the member's connections (4403), or remove them from `app` (410 notice).
    Disconnect { member_id: i64, app: Option<String> },
    /// The members on `app` after `after`, at most `limit`.
    AppMembers {
        app: String,
        after: Option<i64>,
        limit: usize,
    },
    /// The member's connections and apps.
    Member { member_id: i64 },
}

/// One node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Answer {
    Disconnect {
        connections: usize,
    },
    AppMembers {
        members: Vec<i64>,
        more: bool,
    },
    Member {
        connections: usize,
        apps: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    /// The asking node's id: answers go to its reply channel.
    from: String,
    query: Query,
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    id: u64,
    node: String,
    answer: Answer,
}

/// What the cluster answered.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    /// Each answering node's answer, by node id.
    pub answers: Vec<(String, Answer)>,
    /// Nodes of the cluster view that did not answer in time: what they hold is unknown.
    pub unanswered: Vec<String>,
}

/// The node's side of the control channel: its id, and the questions it is waiting on.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// The node itself, to answer questions on a task of their own.
    node: OnceLock<Weak<Node>>,
    node_id: OnceLock<String>,
    /// How long a node seen in the cluster view (or answering) is still expected to answer.
    remember: OnceLock<Duration>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<(String, Answer)>>>,
    /// Every node seen lately, with when. A report that expired because its node was busy
    /// for a moment must not make that node's connections vanish from an answer that says
    /// `200`: a node seen within `remember` is waited for, and named if silent.
    known: Mutex<HashMap<String, Instant>>,
    /// Nodes that said they were leaving (a graceful shutdown), with when (Unix ms): not waited
    /// for, unless a report of theirs made later says they are back.
    left: Mutex<HashMap<String, u64>>,
}

impl Control {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn left(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.left.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A node's goodbye, on the control channel: it stops answering, nobody should wait for it.
#[derive(Debug, Serialize, Deserialize)]
struct Leave {
    leave: String,
    at_ms: u64,
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn control_topic() -> Topic {
    Topic::App(
        AppName::parse(&format!("{RESERVED_PREFIX}control"), usize::from(u16::MAX))
            .expect("a constant, valid name"),
    )
}

/// The reply channel of node `node`; `None` for a name that cannot be one (node ids are at
/// most 128 printable characters, `broker.node_id`): a question from the wire may carry
/// anything.
fn reply_topic(node: &str) -> Option<Topic> {
    if node.is_empty() || node.len() > 128 {
        return None;
    }
    AppName::parse(
        &format!("{RESERVED_PREFIX}reply/{node}"),
        usize::from(u16::MAX),
    )
    .ok()
    .map(Topic::App)
}

fn control_publication(topic: &Topic, json: Vec<u8>) -> Publication {
    Publication {
        app: topic.app().clone(),
        member_id: NO_MEMBER,
        frame: Frame::from_utf8(Bytes::from(json)).expect("serde_json writes UTF-8"),
        position: None,
    }
}

/// Drops the waiter of a question however its asker ends (answered, timed out, cancelled).
struct Waiting<'a> {
    control: &'a Control,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.control
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Node {
    /// Starts listening on the control channel and this node's reply channel, as `node_id`.
    /// Only for a node with a broker that carries messages between nodes. A node that was
    /// in the cluster view within `remember` is waited for (and named when it does not answer).
    pub(crate) fn listen_for_control(self: &Arc<Self>, node_id: &str, remember: Duration) {
        if self.control.node_id.set(node_id.to_owned()).is_err() {
            return;
        }
        let _ = self.control.node.set(Arc::downgrade(self));
        let _ = self.control.remember.set(remember);
        // Question ids start anywhere: answers still on their way to this node's previous
        // process (the same node id after a restart) must not match this one's questions.
        let start = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::time::SystemTime::now(),
        );
        self.control.next_id.store(start, Ordering::Relaxed);
        let broker = self.broker();
        // Confirmations of these are not waited for: a question asked before they are live
        // goes unanswered and says so.
        let _ = broker.subscribe(&control_topic(), 0);
        if let Some(replies) = reply_topic(node_id) {
            let _ = broker.subscribe(&replies, 0);
        }
    }

    /// This node's own answer to `query`.
    pub(crate) fn answer(&self, query: &Query) -> Answer {
        let max_app_name_len = self.hub_config.max_app_name_len;
        match query {
            Query::Disconnect { member_id, app } => {
                let Some(member) = MemberId::new(*member_id) else {
                    return Answer::Disconnect { connections: 0 };
                };
                let app = match app.as_deref().map(|a| AppName::parse(a, max_app_name_len)) {
                    None => None,
                    Some(Ok(app)) => Some(app),
                    Some(Err(_)) => return Answer::Disconnect { connections: 0 },
                };
                let mut inner = self.lock();
                let connections = inner.hub.disconnect_member(member, app.as_ref());
                inner.apply(self.broker());
                self.unlock(inner);
                Answer::Disconnect { connections }
            }
            Query::AppMembers { app, after, limit } => {
                let Ok(app) = AppName::parse(app, max_app_name_len) else {
                    return Answer::AppMembers {
                        members: Vec::new(),
                        more: false,
                    };
                };
                let after = after.and_then(MemberId::new);
                let page = self.lock().hub.app_members(&app, after, *limit);
                Answer::AppMembers {
                    members: page.members.iter().map(|m| m.get()).collect(),
                    more: page.more,
                }
            }
            Query::Member { member_id } => {
                let presence = MemberId::new(*member_id)
                    .and_then(|member| self.lock().hub.member_presence(member));
                match presence {
                    None => Answer::Member {
                        connections: 0,
                        apps: Vec::new(),
                    },
                    Some(presence) => Answer::Member {
                        connections: presence.connections,
                        apps: presence.apps.iter().map(|a| a.to_string()).collect(),
                    },
                }
            }
        }
    }

    /// Asks every node of the cluster view (this one included) and gathers their answers for
    /// at most `timeout`. Alone, the node answers itself. An error means the question could
    /// not be sent (the broker is down): nobody acted on it.
    pub(crate) async fn ask_cluster(
        &self,
        query: Query,
        timeout: Duration,
    ) -> Result<Gathered, BrokerError> {
        let Some(node_id) = self.control.node_id.get().cloned() else {
            let answer = self.answer(&query);
            return Ok(Gathered {
                answers: vec![(String::new(), answer)],
                unanswered: Vec::new(),
            });
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let reports = tokio::time::timeout_at(deadline, self.broker().cluster())
            .await
            .map_err(|_| {
                BrokerError::Unavailable("the cluster view did not answer in time".into())
            })??;
        let mut expected: BTreeSet<String> = {
            let now = Instant::now();
            let remember = self.control.remember.get().copied().unwrap_or_default();
            let mut known = self.control.known();
            let mut left = self.control.left();
            for report in reports {
                match left.get(&report.node) {
                    // The report of a node that has left since: not waited for.
                    Some(at) if *at >= report.at_ms => {}
                    _ => {
                        left.remove(&report.node);
                        known.insert(report.node, now);
                    }
                }
            }
            // A goodbye is kept as long as the report it overrides may live.
            let oldest = unix_millis().saturating_sub(remember.as_millis() as u64);
            left.retain(|_, at| *at >= oldest);
            known.retain(|_, seen| now.saturating_duration_since(*seen) <= remember);
            known.keys().cloned().collect()
        };
        expected.insert(node_id.clone());

        let id = self.control.next_id.fetch_add(1, Ordering::Relaxed);
        let (answers_tx, mut answers_rx) = mpsc::unbounded_channel();
        self.control
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, answers_tx);
        let _waiting = Waiting {
            control: &self.control,
            id,
        };
        let request = Request {
            id,
            from: node_id,
            query,
        };
        let json = serde_json::to_vec(&request).expect("a request serializes");
        let control = control_topic();
        tokio::time::timeout_at(
            deadline,
            self.broker()
                .publish(&control, control_publication(&control, json)),
        )
        .await
        // Sent but not confirmed in time: some nodes may have acted (504, not 503).
        .map_err(|_| BrokerError::TimedOut(timeout))??;

        let mut gathered = Gathered::default();
        while !expected.is_empty() {
            match tokio::time::timeout_at(deadline, answers_rx.recv()).await {
                Ok(Some((node, answer))) => {
                    expected.remove(&node);
                    gathered.answers.push((node, answer));
                }
                Ok(None) | Err(_) => break,
            }
        }
        gathered.unanswered = expected.into_iter().collect();
        Ok(gathered)
    }

    /// A message on one of the reserved channels: a question to answer, or an answer to one of
    /// this node's questions. Called by the broker's reader: answering is left to a task.
    pub(super) fn control_message(&self, publication: Publication) {
        let bytes = publication.frame.as_bytes();
        if let Ok(request) = serde_json::from_slice::<Request>(bytes) {
            let Some(node_id) = self.control.node_id.get().cloned() else {
                return;
            };
            // Checked before acting: an answer that cannot be sent back is not worth acting on.
            let Some(to) = reply_topic(&request.from) else {
                debug!("dropped a control question with an impossible asker");
                return;
            };
            let (Some(node), Some(broker)) = (
                self.control.node.get().and_then(Weak::upgrade),
                self.broker.get().cloned(),
            ) else {
                return;
            };
            // Answered on a task of its own: the broker's reader goes on with publications.
            tokio::spawn(async move {
                let response = Response {
                    id: request.id,
                    node: node_id,
                    answer: node.answer(&request.query),
                };
                let json = serde_json::to_vec(&response).expect("a response serializes");
                let broker: SharedBroker = broker;
                if let Err(err) = broker.publish(&to, control_publication(&to, json)).await {
                    warn!(%err, "cannot answer a cluster question (its asker reports this node as unanswered)");
                }
            });
        } else if let Ok(response) = serde_json::from_slice::<Response>(bytes) {
            self.control
                .known()
                .insert(response.node.clone(), Instant::now());
            let waiting = self
                .control
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(answers) = waiting.get(&response.id) {
                let _ = answers.send((response.node, response.answer));
            }
        } else if let Ok(leave) = serde_json::from_slice::<Leave>(bytes) {
            debug!(node = leave.leave, "a node left the cluster");
            self.control.known().remove(&leave.leave);
            self.control.left().insert(leave.leave, leave.at_ms);
        } else {
            debug!(app = %publication.app, "dropped an unreadable control message");
        }
    }

    /// Tells every node that this one is leaving (a graceful shutdown), so that their
    /// `/disconnect` and `/presence` stop waiting for it at once rather than answering `504`
    /// while its report lives on. Best effort, within `timeout`.
    pub(crate) async fn leave_cluster(&self, timeout: Duration) {
        let Some(node_id) = self.control.node_id.get().cloned() else {
            return;
        };
        let leave = Leave {
            leave: node_id,
            at_ms: unix_millis(),
        };
        let json = serde_json::to_vec(&leave).expect("a goodbye serializes");
        let control = control_topic();
        let publishing = self
            .broker()
            .publish(&control, control_publication(&control, json));
        if let Err(err) = tokio::time::timeout(timeout, publishing)
            .await
            .unwrap_or(Err(BrokerError::TimedOut(timeout)))
        {
            debug!(%err, "could not tell the cluster this node is leaving");
        }
    }
}
