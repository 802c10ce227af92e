//! The `subs` mode (ws-gateway only): what many subscriptions cost, and whether reading a large
//! `/stat` stalls pushes.
//!
//! 1. Opens N connections, each subscribing to S apps whose names are either the same S names
//!    on every connection (`--names same`) or unique to the connection (`--names unique`);
//!    server RSS per subscription.
//! 2. A probe subscriber times push round trips (POST sent → frame received), one at a time:
//!    first with nothing else going on, then while other tasks read `/stat` back to back.
//! 3. Closes everything, waits until `/stat` is empty and the server had time to return
//!    freed memory (its trim check runs every 5 s), and reads RSS again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;

use crate::proc::{self, Sample};
use crate::report::Report;
use crate::target::Target;
use crate::ws::{WsClient, source_for};
use crate::{Common, Error, http_connection, request};

/// Which app names the connections subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Names {
    /// Every connection subscribes to the same S names: all but the first subscription to
    /// each name are to an app that already exists.
    Same,
    /// Every subscription creates its own app.
    Unique,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SubsArgs {
    #[arg(long, default_value_t = 2_000)]
    connections: usize,
    /// Subscriptions per connection (at most the server's `limits.max_subscriptions`).
    #[arg(long, default_value_t = 256)]
    subscriptions: usize,
    #[arg(long, value_enum, default_value = "unique")]
    names: Names,
    /// Bytes per app name (at most the server's `limits.max_app_name_len`).
    #[arg(long, default_value_t = 128)]
    name_len: usize,
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Timed pushes in each phase (quiet, then while `/stat` is read), 10 ms apart.
    #[arg(long, default_value_t = 300)]
    pushes: usize,
    /// Tasks reading `/stat` back to back during the second phase.
    #[arg(long, default_value_t = 2)]
    stat_readers: usize,
}

/// The `j`-th app name of connection `conn`, padded to `len` bytes.
fn app_name(names: Names, conn: usize, j: usize, len: usize) -> String {
    let mut name = match names {
        Names::Same => format!("s{j}-"),
        Names::Unique => format!("u{conn}-{j}-"),
    };
    let pad = len.saturating_sub(name.len());
    name.extend(std::iter::repeat_n('x', pad));
    name
}

