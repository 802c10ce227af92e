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
//! - `batch`: messages/s through arrays of pushes against single pushes, alternating in one
//!   run, delivered to real subscribers (loss and order checked).
//! - `subs`: many subscriptions per connection: RSS per subscription, push round trips while
//!   `/stat` is read, RSS after every client left.
//! - `recover`: N clients with stream positions cut at once, M pushes sent meanwhile, all
//!   reconnecting at once with `since`: time until each has its reply and every missed push,
//!   checked in order (issue 13).
//!
//! Several nodes of a cluster (issue 10): `--addrs` spreads the subscribers over nodes
//! (round-robin) while pushes go to `--addr`; `--stat-addrs` names each node's stat listener;
//! `--pids` sums server CPU and RSS over the nodes and reports them per node too;
//! `--broker-pid` reports the broker server's CPU apart; `fanout --procs P` holds the
//! subscribers in P child processes (one open file per connection: one process holds < 20k).

mod batch;
mod children;
mod fanout;
mod proc;
mod recover;
mod report;
mod subs;
mod target;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use tokio::net::TcpStream;

use crate::proc::{Samples, Servers};
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
    /// Several nodes: the WebSocket addresses the subscribers connect to, comma-separated;
    /// subscriber i goes to the (i mod n)-th. Pushes still go to `--addr`. Default: `--addr`.
    #[arg(long, value_delimiter = ',')]
    addrs: Vec<SocketAddr>,
    /// Each node's stat address, in the order of `--addrs` (needed with several `--addrs`):
    /// every node must report its share of the subscribers. Default: `--stat-addr`.
    #[arg(long, value_delimiter = ',')]
    stat_addrs: Vec<SocketAddr>,
    /// Several nodes' pids, comma-separated: server CPU and RSS are summed over them and also
    /// reported per node (in this order; give them in the order of `--addrs`).
    #[arg(long, value_delimiter = ',', conflicts_with = "pid")]
    pids: Vec<u32>,
    /// The broker server's pid (redis-server, nats-server): its CPU is reported apart.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// ws-gateway subscribers ask for stream positions (`{"app":..,"recover":true}`, issue
    /// 13): every push they get carries `offset` and `epoch`, a second encoding of each push.
    #[arg(long)]
    recover: bool,
}

impl Common {
    /// Where the subscribers connect, one address per node.
    fn sub_addrs(&self) -> Vec<SocketAddr> {
        if self.addrs.is_empty() {
            vec![self.addr]
        } else {
            self.addrs.clone()
        }
    }

    /// Each node's stat address, in the order of [`Common::sub_addrs`].
    fn node_stat_addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        let nodes = self.sub_addrs().len();
        if self.stat_addrs.is_empty() && nodes == 1 {
            return Ok(vec![self.stat_addr]);
        }
        if self.stat_addrs.len() != nodes {
            return Err(format!(
                "--stat-addrs lists {} addresses for {nodes} subscriber addresses",
                self.stat_addrs.len()
            )
            .into());
        }
        Ok(self.stat_addrs.clone())
    }

    fn servers(&self) -> Servers {
        Servers {
            nodes: if self.pids.is_empty() {
                self.pid.into_iter().collect()
            } else {
                self.pids.clone()
            },
            per_node: !self.pids.is_empty(),
            broker: self.broker_pid,
        }
    }
}

/// How many of subscribers `first..first + n`, spread round-robin over `nodes` addresses by
/// their global index, land on each node.
fn shares(first: usize, n: usize, nodes: usize) -> Vec<u64> {
    let mut shares = vec![0u64; nodes];
    for i in first..first + n {
        shares[i % nodes] += 1;
    }
    shares
}

/// Wall-clock time in nanoseconds since the epoch: the push stamps it into its text and the
/// subscriber compares with it, also across the generator's processes.
fn clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
        /// Hold the subscribers in this many child processes (each needs one open file per
        /// connection); 1 = in this process.
        #[arg(long, default_value_t = 1)]
        procs: usize,
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
    /// Messages/s through `POST /push` arrays against single pushes, side by side.
    Batch {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: batch::BatchArgs,
    },
    /// N connections × S subscriptions: RSS per subscription, pushes while `/stat` is read.
    Subs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: subs::SubsArgs,
    },
    /// N clients cut at once, M pushes missed, all reconnecting at once with `since`: time
    /// until every client recovered them, in order.
    Recover {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: recover::RecoverArgs,
    },
    /// A child of `fanout --procs`: holds a share of the subscribers (not run by hand).
    #[command(hide = true)]
    Subscribers(children::ChildArgs),
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
            procs,
        } => {
            let args = fanout::FanoutArgs {
                subscribers,
                pushes,
                rate,
                concurrency,
                procs,
            };
            fanout::fanout(common, args).await
        }
        Mode::Push {
            common,
            connections,
            seconds,
        } => push(common, connections, seconds).await,
        Mode::Batch { common, args } => batch::batch(common, args).await,
        Mode::Subs { common, args } => subs::subs(common, args).await,
        Mode::Recover { common, args } => recover::recover(common, args).await,
        Mode::Subscribers(args) => children::child(args).await,
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

