//! What the gateway sends: the envelope every frame uses, the gateway's own replies, and the
//! close codes.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;

use crate::ids::{AppName, MemberId};
use crate::message::NO_MEMBER;
use crate::position::Position;

/// The `app` of every reply the gateway itself sends.
pub const GATEWAY_APP: &str = "gateway";

/// One encoded text frame: compact JSON, valid UTF-8, cheap to clone (the bytes are shared), so
/// a push is encoded once and handed to every recipient.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub(crate) fn from_string(text: String) -> Self {
        Frame(Bytes::from(text))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The frame as text; it is always valid UTF-8 because it is only ever built from a `String`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("frames are built from Strings")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The shared bytes, for a transport that takes ownership (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A frame encoded elsewhere (by another node, carried by a broker), taken as it is once
    /// it is known to be valid UTF-8: a text frame cannot carry anything else.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Frame(bytes))
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({})", self.as_str())
    }
}

/// `{"app":"<app>","member_id":<integer>,"text":"<string>"}`: field order is the wire order, and
/// serde_json's compact writer adds no whitespace.
#[derive(Serialize)]
pub(crate) struct Envelope<'a> {
    pub app: &'a str,
    pub member_id: i64,
    pub text: &'a str,
}

impl Envelope<'_> {
    pub(crate) fn encode(&self) -> Frame {
        // Sized for the frame up front: serde_json's own buffer doubles as it goes, and a
        // frame kept in history or a slow outbox would hold the spare half (a 143-byte frame
        // in a 256-byte buffer). The estimate allows for the escapes a JSON text needs
        // (its quotes); more grows the buffer as before.
        let estimate = self.app.len() + self.text.len() + self.text.len() / 8 + 48;
        let mut bytes = Vec::with_capacity(estimate);
        // Strings always serialize; the error type exists only for I/O writers.
        serde_json::to_writer(&mut bytes, self).expect("a struct of strings serializes");
        Frame::from_string(String::from_utf8(bytes).expect("serde_json writes UTF-8"))
    }
}

/// The `text` of a gateway reply: `{"code":<int>,"message":"<string>"}`.
#[derive(Serialize)]
struct ReplyText<'a> {
    code: u16,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
}

/// A reply of the gateway to one client message, as PROTOCOL.md Part 1 lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// 200 `hello stranger`: the client asked to be anonymous.
    HelloStranger,
    /// 200 `hello <member_id>`: the authenticator accepted the member.
    HelloMember(MemberId),
    /// 401 `unauthorized`: the authenticator refused; the connection continues as anonymous.
    Unauthorized,
    /// 400 `missing auth message`: no valid auth message in time; the connection is closed.
    MissingAuth,
    /// 200 `subscribe <app> success`.
    Subscribed(AppName),
    /// 400 `bad subscribe message`: the connection stays open.
    BadSubscribe,
    /// 403 `subscribe <app> forbidden`: a private app asked for by an anonymous connection.
    SubscribeForbidden(AppName),
    /// 429 `too many subscriptions`: the connection already holds the configured maximum of
    /// subscriptions (an extension: a client within the limit never sees it).
    TooManySubscriptions,
    /// 200 `unsubscribe <app> success`: the connection no longer receives the app's pushes.
    Unsubscribed(AppName),
    /// 404 `unsubscribe <app> not subscribed`: nothing to unsubscribe; nothing changes.
    NotSubscribed(AppName),
    /// 200 `pong`: the answer to `{"action":"ping"}`, a liveness check for clients (browsers)
    /// that cannot send WebSocket pings.
    Pong,
    /// 400 `unknown action`: a message with an `action` this gateway does not know; nothing
    /// changes.
    UnknownAction,
    /// 410 `unsubscribe <app> by server`: sent unasked when a backend removed this connection
    /// from the app (`POST /disconnect` with an `app`); the client should not resubscribe.
    UnsubscribedByServer(AppName),
    /// 200 `subscribe <app> success` for a subscription with history (`recover` or `since`),
    /// with what the client needs to know where it stands: `recovered` (only for `since`:
    /// whether every missed push follows), then `offset` and `epoch`, the newest position of
    /// the stream at that moment (absent when the app keeps no history, or the stream has
    /// not had a push yet: `{"offset":0,"epoch":""}` is then the client's `since`).
    SubscribedAt {
        app: AppName,
        recovered: Option<bool>,
        position: Option<Position>,
    },
    /// 409 `pushes to <app> lost`, sent unasked to a subscription with history when pushes of
    /// its stream were lost on the way to this node and the history could not replace them;
    /// `offset` and `epoch` say where the stream stands now (the client continues from there).
    PushesLost { app: AppName, position: Position },
}

