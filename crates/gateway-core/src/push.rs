//! `POST /push` bodies beyond the seed's single object: an array of pushes (a batch), and a
//! private push to several members at once (`member_ids`).
//!
//! A body is read as a whole before anything of it is published: one bad element refuses the
//! request, naming the element's index. A body that is one object without `member_ids` is the
//! seed's push, parsed by [`PushMessage::parse`] and refused with the same texts as in Part 1.
//!
//! Every element is exactly the seed's push object, plus the optional `member_ids`; wrong
//! types are refused, never coerced. Each recipient of a `member_ids` push gets its own
//! publication (its own `member_id` in the envelope), encoded only when it is taken from
//! [`PushBatch::publications`], so a request holds its parsed body, not every envelope at once.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::MessageError;
use crate::frame::Envelope;
use crate::hub::HubConfig;
use crate::ids::AppName;
use crate::message::{NO_MEMBER, Publication, PushMessage};

/// The bounds of one `POST /push` request. Every value has a documented default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimits {
    /// Publications one request may make: each element of an array counts one, and each
    /// member of a `member_ids` list counts one. Default: [`PushLimits::DEFAULT_MAX_PUBLICATIONS`].
    pub max_publications: usize,
    /// Members one `member_ids` list may name. Default: [`PushLimits::DEFAULT_MAX_MEMBERS`].
    pub max_members: usize,
}

impl PushLimits {
    pub const DEFAULT_MAX_PUBLICATIONS: usize = 500;
    pub const DEFAULT_MAX_MEMBERS: usize = 1000;
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            max_publications: PushLimits::DEFAULT_MAX_PUBLICATIONS,
            max_members: PushLimits::DEFAULT_MAX_MEMBERS,
        }
    }
}

/// What a `POST /push` body asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRequest {
    /// One object without `member_ids`: the seed's push, answered as in Part 1.
    Single(PushMessage),
    /// One object with `member_ids`: one publication per member, in the list's order.
    ToMembers(PushBatch),
    /// An array of push objects: their publications in array order.
    Batch(PushBatch),
}

/// Valid push objects, in order, ready to be published one publication at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBatch {
    items: Vec<Item>,
    /// The publications the items make, counted once at parse time.
    publications: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    app: AppName,
    text: String,
    recipients: Recipients,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Recipients {
    /// `member_id` as given (`-1` when absent), as a seed push carries it.
    As(i64),
    /// `member_ids`: distinct members (> 0) of a private app, in the list's order.
    Members(Vec<i64>),
}

impl Recipients {
    fn member_ids(&self) -> &[i64] {
        match self {
            Recipients::As(id) => std::slice::from_ref(id),
            Recipients::Members(ids) => ids,
        }
    }
}

impl PushBatch {
    /// The number of publications: what `{"accepted":N}` counts when all of them were taken.
    pub fn len(&self) -> usize {
        self.publications
    }

    /// Never true for a parsed batch (an empty array is refused); here for completeness.
    pub fn is_empty(&self) -> bool {
        self.publications == 0
    }

    /// The number of push objects (array elements; 1 for an object with `member_ids`).
    pub fn pushes(&self) -> usize {
        self.items.len()
    }

    /// Each push object's app, in order (the index is the array's).
    pub fn apps(&self) -> impl Iterator<Item = &AppName> + '_ {
        self.items.iter().map(|item| &item.app)
    }

    /// Every publication, in order: the elements in array order, and within a `member_ids`
    /// element the members in list order. Each envelope is encoded as it is taken.
    pub fn publications(&self) -> impl Iterator<Item = Publication> + '_ {
        self.items.iter().flat_map(|item| {
            item.recipients
                .member_ids()
                .iter()
                .map(move |&member_id| Publication {
                    app: item.app.clone(),
                    member_id,
                    frame: Envelope {
                        app: item.app.as_str(),
                        member_id,
                        text: &item.text,
                    }
                    .encode(),
                    position: None,
                })
        })
    }
}

