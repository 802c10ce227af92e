//! The cluster view on JetStream: one key-value bucket, one key per node, entries that expire
//! by the bucket's maximum age.
//!
//! JetStream removes expired messages itself (a KV bucket is a stream whose `max_age` is the
//! bucket's), so a node that died drops out within the maximum age plus the server's expiry
//! check. NATS 2.9 has no per-key TTL; the bucket's `max_age` is the TTL of every report.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::{self, context::GetStreamError, context::GetStreamErrorKind};
use async_nats::jetstream::{ErrorCode, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BrokerError, NodeReport};

/// `<prefix>-nodes`, escaped for a bucket name.
pub(super) fn bucket_name(prefix: &str) -> String {
    let mut name = escape(prefix);
    name.push_str("-nodes");
    name
}

/// A node id as a key.
pub(super) fn key(node: &str) -> String {
    escape(node)
}

/// JetStream bucket names allow `[A-Za-z0-9_-]`: letters, digits and `-` stay, every other
/// byte becomes `_XX` (upper-case hex). Reversible, so distinct ids stay distinct; the same as
/// [`crate::wire::escape`] for the usual names (`ws-gateway`, `node-1`).
pub(super) fn escape(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    out
}

fn failed(what: &str, error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Failed(format!("{what}: {error}"))
}

/// Puts `value` under `key`, creating the bucket or raising its maximum age to `ttl` first.
pub(super) async fn put(
    client: Client,
    bucket: &str,
    key: &str,
    value: Bytes,
    ttl: Duration,
) -> Result<(), BrokerError> {
    let js = jetstream::new(client);
    let store = match open(&js, bucket).await? {
        Some(store) if store.stream.cached_info().config.max_age >= ttl => store,
        // Raised, never lowered: see `NatsBroker::report`. The rest of the bucket's
        // configuration stays as the server has it.
        Some(store) => {
            let mut config = store.stream.cached_info().config.clone();
            config.max_age = ttl;
            js.update_stream(&config)
                .await
                .map_err(|e| failed("raising the cluster bucket's max age", e))?;
            store
        }
        None => {
            if let Err(create) = js.create_stream(stream_config(bucket, ttl)).await {
                // Another node created it meanwhile, with another TTL (with the same one,
                // create succeeds): use theirs; the next report raises its age if needed.
                if open(&js, bucket).await?.is_none() {
                    return Err(failed("creating the cluster bucket", create));
                }
            }
            open(&js, bucket)
                .await?
                .ok_or_else(|| failed("opening the cluster bucket", "it vanished"))?
        }
    };
    store
        .put(key, value)
        .await
        .map_err(|e| failed("writing the node report", e))?;
    Ok(())
}

/// Every live report that parses, sorted by node. No bucket yet: no reports.
pub(super) async fn read_all(client: Client, bucket: &str) -> Result<Vec<NodeReport>, BrokerError> {
    let js = jetstream::new(client);
    let Some(store) = open(&js, bucket).await? else {
        return Ok(Vec::new());
    };
    let mut keys = store
        .keys()
        .await
        .map_err(|e| failed("listing node reports", e))?;
    // The listing is a consumer over the bucket's stream: a report renewed while it runs can
    // show its key twice. Each key is read once.
    let mut names = std::collections::BTreeSet::new();
    while let Some(key) = keys.next().await {
        names.insert(key.map_err(|e| failed("listing node reports", e))?);
    }
    let mut reports = Vec::new();
    for key in names {
        // Expired between the listing and now: gone, as it should be.
        let Some(value) = store
            .get(key)
            .await
            .map_err(|e| failed("reading a node report", e))?
        else {
            continue;
        };
        // A report this node cannot read (another version, garbage) is left out, not fatal.
        if let Ok(report) = serde_json::from_slice::<NodeReport>(&value) {
            reports.push(report);
        }
    }
    reports.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(reports)
}

/// The stream behind a key-value bucket, as async-nats' `create_key_value` configures it
/// (history 1). Created directly because `create_key_value` and `update_key_value` of
/// async-nats 0.51 first read the account's JetStream info, and the reply of a NATS 2.9
/// server lacks fields that version requires (`reserved_memory`), so they always fail there.
fn stream_config(bucket: &str, ttl: Duration) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("ws-gateway node reports for the cluster view".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        ..stream::Config::default()
    }
}

/// The bucket, or `None` if it does not exist.
async fn open(js: &jetstream::Context, bucket: &str) -> Result<Option<kv::Store>, BrokerError> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(Some(store)),
        Err(e) if stream_not_found(&e) => Ok(None),
        Err(e) => Err(failed("opening the cluster bucket", e)),
    }
}

fn stream_not_found(error: &jetstream::context::KeyValueError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|e| {
            matches!(e.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_for_jetstream_and_distinct() {
        assert_eq!(bucket_name("ws-gateway"), "ws-gateway-nodes");
        assert_eq!(bucket_name("prod.eu"), "prod_2Eeu-nodes");
        assert_eq!(key("node-1"), "node-1");
        assert_eq!(key("10.0.0.1:80"), "10_2E0_2E0_2E1_3A80");
        assert_ne!(key("a_2E"), key("a."));
        assert!(
            key("é ~_")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
