//! Parsing of the messages the gateway receives: a client's auth message, a client's subscribe
//! request, and a backend's push.
//!
//! The seed protocol tells its client messages apart by position (the first one is the auth
//! message) and by keys, never by a type tag, so each parser accepts exactly one shape and
//! ignores unknown keys. Wrong types are refused, never coerced.

use serde::Deserialize;

use crate::error::MessageError;
use crate::frame::{Envelope, Frame};
use crate::ids::{AppName, MemberId};
use crate::position::{Epoch, Position, Recovery, Since, positioned_frame};

/// Deserializes `payload` as `T`, accepting only a JSON object.
///
/// serde's derived structs also accept a JSON array of the fields in order (`[7,"x"]`), which
/// the protocol does not allow, so the top-level value must start with `{`.
fn from_object<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, MessageError> {
    let first = payload
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(MessageError::Malformed("not a JSON object".to_owned()));
    }
    Ok(serde_json::from_slice(payload)?)
}

/// The `member_id` that the envelope carries for anything that is not a private message.
pub const NO_MEMBER: i64 = -1;

/// The first message of a connection: `{"member_id":123456,"token":"654321"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `member_id` < 0: the client asks to be anonymous; the token is not looked at.
    Anonymous,
    /// `member_id` > 0: the authenticator decides whether `token` proves this member.
    Member { member: MemberId, token: String },
}

#[derive(Deserialize)]
struct RawAuth {
    member_id: i64,
    // `null` and a missing token both mean "", as in the original Go service.
    #[serde(default)]
    token: Option<String>,
}

impl AuthRequest {
    /// Parses a connection's first message. Any error means "missing auth message".
    pub fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        let raw: RawAuth = from_object(payload)?;
        match raw.member_id {
            0 => Err(MessageError::ZeroMemberId),
            id if id < 0 => Ok(AuthRequest::Anonymous),
            id => Ok(AuthRequest::Member {
                member: MemberId::new(id).expect("id > 0 in this arm"),
                token: raw.token.unwrap_or_default(),
            }),
        }
    }
}

/// A subscribe request: `{"app":"match"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub app: AppName,
}

#[derive(Deserialize)]
struct RawSubscribe<'a> {
    #[serde(borrow)]
    app: std::borrow::Cow<'a, str>,
}

impl SubscribeRequest {
    /// Parses a message received after authentication. Any error means "bad subscribe message".
    pub fn parse(payload: &[u8], max_app_name_len: usize) -> Result<Self, MessageError> {
        let raw: RawSubscribe<'_> = from_object(payload)?;
        Ok(SubscribeRequest {
            app: AppName::parse(&raw.app, max_app_name_len)?,
        })
    }
}

/// A message a client sends after authentication: the seed's subscribe request, or one of the
/// extensions told apart by an `"action"` key (`docs/protocol.md`, Part 2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientRequest {
    /// `{"app":"match"}` or `{"app":"match","action":"subscribe"}`.
    Subscribe(AppName),
    /// A subscribe request with `"recover":true` or `"since":{"offset":N,"epoch":"e"}`: the
    /// subscription's pushes carry positions, and with `since` the missed ones come first.
    SubscribeWithHistory(AppName, Recovery),
    /// `{"app":"match","action":"unsubscribe"}`.
    Unsubscribe(AppName),
    /// `{"action":"ping"}`: an application-level liveness check (an `app`, if any, is ignored).
    Ping,
    /// An `action` this gateway does not know: answered, and nothing changes.
    UnknownAction,
}

#[derive(Deserialize)]
struct RawRequest {
    // Absent keys are `None`; present ones must have the right type (`null` is refused).
    #[serde(default, deserialize_with = "string_if_present")]
    app: Option<String>,
    #[serde(default, deserialize_with = "string_if_present")]
    action: Option<String>,
    #[serde(default, deserialize_with = "bool_if_present")]
    recover: Option<bool>,
    #[serde(default, deserialize_with = "since_if_present")]
    since: Option<RawSince>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSince {
    offset: u64,
    epoch: String,
}

fn bool_if_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    bool::deserialize(d).map(Some)
}

