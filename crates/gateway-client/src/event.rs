//! What the client hands to its user: pushes, and events about the connection.

use std::time::Duration;

use crate::error::Error;

/// One push from a backend, as the gateway delivered it: `{"app","member_id","text"}`, and
/// for a subscription with recovery its place in the stream (`"offset"`, `"epoch"`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Push {
    /// The app it was pushed to (one this client subscribed to).
    pub app: String,
    /// The recipient member for a private app; `-1` for a public app.
    pub member_id: i64,
    /// The backend's text, unchanged (often JSON itself).
    pub text: String,
    /// Where the push stands in its stream: `Some` for an app subscribed with
    /// [`SubscribeOptions::recover`](crate::SubscribeOptions::recover) whose gateway keeps
    /// history for it, `None` otherwise.
    pub position: Option<Position>,
}

/// A place in a stream (one per public app, one per member of a private app): the
/// `offset`-th push of the run named `epoch`. Offsets start at 1 and grow by one per push;
/// a new epoch means the gateway lost the stream's history and started a new run.
/// [`Position::start`] (`{"offset":0,"epoch":""}`) stands before the first push of whatever
/// run the stream is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

impl Position {
    pub fn new(offset: u64, epoch: impl Into<String>) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    /// Before the first push of the stream's current run: what a client remembers when it
    /// subscribed to a stream that had no push yet.
    pub fn start() -> Position {
        Position::new(0, "")
    }
}

/// What the client counts about the streams it recovers, for monitoring and for tests (see
/// [`Client::stats`](crate::Client::stats)). Counts since the client was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Pushes dropped because their offset was not past the last one handed out in the same
    /// epoch (a duplicate). The gateway promises none; this stays 0 unless it breaks that.
    pub duplicates_dropped: u64,
    /// Offsets missing between two consecutive pushes of one epoch that the gateway did not
    /// announce as lost: pushes that went missing silently. The gateway promises none.
    pub offsets_skipped: u64,
    /// [`Event::PushesLost`] events: announced losses (`recovered:false`, or the 409 notice).
    pub losses_announced: u64,
}

/// How the gateway answered the auth message of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthOutcome {
    /// `200 hello <id>`: authenticated as this member; private apps of this member are open.
    Member(i64),
    /// `200 hello stranger`: the client asked to be anonymous.
    Anonymous,
    /// `401 unauthorized`: the member id and token were refused; the connection continues as
    /// anonymous (public apps only). The gateway does not close it, and neither does the client.
    Unauthorized,
}

/// Something that happened to the connection. Read them from [`Events`](crate::Events).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection is up and authenticated, and every app the client keeps was subscribed
    /// again (after a reconnection): from now on, every push accepted to these apps arrives.
    /// The first connection's event comes first on the stream.
    Connected {
        auth: AuthOutcome,
        /// The apps subscribed again on this connection, sorted (empty on the first one).
        resubscribed: Vec<String>,
    },
    /// The connection ended. `reconnect` says whether the client will try again (with
    /// [`Event::Reconnecting`] first); when it is `false` the event stream ends after this.
    Disconnected {
        cause: DisconnectCause,
        reconnect: bool,
    },
    /// The client waits `delay` before reconnection attempt `attempt` (1 for the first
    /// attempt since the last stable connection).
    Reconnecting { attempt: u32, delay: Duration },
    /// Reconnection attempt `attempt` failed; another follows after a longer wait.
    ReconnectFailed { attempt: u32, error: Error },
    /// `410 unsubscribe <app> by server`: a backend removed this connection from `app`. The
    /// client forgets the app and does not subscribe to it again by itself.
    UnsubscribedByServer { app: String },
    /// After a reconnection, the gateway refused to subscribe to `app` again (for example
    /// `403` because the token is no longer valid). The client forgets the app.
    ResubscribeFailed { app: String, error: Error },
    /// Pushes of `app`, subscribed with recovery, were lost and will not come: the gateway
    /// answered a resubscription with `"recovered":false` (its history no longer reaches back
    /// to the client's position, or the stream started a new epoch), or sent the unasked
    /// `409 pushes to <app> lost` (pushes lost between its broker and its node). The client
    /// continues from `position`, where the stream stands now (`None`: the gateway named no
    /// position, i.e. the stream has had no push in its current run).
    PushesLost {
        app: String,
        position: Option<Position>,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectCause {
    /// The gateway closed it with this close code and reason (see the close codes in
    /// `docs/protocol.md`).
    Closed { code: u16, reason: String },
    /// The connection ended without a close frame: reset, end of stream, I/O error, a frame
    /// this client cannot read (over its `max_message_bytes`), or a write that did not finish
    /// within the ping timeout.
    ConnectionLost(String),
    /// Nothing at all (no pong, no frame) arrived within `ping_timeout` after a ping.
    PingTimeout(Duration),
    /// The user called [`Client::close`](crate::Client::close) or dropped every
    /// [`Client`](crate::Client).
    ClosedByClient,
}

/// Close codes after which reconnecting unchanged is useless, so the client stops:
/// 4403 disconnected by a backend (logout, ban), 4400 missing auth message, 1002 protocol
/// error, 1007 invalid UTF-8, 1009 message too big.
pub const FINAL_CLOSE_CODES: [u16; 5] = [4403, 4400, 1002, 1007, 1009];

impl DisconnectCause {
    /// Whether the client stops after this instead of reconnecting: a close with one of
    /// [`FINAL_CLOSE_CODES`], or the user's own close.
    pub fn is_final(&self) -> bool {
        match self {
            DisconnectCause::Closed { code, .. } => FINAL_CLOSE_CODES.contains(code),
            DisconnectCause::ClosedByClient => true,
            DisconnectCause::ConnectionLost(_) | DisconnectCause::PingTimeout(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> DisconnectCause {
        DisconnectCause::Closed {
            code,
            reason: String::new(),
        }
    }

    #[test]
    fn only_the_documented_codes_and_the_users_close_are_final() {
        for code in FINAL_CLOSE_CODES {
            assert!(closed(code).is_final(), "{code}");
        }
        for code in [1000, 1001, 1011, 1013, 4100, 4101, 4408, 4429] {
            assert!(!closed(code).is_final(), "{code}");
        }
        assert!(DisconnectCause::ClosedByClient.is_final());
        assert!(!DisconnectCause::ConnectionLost("reset".into()).is_final());
        assert!(!DisconnectCause::PingTimeout(Duration::from_secs(1)).is_final());
    }
}
