//! The `recover` mode (ws-gateway only, issue 13): how long a crowd of clients takes to get
//! back what it missed when all of them reconnect at once.
//!
//! 1. Opens `--clients` subscribers with positions (`{"app":..,"recover":true}`) and pushes
//!    once, so that every client holds a position (`offset`, `epoch`) of the stream.
//! 2. Each round: closes every client's socket at once and waits until the server reports no
//!    subscriber left (so that nothing pushed next can reach an old socket); sends `--pushes`
//!    pushes (each waits for its `202`); then reconnects every client at once, each sending its
//!    auth and `{"app":..,"since":{"offset":N,"epoch":"e"}}` in one write. A client is done
//!    when it has the reply and every missed push. Times count from the reconnection's start
//!    (one instant for all clients): the reply, and the last missed push, per client.
//! 3. Every client checks its reply (`200`, `"recovered":true`, the newest position) and that
//!    the pushes come in order with the offsets that follow its position, each once, in its
//!    epoch, with the texts pushed. The new connections and positions carry into the next
//!    round.
//!
//! One JSON line per round. Server CPU is counted over the reconnection alone (from its start
//! until every client is done).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::Value;

use crate::report::Report;
use crate::target::Target;
use crate::ws::{WsClient, source_for};
use crate::{
    Common, Error, Opening, http_connection, open_subscribers, proc, request, server_subscribers,
};

