//! The wait before each reconnection attempt: exponential, capped, jittered. Pure maths (the
//! random number is passed in), so it is tested without a clock.

use std::time::Duration;

/// Exponential backoff with "equal jitter": attempt `n` (from 1) waits a random time in
/// `[cap/2, cap]` where `cap = min(max, min · 2^(n-1))`. Half of it is fixed, so clients never
/// hammer the gateway back to back; the random half spreads a crowd of clients that lost the
/// same gateway at the same instant.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Attempts made since the last stable connection.
    attempt: u32,
}

impl Backoff {
    /// `min` is raised to 1 ms (a zero base would never grow) and `max` to `min`.
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next attempt's number (from 1) and how long to wait before it. `random` returns a
    /// uniformly distributed number in `0..=bound` (fastrand in production, fixed in tests).
    pub(crate) fn next_delay(&mut self, random: impl FnOnce(u64) -> u64) -> (u32, Duration) {
        self.attempt = self.attempt.saturating_add(1);
        let cap = self.cap(self.attempt);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        let half = cap_ms / 2;
        let jitter = random(cap_ms - half).min(cap_ms - half);
        (self.attempt, Duration::from_millis(half + jitter))
    }

    /// The upper bound of attempt `attempt`'s wait.
    fn cap(&self, attempt: u32) -> Duration {
        // 2^31 × 1 ms is already 24 days; past that every cap is `max` anyway.
        let doubling = attempt.saturating_sub(1).min(31);
        self.min.saturating_mul(1 << doubling).min(self.max)
    }

    /// Called after a connection that stayed up long enough: the next wait starts from `min`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn lowest(bound: u64) -> u64 {
        let _ = bound;
        0
    }

    fn highest(bound: u64) -> u64 {
        bound
    }

    #[test]
    fn the_cap_doubles_from_min_until_max() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let caps: Vec<_> = (0..6).map(|_| backoff.next_delay(highest)).collect();
        assert_eq!(
            caps,
            [
                (1, 100 * MS),
                (2, 200 * MS),
                (3, 400 * MS),
                (4, 800 * MS),
                (5, 1000 * MS),
                (6, 1000 * MS)
            ]
        );
    }

    #[test]
    fn the_wait_is_at_least_half_the_cap() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let floors: Vec<_> = (0..5).map(|_| backoff.next_delay(lowest).1).collect();
        assert_eq!(floors, [50 * MS, 100 * MS, 200 * MS, 400 * MS, 500 * MS]);
    }

    #[test]
    fn the_random_half_is_asked_for_the_right_range_and_clamped() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let mut asked = 0;
        let (_, delay) = backoff.next_delay(|bound| {
            asked = bound;
            bound + 1_000 // a bad random source cannot push the wait past the cap
        });
        assert_eq!((asked, delay), (50, 100 * MS));
    }

    #[test]
    fn fastrand_waits_stay_within_half_the_cap_and_the_cap() {
        let mut backoff = Backoff::new(10 * MS, 10_000 * MS);
        for attempt in 1..=40_u32 {
            let (n, delay) = backoff.next_delay(|bound| fastrand::u64(0..=bound));
            let cap = (10 * MS)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(10_000 * MS);
            assert_eq!(n, attempt);
            assert!(
                delay >= cap / 2 && delay <= cap,
                "{delay:?} for cap {cap:?}"
            );
        }
    }

    #[test]
    fn reset_starts_again_from_min() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        for _ in 0..4 {
            backoff.next_delay(highest);
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(highest), (1, 100 * MS));
    }

    #[test]
    fn many_attempts_neither_overflow_nor_exceed_max() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            backoff.next_delay(highest);
        }
        assert_eq!(backoff.next_delay(highest).1, Duration::from_secs(60));
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..70 {
            assert!(huge.next_delay(highest).1 > Duration::ZERO);
        }
    }

    #[test]
    fn a_zero_min_still_grows_and_max_below_min_is_raised() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.next_delay(highest).1, MS);
        let mut backoff = Backoff::new(200 * MS, 100 * MS);
        assert_eq!(backoff.next_delay(highest).1, 200 * MS);
        assert_eq!(backoff.next_delay(highest).1, 200 * MS);
    }
}
