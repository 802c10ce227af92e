//! A latency histogram of plain atomics, for the hot paths.
//!
//! prometheus-client's `Histogram::observe` takes a lock; an observation here is one bucket
//! search over a handful of bounds and two relaxed `fetch_add`s, with no lock and no
//! allocation. The buckets are kept apart (not cumulative), as prometheus-client's encoder
//! takes them: it cumulates them as it writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the buckets of the authenticator's latency.
pub(crate) const AUTH_BOUNDS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds, in seconds, of the buckets of push-to-write latency: most pushes reach the
/// socket well under a millisecond; the upper buckets catch queues behind slow writes.
pub(crate) const PUSH_TO_WRITE_BOUNDS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// `N` bounds plus the `+Inf` bucket.
#[derive(Debug)]
pub(crate) struct AtomicHistogram<const N: usize> {
    bounds_ns: [u64; N],
    bounds_s: [f64; N],
    /// Observations per bucket (the last one: above every bound), not cumulative.
    buckets: [AtomicU64; N],
    over: AtomicU64,
    sum_ns: AtomicU64,
}

/// A histogram read at one moment, ready for the encoder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub sum_s: f64,
    pub count: u64,
    /// `(upper bound in seconds, observations in this bucket)`, not cumulative, ending with
    /// the `+Inf` bucket, whose bound is `f64::MAX` (how the encoder knows it).
    pub buckets: Vec<(f64, u64)>,
}

impl<const N: usize> AtomicHistogram<N> {
    pub(crate) fn new(bounds_s: [f64; N]) -> Self {
        AtomicHistogram {
            bounds_ns: bounds_s.map(|s| (s * 1e9) as u64),
            bounds_s,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        match self.bounds_ns.iter().position(|bound| ns <= *bound) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Read bucket by bucket, so an observation made meanwhile may be in the sum and not in
    /// the buckets, or the reverse; the count is the buckets' total, so they always agree.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(N + 1);
        for (bound, bucket) in self.bounds_s.iter().zip(&self.buckets) {
            let count = bucket.load(Ordering::Relaxed);
            total += count;
            buckets.push((*bound, count));
        }
        let over = self.over.load(Ordering::Relaxed);
        total += over;
        buckets.push((f64::MAX, over));
        Snapshot {
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: total,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_add_up() {
        let histogram = AtomicHistogram::new([0.001, 0.01]);
        histogram.observe(Duration::from_micros(1000));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_secs(2));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, [(0.001, 1), (0.01, 1), (f64::MAX, 1)]);
        assert_eq!(snapshot.count, 3);
        assert!((snapshot.sum_s - 2.006).abs() < 1e-9);
    }
}