impl Reply {
    pub fn code(&self) -> u16 {
        match self {
            Reply::HelloStranger
            | Reply::HelloMember(_)
            | Reply::Subscribed(_)
            | Reply::SubscribedAt { .. }
            | Reply::Unsubscribed(_)
            | Reply::Pong => 200,
            Reply::MissingAuth | Reply::BadSubscribe | Reply::UnknownAction => 400,
            Reply::Unauthorized => 401,
            Reply::SubscribeForbidden(_) => 403,
            Reply::NotSubscribed(_) => 404,
            Reply::PushesLost { .. } => 409,
            Reply::UnsubscribedByServer(_) => 410,
            Reply::TooManySubscriptions => 429,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Reply::HelloStranger => "hello stranger".to_owned(),
            Reply::HelloMember(member) => format!("hello {member}"),
            Reply::Unauthorized => "unauthorized".to_owned(),
            Reply::MissingAuth => "missing auth message".to_owned(),
            Reply::Subscribed(app) | Reply::SubscribedAt { app, .. } => {
                format!("subscribe {app} success")
            }
            Reply::PushesLost { app, .. } => format!("pushes to {app} lost"),
            Reply::BadSubscribe => "bad subscribe message".to_owned(),
            Reply::SubscribeForbidden(app) => format!("subscribe {app} forbidden"),
            Reply::TooManySubscriptions => "too many subscriptions".to_owned(),
            Reply::Unsubscribed(app) => format!("unsubscribe {app} success"),
            Reply::NotSubscribed(app) => format!("unsubscribe {app} not subscribed"),
            Reply::Pong => "pong".to_owned(),
            Reply::UnknownAction => "unknown action".to_owned(),
            Reply::UnsubscribedByServer(app) => format!("unsubscribe {app} by server"),
        }
    }

    /// The complete frame: the reply's JSON, escaped into the `text` of a `gateway` envelope.
    pub fn frame(&self) -> Frame {
        let (recovered, position) = match self {
            Reply::SubscribedAt {
                recovered,
                position,
                ..
            } => (*recovered, position.as_ref()),
            Reply::PushesLost { position, .. } => (Some(false), Some(position)),
            _ => (None, None),
        };
        let text = serde_json::to_string(&ReplyText {
            code: self.code(),
            message: &self.message(),
            recovered,
            offset: position.map(|p| p.offset),
            epoch: position.map(|p| p.epoch.as_str()),
        })
        .expect("a struct of a number and a string serializes");
        Envelope {
            app: GATEWAY_APP,
            member_id: NO_MEMBER,
            text: &text,
        }
        .encode()
    }
}

/// The close codes the gateway sends, with the reason text that goes with each.
///
/// 1000–1015 are RFC 6455's; 4000–4999 are this gateway's own (documented in
/// `docs/protocol.md`). A client may reconnect after any of them except where the table there
/// says it should not retry unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: a normal close, in answer to the client's own close.
    Normal,
    /// 1001: the gateway is shutting down.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol (bad framing, unmasked frames, …).
    ProtocolError,
    /// 1007: a text frame was not valid UTF-8.
    InvalidPayload,
    /// 1009: a client message was larger than `limits.max_message_bytes`.
    MessageTooBig,
    /// 4100: the connection's outbound queue overflowed because the client does not read fast
    /// enough; it missed messages and should reconnect.
    SlowConsumer,
    /// 4101: nothing (not even a pong) arrived from the client within the idle timeout.
    IdleTimeout,
    /// 4400: the first message was not a valid auth message.
    MissingAuth,
    /// 4408: no auth message arrived within the auth deadline.
    AuthTimeout,
    /// 4429: the client sent more messages than its rate limit allows.
    TooManyMessages,
    /// 1013: the gateway could not serve the connection now (its broker did not confirm a
    /// subscription in time); reconnecting, perhaps to another node, may work.
    TryAgainLater,
    /// 4403: a backend closed this member's connections (`POST /disconnect`: logout, ban,
    /// password change); reconnecting unchanged is pointless.
    Disconnected,
}

