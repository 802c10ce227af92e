//! Identifier newtypes: a connection, a member, an app name.

use std::fmt;
use std::sync::Arc;

use crate::error::InvalidAppName;

/// One WebSocket connection, as numbered by whoever drives the hub.
///
/// The hub never invents ids; the driver allocates them (a counter is enough) and must not reuse
/// one while the hub still knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub const fn new(id: u64) -> Self {
        ConnId(id)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// An authenticated member. Always strictly positive: the seed protocol uses negative ids for
/// anonymous clients and `0` for "missing", so neither can name a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(i64);

impl MemberId {
    /// `None` unless `id > 0`.
    pub const fn new(id: i64) -> Option<Self> {
        if id > 0 { Some(MemberId(id)) } else { None }
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The name of an app (a channel), validated on construction.
///
/// Valid means: not empty, at most the configured number of bytes, and free of control
/// characters (a newline in an app name would forge a line of `/stat`). Cloning is a refcount
/// increment: the hub stores one copy of each name and shares it among the app's subscriptions.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(Arc<str>);

impl AppName {
    /// The default for the longest app name accepted, in bytes.
    pub const DEFAULT_MAX_LEN: usize = 128;

    /// Names starting with this are the gateway's own channels between nodes, not apps: no
    /// client may subscribe to them and no backend push to them.
    pub const RESERVED_PREFIX: &'static str = "$ws-gateway/";

    /// Whether this name is one of the gateway's own channels ([`AppName::RESERVED_PREFIX`]).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(Self::RESERVED_PREFIX)
    }

    /// Validates `name` against the structural rules and a length limit in bytes.
    pub fn parse(name: &str, max_len: usize) -> Result<Self, InvalidAppName> {
        if name.is_empty() {
            return Err(InvalidAppName::Empty);
        }
        if name.len() > max_len {
            return Err(InvalidAppName::TooLong {
                len: name.len(),
                max: max_len,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidAppName::ControlCharacter);
        }
        Ok(AppName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AppName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_strictly_positive() {
        assert_eq!(MemberId::new(1).map(MemberId::get), Some(1));
        assert_eq!(MemberId::new(0), None);
        assert_eq!(MemberId::new(-1), None);
    }

    #[test]
    fn app_names_are_validated() {
        assert_eq!(AppName::parse("match", 128).unwrap().as_str(), "match");
        assert_eq!(AppName::parse("", 128), Err(InvalidAppName::Empty));
        assert_eq!(
            AppName::parse("abcd", 3),
            Err(InvalidAppName::TooLong { len: 4, max: 3 })
        );
        assert_eq!(AppName::parse("abc", 3).unwrap().as_str(), "abc");
        assert_eq!(
            AppName::parse("a\nb", 128),
            Err(InvalidAppName::ControlCharacter)
        );
        // Spaces, quotes and non-ASCII text are fine: they are JSON-escaped where needed.
        assert!(AppName::parse("my \"app\" é", 128).is_ok());
    }
}