#[derive(Debug, Clone, clap::Args)]
pub struct RecoverArgs {
    /// Clients that are cut and reconnect together.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Pushes sent while the clients are away (at most the server's `history.size`, or they
    /// cannot all be recovered).
    #[arg(long, default_value_t = 50)]
    pushes: usize,
    /// Cut, push, reconnect cycles, on the same clients.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Set-ups in flight while the clients first subscribe (the reconnection has them all
    /// in flight at once).
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

/// How long one client may take to reconnect and get everything it missed.
const CLIENT_WINDOW: Duration = Duration::from_secs(60);
/// How long the server may take to notice that every client is gone.
const CUT_WINDOW: Duration = Duration::from_secs(30);

/// Where a client stands in the stream: the last push it got.
#[derive(Debug, Clone)]
struct Position {
    offset: u64,
    epoch: String,
}

/// One client between rounds.
#[derive(Debug)]
struct Client {
    index: usize,
    ws: WsClient,
    position: Position,
}

/// What one client saw while reconnecting.
#[derive(Debug, Default)]
struct Outcome {
    /// The reply said `"recovered":true` with the newest position expected.
    recovered: bool,
    /// Every missed push came, in order, each once, with its expected offset, epoch and text.
    complete: bool,
    /// Missed pushes that did not come within the window.
    missing: u64,
    /// Pushes that came out of place (wrong offset, epoch or text).
    wrong: u64,
    reply_us: Option<u64>,
    done_us: Option<u64>,
    /// Why the client failed, for the first few failures shown.
    error: Option<String>,
}

pub async fn recover(common: Common, args: RecoverArgs) -> Result<(), Error> {
    if common.target != Target::Gateway {
        return Err("recover measures ws-gateway only (stream positions are its own)".into());
    }
    let servers = common.servers();
    let addrs = common.sub_addrs();
    let mut opening = Opening::of(&common, &addrs, args.clients, args.concurrency);
    opening.recover = true;
    let progress = ProgressBar::new(0).with_message("subscribing");
    let opened = open_subscribers(opening, progress, |ws| ws).await?;
    let mut sender = http_connection(common.addr).await?;
    push(&common, &mut sender, "start").await?;
    // Every client learns its position from the first push.
    let clients: Vec<Result<Client, Error>> = futures_util::stream::iter(opened)
        .enumerate()
        .map(|(index, mut ws)| async move {
            let frame = tokio::time::timeout(CLIENT_WINDOW, ws.next_message())
                .await
                .map_err(|_| "no first push")??
                .ok_or("closed before the first push")?;
            let (position, _) = positioned(&frame)?;
            Ok(Client {
                index,
                ws,
                position,
            })
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut clients = clients.into_iter().collect::<Result<Vec<_>, _>>()?;

    for round in 0..args.rounds {
        // Cut: every socket closes at once; the pushes must not reach any of them.
        let cut = Instant::now();
        let positions: Vec<(usize, Position)> = clients
            .drain(..)
            .map(|client| {
                drop(client.ws); // closes the socket
                (client.index, client.position)
            })
            .collect();
        let deadline = cut + CUT_WINDOW;
        while server_subscribers(&common).await? > 0 {
            if Instant::now() > deadline {
                return Err("the server still reports subscribers after the cut".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cut_s = cut.elapsed().as_secs_f64();
        let texts: Vec<String> = (0..args.pushes)
            .map(|seq| format!("{round}:{seq}"))
            .collect();
        for text in &texts {
            push(&common, &mut sender, text).await?;
        }

        let before = servers.sample();
        let own_before = proc::own_cpu_time();
        let started = Instant::now();
        let reconnects = positions.into_iter().map(|(index, position)| {
            let (common, texts) = (&common, &texts);
            let addr = addrs[index % addrs.len()];
            reconnect(common, addr, index, position, texts, started)
        });
        // All at once: every reconnection is in flight from the start.
        let results: Vec<(Outcome, Option<Client>)> = futures_util::stream::iter(reconnects)
            .buffer_unordered(args.clients.max(1))
            .collect()
            .await;
        let elapsed = started.elapsed();
        let after = servers.sample();
        let own_cpu = proc::own_cpu_time() - own_before;

        let mut replies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut done = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let (mut recovered, mut complete, mut missing, mut wrong) = (0u64, 0u64, 0u64, 0u64);
        let mut errors = Vec::new();
        for (outcome, client) in results {
            recovered += u64::from(outcome.recovered);
            complete += u64::from(outcome.complete);
            missing += outcome.missing;
            wrong += outcome.wrong;
            if let Some(us) = outcome.reply_us {
                replies.record(us.max(1))?;
            }
            if let Some(us) = outcome.done_us {
                done.record(us.max(1))?;
            }
            if let Some(error) = outcome.error
                && errors.len() < 3
            {
                errors.push(error);
            }
            clients.extend(client);
        }
        let n = args.clients as u64;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut report = Report::new();
        report
            .add("round", round as u64, "")
            .add("clients", n, "")
            .add("missed_pushes", args.pushes as u64, "")
            .add("cut_clean_s", cut_s, "s")
            .add("recovered", recovered, "")
            .add("complete", complete, "")
            .add("missing", missing, "")
            .add("wrong", wrong, "")
            .add("reply_p50_ms", ms(&replies, 0.50), "ms")
            .add("reply_p99_ms", ms(&replies, 0.99), "ms")
            .add("reply_max_ms", replies.max() as f64 / 1000.0, "ms")
            .add("done_p50_ms", ms(&done, 0.50), "ms")
            .add("done_p99_ms", ms(&done, 0.99), "ms")
            .add("done_max_ms", done.max() as f64 / 1000.0, "ms")
            .add("total_s", elapsed.as_secs_f64(), "s")
            .add(
                "client_cpu_per_client_us",
                proc::per_unit_us(own_cpu, n),
                "µs",
            );
        if let Some(cpu) = proc::cpu_per_us(before.total(), after.total(), n) {
            report.add("server_cpu_per_client_us", cpu, "µs");
        }
        if let Some(cpu) = proc::cpu_per_us(before.broker, after.broker, n) {
            report.add("broker_cpu_per_client_us", cpu, "µs");
        }
        if !errors.is_empty() {
            report.add("errors", errors, "");
        }
        report.print("recover", "gateway");
        if clients.len() != args.clients {
            return Err(format!(
                "{} of {} clients did not come back; stopping",
                args.clients - clients.len(),
                args.clients
            )
            .into());
        }
    }
    Ok(())
}

/// Sends one push and checks it was accepted.
async fn push(
    common: &Common,
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    text: &str,
) -> Result<(), Error> {
    let (path, body) = common.target.push(&common.app, text);
    let (status, _) = request(sender, "POST", &path, body).await?;
    if !(200..300).contains(&status) {
        return Err(format!("push {text:?} answered {status}").into());
    }
    Ok(())
}

/// Reconnects one client with `since` and reads its reply and every missed push; hands the
/// connection back with its new position when it got everything.
async fn reconnect(
    common: &Common,
    addr: std::net::SocketAddr,
    index: usize,
    position: Position,
    texts: &[String],
    started: Instant,
) -> (Outcome, Option<Client>) {
    let mut outcome = Outcome {
        missing: texts.len() as u64,
        ..Outcome::default()
    };
    let deadline = started + CLIENT_WINDOW;
    let result = tokio::time::timeout_at(deadline.into(), async {
        let mut ws = WsClient::connect(addr, source_for(index), "/").await?;
        let subscribe = format!(
            r#"{{"app":"{}","since":{{"offset":{},"epoch":"{}"}}}}"#,
            common.app, position.offset, position.epoch
        );
        ws.send_texts(&[r#"{"member_id":-1,"token":""}"#.to_owned(), subscribe])
            .await?;
        next(&mut ws).await?; // hello stranger
        let reply = reply_text(&next(&mut ws).await?)?;
        outcome.reply_us = Some(started.elapsed().as_micros() as u64);
        let newest = position.offset + texts.len() as u64;
        outcome.recovered = reply["code"] == 200
            && reply["recovered"] == true
            && reply["offset"] == newest
            && reply["epoch"] == position.epoch.as_str();
        if !outcome.recovered {
            return Err(format!("client {index}: reply {reply}").into());
        }
        let mut at = position.clone();
        for text in texts {
            let frame = next(&mut ws).await?;
            let (got, got_text) = positioned(&frame)?;
            if got.epoch != at.epoch || got.offset != at.offset + 1 || got_text != *text {
                outcome.wrong += 1;
                return Err(format!(
                    "client {index}: expected offset {} {text:?}, got {} {got_text:?} of {}",
                    at.offset + 1,
                    got.offset,
                    got.epoch
                )
                .into());
            }
            at = got;
            outcome.missing -= 1;
        }
        outcome.done_us = Some(started.elapsed().as_micros() as u64);
        Ok::<_, Error>((ws, at))
    })
    .await;
    match result {
        Ok(Ok((ws, at))) => {
            outcome.complete = true;
            let client = Client {
                index,
                ws,
                position: at,
            };
            (outcome, Some(client))
        }
        Ok(Err(err)) => {
            outcome.error = Some(err.to_string());
            (outcome, None)
        }
        Err(_) => {
            outcome.error = Some(format!("client {index}: not done within {CLIENT_WINDOW:?}"));
            (outcome, None)
        }
    }
}

async fn next(ws: &mut WsClient) -> Result<bytes::Bytes, Error> {
    Ok(ws.next_message().await?.ok_or("closed by the server")?)
}

/// The `text` of a gateway reply (`{"app":"gateway",…,"text":"{\"code\":…}"}`), parsed.
fn reply_text(frame: &[u8]) -> Result<Value, Error> {
    let envelope: Value = serde_json::from_slice(frame)?;
    let text = envelope["text"].as_str().ok_or("a reply without text")?;
    Ok(serde_json::from_str(text)?)
}

/// A push's position and text.
fn positioned(frame: &[u8]) -> Result<(Position, String), Error> {
    let push: Value = serde_json::from_slice(frame)?;
    let bad = || format!("not a positioned push: {}", String::from_utf8_lossy(frame));
    let offset = push["offset"].as_u64().ok_or_else(bad)?;
    let epoch = push["epoch"].as_str().ok_or_else(bad)?.to_owned();
    let text = push["text"].as_str().ok_or_else(bad)?.to_owned();
    Ok((Position { offset, epoch }, text))
}
