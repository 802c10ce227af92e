//! Subscriptions with history: the reply that says where the stream stands, and with `since`
//! the replay of what the client missed, merged with the live stream without a gap or a
//! duplicate (`docs/protocol.md`, "History and recovery").
//!
//! The hub registers the subscription first, so live pushes reach the connection from that
//! moment; the node holds them (behind an [`Item::Recovery`] entry of the connection's held
//! queue) and reads the history only once the topic is live on this node (with a broker: once
//! it confirmed the subscription). Whatever was published before the read is in the read; what
//! was published after it arrives live. The reply and the replay then take the entry's place,
//! and every live push the replay already carried — same epoch, offset up to the top the read
//! saw — is left out, both those held and those still on their way from the broker
//! ([`Recoveries::replayed`]).
//!
//! With the local broker the history is the node's own and the read happens at once, under the
//! node's lock; with Redis or NATS it runs on a task ([`Read`]) and its answer comes back
//! through [`super::Node::read_done`].

use std::collections::{BTreeSet, HashMap};

use gateway_core::{
    AppName, ConnId, Epoch, Frame, HistoryRead, Position, Publication, Recovery, Since, Topic,
};

/// A subscription's recovery, from the hub's action until its read answered.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) conn: ConnId,
    pub(super) topic: Topic,
    pub(super) recovery: Recovery,
}

/// A history read to run once the node's lock is released.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) purpose: Purpose,
    pub(super) topic: Topic,
    pub(super) since: Option<Since>,
    pub(super) limit: usize,
}

/// Who asked for a [`Read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Recovery job `id`.
    Recovery(u64),
    /// The sequencer, to fill a hole of the topic.
    Hole,
}

/// What the replay of a completed recovery covered: the connection's pushes of `app` in
/// `epoch` up to `offset` were replayed (or predate the subscription), so live copies of them
/// are left out until a newer one passes.
#[derive(Debug, Clone)]
struct Replayed {
    app: AppName,
    epoch: Epoch,
    offset: u64,
}

#[derive(Debug, Default)]
pub(super) struct Recoveries {
    next_id: u64,
    jobs: HashMap<u64, Job>,
    /// The jobs waiting for their topic's confirmation, by topic, and every job by connection:
    /// a confirmation or a disconnection finds its jobs without a scan (a mass reconnection
    /// starts one job per connection).
    waiting: HashMap<Topic, BTreeSet<u64>>,
    by_conn: HashMap<ConnId, Vec<u64>>,
    /// Reads to start once the lock is released.
    pub(super) reads: Vec<Read>,
    replayed: HashMap<ConnId, Vec<Replayed>>,
}

impl Recoveries {
    /// Records `job`; `waiting`: it reads only once its topic is confirmed.
    pub(super) fn start(&mut self, job: Job, waiting: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        if waiting {
            self.waiting
                .entry(job.topic.clone())
                .or_default()
                .insert(id);
        }
        self.by_conn.entry(job.conn).or_default().push(id);
        self.jobs.insert(id, job);
        id
    }

    pub(super) fn job(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub(super) fn finish(&mut self, id: u64) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        if let Some(ids) = self.by_conn.get_mut(&job.conn) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_conn.remove(&job.conn);
            }
        }
        self.stop_waiting(&job.topic, id);
        Some(job)
    }

    fn stop_waiting(&mut self, topic: &Topic, id: u64) {
        if self.waiting.is_empty() {
            return;
        }
        if let Some(ids) = self.waiting.get_mut(topic) {
            ids.remove(&id);
            if ids.is_empty() {
                self.waiting.remove(topic);
            }
        }
    }

    /// The jobs that waited for `topic` to be confirmed, oldest first: they may read now.
    pub(super) fn confirmed(&mut self, topic: &Topic) -> Vec<u64> {
        let ready = self.waiting.remove(topic).unwrap_or_default();
        ready.into_iter().collect()
    }

    /// From now on, `conn`'s live pushes of `app` up to `top` are left out.
    pub(super) fn replayed_up_to(&mut self, conn: ConnId, app: &AppName, top: &Position) {
        let entries = self.replayed.entry(conn).or_default();
        entries.retain(|r| r.app != *app);
        entries.push(Replayed {
            app: app.clone(),
            epoch: top.epoch.clone(),
            offset: top.offset,
        });
    }

    /// Whether `conn` already has the push of `app` at `position` (from a replay). A newer
    /// push, or one of another run, ends the check for that app: the stream reaches this node
    /// in order, so nothing older follows it.
    pub(super) fn already_sent(
        &mut self,
        conn: ConnId,
        app: &AppName,
        position: &Position,
    ) -> bool {
        if self.replayed.is_empty() {
            return false;
        }
        let Some(entries) = self.replayed.get_mut(&conn) else {
            return false;
        };
        let Some(at) = entries.iter().position(|r| r.app == *app) else {
            return false;
        };
        let entry = &entries[at];
        if entry.epoch == position.epoch && position.offset <= entry.offset {
            return true;
        }
        entries.swap_remove(at);
        if entries.is_empty() {
            self.replayed.remove(&conn);
        }
        false
    }

    /// `conn` is gone: its pending recoveries and replay marks with it.
    pub(super) fn forget(&mut self, conn: ConnId) {
        if !self.replayed.is_empty() {
            self.replayed.remove(&conn);
        }
        let Some(ids) = self.by_conn.remove(&conn) else {
            return;
        };
        for id in ids {
            if let Some(job) = self.jobs.remove(&id) {
                self.stop_waiting(&job.topic, id);
            }
        }
    }

    /// Jobs pending, and the index entries that must shrink with them (tests).
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize, usize) {
        (self.jobs.len(), self.waiting.len(), self.by_conn.len())
    }
}

