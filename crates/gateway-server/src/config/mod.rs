//! The gateway's configuration: the TOML file, its defaults, and what the flags override.
//!
//! Every key is optional; a missing key takes the default documented in the README. Unknown
//! keys are refused, so a typo is an error at start-up rather than a silently ignored setting.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{AppName, HubConfig};
use ipnet::IpNet;
use serde::Deserialize;

use crate::error::ConfigError;

mod auth;
mod broker;

pub use auth::{AuthConfig, CacheSettings};
pub use broker::{BrokerConfig, BrokerKind, NatsCredentials};

/// The default WebSocket and push listener (the seed's).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
/// The default stat listener: loopback only.
pub const DEFAULT_STAT_LISTEN: &str = "127.0.0.1:6000";

/// Everything the server needs to run, resolved and validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// WebSocket upgrades and `POST /push`.
    pub listen: SocketAddr,
    /// `GET /stat`.
    pub stat_listen: SocketAddr,
    /// Private apps, the app-name limit and the subscription limit.
    pub hub: HubConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Who may push and which origins may connect.
    pub access: Access,
    /// TLS on the main listener (`wss://`, `https://…/push`); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS on the stat listener; `None`: plain TCP.
    pub stat_tls: Option<Arc<rustls::ServerConfig>>,
    /// How this node reaches the others; `local` (the default) needs no server.
    pub broker: BrokerConfig,
    /// Serve the demo client at `GET /` on the main listener. Default `true`: it holds no
    /// secret and pushes only through the protected `/push`.
    pub demo_page: bool,
}

/// Access control of the main listener.
#[derive(Clone)]
pub struct Access {
    /// When not empty, `POST /push` requires `Authorization: Bearer <one of these>` (401
    /// otherwise), from any address.
    pub push_api_keys: Vec<String>,
    /// When no key is configured, `POST /push` is accepted only from peers in these networks
    /// (403 otherwise). Default: loopback (`127.0.0.0/8`, `::1/128`).
    pub push_allow_from: Vec<IpNet>,
    /// When set, a WebSocket upgrade that carries an `Origin` header must carry one of these
    /// (403 otherwise). Upgrades without `Origin` (non-browser clients) are not affected.
    pub allowed_origins: Option<Vec<String>>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            push_api_keys: Vec::new(),
            push_allow_from: vec![
                "127.0.0.0/8".parse().expect("a valid network literal"),
                "::1/128".parse().expect("a valid network literal"),
            ],
            allowed_origins: None,
        }
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("push_api_keys", &self.push_api_keys.len())
            .field("push_allow_from", &self.push_allow_from)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// How long the gateway waits for things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the upgrade until the auth message must have arrived. Default 10 s (the seed's).
    pub auth: Duration,
    /// After sending a close frame, how long to wait for the client's close reply before
    /// dropping the TCP connection. Default 1 s.
    pub close: Duration,
    /// On SIGINT/SIGTERM, how long connections get to close before the process exits anyway.
    /// Default 5 s.
    pub shutdown: Duration,
    /// A connection from which nothing has arrived for this long is sent a ping. Default 25 s.
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) has arrived for this long is closed
    /// with 4101. Default 60 s.
    pub idle: Duration,
    /// From accepting a connection until its request head is complete, in total (including a
    /// TLS handshake); also the most a keep-alive HTTP connection may wait between requests.
    /// A connection past it is closed without an answer. Default 10 s.
    pub head: Duration,
    /// From a `POST /push` head until its whole body has arrived; past it the push is answered
    /// `408` and nothing is delivered. Default 10 s.
    pub push_body: Duration,
    /// The least time a connection still sending its head, or a push still sending its body,
    /// is given before it may be closed to make room for a newer one (once
    /// `limits.max_handshakes` or `limits.max_buffered_push_bytes` is reached): long enough for
    /// a real client's round trips, short enough that slow peers give way. Default 500 ms.
    pub evict_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            auth: Duration::from_secs(10),
            close: Duration::from_secs(1),
            shutdown: Duration::from_secs(5),
            ping_interval: Duration::from_secs(25),
            idle: Duration::from_secs(60),
            head: Duration::from_secs(10),
            push_body: Duration::from_secs(10),
            evict_after: Duration::from_millis(500),
        }
    }
}

