//! The `gateway-client` crate against the real `ws-gateway` binary: authentication,
//! subscribe and unsubscribe with their typed answers, exact pushes, the server-side verbs
//! (410 unsubscribe, 4403 disconnect), reconnection with resubscription after the gateway is
//! killed and restarted on the same port, and the ping timeout of a gateway that stops.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::Gateway;
use common::{guard, http};
use gateway_client::{
    AuthOutcome, Client, ClientBuilder, DisconnectCause, Error, Event, Events, Push, Pushes,
};
use tokio::time::Instant;

/// The configuration file, with `extra` appended to its top level.
fn write_config(dir: &tempfile::TempDir, extra: &str) {
    let config = format!(
        r#"
private_apps = ["im"]
{extra}
[auth]
kind = "static"
[auth.tokens]
777 = "777secret"
888 = "888secret"
"#
    );
    std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
}

/// A gateway binary with a private app `im`, member 777 (`777secret`) and member 888.
struct Binary {
    gateway: Gateway,
    addr: SocketAddr,
    stat_addr: SocketAddr,
    /// Holds the configuration file for a restart.
    dir: tempfile::TempDir,
}

impl Binary {
    async fn start() -> Binary {
        Binary::start_with(tempfile::tempdir().unwrap(), "").await
    }

    /// With `extra` appended to the configuration file (in `dir`, which may hold its files).
    async fn start_with(dir: tempfile::TempDir, extra: &str) -> Binary {
        write_config(&dir, extra);
        Binary::start_on(dir, "127.0.0.1:0").await
    }

    async fn start_on(dir: tempfile::TempDir, listen: &str) -> Binary {
        let config = dir.path().join("gateway.toml");
        let mut gateway = Gateway::start(&[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            listen,
            "--stat-listen",
            "127.0.0.1:0",
        ]);
        let (addr, stat_addr) = gateway.addresses().await;
        Binary {
            gateway,
            addr,
            stat_addr,
            dir,
        }
    }

    fn client(&self) -> ClientBuilder {
        Client::builder(format!("ws://{}/", self.addr))
            .connect_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
    }

    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let (status, _, body) = http(self.addr, "POST", path, body).await;
        (status.as_u16(), body)
    }

    async fn push(&self, app: &str, member_id: i64, text: &str) {
        let body = serde_json::json!({"app": app, "member_id": member_id, "text": text});
        let (status, answer) = self.post("/push", &body.to_string()).await;
        assert_eq!(status, 202, "push refused: {answer}");
    }

    async fn stat(&self) -> String {
        http(self.stat_addr, "GET", "/stat", "").await.2
    }
}

async fn next_push(pushes: &mut Pushes) -> Push {
    guard("a push", pushes.next())
        .await
        .expect("the push stream ended")
}

async fn next_event(events: &mut Events) -> Event {
    guard("an event", events.next())
        .await
        .expect("the event stream ended")
}

/// Skips events until one matches, returning it.
async fn wait_for_event(events: &mut Events, wanted: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = next_event(events).await;
        if wanted(&event) {
            return event;
        }
    }
}

/// A push's fields, to compare with a tuple (`Push` is non-exhaustive).
/// The client has stopped for good: both streams end and it says it is closed.
async fn assert_ended(client: &Client, events: &mut Events, pushes: &mut Pushes) {
    assert!(
        guard("the end of the events", events.next())
            .await
            .is_none()
    );
    assert!(
        guard("the end of the pushes", pushes.next())
            .await
            .is_none()
    );
    assert!(client.is_closed());
}

fn fields(push: &Push) -> (&str, i64, &str) {
    (&push.app, push.member_id, &push.text)
}

