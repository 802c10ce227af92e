//! Counts of events an operator watches. Read with [`Gateway::counters`](crate::Gateway::counters);
//! later exported as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use gateway_core::CloseCode;

#[derive(Debug, Default)]
pub struct Counters {
    /// A gauge: WebSocket connections open now (authenticated or not).
    open_connections: AtomicU64,
    /// The highest `open_connections` since [`Counters::take_peak`] last reset it.
    open_peak: AtomicU64,
    auth_backend_errors: AtomicU64,
    upgrades_refused: AtomicU64,
    pushes_refused: AtomicU64,
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
        self.open_peak.fetch_max(open, Ordering::Relaxed);
    }

    /// The peak of open connections since the last call; restarts from the current count.
    pub(crate) fn take_peak(&self) -> u64 {
        let now = self.open_connections();
        self.open_peak.swap(now, Ordering::Relaxed).max(now)
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

    /// Pushes refused with 503 (overload or shutdown).
    pub fn pushes_refused(&self) -> u64 {
        self.pushes_refused.load(Ordering::Relaxed)
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

    pub(crate) fn push_refused(&self) -> u64 {
        self.pushes_refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a close; returns the new total for that code.
    pub(crate) fn closed(&self, code: CloseCode) -> u64 {
        self.closes[index(code)].fetch_add(1, Ordering::Relaxed) + 1
    }
}
