//! Why a WebSocket connection ends, and the close code each reason is given. The gateway's
//! codes are chosen here and nowhere else; the hub (`gateway-core`) chooses its own (a full
//! outbox, a missing or late auth message), which reach the connection through its outbox as
//! [`CloseReason::Requested`].

use std::net::SocketAddr;

use gateway_core::{CloseCode, ConnId};
use tokio_tungstenite::tungstenite;
use tracing::{debug, info};

use super::frame_meter::Exceeded;
use crate::counters::Counters;
use crate::log_limit::REFUSALS;

/// Why the connection loop ended.
pub(crate) enum End {
    /// Close the socket with the reason's code (after writing what was queued).
    Close(CloseReason),
    /// The client sent a close frame: let tungstenite send the echo, then drop.
    ClientClosed,
    /// The client vanished or the socket failed.
    Gone,
}

/// Why the gateway closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Asked for through the connection's outbox, the code already chosen: by the hub (a slow
    /// consumer, no valid auth message in time) or by the node's shutdown.
    Requested(CloseCode),
    /// The gateway is shutting down.
    ShuttingDown,
    /// Nothing arrived from the client, not even a pong, within the idle timeout.
    IdleTimeout,
    /// The client sent more frames than its rate limit allows (the frame meter).
    TooManyMessages,
    /// A frame or message larger than the limit of the moment (the frame meter, or
    /// tungstenite's backstop).
    MessageTooBig,
    /// A text message that is not valid UTF-8.
    InvalidPayload,
    /// The client broke the WebSocket protocol (tungstenite refused a frame).
    ProtocolError,
}

impl CloseReason {
    /// The code of the close frame sent for this reason.
    pub(crate) const fn code(self) -> CloseCode {
        match self {
            CloseReason::Requested(code) => code,
            CloseReason::ShuttingDown => CloseCode::GoingAway,
            CloseReason::IdleTimeout => CloseCode::IdleTimeout,
            CloseReason::TooManyMessages => CloseCode::TooManyMessages,
            CloseReason::MessageTooBig => CloseCode::MessageTooBig,
            CloseReason::InvalidPayload => CloseCode::InvalidPayload,
            CloseReason::ProtocolError => CloseCode::ProtocolError,
        }
    }

    /// Whether the frames already queued still go out before the close frame (say, the replies
    /// to the requests before a flood): not when the client is not reading at all.
    pub(crate) fn flushes_queue(self) -> bool {
        !matches!(
            self.code(),
            CloseCode::SlowConsumer | CloseCode::IdleTimeout
        )
    }

    /// Counts the close under its code ([`Counters::closes`]) and logs it: at `info`, with
    /// the running count and rate-limited ([`crate::log_limit`]), the closes that tell an
    /// operator about the clients or the load; the others at `debug`.
    pub(crate) fn record(self, conn: ConnId, peer: SocketAddr, counters: &Counters) {
        let code = self.code();
        let total = counters.closed(code);
        match code {
            CloseCode::SlowConsumer
            | CloseCode::IdleTimeout
            | CloseCode::TooManyMessages
            | CloseCode::MessageTooBig
            | CloseCode::TryAgainLater => {
                if let Some(suppressed) = REFUSALS.admit() {
                    info!(%conn, %peer, code = code.code(), reason = code.reason(), total, suppressed, "closing connection");
                }
            }
            _ => debug!(%conn, %peer, code = code.code(), "closing connection"),
        }
    }
}

/// The end for a failed read: the client broke a limit or the protocol, or just vanished.
pub(crate) fn socket_error(conn: ConnId, err: tungstenite::Error) -> End {
    let reason = match &err {
        tungstenite::Error::Io(io) => match Exceeded::of(io) {
            Some(Exceeded::Rate) => CloseReason::TooManyMessages,
            Some(Exceeded::Size) => CloseReason::MessageTooBig,
            None => {
                debug!(%conn, %err, "connection error");
                return End::Gone;
            }
        },
        tungstenite::Error::Capacity(_) => CloseReason::MessageTooBig,
        tungstenite::Error::Utf8(_) => CloseReason::InvalidPayload,
        tungstenite::Error::Protocol(_) => CloseReason::ProtocolError,
        _ => {
            debug!(%conn, %err, "connection error");
            return End::Gone;
        }
    };
    debug!(%conn, %err, code = reason.code().code(), "bad client frame");
    End::Close(reason)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn end_of(err: tungstenite::Error) -> Option<CloseCode> {
        match socket_error(ConnId::new(1), err) {
            End::Close(reason) => Some(reason.code()),
            End::ClientClosed | End::Gone => None,
        }
    }

    #[test]
    fn a_broken_limit_closes_with_its_code_and_a_lost_socket_with_none() {
        let meter = |why| tungstenite::Error::Io(io::Error::other(why));
        assert_eq!(
            end_of(meter(Exceeded::Rate)),
            Some(CloseCode::TooManyMessages)
        );
        assert_eq!(
            end_of(meter(Exceeded::Size)),
            Some(CloseCode::MessageTooBig)
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(end_of(tungstenite::Error::Io(reset)), None);
        assert_eq!(end_of(tungstenite::Error::ConnectionClosed), None);
    }

    #[test]
    fn a_client_that_does_not_read_gets_no_queued_frames_before_its_close() {
        assert!(!CloseReason::Requested(CloseCode::SlowConsumer).flushes_queue());
        assert!(!CloseReason::IdleTimeout.flushes_queue());
        assert!(CloseReason::ShuttingDown.flushes_queue());
        assert!(CloseReason::TooManyMessages.flushes_queue());
    }
}