fn connected(event: &Event) -> Option<(AuthOutcome, Vec<String>)> {
    match event {
        Event::Connected { auth, resubscribed } => Some((*auth, resubscribed.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn a_member_subscribes_to_its_private_app_and_receives_the_exact_push() {
    let gateway = Binary::start().await;
    let (client, mut pushes, mut events) = gateway
        .client()
        .member(777, "777secret")
        .connect()
        .await
        .unwrap();
    assert_eq!(client.auth(), Some(AuthOutcome::Member(777)));
    assert_eq!(
        connected(&next_event(&mut events).await),
        Some((AuthOutcome::Member(777), vec![]))
    );

    client.subscribe("im").await.unwrap();
    assert_eq!(client.subscriptions(), ["im"]);
    let text = r#"{"from":888,"body":"hi \"777\" ✓"}"#;
    gateway.push("im", 777, text).await;
    assert_eq!(fields(&next_push(&mut pushes).await), ("im", 777, text));
}

#[tokio::test]
async fn anonymous_and_refused_clients_get_public_apps_only() {
    let gateway = Binary::start().await;
    let (anonymous, mut pushes, _events) = gateway.client().connect().await.unwrap();
    assert_eq!(anonymous.auth(), Some(AuthOutcome::Anonymous));
    let (refused, _, mut events) = gateway
        .client()
        .member(777, "wrong")
        .connect()
        .await
        .unwrap();
    assert_eq!(
        connected(&next_event(&mut events).await),
        Some((AuthOutcome::Unauthorized, vec![]))
    );

    for client in [&anonymous, &refused] {
        assert!(matches!(
            client.subscribe("im").await,
            Err(Error::Forbidden { app }) if app == "im"
        ));
        assert!(client.subscriptions().is_empty());
    }
    assert!(matches!(
        anonymous.subscribe("").await,
        Err(Error::InvalidApp(_))
    ));
    anonymous.subscribe("match").await.unwrap();
    gateway.push("match", -1, "goal").await;
    assert_eq!(fields(&next_push(&mut pushes).await), ("match", -1, "goal"));
}

#[tokio::test]
async fn the_first_connection_failing_is_an_error() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    assert!(matches!(
        Client::builder(url).connect().await,
        Err(Error::Connect(_))
    ));
    assert!(matches!(
        Client::builder("http://127.0.0.1:1/").connect().await,
        Err(Error::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn after_unsubscribe_no_push_to_that_app_arrives() {
    let gateway = Binary::start().await;
    let (client, mut pushes, _events) = gateway.client().connect().await.unwrap();
    client.subscribe("left").await.unwrap();
    client.subscribe("kept").await.unwrap();

    client.unsubscribe("left").await.unwrap();
    assert_eq!(client.subscriptions(), ["kept"]);
    gateway.push("left", -1, "must not arrive").await;
    gateway.push("kept", -1, "marker").await;
    // Pushes of one connection arrive in the order they were accepted: the marker proves the
    // push before it was not delivered.
    assert_eq!(
        fields(&next_push(&mut pushes).await),
        ("kept", -1, "marker")
    );
    assert!(matches!(
        client.unsubscribe("left").await,
        Err(Error::NotSubscribed { app }) if app == "left"
    ));
}

#[tokio::test]
async fn a_backend_unsubscribing_an_app_is_an_event_and_the_app_is_forgotten() {
    let gateway = Binary::start().await;
    let (client, mut pushes, mut events) = gateway
        .client()
        .member(777, "777secret")
        .connect()
        .await
        .unwrap();
    client.subscribe("chat").await.unwrap();
    client.subscribe("im").await.unwrap();

    let (status, body) = gateway
        .post("/disconnect", r#"{"member_id":777,"app":"chat"}"#)
        .await;
    assert_eq!((status, body.as_str()), (200, r#"{"connections":1}"#));
    let event = wait_for_event(&mut events, |event| {
        matches!(event, Event::UnsubscribedByServer { .. })
    })
    .await;
    assert!(matches!(event, Event::UnsubscribedByServer { app } if app == "chat"));
    assert_eq!(client.subscriptions(), ["im"]);
    gateway.push("chat", -1, "must not arrive").await;
    gateway.push("im", 777, "marker").await;
    assert_eq!(fields(&next_push(&mut pushes).await), ("im", 777, "marker"));
}

#[tokio::test]
async fn a_backend_disconnecting_the_member_stops_the_client_for_good() {
    let gateway = Binary::start().await;
    let (client, mut pushes, mut events) = gateway
        .client()
        .member(777, "777secret")
        .connect()
        .await
        .unwrap();
    client.subscribe("chat").await.unwrap();
    next_event(&mut events).await; // the first Connected

    let (status, body) = gateway.post("/disconnect", r#"{"member_id":777}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"connections":1}"#));
    match next_event(&mut events).await {
        Event::Disconnected { cause, reconnect } => {
            assert_eq!(
                cause,
                DisconnectCause::Closed {
                    code: 4403,
                    reason: "disconnected by the server".into()
                }
            );
            assert!(!reconnect);
        }
        other => panic!("expected the 4403 close, got {other:?}"),
    }
    // No `Reconnecting` follows: the task has ended, and both streams with it.
    assert_ended(&client, &mut events, &mut pushes).await;
    assert!(matches!(client.subscribe("chat").await, Err(Error::Closed)));
}

#[tokio::test]
async fn close_ends_the_streams_and_the_connection() {
    let gateway = Binary::start().await;
    let (client, mut pushes, mut events) = gateway.client().connect().await.unwrap();
    client.subscribe("match").await.unwrap();
    next_event(&mut events).await; // the first Connected

    client.close().await;
    match next_event(&mut events).await {
        Event::Disconnected { cause, reconnect } => {
            assert_eq!((cause, reconnect), (DisconnectCause::ClosedByClient, false));
        }
        other => panic!("expected the close, got {other:?}"),
    }
    assert!(events.next().await.is_none());
    assert!(pushes.next().await.is_none());
    assert!(matches!(
        client.unsubscribe("match").await,
        Err(Error::Closed)
    ));
    let deadline = Instant::now() + common::GUARD;
    while !gateway.stat().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the gateway still counts the client"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The issue's key test: the gateway dies under a connected client and comes back on the same
/// port; the client reconnects and subscribes again to what it kept, by itself.
#[tokio::test]
async fn the_client_reconnects_and_resubscribes_after_the_gateway_is_killed_and_restarted() {
    let gateway = Binary::start().await;
    let port = gateway.addr.port();
    let (client, mut pushes, mut events) = gateway
        .client()
        .member(777, "777secret")
        .connect()
        .await
        .unwrap();
    next_event(&mut events).await; // the first Connected
    client.subscribe("match").await.unwrap();
    client.subscribe("im").await.unwrap();
    client.subscribe("gone").await.unwrap();
    client.unsubscribe("gone").await.unwrap();

    let Binary { gateway, dir, .. } = gateway;
    gateway.kill().await;
    let event = next_event(&mut events).await;
    assert!(
        matches!(
            event,
            Event::Disconnected {
                cause: DisconnectCause::ConnectionLost(_),
                reconnect: true
            }
        ),
        "{event:?}"
    );
    assert!(matches!(
        next_event(&mut events).await,
        Event::Reconnecting { attempt: 1, .. }
    ));
    assert_eq!(client.auth(), None);

    let gateway = Binary::start_on(dir, &format!("127.0.0.1:{port}")).await;
    let event = wait_for_event(&mut events, |event| connected(event).is_some()).await;
    assert_eq!(
        connected(&event),
        Some((
            AuthOutcome::Member(777),
            vec!["im".to_owned(), "match".to_owned()]
        ))
    );
    assert_eq!(gateway.stat().await, "im 1\nmatch 1\n");
    gateway.push("match", -1, "back").await;
    gateway.push("im", 777, "back too").await;
    assert_eq!(fields(&next_push(&mut pushes).await), ("match", -1, "back"));
    assert_eq!(
        fields(&next_push(&mut pushes).await),
        ("im", 777, "back too")
    );
    assert_eq!(client.subscriptions(), ["im", "match"]);
}

#[tokio::test]
async fn a_gateway_that_stops_answering_is_detected_within_the_ping_timeout() {
    let gateway = Binary::start().await;
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(600));
    let (client, mut pushes, mut events) = gateway
        .client()
        .ping_interval(interval)
        .ping_timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    client.subscribe("match").await.unwrap();
    next_event(&mut events).await; // the first Connected

    gateway.gateway.signal("STOP").await;
    let stopped = Instant::now();
    let event = next_event(&mut events).await;
    let detected = stopped.elapsed();
    assert!(
        matches!(&event, Event::Disconnected { cause: DisconnectCause::PingTimeout(t), reconnect: true } if *t == timeout),
        "{event:?}"
    );
    // At most one ping interval of silence, then the timeout (plus scheduling slack on a
    // loaded machine).
    assert!(
        detected <= interval + timeout + Duration::from_secs(1),
        "detected after {detected:?}"
    );

    gateway.gateway.signal("CONT").await;
    let event = wait_for_event(&mut events, |event| connected(event).is_some()).await;
    assert_eq!(
        connected(&event),
        Some((AuthOutcome::Anonymous, vec!["match".to_owned()]))
    );
    gateway.push("match", -1, "alive").await;
    assert_eq!(
        fields(&next_push(&mut pushes).await),
        ("match", -1, "alive")
    );
}

#[tokio::test]
async fn wss_is_verified_against_the_given_root_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}",
        cert_file.to_str().unwrap(),
        key_file.to_str().unwrap()
    );
    let gateway = Binary::start_with(dir, &tls).await;
    let url = format!("wss://localhost:{}/", gateway.addr.port());

    // The default roots (Mozilla's) do not know a self-signed certificate.
    assert!(matches!(
        Client::builder(url.as_str()).connect().await,
        Err(Error::Connect(why)) if why.contains("certificate")
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (client, _pushes, _events) = Client::builder(url)
        .member(777, "777secret")
        .tls_config(std::sync::Arc::new(config))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.auth(), Some(AuthOutcome::Member(777)));
    client.subscribe("im").await.unwrap();
}

/// The documented policy for a user who stops reading: the client stops reading too, the
/// gateway closes the slow consumer, and the client reconnects; the pushes it hands over have
/// no gap (it drops none itself).
#[tokio::test]
async fn a_user_who_stops_reading_pushes_makes_a_slow_consumer_that_reconnects() {
    let gateway = Binary::start_with(
        tempfile::tempdir().unwrap(),
        "[limits]\noutbox_messages = 4",
    )
    .await;
    let (client, mut pushes, mut events) = gateway.client().push_buffer(2).connect().await.unwrap();
    client.subscribe("flood").await.unwrap();
    next_event(&mut events).await; // the first Connected

    // Large pushes fill the socket buffers, then the gateway's queue of 4: it closes the
    // connection, and /stat stops counting it.
    let filler = "x".repeat(256 << 10);
    let mut sent = 0;
    while gateway.stat().await == "flood 1\n" {
        assert!(sent < 400, "the gateway never closed the slow consumer");
        gateway.push("flood", -1, &format!("{sent} {filler}")).await;
        sent += 1;
    }

    let mut expected = 0;
    let event = loop {
        tokio::select! {
            push = pushes.next() => {
                let push = push.unwrap();
                let number = push.text.split(' ').next().unwrap();
                assert_eq!(number, expected.to_string(), "a push was skipped");
                expected += 1;
            }
            event = events.next() => break event.unwrap(),
        }
    };
    assert!(
        matches!(
            event,
            Event::Disconnected {
                reconnect: true,
                ..
            }
        ),
        "{event:?}"
    );
    assert!(
        expected >= 3 && expected < sent,
        "{expected} of {sent} pushes read"
    );
    let event = wait_for_event(&mut events, |event| connected(event).is_some()).await;
    assert_eq!(
        connected(&event),
        Some((AuthOutcome::Anonymous, vec!["flood".to_owned()]))
    );
}

/// Restarting a killed gateway on the same port with another configuration.
async fn restart(gateway: Binary, extra: &str) -> Binary {
    let port = gateway.addr.port();
    let Binary { gateway, dir, .. } = gateway;
    gateway.kill().await;
    write_config(&dir, extra);
    Binary::start_on(dir, &format!("127.0.0.1:{port}")).await
}

/// More kept apps than the gateway's default `message_burst` (300) takes at once: after a
/// restart the client resubscribes them all, paced by its window and frame budget, with no
/// 4429 (before the fix it sent them back to back and looped on 4429 for ever).
#[tokio::test]
async fn resubscribing_more_apps_than_the_gateways_burst_is_paced_without_4429() {
    let apps: Vec<String> = (0..320).map(|n| format!("app{n:03}")).collect();
    let gateway = Binary::start_with(
        tempfile::tempdir().unwrap(),
        "[limits]\nmax_subscriptions = 1000\nmessage_burst = 1000\nmax_messages_per_s = 1000",
    )
    .await;
    let (client, _pushes, mut events) = gateway.client().connect().await.unwrap();
    next_event(&mut events).await; // the first Connected
    let subscribes = apps.iter().map(|app| client.subscribe(app));
    for answer in futures_util::future::join_all(subscribes).await {
        answer.unwrap();
    }

    // Back with the default burst (300) and rate (50/s).
    let gateway = restart(gateway, "[limits]\nmax_subscriptions = 1000").await;
    let resubscribed = loop {
        match next_event(&mut events).await {
            Event::Connected { resubscribed, .. } => break resubscribed,
            Event::Disconnected {
                cause: DisconnectCause::Closed { code, reason },
                ..
            } => panic!("closed with {code} {reason}"),
            _ => {}
        }
    };
    assert_eq!(resubscribed, apps);
    let stat = gateway.stat().await;
    assert_eq!(stat.lines().count(), apps.len(), "{stat}");
}

/// A gateway that refuses the auth message for good during a reconnection (here: an auth
/// message over its `max_auth_message_bytes`, close 1009) stops the client, reported, instead
/// of an endless series of attempts.
#[tokio::test]
async fn a_final_close_during_the_reconnection_handshake_stops_the_client() {
    let gateway = Binary::start().await;
    let (client, mut pushes, mut events) = gateway
        .client()
        .member(777, "777secret")
        .connect()
        .await
        .unwrap();
    next_event(&mut events).await; // the first Connected

    let _gateway = restart(gateway, "[limits]\nmax_auth_message_bytes = 8").await;
    let event = wait_for_event(&mut events, |event| {
        matches!(
            event,
            Event::ReconnectFailed {
                error: Error::HandshakeRefused { .. },
                ..
            }
        )
    })
    .await;
    assert!(
        matches!(
            &event,
            Event::ReconnectFailed {
                error: Error::HandshakeRefused { code: 1009, .. },
                ..
            }
        ),
        "{event:?}"
    );
    match next_event(&mut events).await {
        Event::Disconnected { cause, reconnect } => {
            assert!(
                matches!(cause, DisconnectCause::Closed { code: 1009, .. }),
                "{cause:?}"
            );
            assert!(!reconnect);
        }
        other => panic!("expected the final disconnect, got {other:?}"),
    }
    assert_ended(&client, &mut events, &mut pushes).await;
}

/// While the gateway is away, requests wait in a bounded queue: asking again for the request
/// last queued for an app joins it, and one more request than `max_queued` fails at once.
#[tokio::test]
async fn requests_queued_while_disconnected_are_bounded_and_collapsed() {
    let gateway = Binary::start().await;
    let port = gateway.addr.port();
    let (client, _pushes, mut events) = gateway.client().max_queued(1).connect().await.unwrap();
    next_event(&mut events).await; // the first Connected
    let Binary { gateway, dir, .. } = gateway;
    gateway.kill().await;
    wait_for_event(&mut events, |event| {
        matches!(event, Event::Reconnecting { .. })
    })
    .await;

    // `join!` polls in order, so the driver takes the requests in this order.
    let (first, again, restarted) =
        tokio::join!(client.subscribe("a"), client.subscribe("a"), async {
            assert!(matches!(
                client.subscribe("b").await,
                Err(Error::QueueFull(1))
            ));
            Binary::start_on(dir, &format!("127.0.0.1:{port}")).await
        });
    first.unwrap();
    again.unwrap();
    assert_eq!(client.subscriptions(), ["a"]);
    assert_eq!(restarted.stat().await, "a 1\n");
}

/// A stand-in gateway that greets the first connection and closes it with 1012, then answers
/// every later auth message with `400 missing auth message` and close 4400, as the real one
/// does for a bad one.
async fn gateway_refusing_reconnections() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for connection in 0.. {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.next().await; // the auth message
            let (code, message) = if connection == 0 {
                (200, "hello stranger")
            } else {
                (400, "missing auth message")
            };
            let text = format!(r#"{{\"code\":{code},\"message\":\"{message}\"}}"#);
            let frame = format!(r#"{{"app":"gateway","member_id":-1,"text":"{text}"}}"#);
            ws.send(Message::text(frame)).await.unwrap();
            // The first connection ends as a restart would (1012: reconnect), the others 4400.
            let close = CloseFrame {
                code: CloseCode::from(if connection == 0 { 1012 } else { 4400 }),
                reason: message.into(),
            };
            let _ = ws.close(Some(close)).await;
        }
    });
    addr
}

#[tokio::test]
async fn a_missing_auth_refusal_during_a_reconnection_stops_the_client() {
    let addr = gateway_refusing_reconnections().await;
    let (client, mut pushes, mut events) = Client::builder(format!("ws://{addr}/"))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    loop {
        match next_event(&mut events).await {
            Event::ReconnectFailed { error, .. } => {
                assert!(
                    matches!(&error, Error::HandshakeRefused { code: 4400, reason } if reason == "missing auth message"),
                    "{error:?}"
                );
                break;
            }
            Event::Disconnected {
                reconnect: false,
                cause,
            } => {
                panic!("stopped before any reconnection: {cause:?}")
            }
            _ => {}
        }
    }
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected {
            cause: DisconnectCause::Closed { code: 4400, .. },
            reconnect: false
        }
    ));
    assert_ended(&client, &mut events, &mut pushes).await;
}
