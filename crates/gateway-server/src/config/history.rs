//! The `[history]` table: how many recent pushes each stream keeps, and for how long, so that
//! a client that reconnects can recover what it missed (docs: README "Configuration",
//! `docs/protocol.md` "History and recovery").
//!
//! ```toml
//! [history]
//! size = 100              # pushes kept per stream; 0 turns history (and positions) off
//! ttl_s = 300             # how long a push is kept
//! max_bytes = 67108864    # a node's in-memory history (and, with NATS, the JetStream stream)
//! [history.apps."chat-*"] # overrides by app name pattern; the first that matches wins
//! size = 500
//! ttl_s = 60
//! ```
//!
//! TOML tables have no order once parsed, but "the first pattern that matches wins" needs
//! one: the file's order of the patterns is read from the file's text (`file_order`), and
//! patterns that only an environment variable names come after the file's, sorted.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_core::history::AppPattern;
use gateway_core::{AppName, HistoryPolicy, StreamLimits};
use serde::{Deserialize, Serialize};

use super::Resolver;
use crate::error::ConfigError;

/// The most pushes one stream may keep (`history.size`): a recovering client is sent at most
/// this many at once, and each stream's ring is sized by it.
pub const MAX_SIZE: usize = 100_000;
/// The longest a push may be kept (`history.ttl_s`): 7 days.
pub const MAX_TTL_S: u64 = 7 * 24 * 3600;
/// The least `history.max_bytes`: below it a few busy streams would evict each other
/// constantly.
pub const MIN_MAX_BYTES: usize = 1 << 20;

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHistory {
    pub(super) size: Option<usize>,
    pub(super) ttl_s: Option<u64>,
    pub(super) max_bytes: Option<usize>,
    /// Pattern = limits. Sorted here; the file's order comes from [`file_order`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) apps: BTreeMap<String, FileStreamLimits>,
}

/// One `[history.apps."pattern"]` table: a key it leaves out comes from `[history]`.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStreamLimits {
    pub(super) size: Option<usize>,
    pub(super) ttl_s: Option<u64>,
}

impl FileHistory {
    /// The keys with a default, for the lowest configuration layer (no patterns).
    pub(super) fn defaults() -> FileHistory {
        let policy = HistoryPolicy::default();
        FileHistory {
            size: Some(policy.default.size),
            ttl_s: Some(policy.default.ttl.as_secs()),
            max_bytes: Some(policy.max_bytes),
            apps: BTreeMap::new(),
        }
    }
}

/// The patterns of `[history.apps]` in the order the file writes them (empty when the file
/// has none, or does not parse: its errors are reported elsewhere).
pub(super) fn file_order(text: &str) -> Vec<String> {
    let Ok(document) = toml::de::DeTable::parse(text) else {
        return Vec::new();
    };
    fn child<'t, 'i>(
        table: &'t toml::de::DeTable<'i>,
        name: &str,
    ) -> Option<&'t toml::de::DeTable<'i>> {
        table
            .iter()
            .find(|(key, _)| key.get_ref() == name)
            .and_then(|(_, value)| value.get_ref().as_table())
    }
    let Some(apps) = child(document.get_ref(), "history").and_then(|h| child(h, "apps")) else {
        return Vec::new();
    };
    let mut patterns: Vec<(usize, String)> = apps
        .iter()
        .map(|(key, _)| (key.span().start, key.get_ref().to_string()))
        .collect();
    patterns.sort();
    patterns.into_iter().map(|(_, pattern)| pattern).collect()
}

