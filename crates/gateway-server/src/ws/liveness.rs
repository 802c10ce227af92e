//! Per-connection timekeeping, kept free of I/O so it is tested with plain instants: when to
//! ping an idle client and when to give up on it, and how many frames it may send.

use std::time::Duration;

use tokio::time::Instant;

/// What to do when [`Heartbeat::deadline`] passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Nothing has arrived for a ping interval: send a ping.
    Ping,
    /// Nothing has arrived, not even a pong, for the idle timeout: close.
    Dead,
}

/// Tracks the last sign of life of a client.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    last_seen: Instant,
    pinged: bool,
    interval: Duration,
    idle: Duration,
}

impl Heartbeat {
    pub(crate) fn new(now: Instant, interval: Duration, idle: Duration) -> Self {
        Heartbeat {
            last_seen: now,
            pinged: false,
            interval,
            idle,
        }
    }

    /// Any frame from the client (a message, a ping, a pong) is a sign of life.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.pinged = false;
    }

    /// When [`Heartbeat::on_deadline`] has something to do.
    pub(crate) fn deadline(&self) -> Instant {
        if self.pinged {
            self.last_seen + self.idle
        } else {
            self.last_seen + self.interval
        }
    }

    /// Called at (or after) [`Heartbeat::deadline`].
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Option<Tick> {
        if now >= self.last_seen + self.idle {
            Some(Tick::Dead)
        } else if !self.pinged && now >= self.last_seen + self.interval {
            self.pinged = true;
            Some(Tick::Ping)
        } else {
            None
        }
    }
}

/// A token bucket: `burst` frames at once, `rate` per second sustained.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Instant,
}

impl RateLimit {
    pub(crate) fn new(now: Instant, rate_per_s: u32, burst: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            rate: f64::from(rate_per_s),
            at: now,
        }
    }

    /// Takes one token; `false` when the client is over its rate.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_silent_client_is_pinged_then_declared_dead() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, 25 * S, 60 * S);
        assert_eq!(hb.deadline(), t0 + 25 * S);
        assert_eq!(hb.on_deadline(t0 + 24 * S), None);
        assert_eq!(hb.on_deadline(t0 + 25 * S), Some(Tick::Ping));
        assert_eq!(hb.deadline(), t0 + 60 * S);
        assert_eq!(hb.on_deadline(t0 + 59 * S), None);
        assert_eq!(hb.on_deadline(t0 + 60 * S), Some(Tick::Dead));
    }

    #[test]
    fn any_frame_resets_the_clock() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, 25 * S, 60 * S);
        assert_eq!(hb.on_deadline(t0 + 25 * S), Some(Tick::Ping));
        hb.seen(t0 + 30 * S); // the pong
        assert_eq!(hb.deadline(), t0 + 55 * S);
        assert_eq!(hb.on_deadline(t0 + 55 * S), Some(Tick::Ping));
        assert_eq!(hb.on_deadline(t0 + 89 * S), None);
        assert_eq!(hb.on_deadline(t0 + 90 * S), Some(Tick::Dead));
    }

    #[test]
    fn the_rate_limit_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(t0, 10, 3);
        assert!((0..3).all(|_| limit.allow(t0)));
        assert!(!limit.allow(t0));
        // 100 ms later one token is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limit.allow(t1));
        assert!(!limit.allow(t1));
        // Long idleness refills only up to the burst.
        let t2 = t1 + 60 * S;
        assert!((0..3).all(|_| limit.allow(t2)));
        assert!(!limit.allow(t2));
    }
}
