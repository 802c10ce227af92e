//! What a read of one stream returns, and the rule that decides "recovered".

use crate::message::Publication;
use crate::position::{Position, Since};

/// What a read of one stream's history found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRead {
    /// The newest position of the stream now; `None` when the stream has no run (nothing was
    /// pushed, or everything about it was forgotten).
    pub top: Option<Position>,
    /// The oldest offset still kept in the current run (`None` when nothing is kept).
    pub first: Option<u64>,
    /// The kept pushes after the position asked for, oldest first, at most the limit asked
    /// for; each has its position. Empty when the epoch asked for is not the current one.
    pub publications: Vec<Publication>,
}

impl HistoryRead {
    /// Whether a client that stands at `since` can be given every push it missed from this
    /// read: the run is the same, and either nothing was pushed since or the history reaches
    /// back to the push right after `since`.
    pub fn recovered(&self, since: &Since) -> bool {
        let Some(top) = &self.top else {
            // No run: nothing was ever pushed (or all is forgotten). Only a client that saw
            // nothing either missed nothing.
            return since.offset() == 0;
        };
        match since {
            Since::After(position) if position.epoch != top.epoch => false,
            _ if since.offset() > top.offset => false,
            _ if since.offset() == top.offset => true,
            _ => self.first.is_some_and(|first| first <= since.offset() + 1),
        }
    }

    /// The offset a read should start after, for `since` in the run of `top`: `None` when the
    /// client's epoch is not the current one (nothing of this run is its to recover).
    pub fn start_after(since: &Since, top: &Position) -> Option<u64> {
        match since {
            Since::Start => Some(0),
            Since::After(position) if position.epoch == top.epoch => Some(position.offset),
            Since::After(_) => None,
        }
    }
}
