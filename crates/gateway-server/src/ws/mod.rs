//! The WebSocket side: one task per connection, which owns its socket.
//!
//! - [`connection`]: the task: authenticate, then carry frames both ways until the end;
//! - the outbox it drains is the node's (`node::outbox`): the node fills it;
//! - [`frame_meter`]: every client frame metered against the rate and size limits, under
//!   tungstenite;
//! - [`liveness`]: heartbeats and the rate limit's token bucket, free of I/O;
//! - [`close`]: why a connection ends, and the close code each reason is given.

pub(crate) mod close;
mod connection;
mod frame_meter;
mod liveness;

pub(crate) use connection::{serve, websocket};
