//! The `batch` mode: messages per second through `POST /push` carrying arrays of `--batch`
//! pushes, against the seed's one push per request, side by side in one run: each round runs
//! both (the one that goes first alternating), every message delivered to real subscribers,
//! which count what they get and check its order.
//!
//! The rate is messages over the time from the first request to the last delivery, so a
//! server that accepts faster than it delivers is not credited for it. Pushing is flow
//! controlled: a request waits while it would put the slowest subscriber more than `--window`
//! messages behind, since the gateway answers a push once it is queued (not written), and
//! flat-out arrays would otherwise overflow the subscribers' outboxes (4100, messages lost)
//! within a second. Each message's text is `<pusher> <seq>`: every subscriber checks that each
//! pusher's sequence only grows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::ProgressBar;
use tokio::sync::Notify;

use crate::report::Report;
use crate::target::Target;
use crate::ws::WsClient;
use crate::{
    Common, Error, Opening, add_cpu, check_subscribers, http_connection, open_subscribers, proc,
    request, shares, target_name,
};

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Subscribers of the app; each receives every message.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Pushes per request in the batch variant (the other sends one object per request).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Keep-alive connections pushing at once, in both variants.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds each variant pushes for, in each round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages the slowest subscriber may be behind the pushes accepted; keep it plus
    /// `--batch` under the gateway's `limits.outbox_messages` (1024), or messages are lost.
    #[arg(long, default_value_t = 512)]
    window: u64,
}

/// How long the subscribers may take to receive everything once pushing stopped.
const DRAIN_WINDOW: Duration = Duration::from_secs(60);

/// What one subscriber has received so far, shared with the driver.
#[derive(Debug, Default)]
struct Tally {
    count: AtomicU64,
    reordered: AtomicU64,
    /// When the latest message arrived, in ns since the run's start.
    last_ns: AtomicU64,
}