/// Size limits. Each refusal is documented in `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest client message (and frame) accepted, in bytes; a larger one closes the
    /// connection with 1009. Clients only send auth and subscribe messages. Default 4096.
    pub max_message_bytes: usize,
    /// The largest `POST /push` body, in bytes; a larger one gets 413. Default 1 MiB (nginx's
    /// `client_max_body_size`): what the original service accepted in practice.
    pub max_push_body_bytes: usize,
    /// Frames queued to one connection and not yet written; one more closes that connection
    /// (4100 slow consumer) without delaying anyone else. Default 1024.
    pub outbox_messages: usize,
    /// Bytes queued to one connection; one more frame beyond closes it with 4100 (a single
    /// frame is always accepted into an empty queue). Default 1 MiB.
    pub outbox_bytes: usize,
    /// WebSocket connections (authenticated or not) held at once; an upgrade beyond gets 503.
    /// Default 10000.
    pub max_connections: usize,
    /// Client frames per second per connection, sustained; beyond the burst the connection is
    /// closed with 4429. Every frame counts, before and after auth: messages, each fragment,
    /// pings, pongs. Default 50.
    pub max_messages_per_s: u32,
    /// Client frames a connection may send at once before the rate applies. Default 300
    /// (enough to pipeline the auth message and every allowed subscription).
    pub message_burst: u32,
    /// `POST /push` requests being handled at once; one more gets 503 with `Retry-After`.
    /// Default 1024.
    pub max_inflight_pushes: usize,
    /// Connections the kernel queues for each listener before the gateway accepts them
    /// (capped by `net.core.somaxconn`); beyond it, connection attempts are dropped and
    /// retried by the client a second later. Default 4096.
    pub accept_backlog: u32,
    /// The largest first (auth) message, in bytes: identity providers' JWTs can be large.
    /// A larger one closes the connection with 1009. Default 16384.
    pub max_auth_message_bytes: usize,
    /// Connections per listener that have not finished their request head (nor their TLS
    /// handshake) yet. When one more arrives, the oldest of them is closed to make room if it
    /// has been at it for `timeouts.evict_after_ms`; until then new connections wait in the
    /// kernel's backlog. Default 1024.
    pub max_handshakes: usize,
    /// Sockets one IP address may hold open on the main listener at once (WebSockets,
    /// handshakes, HTTP); one more is closed at once. `0` (default): no limit, since users
    /// behind one NAT share an address.
    pub max_connections_per_ip: usize,
    /// Bytes of `POST /push` bodies being received at once, over all requests. When a body
    /// would go past it, the oldest bodies still arriving after `timeouts.evict_after_ms` are
    /// answered `408` to make room; if none is that old, the new push gets `503`.
    /// Default 64 MiB.
    pub max_buffered_push_bytes: usize,
    /// File descriptors kept free of WebSocket connections and handshakes, for `/push`,
    /// `/stat` and the auth backend: `max_connections` and `max_handshakes` are lowered at
    /// start (with a warning) to leave this many under the open-file limit. Default 128.
    pub fd_reserve: usize,
    /// Apps labelled one by one in `/metrics` (`ws_gateway_subscriptions{app}`), those with
    /// the most subscribers; the others are added up under `app=""`, so that the number of
    /// series stays bounded whatever the number of apps. Default 50.
    pub metrics_top_apps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4096,
            max_push_body_bytes: 1024 * 1024,
            outbox_messages: 1024,
            outbox_bytes: 1024 * 1024,
            max_connections: 10_000,
            max_messages_per_s: 50,
            message_burst: 300,
            max_inflight_pushes: 1024,
            accept_backlog: 4096,
            max_auth_message_bytes: 16 * 1024,
            max_handshakes: 1024,
            max_connections_per_ip: 0,
            max_buffered_push_bytes: 64 * 1024 * 1024,
            fd_reserve: 128,
            metrics_top_apps: 50,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid address literal"),
            stat_listen: DEFAULT_STAT_LISTEN
                .parse()
                .expect("a valid address literal"),
            hub: HubConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            access: Access::default(),
            tls: None,
            stat_tls: None,
            broker: BrokerConfig::default(),
            demo_page: true,
        }
    }
}

/// A configuration file, loaded and validated.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
}

