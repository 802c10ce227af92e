//! The configuration file's parsing, defaults and errors.

use super::*;
use gateway_core::AppName;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("gw.toml"))
}

fn error(text: &str) -> String {
    parse(text).expect_err("should be refused").to_string()
}

#[test]
fn the_documented_example_parses() {
    let config = parse(
        r#"
listen = "0.0.0.0:5000"
stat_listen = "127.0.0.1:6000"
private_apps = ["im"]
[auth]
kind = "static"            # "static" | "anonymous" (more kinds come later)
[auth.tokens]
123456 = "654321"
777 = "777secret"
"#,
    )
    .unwrap();
    assert_eq!(config.server.listen, "0.0.0.0:5000".parse().unwrap());
    assert_eq!(config.server.stat_listen, "127.0.0.1:6000".parse().unwrap());
    let private: Vec<&str> = config
        .server
        .hub
        .private_apps
        .iter()
        .map(AppName::as_str)
        .collect();
    assert_eq!(private, ["im"]);
    let AuthConfig::Static(tokens) = config.auth else {
        panic!("static expected")
    };
    assert_eq!(tokens.len(), 2);
}

#[test]
fn an_empty_file_means_every_default() {
    let config = parse("").unwrap();
    let defaults = ServerConfig::default();
    assert_eq!(config.server.listen, defaults.listen);
    assert_eq!(config.server.stat_listen, defaults.stat_listen);
    assert_eq!(config.server.timeouts, Timeouts::default());
    assert_eq!(config.server.limits, Limits::default());
    assert_eq!(config.server.timeouts.auth, Duration::from_secs(10));
    assert!(matches!(config.auth, AuthConfig::Anonymous));
}

#[test]
fn every_knob_is_read() {
    let config = parse(
        r#"
private_apps = ["im", "dm"]
push_api_keys = ["0123456789abcdef"]
push_allow_from = ["10.0.0.0/8", "192.168.1.7"]
allowed_origins = ["https://app.example.com"]
[timeouts]
auth_ms = 1500
close_ms = 200
shutdown_ms = 3000
ping_interval_ms = 4000
idle_ms = 9000
head_ms = 700
push_body_ms = 800
cluster_query_ms = "1s"
evict_after_ms = 900
stat_request_ms = "3s"
[limits]
max_message_bytes = 1000
max_push_body_bytes = 2000
max_app_name_bytes = 30
max_subscriptions = 12
outbox_messages = 40
outbox_bytes = 50000
max_connections = 60
max_messages_per_s = 7
message_burst = 8
max_inflight_pushes = 9
max_push_batch = 17
max_push_members = 18
max_control_requests = 5
max_presence_page = 6
max_history_page = 19
accept_backlog = 10
max_auth_message_bytes = 11
max_handshakes = 12
max_connections_per_ip = 13
max_buffered_push_bytes = 14000
fd_reserve = 15
metrics_top_apps = 16
max_stat_requests = 8
[auth]
kind = "anonymous"
"#,
    )
    .unwrap();
    let s = config.server;
    assert_eq!(s.hub.private_apps.len(), 2);
    assert_eq!(s.hub.max_app_name_len, 30);
    assert_eq!(s.hub.max_subscriptions, 12);
    assert_eq!(
        s.timeouts,
        Timeouts {
            auth: Duration::from_millis(1500),
            close: Duration::from_millis(200),
            shutdown: Duration::from_millis(3000),
            ping_interval: Duration::from_millis(4000),
            idle: Duration::from_millis(9000),
            head: Duration::from_millis(700),
            push_body: Duration::from_millis(800),
            cluster_query: Duration::from_secs(1),
            evict_after: Duration::from_millis(900),
            stat_request: Duration::from_secs(3),
        }
    );
    assert_eq!(
        s.limits,
        Limits {
            max_message_bytes: 1000,
            max_push_body_bytes: 2000,
            outbox_messages: 40,
            outbox_bytes: 50000,
            max_connections: 60,
            max_messages_per_s: 7,
            message_burst: 8,
            max_inflight_pushes: 9,
            max_push_batch: 17,
            max_push_members: 18,
            max_control_requests: 5,
            max_presence_page: 6,
            max_history_page: 19,
            accept_backlog: 10,
            max_auth_message_bytes: 11,
            max_handshakes: 12,
            max_connections_per_ip: 13,
            max_buffered_push_bytes: 14000,
            fd_reserve: 15,
            metrics_top_apps: 16,
            max_stat_requests: 8,
        }
    );
    assert_eq!(s.access.push_api_keys, ["0123456789abcdef"]);
    let nets: Vec<String> = s
        .access
        .push_allow_from
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32"]);
    assert_eq!(
        s.access.allowed_origins,
        Some(vec!["https://app.example.com".to_owned()])
    );
    assert!(s.tls.is_none() && s.stat_tls.is_none());
}

