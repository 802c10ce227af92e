//! Counts of events an operator watches. Read with [`Gateway::counters`](crate::Gateway::counters);
//! later exported as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    auth_backend_errors: AtomicU64,
}

impl Counters {
    /// Times an authenticator could not decide (backend down, timeout, 5xx); each such client
    /// was treated as refused.
    pub fn auth_backend_errors(&self) -> u64 {
        self.auth_backend_errors.load(Ordering::Relaxed)
    }

    /// Counts one auth-backend error; returns the new total.
    pub(crate) fn auth_backend_error(&self) -> u64 {
        self.auth_backend_errors.fetch_add(1, Ordering::Relaxed) + 1
    }
}