/// Validates `[history]` into the policy every broker and the node share. `order`: the
/// file's order of the patterns ([`file_order`]).
pub(super) fn resolve(
    file: FileHistory,
    order: &[String],
    max_app_name_len: usize,
    r: &Resolver<'_>,
) -> Result<HistoryPolicy, ConfigError> {
    let defaults = HistoryPolicy::default();
    let default = limits(
        r,
        "history",
        file.size.unwrap_or(defaults.default.size),
        file.ttl_s.unwrap_or(defaults.default.ttl.as_secs()),
    )?;
    let max_bytes = file.max_bytes.unwrap_or(defaults.max_bytes);
    if max_bytes < MIN_MAX_BYTES {
        return Err(r.invalid(
            "history.max_bytes",
            format!("must be at least {MIN_MAX_BYTES} (1 MiB)"),
        ));
    }
    let mut apps = file.apps;
    let mut ordered: Vec<(String, FileStreamLimits)> = order
        .iter()
        .filter_map(|pattern| apps.remove_entry(pattern))
        .collect();
    // Patterns no file wrote (environment variables): after the file's, sorted.
    ordered.extend(apps);
    let mut overrides = Vec::with_capacity(ordered.len());
    for (pattern, set) in ordered {
        let key = format!("history.apps.{pattern}");
        if let Err(err) = AppName::parse(&pattern, max_app_name_len) {
            return Err(r.invalid(
                key,
                format!("`{pattern}` is not an app name pattern (an app name, `*` for any run of characters): {err}"),
            ));
        }
        let limits = limits(
            r,
            &key,
            set.size.unwrap_or(default.size),
            set.ttl_s.unwrap_or(default.ttl.as_secs()),
        )?;
        overrides.push((AppPattern::new(pattern), limits));
    }
    Ok(HistoryPolicy {
        default,
        overrides,
        max_bytes,
    })
}