fn since_if_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RawSince>, D::Error> {
    RawSince::deserialize(d).map(Some)
}

impl RawSince {
    /// `{"offset":0,"epoch":""}` is "before the first push"; any other empty epoch, or an
    /// epoch the gateway could not have made, is a bad message.
    fn parse(self) -> Result<Since, MessageError> {
        if self.epoch.is_empty() && self.offset == 0 {
            return Ok(Since::Start);
        }
        let epoch = Epoch::parse(&self.epoch)
            .map_err(|e| MessageError::Malformed(format!("since: {e}")))?;
        Ok(Since::After(Position::new(self.offset, epoch)))
    }
}

fn string_if_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

impl ClientRequest {
    /// Parses a message received after authentication. Any error means "bad subscribe
    /// message", as in the seed: a malformed message, an `app` or `action` of the wrong type, a
    /// missing or invalid `app` where the action needs one.
    pub fn parse(payload: &[u8], max_app_name_len: usize) -> Result<Self, MessageError> {
        let raw: RawRequest = from_object(payload)?;
        let app = || match &raw.app {
            Some(app) => Ok(AppName::parse(app, max_app_name_len)?),
            None => Err(MessageError::Malformed("missing field `app`".to_owned())),
        };
        match raw.action.as_deref() {
            None | Some("subscribe") => {
                let app = app()?;
                match (raw.recover, raw.since) {
                    (_, Some(since)) if raw.recover != Some(false) => Ok(
                        ClientRequest::SubscribeWithHistory(app, Recovery::Since(since.parse()?)),
                    ),
                    (Some(false), Some(_)) => Err(MessageError::Malformed(
                        "`since` with `\"recover\":false`".to_owned(),
                    )),
                    (Some(true), None) => Ok(ClientRequest::SubscribeWithHistory(
                        app,
                        Recovery::Positions,
                    )),
                    _ => Ok(ClientRequest::Subscribe(app)),
                }
            }
            Some("unsubscribe") => Ok(ClientRequest::Unsubscribe(app()?)),
            Some("ping") => Ok(ClientRequest::Ping),
            Some(_) => Ok(ClientRequest::UnknownAction),
        }
    }
}

/// A push from a backend: `{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub app: AppName,
    /// Carried through as given for a public app; names the recipient for a private app.
    pub member_id: i64,
    pub text: String,
}

#[derive(Deserialize)]
struct RawPush<'a> {
    #[serde(borrow)]
    app: std::borrow::Cow<'a, str>,
    // Present means "an integer": `null` is a wrong type, not an absent key.
    #[serde(default, deserialize_with = "integer_if_present")]
    member_id: Option<i64>,
    text: String,
}

fn integer_if_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64::deserialize(d).map(Some)
}

impl PushMessage {
    /// Parses a `POST /push` body. Any error means `400 Bad Request`.
    pub fn parse(body: &[u8], max_app_name_len: usize) -> Result<Self, MessageError> {
        let raw: RawPush<'_> = from_object(body)?;
        Ok(PushMessage {
            app: AppName::parse(&raw.app, max_app_name_len)?,
            member_id: raw.member_id.unwrap_or(NO_MEMBER),
            text: raw.text,
        })
    }
}

/// A push ready for delivery: its envelope encoded once, shared by every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub app: AppName,
    pub member_id: i64,
    /// The seed's envelope, exactly what a subscriber without positions receives.
    pub frame: Frame,
    /// The push's place in its stream, when its app keeps history (given by the history
    /// store: the node's own, or the broker's); `None` otherwise.
    pub position: Option<Position>,
}

impl Publication {
    /// The frame for subscribers that asked for positions: [`Publication::frame`] with
    /// `"offset"` and `"epoch"` appended, or `None` when the push has no position.
    pub fn positioned_frame(&self) -> Option<Frame> {
        self.position
            .as_ref()
            .map(|position| positioned_frame(&self.frame, position))
    }
}

