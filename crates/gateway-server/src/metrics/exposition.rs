//! `GET /metrics`: the Prometheus exposition (OpenMetrics text, encoded by `prometheus-client`).
//!
//! Nothing is registered up front: the gateway's numbers already live in [`Counters`] (relaxed
//! atomics bumped where each event is handled), so one [`Collector`] reads them at scrape time
//! and hands them to the crate's encoder, with the few things that are gathered per scrape: the
//! apps with the most subscribers (paged like `/stat`, at most `limits.metrics_top_apps` of them
//! labelled, the rest under `app=""`), the outboxes' depth, the broker's state and `/proc/self`.

use std::sync::Arc;

use gateway_broker::BrokerState;
use gateway_core::CloseCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::histogram::Snapshot;
use super::process::{self, ProcessStats};
use super::{TopApps, top_apps};
use crate::counters::{AuthResult, Counters, PushRefusal};
use crate::shared::Shared;

/// The content type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The broker states `ws_gateway_broker_state` has a series for.
const BROKER_STATES: [BrokerState; 3] = [
    BrokerState::Connected,
    BrokerState::Connecting,
    BrokerState::Closed,
];

/// Everything one scrape reports, read before encoding (the apps asynchronously, a page at a
/// time).
#[derive(Debug)]
struct Scrape {
    counters: Arc<Counters>,
    node_id: String,
    apps: TopApps,
    outbox_frames: u64,
    /// The broker's kind and state; `None` with the local broker.
    broker: Option<(&'static str, BrokerState)>,
    process: Option<ProcessStats>,
}

/// The exposition of `shared`'s node, now.
pub(crate) async fn render(shared: &Shared) -> String {
    let counters = shared.counters.clone();
    let apps = top_apps(&shared.node, shared.config.limits.metrics_top_apps).await;
    let broker = shared.node.broker();
    let scrape = Scrape {
        outbox_frames: counters.frames_waiting(shared.node.queued_frames()),
        counters,
        node_id: shared.node_id.clone(),
        apps,
        broker: (broker.kind() != "local").then(|| (broker.kind(), broker.state())),
        process: process::read(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

type Result = std::result::Result<(), std::fmt::Error>;

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge<N>(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: N) -> Result
where
    N: prometheus_client::encoding::EncodeGaugeValue,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter with one label, a series per `(value, count)`.
fn counters_by<'v>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'v str, u64)>,
) -> Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in series {
        let labels = [(label, value)];
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    snapshot: &Snapshot,
) -> Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(snapshot.sum_s, snapshot.count, &snapshot.buckets, None)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result {
        let c = &self.counters;
        let e = &mut encoder;
        let version = env!("CARGO_PKG_VERSION");
        let mut info = e.encode_descriptor(
            "ws_gateway_build",
            "The gateway's version and node id (value 1).",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[
            ("version", Escaped(version)),
            ("node_id", Escaped(&self.node_id)),
        ])?;

        // Connections.
        gauge(
            e,
            "ws_gateway_connections",
            "WebSocket connections open now.",
            c.open_connections(),
        )?;
        gauge(
            e,
            "ws_gateway_handshakes",
            "Connections (both listeners) still sending their first request head.",
            c.open_handshakes(),
        )?;
        counter(
            e,
            "ws_gateway_connections_opened",
            "WebSocket connections opened since start.",
            c.connections_opened(),
        )?;
        let codes: Vec<(String, u64)> = CloseCode::ALL
            .iter()
            .map(|code| (code.code().to_string(), c.closes(*code)))
            .collect();
        counters_by(
            e,
            "ws_gateway_connections_closed",
            "WebSocket connections closed: by the gateway with a close code, by the client (code=\"client\"), or lost without a close (code=\"lost\").",
            "code",
            codes
                .iter()
                .map(|(code, count)| (code.as_str(), *count))
                .chain([
                    ("client", c.client_closes()),
                    ("lost", c.lost_connections()),
                ]),
        )?;
        counter(
            e,
            "ws_gateway_slow_consumer_closes",
            "Connections closed with 4100 because their outbox was full.",
            c.closes(CloseCode::SlowConsumer),
        )?;
        counter(
            e,
            "ws_gateway_upgrades_refused",
            "WebSocket upgrades answered 503 at limits.max_connections.",
            c.upgrades_refused(),
        )?;
        counter(
            e,
            "ws_gateway_handshakes_evicted",
            "Connections closed in their handshake to make room (limits.max_handshakes).",
            c.handshakes_evicted(),
        )?;
        counter(
            e,
            "ws_gateway_head_timeouts",
            "Connections closed because their request head was late (timeouts.head_ms).",
            c.head_timeouts(),
        )?;
        counter(
            e,
            "ws_gateway_accept_errors",
            "Failed accept calls (typically out of file descriptors).",
            c.accept_errors(),
        )?;
        counter(
            e,
            "ws_gateway_refused_per_address",
            "Connections closed at once at limits.max_connections_per_ip.",
            c.refused_per_address(),
        )?;

        // Authentication.
        counters_by(
            e,
            "ws_gateway_auth",
            "Auth messages by outcome.",
            "result",
            AuthResult::ALL.iter().map(|r| (r.label(), c.auths(*r))),
        )?;
        histogram(
            e,
            "ws_gateway_auth_duration_seconds",
            "How long the authenticator took to decide on a member's token.",
            &c.auth_latency(),
        )?;

        // Subscriptions.
        gauge(
            e,
            "ws_gateway_apps",
            "Apps with at least one subscriber.",
            self.apps.total as u64,
        )?;
        let mut subscriptions = e.encode_descriptor(
            "ws_gateway_subscriptions",
            "Subscribers per app (connections; distinct members for a private app): the apps with the most, the rest added up under app=\"\".",
            None,
            MetricType::Gauge,
        )?;
        for (app, count) in &self.apps.top {
            subscriptions
                .encode_family(&[("app", Escaped(app.as_str()))])?
                .encode_gauge(count)?;
        }
        if self.apps.total > self.apps.top.len() {
            subscriptions
                .encode_family(&[("app", "")])?
                .encode_gauge(&self.apps.rest)?;
        }

        // Pushes.
        counter(
            e,
            "ws_gateway_pushes_accepted",
            "Pushes the broker took (answered 202).",
            c.pushes_accepted(),
        )?;
        counter(
            e,
            "ws_gateway_push_batches",
            "POST /push requests with an array or member_ids answered 202 (their publications count in ws_gateway_pushes_accepted).",
            c.push_batches(),
        )?;
        counters_by(
            e,
            "ws_gateway_pushes_refused",
            "POST /push requests not answered 202, by reason.",
            "reason",
            PushRefusal::ALL
                .iter()
                .map(|r| (r.label(), c.push_refusals(*r))),
        )?;
        counter(
            e,
            "ws_gateway_deliveries",
            "Pushes queued to a subscriber connection's outbox.",
            c.deliveries(),
        )?;
        gauge(
            e,
            "ws_gateway_outbox_frames",
            "Frames waiting in connections' outboxes.",
            self.outbox_frames,
        )?;
        histogram(
            e,
            "ws_gateway_push_to_write_seconds",
            "Per written batch: from the oldest push in it being at this node to the socket write done.",
            &c.push_to_write(),
        )?;

        // The broker.
        if let Some((kind, state)) = self.broker {
            let mut family = e.encode_descriptor(
                "ws_gateway_broker_state",
                "The broker connection's state: 1 for the current one.",
                None,
                MetricType::Gauge,
            )?;
            for candidate in BROKER_STATES {
                family
                    .encode_family(&[("kind", kind), ("state", candidate.as_str())])?
                    .encode_gauge(&u64::from(candidate == state))?;
            }
            counter(
                e,
                "ws_gateway_broker_disconnects",
                "Times the broker connection was lost.",
                c.broker_disconnects(),
            )?;
            counter(
                e,
                "ws_gateway_broker_gaps",
                "Topics whose pushes may have been lost on the way from the broker.",
                c.broker_gaps(),
            )?;
            counter(
                e,
                "ws_gateway_broker_publish_failures",
                "Pushes the broker did not take (answered 503 or 504).",
                c.broker_publish_failures(),
            )?;
            counter(
                e,
                "ws_gateway_broker_unreadable",
                "Broker messages this node could not read.",
                c.broker_unreadable(),
            )?;
        }

        // History and recovery.
        let h = &c.history;
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        for (name, help, value) in [
            (
                "ws_gateway_history_subscriptions",
                "Subscriptions with recover or since answered.",
                load(&h.subscriptions),
            ),
            (
                "ws_gateway_history_recovered",
                "Subscriptions with since answered recovered:true.",
                load(&h.recovered),
            ),
            (
                "ws_gateway_history_not_recovered",
                "Subscriptions with since answered recovered:false.",
                load(&h.not_recovered),
            ),
            (
                "ws_gateway_history_reads_failed",
                "History reads the broker did not answer.",
                load(&h.reads_failed),
            ),
            (
                "ws_gateway_history_duplicates_dropped",
                "Publications that reached this node twice and were dropped.",
                load(&h.duplicates_dropped),
            ),
            (
                "ws_gateway_history_holes_filled",
                "Holes in a stream on the way from the broker that the history filled.",
                load(&h.holes_filled),
            ),
            (
                "ws_gateway_history_holes_lost",
                "Holes the history could not fill (409 pushes lost sent).",
                load(&h.holes_lost),
            ),
        ] {
            counter(e, name, help, value)?;
        }

        // The process.
        if let Some(p) = &self.process {
            counter_f64(
                e,
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                p.cpu_seconds,
            )?;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_memory_bytes,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_memory_bytes,
            )?;
            gauge(e, "process_open_fds", "Open file descriptors.", p.open_fds)?;
            gauge(
                e,
                "process_max_fds",
                "The open-file limit (soft).",
                p.max_fds,
            )?;
            gauge(
                e,
                "process_start_time_seconds",
                "When the process started, in seconds since the Unix epoch.",
                p.start_time_seconds,
            )?;
            gauge(e, "process_threads", "OS threads.", p.threads)?;
        }
        Ok(())
    }
}

fn counter_f64(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: f64) -> Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A label value from outside (an app name a client chose, a node id), escaped as the text
/// format requires: prometheus-client writes `&str` values as they are, and one `"` in an app
/// name would otherwise make the whole scrape unreadable.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}