/// Why a `POST /push` body was refused (`400`, or `413` for [`PushError::TooManyPublications`]).
/// Nothing of a refused body is published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The body is not one valid push object (nor an array): the seed parser's refusal, with
    /// its text, or a whole-body error such as characters after an array.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The body is one push object whose `member_ids` cannot be used.
    #[error(transparent)]
    Members(MembersError),
    /// Element `index` (from 0) of the array is not a valid push object.
    #[error("push at index {index}: {error}")]
    Element { index: usize, error: ElementError },
    /// The body is an empty array.
    #[error("the array of pushes is empty")]
    EmptyBatch,
    /// The request would make more than `max` publications (array elements, each member of
    /// a `member_ids` counting one).
    #[error("more than {max} publications in one request")]
    TooManyPublications { max: usize },
}

/// Why one element of an array was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElementError {
    /// Not a push object: not an object, a key missing or of the wrong type, a bad app name.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// Its `member_ids` cannot be used.
    #[error(transparent)]
    Members(#[from] MembersError),
}

/// Why a push object's `member_ids` cannot be used. (A `member_ids` that is not an array of
/// integers is a type error, [`MessageError::Malformed`].)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembersError {
    /// Both `member_id` and `member_ids` are present: which one was meant is unclear.
    #[error("member_id and member_ids are both present; send one of them")]
    BothMemberIdAndMemberIds,
    /// `member_ids` on a public app, whose pushes go to every subscriber whoever they are.
    #[error("member_ids needs a private app; {app:?} is public")]
    PublicApp { app: String },
    /// `member_ids` is `[]`: the push would reach nobody, which is surely a mistake.
    #[error("member_ids is empty")]
    Empty,
    /// An id that cannot name a member (members are > 0).
    #[error("member_ids holds {id}, which names no member (member ids are > 0)")]
    NotAMember { id: i64 },
    /// The same member twice: refused rather than deduplicated, so that a caller's count of
    /// recipients is never silently changed.
    #[error("member_ids lists member {id} twice")]
    Duplicate { id: i64 },
    /// More members than `limits.max_push_members`.
    #[error("member_ids lists {count} members; at most {max} are allowed")]
    TooMany { count: usize, max: usize },
}

/// One push object as written: the seed's keys (same types, same order, so a seed body is
/// refused with the seed's texts) plus `member_ids`.
#[derive(Deserialize)]
struct RawPush<'a> {
    #[serde(borrow)]
    app: Cow<'a, str>,
    // Present means "an integer": `null` is a wrong type, not an absent key.
    #[serde(default, deserialize_with = "present")]
    member_id: Option<i64>,
    // Present means "an array of integers": `null` is a wrong type too.
    #[serde(default, deserialize_with = "present")]
    member_ids: Option<Vec<i64>>,
    text: String,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An array element: a push object, never the array form that derived structs also accept
/// (`["match",-1,"x"]`).
struct Element<'a>(RawPush<'a>);

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Element<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a push object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Element<'de>, A::Error> {
                RawPush::deserialize(de::value::MapAccessDeserializer::new(map)).map(Element)
            }
        }
        d.deserialize_map(ObjectOnly)
    }
}

/// How far the array was read, kept outside the deserializer so that its error can name the
/// element it stopped at.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    elements: usize,
    too_many: bool,
}

/// The top-level array: its elements, at most `max` of them (one more stops the reading).
struct Elements<'p> {
    progress: &'p Cell<Progress>,
    max: usize,
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = Vec<RawPush<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of push objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(Element(raw)) = seq.next_element()? {
            if elements.len() == self.max {
                self.progress.set(Progress {
                    elements: elements.len(),
                    too_many: true,
                });
                return Err(de::Error::custom("too many elements"));
            }
            elements.push(raw);
            self.progress.set(Progress {
                elements: elements.len(),
                too_many: false,
            });
        }
        Ok(elements)
    }
}

