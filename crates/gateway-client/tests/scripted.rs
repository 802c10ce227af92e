//! The client against a scripted WebSocket server on loopback, for what the real gateway does
//! not do on demand: refuse a resubscription, or close with a code of its choosing.
//! (`tests/client.rs` at the workspace root runs the client against the real binary.)

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_client::{AuthOutcome, Client, DisconnectCause, Error, Event, Events};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const GUARD: Duration = Duration::from_secs(20);

type Server = WebSocketStream<tokio::net::TcpStream>;

fn reply(code: u16, message: &str) -> Message {
    Message::text(format!(
        r#"{{"app":"gateway","member_id":-1,"text":"{{\"code\":{code},\"message\":\"{message}\"}}"}}"#
    ))
}

async fn accept(listener: &TcpListener) -> Server {
    let (tcp, _) = tokio::time::timeout(GUARD, listener.accept())
        .await
        .unwrap()
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

/// The next text message from the client (its pings are answered by tungstenite).
async fn expect(server: &mut Server, expected: &str) {
    loop {
        match tokio::time::timeout(GUARD, server.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => return assert_eq!(text.as_str(), expected),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
}

async fn close(server: &mut Server, code: u16) {
    let frame = CloseFrame {
        code: code.into(),
        reason: "scripted".into(),
    };
    server.close(Some(frame)).await.unwrap();
}

async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(GUARD, events.next())
        .await
        .unwrap()
        .expect("the event stream ended")
}

#[tokio::test]
async fn a_refused_resubscription_is_reported_and_the_app_forgotten() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let script = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        expect(&mut first, r#"{"member_id":7,"token":"t"}"#).await;
        first.send(reply(200, "hello 7")).await.unwrap();
        for app in ["a", "b"] {
            expect(&mut first, &format!(r#"{{"app":"{app}"}}"#)).await;
            first
                .send(reply(200, &format!("subscribe {app} success")))
                .await
                .unwrap();
        }
        close(&mut first, 1012).await;

        // The token has been revoked meanwhile: anonymous, so the private app is refused.
        let mut second = accept(&listener).await;
        expect(&mut second, r#"{"member_id":7,"token":"t"}"#).await;
        second.send(reply(401, "unauthorized")).await.unwrap();
        expect(&mut second, r#"{"app":"a"}"#).await;
        expect(&mut second, r#"{"app":"b"}"#).await;
        second
            .send(reply(200, "subscribe a success"))
            .await
            .unwrap();
        second
            .send(reply(403, "subscribe b forbidden"))
            .await
            .unwrap();
        second
    });

    let (client, _pushes, mut events) = Client::builder(url)
        .member(7, "t")
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    client.subscribe("a").await.unwrap();
    client.subscribe("b").await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::Connected { .. }
    ));
    match next_event(&mut events).await {
        Event::Disconnected { cause, reconnect } => {
            let closed = DisconnectCause::Closed {
                code: 1012,
                reason: "scripted".into(),
            };
            assert_eq!((cause, reconnect), (closed, true));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Event::Reconnecting { attempt: 1, .. }
    ));
    match next_event(&mut events).await {
        Event::ResubscribeFailed {
            app,
            error: Error::Forbidden { .. },
        } => assert_eq!(app, "b"),
        other => panic!("{other:?}"),
    }
    match next_event(&mut events).await {
        Event::Connected { auth, resubscribed } => {
            assert_eq!(
                (auth, resubscribed),
                (AuthOutcome::Unauthorized, vec!["a".into()])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.subscriptions(), ["a"]);
    drop(script.await.unwrap());
}

#[tokio::test]
async fn final_close_codes_stop_the_client_and_others_do_not() {
    for (code, is_final) in [(1009, true), (4400, true), (4100, false), (1001, false)] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let script = tokio::spawn(async move {
            let mut server = accept(&listener).await;
            expect(&mut server, r#"{"member_id":-1,"token":""}"#).await;
            server.send(reply(200, "hello stranger")).await.unwrap();
            close(&mut server, code).await;
            listener
        });
        let (client, _pushes, mut events) = Client::builder(url).connect().await.unwrap();
        assert!(matches!(
            next_event(&mut events).await,
            Event::Connected { .. }
        ));
        match next_event(&mut events).await {
            Event::Disconnected {
                cause: DisconnectCause::Closed { code: got, .. },
                reconnect,
            } => assert_eq!((got, reconnect), (code, !is_final), "{code}"),
            other => panic!("{other:?}"),
        }
        if is_final {
            assert!(events.next().await.is_none(), "{code}");
            assert!(client.is_closed());
        } else {
            assert!(matches!(
                next_event(&mut events).await,
                Event::Reconnecting { attempt: 1, .. }
            ));
            client.close().await;
        }
        drop(script.await.unwrap());
    }
}

/// A gateway reply whose text has more keys than `code` and `message` (`extra` is their JSON,
/// without braces, e.g. `"offset":4,"epoch":"e1"`).
fn reply_with(code: u16, message: &str, extra: &str) -> Message {
    let text = format!(r#"{{"code":{code},"message":"{message}",{extra}}}"#);
    let envelope = serde_json::json!({"app": "gateway", "member_id": -1, "text": text});
    Message::text(envelope.to_string())
}

/// A push with its position, as the gateway sends it to a subscription with recovery.
fn positioned(app: &str, text: &str, offset: u64, epoch: &str) -> Message {
    Message::text(format!(
        r#"{{"app":"{app}","member_id":-1,"text":"{text}","offset":{offset},"epoch":"{epoch}"}}"#
    ))
}

async fn next_push(pushes: &mut gateway_client::Pushes) -> gateway_client::Push {
    tokio::time::timeout(GUARD, pushes.next())
        .await
        .unwrap()
        .expect("the push stream ended")
}

/// Skips events until one matches, returning it.
async fn wait_for(events: &mut Events, wanted: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = next_event(events).await;
        if wanted(&event) {
            return event;
        }
    }
}

#[tokio::test]
async fn recovery_resubscribes_from_the_last_push_handed_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let script = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        expect(&mut first, r#"{"member_id":-1,"token":""}"#).await;
        first.send(reply(200, "hello stranger")).await.unwrap();
        expect(&mut first, r#"{"app":"a","recover":true}"#).await;
        let at_4 = r#""offset":4,"epoch":"e1""#;
        first
            .send(reply_with(200, "subscribe a success", at_4))
            .await
            .unwrap();
        // 5, 6, 6 again (a duplicate), then 8: offset 7 went missing silently.
        for (text, offset) in [("p5", 5), ("p6", 6), ("p6 again", 6), ("p8", 8)] {
            first
                .send(positioned("a", text, offset, "e1"))
                .await
                .unwrap();
        }
        // A stream that has had no push: the reply names no position.
        expect(&mut first, r#"{"app":"b","recover":true}"#).await;
        first.send(reply(200, "subscribe b success")).await.unwrap();
        // And one without recovery.
        expect(&mut first, r#"{"app":"c"}"#).await;
        first.send(reply(200, "subscribe c success")).await.unwrap();
        close(&mut first, 1012).await;

        // The resubscriptions ask for what followed the last push handed out (8), and for
        // everything of the run of `b` ("start"); `c` as before.
        let mut second = accept(&listener).await;
        expect(&mut second, r#"{"member_id":-1,"token":""}"#).await;
        second.send(reply(200, "hello stranger")).await.unwrap();
        expect(
            &mut second,
            r#"{"app":"a","since":{"offset":8,"epoch":"e1"}}"#,
        )
        .await;
        expect(
            &mut second,
            r#"{"app":"b","since":{"offset":0,"epoch":""}}"#,
        )
        .await;
        expect(&mut second, r#"{"app":"c"}"#).await;
        let recovered = r#""recovered":true,"offset":10,"epoch":"e1""#;
        second
            .send(reply_with(200, "subscribe a success", recovered))
            .await
            .unwrap();
        second
            .send(reply_with(
                200,
                "subscribe b success",
                r#""recovered":true"#,
            ))
            .await
            .unwrap();
        second
            .send(reply(200, "subscribe c success"))
            .await
            .unwrap();
        // The missed 9 and 10, then live 11; the unasked notice of a loss up to 20, then 21.
        for (text, offset) in [("p9", 9), ("p10", 10), ("p11", 11)] {
            second
                .send(positioned("a", text, offset, "e1"))
                .await
                .unwrap();
        }
        let lost = r#""recovered":false,"offset":20,"epoch":"e1""#;
        second
            .send(reply_with(409, "pushes to a lost", lost))
            .await
            .unwrap();
        second.send(positioned("a", "p21", 21, "e1")).await.unwrap();
        close(&mut second, 1012).await;

        // The history no longer reaches back: a new epoch, and the client goes on from it.
        let mut third = accept(&listener).await;
        expect(&mut third, r#"{"member_id":-1,"token":""}"#).await;
        third.send(reply(200, "hello stranger")).await.unwrap();
        expect(
            &mut third,
            r#"{"app":"a","since":{"offset":21,"epoch":"e1"}}"#,
        )
        .await;
        expect(&mut third, r#"{"app":"b","since":{"offset":0,"epoch":""}}"#).await;
        expect(&mut third, r#"{"app":"c"}"#).await;
        let not_recovered = r#""recovered":false,"offset":3,"epoch":"e2""#;
        third
            .send(reply_with(200, "subscribe a success", not_recovered))
            .await
            .unwrap();
        third
            .send(reply_with(
                200,
                "subscribe b success",
                r#""recovered":true"#,
            ))
            .await
            .unwrap();
        third.send(reply(200, "subscribe c success")).await.unwrap();
        third.send(positioned("a", "p3", 3, "e2")).await.unwrap(); // a duplicate
        third.send(positioned("a", "p4", 4, "e2")).await.unwrap();
        third
    });

    let (client, mut pushes, mut events) = Client::builder(url)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    let recover = gateway_client::SubscribeOptions::new().recover(true);
    client.subscribe_with("a", recover).await.unwrap();
    client.subscribe_with("b", recover).await.unwrap();
    client.subscribe("c").await.unwrap();

    let mut got = Vec::new();
    for _ in 0..8 {
        let push = next_push(&mut pushes).await;
        let position = push.position.clone().unwrap();
        got.push((push.text, position.offset, position.epoch));
    }
    let want: Vec<(String, u64, String)> = [
        ("p5", 5, "e1"),
        ("p6", 6, "e1"),
        ("p8", 8, "e1"),
        ("p9", 9, "e1"),
        ("p10", 10, "e1"),
        ("p11", 11, "e1"),
        ("p21", 21, "e1"),
        ("p4", 4, "e2"),
    ]
    .iter()
    .map(|(text, offset, epoch)| (text.to_string(), *offset, epoch.to_string()))
    .collect();
    assert_eq!(got, want);

    let losses = [
        Some(gateway_client::Position::new(20, "e1")),
        Some(gateway_client::Position::new(3, "e2")),
    ];
    for expected in losses {
        match wait_for(&mut events, |e| matches!(e, Event::PushesLost { .. })).await {
            Event::PushesLost { app, position } => {
                assert_eq!((app.as_str(), position), ("a", expected));
            }
            other => panic!("{other:?}"),
        }
    }
    let stats = client.stats();
    assert_eq!(
        (
            stats.duplicates_dropped,
            stats.offsets_skipped,
            stats.losses_announced
        ),
        (2, 1, 2)
    );
    assert_eq!(client.subscriptions(), ["a", "b", "c"]);
    drop(script.await.unwrap());
}

#[tokio::test]
async fn subscribing_again_without_recovery_stops_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let script = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        expect(&mut first, r#"{"member_id":-1,"token":""}"#).await;
        first.send(reply(200, "hello stranger")).await.unwrap();
        expect(&mut first, r#"{"app":"a","recover":true}"#).await;
        let at_4 = r#""offset":4,"epoch":"e1""#;
        first
            .send(reply_with(200, "subscribe a success", at_4))
            .await
            .unwrap();
        // Asked again with recovery on the connection that holds it: nothing was missed on
        // it, so no `since`.
        expect(&mut first, r#"{"app":"a","recover":true}"#).await;
        first
            .send(reply_with(200, "subscribe a success", at_4))
            .await
            .unwrap();
        expect(&mut first, r#"{"app":"a"}"#).await;
        first.send(reply(200, "subscribe a success")).await.unwrap();
        first.send(positioned("a", "plain", 1, "e1")).await.unwrap();
        close(&mut first, 1012).await;
        let mut second = accept(&listener).await;
        expect(&mut second, r#"{"member_id":-1,"token":""}"#).await;
        second.send(reply(200, "hello stranger")).await.unwrap();
        expect(&mut second, r#"{"app":"a"}"#).await;
        second
            .send(reply(200, "subscribe a success"))
            .await
            .unwrap();
        second
    });
    let (client, mut pushes, mut events) = Client::builder(url)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    let recover = gateway_client::SubscribeOptions::new().recover(true);
    client.subscribe_with("a", recover).await.unwrap();
    client.subscribe_with("a", recover).await.unwrap();
    client.subscribe("a").await.unwrap();
    // Not tracked any more: offset 1 after 4 is no duplicate.
    assert_eq!(next_push(&mut pushes).await.text, "plain");
    wait_for(
        &mut events,
        |e| matches!(e, Event::Connected { resubscribed, .. } if !resubscribed.is_empty()),
    )
    .await;
    assert_eq!(client.stats(), gateway_client::ClientStats::default());
    drop(script.await.unwrap());
}