async fn open(common: &Common, args: &SubsArgs) -> Result<Vec<WsClient>, Error> {
    let progress = ProgressBar::new(args.connections as u64).with_message("subscribing");
    let clients: Vec<Result<WsClient, Error>> = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let progress = &progress;
            async move {
                let mut texts = vec![r#"{"member_id":-1,"token":""}"#.to_owned()];
                texts.extend((0..args.subscriptions).map(|j| {
                    let app = app_name(args.names, i, j, args.name_len);
                    format!(r#"{{"app":"{app}"}}"#)
                }));
                let mut client = WsClient::connect(common.addr, source_for(i), "/").await?;
                client.send_texts(&texts).await?;
                for _ in 0..texts.len() {
                    let reply = client.next_message().await?.ok_or("closed during set-up")?;
                    let ok = |word: &[u8]| reply.windows(word.len()).any(|w| w == word);
                    if !ok(b"success") && !ok(b"hello") {
                        return Err(format!("refused: {}", String::from_utf8_lossy(&reply)).into());
                    }
                }
                progress.inc(1);
                Ok(client)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    progress.finish_and_clear();
    clients.into_iter().collect()
}

/// One `GET /stat`: its size and how long reading it took.
async fn read_stat(common: &Common) -> Result<(usize, Duration), Error> {
    let started = Instant::now();
    let mut sender = http_connection(common.stat_addr).await?;
    let (status, body) = request(&mut sender, "GET", "/stat", String::new()).await?;
    if status != 200 {
        return Err(format!("/stat answered {status}").into());
    }
    Ok((body.len(), started.elapsed()))
}

/// Round trips of `pushes` pushes to the probe, one at a time, 10 ms apart, in µs.
async fn probe_round_trips(
    common: &Common,
    probe: &mut WsClient,
    pushes: usize,
) -> Result<Histogram<u64>, Error> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut sender = http_connection(common.addr).await?;
    for seq in 0..pushes {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = Instant::now();
        let body = format!(r#"{{"app":"probe","text":"{seq}"}}"#);
        let (status, _) = request(&mut sender, "POST", "/push", body).await?;
        if status != 202 {
            return Err(format!("push {seq} answered {status}").into());
        }
        let frame = probe.next_message().await?.ok_or("the probe was closed")?;
        if !frame.ends_with(format!("\"text\":\"{seq}\"}}").as_bytes()) {
            return Err("the probe got an unexpected frame".into());
        }
        histogram.record((started.elapsed().as_micros() as u64).max(1))?;
    }
    Ok(histogram)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub async fn subs(common: Common, args: SubsArgs) -> Result<(), Error> {
    if common.target != Target::Gateway {
        return Err("`subs` measures ws-gateway only".into());
    }
    let before = Sample::take(common.pid);
    let started = Instant::now();
    let clients = open(&common, &args).await?;
    let setup = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = Sample::take(common.pid);
    let subscriptions = (args.connections * args.subscriptions) as u64;

    let mut probe = WsClient::connect(common.addr, source_for(args.connections), "/").await?;
    let probe_setup = [
        r#"{"member_id":-1,"token":""}"#.to_owned(),
        r#"{"app":"probe"}"#.to_owned(),
    ];
    probe.send_texts(&probe_setup).await?;
    for _ in 0..2 {
        probe.next_message().await?.ok_or("probe closed")?;
    }
    let (stat_bytes, stat_quiet) = read_stat(&common).await?;
    let quiet = probe_round_trips(&common, &mut probe, args.pushes).await?;

    // Phase 2: the same pushes while `/stat` is read back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let (polls, slowest_stat_us, peak_rss) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let readers: Vec<_> = (0..args.stat_readers)
        .map(|_| {
            let (common, stop) = (common.clone(), stop.clone());
            let (polls, slowest, peak_rss) =
                (polls.clone(), slowest_stat_us.clone(), peak_rss.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (_, took) = read_stat(&common).await?;
                    polls.fetch_add(1, Ordering::Relaxed);
                    slowest.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                    if let Some(rss) = common.pid.and_then(proc::rss_bytes) {
                        peak_rss.fetch_max(rss, Ordering::Relaxed);
                    }
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    // Let the readers' first requests be under way before timing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = probe_round_trips(&common, &mut probe, args.pushes).await?;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await??;
    }

    let closing = Instant::now();
    drop(clients);
    drop(probe);
    let deadline = closing + Duration::from_secs(120);
    while read_stat(&common).await?.0 > 0 {
        if Instant::now() > deadline {
            return Err("/stat still lists apps 120 s after every client left".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clean = closing.elapsed();
    // The server checks every 5 s whether to hand freed memory back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = Sample::take(common.pid);

    let mut report = Report::new();
    report
        .add("connections", args.connections as u64, "")
        .add("subscriptions_per_conn", args.subscriptions as u64, "")
        .add(
            "names",
            if args.names == Names::Same {
                "same"
            } else {
                "unique"
            },
            "",
        )
        .add("name_len", args.name_len as u64, "B")
        .add("setup_s", setup.as_secs_f64(), "s")
        .add("stat_bytes", stat_bytes as u64, "B")
        .add("stat_quiet_ms", stat_quiet.as_secs_f64() * 1000.0, "ms")
        .add(
            "push_rtt_quiet_p50_ms",
            ms(quiet.value_at_quantile(0.5)),
            "ms",
        )
        .add("push_rtt_quiet_max_ms", ms(quiet.max()), "ms")
        .add("stat_polls_during", polls.load(Ordering::Relaxed), "")
        .add(
            "stat_slowest_during_ms",
            ms(slowest_stat_us.load(Ordering::Relaxed)),
            "ms",
        )
        .add(
            "push_rtt_during_stat_p50_ms",
            ms(during.value_at_quantile(0.5)),
            "ms",
        )
        .add(
            "push_rtt_during_stat_p99_ms",
            ms(during.value_at_quantile(0.99)),
            "ms",
        )
        .add("push_rtt_during_stat_max_ms", ms(during.max()), "ms")
        .add("close_clean_s", clean.as_secs_f64(), "s");
    if let (Some(b), Some(h), Some(a)) = (before, held, after) {
        let grown = h.rss.saturating_sub(b.rss) as f64;
        report
            .add("rss_before_kib", b.rss / 1024, "KiB")
            .add("rss_held_kib", h.rss / 1024, "KiB")
            .add("rss_per_conn_bytes", grown / args.connections as f64, "B")
            .add(
                "rss_per_subscription_bytes",
                grown / subscriptions as f64,
                "B",
            )
            .add(
                "rss_peak_during_stat_kib",
                peak_rss.load(Ordering::Relaxed) / 1024,
                "KiB",
            )
            .add("rss_after_leave_kib", a.rss / 1024, "KiB");
    }
    report.print("subs", "gateway");
    Ok(())
}
