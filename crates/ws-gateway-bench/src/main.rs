//! `ws-gateway-bench`: a load generator for ws-gateway, and for nginx+Nchan so that both are
//! measured by the same tool in the same run. See BENCHMARKS.md for the method.
//!
//! Modes:
//! - `conns`: open N subscribed connections at a given concurrency; set-up rate, server CPU
//!   per set-up, server RSS per connection; then close them all and time until the server's
//!   state is clean.
//! - `fanout`: N subscribers, M pushes (at a rate or flat out); deliveries/s, server CPU per
//!   delivery, loss, reordering, latency percentiles.
//! - `push`: HTTP push throughput over keep-alive connections, no subscribers.
//! - `subs`: many subscriptions per connection: RSS per subscription, push round trips while
//!   `/stat` is read, RSS after every client left.

mod proc;
mod report;
mod subs;
mod target;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use tokio::net::TcpStream;

use crate::proc::Sample;
use crate::report::Report;
use crate::target::Target;
use crate::ws::{WsClient, source_for};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(name = "ws-gateway-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// The server under test.
    #[arg(long, value_enum, default_value = "gateway")]
    target: Target,
    /// WebSocket and push address.
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
    /// Where the server reports its state: ws-gateway's stat listener, or the nginx server
    /// that serves `/nchan_status`.
    #[arg(long, default_value = "127.0.0.1:6000")]
    stat_addr: SocketAddr,
    /// The server's pid, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// The app (channel) to use.
    #[arg(long, default_value = "bench")]
    app: String,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold N connections: set-up rate, CPU and RSS per connection, time to clean state.
    Conns {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seconds to hold the connections before closing them.
        #[arg(long, default_value_t = 0)]
        hold_s: u64,
    },
    /// N subscribers, M pushes: deliveries/s, CPU per delivery, loss, order, latency.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 50)]
        pushes: usize,
        /// Pushes per second; flat out when absent.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
    /// HTTP push throughput with keep-alive connections and no subscribers.
    Push {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// N connections × S subscriptions: RSS per subscription, pushes while `/stat` is read.
    Subs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: subs::SubsArgs,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Conns {
            common,
            connections,
            concurrency,
            hold_s,
        } => conns(common, connections, concurrency, hold_s).await,
        Mode::Fanout {
            common,
            subscribers,
            pushes,
            rate,
            concurrency,
        } => fanout(common, subscribers, pushes, rate, concurrency).await,
        Mode::Push {
            common,
            connections,
            seconds,
        } => push(common, connections, seconds).await,
        Mode::Subs { common, args } => subs::subs(common, args).await,
    };
    if let Err(err) = result {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::Gateway => "gateway",
        Target::Nchan => "nchan",
    }
}

