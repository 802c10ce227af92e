//! Counts of events an operator watches. Read with [`Gateway::counters`](crate::Gateway::counters);
//! exported by `GET /metrics` (the `metrics` module reads them at scrape time) and summed up by
//! `GET /api/overview`.
//!
//! Every count is a relaxed atomic, bumped where the event is handled. The push path adds per
//! publication or per written batch, never per recipient: see [`Counters::delivered`] and
//! [`Counters::batch_written`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gateway_core::CloseCode;

use crate::metrics::histogram::{AUTH_BOUNDS_S, AtomicHistogram, PUSH_TO_WRITE_BOUNDS_S, Snapshot};
use crate::metrics::series::Series;

/// How a connection's auth message was answered, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthResult {
    /// A member the authenticator accepted.
    Member,
    /// `member_id` -1: anonymous by choice.
    Anonymous,
    /// A member the authenticator refused (continues as anonymous).
    Refused,
    /// The authenticator could not decide (backend down, 5xx); treated as refused.
    BackendError,
    /// No auth message within `timeouts.auth_ms` (closed with 4408).
    Timeout,
    /// A first message that is not an auth message (closed with 4400).
    BadMessage,
}

impl AuthResult {
    pub(crate) const ALL: [AuthResult; 6] = [
        AuthResult::Member,
        AuthResult::Anonymous,
        AuthResult::Refused,
        AuthResult::BackendError,
        AuthResult::Timeout,
        AuthResult::BadMessage,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthResult::Member => "member",
            AuthResult::Anonymous => "anonymous",
            AuthResult::Refused => "refused",
            AuthResult::BackendError => "backend_error",
            AuthResult::Timeout => "timeout",
            AuthResult::BadMessage => "bad_message",
        }
    }
}

/// Why a `POST /push` was refused, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushRefusal {
    /// 400: a body that is not a valid push, or could not be read.
    BadRequest,
    /// 401: no or a wrong push API key.
    Unauthorized,
    /// 403: not allowed from the peer's address.
    Forbidden,
    /// 405: not a `POST`.
    MethodNotAllowed,
    /// 408: the body did not arrive in time, or was evicted for newer pushes.
    BodyTimeout,
    /// 413: over `limits.max_push_body_bytes`.
    TooLarge,
    /// 503: `limits.max_inflight_pushes` or `limits.max_buffered_push_bytes` reached.
    Overloaded,
    /// 503: the gateway is shutting down.
    ShuttingDown,
    /// 503: the broker did not take the push (nobody received it).
    BrokerUnavailable,
    /// 504: the broker failed after the push was sent (it may have been delivered).
    OutcomeUnknown,
}

impl PushRefusal {
    pub(crate) const ALL: [PushRefusal; 10] = [
        PushRefusal::BadRequest,
        PushRefusal::Unauthorized,
        PushRefusal::Forbidden,
        PushRefusal::MethodNotAllowed,
        PushRefusal::BodyTimeout,
        PushRefusal::TooLarge,
        PushRefusal::Overloaded,
        PushRefusal::ShuttingDown,
        PushRefusal::BrokerUnavailable,
        PushRefusal::OutcomeUnknown,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            PushRefusal::BadRequest => "bad_request",
            PushRefusal::Unauthorized => "unauthorized",
            PushRefusal::Forbidden => "forbidden",
            PushRefusal::MethodNotAllowed => "method_not_allowed",
            PushRefusal::BodyTimeout => "body_timeout",
            PushRefusal::TooLarge => "too_large",
            PushRefusal::Overloaded => "overloaded",
            PushRefusal::ShuttingDown => "shutting_down",
            PushRefusal::BrokerUnavailable => "broker_unavailable",
            PushRefusal::OutcomeUnknown => "outcome_unknown",
        }
    }
}

