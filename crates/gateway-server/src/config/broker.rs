//! The `[broker]` table: how this node reaches the others (docs: README "Running a cluster").
//!
//! ```toml
//! [broker]
//! kind = "redis"                      # "local" (default), "redis" or "nats"
//! url = "redis://:secret@10.0.0.5:6379/"
//! # urls = ["redis://10.0.0.5:6379/", "redis://10.0.0.6:6379/"]   # Redis shards
//! prefix = "ws-gateway"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use gateway_broker::{BrokerSettings, redact_url};
use serde::{Deserialize, Serialize};

use super::Resolver;
use super::file::Millis;
use crate::error::ConfigError;

/// Which broker, resolved and checked. Its `Debug` hides passwords in URLs.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum BrokerKind {
    /// One process, no server: a push goes straight to this node's subscribers.
    #[default]
    Local,
    /// Redis pub/sub; apps are sharded over `urls` by a consistent hash.
    Redis { urls: Vec<String> },
    /// NATS core pub/sub (the cluster view uses a JetStream key-value bucket).
    Nats {
        url: String,
        credentials: NatsCredentials,
    },
}

impl std::fmt::Debug for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerKind::Local => f.write_str("Local"),
            BrokerKind::Redis { urls } => f
                .debug_struct("Redis")
                .field(
                    "urls",
                    &urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
                )
                .finish(),
            BrokerKind::Nats { url, credentials } => f
                .debug_struct("Nats")
                .field("url", &redact_url(url))
                .field("credentials", credentials)
                .finish(),
        }
    }
}

/// NATS authentication besides what the URL carries (`nats://user:pass@host`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct NatsCredentials {
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A `.creds` file (JWT and NKey seed), relative to the config file.
    pub credentials_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCredentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
}

/// The `[broker]` table, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    /// Prefix, node id (empty: derived at start-up from the host name and the listen port),
    /// publish timeout, reconnect backoff.
    pub settings: BrokerSettings,
    /// How often this node reports its counts for `/stat?scope=cluster`. A report lives three
    /// intervals, so a dead node leaves the cluster view within three intervals. Default 1 s.
    pub report_interval: Duration,
    /// A connection that waited longer than this for the broker to confirm a new topic it
    /// subscribed to is closed with 1013 (checked every `report_interval`). Default 10 s.
    pub subscribe_timeout: Duration,
}

impl BrokerConfig {
    pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

    /// How long a node's report outlives it.
    pub fn report_ttl(&self) -> Duration {
        self.report_interval * 3
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Local,
            settings: BrokerSettings {
                node_id: String::new(),
                ..BrokerSettings::default()
            },
            report_interval: BrokerConfig::DEFAULT_REPORT_INTERVAL,
            subscribe_timeout: BrokerConfig::DEFAULT_SUBSCRIBE_TIMEOUT,
        }
    }
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBroker {
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    urls: Option<Vec<String>>,
    prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    publish_timeout_ms: Option<Millis>,
    reconnect_min_ms: Option<Millis>,
    reconnect_max_ms: Option<Millis>,
    report_interval_ms: Option<Millis>,
    subscribe_timeout_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials_file: Option<PathBuf>,
}

impl FileBroker {
    /// The keys with a default (the local broker's), for the lowest configuration layer.
    pub(super) fn defaults(config: &BrokerConfig) -> FileBroker {
        let ms = |duration| Some(Millis(duration));
        let settings = &config.settings;
        FileBroker {
            kind: Some("local".to_owned()),
            prefix: Some(settings.prefix.clone()),
            publish_timeout_ms: ms(settings.publish_timeout),
            reconnect_min_ms: ms(settings.reconnect_min),
            reconnect_max_ms: ms(settings.reconnect_max),
            report_interval_ms: ms(config.report_interval),
            subscribe_timeout_ms: ms(config.subscribe_timeout),
            ..FileBroker::default()
        }
    }
}