impl PushRequest {
    /// Parses a `POST /push` body against the hub's private apps and app name limit and the
    /// request `limits`. Any error means nothing of the body may be published.
    pub fn parse(body: &[u8], hub: &HubConfig, limits: PushLimits) -> Result<Self, PushError> {
        let first = body
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        match first {
            Some(b'[') => parse_array(body, hub, limits).map(PushRequest::Batch),
            Some(b'{') => parse_object(body, hub, limits),
            // Not an object nor an array: the seed's refusal, with its text.
            _ => PushMessage::parse(body, hub.max_app_name_len)
                .map(PushRequest::Single)
                .map_err(PushError::Message),
        }
    }
}

fn parse_object(
    body: &[u8],
    hub: &HubConfig,
    limits: PushLimits,
) -> Result<PushRequest, PushError> {
    let raw: RawPush<'_> = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        // Whatever the seed parser refuses gets the seed's text; what it accepts failed here
        // only because of `member_ids` (which it ignores).
        Err(err) => {
            return Err(match PushMessage::parse(body, hub.max_app_name_len) {
                Err(seed) => PushError::Message(seed),
                Ok(_) => PushError::Message(err.into()),
            });
        }
    };
    if raw.member_ids.is_none() {
        let app = AppName::parse(&raw.app, hub.max_app_name_len).map_err(MessageError::from)?;
        return Ok(PushRequest::Single(PushMessage {
            app,
            member_id: raw.member_id.unwrap_or(NO_MEMBER),
            text: raw.text,
        }));
    }
    let item = validate(raw, hub, limits).map_err(|err| match err {
        ElementError::Message(err) => PushError::Message(err),
        ElementError::Members(err) => PushError::Members(err),
    })?;
    let publications = item.recipients.member_ids().len();
    if publications > limits.max_publications {
        return Err(PushError::TooManyPublications {
            max: limits.max_publications,
        });
    }
    Ok(PushRequest::ToMembers(PushBatch {
        items: vec![item],
        publications,
    }))
}

fn parse_array(body: &[u8], hub: &HubConfig, limits: PushLimits) -> Result<PushBatch, PushError> {
    let progress = Cell::new(Progress::default());
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let read = deserializer.deserialize_seq(Elements {
        progress: &progress,
        max: limits.max_publications,
    });
    let raws = match read {
        Ok(raws) => raws,
        Err(_) if progress.get().too_many => {
            return Err(PushError::TooManyPublications {
                max: limits.max_publications,
            });
        }
        Err(err) => {
            return Err(PushError::Element {
                index: progress.get().elements,
                error: ElementError::Message(err.into()),
            });
        }
    };
    deserializer.end().map_err(MessageError::from)?;
    if raws.is_empty() {
        return Err(PushError::EmptyBatch);
    }
    let mut items = Vec::with_capacity(raws.len());
    let mut publications = 0usize;
    for (index, raw) in raws.into_iter().enumerate() {
        let item =
            validate(raw, hub, limits).map_err(|error| PushError::Element { index, error })?;
        publications += item.recipients.member_ids().len();
        if publications > limits.max_publications {
            return Err(PushError::TooManyPublications {
                max: limits.max_publications,
            });
        }
        items.push(item);
    }
    Ok(PushBatch {
        items,
        publications,
    })
}

/// Checks one push object beyond its types: its app name, and its `member_ids` if any.
fn validate(raw: RawPush<'_>, hub: &HubConfig, limits: PushLimits) -> Result<Item, ElementError> {
    let app = AppName::parse(&raw.app, hub.max_app_name_len).map_err(MessageError::from)?;
    let recipients = match (raw.member_id, raw.member_ids) {
        (Some(_), Some(_)) => return Err(MembersError::BothMemberIdAndMemberIds.into()),
        (member_id, None) => Recipients::As(member_id.unwrap_or(NO_MEMBER)),
        (None, Some(ids)) => Recipients::Members(members(&app, ids, hub, limits)?),
    };
    Ok(Item {
        app,
        text: raw.text,
        recipients,
    })
}

