//! What the hub answers when asked rather than told: the counts of `/stat` (whole or a page at
//! a time), the subscribers a node reports to its cluster, and presence (an app's members, a
//! member's apps).

use std::fmt;

use crate::ids::{AppName, MemberId};

/// The answer of `GET /stat`: `"<app> <count>\n"` per app, sorted by app name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    pub apps: Vec<(AppName, usize)>,
}

impl Stat {
    /// The count for `app`, `0` if it is not listed.
    pub fn count(&self, app: &str) -> usize {
        self.apps
            .iter()
            .find(|(name, _)| name.as_str() == app)
            .map_or(0, |(_, count)| *count)
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_counts(f, &self.apps)
    }
}

/// One page of `GET /stat`, from [`Hub::stat_page`]. Displays as its lines of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatPage {
    /// Sorted by app name, none with a zero count.
    pub apps: Vec<(AppName, usize)>,
    /// Whether more apps sorted after this page's last one when it was read.
    pub more: bool,
}

impl StatPage {
    /// Where the next page starts (`after` of the next [`Hub::stat_page`] call); `None` when
    /// this was the last page.
    pub fn resume_after(&self) -> Option<&AppName> {
        if self.more {
            self.apps.last().map(|(app, _)| app)
        } else {
            None
        }
    }
}

impl fmt::Display for StatPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_counts(f, &self.apps)
    }
}

/// Who subscribed to one app, in [`SubscribersPage`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppSubscribers {
    /// A public app: its subscribed connections.
    Connections(usize),
    /// A private app: its members with a subscribed connection, in no particular order.
    Members(Vec<MemberId>),
    /// A private app with more members than the page lists: how many.
    MemberCount(usize),
}

/// One page of [`Hub::subscribers_page`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribersPage {
    /// Sorted by app name.
    pub apps: Vec<(AppName, AppSubscribers)>,
    /// Whether more apps sorted after this page's last one when it was read.
    pub more: bool,
}

impl SubscribersPage {
    /// Where the next page starts; `None` when this was the last page.
    pub fn resume_after(&self) -> Option<&AppName> {
        if self.more {
            self.apps.last().map(|(app, _)| app)
        } else {
            None
        }
    }
}

/// One page of [`Hub::app_members`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembersPage {
    /// Increasing, each once.
    pub members: Vec<MemberId>,
    /// Whether members sorted after this page's last one remain.
    pub more: bool,
}

/// A member's presence on this hub, from [`Hub::member_presence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPresence {
    /// The member's registered connections.
    pub connections: usize,
    /// The apps any of them subscribed to, sorted, each once.
    pub apps: Vec<AppName>,
}

/// The seed's format: `"<app> <count>\n"` per app.
fn write_counts(f: &mut fmt::Formatter<'_>, apps: &[(AppName, usize)]) -> fmt::Result {
    for (app, count) in apps {
        writeln!(f, "{app} {count}")?;
    }
    Ok(())
}
