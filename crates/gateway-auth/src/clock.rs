//! Wall-clock time, injected so that expiry checks are testable.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn unix_seconds(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

#[cfg(test)]
pub(crate) mod fixed {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test sets.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct FixedClock(Arc<AtomicU64>);

    impl FixedClock {
        pub(crate) fn at(seconds: u64) -> Self {
            FixedClock(Arc::new(AtomicU64::new(seconds)))
        }

        pub(crate) fn set(&self, seconds: u64) {
            self.0.store(seconds, Ordering::SeqCst);
        }
    }

    impl super::Clock for FixedClock {
        fn unix_seconds(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
}