impl From<PushMessage> for Publication {
    fn from(push: PushMessage) -> Self {
        let frame = Envelope {
            app: push.app.as_str(),
            member_id: push.member_id,
            text: &push.text,
        }
        .encode();
        Publication {
            app: push.app,
            member_id: push.member_id,
            frame,
            position: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = AppName::DEFAULT_MAX_LEN;

    fn member(id: i64, token: &str) -> AuthRequest {
        AuthRequest::Member {
            member: MemberId::new(id).unwrap(),
            token: token.to_owned(),
        }
    }

    #[test]
    fn auth_member_with_token() {
        let parsed = AuthRequest::parse(br#"{"member_id":123456,"token":"654321"}"#);
        assert_eq!(parsed, Ok(member(123456, "654321")));
    }

    #[test]
    fn auth_negative_member_is_anonymous_whatever_the_token() {
        for payload in [
            &br#"{"member_id":-1,"token":""}"#[..],
            br#"{"member_id":-42,"token":"x"}"#,
            br#"{"member_id":-1}"#,
        ] {
            assert_eq!(AuthRequest::parse(payload), Ok(AuthRequest::Anonymous));
        }
    }

    #[test]
    fn auth_missing_or_null_token_is_empty() {
        assert_eq!(AuthRequest::parse(br#"{"member_id":7}"#), Ok(member(7, "")));
        assert_eq!(
            AuthRequest::parse(br#"{"member_id":7,"token":null}"#),
            Ok(member(7, ""))
        );
    }

    #[test]
    fn auth_ignores_unknown_keys() {
        assert_eq!(
            AuthRequest::parse(br#"{"member_id":7,"token":"t","device":"ios","n":[1]}"#),
            Ok(member(7, "t"))
        );
    }

    #[test]
    fn auth_rejects_every_malformed_variant() {
        let bad: &[&[u8]] = &[
            b"",
            b"hello",
            b"{",
            b"[]",
            br#"[7,"654321"]"#,
            b"123",
            b"\"member_id\"",
            b"null",
            br#"{}"#,
            br#"{"token":"654321"}"#,
            br#"{"member_id":0,"token":"x"}"#,
            br#"{"member_id":null}"#,
            br#"{"member_id":"123456"}"#,
            br#"{"member_id":1.5}"#,
            br#"{"member_id":1.0}"#,
            br#"{"member_id":1e3}"#,
            br#"{"member_id":true}"#,
            br#"{"member_id":99999999999999999999}"#,
            br#"{"member_id":7,"token":654321}"#,
            br#"{"member_id":7,"token":["a"]}"#,
            br#"{"member_id":7} trailing"#,
            br#"{"member_id":7,"member_id":8}"#,
            b"\xff\xfe",
        ];
        for payload in bad {
            assert!(
                AuthRequest::parse(payload).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn subscribe_request() {
        let parsed = SubscribeRequest::parse(br#"{"app":"match"}"#, MAX).unwrap();
        assert_eq!(parsed.app.as_str(), "match");
        // Escapes are decoded; unknown keys are ignored.
        let parsed = SubscribeRequest::parse(br#"{"app":"m\u0061tch","x":1}"#, MAX).unwrap();
        assert_eq!(parsed.app.as_str(), "match");
    }

    #[test]
    fn subscribe_rejects_every_malformed_variant() {
        let bad: &[&[u8]] = &[
            b"",
            b"match",
            b"[\"match\"]",
            b"{}",
            br#"{"app":""}"#,
            br#"{"app":null}"#,
            br#"{"app":1}"#,
            br#"{"app":["match"]}"#,
            br#"{"app":"a\nb"}"#,
            br#"{"member_id":123456,"token":"654321"}"#,
        ];
        for payload in bad {
            assert!(
                SubscribeRequest::parse(payload, MAX).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn subscribe_enforces_the_app_name_limit_at_its_boundary() {
        assert!(SubscribeRequest::parse(br#"{"app":"abcd"}"#, 4).is_ok());
        assert!(SubscribeRequest::parse(br#"{"app":"abcde"}"#, 4).is_err());
    }

    #[test]
    fn client_requests_by_action() {
        let app = |name: &str| AppName::parse(name, MAX).unwrap();
        let parse = |payload: &str| ClientRequest::parse(payload.as_bytes(), MAX);
        assert_eq!(
            parse(r#"{"app":"match"}"#),
            Ok(ClientRequest::Subscribe(app("match")))
        );
        assert_eq!(
            parse(r#"{"app":"match","action":"subscribe"}"#),
            Ok(ClientRequest::Subscribe(app("match")))
        );
        assert_eq!(
            parse(r#"{"action":"unsubscribe","app":"match","x":[1]}"#),
            Ok(ClientRequest::Unsubscribe(app("match")))
        );
        assert_eq!(parse(r#"{"action":"ping"}"#), Ok(ClientRequest::Ping));
        assert_eq!(
            parse(r#"{"action":"ping","app":""}"#),
            Ok(ClientRequest::Ping)
        );
        for unknown in [
            r#"{"app":"match","action":"Unsubscribe"}"#,
            r#"{"app":"match","action":""}"#,
            r#"{"action":"publish"}"#,
        ] {
            assert_eq!(
                parse(unknown),
                Ok(ClientRequest::UnknownAction),
                "{unknown}"
            );
        }
    }

    #[test]
    fn client_requests_refuse_wrong_types_and_missing_apps() {
        for bad in [
            r#"{"app":"match","action":null}"#,
            r#"{"app":"match","action":1}"#,
            r#"{"app":"match","action":["unsubscribe"]}"#,
            r#"{"action":"unsubscribe"}"#,
            r#"{"action":"unsubscribe","app":""}"#,
            r#"{"action":"subscribe","app":null}"#,
            r#"{"action":"ping","app":5}"#,
            r#"{"action":"ping","action":"ping"}"#,
            r#"["match"]"#,
            "",
        ] {
            assert!(
                ClientRequest::parse(bad.as_bytes(), MAX).is_err(),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn every_seed_subscribe_message_means_the_same_to_both_parsers() {
        for payload in [r#"{"app":"match"}"#, r#"{"app":"m\u0061tch","x":1}"#] {
            let seed = SubscribeRequest::parse(payload.as_bytes(), MAX).unwrap();
            assert_eq!(
                ClientRequest::parse(payload.as_bytes(), MAX),
                Ok(ClientRequest::Subscribe(seed.app))
            );
        }
    }

    #[test]
    fn push_message() {
        let push = PushMessage::parse(
            br#"{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(push.app.as_str(), "match");
        assert_eq!(push.member_id, -1);
        assert_eq!(push.text, r#"{"hello":"world"}"#);
    }

    #[test]
    fn push_member_id_defaults_to_minus_one() {
        let push = PushMessage::parse(br#"{"app":"match","text":"x"}"#, MAX).unwrap();
        assert_eq!(push.member_id, NO_MEMBER);
    }

    #[test]
    fn push_rejects_wrong_types_instead_of_coercing() {
        let bad: &[&[u8]] = &[
            b"",
            b"not json",
            b"[]",
            br#"["match",-1,"x"]"#,
            br#"{"text":"x"}"#,
            br#"{"app":"","text":"x"}"#,
            br#"{"app":"match"}"#,
            br#"{"app":"match","text":null}"#,
            br#"{"app":"match","text":{"hello":"world"}}"#,
            br#"{"app":"match","text":5}"#,
            br#"{"app":5,"text":"x"}"#,
            br#"{"app":"match","member_id":"5","text":"x"}"#,
            br#"{"app":"match","member_id":null,"text":"x"}"#,
            br#"{"app":"match","member_id":1.5,"text":"x"}"#,
        ];
        for body in bad {
            assert!(
                PushMessage::parse(body, MAX).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn publication_encodes_the_envelope_once() {
        let push = PushMessage::parse(
            br#"{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}"#,
            MAX,
        )
        .unwrap();
        let publication = Publication::from(push);
        assert_eq!(
            publication.frame.as_str(),
            r#"{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}"#
        );
    }
}
