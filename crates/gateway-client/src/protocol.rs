//! The wire format, as `docs/protocol.md` writes it: the messages the client sends, and what a
//! frame from the gateway means (a push, a reply to the oldest request, a server-side
//! unsubscribe). No I/O here.

use serde_json::Value;

use crate::error::Error;
use crate::event::{AuthOutcome, Push};

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
    Subscribe(String),
    Unsubscribe(String),
}

impl Request {
    /// The message on the wire, with its keys in the documented order. Subscribe is the
    /// seed's `{"app":"x"}` (no `action`), so it works with every gateway, old or new.
    pub(crate) fn message(&self) -> String {
        match self {
            Request::Subscribe(app) => format!(r#"{{"app":{}}}"#, json_string(app)),
            Request::Unsubscribe(app) => {
                format!(r#"{{"app":{},"action":"unsubscribe"}}"#, json_string(app))
            }
        }
    }

    pub(crate) fn app(&self) -> &str {
        match self {
            Request::Subscribe(app) | Request::Unsubscribe(app) => app,
        }
    }

    /// What the gateway's reply means for this request.
    pub(crate) fn outcome(&self, reply: &Reply) -> Result<(), Error> {
        let message = reply.message.as_str();
        match (self, reply.code) {
            (Request::Subscribe(app), 200) if message == format!("subscribe {app} success") => {
                Ok(())
            }
            (Request::Subscribe(app), 403) if message == format!("subscribe {app} forbidden") => {
                Err(Error::Forbidden { app: app.clone() })
            }
            (Request::Subscribe(_), 429) => Err(Error::TooManySubscriptions),
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

/// The `text` of a gateway frame: `{"code":…,"message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) message: String,
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
            let by_server = (reply.code == 410)
                .then(|| {
                    reply
                        .message
                        .strip_prefix("unsubscribe ")?
                        .strip_suffix(" by server")
                })
                .flatten();
            return Some(match by_server {
                Some(app) => Incoming::UnsubscribedByServer {
                    app: app.to_owned(),
                },
                None => Incoming::Reply(reply),
            });
        }
        // A backend may push to an app named "gateway"; only a reply-shaped text is a reply.
        Some(Incoming::Push(Push {
            app,
            member_id,
            text,
        }))
    }
}

/// `s` as a JSON string literal, quotes and escapes included.
fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

fn parse_reply(text: &str) -> Option<Reply> {
    let reply: Value = serde_json::from_str(text).ok()?;
    let code = u16::try_from(reply.get("code")?.as_u64()?).ok()?;
    let message = reply.get("message")?.as_str()?.to_owned();
    Some(Reply { code, message })
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
            Request::Subscribe("match".into()).message(),
            r#"{"app":"match"}"#
        );
        assert_eq!(
            Request::Unsubscribe("match".into()).message(),
            r#"{"app":"match","action":"unsubscribe"}"#
        );
    }

    #[test]
    fn frames_are_pushes_replies_or_server_unsubscribes() {
        assert_eq!(
            Incoming::parse(r#"{"app":"match","member_id":-1,"text":"goal"}"#),
            Some(Incoming::Push(Push {
                app: "match".into(),
                member_id: -1,
                text: "goal".into()
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
                text: "hi".into()
            }))
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
        let subscribe = Request::Subscribe("im".into());
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
