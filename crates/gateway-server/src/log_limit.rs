//! Rate-limited log lines, so that a flood of bad clients cannot flood the log.
//!
//! Every refusal (an HTTP request answered with an error status, a member refused by the
//! authenticator, a connection closed for breaking a limit) is logged at `info` with its
//! reason through [`REFUSALS`]: at most [`REFUSAL_LINES_PER_S`] lines a second for the whole
//! process. The lines held back are counted, and the next line that gets through carries that
//! count as `suppressed`, so nothing disappears without a trace. Counters and metrics still
//! see every refusal.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The refusal lines let through per second, for the whole process.
pub(crate) const REFUSAL_LINES_PER_S: u64 = 20;

/// The gate every refusal line goes through.
pub(crate) static REFUSALS: LogLimit = LogLimit::new(REFUSAL_LINES_PER_S);

/// At most `per_second` lines a second; the rest counted.
#[derive(Debug)]
pub(crate) struct LogLimit {
    per_second: u64,
    /// The current second (since the process's first log line) in the high 32 bits, the lines
    /// let through in it in the low 32: one atomic word, so the check takes no lock.
    window: AtomicU64,
    /// Lines held back since the last line let through.
    suppressed: AtomicU64,
}

impl LogLimit {
    pub(crate) const fn new(per_second: u64) -> LogLimit {
        LogLimit {
            per_second,
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this line may be written (`n`: the lines held back before it), `None` if
    /// it must be dropped (and is counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let second = START.get_or_init(Instant::now).elapsed().as_secs();
        self.admit_at(second)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let mut window = self.window.load(Ordering::Relaxed);
        loop {
            let (current, used) = (window >> 32, window & u64::from(u32::MAX));
            let next = if current == second {
                if used >= self.per_second {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                window + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                window,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => window = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_the_first_lines_of_each_second_through_and_counts_the_rest() {
        let limit = LogLimit::new(3);
        assert_eq!(limit.admit_at(5), Some(0));
        assert_eq!(limit.admit_at(5), Some(0));
        assert_eq!(limit.admit_at(5), Some(0));
        assert_eq!(limit.admit_at(5), None);
        assert_eq!(limit.admit_at(5), None);
        // The next second's first line reports the two held back.
        assert_eq!(limit.admit_at(6), Some(2));
        assert_eq!(limit.admit_at(6), Some(0));
        assert_eq!(limit.admit_at(9), Some(0));
    }
}
