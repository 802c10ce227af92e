//! The cluster view: each node publishes a short-lived report of its counts to the broker,
//! and `/stat?scope=cluster` merges the reports of every live node.
//!
//! A report expires by itself (a TTL'd key on Redis, a KV entry with a maximum age on NATS),
//! so a node that died drops out of the view within the TTL without anyone noticing its death.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One node's counts, as JSON on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's `node_id`.
    pub node: String,
    /// Wire format of reports; a reader skips reports of another version.
    pub version: u8,
    /// Milliseconds since the Unix epoch when the report was made.
    pub at_ms: u64,
    /// Authenticated WebSocket connections.
    pub connections: u64,
    /// Public apps: subscribed connections per app.
    pub apps: BTreeMap<String, u64>,
    /// Private apps: the members with a subscribed connection, per app, so that a member
    /// connected to two nodes is counted once in the cluster.
    pub members: BTreeMap<String, Vec<i64>>,
    /// Private apps too large to list (a report lists a bounded number of members): their
    /// member count on this node. The cluster view adds these up, so a member of such an app
    /// connected to two nodes counts twice there.
    #[serde(default)]
    pub member_counts: BTreeMap<String, u64>,
}

impl NodeReport {
    pub const VERSION: u8 = 1;
}

/// The cluster's counts from every node's report: per app, the sum of public counts, or the
/// number of distinct members of a private app. Sorted by app name, like `/stat`.
pub fn merge(reports: &[NodeReport]) -> Vec<(String, u64)> {
    let mut public: BTreeMap<&str, u64> = BTreeMap::new();
    let mut private: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for report in reports.iter().filter(|r| r.version == NodeReport::VERSION) {
        for (app, count) in &report.apps {
            *public.entry(app).or_default() += count;
        }
        for (app, members) in &report.members {
            private.entry(app).or_default().extend(members);
        }
        for (app, count) in &report.member_counts {
            *public.entry(app).or_default() += count;
        }
    }
    let mut counts: BTreeMap<&str, u64> = public;
    for (app, members) in private {
        *counts.entry(app).or_default() += members.len() as u64;
    }
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(app, count)| (app.to_owned(), count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, apps: &[(&str, u64)], members: &[(&str, &[i64])]) -> NodeReport {
        NodeReport {
            node: node.into(),
            version: NodeReport::VERSION,
            at_ms: 0,
            connections: 0,
            apps: apps.iter().map(|(a, c)| ((*a).to_owned(), *c)).collect(),
            members: members
                .iter()
                .map(|(a, m)| ((*a).to_owned(), m.to_vec()))
                .collect(),
            member_counts: BTreeMap::new(),
        }
    }

    #[test]
    fn public_counts_add_up_and_private_members_count_once() {
        let a = report("a", &[("match", 2), ("news", 1)], &[("im", &[1, 2])]);
        let b = report("b", &[("match", 3)], &[("im", &[2, 3])]);
        assert_eq!(
            merge(&[a, b]),
            [
                ("im".to_owned(), 3),
                ("match".to_owned(), 5),
                ("news".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn an_app_too_large_to_list_is_counted_per_node() {
        let mut a = report("a", &[], &[("im", &[1, 2])]);
        let mut b = report("b", &[], &[]);
        b.member_counts.insert("im".into(), 100_000);
        a.member_counts.insert("big".into(), 7);
        assert_eq!(
            merge(&[a, b]),
            [("big".to_owned(), 7), ("im".to_owned(), 100_002)]
        );
    }

    #[test]
    fn reports_of_another_version_are_left_out() {
        let mut future = report("a", &[("match", 2)], &[]);
        future.version = 2;
        assert!(merge(&[future]).is_empty());
    }
}
