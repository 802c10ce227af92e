//! The gateway's configuration, in layers: the defaults, the TOML file (`--config`), the
//! environment variables `WS_GATEWAY_*`, the flags, each overriding the one before
//! (`layers`, with `figment`); then validated (`resolve`) into what the server runs with.
//!
//! Every key is optional; a missing key takes the default documented in the README. Unknown
//! keys are refused, so a typo is an error at start-up rather than a silently ignored setting.
//!
//! - `file`: the shape every layer is written in, and the defaults in that shape;
//! - `layers`: the layering, and where each value came from;
//! - `resolve`: validation, with errors naming the key and its source;
//! - `effective`: the effective configuration as `check-config` prints it (secrets
//!   redacted), and which keys a reload can apply;
//! - `auth`, `broker`, `history`: the `[auth]`, `[broker]` and `[history]` tables.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{HubConfig, PushLimits};
use ipnet::IpNet;

use crate::error::ConfigError;

mod auth;
mod broker;
mod effective;
mod file;
mod history;
mod layers;
mod resolve;

pub use auth::{AuthConfig, CacheSettings};
pub use broker::{BrokerConfig, BrokerKind, NatsCredentials};
pub use effective::{Entry, needs_restart};
pub use layers::{Layers, Loaded, Origin};
pub(crate) use resolve::Resolver;

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
    /// How long `POST /disconnect` and `GET /presence` wait for every node of the cluster to
    /// answer; nodes still silent then are listed as `unanswered` in a `504`. Default 2 s.
    pub cluster_query: Duration,
    /// The least time a connection still sending its head, or a push still sending its body,
    /// is given before it may be closed to make room for a newer one (once
    /// `limits.max_handshakes` or `limits.max_buffered_push_bytes` is reached): long enough for
    /// a real client's round trips, short enough that slow peers give way. Default 500 ms.
    pub evict_after: Duration,
    /// How long a stat-listener request may take to produce its answer's head (the cluster
    /// view waits for the broker); past it the answer is `503`. A long `/stat` body that has
    /// started streaming is not cut. Default 10 s.
    pub stat_request: Duration,
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
            cluster_query: Duration::from_secs(2),
            evict_after: Duration::from_millis(500),
            stat_request: Duration::from_secs(10),
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
    /// Publications one `POST /push` request may make: the elements of an array, each member
    /// of a `member_ids` list counting one. One more gets 413 and nothing is published.
    /// Default 1000.
    pub max_push_batch: usize,
    /// Members one `member_ids` list may name; one more gets 400. Default 1000.
    pub max_push_members: usize,
    /// `POST /disconnect` and `GET /presence` requests answered at once (each may ask every
    /// node of the cluster); one more gets `503` with `Retry-After`. Default 32.
    pub max_control_requests: usize,
    /// The most members one page of `GET /presence?app=` lists (`limit` may ask for fewer; 100
    /// when absent). Default 1000.
    pub max_presence_page: usize,
    /// The most pushes one page of `GET /history` returns (`limit` may ask for fewer; 100
    /// when absent; more is answered `400`). Default 1000.
    pub max_history_page: usize,
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
    /// Requests the stat listener answers at once (`/metrics`, `/stat`, `/readyz`, the
    /// dashboard...); one more is answered `503` with `Retry-After` at once, so a runaway
    /// scraper cannot pile up work. Default 64.
    pub max_stat_requests: usize,
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
            max_push_batch: PushLimits::DEFAULT_MAX_PUBLICATIONS,
            max_push_members: PushLimits::DEFAULT_MAX_MEMBERS,
            max_control_requests: 32,
            max_presence_page: 1000,
            max_history_page: 1000,
            accept_backlog: 4096,
            max_auth_message_bytes: 16 * 1024,
            max_handshakes: 1024,
            max_connections_per_ip: 0,
            max_buffered_push_bytes: 64 * 1024 * 1024,
            fd_reserve: 128,
            metrics_top_apps: 50,
            max_stat_requests: 64,
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

/// When the binary hands freed memory back to the operating system (`[memory]`; the policy
/// is explained in the binary's `memory` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Trim at all. Default `true` (glibc builds only; elsewhere it does nothing).
    pub trim: bool,
    /// How often the open sockets are compared with their recent peak. Default 5 s.
    pub trim_interval: Duration,
    /// Trim only once this many sockets (and at least a quarter of the peak) have closed
    /// since the peak. Default 256.
    pub trim_min_drop: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            trim: true,
            trim_interval: Duration::from_secs(5),
            trim_min_drop: 256,
        }
    }
}

/// A configuration, loaded and validated.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub memory: MemoryConfig,
}

impl Config {
    /// Reads and validates a TOML configuration file alone (no environment, no flags; the
    /// binary uses [`Layers`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Layers::default()
            .file(path)
            .load()
            .map(|loaded| loaded.config)
    }

    /// Validates TOML text alone; `path` names the source in errors and is the directory that
    /// relative paths start from.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Layers::default()
            .file(path)
            .load_text(Some(text))
            .map(|loaded| loaded.config)
    }
}

#[cfg(test)]
mod tests;
