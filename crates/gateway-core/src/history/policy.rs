//! `[history]`: how much each app keeps.

use std::time::Duration;

use crate::ids::AppName;

/// How much history one stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Pushes kept per stream; 0 turns history (and positions) off.
    pub size: usize,
    /// How long a push is kept.
    pub ttl: Duration,
}

impl StreamLimits {
    pub const DEFAULT_SIZE: usize = 100;
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            size: Self::DEFAULT_SIZE,
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// An app name pattern of `[history.apps]`: a name, or a name with `*` standing for any run of
/// characters (`chat-*`, `*-live`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPattern(String);

impl AppPattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        AppPattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, app: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = app.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// The `[history]` section: a default for every app and overrides by pattern (the first
/// pattern that matches wins), and the bound on a node's in-memory history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub default: StreamLimits,
    pub overrides: Vec<(AppPattern, StreamLimits)>,
    /// The most all in-memory history of a node may take, in bytes (frames and bookkeeping);
    /// the streams written least recently give way first.
    pub max_bytes: usize,
}

impl HistoryPolicy {
    pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

    /// No history for any app: no positions, nothing kept.
    pub fn off() -> Self {
        HistoryPolicy {
            default: StreamLimits {
                size: 0,
                ttl: StreamLimits::DEFAULT_TTL,
            },
            overrides: Vec::new(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    /// The limits of `app`'s streams.
    pub fn limits(&self, app: &AppName) -> StreamLimits {
        self.overrides
            .iter()
            .find(|(pattern, _)| pattern.matches(app.as_str()))
            .map_or(self.default, |(_, limits)| *limits)
    }

    /// Whether pushes to `app` get positions and are kept.
    pub fn enabled(&self, app: &AppName) -> bool {
        self.limits(app).enabled()
    }
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        HistoryPolicy {
            default: StreamLimits::default(),
            overrides: Vec::new(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}
