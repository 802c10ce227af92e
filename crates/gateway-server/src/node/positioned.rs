//! The node's work for subscriptions with positions (`docs/protocol.md`, "History and
//! recovery"): delivering positioned pushes, a recovery's read and its answer (see
//! [`super::recovery`]), and passing on what the sequencer filled or gave up, with the `409`
//! notices in their places (see [`super::sequencer`]).

use std::time::Instant;

use gateway_broker::Broker;
use gateway_core::{
    AppName, ConnId, Frame, HistoryRead, Input, Position, Publication, Recovery, Reply, Topic,
};

use super::held::Item;
use super::recovery::{self, Job, Purpose, Read, ReplayCap};
use super::{Inner, timestamp, to_message};
use crate::counters::HistoryCounters;

impl Inner {
    /// A push with its position to subscriptions with history: each connection gets it unless
    /// a recovery replayed it already; where frames are held it is held with its position, so
    /// a recovery completed later can leave it out.
    pub(super) fn deliver_at(
        &mut self,
        conns: Vec<ConnId>,
        frame: Frame,
        app: AppName,
        position: Position,
    ) {
        let message = to_message(frame);
        let at = Instant::now();
        let mut delivered = 0;
        for conn in conns {
            if self.recoveries.already_sent(conn, &app, &position) {
                continue;
            }
            if self.held.holds(conn) {
                let item = Item::Push {
                    message: message.clone(),
                    app: app.clone(),
                    position: position.clone(),
                };
                if self
                    .held
                    .hold_item(conn, None, item, self.held_limits)
                    .is_err()
                {
                    self.hub.handle(Input::OutboxFull { conn });
                }
            } else if let Some(outbox) = self.outboxes.get(&conn) {
                if outbox.push_delivery(message.clone(), at).is_ok() {
                    delivered += 1;
                } else {
                    self.hub.handle(Input::OutboxFull { conn });
                }
            }
        }
        self.queued_frames += delivered;
        self.counters.delivered(delivered);
    }

    /// A subscription with history: its place in the connection's queue is held until the
    /// history is read (once the topic is live here), see [`recovery`].
    pub(super) fn subscribed_with_history(
        &mut self,
        conn: ConnId,
        topic: Topic,
        recovery: Recovery,
    ) {
        let app = topic.app().clone();
        if !self.policy.enabled(&app) {
            // No history for this app: no positions, nothing to recover.
            let recovered = recovery.since().map(|_| false);
            HistoryCounters::add(&self.counters.history.subscriptions);
            if recovered.is_some() {
                HistoryCounters::add(&self.counters.history.not_recovered);
            }
            let reply = Reply::SubscribedAt {
                app,
                recovered,
                position: None,
            };
            return self.subscribed(conn, topic, reply.frame());
        }
        let waiting = !self.pending.is_empty() && self.pending.contains_key(&topic);
        let gate = waiting.then(|| topic.clone());
        let id = self.recoveries.start(
            Job {
                conn,
                topic,
                recovery,
            },
            waiting,
        );
        if self
            .held
            .hold_item(conn, gate, Item::Recovery(id), self.held_limits)
            .is_err()
        {
            self.recoveries.finish(id);
            self.hub.handle(Input::OutboxFull { conn });
            return;
        }
        if !waiting {
            self.start_read(id);
        }
    }

    /// Reads the history recovery `id` needs: at once from the node's own history, else on a
    /// task once the lock is released.
    pub(super) fn start_read(&mut self, id: u64) {
        let Some(job) = self.recoveries.job(id) else {
            return;
        };
        let since = job.recovery.since().cloned();
        // The whole kept history fits in one read, unless it is longer than a replay may be
        // (one more then shows the replay would not reach the top); without `since` only the
        // top is needed.
        let limit = if since.is_some() {
            let cap = ReplayCap::of(self.held_limits).messages;
            self.policy
                .limits(job.topic.app())
                .size
                .min(cap.saturating_add(1))
        } else {
            0
        };
        let topic = job.topic.clone();
        if let Some(history) = self.history.as_mut() {
            let read = history.read(&topic, since.as_ref(), limit, timestamp(self.started));
            self.complete_recovery(id, Some(read));
        } else {
            self.recoveries.reads.push(Read {
                purpose: Purpose::Recovery(id),
                topic,
                since,
                limit,
            });
        }
    }

