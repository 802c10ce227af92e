//! The `fanout` mode: N subscribers, M pushes (at a rate or flat out); deliveries/s, server CPU
//! per delivery, loss, reordering, latency percentiles.
//!
//! The subscribers may be spread over several nodes (`--addrs`) and held by several child
//! processes (`--procs`); the pushes all go to `--addr`. Every push carries its number and the
//! wall-clock time it was due, so any process on the machine can time its delivery. Every
//! connection stays open until the servers' CPU and RSS have been read: closing is not part of
//! delivering (until issue 10 each subscriber closed as soon as it had all pushes, which
//! charged the first ones' closing to the deliveries still under way).

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::task::JoinHandle;

use crate::children::Children;
use crate::proc;
use crate::report::Report;
use crate::target::Target;
use crate::ws::WsClient;
use crate::{
    Common, Error, Opening, add_cpu, add_rss_per_node, check_subscribers, clock_ns,
    http_connection, open_subscribers, request, shares, target_name,
};

#[derive(Debug, Clone)]
pub struct FanoutArgs {
    pub subscribers: usize,
    pub pushes: usize,
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub procs: usize,
}

/// How long subscribers wait for the pushes, counted from the first push.
pub const RECEIVE_WINDOW: Duration = Duration::from_secs(120);

/// What one subscriber saw during a fan-out.
#[derive(Debug, Default)]
pub struct Received {
    count: u64,
    reordered: u64,
    /// Deliveries that carried a stream position (`"offset"`, `"epoch"`; `--recover`).
    positioned: u64,
    latencies_us: Vec<u32>,
    /// Wall-clock time of the last delivery, ns since the epoch.
    last_ns: Option<u64>,
}

