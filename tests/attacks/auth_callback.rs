//! Issue 9, finding 5: the HTTP auth callback turned a dead pooled connection into a refusal.
//! A backend answered `200` without `Connection: close` and then closed the connection; the
//! next login sent on it was refused ("connection closed before message completed") and
//! continued anonymously. Now a connection-level failure before any response is retried once on
//! a fresh connection; answers (any status) and timeouts are never retried; and what still
//! fails is an auth-backend error, logged and counted, never a silent refusal.
//!
//! The backends here are raw TCP (no HTTP library), so each one misbehaves exactly and
//! deterministically: it closes a connection only once the next request has fully arrived on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway_auth::{HttpCallback, HttpCallbackConfig};
use gateway_server::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify};

use crate::common::*;

/// What a [`RawBackend`] does with the requests of each connection.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answers the first request `200` (kept alive: no `Connection: close`), then closes the
    /// connection (FIN) once the next request has arrived, without answering it.
    AnswerOnceThenClose,
    /// Like [`Behaviour::AnswerOnceThenClose`], but resets the connection (RST).
    AnswerOnceThenReset,
    /// Closes the connection as soon as a request has arrived, without answering.
    NeverAnswer,
    /// Answers every request with this status, keeping the connection alive.
    Always(u16),
    /// Reads a request and never answers it.
    Hold,
}

/// An auth backend on raw TCP. Counts what it saw.
struct RawBackend {
    addr: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    /// Requests read in full (answered or not).
    requests: Arc<AtomicUsize>,
    /// Requests whose connection was closed or reset instead of answered.
    dropped: Arc<AtomicUsize>,
    /// Notified when a request is held ([`Behaviour::Hold`]).
    held: Arc<Notify>,
}

impl RawBackend {
    async fn start(behaviour: Behaviour) -> RawBackend {
        Self::start_with_barrier(behaviour, 0).await
    }

    /// The first answer on each of the first `together` connections waits until all of them
    /// have a request: the gateway then holds `together` kept-alive connections at once.
    async fn start_with_barrier(behaviour: Behaviour, together: usize) -> RawBackend {
        let barrier = Arc::new(Barrier::new(together));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = RawBackend {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            requests: Arc::default(),
            dropped: Arc::default(),
            held: Arc::default(),
        };
        let (connections, requests) = (backend.connections.clone(), backend.requests.clone());
        let (dropped, held) = (backend.dropped.clone(), backend.held.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let index = connections.fetch_add(1, Ordering::SeqCst);
                let (requests, dropped, held) = (requests.clone(), dropped.clone(), held.clone());
                let barrier = (index < together).then(|| barrier.clone());
                tokio::spawn(async move {
                    let counts = Counts {
                        requests: &requests,
                        dropped: &dropped,
                        held: &held,
                    };
                    serve(stream, behaviour, barrier.as_deref(), counts).await;
                });
            }
        });
        backend
    }

    fn callback(&self, timeout: Duration) -> Arc<HttpCallback> {
        let mut config = HttpCallbackConfig::new(&format!("http://{}/auth", self.addr)).unwrap();
        config.timeout = timeout;
        Arc::new(HttpCallback::new(config).unwrap())
    }
}

/// Where a connection of a [`RawBackend`] reports.
struct Counts<'a> {
    requests: &'a AtomicUsize,
    dropped: &'a AtomicUsize,
    held: &'a Notify,
}

