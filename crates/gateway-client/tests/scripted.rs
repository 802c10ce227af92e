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
