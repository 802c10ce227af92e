//! Real `redis-server` and `nats-server` processes for tests, each on its own ephemeral
//! loopback port with its own temporary directory, so tests share no state with each other
//! or with any server already running on the machine.
//!
//! A server is killed when its handle is dropped. [`RedisServer::stop`] / [`NatsServer::stop`]
//! and `restart` (same port) let fault tests take the broker away and bring it back.
//! Both binaries come from Debian's packages (`redis-server`, `nats-server`); `.ci/run`
//! installs them when missing.
//!
//! [`FaultProxy`] (module [`proxy`]) sits between a client and a server and cuts their
//! connections on command or at random intervals, for tests of what survives a dropped
//! connection.

pub mod proxy;

pub use proxy::{Cut, FaultProxy};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// A port that was free a moment ago. A server that then fails to bind it is started again on
/// another (see `start_on_free_port`).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port on 127.0.0.1")
}

/// Waits until `ready` says the freshly spawned `child` serves, for at most [`READY_WITHIN`];
/// `false` if it exited first (most likely its port was taken meanwhile) or never got ready
/// (then it is killed).
fn await_ready(child: &mut Option<Child>, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if let Some(Ok(Some(_))) = child.as_mut().map(Child::try_wait) {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child);
    false
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One round trip of a Redis command in RESP, answered as raw text (good enough for tests:
/// `PONG`, integers, arrays of channel names).
fn redis_round_trip(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes())?;
    let mut reader = BufReader::new(stream);
    read_resp(&mut reader)
}

fn read_resp(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" | ":" => rest.to_owned(),
        "-" => format!("ERR {rest}"),
        "$" => {
            let len: i64 = rest.parse().unwrap_or(-1);
            if len < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; len as usize + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(len as usize);
            String::from_utf8_lossy(&buf).into_owned()
        }
        "*" => {
            let n: i64 = rest.parse().unwrap_or(0);
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_resp(reader)?);
            }
            items.join("\n")
        }
        _ => line,
    })
}

/// A `redis-server` of its own. Nothing is persisted.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts the process on `self.port`; whether it answers PING.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let mut child = Some(child);
        let port = self.port;
        let ready = await_ready(&mut child, || {
            redis_round_trip(port, &["PING"]).is_ok_and(|answer| answer == "PONG")
        });
        self.child = child;
        ready
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// One command, its answer as text (arrays one item per line, errors as `ERR ...`).
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        redis_round_trip(self.port, args)
    }

    /// The channels with at least one subscriber matching `pattern` (`PUBSUB CHANNELS`), sorted.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let text = self
            .command(&["PUBSUB", "CHANNELS", pattern])
            .expect("redis answers PUBSUB CHANNELS");
        let mut channels: Vec<String> = text.lines().map(str::to_owned).collect();
        channels.sort();
        channels
    }

    /// Kills the server (like a crash: no goodbye to its clients).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let started = self.spawn();
        assert!(
            started,
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A `nats-server` of its own, with JetStream (storage in its temporary directory) and the
/// HTTP monitoring endpoint, which tests read to see the server's subscriptions.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        for _ in 0..5 {
            let mut server = NatsServer {
                port: free_port(),
                monitor_port: free_port(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("nats-server did not start on any of 5 ports");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        let mut child = Some(child);
        let ready = await_ready(&mut child, || {
            self.monitor("/healthz?js-enabled-only=true")
                .is_ok_and(|body| body.contains("ok"))
        });
        self.child = child;
        ready
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The body of a monitoring endpoint, e.g. `/subsz?subs=1`.
    pub fn monitor(&self, path: &str) -> std::io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.monitor_port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    }

    /// The subjects the server has subscriptions on that start with `prefix`, sorted, one
    /// entry per subscription (so a subject subscribed twice appears twice).
    pub fn subscriptions(&self, prefix: &str) -> Vec<String> {
        let body = self
            .monitor("/subsz?subs=1&limit=100000")
            .expect("nats-server answers /subsz");
        // Each subscription is an object with a "subject" field; no JSON parser needed.
        let mut subjects: Vec<String> = body
            .split("\"subject\":")
            .skip(1)
            .filter_map(|rest| {
                let rest = rest.trim_start().strip_prefix('"')?;
                rest.split_once('"').map(|(subject, _)| subject.to_owned())
            })
            .filter(|subject| subject.starts_with(prefix))
            .collect();
        subjects.sort();
        subjects
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same ports and directory (JetStream state survives).
    pub fn restart(&mut self) {
        self.stop();
        let started = self.spawn();
        assert!(started, "nats-server did not restart on port {}", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_server_starts_answers_and_restarts() {
        let mut redis = RedisServer::start();
        assert_eq!(redis.command(&["PING"]).unwrap(), "PONG");
        assert_eq!(redis.command(&["SET", "k", "v"]).unwrap(), "OK");
        redis.stop();
        assert!(redis.command(&["PING"]).is_err());
        redis.restart();
        assert_eq!(
            redis.command(&["GET", "k"]).unwrap(),
            "",
            "nothing persisted"
        );
    }

    #[test]
    fn a_nats_server_starts_and_reports_subscriptions() {
        let mut nats = NatsServer::start();
        assert!(nats.subscriptions("test.").is_empty());
        nats.restart();
        assert!(nats.monitor("/varz").unwrap().contains("\"port\""));
    }
}
