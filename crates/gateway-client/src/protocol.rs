//! The wire format, as `docs/protocol.md` writes it: the messages the client sends, and what a
//! frame from the gateway means (a push, a reply to the oldest request, a server-side
//! unsubscribe). No I/O here.

use serde_json::Value;

use crate::error::Error;
use crate::event::{AuthOutcome, Position, Push};

/// The `app` of the gateway's own frames (replies), whose `member_id` is always -1.
const GATEWAY_APP: &str = "gateway";

/// Who the client says it is in its first message.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Anonymous,
    Member { id: i64, token: String },
}

impl std::fmt::Debug for Credentials {
    // The token is a secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Member { id, .. } => write!(f, "Member({id}, token redacted)"),
        }
    }
}

impl Credentials {
    /// The auth message: `{"member_id":N,"token":"…"}`, or the anonymous
    /// `{"member_id":-1,"token":""}`.
    pub(crate) fn auth_message(&self) -> String {
        let (member_id, token) = match self {
            Credentials::Anonymous => (-1, ""),
            Credentials::Member { id, token } => (*id, token.as_str()),
        };
        format!(
            r#"{{"member_id":{member_id},"token":{}}}"#,
            json_string(token)
        )
    }
}

/// A request that the gateway answers with exactly one reply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `recover`: the subscription asks for positions, and after a reconnection for the
    /// pushes it missed.
    Subscribe {
        app: String,
        recover: bool,
    },
    Unsubscribe(String),
}

