//! What the stat listener tells about the node's health and load: readiness, the biggest
//! apps, the history for the dashboard ([`series`]), and the Prometheus exposition
//! ([`exposition`]) with its hot-path histograms ([`histogram`]) and the process's numbers
//! ([`process`]).

pub(crate) mod exposition;
pub(crate) mod histogram;
pub(crate) mod process;
pub(crate) mod series;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use gateway_broker::BrokerState;
use gateway_core::AppName;

use crate::node::Node;
use crate::shared::Shared;

/// Why the node should not be sent traffic now (`GET /readyz`); empty when it is ready.
pub(crate) fn not_ready(shared: &Shared) -> Vec<String> {
    let mut reasons = Vec::new();
    if !shared.counters.listening() {
        reasons.push("listeners not up".to_owned());
    }
    if shared.shutdown.is_cancelled() {
        reasons.push("shutting down".to_owned());
    }
    let broker = shared.node.broker();
    let state = broker.state();
    if broker.kind() != "local" && state != BrokerState::Connected {
        reasons.push(format!(
            "broker disconnected: {} is {}",
            broker.kind(),
            state.as_str()
        ));
    }
    reasons
}

/// The apps with the most subscribers, and what the others add up to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TopApps {
    /// Apps with subscribers.
    pub total: usize,
    /// At most the `k` asked for, by count (most first), then by name.
    pub top: Vec<(AppName, u64)>,
    /// The counts of the apps not in `top`, added up.
    pub rest: u64,
}

/// The `k` apps with the most subscribers (the counts of `/stat`), read a page at a time like
/// `/stat` with a yield between pages, so that neither the node's lock nor this worker is held
/// for long whatever the number of apps; kept in a heap of `k`, so memory stays O(k).
pub(crate) async fn top_apps(node: &Node, k: usize) -> TopApps {
    // The heap's top is the weakest kept: the lowest count, then the name sorting last.
    let mut heap: BinaryHeap<Reverse<(u64, Reverse<AppName>)>> = BinaryHeap::with_capacity(k + 1);
    let mut summary = TopApps::default();
    let mut after: Option<AppName> = None;
    loop {
        let page = node.stat_page(after.as_ref(), Node::STAT_PAGE_APPS);
        after = page.resume_after().cloned();
        for (app, count) in page.apps {
            let count = count as u64;
            summary.total += 1;
            summary.rest += count;
            heap.push(Reverse((count, Reverse(app))));
            if heap.len() > k {
                heap.pop();
            }
        }
        if after.is_none() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut top: Vec<(AppName, u64)> = heap
        .into_iter()
        .map(|Reverse((count, Reverse(app)))| (app, count))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    summary.rest -= top.iter().map(|(_, count)| count).sum::<u64>();
    summary.top = top;
    summary
}