#[test]
fn access_defaults_to_loopback_pushes_and_any_origin() {
    let access = parse("").unwrap().server.access;
    assert!(access.push_api_keys.is_empty());
    let nets: Vec<String> = access
        .push_allow_from
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(access.allowed_origins, None);
}

#[test]
fn errors_name_the_file_the_key_and_the_problem() {
    let cases = [
        (
            "listen = \"localhost\"",
            "key `listen`: `localhost` is not an address",
        ),
        ("stat_listen = 6000", "stat_listen"),
        ("lisen = \"0.0.0.0:5000\"", "lisen"),
        (
            "private_apps = [\"\"]",
            "key `private_apps`: ``: app name is empty",
        ),
        (
            "[timeouts]\nauth_ms = 0",
            "key `timeouts.auth_ms`: must be greater than 0",
        ),
        (
            "[limits]\noutbox_messages = 0",
            "key `limits.outbox_messages`: must be greater than 0",
        ),
        ("[limits]\nmax_message_bytes = -1", "max_message_bytes"),
        (
            "[auth]\nkind = \"magic\"",
            "key `auth.kind`: unknown kind `magic`",
        ),
        (
            "[auth]\nkind = \"static\"",
            "key `auth.tokens`: kind = \"static\" needs",
        ),
        (
            "[auth]\nkind = \"static\"\n[auth.tokens]",
            "key `auth.tokens`: is empty",
        ),
        (
            "[auth]\nkind = \"static\"\n[auth.tokens]\nabc = \"x\"",
            "key `auth.tokens.abc`: the key must be a member id",
        ),
        (
            "[auth]\nkind = \"static\"\n[auth.tokens]\n-5 = \"x\"",
            "key `auth.tokens.-5`",
        ),
        (
            "[auth]\nkind = \"static\"\n[auth.tokens]\n5 = \"\"",
            "key `auth.tokens.5`: the token must not be empty",
        ),
        (
            "[auth]\nkind = \"static\"\n[auth.tokens]\n5 = 5",
            "auth.tokens",
        ),
        (
            "[auth]\nkind = \"anonymous\"\n[auth.tokens]\n5 = \"x\"",
            "key `auth.tokens`: unknown field `tokens`",
        ),
        (
            "[auth]\nkind = \"hmac\"",
            "key `auth.secrets`: kind = \"hmac\" needs",
        ),
        (
            "[auth]\nkind = \"hmac\"\nsecrets = []",
            "key `auth.secrets`: at least one secret is required",
        ),
        (
            "[auth]\nkind = \"hmac\"\nsecrets = [\"short\"]",
            "key `auth.secrets`: secret #1 is shorter than 16 bytes",
        ),
        (
            "[auth]\nkind = \"jwt\"\nsecret = \"0123456789abcdef\"",
            "key `auth.algorithm`: kind = \"jwt\" needs",
        ),
        (
            "[auth]\nkind = \"jwt\"\nalgorithm = \"HS256\"",
            "key `auth.secret`: kind = \"jwt\" needs",
        ),
        (
            "[auth]\nkind = \"jwt\"\nalgorithm = \"RS256\"\npublic_key_file = \"missing.pem\"",
            "key `auth.public_key_file`: cannot read `missing.pem`",
        ),
        (
            "[auth]\nkind = \"jwt\"\nalgorithm = \"RS256\"\nsecret = \"0123456789abcdef\"",
            "key `auth.secret`: public_key_file (for RS*/ES* algorithms) is required",
        ),
        (
            "[auth]\nkind = \"http\"",
            "key `auth.url`: kind = \"http\" needs",
        ),
        (
            "[auth]\nkind = \"http\"\nurl = \"ftp://x/\"",
            "key `auth.url`: `ftp://x/` is not an http:// or https:// URL",
        ),
        (
            "[auth]\nkind = \"http\"\nurl = \"https://x/\"\nca_file = \"none.pem\"",
            "key `auth.ca_file`: cannot read certificates from `none.pem`",
        ),
        (
            "[auth]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/a\"\ntimeout_ms = 0",
            "key `auth.timeout_ms`: must be greater than 0",
        ),
        (
            "[auth]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/a\"\ncache_max_entries = 5",
            "key `auth.cache_max_entries`: only used with",
        ),
        (
            "[auth]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/a\"\n[auth.headers]\n\"x-key\" = \"a\\nb\"",
            "key `auth.headers.x-key`: not a valid HTTP header value",
        ),
        ("[auth]\ntokens = {}", "kind"),
        ("listen = ", "gw.toml"),
        (
            "push_api_keys = [\"short\"]",
            "key `push_api_keys`: key #1 is shorter than 16",
        ),
        (
            "push_allow_from = [\"10.0.0.0/33\"]",
            "key `push_allow_from`: `10.0.0.0/33` is not a network",
        ),
        ("allowed_origins = []", "key `allowed_origins`: is empty"),
        (
            "[limits]\nmax_buffered_push_bytes = 100",
            "key `limits.max_buffered_push_bytes`: must be at least",
        ),
        (
            "[timeouts]\nhead_ms = 0",
            "key `timeouts.head_ms`: must be greater than 0",
        ),
        (
            "[timeouts]\nping_interval_ms = 5000\nidle_ms = 5000",
            "key `timeouts.idle_ms`: must be longer",
        ),
        (
            "[limits]\nmax_connections = 0",
            "key `limits.max_connections`: must be greater than 0",
        ),
        (
            "[tls]\ncert_file = \"nope.pem\"\nkey_file = \"nope.key\"",
            "key `tls`: cannot read certificates from `nope.pem`",
        ),
        ("[stat_tls]\ncert_file = \"a\"", "stat_tls"),
    ];
    for (text, expected) in cases {
        let message = error(text);
        assert!(message.starts_with("config file `gw.toml`: "), "{message}");
        assert!(message.contains(expected), "for {text:?}: {message}");
    }
}

