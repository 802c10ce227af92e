//! Stream positions: where a push stands in its stream's history (`docs/protocol.md`,
//! "History and recovery").
//!
//! Every push to a topic with history gets a [`Position`]: an `offset` that grows by one per
//! push of the topic (one stream per public app, one per member of a private app) and an
//! [`Epoch`] that names the run of offsets. When a stream's history is lost (a node restarted,
//! the stream was evicted, Redis lost its data) its offsets start again under a new epoch, so a
//! client that kept `(offset, epoch)` can always tell "I missed nothing" from "I cannot know".

use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::frame::Frame;

/// The name of a run of offsets. Printable and JSON-safe by construction: 1 to
/// [`Epoch::MAX_LEN`] bytes of ASCII letters, digits, `-` and `_` (what the gateway makes), so
/// it is written into frames without escaping. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(Arc<str>);

/// Why a string is not an epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to 64 ASCII letters, digits, '-' or '_'")]
pub struct InvalidEpoch;

impl Epoch {
    pub const MAX_LEN: usize = 64;

    pub fn parse(text: &str) -> Result<Self, InvalidEpoch> {
        let valid = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Epoch(Arc::from(text)))
        } else {
            Err(InvalidEpoch)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An epoch made of `random` (a random number the caller drew: the core reads no
    /// randomness), in base 36: at most 13 characters.
    pub fn from_random(random: u64) -> Self {
        let mut digits = Vec::with_capacity(13);
        let mut n = random;
        loop {
            digits.push(BASE36[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        digits.reverse();
        Epoch(Arc::from(
            std::str::from_utf8(&digits).expect("ASCII digits"),
        ))
    }
}

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A push's place in its stream: the `offset`-th push of the run named `epoch` (the first is 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub offset: u64,
    pub epoch: Epoch,
}

impl Position {
    pub fn new(offset: u64, epoch: Epoch) -> Self {
        Position { offset, epoch }
    }
}

/// Where a client says it stands when it subscribes with `since`: a position it saw, or
/// "before the first push" (`{"offset":0,"epoch":""}`: it subscribed with `recover` to a
/// stream that had no push yet, so it knew no epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Before the first push of whatever run the stream is in now.
    Start,
    /// Right after this position.
    After(Position),
}

impl Since {
    /// The offset the client saw last (0 for [`Since::Start`]).
    pub fn offset(&self) -> u64 {
        match self {
            Since::Start => 0,
            Since::After(position) => position.offset,
        }
    }
}

/// What a client asked for when it subscribed with history (`docs/protocol.md`): positions on
/// its pushes from now on, or those and every push it missed since a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// `{"app":"x","recover":true}`: pushes carry their position; the reply says where the
    /// stream stands.
    Positions,
    /// `{"app":"x","since":{"offset":41,"epoch":"e1"}}`: as [`Recovery::Positions`], and first
    /// every push after `since` that the history still holds (the reply says `recovered`).
    Since(Since),
}

impl Recovery {
    pub fn since(&self) -> Option<&Since> {
        match self {
            Recovery::Positions => None,
            Recovery::Since(since) => Some(since),
        }
    }
}

/// `frame` (a push's envelope, `{"app":…,"member_id":…,"text":…}`) with the position appended
/// as two more keys: `{"app":…,"member_id":…,"text":…,"offset":42,"epoch":"e1"}`. The seed's
/// keys keep their bytes and order; the epoch needs no escaping (see [`Epoch`]).
pub fn positioned_frame(frame: &Frame, position: &Position) -> Frame {
    let bytes = frame.as_bytes();
    debug_assert_eq!(bytes.last(), Some(&b'}'), "an envelope is a JSON object");
    let body = &bytes[..bytes.len().saturating_sub(1)];
    let mut text = String::with_capacity(bytes.len() + 40 + position.epoch.as_str().len());
    text.push_str(std::str::from_utf8(body).expect("frames are UTF-8 up to their last byte"));
    write!(
        text,
        r#","offset":{},"epoch":"{}"}}"#,
        position.offset, position.epoch
    )
    .expect("writing to a String cannot fail");
    Frame::from_string(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::message::{Publication, PushMessage};

    #[test]
    fn epochs_are_short_plain_ascii() {
        assert!(Epoch::parse("e1").is_ok());
        assert!(Epoch::parse("A-z_09").is_ok());
        assert!(Epoch::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "é", "a\"", "a\\", &"x".repeat(65)] {
            assert_eq!(Epoch::parse(bad), Err(InvalidEpoch), "{bad:?}");
        }
    }

    #[test]
    fn a_positioned_frame_appends_two_keys_after_the_seed_three() {
        let push = PushMessage::parse(br#"{"app":"match","text":"{\"goal\":1}"}"#, 128).unwrap();
        let publication = Publication::from(push);
        let position = Position::new(42, Epoch::parse("e1").unwrap());
        assert_eq!(
            positioned_frame(&publication.frame, &position).as_str(),
            r#"{"app":"match","member_id":-1,"text":"{\"goal\":1}","offset":42,"epoch":"e1"}"#
        );
    }
}
