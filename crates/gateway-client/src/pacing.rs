//! The client's own frame budget: a token bucket like the gateway's
//! (`limits.max_messages_per_s`, `limits.message_burst`), so that resubscribing many apps
//! after a reconnection, or a burst of requests, never trips the gateway's 4429. Pure maths
//! (the instant is passed in).

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    per_s: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pacing {
    /// A full bucket, as the gateway's is for a new connection. `per_s` and `burst` are
    /// raised to 1.
    pub(crate) fn new(now: Instant, per_s: u32, burst: u32) -> Pacing {
        let burst = f64::from(burst.max(1));
        Pacing {
            per_s: f64::from(per_s.max(1)),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
        self.at = now;
    }

    /// Spends one frame's token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Spends one token even if there is none (the auth message, which cannot wait).
    pub(crate) fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// When the next token is there.
    pub(crate) fn next_token_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut pacing = Pacing::new(start, 10, 3);
        pacing.take(start);
        assert!(pacing.try_take(start));
        assert!(pacing.try_take(start));
        assert!(!pacing.try_take(start));
        let next = pacing.next_token_at();
        assert_eq!(next - start, Duration::from_millis(100));
        assert!(!pacing.try_take(next - Duration::from_millis(1)));
        assert!(pacing.try_take(next));
        // Long idleness refills only up to the burst.
        let later = next + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(pacing.try_take(later));
        }
        assert!(!pacing.try_take(later));
    }
}