    /// Recovery `id`'s read answered (`None`: it failed): the reply and the replay take the
    /// recovery's place in the connection's queue, and what the replay covered is left out of
    /// the live stream.
    pub(super) fn complete_recovery(&mut self, id: u64, read: Option<HistoryRead>) {
        let Some(job) = self.recoveries.finish(id) else {
            return;
        };
        let conn = job.conn;
        if !self.outboxes.contains_key(&conn) {
            return;
        }
        let app = job.topic.app().clone();
        let (recovered, top, replay) =
            recovery::outcome(&job.recovery, read, ReplayCap::of(self.held_limits));
        let history = &self.counters.history;
        HistoryCounters::add(&history.subscriptions);
        match recovered {
            Some(true) => HistoryCounters::add(&history.recovered),
            Some(false) => HistoryCounters::add(&history.not_recovered),
            None => {}
        }
        let mut frames = Vec::with_capacity(1 + replay.len());
        let reply = Reply::SubscribedAt {
            app: app.clone(),
            recovered,
            position: top.clone(),
        };
        frames.push(to_message(reply.frame()));
        frames.extend(replay.into_iter().map(to_message));
        if let Some(top) = &top {
            self.recoveries.replayed_up_to(conn, &app, top);
        }
        let covered = |a: &AppName, p: &Position| {
            top.as_ref()
                .is_some_and(|t| *a == app && p.epoch == t.epoch && p.offset <= t.offset)
        };
        let pending = &self.pending;
        let released = self
            .held
            .complete_recovery(conn, id, frames, covered, |t| pending.contains_key(t));
        self.queue_released(released);
    }

    /// A read to fill a hole of `topic` answered (`None`: it failed): what it filled goes
    /// to the hub in order; subscribers with positions hear of what it could not.
    pub(super) fn fill_hole(
        &mut self,
        topic: &Topic,
        read: Option<HistoryRead>,
        broker: &dyn Broker,
    ) {
        let filled = self.sequencer.fetched(topic, read);
        if let Some(since) = filled.fetch.clone() {
            self.recoveries.reads.push(Read {
                purpose: Purpose::Hole,
                topic: topic.clone(),
                since: Some(since),
                limit: self.policy.limits(topic.app()).size,
            });
        }
        if filled.lost.is_empty() && !filled.deliver.is_empty() {
            HistoryCounters::add(&self.counters.history.holes_filled);
        }
        self.pass_on(topic, filled.deliver, &filled.lost, broker);
    }

    /// Hands the sequencer's `deliver` to the hub in order, with a `409 pushes to <app> lost`
    /// to `topic`'s subscribers with positions at each place in `lost`: after the pushes
    /// that precede that hole, before those that follow it.
    pub(super) fn pass_on(
        &mut self,
        topic: &Topic,
        deliver: Vec<Publication>,
        lost: &[(usize, Position)],
        broker: &dyn Broker,
    ) {
        let mut lost = lost.iter().peekable();
        for (index, publication) in deliver.into_iter().enumerate() {
            while let Some((_, position)) = lost.next_if(|(at, _)| *at == index) {
                self.apply(broker);
                self.tell_lost(topic, position);
            }
            self.hub.handle(Input::Push(publication));
        }
        for (_, position) in lost {
            self.apply(broker);
            self.tell_lost(topic, position);
        }
    }

    /// `409 pushes to <app> lost` to `topic`'s subscribers with positions.
    pub(super) fn tell_lost(&mut self, topic: &Topic, position: &Position) {
        HistoryCounters::add(&self.counters.history.holes_lost);
        let frame = Reply::PushesLost {
            app: topic.app().clone(),
            position: position.clone(),
        }
        .frame();
        for conn in self.hub.positioned_subscribers(topic) {
            self.send(conn, to_message(frame.clone()));
        }
    }
}