impl Request {
    /// The message on the wire, with its keys in the documented order. Subscribe is the
    /// seed's `{"app":"x"}` (no `action`), so it works with every gateway, old or new; with
    /// recovery it is `{"app":"x","recover":true}`, or with `since` (the last position the
    /// client handed out) `{"app":"x","since":{"offset":41,"epoch":"e1"}}`. `since` is only
    /// used by a subscribe with `recover`.
    pub(crate) fn message(&self, since: Option<&Position>) -> String {
        match self {
            Request::Subscribe {
                app,
                recover: false,
            } => format!(r#"{{"app":{}}}"#, json_string(app)),
            Request::Subscribe { app, recover: true } => match since {
                None => format!(r#"{{"app":{},"recover":true}}"#, json_string(app)),
                Some(since) => format!(
                    r#"{{"app":{},"since":{{"offset":{},"epoch":{}}}}}"#,
                    json_string(app),
                    since.offset,
                    json_string(&since.epoch)
                ),
            },
            Request::Unsubscribe(app) => {
                format!(r#"{{"app":{},"action":"unsubscribe"}}"#, json_string(app))
            }
        }
    }

    pub(crate) fn app(&self) -> &str {
        match self {
            Request::Subscribe { app, .. } | Request::Unsubscribe(app) => app,
        }
    }

    /// What the gateway's reply means for this request.
    pub(crate) fn outcome(&self, reply: &Reply) -> Result<(), Error> {
        let message = reply.message.as_str();
        match (self, reply.code) {
            (Request::Subscribe { app, .. }, 200)
                if message == format!("subscribe {app} success") =>
            {
                Ok(())
            }
            (Request::Subscribe { app, .. }, 403)
                if message == format!("subscribe {app} forbidden") =>
            {
                Err(Error::Forbidden { app: app.clone() })
            }
            (Request::Subscribe { .. }, 429) => Err(Error::TooManySubscriptions),
            (Request::Unsubscribe(app), 200) if message == format!("unsubscribe {app} success") => {
                Ok(())
            }
            (Request::Unsubscribe(app), 404)
                if message == format!("unsubscribe {app} not subscribed") =>
            {
                Err(Error::NotSubscribed { app: app.clone() })
            }
            _ => Err(Error::Refused {
                code: reply.code,
                message: reply.message.clone(),
            }),
        }
    }
}

/// The `text` of a gateway frame: `{"code":…,"message":"…"}`, and for a subscription with
/// recovery `"recovered"` (only when the request had `since`), `"offset"` and `"epoch"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) message: String,
    pub(crate) recovered: Option<bool>,
    /// Where the stream stands; `None` when the reply names no position (the stream had no
    /// push in its current run, or the app keeps no history).
    pub(crate) position: Option<Position>,
}

impl Reply {
    /// The auth reply's meaning; an error for anything else (the gateway answers the first
    /// message with one of these three, or `400 missing auth message` and a close).
    pub(crate) fn auth_outcome(&self) -> Result<AuthOutcome, Error> {
        match (self.code, self.message.as_str()) {
            (200, "hello stranger") => Ok(AuthOutcome::Anonymous),
            (401, "unauthorized") => Ok(AuthOutcome::Unauthorized),
            (200, hello) => hello
                .strip_prefix("hello ")
                .and_then(|id| id.parse().ok())
                .map(AuthOutcome::Member)
                .ok_or_else(|| self.unexpected()),
            _ => Err(self.unexpected()),
        }
    }

    fn unexpected(&self) -> Error {
        Error::Handshake(format!(
            "unexpected auth reply {} {:?}",
            self.code, self.message
        ))
    }
}

/// One text frame from the gateway, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A push to an app this connection subscribed to.
    Push(Push),
    /// The answer to the oldest request still waiting for one.
    Reply(Reply),
    /// `410 unsubscribe <app> by server`: sent without a request, after a backend's
    /// `POST /disconnect` with an `app`.
    UnsubscribedByServer { app: String },
    /// `409 pushes to <app> lost`: sent without a request to a subscription with recovery
    /// when pushes of its stream were lost on their way to the gateway's node and its history
    /// could not replace them; `position` is where the stream stands now.
    PushesLost {
        app: String,
        position: Option<Position>,
    },
}

impl Incoming {
    /// `None` for a frame that is not the gateway's envelope (a broken or foreign server).
    pub(crate) fn parse(frame: &str) -> Option<Incoming> {
        let Value::Object(mut envelope) = serde_json::from_str(frame).ok()? else {
            return None;
        };
        let member_id = envelope.get("member_id")?.as_i64()?;
        let Value::String(app) = envelope.remove("app")? else {
            return None;
        };
        let Value::String(text) = envelope.remove("text")? else {
            return None;
        };
        if app == GATEWAY_APP
            && member_id == -1
            && let Some(reply) = parse_reply(&text)
        {
            return Some(unasked(reply));
        }
        // A backend may push to an app named "gateway"; only a reply-shaped text is a reply.
        let position = parse_position(&envelope);
        Some(Incoming::Push(Push {
            app,
            member_id,
            text,
            position,
        }))
    }
}

/// The gateway's frames that answer no request (410, 409) are told apart from replies by
/// their code and message; everything else answers the oldest request.
fn unasked(reply: Reply) -> Incoming {
    let about = |prefix: &str, suffix: &str| {
        reply
            .message
            .strip_prefix(prefix)?
            .strip_suffix(suffix)
            .map(str::to_owned)
    };
    match reply.code {
        410 => match about("unsubscribe ", " by server") {
            Some(app) => Incoming::UnsubscribedByServer { app },
            None => Incoming::Reply(reply),
        },
        409 => match about("pushes to ", " lost") {
            Some(app) => Incoming::PushesLost {
                app,
                position: reply.position,
            },
            None => Incoming::Reply(reply),
        },
        _ => Incoming::Reply(reply),
    }
}

/// `"offset"` (an unsigned integer) and `"epoch"` (a string) of a push or a reply text; `None`
/// unless both are there and well-formed (a position is useless without either).
fn parse_position(object: &serde_json::Map<String, Value>) -> Option<Position> {
    let offset = object.get("offset")?.as_u64()?;
    let epoch = object.get("epoch")?.as_str()?;
    Some(Position::new(offset, epoch))
}

/// `s` as a JSON string literal, quotes and escapes included.
fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// A reply text; keys past `code` and `message` are read when they are the documented ones
/// and ignored otherwise, so a newer gateway's replies are still replies.
fn parse_reply(text: &str) -> Option<Reply> {
    let Value::Object(reply) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let code = u16::try_from(reply.get("code")?.as_u64()?).ok()?;
    let message = reply.get("message")?.as_str()?.to_owned();
    Some(Reply {
        code,
        message,
        recovered: reply.get("recovered").and_then(Value::as_bool),
        position: parse_position(&reply),
    })
}

/// The gateway's rule for app names that this client checks before sending: non-empty, no
/// control character. (Length is the gateway's configurable limit; it answers 400 past it.)
pub(crate) fn check_app(app: &str) -> Result<(), Error> {
    if app.is_empty() || app.chars().any(char::is_control) {
        return Err(Error::InvalidApp(app.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, message: &str) -> Reply {
        Reply {
            code,
            message: message.to_owned(),
            recovered: None,
            position: None,
        }
    }

    fn subscribe(app: &str, recover: bool) -> Request {
        Request::Subscribe {
            app: app.into(),
            recover,
        }
    }

    /// A gateway frame exactly as the server writes it.
    fn gateway_frame(code: u16, message: &str) -> String {
        format!(
            r#"{{"app":"gateway","member_id":-1,"text":"{{\"code\":{code},\"message\":\"{message}\"}}"}}"#
        )
    }

    #[test]
    fn messages_are_the_documented_bytes() {
        assert_eq!(
            Credentials::Anonymous.auth_message(),
            r#"{"member_id":-1,"token":""}"#
        );
        let member = Credentials::Member {
            id: 123456,
            token: "6\"5".to_owned(),
        };
        assert_eq!(
            member.auth_message(),
            r#"{"member_id":123456,"token":"6\"5"}"#
        );
        assert_eq!(format!("{member:?}"), "Member(123456, token redacted)");
        assert_eq!(
            subscribe("match", false).message(None),
            r#"{"app":"match"}"#
        );
        assert_eq!(
            Request::Unsubscribe("match".into()).message(None),
            r#"{"app":"match","action":"unsubscribe"}"#
        );
        assert_eq!(
            subscribe("match", true).message(None),
            r#"{"app":"match","recover":true}"#
        );
        assert_eq!(
            subscribe("match", true).message(Some(&Position::new(41, "e1"))),
            r#"{"app":"match","since":{"offset":41,"epoch":"e1"}}"#
        );
        assert_eq!(
            subscribe("m\"", true).message(Some(&Position::start())),
            r#"{"app":"m\"","since":{"offset":0,"epoch":""}}"#
        );
        // `since` belongs to recovery only.
        assert_eq!(
            subscribe("match", false).message(Some(&Position::start())),
            r#"{"app":"match"}"#
        );
    }

    #[test]
    fn frames_are_pushes_replies_or_server_unsubscribes() {
        assert_eq!(
            Incoming::parse(r#"{"app":"match","member_id":-1,"text":"goal"}"#),
            Some(Incoming::Push(Push {
                app: "match".into(),
                member_id: -1,
                text: "goal".into(),
                position: None,
            }))
        );
        assert_eq!(
            Incoming::parse(&gateway_frame(200, "subscribe match success")),
            Some(Incoming::Reply(reply(200, "subscribe match success")))
        );
        assert_eq!(
            Incoming::parse(&gateway_frame(410, "unsubscribe im by server")),
            Some(Incoming::UnsubscribedByServer { app: "im".into() })
        );
        // A backend's push to an app called "gateway" stays a push.
        assert_eq!(
            Incoming::parse(r#"{"app":"gateway","member_id":-1,"text":"hi"}"#),
            Some(Incoming::Push(Push {
                app: "gateway".into(),
                member_id: -1,
                text: "hi".into(),
                position: None,
            }))
        );
    }

    #[test]
    fn positions_are_read_from_pushes_replies_and_the_loss_notice() {
        assert_eq!(
            Incoming::parse(
                r#"{"app":"im","member_id":7,"text":"{\"n\":1}","offset":42,"epoch":"e1"}"#
            ),
            Some(Incoming::Push(Push {
                app: "im".into(),
                member_id: 7,
                text: r#"{"n":1}"#.into(),
                position: Some(Position::new(42, "e1")),
            }))
        );
        // Half a position, or a malformed one, is none.
        for frame in [
            r#"{"app":"a","member_id":-1,"text":"t","offset":42}"#,
            r#"{"app":"a","member_id":-1,"text":"t","offset":-1,"epoch":"e"}"#,
            r#"{"app":"a","member_id":-1,"text":"t","offset":1,"epoch":5}"#,
        ] {
            match Incoming::parse(frame) {
                Some(Incoming::Push(push)) => assert_eq!(push.position, None, "{frame}"),
                other => panic!("{frame}: {other:?}"),
            }
        }
        let positioned = r#"{"app":"gateway","member_id":-1,"text":"{\"code\":200,\"message\":\"subscribe match success\",\"recovered\":true,\"offset\":44,\"epoch\":\"e1\"}"}"#;
        assert_eq!(
            Incoming::parse(positioned),
            Some(Incoming::Reply(Reply {
                code: 200,
                message: "subscribe match success".into(),
                recovered: Some(true),
                position: Some(Position::new(44, "e1")),
            }))
        );
        let lost = r#"{"app":"gateway","member_id":-1,"text":"{\"code\":409,\"message\":\"pushes to match lost\",\"recovered\":false,\"offset\":50,\"epoch\":\"e1\"}"}"#;
        assert_eq!(
            Incoming::parse(lost),
            Some(Incoming::PushesLost {
                app: "match".into(),
                position: Some(Position::new(50, "e1")),
            })
        );
        // Another 409 is a reply like any other.
        assert_eq!(
            Incoming::parse(&gateway_frame(409, "conflict")),
            Some(Incoming::Reply(reply(409, "conflict")))
        );
    }

    #[test]
    fn frames_that_are_not_the_envelope_are_refused() {
        for frame in [
            "",
            "[]",
            "not json",
            r#"{"app":"a","text":"t"}"#,
            r#"{"app":"a","member_id":"7","text":"t"}"#,
            r#"{"app":1,"member_id":7,"text":"t"}"#,
            r#"{"app":"a","member_id":7,"text":{}}"#,
        ] {
            assert_eq!(Incoming::parse(frame), None, "{frame:?}");
        }
    }

    #[test]
    fn auth_replies() {
        assert_eq!(
            reply(200, "hello stranger").auth_outcome().unwrap(),
            AuthOutcome::Anonymous
        );
        assert_eq!(
            reply(200, "hello 777").auth_outcome().unwrap(),
            AuthOutcome::Member(777)
        );
        assert_eq!(
            reply(401, "unauthorized").auth_outcome().unwrap(),
            AuthOutcome::Unauthorized
        );
        for bad in [
            reply(400, "missing auth message"),
            reply(200, "hello"),
            reply(200, "subscribe x success"),
        ] {
            assert!(matches!(bad.auth_outcome(), Err(Error::Handshake(_))));
        }
    }

    #[test]
    fn replies_become_typed_outcomes() {
        let subscribe = subscribe("im", true);
        let unsubscribe = Request::Unsubscribe("im".into());
        assert!(
            subscribe
                .outcome(&reply(200, "subscribe im success"))
                .is_ok()
        );
        assert!(matches!(
            subscribe.outcome(&reply(403, "subscribe im forbidden")),
            Err(Error::Forbidden { app }) if app == "im"
        ));
        assert!(matches!(
            subscribe.outcome(&reply(429, "too many subscriptions")),
            Err(Error::TooManySubscriptions)
        ));
        assert!(matches!(
            subscribe.outcome(&reply(400, "bad subscribe message")),
            Err(Error::Refused { code: 400, .. })
        ));
        assert!(
            unsubscribe
                .outcome(&reply(200, "unsubscribe im success"))
                .is_ok()
        );
        assert!(matches!(
            unsubscribe.outcome(&reply(404, "unsubscribe im not subscribed")),
            Err(Error::NotSubscribed { app }) if app == "im"
        ));
        // A gateway without the verb answers it as a subscribe: not a success.
        assert!(matches!(
            unsubscribe.outcome(&reply(200, "subscribe im success")),
            Err(Error::Refused { code: 200, .. })
        ));
        assert!(matches!(
            unsubscribe.outcome(&reply(400, "unknown action")),
            Err(Error::Refused { code: 400, .. })
        ));
    }

    #[test]
    fn app_names_are_checked_before_sending() {
        assert!(check_app("match").is_ok());
        assert!(check_app("").is_err());
        assert!(check_app("a\nb").is_err());
    }
}
