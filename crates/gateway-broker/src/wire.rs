//! What travels on the broker, byte for byte (docs/protocol.md, "The broker's wire format").
//!
//! A publication is one message on its topic's channel:
//!
//! ```text
//! byte 0        version, 1
//! bytes 1..9    member_id, i64 big-endian (as the push gave it)
//! bytes 9..11   length of the app name in bytes, u16 big-endian
//! then          the app name, UTF-8
//! then          the frame every client receives, exactly: the JSON envelope
//! ```
//!
//! A publication with a stream position (its app keeps history) is version 2: the same, with
//! the position as text between the app name and the frame, so a Redis script can write it:
//!
//! ```text
//! byte 0        version, 2
//! bytes 1..11   member_id and app name length, as in version 1
//! then          the app name, UTF-8
//! then          the offset in ASCII decimal, one space, the epoch (ASCII), one `\n`
//! then          the frame, exactly as in version 1 (without the position)
//! ```
//!
//! The frame is encoded once, by the node that accepted the push, and every node sends those
//! bytes on unchanged. A node that meets another version byte drops the message and reports it
//! ([`crate::BrokerEvent::Unreadable`]): a mixed-version cluster fails loudly, it never
//! mis-delivers.
//!
//! Channel (Redis) and subject (NATS) names: `<prefix>.a.<app>` for a public app and
//! `<prefix>.m.<app>.<member>` for one member of a private app, the app name escaped so that
//! any name is one NATS token: ASCII letters, digits, `-` and `_` stay, every other byte is
//! `~` and two upper-case hex digits (`chat room` → `chat~20room`).

use bytes::{BufMut, Bytes, BytesMut};
use gateway_core::{AppName, Epoch, Frame, Position, Publication, Topic};

/// The version byte of a publication without a position.
pub const VERSION: u8 = 1;
/// The version byte of a publication with a position.
pub const VERSION_POSITIONED: u8 = 2;

const HEADER: usize = 1 + 8 + 2;

/// Why a message from the broker could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("wire format version {0}, this node reads versions {VERSION} and {VERSION_POSITIONED}")]
    Version(u8),
    #[error("invalid stream position")]
    Position,
    #[error("truncated message ({0} bytes)")]
    Truncated(usize),
    #[error("invalid app name: {0}")]
    App(String),
    #[error("the frame is not valid UTF-8")]
    Frame,
}