/// Counts and checks what arrives, until the connection ends; `progress` wakes the pushers
/// waiting for the subscribers to catch up.
async fn tally(
    mut client: WsClient,
    target: Target,
    tally: Arc<Tally>,
    progress: Arc<Notify>,
    base: Instant,
) {
    let mut last_seq: Vec<Option<u64>> = Vec::new();
    while let Ok(Some(payload)) = client.next_message().await {
        let Some(text) = target.delivered_text(&payload) else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        let mut fields = text.split(' ');
        let (Some(Ok(pusher)), Some(Ok(seq))) = (
            fields.next().map(str::parse::<usize>),
            fields.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if last_seq.len() <= pusher {
            last_seq.resize(pusher + 1, None);
        }
        if last_seq[pusher].is_some_and(|last| seq <= last) {
            tally.reordered.fetch_add(1, Ordering::Relaxed);
        }
        last_seq[pusher] = Some(seq);
        tally
            .last_ns
            .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        tally.count.fetch_add(1, Ordering::Release);
        progress.notify_waiters();
    }
}

/// What the pushers of one run share: messages accepted so far, and how far each subscriber
/// has got since the run began.
struct Flow {
    window: u64,
    accepted: AtomicU64,
    tallies: Vec<Arc<Tally>>,
    before: Vec<u64>,
    progress: Arc<Notify>,
}

impl Flow {
    /// Messages of this run the slowest subscriber has received.
    fn slowest(&self) -> u64 {
        self.tallies
            .iter()
            .zip(&self.before)
            .map(|(t, b)| t.count.load(Ordering::Acquire) - b)
            .min()
            .unwrap_or(0)
    }

    /// Waits until `size` more messages keep the slowest subscriber within the window, and
    /// counts them as sent.
    async fn admit(&self, size: u64) {
        let sent = self.accepted.fetch_add(size, Ordering::AcqRel) + size;
        loop {
            // Created before the check: a notification in between is not missed.
            let caught_up = self.progress.notified();
            if self.slowest() + self.window >= sent {
                return;
            }
            caught_up.await;
        }
    }
}

/// The body of one request: one object, or an array of `size` objects, numbered from `seq`.
fn body(app: &str, pusher: usize, seq: u64, size: usize) -> String {
    let object = |seq: u64| format!(r#"{{"app":"{app}","text":"{pusher} {seq}"}}"#);
    if size == 1 {
        return object(seq);
    }
    let objects: Vec<String> = (seq..seq + size as u64).map(object).collect();
    format!("[{}]", objects.join(","))
}

/// One variant's measure.
#[derive(Debug, Clone, Copy)]
struct Run {
    messages_per_s: f64,
    lost: u64,
    reordered: u64,
}

/// Pushes `size` messages per request over `args.connections` connections for
/// `args.seconds`, then waits for every subscriber to have them all.
async fn run(
    common: &Arc<Common>,
    args: &BatchArgs,
    size: usize,
    round: usize,
    subscribers: &Subscribers,
    next_seq: &mut [u64],
) -> Result<Run, Error> {
    let Subscribers {
        tallies,
        progress,
        base,
    } = subscribers;
    let base = *base;
    let servers = common.servers();
    let before_counts: Vec<u64> = tallies
        .iter()
        .map(|t| t.count.load(Ordering::Acquire))
        .collect();
    let flow = Arc::new(Flow {
        window: args.window,
        accepted: AtomicU64::new(0),
        tallies: tallies.clone(),
        before: before_counts.clone(),
        progress: progress.clone(),
    });
    let reordered_before: u64 = tallies
        .iter()
        .map(|t| t.reordered.load(Ordering::Relaxed))
        .sum();
    let before = servers.sample();
    let own_before = proc::own_cpu_time();
    let started = Instant::now();
    let started_ns = base.elapsed().as_nanos() as u64;
    let deadline = started + Duration::from_secs(args.seconds);
    let workers: Vec<_> = (0..args.connections)
        .map(|pusher| {
            let (common, flow) = (common.clone(), flow.clone());
            let mut seq = next_seq[pusher];
            tokio::spawn(async move {
                let mut sender = http_connection(common.addr).await?;
                let (mut messages, mut requests) = (0u64, 0u64);
                let expected = format!(r#"{{"accepted":{size}}}"#);
                while Instant::now() < deadline {
                    let body = body(&common.app, pusher, seq, size);
                    flow.admit(size as u64).await;
                    let (status, answer) = request(&mut sender, "POST", "/push", body).await?;
                    let accepted = status == 202 && (size == 1 || answer == expected.as_bytes());
                    if !accepted {
                        let answer = String::from_utf8_lossy(&answer).into_owned();
                        return Err(format!("push answered {status}: {answer}").into());
                    }
                    seq += size as u64;
                    messages += size as u64;
                    requests += 1;
                }
                Ok::<_, Error>((messages, requests, seq))
            })
        })
        .collect();
    let (mut messages, mut requests) = (0u64, 0u64);
    for (pusher, worker) in workers.into_iter().enumerate() {
        let (m, r, seq) = worker.await??;
        messages += m;
        requests += r;
        next_seq[pusher] = seq;
    }
    let drain_deadline = Instant::now() + DRAIN_WINDOW;
    let all_in = || {
        tallies
            .iter()
            .zip(&before_counts)
            .all(|(t, b)| t.count.load(Ordering::Acquire) >= b + messages)
    };
    while !all_in() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let after = servers.sample();
    let own_cpu = proc::own_cpu_time() - own_before;
    let received: u64 = tallies
        .iter()
        .zip(&before_counts)
        .map(|(t, b)| (t.count.load(Ordering::Acquire) - b).min(messages))
        .sum();
    let lost = messages * tallies.len() as u64 - received;
    let last_ns = tallies
        .iter()
        .map(|t| t.last_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let elapsed = Duration::from_nanos(last_ns.saturating_sub(started_ns)).max(started.elapsed());
    let reordered = tallies
        .iter()
        .map(|t| t.reordered.load(Ordering::Relaxed))
        .sum::<u64>()
        - reordered_before;
    let result = Run {
        messages_per_s: messages as f64 / elapsed.as_secs_f64(),
        lost,
        reordered,
    };
    let mut report = Report::new();
    report
        .add("round", round as u64, "")
        .add("pushes_per_request", size as u64, "")
        .add("connections", args.connections as u64, "")
        .add("window", args.window, "msg")
        .add("subscribers", tallies.len() as u64, "")
        .add("requests", requests, "")
        .add("messages", messages, "")
        .add("seconds_to_last_delivery", elapsed.as_secs_f64(), "s")
        .add("messages_per_s", result.messages_per_s, "msg/s")
        .add(
            "deliveries_per_s",
            (messages * tallies.len() as u64) as f64 / elapsed.as_secs_f64(),
            "msg/s",
        )
        .add("lost", lost, "")
        .add("reordered", reordered, "");
    add_cpu(&mut report, "message", messages, own_cpu, &before, &after);
    report.print("batch-round", target_name(common.target));
    Ok(result)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The subscribers' tallies, and what wakes a pusher when they progress.
struct Subscribers {
    tallies: Vec<Arc<Tally>>,
    progress: Arc<Notify>,
    /// What the tallies' instants count from.
    base: Instant,
}

pub async fn batch(common: Common, args: BatchArgs) -> Result<(), Error> {
    if common.target != Target::Gateway {
        return Err("the batch mode measures ws-gateway's array push; Nchan has none".into());
    }
    if args.window < args.batch as u64 {
        // A request that cannot fit in the window would wait forever.
        return Err("--window must be at least --batch".into());
    }
    let common = Arc::new(common);
    let addrs = common.sub_addrs();
    let progress = ProgressBar::new(0).with_message("connecting");
    let opening = Opening::of(&common, &addrs, args.subscribers, 100);
    let clients = open_subscribers(opening, progress, |client| client).await?;
    check_subscribers(&common, &shares(0, args.subscribers, addrs.len())).await?;
    let base = Instant::now();
    let progress = Arc::new(Notify::new());
    let tallies: Vec<Arc<Tally>> = clients
        .into_iter()
        .map(|client| {
            let t = Arc::new(Tally::default());
            let reader = tally(client, common.target, t.clone(), progress.clone(), base);
            tokio::spawn(reader);
            t
        })
        .collect();
    let subscribers = Subscribers {
        tallies,
        progress,
        base,
    };

    let mut next_seq = vec![0u64; args.connections];
    let (mut singles, mut batches, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut reordered) = (0u64, 0u64);
    for round in 0..args.rounds {
        // The variant that goes first alternates: going first or second can move a result.
        let sizes = if round % 2 == 0 {
            [1, args.batch]
        } else {
            [args.batch, 1]
        };
        let mut rates = [0.0; 2];
        for size in sizes {
            let run = run(&common, &args, size, round, &subscribers, &mut next_seq).await?;
            lost += run.lost;
            reordered += run.reordered;
            rates[usize::from(size != 1)] = run.messages_per_s;
        }
        singles.push(rates[0]);
        batches.push(rates[1]);
        ratios.push(rates[1] / rates[0]);
    }
    let mut report = Report::new();
    let rounded =
        |v: &[f64]| -> Vec<f64> { v.iter().map(|x| (x * 100.0).round() / 100.0).collect() };
    report
        .add("rounds", args.rounds as u64, "")
        .add("batch", args.batch as u64, "pushes/request")
        .add("single_messages_per_s", rounded(&singles), "msg/s")
        .add("batch_messages_per_s", rounded(&batches), "msg/s")
        .add("ratios", rounded(&ratios), "×")
        .add(
            "median_single_messages_per_s",
            median(&mut singles),
            "msg/s",
        )
        .add("median_batch_messages_per_s", median(&mut batches), "msg/s")
        .add("median_ratio", median(&mut ratios), "×")
        .add("lost", lost, "")
        .add("reordered", reordered, "");
    report.print("batch", target_name(common.target));
    Ok(())
}
