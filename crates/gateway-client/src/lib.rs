//! A client for [ws-gateway](https://example.invalid/ws-gateway): connect, authenticate,
//! subscribe and unsubscribe, receive pushes, and stay connected.
//!
//! One [`Client`] is one logical connection. A background task owns the WebSocket and keeps
//! it alive:
//!
//! - **Reconnects by itself** after a dropped connection or any close but a final one, waiting
//!   a capped, jittered, exponentially growing time between attempts
//!   ([`ClientBuilder::reconnect_backoff`]; reset after a connection that stayed up for
//!   [`ClientBuilder::stable_after`]). It stops for good after close codes 4403 (a backend
//!   disconnected this member), 4400, 1002, 1007 and 1009 ([`FINAL_CLOSE_CODES`]), where
//!   retrying unchanged is useless, and after [`Client::close`]. The same codes (or
//!   `400 missing auth message`) before a reconnection's auth reply stop it too
//!   ([`Error::HandshakeRefused`]).
//! - **Subscribes again** after every reconnection to every app it keeps: those subscribed
//!   with success and neither unsubscribed nor removed by the gateway (`410`,
//!   [`Event::UnsubscribedByServer`]). [`Event::Connected`] says when that is done.
//! - **Paces its requests**: at most [`ClientBuilder::max_in_flight`] (32) wait for a reply,
//!   and every frame it sends is counted against its own budget
//!   ([`ClientBuilder::message_rate`], 40/s in bursts of 200, under the gateway's 50/s and
//!   300), so resubscribing hundreds of apps never earns a 4429.
//! - **Detects a dead gateway**: after [`ClientBuilder::ping_interval`] of silence it sends a
//!   WebSocket ping; if nothing arrives within [`ClientBuilder::ping_timeout`] it drops the
//!   connection and reconnects. Connecting (TCP, TLS, upgrade, auth reply) is bounded by
//!   [`ClientBuilder::connect_timeout`].
//! - **Bounded queues**: pushes wait in a queue of [`ClientBuilder::push_buffer`] (1024); when
//!   it is full the client stops reading, so the gateway's own slow-consumer limit applies
//!   (close 4100, then a reconnection) and the client itself never drops a push. Events are
//!   advisory and dropped (with a warning) when their queue is full. Requests wait for a
//!   connection in a queue of [`ClientBuilder::max_queued`] (1024; one more fails at once with
//!   [`Error::QueueFull`]); those whose callers gave up are not sent, and asking again for the
//!   request last queued for an app joins it.
//!
//! [`Client::subscribe`] and [`Client::unsubscribe`] wait for the gateway's answer and turn
//! its refusals into [`Error`] variants (`Forbidden`, `TooManySubscriptions`,
//! `NotSubscribed`, …). `ws://` and `wss://` (rustls, Mozilla's roots or your
//! [`ClientBuilder::tls_config`]) are supported.
//!
//! - **Recovers missed pushes** for apps subscribed with
//!   [`SubscribeOptions::recover`]: it remembers the position (`offset`, `epoch`) of every
//!   push it hands out and resubscribes with `since` after a reconnection, so the gateway
//!   sends what was missed, in order, before the live pushes. When the gateway's history no
//!   longer covers the gap, [`Event::PushesLost`] says so. Duplicates are dropped and counted
//!   ([`Client::stats`]).
//!
//! Without recovery, pushes sent while the client reconnects are lost. The first connection
//! is not retried: [`ClientBuilder::connect`] returns its error.
//!
//! ```no_run
//! use gateway_client::{Client, Event};
//!
//! # async fn run() -> Result<(), gateway_client::Error> {
//! let (client, mut pushes, mut events) = Client::builder("ws://127.0.0.1:5000/")
//!     .member(123456, "654321")
//!     .connect()
//!     .await?;
//! client.subscribe("match").await?;
//! if let Err(err) = client.subscribe("im").await {
//!     eprintln!("im: {err}"); // e.g. "subscribe im forbidden" when the token was refused
//! }
//! tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         if let Event::Disconnected { cause, reconnect } = event {
//!             eprintln!("disconnected: {cause:?}, reconnecting: {reconnect}");
//!         }
//!     }
//! });
//! while let Some(push) = pushes.next().await {
//!     println!("{} {}: {}", push.app, push.member_id, push.text);
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod client;
mod config;
mod driver;
mod error;
mod event;
mod pacing;
mod protocol;
mod recovery;
mod transport;

pub use client::{Client, Events, Pushes, SubscribeOptions};
pub use config::ClientBuilder;
pub use error::Error;
pub use event::{
    AuthOutcome, ClientStats, DisconnectCause, Event, FINAL_CLOSE_CODES, Position, Push,
};
