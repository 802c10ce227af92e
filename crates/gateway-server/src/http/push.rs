//! `POST /push`: who may push, and the body, received within its bounds before the push takes
//! a dispatch slot; then one push, or the publications of an array or a `member_ids` push in
//! order (one dispatch slot for the whole request).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use gateway_core::{AppName, Publication, PushBatch, PushError, PushLimits, PushRequest};
use http::header;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tracing::debug;

use super::{Body, Refusal};
use crate::admission::BodyCharge;
use crate::shared::{Live, Shared};

/// Whether this request may push: with keys configured, it must present one; without, it
/// must come from an allowed network.
pub(super) fn push_allowed(
    req: &Request<Incoming>,
    live: &Live,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    if live.push_key_digests.is_empty() {
        let ip = peer.ip().to_canonical();
        return if live
            .settings
            .access
            .push_allow_from
            .iter()
            .any(|net| net.contains(&ip))
        {
            Ok(())
        } else {
            debug!(%peer, "push refused: address not in push_allow_from");
            Err(Refusal::PushNotAllowedFrom)
        };
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let Some(presented) = presented else {
        return Err(Refusal::PushKeyRequired);
    };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Compare with every key, each in constant time, without stopping at a match.
    let matched = live
        .push_key_digests
        .iter()
        .fold(Choice::from(0), |any, key| any | key.ct_eq(&digest));
    if bool::from(matched) {
        Ok(())
    } else {
        debug!(%peer, "push refused: wrong key");
        Err(Refusal::PushKeyRequired)
    }
}

pub(super) async fn push(
    req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Response<Body>, Refusal> {
    // The reloadable settings, read once for the whole push (a SIGHUP may swap them).
    let (max, body_timeout) = {
        let live = shared.live();
        push_allowed(&req, &live, peer)?;
        let settings = &live.settings;
        (settings.max_push_body_bytes, settings.push_body_timeout)
    };
    // Refusals are counted by reason, and logged rate-limited, where they are answered
    // (`http::main_service`): no per-refusal line here, which a flood would multiply.
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(Refusal::BodyTooLarge(max));
    }
    // The body is read before a dispatch slot is taken, within its own deadline: a sender
    // that is slow or stalls holds no slot, only its own bytes (bounded in total).
    let (body, charge) = match receive_body(req.into_body(), shared, max, body_timeout).await {
        Ok(received) => received,
        Err(refusal) => {
            match refusal {
                Refusal::PushBodyEvicted | Refusal::PushBodyTimeout(_) => {
                    let total = shared.counters.push_body_timed_out();
                    debug!(%peer, total, "push body too slow: {refusal:?}");
                }
                _ => {}
            }
            return Err(refusal);
        }
    };
    // A shutdown that began while the body arrived: every client is being closed.
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    // Held until the push is handed over: 202 means delivered to every recipient's queue.
    let Ok(_slot) = shared.push_slots.try_acquire() else {
        return Err(Refusal::PushOverloaded);
    };
    let limits = &shared.config.limits;
    let push_limits = PushLimits {
        max_publications: limits.max_push_batch,
        max_members: limits.max_push_members,
    };
    let request =
        PushRequest::parse(&body, &shared.config.hub, push_limits).map_err(refused_request)?;
    refuse_reserved_apps(&request)?;
    // What is published from here on was copied out of the body.
    drop((body, charge));
    let push = match request {
        PushRequest::Single(push) => push,
        PushRequest::ToMembers(batch) => {
            publish_batch(shared, &batch, max).await?;
            return Ok(accepted(Bytes::new()));
        }
        PushRequest::Batch(batch) => {
            let n = publish_batch(shared, &batch, max).await?;
            return Ok(super::json_response(
                StatusCode::ACCEPTED,
                serde_json::json!({ "accepted": n }).to_string(),
            ));
        }
    };
    // 202 only once the broker took the push; otherwise 503 and nobody received it.
    shared
        .node
        .publish(Publication::from(push))
        .await
        .map_err(|err| {
            if err.may_have_been_delivered() {
                Refusal::PushOutcomeUnknown(err.to_string())
            } else {
                Refusal::BrokerUnavailable(err.to_string())
            }
        })?;
    Ok(accepted(Bytes::new()))
}

fn accepted(body: Bytes) -> Response<Body> {
    let mut accepted = Response::new(Full::new(body));
    *accepted.status_mut() = StatusCode::ACCEPTED;
    accepted
}

/// The cluster's own channels (`$ws-gateway/…`, [`control`]) are not apps a backend may push
/// to: such a push would reach nobody, so it is refused rather than accepted.
///
/// [`control`]: crate::node::control
fn refuse_reserved_apps(request: &PushRequest) -> Result<(), Refusal> {
    let reserved = |app: &AppName| app.is_reserved();
    let why = |app: &AppName| {
        format!(
            "app {app:?} is reserved: names starting with {:?} are the gateway's own",
            AppName::RESERVED_PREFIX
        )
    };
    match request {
        PushRequest::Single(push) if reserved(&push.app) => Err(Refusal::BadPush(why(&push.app))),
        PushRequest::ToMembers(batch) => match batch.apps().find(|app| reserved(app)) {
            Some(app) => Err(Refusal::BadPush(why(app))),
            None => Ok(()),
        },
        PushRequest::Batch(batch) => match batch.apps().position(reserved) {
            Some(index) => {
                let app = batch.apps().nth(index).expect("found at this index");
                Err(Refusal::BadPushBatch(format!(
                    "bad push message at index {index}: {}",
                    why(app)
                )))
            }
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The answer to a body that is not a valid push, a valid array of pushes or a valid
/// `member_ids` push.
fn refused_request(err: PushError) -> Refusal {
    match err {
        // "bad push message" first, as every 400 of /push (Part 1) begins.
        PushError::Element { index, error } => {
            Refusal::BadPushBatch(format!("bad push message at index {index}: {error}"))
        }
        PushError::TooManyPublications { max } => Refusal::PushBatchTooLarge(max),
        // The seed's refusal (same text as before batches existed), `member_ids` in an object,
        // an empty array.
        _ => Refusal::BadPush(err.to_string()),
    }
}

/// Publishes every publication of `batch` in order (at most `max_in_flight_bytes` of them
/// waiting for the broker at once); the number published, or the refusal that says how many
/// were.
async fn publish_batch(
    shared: &Shared,
    batch: &PushBatch,
    max_in_flight_bytes: usize,
) -> Result<usize, Refusal> {
    let published = shared
        .node
        .publish_in_order(batch.publications(), max_in_flight_bytes)
        .await
        .map_err(|failure| Refusal::PushBatchNotDelivered {
            accepted: failure.accepted,
            error: failure.error.to_string(),
            outcome_unknown: failure.outcome_unknown,
        })?;
    shared.counters.push_batch_accepted();
    Ok(published)
}

/// Receives a push body of at most `limits.max_push_body_bytes`, within
/// `timeouts.push_body_ms` from now. A body that comes in one piece (nearly all of them) is
/// kept as it is; one that takes several reads is charged, read by read, to the bytes of
/// bodies being received, and the charge (returned) holds its share until it is dropped.
async fn receive_body(
    mut body: Incoming,
    shared: &Shared,
    max: usize,
    limit: std::time::Duration,
) -> Result<(Bytes, Option<BodyCharge>), Refusal> {
    let deadline = tokio::time::Instant::now() + limit;
    let timed_out = |_| Refusal::PushBodyTimeout(limit);
    let first = tokio::select! {
        biased;
        frame = tokio::time::timeout_at(deadline, next_data(&mut body)) => frame.map_err(timed_out)??,
        () = shared.shutdown.cancelled() => return Err(Refusal::ShuttingDown),
    };
    let Some(first) = first else {
        return Ok((Bytes::new(), None));
    };
    if first.len() > max {
        return Err(Refusal::BodyTooLarge(max));
    }
    if hyper::body::Body::is_end_stream(&body) {
        return Ok((first, None));
    }
    let mut charge = shared.push_bodies.start();
    if !charge.add(first.len()) {
        return Err(Refusal::PushBodiesOverBudget);
    }
    let evicted = charge.evicted.clone();
    let mut collected = BytesMut::from(first);
    loop {
        let data = tokio::select! {
            biased;
            frame = tokio::time::timeout_at(deadline, next_data(&mut body)) => frame.map_err(timed_out)??,
            () = evicted.cancelled() => return Err(Refusal::PushBodyEvicted),
            () = shared.shutdown.cancelled() => return Err(Refusal::ShuttingDown),
        };
        let Some(data) = data else {
            return Ok((collected.freeze(), Some(charge)));
        };
        if collected.len() + data.len() > max {
            return Err(Refusal::BodyTooLarge(max));
        }
        if !charge.add(data.len()) {
            return Err(Refusal::PushBodiesOverBudget);
        }
        collected.extend_from_slice(&data);
    }
}

/// The next piece of data of `body` (trailers skipped); `None` at its end.
async fn next_data(body: &mut Incoming) -> Result<Option<Bytes>, Refusal> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| Refusal::BadBody(err.to_string()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}