// --- the file's shape -------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    stat_listen: Option<String>,
    private_apps: Option<Vec<String>>,
    #[serde(default)]
    timeouts: FileTimeouts,
    #[serde(default)]
    limits: FileLimits,
    push_api_keys: Option<Vec<String>>,
    push_allow_from: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    tls: Option<FileTls>,
    stat_tls: Option<FileTls>,
    auth: Option<toml::Table>,
    broker: Option<broker::FileBroker>,
    demo_page: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    auth_ms: Option<u64>,
    close_ms: Option<u64>,
    shutdown_ms: Option<u64>,
    ping_interval_ms: Option<u64>,
    idle_ms: Option<u64>,
    head_ms: Option<u64>,
    push_body_ms: Option<u64>,
    evict_after_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_bytes: Option<usize>,
    max_push_body_bytes: Option<usize>,
    max_app_name_bytes: Option<usize>,
    max_subscriptions: Option<usize>,
    outbox_messages: Option<usize>,
    outbox_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_messages_per_s: Option<u32>,
    message_burst: Option<u32>,
    max_inflight_pushes: Option<usize>,
    accept_backlog: Option<u32>,
    max_auth_message_bytes: Option<usize>,
    max_handshakes: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_buffered_push_bytes: Option<usize>,
    fd_reserve: Option<usize>,
    metrics_top_apps: Option<usize>,
}

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let syntax = |err: toml::de::Error, key: Option<String>| ConfigError::Syntax {
            path: path.to_owned(),
            key,
            message: format!("{}{}", err.message().trim_end(), position(text, err.span())),
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|err| syntax(err, None))?;
        let file: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            syntax(err.into_inner(), (key != ".").then_some(key))
        })?;
        Resolver { path }.resolve(file)
    }
}

/// " (line L, column C)" for a byte span of `text`.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

pub(crate) struct Resolver<'a> {
    path: &'a Path,
}

