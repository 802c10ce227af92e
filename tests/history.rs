//! History and recovery on one node (`docs/protocol.md`, "History and recovery"), end to end:
//! positions on the pushes of subscriptions that ask for them, the reply that says where the
//! stream stands, the replay after `since`, and `recovered:false` when the history no longer
//! reaches back. Clients that do not ask see the seed's bytes.

mod common;

use common::*;
use serde_json::Value;

/// The `text` of a gateway reply, parsed.
fn reply_text(frame: &str) -> Value {
    let envelope: Value = serde_json::from_str(frame).expect("a JSON frame");
    assert_eq!(envelope["app"], "gateway", "not a reply: {frame}");
    serde_json::from_str(envelope["text"].as_str().expect("a text")).expect("JSON text")
}

/// The `epoch` of a positioned push.
fn epoch_of(frame: &str) -> String {
    let push: Value = serde_json::from_str(frame).expect("a JSON frame");
    push["epoch"].as_str().expect("an epoch").to_owned()
}

fn positioned(app: &str, text: &str, offset: u64, epoch: &str) -> String {
    format!(
        r#"{{"app":"{app}","member_id":-1,"text":"{text}","offset":{offset},"epoch":"{epoch}"}}"#
    )
}

/// Subscribes `client` to `app` with `recover`, returns the stream's epoch and offset from the
/// reply (`None` when the stream has had no push).
async fn subscribe_recovering(client: &mut Client, app: &str) -> Option<(String, u64)> {
    client
        .send(&format!(r#"{{"app":"{app}","recover":true}}"#))
        .await;
    let reply = reply_text(&client.recv().await);
    assert_eq!(reply["code"], 200);
    assert_eq!(reply["message"], format!("subscribe {app} success"));
    assert!(
        reply.get("recovered").is_none(),
        "no `recovered` without since: {reply}"
    );
    let epoch = reply.get("epoch")?.as_str()?.to_owned();
    Some((epoch, reply["offset"].as_u64().expect("an offset")))
}

#[tokio::test]
async fn pushes_carry_positions_only_for_subscriptions_that_asked() {
    let server = TestServer::start().await;
    let mut plain = server.anonymous().await;
    plain.subscribe("match").await;
    let mut recovering = server.anonymous().await;
    assert_eq!(subscribe_recovering(&mut recovering, "match").await, None);

    server.push_ok("match", -1, "one").await;
    server.push_ok("match", -1, "two").await;
    plain
        .expect(r#"{"app":"match","member_id":-1,"text":"one"}"#)
        .await;
    plain
        .expect(r#"{"app":"match","member_id":-1,"text":"two"}"#)
        .await;
    let first = recovering.recv().await;
    let epoch = epoch_of(&first);
    assert_eq!(first, positioned("match", "one", 1, &epoch));
    recovering
        .expect(&positioned("match", "two", 2, &epoch))
        .await;

    // A later subscriber with `recover` learns where the stream stands.
    let mut late = server.anonymous().await;
    assert_eq!(
        subscribe_recovering(&mut late, "match").await,
        Some((epoch.clone(), 2))
    );
    // Subscribing again without the keys turns positions off for that connection.
    late.subscribe("match").await;
    server.push_ok("match", -1, "three").await;
    late.expect(r#"{"app":"match","member_id":-1,"text":"three"}"#)
        .await;
    recovering
        .expect(&positioned("match", "three", 3, &epoch))
        .await;
}

#[tokio::test]
async fn since_replays_what_was_missed_then_the_live_stream() {
    let server = TestServer::start().await;
    let mut first = server.anonymous().await;
    subscribe_recovering(&mut first, "match").await;
    for n in 1..=3 {
        server.push_ok("match", -1, &format!("m{n}")).await;
    }
    let epoch = epoch_of(&first.recv().await);
    first.close().await;
    for n in 4..=6 {
        server.push_ok("match", -1, &format!("m{n}")).await;
    }

    // Back after offset 1: 2..6 are replayed after the reply, then the live stream.
    let mut back = server.anonymous().await;
    back.send(&format!(
        r#"{{"app":"match","since":{{"offset":1,"epoch":"{epoch}"}}}}"#
    ))
    .await;
    // The reply's exact bytes: the seed's two keys, then the recovery's three.
    let expected_text = format!(
        r#"{{"code":200,"message":"subscribe match success","recovered":true,"offset":6,"epoch":"{epoch}"}}"#
    );
    let expected = serde_json::json!({"app": "gateway", "member_id": -1, "text": expected_text});
    back.expect(&expected.to_string()).await;
    for n in 2..=6 {
        back.expect(&positioned("match", &format!("m{n}"), n, &epoch))
            .await;
    }
    server.push_ok("match", -1, "m7").await;
    back.expect(&positioned("match", "m7", 7, &epoch)).await;

    // At the top already: recovered, nothing replayed.
    let mut current = server.anonymous().await;
    current
        .send(&format!(
            r#"{{"app":"match","since":{{"offset":7,"epoch":"{epoch}"}}}}"#
        ))
        .await;
    let reply = reply_text(&current.recv().await);
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["offset"], 7);
    server.push_ok("match", -1, "m8").await;
    current.expect(&positioned("match", "m8", 8, &epoch)).await;
}

#[tokio::test]
async fn since_before_the_first_push_replays_from_the_start() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    assert_eq!(subscribe_recovering(&mut client, "news").await, None);
    client.close().await;
    server.push_ok("news", -1, "a").await;
    server.push_ok("news", -1, "b").await;
    let mut back = server.anonymous().await;
    back.send(r#"{"app":"news","since":{"offset":0,"epoch":""}}"#)
        .await;
    let reply = reply_text(&back.recv().await);
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 2);
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    back.expect(&positioned("news", "a", 1, &epoch)).await;
    back.expect(&positioned("news", "b", 2, &epoch)).await;
}

#[tokio::test]
async fn an_epoch_or_a_position_the_history_no_longer_holds_is_not_recovered() {
    let mut config = gateway_server::ServerConfig::default();
    config.hub.history.default.size = 3;
    let server = TestServer::with_config(config).await;
    for n in 1..=5 {
        server.push_ok("match", -1, &format!("m{n}")).await;
    }
    let mut probe = server.anonymous().await;
    let (epoch, top) = subscribe_recovering(&mut probe, "match").await.unwrap();
    assert_eq!(top, 5);

    // Offset 1 is gone (3 kept: 3, 4, 5): offset 2 is the oldest position that recovers.
    // (Each round pushes one more.)
    for (round, (since, recovered)) in [(2, true), (1, false)].into_iter().enumerate() {
        let mut client = server.anonymous().await;
        client
            .send(&format!(
                r#"{{"app":"match","since":{{"offset":{since},"epoch":"{epoch}"}}}}"#
            ))
            .await;
        let reply = reply_text(&client.recv().await);
        assert_eq!(reply["recovered"], recovered, "since {since}: {reply}");
        assert_eq!(reply["offset"], 5 + round as u64);
        if recovered {
            for n in 3..=5 {
                client
                    .expect(&positioned("match", &format!("m{n}"), n, &epoch))
                    .await;
            }
        }
        // Either way the live stream follows, nothing else first.
        server.push_ok("match", -1, "live").await;
        let live: Value = serde_json::from_str(&client.recv().await).unwrap();
        assert_eq!(live["text"], "live", "since {since}");
        client.close().await;
        probe.recv().await;
    }

    // Another epoch (a restarted node's, say): not recovered.
    let mut stranger = server.anonymous().await;
    stranger
        .send(r#"{"app":"match","since":{"offset":5,"epoch":"someothernode"}}"#)
        .await;
    let reply = reply_text(&stranger.recv().await);
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["epoch"], epoch.as_str());
}

#[tokio::test]
async fn an_app_without_history_has_no_positions_and_never_recovers() {
    let mut config = gateway_server::ServerConfig::default();
    config.hub.history = gateway_core::HistoryPolicy::off();
    let server = TestServer::with_config(config).await;
    let mut client = server.anonymous().await;
    assert_eq!(subscribe_recovering(&mut client, "match").await, None);
    server.push_ok("match", -1, "plain").await;
    client
        .expect(r#"{"app":"match","member_id":-1,"text":"plain"}"#)
        .await;
    client
        .send(r#"{"app":"match","since":{"offset":1,"epoch":"e1"}}"#)
        .await;
    client
        .expect(
            &reply(200, "subscribe match success")
                .replace(r#"success\"}"#, r#"success\",\"recovered\":false}"#),
        )
        .await;
}

#[tokio::test]
async fn a_private_app_has_one_stream_per_member() {
    let server = TestServer::start().await;
    let mut a777 = server.member(777, "777secret").await;
    let mut a888 = server.member(888, "888secret").await;
    subscribe_recovering(&mut a777, "im").await;
    subscribe_recovering(&mut a888, "im").await;
    server.push_ok("im", 777, "for seven").await;
    server.push_ok("im", 888, "for eight").await;
    server.push_ok("im", 777, "seven again").await;
    let a: Value = serde_json::from_str(&a777.recv().await).unwrap();
    let b: Value = serde_json::from_str(&a777.recv().await).unwrap();
    let c: Value = serde_json::from_str(&a888.recv().await).unwrap();
    assert_eq!(
        (a["offset"].as_u64(), a["member_id"].as_i64()),
        (Some(1), Some(777))
    );
    assert_eq!(b["offset"], 2);
    assert_eq!(
        (c["offset"].as_u64(), c["member_id"].as_i64()),
        (Some(1), Some(888))
    );
    assert_ne!(a["epoch"], c["epoch"], "two streams, two runs");
}

#[tokio::test]
async fn malformed_recovery_requests_are_bad_subscribe_messages() {
    let server = TestServer::start().await;
    let mut client = server.anonymous().await;
    for bad in [
        r#"{"app":"match","recover":"yes"}"#,
        r#"{"app":"match","since":{"offset":-1,"epoch":"e"}}"#,
        r#"{"app":"match","since":{"offset":1}}"#,
        r#"{"app":"match","since":{"offset":1,"epoch":""}}"#,
        r#"{"app":"match","since":{"offset":1,"epoch":"a b"}}"#,
        r#"{"app":"match","since":{"offset":1,"epoch":"e","x":1}}"#,
        r#"{"app":"match","since":7}"#,
        r#"{"app":"match","recover":false,"since":{"offset":1,"epoch":"e"}}"#,
    ] {
        client.send(bad).await;
        client.expect(&bad_subscribe()).await;
    }
    // `"recover":false` alone is a plain subscribe.
    client.send(r#"{"app":"match","recover":false}"#).await;
    client.expect(&subscribed("match")).await;
}
