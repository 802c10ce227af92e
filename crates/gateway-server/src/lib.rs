//! The network side of ws-gateway: hyper listeners in front of the hub of `gateway-core` and
//! the authenticators of `gateway-auth`.
//!
//! - the main listener: WebSocket upgrades (any path) and `POST /push`; a connection's first
//!   request is read by hand, so that an upgrade needs neither hyper nor a second task;
//! - the stat listener, a tower stack (`http::stat_stack`): `GET /stat` (plain or JSON, streamed
//!   a page at a time), `/metrics`, `/healthz`, `/readyz`, `/api/overview` and the dashboard;
//! - [`config`]: the layered configuration (defaults, TOML file, `WS_GATEWAY_*`, flags) and
//!   what SIGHUP reloads; [`cli`]: the `ws-gateway` binary; [`logging`]: text or JSON lines.
//!
//! Each WebSocket connection is one task that owns its socket; pushes reach it through a
//! bounded outbox that is filled without waiting, so one slow client never delays another.
//! Hostile or careless peers are bounded before they cost anything: connections still sending
//! their head (a pool per listener, the oldest giving way), one total deadline per head, push
//! bodies read before they take a dispatch slot, every client frame metered against the rate
//! and size limits, and the limits fitted under the process's open-file limit.
//! This crate does not decide protocol policy (that is the hub's) nor whether a token is valid
//! (that is the authenticator's).
//!
//! The modules, top to bottom: each imports only modules below it, and any of them may use
//! `shared` (what every connection task holds, the node among it) and the leaves `io`,
//! `config`, `counters`, `admission`, `log_limit` (rate-limited refusal lines), `memory` (the
//! memory-release policy) and `error`:
//! - `server`: [`Gateway`], which binds the listeners, runs them and shuts down;
//! - `accept`: the accept loops, and each connection from its accept to a WebSocket or hyper;
//! - `http`: refusals and routing; `http::handshake`, the hand-read first request;
//!   `http::upgrade`, `http::push`, `http::admin` (`/stat`), `http::overview`, `http::pages`
//!   (the embedded dashboard and demo client) and `http::stat_stack`;
//! - `metrics`: the Prometheus exposition, read from the counters at scrape time;
//! - `ws`: a WebSocket connection's task, the frame meter, heartbeats, and `ws::close`, the
//!   reasons a connection ends and their close codes;
//! - `node`: [`Node`], the hub, the connections' outboxes (`node::outbox`, which the
//!   connection's task drains) and the broker; frames held until the broker confirms a topic;
//!   the node's report for the cluster view. It imports nothing above it.

mod accept;
mod admission;
pub mod cli;
pub mod config;
mod counters;
mod error;
mod http;
mod io;
mod log_limit;
pub mod logging;
mod memory;
mod metrics;
mod node;
mod server;
mod shared;
pub mod tls;
mod ws;

pub use config::{
    Access, AuthConfig, BrokerConfig, BrokerKind, CacheSettings, Config, Layers, Limits, Loaded,
    MemoryConfig, NatsCredentials, ServerConfig, Timeouts,
};
pub use counters::Counters;
pub use error::{ConfigError, ServerError};
pub use node::Node;
pub use server::Gateway;
pub use shared::{LiveSettings, Reloader};