impl Resolver<'_> {
    /// A path from the file, relative to the file's own directory.
    pub(crate) fn relative(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    pub(crate) fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: PathBuf::from(self.path),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn address(
        &self,
        key: &str,
        value: Option<String>,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                self.invalid(
                    key,
                    format!("`{text}` is not an address like 127.0.0.1:5000"),
                )
            }),
        }
    }

    pub(crate) fn positive<T: Copy + PartialEq + From<u8>>(
        &self,
        key: &str,
        value: Option<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) if v == T::from(0) => Err(self.invalid(key, "must be greater than 0")),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    }

    pub(crate) fn millis(
        &self,
        key: &str,
        value: Option<u64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(0) => Err(self.invalid(key, "must be greater than 0")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(default),
        }
    }

    fn resolve(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let defaults = ServerConfig::default();
        let listen = self.address("listen", file.listen, defaults.listen)?;
        let stat_listen = self.address("stat_listen", file.stat_listen, defaults.stat_listen)?;

        let (t, dt) = (file.timeouts, defaults.timeouts);
        let timeouts = Timeouts {
            auth: self.millis("timeouts.auth_ms", t.auth_ms, dt.auth)?,
            close: self.millis("timeouts.close_ms", t.close_ms, dt.close)?,
            shutdown: self.millis("timeouts.shutdown_ms", t.shutdown_ms, dt.shutdown)?,
            ping_interval: self.millis(
                "timeouts.ping_interval_ms",
                t.ping_interval_ms,
                dt.ping_interval,
            )?,
            idle: self.millis("timeouts.idle_ms", t.idle_ms, dt.idle)?,
            head: self.millis("timeouts.head_ms", t.head_ms, dt.head)?,
            push_body: self.millis("timeouts.push_body_ms", t.push_body_ms, dt.push_body)?,
            evict_after: self.millis(
                "timeouts.evict_after_ms",
                t.evict_after_ms,
                dt.evict_after,
            )?,
        };
        if timeouts.idle <= timeouts.ping_interval {
            return Err(self.invalid(
                "timeouts.idle_ms",
                "must be longer than timeouts.ping_interval_ms, or a healthy idle client is closed before its pong can arrive",
            ));
        }

        let (l, dl) = (file.limits, defaults.limits);
        let limits = Limits {
            max_message_bytes: self.positive(
                "limits.max_message_bytes",
                l.max_message_bytes,
                dl.max_message_bytes,
            )?,
            max_push_body_bytes: self.positive(
                "limits.max_push_body_bytes",
                l.max_push_body_bytes,
                dl.max_push_body_bytes,
            )?,
            outbox_messages: self.positive(
                "limits.outbox_messages",
                l.outbox_messages,
                dl.outbox_messages,
            )?,
            outbox_bytes: self.positive("limits.outbox_bytes", l.outbox_bytes, dl.outbox_bytes)?,
            max_connections: self.positive(
                "limits.max_connections",
                l.max_connections,
                dl.max_connections,
            )?,
            max_messages_per_s: self.positive(
                "limits.max_messages_per_s",
                l.max_messages_per_s,
                dl.max_messages_per_s,
            )?,
            message_burst: self.positive(
                "limits.message_burst",
                l.message_burst,
                dl.message_burst,
            )?,
            max_inflight_pushes: self.positive(
                "limits.max_inflight_pushes",
                l.max_inflight_pushes,
                dl.max_inflight_pushes,
            )?,
            accept_backlog: self.positive(
                "limits.accept_backlog",
                l.accept_backlog,
                dl.accept_backlog,
            )?,
            max_auth_message_bytes: self.positive(
                "limits.max_auth_message_bytes",
                l.max_auth_message_bytes,
                dl.max_auth_message_bytes,
            )?,
            max_handshakes: self.positive(
                "limits.max_handshakes",
                l.max_handshakes,
                dl.max_handshakes,
            )?,
            // 0 is meaningful here: no limit.
            max_connections_per_ip: l
                .max_connections_per_ip
                .unwrap_or(dl.max_connections_per_ip),
            max_buffered_push_bytes: self.positive(
                "limits.max_buffered_push_bytes",
                l.max_buffered_push_bytes,
                dl.max_buffered_push_bytes,
            )?,
            fd_reserve: l.fd_reserve.unwrap_or(dl.fd_reserve),
            // 0 is meaningful: every app's subscribers under one series.
            metrics_top_apps: l.metrics_top_apps.unwrap_or(dl.metrics_top_apps),
        };
        if limits.max_buffered_push_bytes < limits.max_push_body_bytes {
            return Err(self.invalid(
                "limits.max_buffered_push_bytes",
                "must be at least limits.max_push_body_bytes, or the largest push could never be read",
            ));
        }
        let max_app_name_len = self.positive(
            "limits.max_app_name_bytes",
            l.max_app_name_bytes,
            defaults.hub.max_app_name_len,
        )?;
        let max_subscriptions = self.positive(
            "limits.max_subscriptions",
            l.max_subscriptions,
            defaults.hub.max_subscriptions,
        )?;

        let private_apps = match file.private_apps {
            None => defaults.hub.private_apps,
            Some(names) => names
                .iter()
                .map(|name| {
                    AppName::parse(name, max_app_name_len)
                        .map_err(|err| self.invalid("private_apps", format!("`{name}`: {err}")))
                })
                .collect::<Result<HashSet<_>, _>>()?,
        };

        let access = self.access(
            file.push_api_keys,
            file.push_allow_from,
            file.allowed_origins,
        )?;
        let tls = self.tls("tls", file.tls)?;
        let stat_tls = self.tls("stat_tls", file.stat_tls)?;

        let broker = match file.broker {
            None => BrokerConfig::default(),
            Some(table) => broker::resolve(table, self)?,
        };

        let auth = match file.auth {
            None => AuthConfig::Anonymous,
            Some(auth) => auth::resolve(auth::read_file_auth(auth, self)?, self)?,
        };

        Ok(Config {
            server: ServerConfig {
                listen,
                stat_listen,
                hub: HubConfig {
                    private_apps,
                    max_app_name_len,
                    max_subscriptions,
                },
                timeouts,
                limits,
                access,
                tls,
                stat_tls,
                broker,
                demo_page: file.demo_page.unwrap_or(defaults.demo_page),
            },
            auth,
        })
    }

    fn access(
        &self,
        keys: Option<Vec<String>>,
        allow_from: Option<Vec<String>>,
        origins: Option<Vec<String>>,
    ) -> Result<Access, ConfigError> {
        let defaults = Access::default();
        let push_api_keys = keys.unwrap_or_default();
        if let Some(i) = push_api_keys.iter().position(|k| k.len() < 16) {
            return Err(self.invalid(
                "push_api_keys",
                format!("key #{} is shorter than 16 characters", i + 1),
            ));
        }
        let push_allow_from = match allow_from {
            None => defaults.push_allow_from,
            Some(networks) => networks
                .iter()
                .map(|net| {
                    net.parse::<IpNet>()
                        .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            self.invalid(
                                "push_allow_from",
                                format!("`{net}` is not a network like 10.0.0.0/8 or an address"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        if let Some(origins) = &origins
            && origins.is_empty()
        {
            return Err(self.invalid(
                "allowed_origins",
                "is empty, which would refuse every browser; remove the key to allow all",
            ));
        }
        Ok(Access {
            push_api_keys,
            push_allow_from,
            allowed_origins: origins,
        })
    }

    fn tls(
        &self,
        key: &str,
        file: Option<FileTls>,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let Some(file) = file else {
            return Ok(None);
        };
        crate::tls::load(
            &self.relative(&file.cert_file),
            &self.relative(&file.key_file),
        )
        .map(Some)
        .map_err(|reason| self.invalid(key, reason))
    }
}

#[cfg(test)]
mod tests;