/// Opens `n` subscribers, `concurrency` set-ups at a time, each complete (upgrade, and for
/// ws-gateway auth + subscribe with both replies received).
async fn open_subscribers(
    common: &Common,
    n: usize,
    concurrency: usize,
) -> Result<Vec<WsClient>, Error> {
    let progress = ProgressBar::new(n as u64).with_message("connecting");
    let path = common.target.subscribe_path(&common.app);
    let (messages, replies) = common.target.setup_messages(&common.app);
    let clients: Vec<Result<WsClient, Error>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (path, messages, progress) = (&path, &messages, &progress);
            async move {
                let mut client = WsClient::connect(common.addr, source_for(i), path).await?;
                if !messages.is_empty() {
                    client.send_texts(messages).await?;
                }
                for _ in 0..replies {
                    client.next_message().await?.ok_or("closed during set-up")?;
                }
                progress.inc(1);
                Ok(client)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    progress.finish_and_clear();
    clients.into_iter().collect()
}

async fn http_connection(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn request(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), Error> {
    sender.ready().await?;
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The number of subscribers the server reports for the app.
async fn server_subscribers(common: &Common) -> Result<u64, Error> {
    let mut sender = http_connection(common.stat_addr).await?;
    match common.target {
        Target::Gateway => {
            let (_, body) = request(&mut sender, "GET", "/stat", String::new()).await?;
            let text = String::from_utf8_lossy(&body);
            Ok(text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{} ", common.app)))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0))
        }
        Target::Nchan => {
            let (_, body) = request(&mut sender, "GET", "/nchan_status", String::new()).await?;
            let text = String::from_utf8_lossy(&body);
            text.lines()
                .find_map(|line| line.strip_prefix("subscribers: "))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| "no `subscribers:` line in /nchan_status".into())
        }
    }
}

async fn conns(common: Common, n: usize, concurrency: usize, hold_s: u64) -> Result<(), Error> {
    let before = Sample::take(common.pid);
    let own_before = proc::own_cpu_time();
    let started = Instant::now();
    let clients = open_subscribers(&common, n, concurrency).await?;
    let setup = started.elapsed();
    let cpu_after = Sample::take(common.pid);
    let own_setup_cpu = proc::own_cpu_time() - own_before;
    // RSS settles once the last set-ups' transient buffers are freed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = Sample::take(common.pid);
    let subscribed = server_subscribers(&common).await?;
    tokio::time::sleep(Duration::from_secs(hold_s)).await;

    let closing = Instant::now();
    drop(clients);
    let deadline = closing + Duration::from_secs(60);
    while server_subscribers(&common).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let clean = closing.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_close = Sample::take(common.pid);

    let mut report = Report::new();
    report
        .add("connections", n as u64, "")
        .add("server_subscribers", subscribed, "")
        .add("setup_s", setup.as_secs_f64(), "s")
        .add("conns_per_s", n as f64 / setup.as_secs_f64(), "conn/s")
        .add("close_clean_s", clean.as_secs_f64(), "s")
        .add(
            "client_cpu_per_setup_us",
            proc::per_unit_us(own_setup_cpu, n as u64),
            "µs",
        );
    if let (Some(b), Some(c), Some(h), Some(a)) = (before, cpu_after, held, after_close) {
        report
            .add(
                "server_cpu_per_setup_us",
                proc::per_unit_us(c.cpu - b.cpu, n as u64),
                "µs",
            )
            .add("rss_before_kib", b.rss / 1024, "KiB")
            .add("rss_held_kib", h.rss / 1024, "KiB")
            .add(
                "rss_per_conn_bytes",
                (h.rss.saturating_sub(b.rss)) as f64 / n as f64,
                "B",
            )
            .add("rss_after_close_kib", a.rss / 1024, "KiB");
    }
    report.print("conns", target_name(common.target));
    Ok(())
}

/// Adds the generator's and (when its pid is known) the server's CPU per `unit`.
fn add_cpu(
    report: &mut Report,
    unit: &str,
    units: u64,
    own_cpu: Duration,
    before: Option<Sample>,
    after: Option<Sample>,
) {
    report.add(
        &format!("client_cpu_per_{unit}_us"),
        proc::per_unit_us(own_cpu, units),
        "µs",
    );
    if let Some(cpu) = proc::cpu_per_us(before, after, units) {
        report.add(&format!("server_cpu_per_{unit}_us"), cpu, "µs");
    }
}

/// What one subscriber saw during a fan-out.
#[derive(Debug, Default)]
struct Received {
    count: u64,
    reordered: u64,
    latencies_us: Vec<u32>,
    last: Option<Instant>,
}

async fn receive(
    mut client: WsClient,
    target: Target,
    pushes: usize,
    base: Instant,
    deadline: Instant,
) -> Received {
    let mut got = Received {
        latencies_us: Vec::with_capacity(pushes),
        ..Received::default()
    };
    let mut last_seq: Option<u64> = None;
    while got.count < pushes as u64 {
        let Ok(Ok(Some(payload))) =
            tokio::time::timeout_at(deadline.into(), client.next_message()).await
        else {
            break;
        };
        let now = Instant::now();
        let Some(text) = target.delivered_text(&payload) else {
            continue;
        };
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
        let latency_ns = (now - base).as_nanos() as u64 - sent_ns;
        got.latencies_us
            .push((latency_ns / 1000).min(u64::from(u32::MAX)) as u32);
        got.last = Some(now);
    }
    got
}

async fn fanout(
    common: Common,
    n: usize,
    pushes: usize,
    rate: Option<f64>,
    concurrency: usize,
) -> Result<(), Error> {
    let clients = open_subscribers(&common, n, concurrency).await?;
    let subscribed = server_subscribers(&common).await?;
    if subscribed < n as u64 {
        return Err(format!("the server reports {subscribed} subscribers, expected {n}").into());
    }
    let base = Instant::now();
    let deadline = base + Duration::from_secs(120);
    let target = common.target;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(receive(client, target, pushes, base, deadline)))
        .collect();

    let mut sender = http_connection(common.addr).await?;
    let progress = ProgressBar::new(pushes as u64).with_message("pushing");
    let before = Sample::take(common.pid);
    let own_before = proc::own_cpu_time();
    let started = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    for seq in 0..pushes {
        // At a fixed rate, latency counts from when the push was due, not from when it could be
        // sent: a server that answers pushes slowly and falls behind the schedule is charged for
        // the delay (no coordinated omission).
        let due = match interval {
            Some(interval) => {
                let due = started + interval * seq as u32;
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let text = format!("{seq} {}", (due - base).as_nanos());
        let (path, body) = target.push(&common.app, &text);
        let (status, _) = request(&mut sender, "POST", &path, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!("push {seq} answered {status}").into());
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let pushed = started.elapsed();

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut delivered, mut reordered, mut last) = (0u64, 0u64, started);
    for reader in readers {
        let got = reader.await?;
        delivered += got.count;
        reordered += got.reordered;
        last = last.max(got.last.unwrap_or(started));
        for latency in got.latencies_us {
            histogram.record(u64::from(latency).max(1))?;
        }
    }
    let after = Sample::take(common.pid);
    let own_cpu = proc::own_cpu_time() - own_before;
    let elapsed = last - started;
    let expected = (n * pushes) as u64;

    let mut report = Report::new();
    report
        .add("subscribers", n as u64, "")
        .add("pushes", pushes as u64, "")
        .add(
            "rate",
            rate.map_or("flat out".into(), serde_json::Value::from),
            "push/s",
        )
        .add("push_s", pushed.as_secs_f64(), "s")
        .add("deliveries", delivered, "")
        .add("lost", expected - delivered.min(expected), "")
        .add("reordered", reordered, "")
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
    add_cpu(&mut report, "delivery", delivered, own_cpu, before, after);
    report.print("fanout", target_name(common.target));
    Ok(())
}

async fn push(common: Common, connections: usize, seconds: u64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let common = Arc::new(common);
    let before = Sample::take(common.pid);
    let own_before = proc::own_cpu_time();
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let common = common.clone();
            tokio::spawn(async move {
                let mut sender = http_connection(common.addr).await?;
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let (path, body) = common.target.push(&common.app, "0 0");
                    match request(&mut sender, "POST", &path, body).await {
                        Ok((status, _)) if (200..300).contains(&status) => ok += 1,
                        Ok(_) => failed += 1,
                        // The server ended the keep-alive connection (nginx does after
                        // keepalive_requests): open another, as any client would.
                        Err(_) => sender = http_connection(common.addr).await?,
                    }
                }
                Ok::<_, Error>((ok, failed))
            })
        })
        .collect();
    let (mut ok, mut failed) = (0u64, 0u64);
    for worker in workers {
        let (o, f) = worker.await??;
        ok += o;
        failed += f;
    }
    let elapsed = started.elapsed();
    let after = Sample::take(common.pid);
    let own_cpu = proc::own_cpu_time() - own_before;

    let mut report = Report::new();
    report
        .add("connections", connections as u64, "")
        .add("seconds", elapsed.as_secs_f64(), "s")
        .add("accepted", ok, "")
        .add("refused", failed, "")
        .add("requests_per_s", ok as f64 / elapsed.as_secs_f64(), "req/s");
    add_cpu(&mut report, "request", ok, own_cpu, before, after);
    report.print("push", target_name(common.target));
    Ok(())
}