/// The message for `publication` (version 2 when it has a position).
pub fn encode(publication: &Publication) -> Bytes {
    let frame = publication.frame.as_bytes();
    let head = head(publication, publication.position.is_some());
    let mut buf = BytesMut::with_capacity(head.len() + 32 + frame.len());
    buf.put_slice(&head);
    if let Some(position) = &publication.position {
        buf.put_slice(position.offset.to_string().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(position.epoch.as_str().as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(frame);
    buf.freeze()
}

/// Everything before the position (or the frame): the version byte, the member id and the app
/// name. A broker that assigns positions itself (a Redis script) writes this, then the
/// position, then the frame.
pub fn head(publication: &Publication, positioned: bool) -> Vec<u8> {
    let app = publication.app.as_str().as_bytes();
    let mut buf = Vec::with_capacity(HEADER + app.len());
    buf.push(if positioned {
        VERSION_POSITIONED
    } else {
        VERSION
    });
    buf.extend_from_slice(&publication.member_id.to_be_bytes());
    // App names are bounded far below 64 KiB (`max_app_name_len`, at most a few hundred bytes).
    let len = u16::try_from(app.len()).expect("app names are shorter than 64 KiB");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(app);
    buf
}

/// The publication in `message` (the frame shares `message`'s bytes).
pub fn decode(message: Bytes) -> Result<Publication, WireError> {
    let positioned = match message.first() {
        None => return Err(WireError::Truncated(0)),
        Some(&VERSION) => false,
        Some(&VERSION_POSITIONED) => true,
        Some(&other) => return Err(WireError::Version(other)),
    };
    if message.len() < HEADER {
        return Err(WireError::Truncated(message.len()));
    }
    let member_id = i64::from_be_bytes(message[1..9].try_into().expect("8 bytes"));
    let app_len = usize::from(u16::from_be_bytes([message[9], message[10]]));
    let frame_start = HEADER + app_len;
    if message.len() < frame_start {
        return Err(WireError::Truncated(message.len()));
    }
    let app = std::str::from_utf8(&message[HEADER..frame_start])
        .map_err(|_| WireError::App("not UTF-8".into()))?;
    // The sender validated the name against its own limit; the receiver's hub checks its own
    // when routing (an unknown app has no subscriber here), so only the structure matters.
    let app =
        AppName::parse(app, usize::from(u16::MAX)).map_err(|e| WireError::App(e.to_string()))?;
    let (position, frame_start) = if positioned {
        let rest = &message[frame_start..];
        // An offset of 20 digits, a space and an epoch of at most 64 bytes.
        let line_end = rest
            .iter()
            .take(20 + 1 + Epoch::MAX_LEN + 1)
            .position(|&b| b == b'\n')
            .ok_or(WireError::Position)?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| WireError::Position)?;
        let (offset, epoch) = line.split_once(' ').ok_or(WireError::Position)?;
        let offset: u64 = offset.parse().map_err(|_| WireError::Position)?;
        let epoch = Epoch::parse(epoch).map_err(|_| WireError::Position)?;
        (
            Some(Position::new(offset, epoch)),
            frame_start + line_end + 1,
        )
    } else {
        (None, frame_start)
    };
    let frame = Frame::from_utf8(message.slice(frame_start..)).map_err(|_| WireError::Frame)?;
    Ok(Publication {
        app,
        member_id,
        frame,
        position,
    })
}

/// The channel or subject of `topic` under `prefix`.
pub fn channel(prefix: &str, topic: &Topic) -> String {
    let mut name = String::with_capacity(prefix.len() + 4 + topic.app().as_str().len() + 21);
    name.push_str(prefix);
    match topic {
        Topic::App(app) => {
            name.push_str(".a.");
            escape_into(&mut name, app.as_str());
        }
        Topic::Member { app, member } => {
            name.push_str(".m.");
            escape_into(&mut name, app.as_str());
            name.push('.');
            name.push_str(&member.to_string());
        }
    }
    name
}

/// Appends `text` with every byte but `[A-Za-z0-9_-]` written as `~XX`.
pub fn escape_into(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// `text` escaped as in channel names.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// The shard (of `shards`, at least 1) that carries `app`: a jump consistent hash (Lamping and
/// Veach, 2014) of a 64-bit FNV-1a hash of the name. Stable across versions and machines (no
/// seeded hasher), so every node picks the same shard. Going from n to n + 1 shards moves
/// about 1/(n + 1) of the apps, each to the new shard, and no other app moves.
pub fn shard_of(app: &AppName, shards: usize) -> usize {
    let mut key = fnv1a(app.as_str().as_bytes());
    let shards = shards.max(1) as i64;
    let (mut b, mut j) = (-1i64, 0i64);
    while j < shards {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gateway_core::{MemberId, PushMessage};

    fn app(name: &str) -> AppName {
        AppName::parse(name, 128).unwrap()
    }

    fn publication(name: &str, member_id: i64, text: &str) -> Publication {
        Publication::from(PushMessage {
            app: app(name),
            member_id,
            text: text.to_owned(),
        })
    }

    #[test]
    fn a_publication_survives_the_wire_byte_for_byte() {
        for p in [
            publication("match", -1, "goal"),
            publication("im", 42, "{\"hello\":\"world\"}"),
            publication("é 💬 room", i64::MAX, ""),
        ] {
            let message = encode(&p);
            assert_eq!(message[0], VERSION);
            assert_eq!(decode(message).unwrap(), p);
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let message = encode(&publication("ab", 7, "t"));
        let frame = br#"{"app":"ab","member_id":7,"text":"t"}"#;
        let mut expected = vec![1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2, b'a', b'b'];
        expected.extend_from_slice(frame);
        assert_eq!(&message[..], &expected[..]);
    }

    #[test]
    fn another_version_or_a_broken_message_is_refused_not_misread() {
        let mut message = encode(&publication("match", -1, "goal")).to_vec();
        message[0] = 3;
        assert_eq!(
            decode(Bytes::from(message.clone())),
            Err(WireError::Version(3))
        );
        message[0] = 1;
        assert!(matches!(
            decode(Bytes::from(message[..5].to_vec())),
            Err(WireError::Truncated(5))
        ));
        message[10] = 200; // the app name would run past the end
        assert!(matches!(
            decode(Bytes::from(message.clone())),
            Err(WireError::Truncated(_))
        ));
        assert_eq!(decode(Bytes::new()), Err(WireError::Truncated(0)));
        assert!(matches!(
            decode(Bytes::from_static(b"{\"app\":\"x\"}")),
            Err(WireError::Version(b'{'))
        ));
    }

    #[test]
    fn a_position_travels_as_text_between_the_app_and_the_frame() {
        let mut p = publication("ab", 7, "t");
        p.position = Some(Position::new(42, Epoch::parse("e1").unwrap()));
        let message = encode(&p);
        let mut expected = vec![2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2, b'a', b'b'];
        expected.extend_from_slice(b"42 e1\n");
        expected.extend_from_slice(br#"{"app":"ab","member_id":7,"text":"t"}"#);
        assert_eq!(&message[..], &expected[..]);
        assert_eq!(decode(message).unwrap(), p);
        for broken in [&b"42e1\n"[..], b"x e1\n", b"42 e 1\n", b"42 e1"] {
            let mut message = vec![2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2, b'a', b'b'];
            message.extend_from_slice(broken);
            message.extend_from_slice(b"{}");
            assert_eq!(
                decode(Bytes::from(message)),
                Err(WireError::Position),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn channel_names_are_one_token_per_part() {
        let member = MemberId::new(7).unwrap();
        assert_eq!(
            channel("ws-gateway", &Topic::App(app("match"))),
            "ws-gateway.a.match"
        );
        assert_eq!(
            channel(
                "p",
                &Topic::Member {
                    app: app("im"),
                    member
                }
            ),
            "p.m.im.7"
        );
        assert_eq!(escape("chat room.1*>~é"), "chat~20room~2E1~2A~3E~7E~C3~A9");
        // Distinct names stay distinct: the escape is reversible.
        assert_ne!(escape("a.b"), escape("a~2Eb"));
    }

    #[test]
    fn shards_are_stable_balanced_and_move_little_when_one_is_added() {
        let apps: Vec<AppName> = (0..10_000).map(|i| app(&format!("app-{i}"))).collect();
        // Stable: the same answer every time (and on every machine: no seeded hasher).
        assert_eq!(shard_of(&app("match"), 4), shard_of(&app("match"), 4));
        assert_eq!(shard_of(&app("match"), 1), 0);
        let mut counts = [0usize; 4];
        for a in &apps {
            counts[shard_of(a, 4)] += 1;
        }
        for count in counts {
            assert!((2_000..3_000).contains(&count), "unbalanced: {counts:?}");
        }
        // From 4 to 5 shards: about a fifth moves, and only to the new shard.
        let moved: Vec<&AppName> = apps
            .iter()
            .filter(|a| shard_of(a, 4) != shard_of(a, 5))
            .collect();
        assert!(
            (1_500..2_500).contains(&moved.len()),
            "{} moved",
            moved.len()
        );
        assert!(moved.iter().all(|a| shard_of(a, 5) == 4));
    }
}