impl CloseCode {
    /// Every close code, for documentation and tests.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::SlowConsumer,
        CloseCode::IdleTimeout,
        CloseCode::MissingAuth,
        CloseCode::AuthTimeout,
        CloseCode::TooManyMessages,
        CloseCode::TryAgainLater,
        CloseCode::Disconnected,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::SlowConsumer => 4100,
            CloseCode::IdleTimeout => 4101,
            CloseCode::MissingAuth => 4400,
            CloseCode::AuthTimeout => 4408,
            CloseCode::TooManyMessages => 4429,
            CloseCode::TryAgainLater => 1013,
            CloseCode::Disconnected => 4403,
        }
    }

    /// The close frame's reason text (short: a close reason is at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid UTF-8",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::SlowConsumer => "slow consumer: outbound queue full",
            CloseCode::IdleTimeout => "idle timeout: no sign of life",
            CloseCode::MissingAuth => "missing auth message",
            CloseCode::AuthTimeout => "auth timeout",
            CloseCode::TooManyMessages => "too many messages",
            CloseCode::TryAgainLater => "try again later: subscription not confirmed",
            CloseCode::Disconnected => "disconnected by the server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse(name, AppName::DEFAULT_MAX_LEN).unwrap()
    }

    #[test]
    fn every_reply_matches_the_protocol_byte_for_byte() {
        let cases = [
            (
                Reply::HelloStranger,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"hello stranger\"}"}"#,
            ),
            (
                Reply::HelloMember(MemberId::new(123456).unwrap()),
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"hello 123456\"}"}"#,
            ),
            (
                Reply::Unauthorized,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":401,\"message\":\"unauthorized\"}"}"#,
            ),
            (
                Reply::MissingAuth,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":400,\"message\":\"missing auth message\"}"}"#,
            ),
            (
                Reply::Subscribed(app("match")),
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"subscribe match success\"}"}"#,
            ),
            (
                Reply::BadSubscribe,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":400,\"message\":\"bad subscribe message\"}"}"#,
            ),
            (
                Reply::SubscribeForbidden(app("im")),
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":403,\"message\":\"subscribe im forbidden\"}"}"#,
            ),
            (
                Reply::TooManySubscriptions,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":429,\"message\":\"too many subscriptions\"}"}"#,
            ),
            (
                Reply::Unsubscribed(app("match")),
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"unsubscribe match success\"}"}"#,
            ),
            (
                Reply::NotSubscribed(app("match")),
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":404,\"message\":\"unsubscribe match not subscribed\"}"}"#,
            ),
            (
                Reply::Pong,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"pong\"}"}"#,
            ),
            (
                Reply::UnknownAction,
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":400,\"message\":\"unknown action\"}"}"#,
            ),
            (
                Reply::UnsubscribedByServer(app("im")),
                r#"{"app":"gateway","member_id":-1,"text":"{\"code\":410,\"message\":\"unsubscribe im by server\"}"}"#,
            ),
        ];
        for (reply, expected) in cases {
            assert_eq!(reply.frame().as_str(), expected);
        }
    }

    #[test]
    fn app_names_in_replies_are_escaped_twice() {
        let frame = Reply::Subscribed(app("a\"b")).frame();
        assert_eq!(
            frame.as_str(),
            r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"subscribe a\\\"b success\"}"}"#
        );
    }

    #[test]
    fn envelope_escapes_text_and_keeps_non_ascii() {
        let frame = Envelope {
            app: "chat",
            member_id: 42,
            text: "line\n\"quoted\" é \u{1}",
        }
        .encode();
        assert_eq!(
            frame.as_str(),
            "{\"app\":\"chat\",\"member_id\":42,\"text\":\"line\\n\\\"quoted\\\" é \\u0001\"}"
        );
    }

    #[test]
    fn close_codes_are_in_the_documented_ranges() {
        let mut seen = std::collections::HashSet::new();
        for code in CloseCode::ALL {
            let n = code.code();
            assert!(matches!(n, 1000..=1015) || (4000..5000).contains(&n));
            assert!(code.reason().len() <= 123);
            assert!(seen.insert(n), "{n} used twice");
        }
    }
}
