//! The in-process broker: one node, no server. A publication goes straight back to the node's
//! own [`Inbound`], synchronously and without an allocation, so the single-node push path costs
//! what it did before brokers existed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use gateway_core::{Publication, Topic};

use crate::{
    BoxFuture, Broker, BrokerError, BrokerState, Inbound, NodeReport, Published, Publishing,
    Subscription,
};

/// Publications are delivered in the order `publish` is called, which the node serialises per
/// push under its lock: one order per app, trivially.
pub struct LocalBroker {
    /// Weak: the node owns its broker, and the broker must not keep the node alive.
    inbound: Weak<dyn Inbound>,
    /// The latest report, for a cluster view of one node.
    report: std::sync::Mutex<Option<NodeReport>>,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker").finish_non_exhaustive()
    }
}

impl LocalBroker {
    pub fn new(inbound: Weak<dyn Inbound>) -> Arc<Self> {
        Arc::new(LocalBroker {
            inbound,
            report: std::sync::Mutex::new(None),
        })
    }
}

impl Broker for LocalBroker {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn publish(&self, _topic: &Topic, publication: Publication) -> Publishing {
        match self.inbound.upgrade() {
            Some(inbound) => {
                inbound.publication(publication);
                Publishing::Done(Ok(Published::new()))
            }
            None => Publishing::Done(Err(BrokerError::Unavailable("the node is gone".into()))),
        }
    }

    fn subscribe(&self, _topic: &Topic, _seq: u64) -> Subscription {
        Subscription::Live
    }

    fn unsubscribe(&self, _topic: &Topic) {}

    fn state(&self) -> BrokerState {
        BrokerState::Connected
    }

    fn report(
        &self,
        report: &NodeReport,
        _ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        if let Ok(mut latest) = self.report.lock() {
            *latest = Some(report.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn cluster(&self) -> BoxFuture<'static, Result<Vec<NodeReport>, BrokerError>> {
        let reports = self
            .report
            .lock()
            .map(|latest| latest.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async { Ok(reports) })
    }

    fn close(&self) {}
}