#[derive(Debug)]
pub struct Counters {
    /// When the counters (the gateway) started, for uptime.
    started: Instant,
    /// The dashboard's recent history, filled by the sampler task.
    pub(crate) series: Series,
    /// Set once the accept loops run.
    listening: AtomicBool,
    /// WebSocket connections opened since start.
    connections_opened: AtomicU64,
    /// Indexed like [`AuthResult::ALL`].
    auths: [AtomicU64; AuthResult::ALL.len()],
    /// How long the authenticator took to decide on a member's token.
    auth_latency: AtomicHistogram<{ AUTH_BOUNDS_S.len() }>,
    pushes_accepted: AtomicU64,
    /// `POST /push` requests with an array or `member_ids` whose every publication the broker
    /// took; with `pushes_accepted`, the mean batch size.
    push_batches: AtomicU64,
    /// Indexed like [`PushRefusal::ALL`].
    push_refusals: [AtomicU64; PushRefusal::ALL.len()],
    /// Publications queued to a connection's outbox.
    deliveries: AtomicU64,
    /// Frames taken from outboxes to be written (or dropped with their connection); with the
    /// frames the node queued, the frames waiting in outboxes now.
    frames_taken: AtomicU64,
    /// Frames (pings) a connection queued to its own outbox.
    frames_self_queued: AtomicU64,
    /// From the oldest push in a written batch being at the node to the batch's write done.
    push_to_write: AtomicHistogram<{ PUSH_TO_WRITE_BOUNDS_S.len() }>,
    /// A gauge: WebSocket connections open now (authenticated or not).
    open_connections: AtomicU64,
    /// A gauge: connections (both listeners) that have not finished their request head.
    open_handshakes: AtomicU64,
    /// The highest `open_connections + open_handshakes` since [`Counters::take_peak`] last
    /// reset it.
    open_peak: AtomicU64,
    handshakes_evicted: AtomicU64,
    head_timeouts: AtomicU64,
    accept_errors: AtomicU64,
    refused_per_address: AtomicU64,
    push_body_timeouts: AtomicU64,
    auth_backend_errors: AtomicU64,
    upgrades_refused: AtomicU64,
    broker_publish_failures: AtomicU64,
    broker_gaps: AtomicU64,
    broker_disconnects: AtomicU64,
    broker_unreadable: AtomicU64,
    /// Indexed like [`CloseCode::ALL`].
    closes: [AtomicU64; CloseCode::ALL.len()],
    /// Connections the client closed with a close frame.
    client_closes: AtomicU64,
    /// Connections that ended without a close frame (reset, EOF, a failed write).
    lost_connections: AtomicU64,
    /// Subscriptions with history: recoveries, repaired holes, losses.
    pub history: HistoryCounters,
}

/// What history and recovery did (`/metrics`: `ws_gateway_history_*`).
#[derive(Debug, Default)]
pub struct HistoryCounters {
    /// Subscriptions with `recover` or `since` answered (reply sent).
    pub subscriptions: AtomicU64,
    /// Of those with `since`: answered `"recovered":true` …
    pub recovered: AtomicU64,
    /// … and `"recovered":false`.
    pub not_recovered: AtomicU64,
    /// History reads that failed (the broker did not answer): the recovery says
    /// `"recovered":false`, a hole is reported lost.
    pub reads_failed: AtomicU64,
    /// Publications that reached this node twice (or out of order) and were dropped.
    pub duplicates_dropped: AtomicU64,
    /// Holes in a stream (lost on the way from the broker) that a history read filled.
    pub holes_filled: AtomicU64,
    /// Holes the history could no longer fill: subscribers with positions were sent
    /// `409 pushes to <app> lost`.
    pub holes_lost: AtomicU64,
}

impl HistoryCounters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            started: Instant::now(),
            series: Series::default(),
            listening: AtomicBool::new(false),
            connections_opened: AtomicU64::new(0),
            auths: Default::default(),
            auth_latency: AtomicHistogram::new(AUTH_BOUNDS_S),
            pushes_accepted: AtomicU64::new(0),
            push_batches: AtomicU64::new(0),
            push_refusals: Default::default(),
            deliveries: AtomicU64::new(0),
            frames_taken: AtomicU64::new(0),
            frames_self_queued: AtomicU64::new(0),
            push_to_write: AtomicHistogram::new(PUSH_TO_WRITE_BOUNDS_S),
            open_connections: AtomicU64::new(0),
            open_handshakes: AtomicU64::new(0),
            open_peak: AtomicU64::new(0),
            handshakes_evicted: AtomicU64::new(0),
            head_timeouts: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
            push_body_timeouts: AtomicU64::new(0),
            auth_backend_errors: AtomicU64::new(0),
            upgrades_refused: AtomicU64::new(0),
            broker_publish_failures: AtomicU64::new(0),
            broker_gaps: AtomicU64::new(0),
            broker_disconnects: AtomicU64::new(0),
            broker_unreadable: AtomicU64::new(0),
            closes: Default::default(),
            client_closes: AtomicU64::new(0),
            lost_connections: AtomicU64::new(0),
            history: HistoryCounters::default(),
        }
    }
}