/// Which subscribers to open, and where.
#[derive(Debug, Clone, Copy)]
struct Opening<'a> {
    target: Target,
    app: &'a str,
    /// Subscriber i connects to `addrs[i % addrs.len()]`.
    addrs: &'a [SocketAddr],
    /// The global index of the first subscriber (spreads source addresses and nodes the same
    /// way whichever process opens it).
    first: usize,
    n: usize,
    concurrency: usize,
    /// Subscribe with `"recover":true` (see [`Common::recover`]).
    recover: bool,
}

impl<'a> Opening<'a> {
    fn of(common: &'a Common, addrs: &'a [SocketAddr], n: usize, concurrency: usize) -> Self {
        Opening {
            target: common.target,
            app: &common.app,
            addrs,
            first: 0,
            n,
            concurrency,
            recover: common.recover,
        }
    }
}

/// Opens the subscribers, `concurrency` set-ups at a time, each complete (upgrade, and for
/// ws-gateway auth + subscribe with both replies received), and hands each to `then` as soon
/// as it is set up.
async fn open_subscribers<T>(
    opening: Opening<'_>,
    progress: ProgressBar,
    then: impl Fn(WsClient) -> T,
) -> Result<Vec<T>, Error> {
    let Opening {
        target,
        app,
        addrs,
        first,
        n,
        concurrency,
        recover,
    } = opening;
    progress.set_length(n as u64);
    let path = target.subscribe_path(app);
    let (messages, replies) = target.setup_messages(app, recover);
    let clients: Vec<Result<T, Error>> = futures_util::stream::iter(first..first + n)
        .map(|i| {
            let (path, messages, progress, then) = (&path, &messages, &progress, &then);
            async move {
                let addr = addrs[i % addrs.len()];
                let mut client = WsClient::connect(addr, source_for(i), path).await?;
                if !messages.is_empty() {
                    client.send_texts(messages).await?;
                }
                for _ in 0..replies {
                    client.next_message().await?.ok_or("closed during set-up")?;
                }
                progress.inc(1);
                Ok(then(client))
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

/// The number of subscribers the server reports for the app, added up over the nodes.
async fn server_subscribers(common: &Common) -> Result<u64, Error> {
    let mut total = 0;
    for stat_addr in common.node_stat_addrs()? {
        total += node_subscribers(common.target, stat_addr, &common.app).await?;
    }
    Ok(total)
}

/// Checks that every node reports (at least) its share of the subscribers.
async fn check_subscribers(common: &Common, expected: &[u64]) -> Result<(), Error> {
    for (stat_addr, &want) in common.node_stat_addrs()?.into_iter().zip(expected) {
        let got = node_subscribers(common.target, stat_addr, &common.app).await?;
        if got < want {
            return Err(format!(
                "the server at {stat_addr} reports {got} subscribers, expected {want}"
            )
            .into());
        }
    }
    Ok(())
}

/// The number of subscribers one node reports for the app.
async fn node_subscribers(target: Target, stat_addr: SocketAddr, app: &str) -> Result<u64, Error> {
    let mut sender = http_connection(stat_addr).await?;
    match target {
        Target::Gateway => {
            let (_, body) = request(&mut sender, "GET", "/stat", String::new()).await?;
            let text = String::from_utf8_lossy(&body);
            Ok(text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{app} ")))
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
    let servers = common.servers();
    let addrs = common.sub_addrs();
    let before = servers.sample();
    let own_before = proc::own_cpu_time();
    let started = Instant::now();
    let progress = ProgressBar::new(0).with_message("connecting");
    let opening = Opening::of(&common, &addrs, n, concurrency);
    let clients = open_subscribers(opening, progress, |client| client).await?;
    let setup = started.elapsed();
    let cpu_after = servers.sample();
    let own_setup_cpu = proc::own_cpu_time() - own_before;
    // RSS settles once the last set-ups' transient buffers are freed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = servers.sample();
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
    let after_close = servers.sample();

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
    if let (Some(b), Some(c), Some(h), Some(a)) = (
        before.total(),
        cpu_after.total(),
        held.total(),
        after_close.total(),
    ) {
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
    if servers.per_node {
        add_per_node(&mut report, "setup", n as u64, &before, &cpu_after);
        add_rss_per_node(&mut report, "", &shares(0, n, addrs.len()), &before, &held);
    }
    if let (Some(b), Some(a)) = (before.broker, cpu_after.broker) {
        report.add(
            "broker_cpu_per_setup_us",
            proc::per_unit_us(a.cpu - b.cpu, n as u64),
            "µs",
        );
    }
    report.print("conns", target_name(common.target));
    Ok(())
}

/// Adds the generator's CPU per `unit` and, for the servers whose pids are known, theirs:
/// summed over the nodes, per node with `--pids`, the broker's apart.
fn add_cpu(
    report: &mut Report,
    unit: &str,
    units: u64,
    own_cpu: Duration,
    before: &Samples,
    after: &Samples,
) {
    report.add(
        &format!("client_cpu_per_{unit}_us"),
        proc::per_unit_us(own_cpu, units),
        "µs",
    );
    if let Some(cpu) = proc::cpu_per_us(before.total(), after.total(), units) {
        report.add(&format!("server_cpu_per_{unit}_us"), cpu, "µs");
    }
    if before.per_node {
        add_per_node(report, unit, units, before, after);
    }
    if let Some(cpu) = proc::cpu_per_us(before.broker, after.broker, units) {
        report.add(&format!("broker_cpu_per_{unit}_us"), cpu, "µs");
    }
}

/// Each node's CPU per `unit` (of all `units`: each node's share of the total cost).
fn add_per_node(report: &mut Report, unit: &str, units: u64, before: &Samples, after: &Samples) {
    let per_node: Vec<serde_json::Value> = before
        .nodes
        .iter()
        .zip(&after.nodes)
        .map(|(b, a)| {
            proc::cpu_per_us(*b, *a, units).map_or(serde_json::Value::Null, |us| {
                ((us * 100.0).round() / 100.0).into()
            })
        })
        .collect();
    report.add(&format!("node_cpu_per_{unit}_us"), per_node, "µs");
}

/// Each node's RSS growth per connection it holds (`held_by[j]` connections on node j), and
/// its RSS now: `node_rss_per_conn{suffix}_bytes` and `node_rss{suffix}_kib`.
fn add_rss_per_node(
    report: &mut Report,
    suffix: &str,
    held_by: &[u64],
    before: &Samples,
    held: &Samples,
) {
    if held_by.len() != held.nodes.len() {
        return;
    }
    let (mut per_conn, mut rss) = (Vec::new(), Vec::new());
    for ((b, h), &conns) in before.nodes.iter().zip(&held.nodes).zip(held_by) {
        match (b, h) {
            (Some(b), Some(h)) => {
                let grown = h.rss.saturating_sub(b.rss) as f64 / conns.max(1) as f64;
                per_conn.push(serde_json::Value::from(grown.round()));
                rss.push(serde_json::Value::from(h.rss / 1024));
            }
            _ => {
                per_conn.push(serde_json::Value::Null);
                rss.push(serde_json::Value::Null);
            }
        }
    }
    report
        .add(&format!("node_rss_per_conn{suffix}_bytes"), per_conn, "B")
        .add(&format!("node_rss{suffix}_kib"), rss, "KiB");
}

async fn push(common: Common, connections: usize, seconds: u64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let common = Arc::new(common);
    let servers = common.servers();
    let before = servers.sample();
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
    let after = servers.sample();
    let own_cpu = proc::own_cpu_time() - own_before;

    let mut report = Report::new();
    report
        .add("connections", connections as u64, "")
        .add("seconds", elapsed.as_secs_f64(), "s")
        .add("accepted", ok, "")
        .add("refused", failed, "")
        .add("requests_per_s", ok as f64 / elapsed.as_secs_f64(), "req/s");
    add_cpu(&mut report, "request", ok, own_cpu, &before, &after);
    report.print("push", target_name(common.target));
    Ok(())
}
