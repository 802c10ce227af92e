//! Finding 2: slowloris peers and descriptor exhaustion must not lock real clients out; one
//! total deadline for a request head; an optional per-address limit; shutdown refuses new
//! connections.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_server::ServerConfig;
use hyper::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

use crate::common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_ws-gateway");

/// The start of an upgrade request that never ends.
const PARTIAL_UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";

/// Connections that sent part of a head and then nothing.
async fn slowloris(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PARTIAL_UPGRADE).await.unwrap();
        held.push(stream);
    }
    held
}

/// A WebSocket handshake that either succeeds or is refused with a status: never a hang.
async fn try_connect(url: &str) -> Result<Client, Option<StatusCode>> {
    match guard("an upgrade answer", tokio_tungstenite::connect_async(url)).await {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Some(response.status())),
        Err(_) => Err(None),
    }
}

/// Lets this test process hold as many sockets as its hard limit allows (the attacks below
/// open more than a common soft limit of 1024).
fn raise_open_files() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
}

/// The binary, started (when `open_files` is given) under `ulimit -n` (soft and hard), on
/// ephemeral loopback ports; its log is read on, so it never blocks on a full pipe.
struct Limited {
    _child: Child,
    addr: SocketAddr,
    stat_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Limited {
    async fn start(open_files: Option<u32>) -> Limited {
        raise_open_files();
        let ulimit = open_files.map_or_else(String::new, |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("bash")
            .args([
                "-c",
                &format!("{ulimit}exec \"$0\" \"$@\""),
                BINARY,
                "--listen",
                "127.0.0.1:0",
                "--stat-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let after = |line: &str, marker: &str| {
            line.find(marker).map(|at| {
                line[at + marker.len()..]
                    .trim()
                    .parse::<SocketAddr>()
                    .unwrap()
            })
        };
        let (mut addr, mut stat_addr) = (None, None);
        while addr.is_none() || stat_addr.is_none() {
            let line = guard("the listeners", lines.next_line())
                .await
                .unwrap()
                .expect("the gateway started");
            addr = addr.or(after(&line, "websocket and push listener on "));
            stat_addr = stat_addr.or(after(&line, "stat listener on "));
            log.lock().unwrap().push(line);
        }
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Limited {
            _child: child,
            addr: addr.unwrap(),
            stat_addr: stat_addr.unwrap(),
            log,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    async fn push(&self, app: &str, text: &str) -> StatusCode {
        let body = format!(r#"{{"app":"{app}","text":"{text}"}}"#);
        http(self.addr, "POST", "/push", &body).await.0
    }

    async fn stat(&self) -> (StatusCode, String) {
        let (status, _, body) = http(self.stat_addr, "GET", "/stat", "").await;
        (status, body)
    }
}

async fn subscribed_client(url: &str, app: &str) -> Client {
    let mut client = Client::connect(url).await;
    client.send(r#"{"member_id":-1,"token":""}"#).await;
    client.expect(&hello_stranger()).await;
    client.subscribe(app).await;
    client
}

#[cfg(target_os = "linux")] // `ulimit` and /proc
#[tokio::test]
async fn out_of_descriptors_the_gateway_keeps_serving_and_recovers() {
    // 256 descriptors in all: the gateway fits its limits under them, keeping a reserve.
    let gateway = Limited::start(Some(256)).await;
    assert!(gateway.logged("open files: soft limit 256"));
    assert!(gateway.logged("the open-file limit is too low"));

    // 400 peers that never finish their upgrade head: more than every descriptor.
    let _slowloris = slowloris(gateway.addr, 400).await;
    // Real clients still get in, subscribe and receive; push and stat answer.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(subscribed_client(&gateway.url(), "news").await);
    }
    assert_eq!(
        gateway.push("news", "still here").await,
        StatusCode::ACCEPTED
    );
    for client in &mut clients {
        client
            .expect(r#"{"app":"news","member_id":-1,"text":"still here"}"#)
            .await;
    }
    assert_eq!(
        gateway.stat().await,
        (StatusCode::OK, "news 10\n".to_owned())
    );

    // 300 more clients than the descriptors allow: each is answered (101 or 503) or, at worst,
    // closed at once; none hangs.
    let attempts = (0..300).map(|_| {
        let url = gateway.url();
        tokio::spawn(async move { try_connect(&url).await })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        match attempt.await.unwrap() {
            Ok(client) => admitted.push(client),
            Err(Some(StatusCode::SERVICE_UNAVAILABLE) | None) => refused += 1,
            Err(other) => panic!("an unexpected answer: {other:?}"),
        }
    }
    assert!(
        refused > 0 && admitted.len() > 50,
        "{} / {refused}",
        admitted.len()
    );
    assert_eq!(gateway.push("news", "and now").await, StatusCode::ACCEPTED);
    assert_eq!(
        gateway.stat().await,
        (StatusCode::OK, "news 10\n".to_owned())
    );

    // Once they leave, there is room again.
    drop(admitted);
    let mut late = retry_until("a connect after the flood", || async {
        try_connect(&gateway.url()).await.ok()
    })
    .await;
    late.send(r#"{"member_id":-1,"token":""}"#).await;
    late.expect(&hello_stranger()).await;
}

#[tokio::test]
async fn slow_heads_give_way_to_fast_ones() {
    raise_open_files();
    let mut config = ServerConfig::default();
    config.limits.max_handshakes = 16;
    let server = TestServer::with_config(config).await;
    let mut slow = slowloris(server.addr, 100).await;
    let mut client = server.anonymous().await;
    client.subscribe("match").await;
    // The oldest slow peers were closed to make room, without an answer.
    assert!(read_until_closed(&mut slow[0]).await.is_empty());
    retry_until("84 slow peers evicted", || async {
        (server.counters.handshakes_evicted() >= 84).then_some(())
    })
    .await;
    server.push_ok("match", -1, "x").await;
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"x"}"#)
        .await;
}

#[tokio::test]
async fn the_head_deadline_is_total() {
    let mut config = ServerConfig::default();
    config.timeouts.head = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;

    // A padded upgrade head (more than the 512 bytes read in place), one byte every 10 ms: no gap
    // is long, the whole would take 30 s.
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 3000));
    let trickler = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = trickler.into_split();
    let started = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in head {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = guard("the close", reader.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(5));
    trickle.abort();

    // A peer that sends nothing, and a keep-alive connection idle after its push, too.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let push = br#"{"app":"a","text":"x"}"#;
    idle.write_all(
        format!(
            "POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            push.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    idle.write_all(push).await.unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(server.counters.head_timeouts() >= 2);
}

#[tokio::test]
async fn a_head_over_16_kib_gets_431_and_refusals_close_the_connection() {
    let server = TestServer::start().await;
    let mut large = TcpStream::connect(server.addr).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 17 * 1024));
    large.write_all(&head).await.unwrap();
    let answer = read_until_closed(&mut large).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("request head larger than 16384 bytes or 100 header fields\n"));

    // So does a head with more header fields than 100, however small.
    let mut many = TcpStream::connect(server.addr).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..101 {
        head.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.write_all(&head).await.unwrap();
    let answer = read_until_closed(&mut many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // And a later head on a keep-alive connection (hyper's limit, the same).
    let mut later = TcpStream::connect(server.addr).await.unwrap();
    let push = br#"{"app":"a","text":"x"}"#;
    let mut requests = format!(
        "POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        push.len()
    )
    .into_bytes();
    requests.extend_from_slice(push);
    requests.extend_from_slice(b"POST /push HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    requests.extend(std::iter::repeat_n(b'a', 17 * 1024));
    later.write_all(&requests).await.unwrap();
    let answer = read_until_closed(&mut later).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains("HTTP/1.1 431"), "{answer}");

    // A refused request does not keep its connection.
    let mut stray = TcpStream::connect(server.addr).await.unwrap();
    stray
        .write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stray).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
}

async fn connect_from(local: &str, server: &TestServer) -> Result<Client, ()> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    match guard(
        "an upgrade",
        tokio_tungstenite::client_async(server.url(), stream),
    )
    .await
    {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(_) => Err(()),
    }
}

#[cfg(target_os = "linux")] // 127.0.0.2 is a loopback address without configuration
#[tokio::test]
async fn an_address_over_its_limit_is_closed_at_once_and_others_are_not() {
    let mut config = ServerConfig::default();
    config.limits.max_connections_per_ip = 2;
    let server = TestServer::with_config(config).await;
    let first = connect_from("127.0.0.1", &server).await.unwrap();
    // An upgrade that hyper answers (it has a body length) keeps its share too.
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    guard("the 101", second.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");
    assert!(connect_from("127.0.0.1", &server).await.is_err());
    assert_eq!(server.counters.refused_per_address(), 1);
    // Another address is not affected.
    let _other = connect_from("127.0.0.2", &server).await.unwrap();
    // A freed place is usable again.
    first.close().await;
    retry_until("the freed place reused", || async {
        connect_from("127.0.0.1", &server).await.ok()
    })
    .await;
}

#[tokio::test]
async fn during_shutdown_new_connections_are_refused() {
    let mut config = ServerConfig::default();
    // A client that never answers our close frame keeps the shutdown going this long.
    config.timeouts.close = Duration::from_secs(5);
    config.timeouts.shutdown = Duration::from_secs(10);
    let server = TestServer::with_config(config).await;
    let addr = server.addr;
    let _mute = server.anonymous().await;
    let stopping = tokio::spawn(server.shutdown());
    // (A connection still in the backlog when the listener closes is reset, not refused.)
    retry_until("connects refused", || async {
        let refused = std::io::ErrorKind::ConnectionRefused;
        TcpStream::connect(addr)
            .await
            .err()
            .filter(|err| err.kind() == refused)
    })
    .await;
    assert!(!stopping.is_finished(), "refused while still shutting down");
    stopping.abort();
}

/// The resident memory of `pid`, in bytes (Linux).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

#[cfg(target_os = "linux")] // /proc/<pid>/status
#[tokio::test]
async fn memory_taken_by_slow_heads_comes_back_after_they_leave() {
    let gateway = Limited::start(None).await;
    let pid = gateway._child.id().unwrap();
    // One full round trip first, so the baseline includes what serving takes.
    let mut client = subscribed_client(&gateway.url(), "news").await;
    assert_eq!(gateway.push("news", "x").await, StatusCode::ACCEPTED);
    client
        .expect(r#"{"app":"news","member_id":-1,"text":"x"}"#)
        .await;
    let baseline = rss(pid);

    // 1,200 peers each sending a padded 4 KB head and then nothing.
    let mut padded = PARTIAL_UPGRADE.to_vec();
    padded.extend_from_slice(b"X-Pad: ");
    padded.extend(std::iter::repeat_n(b'a', 4000));
    let mut held = Vec::new();
    for _ in 0..1200 {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(&padded).await.unwrap();
        held.push(stream);
    }
    // The pool is full of them (the stat listener answers meanwhile).
    assert_eq!(
        gateway.stat().await,
        (StatusCode::OK, "news 1\n".to_owned())
    );
    let peak = rss(pid);
    drop(held);

    // Within a few of the gateway's 5 s memory checks, most of it is back.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let now = rss(pid);
        if now < baseline + (peak - baseline) / 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "RSS {baseline} before, {peak} under the attack, still {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "RSS {baseline} before, {peak} under the attack, {} after",
        rss(pid)
    );
    // And the gateway still serves.
    assert_eq!(gateway.push("news", "y").await, StatusCode::ACCEPTED);
    client
        .expect(r#"{"app":"news","member_id":-1,"text":"y"}"#)
        .await;
}