/// One connection of a [`RawBackend`].
async fn serve(
    stream: TcpStream,
    behaviour: Behaviour,
    barrier: Option<&Barrier>,
    Counts {
        requests,
        dropped,
        held,
    }: Counts<'_>,
) {
    let mut stream = BufReader::new(stream);
    let mut answered = 0;
    while read_request(&mut stream).await {
        requests.fetch_add(1, Ordering::SeqCst);
        if let (0, Some(barrier)) = (answered, barrier) {
            barrier.wait().await;
        }
        let status = match behaviour {
            Behaviour::AnswerOnceThenClose | Behaviour::AnswerOnceThenReset if answered == 0 => 200,
            Behaviour::Always(status) => status,
            Behaviour::Hold => {
                held.notify_one();
                std::future::pending::<()>().await;
                unreachable!()
            }
            Behaviour::AnswerOnceThenReset => {
                dropped.fetch_add(1, Ordering::SeqCst);
                stream.get_ref().set_zero_linger().unwrap();
                return;
            }
            Behaviour::AnswerOnceThenClose | Behaviour::NeverAnswer => {
                dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        answered += 1;
        let response = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Reads one request (head and `Content-Length` body); `false` at the end of the stream.
async fn read_request(stream: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.is_ok()
}

async fn server_for(callback: &Arc<HttpCallback>) -> TestServer {
    TestServer::with(ServerConfig::default(), callback.clone()).await
}

async fn login(server: &TestServer, member: i64) -> String {
    let mut client = server.connect().await;
    client
        .send(&format!(r#"{{"member_id":{member},"token":"t{member}"}}"#))
        .await;
    client.recv().await
}

/// Logs in `LOGINS` members one after the other through a backend that kills every kept-alive
/// connection: each login must succeed, and no backend error may be counted.
async fn every_login_survives(behaviour: Behaviour) {
    const LOGINS: i64 = 40;
    let backend = RawBackend::start(behaviour).await;
    let callback = backend.callback(Duration::from_secs(5));
    let server = server_for(&callback).await;

    for member in 1..=LOGINS {
        assert_eq!(login(&server, member).await, hello(member), "{behaviour:?}");
    }
    assert_eq!(server.counters.auth_backend_errors(), 0);
    // The attack happened: pooled connections were reused and died under the requests.
    let dropped = backend.dropped.load(Ordering::SeqCst);
    assert!(dropped >= 1, "no pooled connection was reused");
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        LOGINS as usize + dropped
    );
    // Each dead connection cost exactly one retry.
    assert_eq!(callback.retries(), dropped as u64);
}

#[tokio::test]
async fn a_backend_closing_kept_alive_connections_refuses_no_login() {
    every_login_survives(Behaviour::AnswerOnceThenClose).await;
}

#[tokio::test]
async fn a_backend_resetting_kept_alive_connections_refuses_no_login() {
    every_login_survives(Behaviour::AnswerOnceThenReset).await;
}

#[tokio::test]
async fn the_retry_does_not_reuse_another_dead_connection() {
    const TOGETHER: usize = 4;
    let backend = RawBackend::start_with_barrier(Behaviour::AnswerOnceThenClose, TOGETHER).await;
    let callback = backend.callback(Duration::from_secs(5));
    let server = Arc::new(server_for(&callback).await);

    // Logins at once: the gateway keeps TOGETHER connections, each dead on its next request.
    let logins: Vec<_> = (1..=TOGETHER as i64)
        .map(|member| {
            let server = server.clone();
            tokio::spawn(async move { (member, login(&server, member).await) })
        })
        .collect();
    for login in logins {
        let (member, reply) = guard("a concurrent login", login).await.unwrap();
        assert_eq!(reply, hello(member));
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), TOGETHER);
    // Then one by one: a retry on another pooled connection would die as well.
    for member in 100..100 + 2 * TOGETHER as i64 {
        assert_eq!(login(&server, member).await, hello(member));
    }
    assert_eq!(server.counters.auth_backend_errors(), 0);
    assert!(callback.retries() >= TOGETHER as u64);
}

#[tokio::test]
async fn a_backend_that_never_answers_is_retried_once_then_counted() {
    let backend = RawBackend::start(Behaviour::NeverAnswer).await;
    let callback = backend.callback(Duration::from_secs(5));
    let server = server_for(&callback).await;

    for (round, member) in (1..=3).enumerate() {
        assert_eq!(login(&server, member).await, unauthorized());
        assert_eq!(server.counters.auth_backend_errors(), round as u64 + 1);
        // Once and one retry, not more.
        assert_eq!(backend.requests.load(Ordering::SeqCst), 2 * (round + 1));
        assert_eq!(callback.retries(), round as u64 + 1);
    }
}

#[tokio::test]
async fn a_down_backend_is_refused_and_counted() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut config = HttpCallbackConfig::new(&format!("http://{addr}/auth")).unwrap();
    config.timeout = Duration::from_secs(5);
    let callback = Arc::new(HttpCallback::new(config).unwrap());
    let server = server_for(&callback).await;

    // A refused connect is retried once (a backend restarting), then counted.
    assert_eq!(login(&server, 1).await, unauthorized());
    assert_eq!(server.counters.auth_backend_errors(), 1);
    assert_eq!(callback.retries(), 1);
    assert_eq!(login(&server, 2).await, unauthorized());
    assert_eq!(server.counters.auth_backend_errors(), 2);
    assert_eq!(callback.retries(), 2);
}

#[tokio::test]
async fn answers_are_never_retried() {
    for (status, errors) in [(500, 1), (503, 1), (401, 0), (403, 0)] {
        let backend = RawBackend::start(Behaviour::Always(status)).await;
        let callback = backend.callback(Duration::from_secs(5));
        let server = server_for(&callback).await;

        assert_eq!(login(&server, 1).await, unauthorized(), "{status}");
        assert_eq!(server.counters.auth_backend_errors(), errors, "{status}");
        assert_eq!(backend.requests.load(Ordering::SeqCst), 1, "{status}");
        assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "{status}");
        assert_eq!(callback.retries(), 0, "{status}");
    }
}

#[tokio::test]
async fn a_timeout_is_counted_and_not_retried() {
    let backend = RawBackend::start(Behaviour::Hold).await;
    let callback = backend.callback(Duration::from_millis(300));
    let server = server_for(&callback).await;

    let mut client = server.connect().await;
    client.send(r#"{"member_id":1,"token":"t1"}"#).await;
    guard("the held request", backend.held.notified()).await;
    client.expect(&unauthorized()).await;
    assert_eq!(server.counters.auth_backend_errors(), 1);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
    assert_eq!(callback.retries(), 0);
}