#[test]
fn each_auth_kind_is_read() {
    let hmac = parse("[auth]\nkind = \"hmac\"\nsecrets = [\"current-secret-0123\", \"previous-secret-0123\"]\nleeway_s = 2").unwrap();
    assert!(matches!(hmac.auth, AuthConfig::Hmac(_)));

    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-auth/tests/keys");
    let rs = Config::parse(
        "[auth]\nkind = \"jwt\"\nalgorithm = \"RS256\"\npublic_key_file = \"rsa_public.pem\"\n\
         member_claim = \"uid\"\napps_claim = \"apps\"\nissuer = \"https://id.example\"\n\
         audience = [\"a\", \"b\"]\nleeway_s = 1",
        // Relative key files are found next to the configuration file.
        &Path::new(keys).join("gw.toml"),
    )
    .unwrap();
    assert!(matches!(rs.auth, AuthConfig::Jwt(_)));

    let http = parse(
        "[auth]\nkind = \"http\"\nurl = \"http://127.0.0.1:9000/auth\"\ntimeout_ms = 250\n\
         max_concurrency = 8\ncache_ttl_s = 60\n[auth.headers]\n\"X-Api-Key\" = \"k\"",
    )
    .unwrap();
    let AuthConfig::Http { callback, cache } = http.auth else {
        panic!("http expected")
    };
    assert_eq!(callback.timeout, Duration::from_millis(250));
    assert_eq!(callback.max_concurrency, 8);
    assert_eq!(callback.headers.len(), 1);
    assert_eq!(
        cache,
        Some(CacheSettings {
            ttl: Duration::from_secs(60),
            max_entries: 100_000
        })
    );
}

#[test]
fn an_unreadable_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/gw.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("config file `/nonexistent/gw.toml`: cannot read it")
    );
}

#[test]
fn tokens_never_show_in_debug_output() {
    let config = parse("[auth]\nkind = \"static\"\n[auth.tokens]\n5 = \"s3cr3t\"").unwrap();
    assert!(!format!("{config:?}").contains("s3cr3t"));
}

