//! Validation: the layered configuration, as written, into what the server runs with. Each
//! refusal names the key, where its value came from (file, environment variable, flag) and
//! what is wrong.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{AppName, HubConfig};
use ipnet::IpNet;

use super::file::{FileConfig, FileMemory, FileTls, Millis};
use super::layers::Origins;
use super::{
    Access, AuthConfig, BrokerConfig, Config, Limits, MemoryConfig, ServerConfig, Timeouts, auth,
    broker,
};
use crate::error::ConfigError;

/// The most apps `/metrics` labels one by one (`limits.metrics_top_apps`).
const MAX_METRICS_TOP_APPS: usize = 10_000;

pub(crate) struct Resolver<'a> {
    pub(super) origins: &'a Origins<'a>,
    /// The patterns of `[history.apps]` in the file's order (TOML tables lose it).
    pub(super) history_order: &'a [String],
}

impl Resolver<'_> {
    /// A path given by `key`: from the file, relative to the file's own directory; from an
    /// environment variable or a flag, relative to the working directory, as a shell means it.
    pub(crate) fn relative(&self, key: &str, path: &Path) -> PathBuf {
        match self.origins.file_of(key) {
            Some(file) if path.is_relative() => match file.parent() {
                Some(dir) => dir.join(path),
                None => path.to_owned(),
            },
            _ => path.to_owned(),
        }
    }

    pub(crate) fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            origin: self.origins.of(&key).describe(self.origins.file()),
            key,
            reason: reason.into(),
        }
    }

    /// An address: `IP:PORT`, or `HOST:PORT` resolved now (its first IPv4 address, else its
    /// first address), so that the listener binds what `check-config` showed.
    fn address(
        &self,
        key: &str,
        value: Option<String>,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(text) = value else {
            return Ok(default);
        };
        if let Ok(addr) = text.parse() {
            return Ok(addr);
        }
        let not_an_address = || {
            self.invalid(
                key,
                format!("`{text}` is not an address like 127.0.0.1:5000 or localhost:5000"),
            )
        };
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(not_an_address());
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(not_an_address());
        }
        let resolved: Vec<SocketAddr> = text
            .to_socket_addrs()
            .map_err(|err| self.invalid(key, format!("cannot resolve `{host}`: {err}")))?
            .collect();
        resolved
            .iter()
            .find(|addr| addr.is_ipv4())
            .or_else(|| resolved.first())
            .copied()
            .ok_or_else(|| self.invalid(key, format!("`{host}` resolves to no address")))
    }

    /// Two listeners cannot share a port on one address, and a wildcard address takes the
    /// port on every address: refused here with both keys named, rather than as a bind error.
    fn distinct_listeners(&self, listen: SocketAddr, stat: SocketAddr) -> Result<(), ConfigError> {
        let same_port = listen.port() == stat.port() && listen.port() != 0;
        let overlap =
            listen.ip() == stat.ip() || listen.ip().is_unspecified() || stat.ip().is_unspecified();
        if same_port && overlap {
            return Err(self.invalid(
                "stat_listen",
                format!(
                    "{stat} and listen ({listen}) would share port {}; give the stat listener \
                     a port of its own",
                    stat.port()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn positive<T: Copy + PartialEq + From<u8>>(
        &self,
        key: &str,
        value: Option<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) if v == T::from(0) => Err(self.invalid(key, "must be greater than 0")),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    }

    pub(crate) fn millis(
        &self,
        key: &str,
        value: Option<Millis>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(Millis(duration)) if duration.is_zero() => {
                Err(self.invalid(key, "must be greater than 0"))
            }
            Some(Millis(duration)) => Ok(duration),
            None => Ok(default),
        }
    }

    pub(super) fn resolve(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let defaults = ServerConfig::default();
        let listen = self.address("listen", file.listen, defaults.listen)?;
        let stat_listen = self.address("stat_listen", file.stat_listen, defaults.stat_listen)?;
        self.distinct_listeners(listen, stat_listen)?;

        let (t, dt) = (file.timeouts, defaults.timeouts);
        let timeouts = Timeouts {
            auth: self.millis("timeouts.auth_ms", t.auth_ms, dt.auth)?,
            close: self.millis("timeouts.close_ms", t.close_ms, dt.close)?,
            shutdown: self.millis("timeouts.shutdown_ms", t.shutdown_ms, dt.shutdown)?,
            ping_interval: self.millis(
                "timeouts.ping_interval_ms",
                t.ping_interval_ms,
                dt.ping_interval,
            )?,
            idle: self.millis("timeouts.idle_ms", t.idle_ms, dt.idle)?,
            head: self.millis("timeouts.head_ms", t.head_ms, dt.head)?,
            push_body: self.millis("timeouts.push_body_ms", t.push_body_ms, dt.push_body)?,
            cluster_query: self.millis(
                "timeouts.cluster_query_ms",
                t.cluster_query_ms,
                dt.cluster_query,
            )?,
            evict_after: self.millis(
                "timeouts.evict_after_ms",
                t.evict_after_ms,
                dt.evict_after,
            )?,
            stat_request: self.millis(
                "timeouts.stat_request_ms",
                t.stat_request_ms,
                dt.stat_request,
            )?,
        };
        if timeouts.idle <= timeouts.ping_interval {
            return Err(self.invalid(
                "timeouts.idle_ms",
                "must be longer than timeouts.ping_interval_ms, or a healthy idle client is closed before its pong can arrive",
            ));
        }

        let (l, dl) = (file.limits, defaults.limits);
        let limits = Limits {
            max_message_bytes: self.positive(
                "limits.max_message_bytes",
                l.max_message_bytes,
                dl.max_message_bytes,
            )?,
            max_push_body_bytes: self.positive(
                "limits.max_push_body_bytes",
                l.max_push_body_bytes,
                dl.max_push_body_bytes,
            )?,
            outbox_messages: self.positive(
                "limits.outbox_messages",
                l.outbox_messages,
                dl.outbox_messages,
            )?,
            outbox_bytes: self.positive("limits.outbox_bytes", l.outbox_bytes, dl.outbox_bytes)?,
            max_connections: self.positive(
                "limits.max_connections",
                l.max_connections,
                dl.max_connections,
            )?,
            max_messages_per_s: self.positive(
                "limits.max_messages_per_s",
                l.max_messages_per_s,
                dl.max_messages_per_s,
            )?,
            message_burst: self.positive(
                "limits.message_burst",
                l.message_burst,
                dl.message_burst,
            )?,
            max_inflight_pushes: self.positive(
                "limits.max_inflight_pushes",
                l.max_inflight_pushes,
                dl.max_inflight_pushes,
            )?,
            max_push_batch: self.positive(
                "limits.max_push_batch",
                l.max_push_batch,
                dl.max_push_batch,
            )?,
            max_push_members: self.positive(
                "limits.max_push_members",
                l.max_push_members,
                dl.max_push_members,
            )?,
            max_control_requests: self.positive(
                "limits.max_control_requests",
                l.max_control_requests,
                dl.max_control_requests,
            )?,
            max_presence_page: self.positive(
                "limits.max_presence_page",
                l.max_presence_page,
                dl.max_presence_page,
            )?,
            max_history_page: match self.positive(
                "limits.max_history_page",
                l.max_history_page,
                dl.max_history_page,
            )? {
                n if n > super::history::MAX_SIZE => {
                    return Err(self.invalid(
                        "limits.max_history_page",
                        format!(
                            "at most {}: no stream keeps more (history.size)",
                            super::history::MAX_SIZE
                        ),
                    ));
                }
                n => n,
            },
            accept_backlog: self.positive(
                "limits.accept_backlog",
                l.accept_backlog,
                dl.accept_backlog,
            )?,
            max_auth_message_bytes: self.positive(
                "limits.max_auth_message_bytes",
                l.max_auth_message_bytes,
                dl.max_auth_message_bytes,
            )?,
            max_handshakes: self.positive(
                "limits.max_handshakes",
                l.max_handshakes,
                dl.max_handshakes,
            )?,
            // 0 is meaningful here: no limit.
            max_connections_per_ip: l
                .max_connections_per_ip
                .unwrap_or(dl.max_connections_per_ip),
            max_buffered_push_bytes: self.positive(
                "limits.max_buffered_push_bytes",
                l.max_buffered_push_bytes,
                dl.max_buffered_push_bytes,
            )?,
            fd_reserve: l.fd_reserve.unwrap_or(dl.fd_reserve),
            // 0 is meaningful: every app's subscribers under one series.
            metrics_top_apps: match l.metrics_top_apps {
                Some(k) if k > MAX_METRICS_TOP_APPS => {
                    return Err(self.invalid(
                        "limits.metrics_top_apps",
                        format!("at most {MAX_METRICS_TOP_APPS}: each app labelled is a series every scrape"),
                    ));
                }
                k => k.unwrap_or(dl.metrics_top_apps),
            },
            max_stat_requests: self.positive(
                "limits.max_stat_requests",
                l.max_stat_requests,
                dl.max_stat_requests,
            )?,
        };
        if limits.max_buffered_push_bytes < limits.max_push_body_bytes {
            return Err(self.invalid(
                "limits.max_buffered_push_bytes",
                "must be at least limits.max_push_body_bytes, or the largest push could never be read",
            ));
        }
        let max_app_name_len = self.positive(
            "limits.max_app_name_bytes",
            l.max_app_name_bytes,
            defaults.hub.max_app_name_len,
        )?;
        let max_subscriptions = self.positive(
            "limits.max_subscriptions",
            l.max_subscriptions,
            defaults.hub.max_subscriptions,
        )?;

        let private_apps = match file.private_apps {
            None => defaults.hub.private_apps,
            Some(names) => names
                .iter()
                .map(|name| {
                    AppName::parse(name, max_app_name_len)
                        .map_err(|err| self.invalid("private_apps", format!("`{name}`: {err}")))
                })
                .collect::<Result<HashSet<_>, _>>()?,
        };

        let access = self.access(
            file.push_api_keys,
            file.push_allow_from,
            file.allowed_origins,
        )?;
        let tls = self.tls("tls", file.tls)?;
        let stat_tls = self.tls("stat_tls", file.stat_tls)?;

        // One policy, given to the hub (the node's own history) and to the broker (which
        // gives positions and keeps history in a cluster): they must agree.
        let history =
            super::history::resolve(file.history, self.history_order, max_app_name_len, self)?;
        let mut broker = match file.broker {
            None => BrokerConfig::default(),
            Some(table) => broker::resolve(table, self)?,
        };
        broker.settings.history = history.clone();

        let auth = match file.auth {
            None => AuthConfig::Anonymous,
            Some(auth) => auth::resolve(auth::read_file_auth(auth, self)?, self)?,
        };
        let memory = self.memory(file.memory)?;

        Ok(Config {
            server: ServerConfig {
                listen,
                stat_listen,
                hub: HubConfig {
                    private_apps,
                    max_app_name_len,
                    max_subscriptions,
                    history,
                },
                timeouts,
                limits,
                access,
                tls,
                stat_tls,
                broker,
                demo_page: file.demo_page.unwrap_or(defaults.demo_page),
            },
            auth,
            memory,
        })
    }

    fn memory(&self, file: FileMemory) -> Result<MemoryConfig, ConfigError> {
        let defaults = MemoryConfig::default();
        Ok(MemoryConfig {
            trim: file.trim.unwrap_or(defaults.trim),
            trim_interval: self.millis(
                "memory.trim_interval_ms",
                file.trim_interval_ms,
                defaults.trim_interval,
            )?,
            trim_min_drop: file.trim_min_drop.unwrap_or(defaults.trim_min_drop),
        })
    }

    fn access(
        &self,
        keys: Option<Vec<String>>,
        allow_from: Option<Vec<String>>,
        origins: Option<Vec<String>>,
    ) -> Result<Access, ConfigError> {
        let defaults = Access::default();
        let push_api_keys = keys.unwrap_or_default();
        if let Some(i) = push_api_keys.iter().position(|k| k.len() < 16) {
            return Err(self.invalid(
                "push_api_keys",
                format!("key #{} is shorter than 16 characters", i + 1),
            ));
        }
        let push_allow_from = match allow_from {
            None => defaults.push_allow_from,
            Some(networks) => networks
                .iter()
                .map(|net| {
                    net.parse::<IpNet>()
                        .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            self.invalid(
                                "push_allow_from",
                                format!("`{net}` is not a network like 10.0.0.0/8 or an address"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        if let Some(origins) = &origins
            && origins.is_empty()
        {
            return Err(self.invalid(
                "allowed_origins",
                "is empty, which would refuse every browser; remove the key to allow all",
            ));
        }
        Ok(Access {
            push_api_keys,
            push_allow_from,
            allowed_origins: origins,
        })
    }

    fn tls(
        &self,
        key: &str,
        file: Option<FileTls>,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let Some(file) = file else {
            return Ok(None);
        };
        crate::tls::load(
            &self.relative(&format!("{key}.cert_file"), &file.cert_file),
            &self.relative(&format!("{key}.key_file"), &file.key_file),
        )
        .map(Some)
        .map_err(|reason| self.invalid(key, reason))
    }
}
