//! Topics: the unit of interest between a node and a broker.
//!
//! A push to a public app reaches every subscriber of the app, so the app is its topic. A push to
//! a private app reaches one member's connections only, so each (app, member) pair is a topic of
//! its own: a node with member 7 connected to `im` hears the pushes for member 7, not every
//! member's.

use std::fmt;

use crate::ids::{AppName, MemberId};

/// What a node has local subscribers for, and what a push is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Every subscriber of a public app.
    App(AppName),
    /// The connections of one member that subscribed to a private app.
    Member { app: AppName, member: MemberId },
}

impl Topic {
    /// The app this topic belongs to.
    pub fn app(&self) -> &AppName {
        match self {
            Topic::App(app) | Topic::Member { app, .. } => app,
        }
    }

    /// The member of a private topic.
    pub fn member(&self) -> Option<MemberId> {
        match self {
            Topic::App(_) => None,
            Topic::Member { member, .. } => Some(*member),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::App(app) => write!(f, "{app}"),
            Topic::Member { app, member } => write!(f, "{app}#{member}"),
        }
    }
}

/// A point in time, in milliseconds since an origin the driver chooses (its start, or the Unix
/// epoch). The hub reads no clock: the driver passes time in with [`crate::Input::Tick`], and
/// the hub only compares the values it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }
}