/// `size` and `ttl_s` of the table `table` (`history`, `history.apps.chat-*`), checked.
fn limits(
    r: &Resolver<'_>,
    table: &str,
    size: usize,
    ttl_s: u64,
) -> Result<StreamLimits, ConfigError> {
    if size > MAX_SIZE {
        return Err(r.invalid(
            format!("{table}.size"),
            format!("at most {MAX_SIZE} pushes per stream (0 turns history off)"),
        ));
    }
    if ttl_s > MAX_TTL_S {
        return Err(r.invalid(
            format!("{table}.ttl_s"),
            format!("at most {MAX_TTL_S} (7 days)"),
        ));
    }
    if size > 0 && ttl_s == 0 {
        return Err(r.invalid(
            format!("{table}.ttl_s"),
            "must be at least 1 while size is above 0 (size = 0 turns history off)",
        ));
    }
    Ok(StreamLimits {
        size,
        ttl: Duration::from_secs(ttl_s),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Layers};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.toml"))
    }

    fn app(name: &str) -> AppName {
        AppName::parse(name, 128).unwrap()
    }

    #[test]
    fn history_is_on_for_every_app_by_default_and_reaches_hub_and_broker() {
        let config = parse("").unwrap();
        let policy = &config.server.hub.history;
        assert_eq!(*policy, HistoryPolicy::default());
        assert_eq!(policy.default.size, 100);
        assert_eq!(policy.default.ttl, Duration::from_secs(300));
        assert_eq!(policy.max_bytes, 64 << 20);
        assert!(policy.enabled(&app("anything")));
        assert_eq!(config.server.broker.settings.history, *policy);
    }

    #[test]
    fn overrides_match_in_file_order_and_take_the_rest_from_the_defaults() {
        let config = parse(
            r#"
[history]
size = 50
ttl_s = 120
max_bytes = 2097152
[history.apps."chat-vip"]
size = 1000
[history.apps."chat-*"]
ttl_s = 60
[history.apps."audit"]
size = 0
[history.apps."*-live"]
size = 5
ttl_s = 5
"#,
        )
        .unwrap();
        let policy = &config.server.hub.history;
        assert_eq!(config.server.broker.settings.history, *policy);
        let patterns: Vec<&str> = policy.overrides.iter().map(|(p, _)| p.as_str()).collect();
        // The file's order, not the sorted one ("*-live", "audit", "chat-*", "chat-vip").
        assert_eq!(patterns, ["chat-vip", "chat-*", "audit", "*-live"]);
        let limits = |name: &str| {
            let l = policy.limits(&app(name));
            (l.size, l.ttl.as_secs())
        };
        assert_eq!(limits("chat-vip"), (1000, 120), "first match wins");
        assert_eq!(limits("chat-1"), (50, 60), "size from [history]");
        assert_eq!(limits("chat-live"), (50, 60), "chat-* comes before *-live");
        assert_eq!(limits("match-live"), (5, 5));
        assert_eq!(limits("match"), (50, 120));
        assert!(!policy.enabled(&app("audit")));
        assert_eq!(policy.max_bytes, 2 << 20);
    }

    #[test]
    fn the_file_order_survives_inline_and_dotted_tables() {
        assert_eq!(
            file_order("[history]\napps = { \"b*\" = { size = 1 }, \"a*\" = { size = 2 } }\n"),
            ["b*", "a*"]
        );
        assert_eq!(
            file_order("[history]\napps.\"z\".size = 1\napps.\"y\".size = 2\n"),
            ["z", "y"]
        );
        assert!(file_order("listen = \"x\"").is_empty());
        assert!(file_order("[history").is_empty());
    }

    #[test]
    fn size_zero_turns_history_off_for_every_app_but_the_overridden() {
        let config = parse("[history]\nsize = 0\n[history.apps.\"match\"]\nsize = 10\n").unwrap();
        let policy = &config.server.hub.history;
        assert!(!policy.enabled(&app("chat")));
        assert!(policy.enabled(&app("match")));
        assert_eq!(policy.limits(&app("match")).size, 10);
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (text, expected) in [
            (
                "[history]\nsize = 100001",
                "key `history.size`: at most 100000 pushes per stream",
            ),
            ("[history]\nsize = -1", "history.size"),
            (
                "[history]\nttl_s = 0",
                "key `history.ttl_s`: must be at least 1 while size is above 0",
            ),
            (
                "[history]\nttl_s = 604801",
                "key `history.ttl_s`: at most 604800 (7 days)",
            ),
            (
                "[history]\nmax_bytes = 1048575",
                "key `history.max_bytes`: must be at least 1048576 (1 MiB)",
            ),
            ("[history]\nsise = 5", "unknown field `sise`"),
            (
                "[history.apps.\"chat-*\"]\nmax_bytes = 5",
                "unknown field `max_bytes`",
            ),
            (
                "[history.apps.\"\"]\nsize = 5",
                "key `history.apps.`: `` is not an app name pattern",
            ),
            (
                "[history.apps.\"a\\u0007*\"]\nsize = 5",
                "is not an app name pattern",
            ),
            (
                "[history.apps.\"chat-*\"]\nsize = 200000",
                "key `history.apps.chat-*.size`: at most 100000",
            ),
            (
                "[history.apps.\"chat-*\"]\nttl_s = 0",
                "key `history.apps.chat-*.ttl_s`: must be at least 1",
            ),
            (
                "[limits]\nmax_history_page = 0",
                "key `limits.max_history_page`: must be greater than 0",
            ),
            (
                "[limits]\nmax_history_page = 100001",
                "key `limits.max_history_page`: at most 100000",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.starts_with("config file `gw.toml`"), "{text}: {err}");
        }
        // Off needs no TTL.
        parse("[history]\nsize = 0\nttl_s = 0").unwrap();
    }

    #[test]
    fn the_environment_sets_history_keys_and_comes_after_the_file() {
        let loaded = Layers::default()
            .env("history.size", "7")
            .env("history.ttl_s", "9")
            .env("history.max_bytes", "3145728")
            .env("history.apps.live-*.size", "0")
            .load()
            .unwrap();
        let policy = &loaded.config.server.hub.history;
        assert_eq!(policy.default.size, 7);
        assert_eq!(policy.default.ttl, Duration::from_secs(9));
        assert_eq!(policy.max_bytes, 3 << 20);
        assert!(!policy.enabled(&app("live-1")));
        let err = Layers::default()
            .env("history.size", "many")
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment variable `WS_GATEWAY_HISTORY__SIZE`"),
            "{err}"
        );
    }
}
