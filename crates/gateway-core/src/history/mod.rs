//! History: the recent pushes of each stream, kept so a client that reconnects can recover what
//! it missed (`docs/protocol.md`, "History and recovery").
//!
//! - [`HistoryPolicy`]: how much each app keeps (`[history]` in the configuration: a default and
//!   overrides by name pattern), shared by every broker.
//! - [`HistoryRead`]: what a read of one stream returns, and [`HistoryRead::recovered`], the one
//!   rule that decides whether a client missed nothing.
//! - [`History`]: the in-memory history of a node on its own (the local broker), pure like the
//!   hub: the caller passes the time in.

mod policy;
mod read;
mod store;

pub use policy::{AppPattern, HistoryPolicy, StreamLimits};
pub use read::HistoryRead;
pub use store::History;