/// The longest replay one recovery may send: half of the connection's queue bounds
/// (`limits.outbox_messages`, `limits.outbox_bytes`), so the replay and the live pushes behind
/// it fit without closing the client with 4100. A client that missed more than this is told
/// `recovered:false` (and continues live) rather than closed on every reconnection.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayCap {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

impl ReplayCap {
    pub(super) fn of(limits: super::held::HeldLimits) -> ReplayCap {
        ReplayCap {
            messages: (limits.messages / 2).max(1),
            bytes: (limits.bytes / 2).max(1),
        }
    }
}

/// What to answer a recovery whose read returned `read` (`None`: the read failed): whether it
/// recovered (`since` only), the stream's top, and the frames to replay, each with its
/// position. A replay that would not reach the top within `cap` is not sent: the answer is
/// then `recovered:false`.
pub(super) fn outcome(
    recovery: &Recovery,
    read: Option<HistoryRead>,
    cap: ReplayCap,
) -> (Option<bool>, Option<Position>, Vec<Frame>) {
    let since = recovery.since();
    let Some(read) = read else {
        // Unknown where the stream stands: `recovered:false` (for `recover` too), never a
        // reply without a position that would read as "no push yet".
        return (Some(false), None, Vec::new());
    };
    let Some(since) = since else {
        return (None, read.top, Vec::new());
    };
    if !read.recovered(since) {
        return (Some(false), read.top, Vec::new());
    }
    // The read was limited to one more than the cap: a replay that does not end at the top
    // left pushes out.
    let reaches_top = match (&read.top, read.publications.last()) {
        (None, _) => true,
        (Some(top), _) if top.offset == since.offset() => true,
        (Some(top), Some(last)) => last.position.as_ref() == Some(top),
        (Some(_), None) => false,
    };
    if read.publications.len() > cap.messages || !reaches_top {
        return (Some(false), read.top, Vec::new());
    }
    let frames: Vec<Frame> = read
        .publications
        .iter()
        .filter_map(Publication::positioned_frame)
        .collect();
    if frames.iter().map(Frame::len).sum::<usize>() > cap.bytes {
        return (Some(false), read.top, Vec::new());
    }
    (Some(true), read.top, frames)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gateway_core::AppName;

    fn topic(app: &str) -> Topic {
        Topic::App(AppName::parse(app, 128).unwrap())
    }

    fn job(conn: u64, app: &str) -> Job {
        Job {
            conn: ConnId::new(conn),
            topic: topic(app),
            recovery: Recovery::Positions,
        }
    }

    #[test]
    fn confirmations_and_disconnections_find_their_jobs_and_leave_no_entry_behind() {
        let mut r = Recoveries::default();
        let a1 = r.start(job(1, "a"), true);
        let a2 = r.start(job(2, "a"), true);
        let b2 = r.start(job(2, "b"), true);
        let c3 = r.start(job(3, "c"), false);
        assert_eq!(r.sizes(), (4, 2, 3));

        // Connection 1 leaves: its job no longer waits for `a`.
        r.forget(ConnId::new(1));
        assert!(r.job(a1).is_none());
        assert_eq!(r.confirmed(&topic("a")), [a2]);
        assert!(r.confirmed(&topic("a")).is_empty(), "confirmed once");

        // Finished jobs leave both indexes.
        assert_eq!(r.finish(a2).unwrap().conn, ConnId::new(2));
        assert_eq!(r.finish(c3).unwrap().topic, topic("c"));
        assert!(r.finish(c3).is_none());
        assert_eq!(r.sizes(), (1, 1, 1));
        r.forget(ConnId::new(2));
        assert!(r.job(b2).is_none());
        assert!(r.confirmed(&topic("b")).is_empty());
        assert_eq!(r.sizes(), (0, 0, 0));
    }
}
