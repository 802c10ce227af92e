//! `fanout --procs P`: the subscribers held by P child processes of this same binary, since a
//! process needs one open file per connection and may hold fewer than 20k here.
//!
//! The parent starts each child as `ws-gateway-bench subscribers …` with its share of the
//! subscriber indices (so source addresses and nodes are spread as in one process). A child
//! opens its subscribers, each receiving as soon as it is set up (so it answers the servers'
//! pings however long the others take), and prints `ready`. Once the parent has sent every
//! push it writes `go`; the child then waits at most `--wait-s` for the rest, and prints one
//! JSON line: counts, its last delivery's wall-clock time, its CPU time, and its latency
//! histogram as `[value_us, count]` pairs. It keeps its connections open until its stdin
//! closes (the parent has read the servers' CPU and RSS by then); a child whose parent went
//! away exits.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

use crate::fanout::{FanoutArgs, RECEIVE_WINDOW, Seen, receive};
use crate::target::Target;
use crate::{Common, Error, Opening, open_subscribers, proc};

/// The longest a child may take to open its share.
const SETUP_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    target: Target,
    #[arg(long, value_delimiter = ',', required = true)]
    addrs: Vec<SocketAddr>,
    #[arg(long)]
    app: String,
    /// The global index of this child's first subscriber.
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    pushes: usize,
    #[arg(long)]
    concurrency: usize,
    /// Seconds to wait for the pushes after `go`.
    #[arg(long)]
    wait_s: u64,
    /// Subscribe with `"recover":true`.
    #[arg(long)]
    recover: bool,
}

/// A child process: run by `fanout --procs`, never by hand.
pub async fn child(args: ChildArgs) -> Result<(), Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Bounded even if `go` never comes: the parent closes stdin when it ends.
    let far = Instant::now() + SETUP_WINDOW + RECEIVE_WINDOW;
    let opening = Opening {
        target: args.target,
        app: &args.app,
        addrs: &args.addrs,
        first: args.first,
        n: args.count,
        concurrency: args.concurrency,
        recover: args.recover,
    };
    // Each connection starts receiving once set up, so that it answers the servers' pings
    // however long the other set-ups take (a silent client is closed after timeouts.idle_ms).
    let readers = open_subscribers(opening, ProgressBar::hidden(), |client| {
        let mut stop_rx = stop_rx.clone();
        let stop = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(receive(client, args.target, args.pushes, far, stop))
    })
    .await?;
    let own_before = proc::own_cpu_time();
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await? {
        Some(line) if line == "go" => {}
        _ => return Err("the parent went away before `go`".into()),
    }
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        let _ = stop_tx.send(true);
    });
    let mut seen = Seen::new()?;
    let mut clients = Vec::with_capacity(readers.len());
    for reader in readers {
        let (got, client) = reader.await?;
        seen.add(got)?;
        clients.push(client);
    }
    stopper.abort();
    let cpu = proc::own_cpu_time() - own_before;
    let latencies: Vec<[u64; 2]> = seen
        .histogram
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    let line = serde_json::json!({
        "delivered": seen.delivered,
        "reordered": seen.reordered,
        "positioned": seen.positioned,
        "last_ns": seen.last_ns,
        "cpu_ns": cpu.as_nanos() as u64,
        "latencies": latencies,
    });
    stdout.write_all(format!("{line}\n").as_bytes()).await?;
    stdout.flush().await?;
    // Closing is not part of the measure: hold on until the parent is done reading the servers.
    while stdin.next_line().await?.is_some() {}
    drop(clients);
    Ok(())
}

/// The running children of one `fanout`.
#[derive(Debug)]
pub struct Children {
    children: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Children {
    /// Starts `args.procs` children, each with its share of `args.subscribers`, and returns
    /// once every one has its subscribers set up.
    pub async fn spawn(
        common: &Common,
        args: &FanoutArgs,
        addrs: &[SocketAddr],
    ) -> Result<Children, Error> {
        let exe = std::env::current_exe()?;
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let (n, procs) = (args.subscribers, args.procs);
        let mut children = Vec::with_capacity(procs);
        for c in 0..procs {
            let first = c * n / procs;
            let count = (c + 1) * n / procs - first;
            let mut command = Command::new(&exe);
            command
                .arg("subscribers")
                .args(["--target", crate::target_name(common.target)])
                .args(["--addrs", &addrs.join(",")])
                .args(["--app", &common.app])
                .args(["--first", &first.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--pushes", &args.pushes.to_string()])
                .args([
                    "--concurrency",
                    &args.concurrency.div_ceil(procs).to_string(),
                ])
                .args(["--wait-s", &RECEIVE_WINDOW.as_secs().to_string()]);
            if common.recover {
                command.arg("--recover");
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().ok_or("no stdin pipe")?;
            let stdout = child.stdout.take().ok_or("no stdout pipe")?;
            children.push((child, stdin, BufReader::new(stdout).lines()));
        }
        let progress = ProgressBar::new(procs as u64).with_message("children connecting");
        for (c, (_, _, lines)) in children.iter_mut().enumerate() {
            let line = tokio::time::timeout(SETUP_WINDOW, lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) if line == "ready" => progress.inc(1),
                _ => return Err(format!("child {c} did not set up its subscribers").into()),
            }
        }
        progress.finish_and_clear();
        Ok(Children { children })
    }

    /// Tells every child that the pushes are sent, and adds up what they saw; the children keep
    /// their connections until [`Children::finish`].
    pub async fn collect(&mut self, seen: &mut Seen) -> Result<(), Error> {
        for (_, stdin, _) in &mut self.children {
            stdin.write_all(b"go\n").await?;
            stdin.flush().await?;
        }
        for (c, (_, _, lines)) in self.children.iter_mut().enumerate() {
            let line = tokio::time::timeout(RECEIVE_WINDOW * 2, lines.next_line())
                .await
                .map_err(|_| format!("child {c} did not report"))??
                .ok_or_else(|| format!("child {c} ended without a report"))?;
            let report: serde_json::Value = serde_json::from_str(&line)?;
            let number = |key: &str| {
                report[key]
                    .as_u64()
                    .ok_or_else(|| format!("child {c}: no `{key}` in its report"))
            };
            seen.delivered += number("delivered")?;
            seen.reordered += number("reordered")?;
            seen.positioned += number("positioned")?;
            seen.last_ns = seen.last_ns.max(number("last_ns")?);
            seen.children_cpu += Duration::from_nanos(number("cpu_ns")?);
            for pair in report["latencies"].as_array().into_iter().flatten() {
                if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
                    seen.histogram.record_n(value, count)?;
                }
            }
        }
        Ok(())
    }

    /// Lets the children close their connections and waits for them to exit.
    pub async fn finish(self) -> Result<(), Error> {
        let mut waiting = Vec::with_capacity(self.children.len());
        for (child, stdin, _) in self.children {
            drop(stdin);
            waiting.push(child);
        }
        for mut child in waiting {
            let status = child.wait().await?;
            if !status.success() {
                return Err(format!("a subscriber process ended with {status}").into());
            }
        }
        Ok(())
    }
}