/// Receives until `pushes` pushes arrived, `deadline` passed or `stop` completed, and hands
/// the connection back: it stays open until the servers' CPU has been read, so that closing
/// is not charged to delivering.
pub async fn receive(
    mut client: WsClient,
    target: Target,
    pushes: usize,
    deadline: Instant,
    stop: impl Future<Output = ()>,
) -> (Received, WsClient) {
    let mut got = Received {
        latencies_us: Vec::with_capacity(pushes),
        ..Received::default()
    };
    let mut last_seq: Option<u64> = None;
    tokio::pin!(stop);
    while got.count < pushes as u64 {
        let next = tokio::select! {
            biased;
            next = tokio::time::timeout_at(deadline.into(), client.next_message()) => next,
            () = &mut stop => break,
        };
        let Ok(Ok(Some(payload))) = next else {
            break;
        };
        let now_ns = clock_ns();
        let Some(text) = target.delivered_text(&payload) else {
            continue;
        };
        let positioned = target.is_positioned(&payload);
        let text = String::from_utf8_lossy(text);
        let mut fields = text.split(' ');
        let (Some(Ok(seq)), Some(Ok(sent_ns))) = (
            fields.next().map(str::parse::<u64>),
            fields.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if last_seq.is_some_and(|last| seq <= last) {
            got.reordered += 1;
        }
        last_seq = Some(seq);
        got.count += 1;
        got.positioned += u64::from(positioned);
        let latency_ns = now_ns.saturating_sub(sent_ns);
        got.latencies_us
            .push((latency_ns / 1000).min(u64::from(u32::MAX)) as u32);
        got.last_ns = Some(now_ns);
    }
    (got, client)
}

/// What all subscribers (of one process, or of all of them) saw.
#[derive(Debug)]
pub struct Seen {
    pub delivered: u64,
    pub reordered: u64,
    pub positioned: u64,
    /// Wall-clock time of the last delivery, ns since the epoch; 0 if none.
    pub last_ns: u64,
    /// Latencies in µs.
    pub histogram: Histogram<u64>,
    /// The CPU time child processes spent receiving.
    pub children_cpu: Duration,
}

impl Seen {
    pub fn new() -> Result<Seen, Error> {
        Ok(Seen {
            delivered: 0,
            reordered: 0,
            positioned: 0,
            last_ns: 0,
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            children_cpu: Duration::ZERO,
        })
    }

    pub fn add(&mut self, got: Received) -> Result<(), Error> {
        self.delivered += got.count;
        self.reordered += got.reordered;
        self.positioned += got.positioned;
        self.last_ns = self.last_ns.max(got.last_ns.unwrap_or(0));
        for latency in got.latencies_us {
            self.histogram.record(u64::from(latency).max(1))?;
        }
        Ok(())
    }
}

/// Whoever holds the subscribers: reader tasks of this process, or child processes.
#[derive(Debug)]
enum Holders {
    Here(Vec<JoinHandle<(Received, WsClient)>>),
    Children(Children),
}

pub async fn fanout(common: Common, args: FanoutArgs) -> Result<(), Error> {
    let n = args.subscribers;
    let servers = common.servers();
    let addrs = common.sub_addrs();
    let held_by = shares(0, n, addrs.len());
    let fresh = servers.sample();
    let holders = if args.procs <= 1 {
        let progress = ProgressBar::new(0).with_message("connecting");
        let opening = Opening::of(&common, &addrs, n, args.concurrency);
        let clients = open_subscribers(opening, progress, |client| client).await?;
        check_subscribers(&common, &held_by).await?;
        let deadline = Instant::now() + RECEIVE_WINDOW;
        let target = common.target;
        Holders::Here(
            clients
                .into_iter()
                .map(|client| {
                    let stop = std::future::pending();
                    tokio::spawn(receive(client, target, args.pushes, deadline, stop))
                })
                .collect(),
        )
    } else {
        let children = Children::spawn(&common, &args, &addrs).await?;
        check_subscribers(&common, &held_by).await?;
        Holders::Children(children)
    };
    let held = if servers.per_node {
        // RSS settles once the last set-ups' transient buffers are freed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(servers.sample())
    } else {
        None
    };

    let mut sender = http_connection(common.addr).await?;
    let progress = ProgressBar::new(args.pushes as u64).with_message("pushing");
    let before = servers.sample();
    let own_before = proc::own_cpu_time();
    let started = Instant::now();
    let started_ns = clock_ns();
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    for seq in 0..args.pushes {
        // At a fixed rate, a push that is late because the server answered the previous ones
        // slowly counts from when it was due: the server is charged for falling behind the
        // schedule (no coordinated omission). A push on schedule counts from when it is sent,
        // since the timer wakes the generator up to a millisecond late and the server cannot
        // act before the push exists.
        let due_ns = match interval {
            Some(interval) => {
                let since_start = interval * seq as u32;
                let due = started + since_start;
                if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    clock_ns()
                } else {
                    started_ns + since_start.as_nanos() as u64
                }
            }
            None => clock_ns(),
        };
        let text = format!("{seq} {due_ns}");
        let (path, body) = common.target.push(&common.app, &text);
        let (status, _) = request(&mut sender, "POST", &path, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!("push {seq} answered {status}").into());
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let pushed = started.elapsed();

    let mut seen = Seen::new()?;
    let mut clients = Vec::new();
    let children = match holders {
        Holders::Here(readers) => {
            clients.reserve(readers.len());
            for reader in readers {
                let (got, client) = reader.await?;
                seen.add(got)?;
                clients.push(client);
            }
            None
        }
        Holders::Children(mut children) => {
            children.collect(&mut seen).await?;
            Some(children)
        }
    };
    let after = servers.sample();
    let own_cpu = proc::own_cpu_time() - own_before + seen.children_cpu;
    drop(clients);
    if let Some(children) = children {
        children.finish().await?;
    }
    let elapsed = Duration::from_nanos(seen.last_ns.saturating_sub(started_ns));
    let (delivered, histogram) = (seen.delivered, &seen.histogram);
    let expected = (n * args.pushes) as u64;

    let mut report = Report::new();
    report
        .add("subscribers", n as u64, "")
        .add("pushes", args.pushes as u64, "")
        .add(
            "rate",
            args.rate.map_or("flat out".into(), serde_json::Value::from),
            "push/s",
        )
        .add("push_s", pushed.as_secs_f64(), "s")
        .add("deliveries", delivered, "")
        .add("lost", expected - delivered.min(expected), "")
        .add("reordered", seen.reordered, "")
        .add("positioned", seen.positioned, "")
        .add("elapsed_s", elapsed.as_secs_f64(), "s")
        .add(
            "deliveries_per_s",
            delivered as f64 / elapsed.as_secs_f64(),
            "msg/s",
        )
        .add(
            "latency_p50_ms",
            histogram.value_at_quantile(0.50) as f64 / 1000.0,
            "ms",
        )
        .add(
            "latency_p90_ms",
            histogram.value_at_quantile(0.90) as f64 / 1000.0,
            "ms",
        )
        .add(
            "latency_p99_ms",
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            "ms",
        )
        .add("latency_max_ms", histogram.max() as f64 / 1000.0, "ms");
    add_cpu(&mut report, "delivery", delivered, own_cpu, &before, &after);
    if let Some(held) = &held {
        add_rss_per_node(&mut report, "", &held_by, &fresh, held);
        add_rss_per_node(&mut report, "_after", &held_by, &fresh, &after);
    }
    if args.procs > 1 {
        report.add("client_procs", args.procs as u64, "");
    }
    report.print("fanout", target_name(common.target));
    Ok(())
}
