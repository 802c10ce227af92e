//! Issue 9, finding 3: `/stat` over many apps was built in one piece under the hub's lock,
//! stalling every push for as long as it took (885 ms at 1.28 M apps). Now it is read a page
//! at a time with the lock released in between, and streamed: these tests check that a
//! multi-page answer is byte for byte the seed's, and that while a large answer is only half
//! read, pushes and subscriptions go on (and a new app shows up in the rest of the answer,
//! which a snapshot taken up front could not do).

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::*;

/// Room for thousands of subscriptions per connection, sent back to back.
fn config_for_many_apps(max_subscriptions: usize) -> gateway_server::ServerConfig {
    let mut config = gateway_server::ServerConfig::default();
    config.hub.max_subscriptions = max_subscriptions;
    config.limits.message_burst = 100_000;
    config.limits.max_messages_per_s = 100_000;
    config
}

/// Subscribes to every name, 200 messages at a time, each batch's replies awaited (so the
/// client never lets its outbox overflow).
async fn subscribe_all(client: &mut Client, names: &[String]) {
    for batch in names.chunks(200) {
        for name in batch {
            client.send(&format!(r#"{{"app":"{name}"}}"#)).await;
        }
        for name in batch {
            client.expect(&subscribed(name)).await;
        }
    }
}

/// The seed's `/stat`: `"<app> <count>\n"` sorted by name (byte order).
fn render(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(app, count)| format!("{app} {count}\n"))
        .collect()
}

#[tokio::test]
async fn stat_of_more_apps_than_a_page_is_the_seed_format_byte_for_byte() {
    let server = TestServer::with_config(config_for_many_apps(2_000)).await;
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    // Three connections over overlapping ranges: counts 1, 2 and 3, ~2,000 apps in all
    // (about four pages), with names of varied length so that pages end anywhere.
    let mut clients = Vec::new();
    for c in 0..3usize {
        let mut client = server.anonymous().await;
        let names: Vec<String> = (c * 300..c * 300 + 1_400)
            .map(|i| format!("app-{i}{}", "x".repeat(i % 7)))
            .collect();
        subscribe_all(&mut client, &names).await;
        for name in names {
            *expected.entry(name).or_default() += 1;
        }
        clients.push(client);
    }
    // A private app counts members, not connections.
    let mut first = server.member(777, "777secret").await;
    let mut second = server.member(777, "777secret").await;
    first.subscribe("im").await;
    second.subscribe("im").await;
    expected.insert("im".to_owned(), 1);
    assert!(expected.len() > 3 * 512, "fewer apps than 3 pages");

    let (status, headers, body) = http(server.stat_addr, "GET", "/stat", "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(body, render(&expected));

    // After everyone left, the answer is empty again.
    for client in clients {
        client.close().await;
    }
    first.close().await;
    second.close().await;
    server.wait_for_stat("").await;
}

/// A reader that takes a `/stat` answer slowly: a small receive buffer, and it stops reading
/// after the head and the first bytes, so that the server is in the middle of the body.
struct SlowStatReader {
    stream: tokio::net::TcpStream,
    received: Vec<u8>,
}

impl SlowStatReader {
    async fn start(server: &TestServer) -> SlowStatReader {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = guard("the stat connection", socket.connect(server.stat_addr))
            .await
            .unwrap();
        stream
            .write_all(b"GET /stat HTTP/1.1\r\nHost: stat\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reader = SlowStatReader {
            stream,
            received: Vec::new(),
        };
        while reader
            .head_end()
            .is_none_or(|end| reader.received.len() < end + 1024)
        {
            let mut buf = [0u8; 1024];
            let n = guard("the stat head", reader.stream.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "the stat answer ended early");
            reader.received.extend_from_slice(&buf[..n]);
        }
        reader
    }

    fn head_end(&self) -> Option<usize> {
        self.received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
    }

    /// Reads the rest and returns the head and the de-chunked body.
    async fn finish(mut self) -> (String, String) {
        guard(
            "the rest of the stat answer",
            self.stream.read_to_end(&mut self.received),
        )
        .await
        .unwrap();
        let end = self.head_end().unwrap();
        let head = String::from_utf8(self.received[..end].to_vec()).unwrap();
        (head, dechunk(&self.received[end..]))
    }
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> String {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return String::from_utf8(out).unwrap();
        }
        out.extend_from_slice(&body[..size]);
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
}

#[tokio::test]
async fn pushes_and_subscriptions_go_on_while_a_large_stat_is_half_read() {
    // ~9 MB of `/stat`: about twice what the socket buffers (the server's send buffer grows
    // to `tcp_wmem`'s 4 MiB) and hyper's write buffer (~0.4 MB) can hold together, so the
    // server cannot have read the last page when the reader pauses.
    const APPS: usize = 72_000;
    let server = TestServer::with_config(config_for_many_apps(APPS)).await;
    let mut many = server.anonymous().await;
    let names: Vec<String> = (0..APPS).map(|i| format!("{i:m>120}")).collect();
    subscribe_all(&mut many, &names).await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("match").await;

    let reader = SlowStatReader::start(&server).await;
    // The answer is under way: a push and a new subscription are served meanwhile.
    server.push_ok("match", -1, "goal").await;
    subscriber
        .expect(r#"{"app":"match","member_id":-1,"text":"goal"}"#)
        .await;
    let mut late = server.anonymous().await;
    late.subscribe("zzz-late").await;

    let (head, body) = reader.finish().await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    let mut expected: BTreeMap<String, usize> = names.into_iter().map(|n| (n, 1)).collect();
    expected.insert("match".to_owned(), 1);
    // The app created while the answer was being read sorts after every page read so far, so
    // a paged answer lists it; one built up front (under the lock, for every app) would not.
    expected.insert("zzz-late".to_owned(), 1);
    assert_eq!(body.len(), render(&expected).len());
    assert!(
        body == render(&expected),
        "the answer differs from the hub's counts"
    );
}
