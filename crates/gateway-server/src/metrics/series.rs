//! The dashboard's recent history: a ring of samples taken every [`INTERVAL`] by the sampler
//! task, and the cluster's nodes as last read from the broker. Nothing here is touched per
//! push or per delivery: the sampler reads the cumulative counters. The nodes are read from
//! the broker only while someone looks (`/api/overview`), at most once per [`INTERVAL`]: the
//! reports carry every node's counts, too much to fetch all the time for nobody.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// Time between two samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);

/// Samples kept: ten minutes at [`INTERVAL`].
pub(crate) const CAPACITY: usize = 300;

/// One sample; `pushes` and `deliveries` are cumulative, so a rate is the difference of two
/// samples over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Sample {
    /// Unix time in milliseconds.
    pub t: u64,
    pub connections: u64,
    pub pushes: u64,
    pub deliveries: u64,
}

/// A node of the cluster view, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NodeSummary {
    pub node_id: String,
    pub connections: u64,
    #[serde(rename = "self")]
    pub is_self: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Series {
    samples: Mutex<VecDeque<Sample>>,
    /// The cluster's nodes, and when they were read from the broker.
    nodes: Mutex<Option<(Instant, Vec<NodeSummary>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each value is replaced whole under its lock: a panic cannot leave it half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Series {
    fn record(&self, sample: Sample) {
        let mut samples = lock(&self.samples);
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).iter().copied().collect()
    }

    /// The cluster's nodes if read within the last [`INTERVAL`].
    pub(crate) fn fresh_nodes(&self) -> Option<Vec<NodeSummary>> {
        match &*lock(&self.nodes) {
            Some((at, nodes)) if at.elapsed() < INTERVAL => Some(nodes.clone()),
            _ => None,
        }
    }

    /// The cluster's nodes as last read, however old.
    pub(crate) fn last_nodes(&self) -> Option<Vec<NodeSummary>> {
        lock(&self.nodes).as_ref().map(|(_, nodes)| nodes.clone())
    }

    pub(crate) fn set_nodes(&self, nodes: Vec<NodeSummary>) {
        *lock(&self.nodes) = Some((Instant::now(), nodes));
    }
}

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every [`INTERVAL`] until `shutdown`: samples the counters (the first at once, so that a
/// fresh dashboard has a point).
pub(crate) async fn run_sampler(counters: Arc<Counters>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        counters.series.record(Sample {
            t: unix_millis(),
            connections: counters.open_connections(),
            pushes: counters.pushes_accepted(),
            deliveries: counters.deliveries(),
        });
    }
}

/// The cluster's nodes from their reports on the broker, sorted by id.
pub(crate) fn summarize(
    reports: Vec<gateway_broker::NodeReport>,
    self_id: &str,
) -> Vec<NodeSummary> {
    let mut nodes: Vec<NodeSummary> = reports
        .into_iter()
        .map(|report| NodeSummary {
            is_self: report.node == self_id,
            node_id: report.node,
            connections: report.connections,
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    nodes
}
