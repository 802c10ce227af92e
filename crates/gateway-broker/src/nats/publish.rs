//! Sending publications: queued on the client's connection and confirmed by a round trip
//! (see the module docs of [`super`]); with history, stored in JetStream first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Client;
use async_nats::client::PublishErrorKind;
use gateway_core::{Position, Publication, Topic};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::history::HistoryStore;
use super::subscriptions;
use crate::{BrokerError, Published, wire};

/// Queues one message on the client's connection. Any failure means it was not queued, so
/// nothing was sent.
pub(super) async fn queue(
    client: &Client,
    subject: String,
    payload: bytes::Bytes,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(), BrokerError> {
    // `Client::publish` fails only before it queues the message, and its queue's `send`
    // queues nothing when the timeout gives it up.
    match tokio::time::timeout_at(deadline, client.publish(subject, payload)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BrokerError::Unavailable(match e.kind() {
            PublishErrorKind::Send => "the NATS client has stopped".to_owned(),
            _ => format!("not sent: {e}"),
        })),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "not sent: the NATS client took no message within {timeout:?}"
        ))),
    }
}

/// Confirms the messages queued so far: the server has them once a round trip behind them
/// comes back on the connection they were queued on (`epoch`: no disconnection since).
pub(super) async fn confirm(
    client: &Client,
    disconnections: &AtomicU64,
    epoch: u64,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(), BrokerError> {
    match tokio::time::timeout_at(deadline, subscriptions::round_trip(client)).await {
        Ok(Ok(())) if disconnections.load(Ordering::Acquire) == epoch => Ok(()),
        Ok(Ok(())) => Err(BrokerError::Failed(
            "the connection to NATS was lost after the push was queued".into(),
        )),
        Ok(Err(e)) => Err(BrokerError::Failed(format!(
            "no confirmation from NATS: {e}"
        ))),
        Err(_) => Err(BrokerError::TimedOut(timeout)),
    }
}

/// Sends one publication: with history, stored in JetStream with its position and then
/// queued live (see [`history`]); without, queued live as wire version 1. Returns its position,
/// once queued (not yet confirmed).
pub(super) async fn send(
    client: &Client,
    history: &HistoryStore,
    prefix: &str,
    topic: &Topic,
    mut publication: Publication,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Option<Position>, BrokerError> {
    let subject = wire::channel(prefix, topic);
    if !history.enabled(topic) {
        // Exactly as before history: no position, wire version 1.
        publication.position = None;
        let payload = wire::encode(&publication);
        queue(client, subject, payload, deadline, timeout).await?;
        return Ok(None);
    }
    let position = history
        .append(subject, publication, deadline, |subject, payload| {
            queue(client, subject, payload, deadline, timeout)
        })
        .await?;
    Ok(Some(position))
}

/// Creates or updates the history stream on every connection, so its limits follow this
/// node's policy before the first push needs it. A failure is logged; the first publication
/// with history tries again and reports it.
pub(super) async fn ensure_history_on_connect(
    history: Arc<HistoryStore>,
    connected: Arc<Notify>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = connected.notified() => {}
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(error) = history.ensure(deadline).await {
            tracing::warn!(%error, "NATS history stream not ready");
        }
    }
}

pub(super) fn published(position: Option<Position>) -> Published {
    position.map_or_else(Published::new, Published::at)
}
