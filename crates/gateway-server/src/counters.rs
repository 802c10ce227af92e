//! Counts of events an operator watches. Read with [`Gateway::counters`](crate::Gateway::counters);
//! later exported as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use gateway_core::CloseCode;

#[derive(Debug, Default)]
pub struct Counters {
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
    pushes_refused: AtomicU64,
    broker_publish_failures: AtomicU64,
    broker_gaps: AtomicU64,
    broker_disconnects: AtomicU64,
    broker_unreadable: AtomicU64,
    /// Indexed like [`CloseCode::ALL`].
    closes: [AtomicU64; CloseCode::ALL.len()],
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

    pub(crate) fn connection_opened(&self) {
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

    /// Pushes refused with 503 (overload, the buffered-body bound, or shutdown).
    pub fn pushes_refused(&self) -> u64 {
        self.pushes_refused.load(Ordering::Relaxed)
    }

    /// Connections the gateway closed with `code`.
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

    pub(crate) fn push_refused(&self) -> u64 {
        self.pushes_refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a close; returns the new total for that code.
    pub(crate) fn closed(&self, code: CloseCode) -> u64 {
        self.closes[index(code)].fetch_add(1, Ordering::Relaxed) + 1
    }
}
