//! Shared helpers of the end-to-end tests: a real server on ephemeral ports, a real WebSocket
//! client, real HTTP. Every wait is bounded by [`GUARD`], which only catches hangs: tests
//! synchronize on replies and on `/stat` counts, never on sleeps.

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test helpers: a failure should panic where it happens

pub mod binary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_auth::{Authenticator, StaticTokens};
use gateway_core::MemberId;
use gateway_server::{Counters, Gateway, ServerConfig};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single step may take before the test is declared hung.
pub const GUARD: Duration = Duration::from_secs(20);

pub async fn guard<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The replies of PROTOCOL.md Part 1, byte for byte.
pub fn reply(code: u16, message: &str) -> String {
    format!(
        r#"{{"app":"gateway","member_id":-1,"text":"{{\"code\":{code},\"message\":\"{message}\"}}"}}"#
    )
}

pub fn hello_stranger() -> String {
    reply(200, "hello stranger")
}

pub fn hello(member: i64) -> String {
    reply(200, &format!("hello {member}"))
}

pub fn unauthorized() -> String {
    reply(401, "unauthorized")
}

pub fn missing_auth() -> String {
    reply(400, "missing auth message")
}

pub fn subscribed(app: &str) -> String {
    reply(200, &format!("subscribe {app} success"))
}

pub fn bad_subscribe() -> String {
    reply(400, "bad subscribe message")
}

pub fn forbidden(app: &str) -> String {
    reply(403, &format!("subscribe {app} forbidden"))
}

/// The members the test servers know: `123456`/`654321` (the seed's example), `777`, `888`.
pub fn test_authenticator() -> Arc<dyn Authenticator> {
    Arc::new(StaticTokens::new([
        (MemberId::new(123456).unwrap(), "654321"),
        (MemberId::new(777).unwrap(), "777secret"),
        (MemberId::new(888).unwrap(), "888secret"),
    ]))
}

/// A gateway running in this process on ephemeral loopback ports; shut down on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stat_addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with_config(ServerConfig::default()).await
    }

    pub async fn with_config(config: ServerConfig) -> TestServer {
        Self::with(config, test_authenticator()).await
    }

    pub async fn with(config: ServerConfig, authenticator: Arc<dyn Authenticator>) -> TestServer {
        // Bound before the server runs, so there is nothing to wait for.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stat_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway =
            Gateway::from_listeners(config, authenticator, listener, stat_listener).unwrap();
        let (addr, stat_addr) = (gateway.local_addr(), gateway.stat_addr());
        let counters = gateway.counters();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stat_addr,
            counters,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// A connection that is authenticated anonymously.
    pub async fn anonymous(&self) -> Client {
        let mut client = self.connect().await;
        client.send(r#"{"member_id":-1,"token":""}"#).await;
        client.expect(&hello_stranger()).await;
        client
    }

    /// A connection authenticated as `member` with `token`.
    pub async fn member(&self, member: i64, token: &str) -> Client {
        let mut client = self.connect().await;
        client
            .send(&format!(r#"{{"member_id":{member},"token":"{token}"}}"#))
            .await;
        client.expect(&hello(member)).await;
        client
    }

    pub async fn push(&self, body: &str) -> (StatusCode, String) {
        let (status, _, body) = http(self.addr, "POST", "/push", body).await;
        (status, body)
    }

    /// Pushes and asserts `202 Accepted`.
    pub async fn push_ok(&self, app: &str, member_id: i64, text: &str) {
        let body = serde_json::json!({"app": app, "member_id": member_id, "text": text});
        let (status, text) = self.push(&body.to_string()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "push refused: {text}");
    }

    pub async fn stat(&self) -> String {
        let (status, _, body) = http(self.stat_addr, "GET", "/stat", "").await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Polls `/stat` until it equals `expected` (the state changes asynchronously after a
    /// client closes), failing after [`GUARD`].
    pub async fn wait_for_stat(&self, expected: &str) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let stat = self.stat().await;
            if stat == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stat never became {expected:?}; last {stat:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the server and waits until it has finished.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            guard("server shutdown", task).await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: status, headers, body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    http_with(addr, method, path, &[], Bytes::from(body.to_owned())).await
}

pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, hyper::HeaderMap, String) {
    guard("an HTTP response", async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    })
    .await
}

/// A WebSocket client (tokio-tungstenite).
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, response) = guard("the upgrade", tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket upgrade");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        Client { ws }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).await.unwrap();
    }

    /// The next message (pings and pongs skipped), or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Message> {
        guard("a message", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(message)) => return Some(message),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
    }

    /// The next text frame; panics on anything else.
    pub async fn recv(&mut self) -> String {
        match self.next().await {
            Some(Message::Text(text)) => text.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts the next frame is exactly `expected`.
    pub async fn expect(&mut self, expected: &str) {
        assert_eq!(self.recv().await, expected);
    }

    pub async fn subscribe(&mut self, app: &str) {
        self.send(&format!(r#"{{"app":"{app}"}}"#)).await;
        self.expect(&subscribed(app)).await;
    }

    /// Subscribes to every app of `apps`, pipelined: all requests, then all replies.
    pub async fn subscribe_all(&mut self, apps: &[String]) {
        for app in apps {
            self.send(&format!(r#"{{"app":"{app}"}}"#)).await;
        }
        for app in apps {
            self.expect(&subscribed(app)).await;
        }
    }

    /// Asserts the server closes the connection with this code (after any text frames, which
    /// are returned).
    pub async fn expect_close(&mut self, code: u16) -> Vec<String> {
        let mut texts = Vec::new();
        loop {
            match self.next().await {
                Some(Message::Text(text)) => texts.push(text.as_str().to_owned()),
                Some(Message::Close(Some(CloseFrame { code: got, .. }))) => {
                    assert_eq!(u16::from(got), code, "close code");
                    return texts;
                }
                other => panic!("expected a close frame with {code}, got {other:?}"),
            }
        }
    }

    /// A marker round trip: proves that nothing else was queued before it (used to show that
    /// something was *not* delivered).
    /// The marker is a bad subscribe message, so it changes no state.
    pub async fn expect_nothing_more(&mut self) {
        self.send(r#"{"marker":true}"#).await;
        self.expect(&bad_subscribe()).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// A frame sent as it is (FIN bit and opcode as given), whatever tungstenite's client would make
/// of it.
pub fn raw_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Message {
    let mut frame = Frame::message(Bytes::copy_from_slice(payload), opcode, fin);
    *frame.header_mut() = FrameHeader {
        is_final: fin,
        opcode,
        ..FrameHeader::default()
    };
    Message::Frame(frame)
}

/// Everything the server sends on a raw connection until it closes it (EOF or reset), as text.
pub async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut bytes = Vec::new();
    let _ = guard("the server to close", stream.read_to_end(&mut bytes)).await;
    String::from_utf8(bytes).unwrap()
}

/// Polls `probe` every 10 ms until it gives `Some`, and returns that; fails after [`GUARD`].
/// For states the tests can only observe from outside (a counter reached, a freed slot, a
/// closed listener), never as a delay.
pub async fn retry_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
