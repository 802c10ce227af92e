//! The node's part of the cluster view: a short-lived report of its counts, renewed on a timer
//! and published through the broker; `/stat?scope=cluster` merges every live node's report.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_broker::{BrokerError, BrokerState, NodeReport, report};
use gateway_core::{AppName, AppSubscribers, Input, Timestamp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Node;

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Members listed in one report, over all private apps: beyond, apps are only counted
    /// (`NodeReport::member_counts`). Bounds the report (some 10 bytes per member: under
    /// NATS's default 1 MB message limit) and the copying under the lock.
    pub const MAX_REPORTED_MEMBERS: usize = 50_000;

    /// This node's counts, read a page of apps at a time (the lock is held for one page, and
    /// lists at most [`Node::MAX_REPORTED_MEMBERS`] members in all).
    pub fn report(&self, node_id: &str) -> NodeReport {
        let mut report = NodeReport {
            node: node_id.to_owned(),
            version: NodeReport::VERSION,
            at_ms: unix_millis(),
            connections: self.connection_count() as u64,
            ..NodeReport::default()
        };
        let mut after: Option<AppName> = None;
        let mut budget = Node::MAX_REPORTED_MEMBERS;
        loop {
            let page =
                self.lock()
                    .hub
                    .subscribers_page(after.as_ref(), Node::STAT_PAGE_APPS, budget);
            after = page.resume_after().cloned();
            for (app, subscribers) in page.apps {
                match subscribers {
                    AppSubscribers::Connections(count) => {
                        report.apps.insert(app.to_string(), count as u64);
                    }
                    AppSubscribers::Members(members) => {
                        budget -= members.len();
                        let ids = members.iter().map(|m| m.get()).collect();
                        report.members.insert(app.to_string(), ids);
                    }
                    AppSubscribers::MemberCount(count) => {
                        report.member_counts.insert(app.to_string(), count as u64);
                    }
                    _ => {}
                }
            }
            if after.is_none() {
                return report;
            }
        }
    }

    /// The cluster's counts, per app, from every live node's report (this node's included):
    /// public apps add up, a private app counts its distinct members.
    pub async fn cluster_stat(&self) -> Result<Vec<(String, u64)>, BrokerError> {
        let reports = self.broker().cluster().await?;
        Ok(report::merge(&reports))
    }
}

/// Every `interval`, until `shutdown`: tells the hub the time, closes connections whose
/// subscriptions the broker has not confirmed within `subscribe_timeout`, and publishes this
/// node's report, which lives `ttl` unless renewed.
pub(crate) async fn run_reporter(
    node: Arc<Node>,
    node_id: String,
    interval: Duration,
    ttl: Duration,
    subscribe_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        node.handle(Input::Tick {
            now: Timestamp::from_millis(unix_millis()),
        });
        node.expire_pending(std::time::Instant::now(), subscribe_timeout);
        node.expire_history();
        // One node alone answers the cluster view from its own counts (see `admin`); a broker
        // not connected (yet, or any more) cannot take a report: nothing to warn about twice.
        if node.broker().kind() == "local" || node.broker_state() != BrokerState::Connected {
            continue;
        }
        let report = node.report(&node_id);
        match node.broker().report(&report, ttl).await {
            Ok(()) if failing => {
                failing = false;
                debug!("cluster report published again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                warn!(%err, "cannot publish this node's report for the cluster view");
            }
            Err(_) => {}
        }
    }
}