pub(super) fn resolve(file: FileBroker, r: &Resolver<'_>) -> Result<BrokerConfig, ConfigError> {
    let defaults = BrokerConfig::default();
    let kind = file.kind.as_deref().unwrap_or("local");
    let nats_only = [
        ("token", file.token.is_some()),
        ("user", file.user.is_some()),
        ("password", file.password.is_some()),
        ("credentials_file", file.credentials_file.is_some()),
    ];
    if kind != "nats"
        && let Some((key, _)) = nats_only.iter().find(|(_, set)| *set)
    {
        return Err(r.invalid(
            format!("broker.{key}"),
            "is a NATS option; kind is not \"nats\"",
        ));
    }
    let kind = match kind {
        "local" => {
            if file.url.is_some() || file.urls.is_some() {
                return Err(r.invalid(
                    "broker.url",
                    "the local broker has no server; set kind = \"redis\" or \"nats\"",
                ));
            }
            BrokerKind::Local
        }
        "redis" => {
            let urls = match (file.url, file.urls) {
                (Some(url), None) => vec![url],
                (None, Some(urls)) if !urls.is_empty() => urls,
                (Some(_), Some(_)) => {
                    return Err(r.invalid("broker.urls", "set either url or urls, not both"));
                }
                _ => return Err(r.invalid("broker.url", "kind = \"redis\" needs url or urls")),
            };
            for url in &urls {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(r.invalid(
                        "broker.url",
                        format!("`{}` is not a redis:// or rediss:// URL", redact_url(url)),
                    ));
                }
            }
            let mut unique = urls.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != urls.len() {
                return Err(r.invalid("broker.urls", "a server is listed twice"));
            }
            BrokerKind::Redis { urls }
        }
        "nats" => {
            if file.urls.is_some() {
                return Err(r.invalid(
                    "broker.urls",
                    "NATS takes one url (a comma-separated list of servers of one NATS cluster)",
                ));
            }
            let Some(url) = file.url else {
                return Err(r.invalid("broker.url", "kind = \"nats\" needs url"));
            };
            if !url.split(',').all(|u| {
                let u = u.trim();
                u.starts_with("nats://") || u.starts_with("tls://")
            }) {
                return Err(r.invalid(
                    "broker.url",
                    format!("`{}` is not a nats:// or tls:// URL", redact_url(&url)),
                ));
            }
            if file.password.is_some() != file.user.is_some() {
                return Err(r.invalid("broker.user", "user and password go together"));
            }
            BrokerKind::Nats {
                url,
                credentials: NatsCredentials {
                    token: file.token,
                    user: file.user,
                    password: file.password,
                    credentials_file: file
                        .credentials_file
                        .map(|p| r.relative("broker.credentials_file", &p)),
                },
            }
        }
        other => {
            return Err(r.invalid(
                "broker.kind",
                format!("`{other}` is not one of \"local\", \"redis\", \"nats\""),
            ));
        }
    };
    let prefix = file
        .prefix
        .unwrap_or_else(|| defaults.settings.prefix.clone());
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(r.invalid(
            "broker.prefix",
            "must be letters, digits, `-` or `_` (it starts every channel, subject and key)",
        ));
    }
    let node_id = file.node_id.unwrap_or_default();
    if node_id.len() > 128 || node_id.chars().any(char::is_control) {
        return Err(r.invalid("broker.node_id", "at most 128 printable characters"));
    }
    let d = &defaults.settings;
    let settings = BrokerSettings {
        prefix,
        node_id,
        publish_timeout: r.millis(
            "broker.publish_timeout_ms",
            file.publish_timeout_ms,
            d.publish_timeout,
        )?,
        reconnect_min: r.millis(
            "broker.reconnect_min_ms",
            file.reconnect_min_ms,
            d.reconnect_min,
        )?,
        reconnect_max: r.millis(
            "broker.reconnect_max_ms",
            file.reconnect_max_ms,
            d.reconnect_max,
        )?,
        // Set from `[history]` by the caller (`resolve`): one policy for broker and hub.
        history: d.history.clone(),
    };
    if settings.reconnect_max < settings.reconnect_min {
        return Err(r.invalid(
            "broker.reconnect_max_ms",
            "must be at least reconnect_min_ms",
        ));
    }
    Ok(BrokerConfig {
        kind,
        settings,
        report_interval: r.millis(
            "broker.report_interval_ms",
            file.report_interval_ms,
            defaults.report_interval,
        )?,
        subscribe_timeout: r.millis(
            "broker.subscribe_timeout_ms",
            file.subscribe_timeout_ms,
            defaults.subscribe_timeout,
        )?,
    })
}
