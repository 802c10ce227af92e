//! A backend's `POST /disconnect` and `GET /presence` on one node, end to end: real server,
//! real WebSocket clients, real HTTP, exact answers. (Across nodes: `tests/cluster/verbs.rs`.)

mod common;

use bytes::Bytes;
use common::*;
use gateway_server::ServerConfig;
use hyper::StatusCode;

async fn disconnect(server: &TestServer, body: &str) -> (StatusCode, String) {
    let (status, _, text) = http(server.addr, "POST", "/disconnect", body).await;
    (status, text)
}

async fn presence(server: &TestServer, query: &str) -> (StatusCode, String) {
    let (status, _, text) = http(server.addr, "GET", &format!("/presence?{query}"), "").await;
    (status, text)
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_member_and_nobody_elses() {
    let server = TestServer::start().await;
    let mut first = server.member(777, "777secret").await;
    let mut second = server.member(777, "777secret").await;
    let mut other = server.member(888, "888secret").await;
    let mut stranger = server.anonymous().await;
    for client in [&mut first, &mut second, &mut other, &mut stranger] {
        client.subscribe("match").await;
    }

    assert_eq!(
        disconnect(&server, r#"{"member_id":777}"#).await,
        (StatusCode::OK, r#"{"connections":2}"#.to_owned())
    );
    first.expect_close(4403).await;
    second.expect_close(4403).await;
    server.wait_for_stat("match 2\n").await;
    server.push_ok("match", -1, "still here").await;
    for client in [&mut other, &mut stranger] {
        client
            .expect(r#"{"app":"match","member_id":-1,"text":"still here"}"#)
            .await;
    }
    // Nobody left to disconnect: an answer, not an error.
    assert_eq!(
        disconnect(&server, r#"{"member_id":777}"#).await,
        (StatusCode::OK, r#"{"connections":0}"#.to_owned())
    );
    assert_eq!(
        disconnect(&server, r#"{"member_id":424242}"#).await,
        (StatusCode::OK, r#"{"connections":0}"#.to_owned())
    );
}

#[tokio::test]
async fn disconnect_from_one_app_unsubscribes_and_tells_the_client() {
    let server = TestServer::start().await;
    let mut member = server.member(777, "777secret").await;
    member.subscribe("im").await;
    member.subscribe("match").await;
    let mut other = server.member(888, "888secret").await;
    other.subscribe("im").await;

    assert_eq!(
        disconnect(&server, r#"{"member_id":777,"app":"im"}"#).await,
        (StatusCode::OK, r#"{"connections":1}"#.to_owned())
    );
    member.expect(&reply(410, "unsubscribe im by server")).await;
    server.push_ok("im", 777, "private").await;
    server.push_ok("match", -1, "public").await;
    member
        .expect(r#"{"app":"match","member_id":-1,"text":"public"}"#)
        .await;
    server.push_ok("im", 888, "theirs").await;
    other
        .expect(r#"{"app":"im","member_id":888,"text":"theirs"}"#)
        .await;
    // Not subscribed any more: a second time affects nobody.
    assert_eq!(
        disconnect(&server, r#"{"member_id":777,"app":"im"}"#).await,
        (StatusCode::OK, r#"{"connections":0}"#.to_owned())
    );
    member.expect_nothing_more().await;
}

#[tokio::test]
async fn bad_disconnect_requests_are_refused_and_touch_nobody() {
    let server = TestServer::start().await;
    let mut member = server.member(777, "777secret").await;
    member.subscribe("match").await;
    for (body, expected) in [
        ("", "the body must be a JSON object\n"),
        ("[777]", "the body must be a JSON object\n"),
        (
            r#"{"member_id":0}"#,
            "member_id must be a positive integer (a member)\n",
        ),
        (
            r#"{"member_id":-1}"#,
            "member_id must be a positive integer (a member)\n",
        ),
        (
            r#"{"member_id":"777"}"#,
            "bad disconnect request: invalid type: string \"777\", expected i64 at line 1 column 18\n",
        ),
        (
            r#"{"app":"im"}"#,
            "bad disconnect request: missing field `member_id` at line 1 column 12\n",
        ),
        (
            r#"{"member_id":777,"app":""}"#,
            "bad app: app name is empty\n",
        ),
        (
            r#"{"member_id":777,"app":null}"#,
            "bad disconnect request: invalid type: null, expected a string at line 1 column 27\n",
        ),
    ] {
        assert_eq!(
            disconnect(&server, body).await,
            (StatusCode::BAD_REQUEST, expected.to_owned()),
            "{body}"
        );
    }
    let (status, headers, _) = http(server.addr, "GET", "/disconnect", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    let (status, headers, _) = http(server.addr, "POST", "/presence?app=x", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
    member.expect_nothing_more().await;
}

#[tokio::test]
async fn disconnect_and_presence_are_protected_like_push() {
    let mut config = ServerConfig::default();
    config.access.push_api_keys = vec!["backend-key".to_owned()];
    let server = TestServer::with_config(config).await;
    let mut member = server.member(777, "777secret").await;
    member.subscribe("match").await;
    for (method, path, body) in [
        ("POST", "/disconnect", r#"{"member_id":777}"#),
        ("GET", "/presence?app=match", ""),
        ("GET", "/presence?member_id=777", ""),
    ] {
        let body = Bytes::from(body);
        let (status, _, _) = http_with(server.addr, method, path, &[], body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a key");
        let wrong = [("authorization", "Bearer wrong")];
        let (status, _, _) = http_with(server.addr, method, path, &wrong, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with a wrong key");
    }
    member.expect_nothing_more().await;
    let key = [("authorization", "Bearer backend-key")];
    let (status, _, text) = http_with(
        server.addr,
        "GET",
        "/presence?member_id=777",
        &key,
        Bytes::new(),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::OK,
            r#"{"member_id":777,"online":true,"connections":1,"apps":["match"]}"#
        )
    );

    // Without keys, only allowed networks: loopback is not one here.
    let mut config = ServerConfig::default();
    config.access.push_allow_from = vec!["10.0.0.0/8".parse().unwrap()];
    let server = TestServer::with_config(config).await;
    let (status, _) = disconnect(&server, r#"{"member_id":777}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = presence(&server, "app=match").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn presence_lists_an_apps_members_in_pages() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    // Members 888 and 123456 on "the app" (a name that needs escaping in a URL), 777 twice,
    // and an anonymous connection, which is not listed.
    for (member, token) in [
        (888, "888secret"),
        (777, "777secret"),
        (123456, "654321"),
        (777, "777secret"),
    ] {
        let mut client = server.member(member, token).await;
        client.subscribe("the app").await;
        clients.push(client);
    }
    let mut stranger = server.anonymous().await;
    stranger.subscribe("the app").await;

    assert_eq!(
        presence(&server, "app=the%20app&limit=2").await,
        (
            StatusCode::OK,
            r#"{"app":"the app","members":[777,888],"next_cursor":"888"}"#.to_owned()
        )
    );
    assert_eq!(
        presence(&server, "app=the+app&limit=2&cursor=888").await,
        (
            StatusCode::OK,
            r#"{"app":"the app","members":[123456],"next_cursor":null}"#.to_owned()
        )
    );
    assert_eq!(
        presence(&server, "app=the%20app").await,
        (
            StatusCode::OK,
            r#"{"app":"the app","members":[777,888,123456],"next_cursor":null}"#.to_owned()
        )
    );
    assert_eq!(
        presence(&server, "app=nobody").await,
        (
            StatusCode::OK,
            r#"{"app":"nobody","members":[],"next_cursor":null}"#.to_owned()
        )
    );
}

#[tokio::test]
async fn presence_of_a_member_says_whether_and_where_they_are_online() {
    let server = TestServer::start().await;
    let mut phone = server.member(777, "777secret").await;
    phone.subscribe("im").await;
    let mut laptop = server.member(777, "777secret").await;
    laptop.subscribe("match").await;
    laptop.subscribe("im").await;
    assert_eq!(
        presence(&server, "member_id=777").await,
        (
            StatusCode::OK,
            r#"{"member_id":777,"online":true,"connections":2,"apps":["im","match"]}"#.to_owned()
        )
    );
    phone.close().await;
    laptop.close().await;
    server.wait_for_stat("").await;
    assert_eq!(
        presence(&server, "member_id=777").await,
        (
            StatusCode::OK,
            r#"{"member_id":777,"online":false,"connections":0,"apps":[]}"#.to_owned()
        )
    );
}

#[tokio::test]
async fn bad_presence_queries_are_refused_with_their_reason() {
    let mut config = ServerConfig::default();
    config.limits.max_presence_page = 50;
    let server = TestServer::with_config(config).await;
    for (query, expected) in [
        ("", "presence needs app=<name> or member_id=<id>\n"),
        (
            "app=a&member_id=7",
            "presence takes app=<name> or member_id=<id>, not both\n",
        ),
        ("member_id=0", "member_id must be a positive integer\n"),
        ("member_id=x", "member_id must be a positive integer\n"),
        ("app=a&limit=0", "limit must be a positive integer\n"),
        (
            "app=a&limit=51",
            "limit must be at most 50 (limits.max_presence_page)\n",
        ),
        ("app=a&cursor=abc", "cursor must be a positive integer\n"),
        ("app=", "bad app: app name is empty\n"),
    ] {
        assert_eq!(
            presence(&server, query).await,
            (StatusCode::BAD_REQUEST, expected.to_owned()),
            "{query}"
        );
    }
    assert_eq!(presence(&server, "app=a&limit=50").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_clusters_own_channels_are_not_apps_to_push_to() {
    let server = TestServer::start().await;
    // No client may subscribe to such a name either.
    let mut client = server.member(777, "777secret").await;
    client.send(r#"{"app":"$ws-gateway/control"}"#).await;
    client.expect(&forbidden("$ws-gateway/control")).await;
    assert_eq!(server.stat().await, "");
    let why = r#"app "$ws-gateway/control" is reserved: names starting with "$ws-gateway/" are the gateway's own"#;
    for (body, expected) in [
        (
            r#"{"app":"$ws-gateway/control","text":"x"}"#.to_owned(),
            format!("bad push message: {why}\n"),
        ),
        (
            r#"[{"app":"match","text":"x"},{"app":"$ws-gateway/control","text":"x"}]"#.to_owned(),
            format!("bad push message at index 1: {why}\n"),
        ),
    ] {
        assert_eq!(
            server.push(&body).await,
            (StatusCode::BAD_REQUEST, expected)
        );
    }
    client.expect_nothing_more().await;
}