#[test]
fn the_broker_table_is_read_and_checked() {
    let local = parse("").unwrap().server.broker;
    assert_eq!(local.kind, BrokerKind::Local);
    assert_eq!(local.settings.prefix, "ws-gateway");

    let redis = parse(
        "[broker]\nkind = \"redis\"\nurls = [\"redis://a:6379/\", \"rediss://:pw@b:6380/\"]\nprefix = \"blue\"\nnode_id = \"n1\"\npublish_timeout_ms = 500\nreport_interval_ms = 200\n",
    )
    .unwrap()
    .server
    .broker;
    assert_eq!(
        redis.kind,
        BrokerKind::Redis {
            urls: vec!["redis://a:6379/".into(), "rediss://:pw@b:6380/".into()]
        }
    );
    assert_eq!(redis.settings.prefix, "blue");
    assert_eq!(redis.settings.node_id, "n1");
    assert_eq!(redis.settings.publish_timeout, Duration::from_millis(500));
    assert_eq!(redis.report_ttl(), Duration::from_millis(600));

    let nats =
        parse("[broker]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\ntoken = \"s3cret\"\n")
            .unwrap()
            .server
            .broker;
    let BrokerKind::Nats { url, credentials } = &nats.kind else {
        panic!("{nats:?}")
    };
    assert_eq!(url, "nats://127.0.0.1:4222");
    assert_eq!(credentials.token.as_deref(), Some("s3cret"));
    assert!(
        !format!("{nats:?}").contains("s3cret"),
        "the token is redacted"
    );

    for (text, expected) in [
        (
            "[broker]\nkind = \"kafka\"",
            "key `broker.kind`: `kafka` is not one of",
        ),
        (
            "[broker]\nkind = \"redis\"",
            "key `broker.url`: kind = \"redis\" needs url or urls",
        ),
        (
            "[broker]\nkind = \"redis\"\nurl = \"http://x\"",
            "is not a redis:// or rediss:// URL",
        ),
        (
            "[broker]\nkind = \"redis\"\nurl = \"redis://a/\"\nurls = [\"redis://b/\"]",
            "either url or urls",
        ),
        (
            "[broker]\nkind = \"redis\"\nurls = [\"redis://a/\", \"redis://a/\"]",
            "listed twice",
        ),
        (
            "[broker]\nurl = \"redis://a/\"",
            "the local broker has no server",
        ),
        (
            "[broker]\nkind = \"redis\"\nurl = \"redis://a/\"\ntoken = \"t\"",
            "is a NATS option",
        ),
        (
            "[broker]\nkind = \"nats\"\nurl = \"redis://a/\"",
            "is not a nats:// or tls:// URL",
        ),
        (
            "[broker]\nkind = \"nats\"\nurl = \"nats://a\"\nuser = \"u\"",
            "user and password go together",
        ),
        ("[broker]\nprefix = \"a.b\"", "key `broker.prefix`"),
        (
            "[broker]\nkind = \"redis\"\nurl = \"redis://a/\"\nreconnect_min_ms = 900\nreconnect_max_ms = 100",
            "at least reconnect_min_ms",
        ),
        ("[broker]\nhost = \"x\"", "broker.host"),
    ] {
        let message = error(text);
        assert!(message.contains(expected), "{text:?} gave {message:?}");
    }
    // A password in a URL never reaches a log line or an error message.
    let redis = parse(
        "[broker]\nkind = \"redis\"\nurls = [\"redis://:hunter2@a/\", \"rediss://u:hunter3@b/\"]",
    )
    .unwrap()
    .server
    .broker;
    let nats =
        parse("[broker]\nkind = \"nats\"\nurl = \"nats://u:hunter4@a:4222,nats://hunter5@b:4222\"")
            .unwrap()
            .server
            .broker;
    let shown = format!("{redis:?} {nats:?}");
    for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("u:<redacted>@b"), "{shown}");
    let message = error("[broker]\nkind = \"redis\"\nurl = \"http://:hunter2@x/\"");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn durations_take_milliseconds_or_a_unit() {
    let config = parse(
        "[timeouts]\nauth_ms = \"2s\"\nclose_ms = 250\nidle_ms = \"1m\"\nshutdown_ms = \"1500ms\"\n\
         [memory]\ntrim = false\ntrim_interval_ms = \"1h\"\ntrim_min_drop = 10\n",
    )
    .unwrap();
    let t = config.server.timeouts;
    assert_eq!(t.auth, Duration::from_secs(2));
    assert_eq!(t.close, Duration::from_millis(250));
    assert_eq!(t.idle, Duration::from_secs(60));
    assert_eq!(t.shutdown, Duration::from_millis(1500));
    assert_eq!(
        config.memory,
        MemoryConfig {
            trim: false,
            trim_interval: Duration::from_secs(3600),
            trim_min_drop: 10,
        }
    );
    let message = error("[timeouts]\nauth_ms = \"soon\"");
    assert!(
        message.contains("key `timeouts.auth_ms`: `soon` is not a duration"),
        "{message}"
    );
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn a_host_name_resolves_and_listeners_may_not_share_a_port() {
    let config = parse("listen = \"localhost:5000\"").unwrap();
    assert!(config.server.listen.ip().is_loopback());
    assert_eq!(config.server.listen.port(), 5000);
    let message = error("listen = \"0.0.0.0:6000\"");
    assert!(
        message.contains(
            "key `stat_listen`: 127.0.0.1:6000 and listen (0.0.0.0:6000) would share port 6000"
        ),
        "{message}"
    );
}
