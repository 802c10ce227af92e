//! The configuration as written, before validation: the shape shared by the file, the
//! environment variables and the flags (every key optional, unknown keys refused), the
//! durations every `*_ms` key accepts, and the defaults written in that same shape.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BrokerConfig, Limits, MemoryConfig, ServerConfig, Timeouts};

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stat_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) private_apps: Option<Vec<String>>,
    #[serde(default)]
    pub(super) timeouts: FileTimeouts,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) push_api_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) push_allow_from: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) allowed_origins: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tls: Option<FileTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stat_tls: Option<FileTls>,
    /// Read in two steps, `kind` first (see `auth::read_file_auth`), so that each kind
    /// accepts only its own keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) auth: Option<toml::Table>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) broker: Option<super::broker::FileBroker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) demo_page: Option<bool>,
    #[serde(default)]
    pub(super) memory: FileMemory,
    #[serde(default)]
    pub(super) history: super::history::FileHistory,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTimeouts {
    pub(super) auth_ms: Option<Millis>,
    pub(super) close_ms: Option<Millis>,
    pub(super) shutdown_ms: Option<Millis>,
    pub(super) ping_interval_ms: Option<Millis>,
    pub(super) idle_ms: Option<Millis>,
    pub(super) head_ms: Option<Millis>,
    pub(super) push_body_ms: Option<Millis>,
    pub(super) cluster_query_ms: Option<Millis>,
    pub(super) evict_after_ms: Option<Millis>,
    pub(super) stat_request_ms: Option<Millis>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) max_message_bytes: Option<usize>,
    pub(super) max_push_body_bytes: Option<usize>,
    pub(super) max_app_name_bytes: Option<usize>,
    pub(super) max_subscriptions: Option<usize>,
    pub(super) outbox_messages: Option<usize>,
    pub(super) outbox_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_messages_per_s: Option<u32>,
    pub(super) message_burst: Option<u32>,
    pub(super) max_inflight_pushes: Option<usize>,
    pub(super) max_push_batch: Option<usize>,
    pub(super) max_push_members: Option<usize>,
    pub(super) max_control_requests: Option<usize>,
    pub(super) max_presence_page: Option<usize>,
    pub(super) max_history_page: Option<usize>,
    pub(super) accept_backlog: Option<u32>,
    pub(super) max_auth_message_bytes: Option<usize>,
    pub(super) max_handshakes: Option<usize>,
    pub(super) max_connections_per_ip: Option<usize>,
    pub(super) max_buffered_push_bytes: Option<usize>,
    pub(super) fd_reserve: Option<usize>,
    pub(super) metrics_top_apps: Option<usize>,
    pub(super) max_stat_requests: Option<usize>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMemory {
    pub(super) trim: Option<bool>,
    pub(super) trim_interval_ms: Option<Millis>,
    pub(super) trim_min_drop: Option<usize>,
}

/// A duration key (`*_ms`): an integer is milliseconds (`5000`), a string is a duration with
/// its unit (`"5s"`, `"500ms"`, `"1m"`, `"1h"`, read by `humantime`). From an environment
/// variable, digits alone are milliseconds too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(pub(crate) Duration);

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        serializer.serialize_u64(ms)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Millis;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("milliseconds (an integer) or a duration such as \"10s\" or \"500ms\"")
            }

            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Millis, E> {
                Ok(Millis(Duration::from_millis(ms)))
            }

            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<Millis, E> {
                u64::try_from(ms)
                    .map(|ms| Millis(Duration::from_millis(ms)))
                    .map_err(|_| E::custom("must not be negative"))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Millis, E> {
                let text = text.trim();
                if let Ok(ms) = text.parse::<u64>() {
                    return Ok(Millis(Duration::from_millis(ms)));
                }
                humantime::parse_duration(text).map(Millis).map_err(|_| {
                    E::custom(format!(
                        "`{text}` is not a duration such as \"500ms\", \"10s\", \"1m\" or \"1h\""
                    ))
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn ms(duration: Duration) -> Option<Millis> {
    Some(Millis(duration))
}

/// Every key that has a default, with it, in the shape of the file: the lowest layer, so that
/// `check-config` shows each key's effective value. Keys without a default (`tls`, `auth`,
/// `allowed_origins`, the broker's servers) are left out: their absence means something.
pub(super) fn defaults() -> FileConfig {
    let server = ServerConfig::default();
    let (t, l) = (Timeouts::default(), Limits::default());
    let broker = BrokerConfig::default();
    let memory = MemoryConfig::default();
    let mut private_apps: Vec<String> = server
        .hub
        .private_apps
        .iter()
        .map(|app| app.as_str().to_owned())
        .collect();
    private_apps.sort();
    FileConfig {
        listen: Some(super::DEFAULT_LISTEN.to_owned()),
        stat_listen: Some(super::DEFAULT_STAT_LISTEN.to_owned()),
        private_apps: Some(private_apps),
        timeouts: FileTimeouts {
            auth_ms: ms(t.auth),
            close_ms: ms(t.close),
            shutdown_ms: ms(t.shutdown),
            ping_interval_ms: ms(t.ping_interval),
            idle_ms: ms(t.idle),
            head_ms: ms(t.head),
            push_body_ms: ms(t.push_body),
            cluster_query_ms: ms(t.cluster_query),
            evict_after_ms: ms(t.evict_after),
            stat_request_ms: ms(t.stat_request),
        },
        limits: FileLimits {
            max_message_bytes: Some(l.max_message_bytes),
            max_push_body_bytes: Some(l.max_push_body_bytes),
            max_app_name_bytes: Some(server.hub.max_app_name_len),
            max_subscriptions: Some(server.hub.max_subscriptions),
            outbox_messages: Some(l.outbox_messages),
            outbox_bytes: Some(l.outbox_bytes),
            max_connections: Some(l.max_connections),
            max_messages_per_s: Some(l.max_messages_per_s),
            message_burst: Some(l.message_burst),
            max_inflight_pushes: Some(l.max_inflight_pushes),
            max_push_batch: Some(l.max_push_batch),
            max_push_members: Some(l.max_push_members),
            max_control_requests: Some(l.max_control_requests),
            max_presence_page: Some(l.max_presence_page),
            max_history_page: Some(l.max_history_page),
            accept_backlog: Some(l.accept_backlog),
            max_auth_message_bytes: Some(l.max_auth_message_bytes),
            max_handshakes: Some(l.max_handshakes),
            max_connections_per_ip: Some(l.max_connections_per_ip),
            max_buffered_push_bytes: Some(l.max_buffered_push_bytes),
            fd_reserve: Some(l.fd_reserve),
            metrics_top_apps: Some(l.metrics_top_apps),
            max_stat_requests: Some(l.max_stat_requests),
        },
        push_api_keys: Some(Vec::new()),
        push_allow_from: Some(
            server
                .access
                .push_allow_from
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        allowed_origins: None,
        tls: None,
        stat_tls: None,
        auth: None,
        broker: Some(super::broker::FileBroker::defaults(&broker)),
        demo_page: Some(server.demo_page),
        memory: FileMemory {
            trim: Some(memory.trim),
            trim_interval_ms: ms(memory.trim_interval),
            trim_min_drop: Some(memory.trim_min_drop),
        },
        history: super::history::FileHistory::defaults(),
    }
}
