//! A shard's publisher connection: one multiplexed connection that every publish of the shard
//! shares (their commands are pipelined on one socket), kept up by a supervising task.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client};
use tokio::sync::Notify;

use super::{RedisOptions, Role, Shared, history};
use crate::BrokerSettings;
use crate::backoff::Backoff;

/// The connection publishes take, when there is one.
#[derive(Default)]
pub(super) struct Publisher {
    /// Cloned by each publish (a few reference counts); written only when the connection
    /// changes, and never held across an await.
    connection: RwLock<Option<Live>>,
    /// A publish saw a connection error: the supervisor checks at once instead of waiting for
    /// its next PING.
    suspect: Notify,
}

/// A connection, and the run of the server it reached (`INFO server`'s `run_id`, new at each
/// start of a Redis process; empty when the server would not say).
#[derive(Clone)]
pub(super) struct Live {
    pub(super) connection: MultiplexedConnection,
    pub(super) server_run: Arc<str>,
}

impl Publisher {
    pub(super) fn connection(&self) -> Option<MultiplexedConnection> {
        self.live().map(|live| live.connection)
    }

    /// The connection with its server's run, read together: a publication with history
    /// names the run of the server that will run its script.
    pub(super) fn live(&self) -> Option<Live> {
        self.connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Publishes fail from now on (until the supervisor sets a new connection).
    pub(super) fn clear(&self) {
        self.set(None);
    }

    fn set(&self, connection: Option<Live>) {
        *self.connection.write().unwrap_or_else(|e| e.into_inner()) = connection;
    }
}

pub(super) struct Task {
    pub(super) slot: Arc<Publisher>,
    pub(super) client: Client,
    pub(super) shard: usize,
    pub(super) addr: String,
    pub(super) shared: Arc<Shared>,
    pub(super) options: RedisOptions,
    pub(super) settings: BrokerSettings,
}

/// Connects, watches the connection with PINGs, and replaces it when it fails, until the
/// broker closes.
pub(super) async fn run(task: Task) {
    let Task {
        slot,
        client,
        shard,
        addr,
        shared,
        options,
        settings,
    } = task;
    // Each request's deadline is the caller's (publish_timeout, ping_timeout), not the
    // connection's default of 500 ms.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(None);
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let cancel = shared.cancel.clone();
    // Scripts are loaded only where some app keeps history: a server that refuses scripting
    // still carries the pushes of a cluster without history.
    let history = &settings.history;
    let history_on =
        history.default.enabled() || history.overrides.iter().any(|(_, l)| l.enabled());
    loop {
        let attempt = tokio::select! {
            () = cancel.cancelled() => break,
            attempt = tokio::time::timeout(
                options.connect_timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            ) => attempt,
        };
        let error = match attempt {
            Err(_) => format!("no connection within {:?}", options.connect_timeout),
            Ok(Err(error)) => error.to_string(),
            Ok(Ok(mut connection)) => {
                tracing::debug!(shard, %addr, "redis publisher connected");
                let loaded = if history_on {
                    match load_scripts(&mut connection, &options).await {
                        Ok(()) => server_run(&mut connection, &options).await,
                        Err(error) => Err(error),
                    }
                } else {
                    Ok(Arc::from(""))
                };
                match loaded {
                    Err(error) => error,
                    Ok(server_run) => {
                        slot.set(Some(Live {
                            connection: connection.clone(),
                            server_run,
                        }));
                        shared.set_up(shard, Role::Publisher, true, None);
                        let Some(error) = watch(connection, &slot, &shared, &options).await else {
                            break;
                        };
                        slot.clear();
                        shared.set_up(
                            shard,
                            Role::Publisher,
                            false,
                            Some(format!("redis {addr} (shard {shard}) publisher: {error}")),
                        );
                        // It was up: the next failure starts over from the shortest wait.
                        backoff.reset();
                        error
                    }
                }
            }
        };
        tracing::warn!(shard, %addr, %error, "redis publisher connection down, reconnecting");
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    slot.clear();
}

/// Loads the history scripts on a new connection, so that publications find them (a server
/// that restarted or was flushed has forgotten them). A connection that fails meanwhile is an
/// error (connect again); a server that refuses the scripts is logged, and each publication
/// with history then tries `EVAL` and fails with the server's answer.
async fn load_scripts(
    connection: &mut MultiplexedConnection,
    options: &RedisOptions,
) -> Result<(), String> {
    match tokio::time::timeout(options.connect_timeout, history::load(connection)).await {
        Err(_) => Err(format!(
            "no answer to SCRIPT LOAD within {:?}",
            options.connect_timeout
        )),
        Ok(Err(error)) if super::is_connection_error(&error) => Err(error.to_string()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "redis refused the history scripts");
            Ok(())
        }
        Ok(Ok(())) => Ok(()),
    }
}

/// The `run_id` of the server `connection` reached (see [`Live`]): the publish script starts
/// a new run of a stream last written by another server run. A server that refuses `INFO`
/// gives an empty one (logged), which the script does not check.
async fn server_run(
    connection: &mut MultiplexedConnection,
    options: &RedisOptions,
) -> Result<Arc<str>, String> {
    let mut command = ::redis::cmd("INFO");
    command.arg("server");
    let info = command.query_async::<String>(connection);
    match tokio::time::timeout(options.connect_timeout, info).await {
        Err(_) => Err(format!(
            "no answer to INFO within {:?}",
            options.connect_timeout
        )),
        Ok(Err(error)) if super::is_connection_error(&error) => Err(error.to_string()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "redis refused INFO: a restart of it will not start new runs of the streams");
            Ok(Arc::from(""))
        }
        Ok(Ok(info)) => {
            let run = info
                .lines()
                .find_map(|line| line.strip_prefix("run_id:"))
                .map(str::trim)
                .filter(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()));
            if run.is_none() {
                tracing::warn!(
                    "redis INFO names no run_id: a restart of it will not start new runs of the streams"
                );
            }
            Ok(Arc::from(run.unwrap_or("")))
        }
    }
}

/// Returns why the connection failed, or `None` when the broker closed.
async fn watch(
    mut connection: MultiplexedConnection,
    slot: &Publisher,
    shared: &Shared,
    options: &RedisOptions,
) -> Option<String> {
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return None,
            () = tokio::time::sleep(options.ping_interval) => {}
            () = slot.suspect.notified() => {}
        }
        if let Err(error) = ping(&mut connection, options.ping_timeout).await {
            return Some(error);
        }
    }
}

async fn ping(connection: &mut MultiplexedConnection, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, ::redis::cmd("PING").exec_async(connection)).await {
        Err(_) => Err(format!("no answer to PING within {timeout:?}")),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(())) => Ok(()),
    }
}