fn index(code: CloseCode) -> usize {
    CloseCode::ALL
        .iter()
        .position(|c| *c == code)
        .expect("CloseCode::ALL lists every code")
}

impl Counters {
    /// WebSocket connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// WebSocket connections opened since start.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the listeners accept connections (`/readyz`).
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        let open = self.open_connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_peak.fetch_max(
            open + self.open_handshakes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Connections (both listeners) that have not finished their request head yet.
    pub fn open_handshakes(&self) -> u64 {
        self.open_handshakes.load(Ordering::Relaxed)
    }

    pub(crate) fn handshake_started(&self) {
        let open = self.open_handshakes.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_peak
            .fetch_max(open + self.open_connections(), Ordering::Relaxed);
    }

    pub(crate) fn handshake_ended(&self) {
        self.open_handshakes.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open connections plus handshakes now.
    pub fn open_sockets(&self) -> u64 {
        self.open_connections() + self.open_handshakes()
    }

    /// The peak of open connections and handshakes since the last call; restarts from the
    /// current count.
    pub(crate) fn take_peak(&self) -> u64 {
        let now = self.open_sockets();
        self.open_peak.swap(now, Ordering::Relaxed).max(now)
    }

    /// Connections closed in their handshake to make room for newer ones
    /// (`limits.max_handshakes`).
    pub fn handshakes_evicted(&self) -> u64 {
        self.handshakes_evicted.load(Ordering::Relaxed)
    }

    pub(crate) fn handshake_evicted(&self) -> u64 {
        self.handshakes_evicted.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections closed because their request head (or TLS handshake) was not complete
    /// within `timeouts.head_ms`.
    pub fn head_timeouts(&self) -> u64 {
        self.head_timeouts.load(Ordering::Relaxed)
    }

    pub(crate) fn head_timed_out(&self) -> u64 {
        self.head_timeouts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Failed `accept` calls, typically for want of file descriptors.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn accept_failed(&self) -> u64 {
        self.accept_errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections closed at once because their address held
    /// `limits.max_connections_per_ip` sockets.
    pub fn refused_per_address(&self) -> u64 {
        self.refused_per_address.load(Ordering::Relaxed)
    }

    pub(crate) fn address_refused(&self) -> u64 {
        self.refused_per_address.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Pushes answered 408: their body did not arrive within `timeouts.push_body_ms`, or was
    /// evicted, too slow, to make room under `limits.max_buffered_push_bytes`.
    pub fn push_body_timeouts(&self) -> u64 {
        self.push_body_timeouts.load(Ordering::Relaxed)
    }

    pub(crate) fn push_body_timed_out(&self) -> u64 {
        self.push_body_timeouts.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Times an authenticator could not decide (backend down, timeout, 5xx); each such client
    /// was treated as refused.
    pub fn auth_backend_errors(&self) -> u64 {
        self.auth_backend_errors.load(Ordering::Relaxed)
    }

    /// WebSocket upgrades refused with 503 because `limits.max_connections` were open.
    pub fn upgrades_refused(&self) -> u64 {
        self.upgrades_refused.load(Ordering::Relaxed)
    }

    /// Pushes refused with 503 (overload, the buffered-body bound, or shutdown): read from
    /// the refusals by reason, which count every refused push once.
    pub fn pushes_refused(&self) -> u64 {
        self.push_refusals(PushRefusal::Overloaded) + self.push_refusals(PushRefusal::ShuttingDown)
    }

    /// Pushes answered 503 because the broker did not take them (unreachable, an error, no
    /// answer within `broker.publish_timeout_ms`).
    pub fn broker_publish_failures(&self) -> u64 {
        self.broker_publish_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn broker_publish_failed(&self) -> u64 {
        self.broker_publish_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Topics (an app, or one member of a private app) for which pushes may have been lost
    /// on the way from the broker: one per topic per broker reconnect or slow-consumer drop.
    pub fn broker_gaps(&self) -> u64 {
        self.broker_gaps.load(Ordering::Relaxed)
    }

    pub(crate) fn broker_gap(&self, topics: usize) -> u64 {
        self.broker_gaps.fetch_add(topics as u64, Ordering::Relaxed) + topics as u64
    }

    /// Times the connection to the broker was lost.
    pub fn broker_disconnects(&self) -> u64 {
        self.broker_disconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn broker_disconnected(&self) -> u64 {
        self.broker_disconnects.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Messages from the broker this node could not read (another wire version, or not ours).
    pub fn broker_unreadable(&self) -> u64 {
        self.broker_unreadable.load(Ordering::Relaxed)
    }

    pub(crate) fn broker_message_unreadable(&self) -> u64 {
        self.broker_unreadable.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections the gateway closed with `code`.
    pub fn closes(&self, code: CloseCode) -> u64 {
        self.closes[index(code)].load(Ordering::Relaxed)
    }

    /// Counts one auth-backend error; returns the new total.
    pub(crate) fn auth_backend_error(&self) -> u64 {
        self.auth_backend_errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn upgrade_refused(&self) -> u64 {
        self.upgrades_refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connections the client closed with a close frame.
    pub(crate) fn client_closes(&self) -> u64 {
        self.client_closes.load(Ordering::Relaxed)
    }

    pub(crate) fn client_closed(&self) {
        self.client_closes.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections that ended without a close frame either way.
    pub(crate) fn lost_connections(&self) -> u64 {
        self.lost_connections.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_lost(&self) {
        self.lost_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a close; returns the new total for that code.
    pub(crate) fn closed(&self, code: CloseCode) -> u64 {
        self.closes[index(code)].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn authenticated(&self, result: AuthResult) {
        let i = AuthResult::ALL
            .iter()
            .position(|r| *r == result)
            .expect("AuthResult::ALL lists every result");
        self.auths[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn auths(&self, result: AuthResult) -> u64 {
        let i = AuthResult::ALL
            .iter()
            .position(|r| *r == result)
            .expect("AuthResult::ALL lists every result");
        self.auths[i].load(Ordering::Relaxed)
    }

    pub(crate) fn auth_decided_in(&self, elapsed: Duration) {
        self.auth_latency.observe(elapsed);
    }

    pub(crate) fn auth_latency(&self) -> Snapshot {
        self.auth_latency.snapshot()
    }

    /// Pushes the broker took (`202`, or `Ok` from [`Node::publish`](crate::Node::publish)).
    pub fn pushes_accepted(&self) -> u64 {
        self.pushes_accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn push_accepted(&self) {
        self.pushes_accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// `POST /push` requests with an array or `member_ids` answered 202 (each of their
    /// publications counts in [`Counters::pushes_accepted`] too).
    pub fn push_batches(&self) -> u64 {
        self.push_batches.load(Ordering::Relaxed)
    }

    pub(crate) fn push_batch_accepted(&self) {
        self.push_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Every `POST /push` that was not answered 202, by reason.
    pub(crate) fn push_refusals(&self, reason: PushRefusal) -> u64 {
        let i = PushRefusal::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("PushRefusal::ALL lists every reason");
        self.push_refusals[i].load(Ordering::Relaxed)
    }

    pub(crate) fn push_answered_with(&self, reason: PushRefusal) {
        let i = PushRefusal::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("PushRefusal::ALL lists every reason");
        self.push_refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused pushes, all reasons.
    pub(crate) fn push_refusals_total(&self) -> u64 {
        self.push_refusals
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Pushes queued to a subscriber's outbox (one per recipient connection).
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Counts the recipients of one publication at once: one atomic per publication, not one
    /// per recipient.
    pub(crate) fn delivered(&self, recipients: u64) {
        if recipients > 0 {
            self.deliveries.fetch_add(recipients, Ordering::Relaxed);
        }
    }

    /// A connection took `frames` from its outbox, to write them or to drop them as it
    /// closes: one atomic per batch.
    pub(crate) fn frames_taken(&self, frames: usize) {
        if frames > 0 {
            self.frames_taken
                .fetch_add(frames as u64, Ordering::Relaxed);
        }
    }

    /// A batch was written whose oldest push was at the node at `since`: records the wait
    /// until now (one clock read per batch).
    pub(crate) fn push_written(&self, since: Instant) {
        self.push_to_write.observe(since.elapsed());
    }

    /// A connection queued a frame (a ping) to itself.
    pub(crate) fn frame_self_queued(&self) {
        self.frames_self_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames waiting in outboxes, given the frames the node has queued since start.
    pub(crate) fn frames_waiting(&self, node_queued: u64) -> u64 {
        (node_queued + self.frames_self_queued.load(Ordering::Relaxed))
            .saturating_sub(self.frames_taken.load(Ordering::Relaxed))
    }

    pub(crate) fn push_to_write(&self) -> Snapshot {
        self.push_to_write.snapshot()
    }
}
