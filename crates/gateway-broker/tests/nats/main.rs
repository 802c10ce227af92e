//! The NATS broker against real `nats-server` processes (JetStream and monitoring on), one per
//! test. Every step waits for what the broker reports (a recording `Inbound`) or polls the
//! server's monitor, each under a deadline; nothing sleeps a fixed time.
//!
//! - `core`: NATS core pub/sub, the cluster view, configuration (apps without history).
//! - `history`: the JetStream history: positions, reads, bounds, restarts.
//!
//! Run with: `cargo test -p gateway-broker --test nats` (needs `nats-server` on the PATH).
#![allow(clippy::unwrap_used)]

mod core;
mod history;
mod support;