fn members(
    app: &AppName,
    ids: Vec<i64>,
    hub: &HubConfig,
    limits: PushLimits,
) -> Result<Vec<i64>, MembersError> {
    if !hub.private_apps.contains(app) {
        return Err(MembersError::PublicApp {
            app: app.as_str().to_owned(),
        });
    }
    if ids.is_empty() {
        return Err(MembersError::Empty);
    }
    if ids.len() > limits.max_members {
        return Err(MembersError::TooMany {
            count: ids.len(),
            max: limits.max_members,
        });
    }
    let mut seen = HashSet::with_capacity(ids.len());
    for &id in &ids {
        if id <= 0 {
            return Err(MembersError::NotAMember { id });
        }
        if !seen.insert(id) {
            return Err(MembersError::Duplicate { id });
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> HubConfig {
        HubConfig::default() // "im" is the private app
    }

    fn parse(body: &str) -> Result<PushRequest, PushError> {
        PushRequest::parse(body.as_bytes(), &hub(), PushLimits::default())
    }

    fn parse_with(body: &str, limits: PushLimits) -> Result<PushRequest, PushError> {
        PushRequest::parse(body.as_bytes(), &hub(), limits)
    }

    fn batch(body: &str) -> PushBatch {
        match parse(body) {
            Ok(PushRequest::Batch(batch)) => batch,
            other => panic!("not a batch: {other:?}"),
        }
    }

    fn frames(batch: &PushBatch) -> Vec<String> {
        batch
            .publications()
            .map(|p| p.frame.as_str().to_owned())
            .collect()
    }

    fn element_error(body: &str) -> (usize, ElementError) {
        match parse(body) {
            Err(PushError::Element { index, error }) => (index, error),
            other => panic!("expected an element error for {body}, got {other:?}"),
        }
    }

    #[test]
    fn an_object_without_member_ids_is_the_seed_push() {
        for body in [
            r#"{"app":"match","member_id":-1,"text":"{\"hello\":\"world\"}"}"#,
            r#" {"text":"x","app":"im","member_id":7,"other":[1]} "#,
            r#"{"app":"m\u0061tch","text":"a\"b"}"#,
        ] {
            let seed = PushMessage::parse(body.as_bytes(), AppName::DEFAULT_MAX_LEN).unwrap();
            assert_eq!(parse(body), Ok(PushRequest::Single(seed)), "{body}");
        }
    }

    #[test]
    fn a_bad_object_is_refused_with_the_seed_text() {
        for body in [
            "",
            "not json",
            "7",
            r#"{"text":"x"}"#,
            r#"{"app":"","text":"x"}"#,
            r#"{"app":"match"}"#,
            r#"{"app":"match","text":null}"#,
            r#"{"app":"match","text":5}"#,
            r#"{"app":5,"text":"x"}"#,
            r#"{"app":"match","member_id":"5","text":"x"}"#,
            r#"{"app":"match","member_id":null,"text":"x"}"#,
            r#"{"app":"match","member_id":1.5,"text":"x"}"#,
            r#"{"app":"match","text":"x","text":"y"}"#,
            r#"{"app":"match","text":"x"} trailing"#,
            // Broken before `member_ids` could matter: still the seed's words.
            r#"{"app":"im","member_ids":[1],"text":5}"#,
        ] {
            let seed = PushMessage::parse(body.as_bytes(), AppName::DEFAULT_MAX_LEN).unwrap_err();
            assert_eq!(parse(body), Err(PushError::Message(seed)), "{body}");
        }
    }

    #[test]
    fn a_batch_keeps_array_order_and_exact_envelopes() {
        let batch = batch(
            r#"[{"app":"match","text":"1"},{"app":"im","member_id":7,"text":"2"},
                {"app":"match","member_id":-1,"text":"{\"k\":3}"}]"#,
        );
        assert_eq!((batch.len(), batch.pushes()), (3, 3));
        assert_eq!(
            frames(&batch),
            [
                r#"{"app":"match","member_id":-1,"text":"1"}"#,
                r#"{"app":"im","member_id":7,"text":"2"}"#,
                r#"{"app":"match","member_id":-1,"text":"{\"k\":3}"}"#,
            ]
        );
    }

    #[test]
    fn member_ids_make_one_publication_per_member_in_list_order() {
        let Ok(PushRequest::ToMembers(to_members)) =
            parse(r#"{"app":"im","member_ids":[9,3,7],"text":"hi"}"#)
        else {
            panic!("not a member push");
        };
        assert_eq!((to_members.len(), to_members.pushes()), (3, 1));
        let members: Vec<i64> = to_members.publications().map(|p| p.member_id).collect();
        assert_eq!(members, [9, 3, 7]);
        assert_eq!(
            frames(&to_members)[1],
            r#"{"app":"im","member_id":3,"text":"hi"}"#
        );
        // Inside a batch too, between the elements around it.
        let mixed = batch(
            r#"[{"app":"a","text":"x"},{"app":"im","member_ids":[1,2],"text":"y"},{"app":"b","text":"z"}]"#,
        );
        assert_eq!((mixed.len(), mixed.pushes()), (4, 3));
        assert_eq!(
            frames(&mixed),
            [
                r#"{"app":"a","member_id":-1,"text":"x"}"#,
                r#"{"app":"im","member_id":1,"text":"y"}"#,
                r#"{"app":"im","member_id":2,"text":"y"}"#,
                r#"{"app":"b","member_id":-1,"text":"z"}"#,
            ]
        );
    }

    #[test]
    fn a_bad_element_is_refused_naming_its_index() {
        let good = r#"{"app":"match","text":"ok"}"#;
        for (bad, why) in [
            (r#"{"app":"match"}"#, "missing field `text`"),
            (r#"{"app":"match","text":5}"#, "invalid type: integer `5`"),
            (r#"{"app":"","text":"x"}"#, "app name is empty"),
            (r#"{"app":"a\nb","text":"x"}"#, "control character"),
            (r#"["match",-1,"x"]"#, "expected a push object"),
            (r#""match""#, "expected a push object"),
            ("null", "expected a push object"),
            (
                r#"{"app":"match","member_id":"5","text":"x"}"#,
                "invalid type",
            ),
            (
                r#"{"app":"match","text":"x","app":"y"}"#,
                "duplicate field `app`",
            ),
        ] {
            let body = format!("[{good},{good},{good},{bad},{good}]");
            let (index, error) = element_error(&body);
            assert_eq!(index, 3, "{body}");
            let text = PushError::Element { index, error }.to_string();
            assert!(
                text.starts_with("push at index 3: ") && text.contains(why),
                "{text:?} does not say {why:?}"
            );
        }
    }

    #[test]
    fn a_broken_array_names_where_it_broke() {
        assert_eq!(element_error(r#"[{"app":"a","text":"x"},"#).0, 1);
        assert_eq!(
            element_error(r#"[{"app":"a","text":"x"} {"app":"b"}]"#).0,
            1
        );
        assert_eq!(element_error("[").0, 0);
        assert!(matches!(
            parse(r#"[{"app":"a","text":"x"}] trailing"#),
            Err(PushError::Message(MessageError::Malformed(_)))
        ));
    }

    #[test]
    fn an_empty_array_is_refused() {
        assert_eq!(parse("[]"), Err(PushError::EmptyBatch));
        assert_eq!(parse(" [ ] "), Err(PushError::EmptyBatch));
    }

    #[test]
    fn a_batch_is_bounded_at_its_limit() {
        let limits = PushLimits {
            max_publications: 3,
            max_members: 10,
        };
        let element = r#"{"app":"a","text":"x"}"#;
        let three = format!("[{element},{element},{element}]");
        assert!(matches!(parse_with(&three, limits), Ok(PushRequest::Batch(b)) if b.len() == 3));
        let four = format!("[{element},{element},{element},{element}]");
        assert_eq!(
            parse_with(&four, limits),
            Err(PushError::TooManyPublications { max: 3 })
        );
        // Members count one publication each, in a batch and in a single object.
        let members = format!(r#"[{element},{{"app":"im","member_ids":[1,2,3],"text":"x"}}]"#);
        assert_eq!(
            parse_with(&members, limits),
            Err(PushError::TooManyPublications { max: 3 })
        );
        assert_eq!(
            parse_with(r#"{"app":"im","member_ids":[1,2,3,4],"text":"x"}"#, limits),
            Err(PushError::TooManyPublications { max: 3 })
        );
        assert!(parse_with(r#"{"app":"im","member_ids":[1,2,3],"text":"x"}"#, limits).is_ok());
    }

    #[test]
    fn every_member_ids_refusal() {
        let limits = PushLimits {
            max_publications: 100,
            max_members: 3,
        };
        let cases: [(&str, MembersError); 7] = [
            (
                r#"{"app":"im","member_id":1,"member_ids":[2],"text":"x"}"#,
                MembersError::BothMemberIdAndMemberIds,
            ),
            (
                r#"{"app":"im","member_id":-1,"member_ids":[2],"text":"x"}"#,
                MembersError::BothMemberIdAndMemberIds,
            ),
            (
                r#"{"app":"match","member_ids":[2],"text":"x"}"#,
                MembersError::PublicApp {
                    app: "match".into(),
                },
            ),
            (
                r#"{"app":"im","member_ids":[],"text":"x"}"#,
                MembersError::Empty,
            ),
            (
                r#"{"app":"im","member_ids":[1,0],"text":"x"}"#,
                MembersError::NotAMember { id: 0 },
            ),
            (
                r#"{"app":"im","member_ids":[-5],"text":"x"}"#,
                MembersError::NotAMember { id: -5 },
            ),
            (
                r#"{"app":"im","member_ids":[4,5,4],"text":"x"}"#,
                MembersError::Duplicate { id: 4 },
            ),
        ];
        for (object, expected) in cases {
            assert_eq!(
                parse_with(object, limits),
                Err(PushError::Members(expected.clone())),
                "{object}"
            );
            let body = format!(r#"[{{"app":"a","text":"x"}},{object}]"#);
            assert_eq!(
                parse_with(&body, limits),
                Err(PushError::Element {
                    index: 1,
                    error: ElementError::Members(expected)
                }),
                "{body}"
            );
        }
        assert_eq!(
            parse_with(r#"{"app":"im","member_ids":[1,2,3,4],"text":"x"}"#, limits),
            Err(PushError::Members(MembersError::TooMany {
                count: 4,
                max: 3
            }))
        );
    }

    #[test]
    fn member_ids_must_be_an_array_of_integers() {
        for ids in [
            "null",
            "7",
            r#""1,2""#,
            "[1.5]",
            "[1.0]",
            r#"["1"]"#,
            "[null]",
            "[true]",
            "[[1]]",
            "[99999999999999999999]",
            r#"{"a":1}"#,
        ] {
            let object = format!(r#"{{"app":"im","member_ids":{ids},"text":"x"}}"#);
            assert!(
                matches!(
                    parse(&object),
                    Err(PushError::Message(MessageError::Malformed(_)))
                ),
                "accepted member_ids {ids}: {:?}",
                parse(&object)
            );
            let body = format!("[{object}]");
            assert!(
                matches!(
                    parse(&body),
                    Err(PushError::Element {
                        index: 0,
                        error: ElementError::Message(MessageError::Malformed(_))
                    })
                ),
                "accepted member_ids {ids} in a batch"
            );
        }
    }

    #[test]
    fn the_texts_say_what_is_wrong() {
        let refusal = |body: &str| parse(body).unwrap_err().to_string();
        assert_eq!(refusal("[]"), "the array of pushes is empty");
        assert_eq!(
            refusal(r#"[{"app":"match","member_ids":[1],"text":"x"}]"#),
            r#"push at index 0: member_ids needs a private app; "match" is public"#
        );
        assert_eq!(
            refusal(r#"{"app":"im","member_ids":[3,3],"text":"x"}"#),
            "member_ids lists member 3 twice"
        );
    }
}
