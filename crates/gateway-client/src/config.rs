//! [`ClientBuilder`]: every knob of the client, each with its default.

use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, Events, Pushes};
use crate::error::Error;
use crate::protocol::Credentials;

/// Settings of a [`Client`]; start with [`Client::builder`], finish with
/// [`connect`](ClientBuilder::connect).
///
/// | setting | default |
/// |---|---|
/// | credentials | anonymous |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s |
/// | [`request_timeout`](Self::request_timeout) | 10 s |
/// | [`ping_interval`](Self::ping_interval) / [`ping_timeout`](Self::ping_timeout) | 15 s / 10 s |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | 500 ms to 30 s |
/// | [`stable_after`](Self::stable_after) | 10 s |
/// | [`push_buffer`](Self::push_buffer) / [`event_buffer`](Self::event_buffer) | 1024 / 256 |
/// | [`max_message_bytes`](Self::max_message_bytes) | 16 MiB |
/// | [`max_in_flight`](Self::max_in_flight) | 32 |
/// | [`message_rate`](Self::message_rate) | 40/s, bursts of 200 |
/// | [`max_queued`](Self::max_queued) | 1024 |
/// | [`tls_config`](Self::tls_config) | the Mozilla roots of `webpki-roots` |
#[derive(Clone)]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) credentials: Credentials,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) stable_after: Duration,
    pub(crate) push_buffer: usize,
    pub(crate) event_buffer: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) messages_per_s: u32,
    pub(crate) message_burst: u32,
    pub(crate) max_queued: usize,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("stable_after", &self.stable_after)
            .field("push_buffer", &self.push_buffer)
            .field("event_buffer", &self.event_buffer)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("messages_per_s", &self.messages_per_s)
            .field("message_burst", &self.message_burst)
            .field("max_queued", &self.max_queued)
            .field("custom_tls", &self.tls.is_some())
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(url: String) -> ClientBuilder {
        ClientBuilder {
            url,
            credentials: Credentials::Anonymous,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            push_buffer: 1024,
            event_buffer: 256,
            max_message_bytes: 16 << 20,
            max_in_flight: 32,
            messages_per_s: 40,
            message_burst: 200,
            max_queued: 1024,
            tls: None,
        }
    }

    /// Authenticate as `member_id` with `token` on every connection. If the gateway refuses
    /// them (`401`), the connection continues as anonymous and
    /// [`AuthOutcome::Unauthorized`](crate::AuthOutcome::Unauthorized) says so.
    pub fn member(mut self, member_id: i64, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Member {
            id: member_id,
            token: token.into(),
        };
        self
    }

    /// Authenticate anonymously (the default): public apps only.
    pub fn anonymous(mut self) -> Self {
        self.credentials = Credentials::Anonymous;
        self
    }

    /// The longest a connection attempt may take: TCP, TLS, the WebSocket upgrade and the
    /// auth reply together. Past it the attempt fails with [`Error::ConnectTimeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest [`Client::subscribe`] and [`Client::unsubscribe`] wait for the gateway's
    /// answer, time spent waiting for a reconnection included; past it they return
    /// [`Error::RequestTimeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// After this long without any frame from the gateway, the client sends a WebSocket ping.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// If nothing at all (a pong or any other frame) arrives within this after a ping, the
    /// connection is dropped as dead and the client reconnects. Also bounds a write that the
    /// gateway does not take and the close handshake of [`Client::close`]. A silent gateway is
    /// therefore detected within `ping_interval + ping_timeout`.
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// The wait before reconnection attempt `n` is a random time between half and all of
    /// `min(max, min · 2^(n-1))` (`min` at least 1 ms, `max` at least `min`).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// A connection that stayed up this long resets the backoff: the next reconnection starts
    /// again from `min`. A gateway that accepts and then drops connections at once keeps the
    /// waits growing instead.
    pub fn stable_after(mut self, after: Duration) -> Self {
        self.stable_after = after;
        self
    }

    /// How many pushes wait for you in [`Pushes`] (at least 1). When it is full the client
    /// stops reading from the connection until you read: the gateway's queue for this
    /// connection fills in turn, and past its `limits.outbox_messages` the gateway closes the
    /// connection with 4100 (slow consumer), after which the client reconnects. The client
    /// never drops a push itself; pushes sent while it reconnects are lost. Replies travel
    /// with the pushes, so a subscribe waits too while this queue is full: read pushes in a
    /// task of their own.
    pub fn push_buffer(mut self, pushes: usize) -> Self {
        self.push_buffer = pushes;
        self
    }

    /// How many events wait for you in [`Events`] (at least 1). Events are advisory: when
    /// the queue is full a new event is dropped (and logged at `warn`) rather than holding up
    /// the connection. Drop the [`Events`] receiver if you do not want them.
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// The largest frame or message the client accepts from the gateway; a larger one ends
    /// the connection ([`DisconnectCause::ConnectionLost`](crate::DisconnectCause)) and the
    /// client reconnects.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// At most this many requests (subscribes, unsubscribes, resubscriptions after a
    /// reconnection) wait for the gateway's reply at once (at least 1); the others wait in the
    /// client until replies come back.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    /// The client's own limit on the frames it sends on one connection (the auth message and
    /// every request, resubscriptions included): `burst` at once, then `per_s` a second (both
    /// at least 1). The gateway closes a connection that sends more than its
    /// `limits.message_burst` (300) at once or `limits.max_messages_per_s` (50) sustained with
    /// 4429; the defaults stay under those, with room for pings and pongs. Raise both together
    /// with the gateway's.
    pub fn message_rate(mut self, per_s: u32, burst: u32) -> Self {
        self.messages_per_s = per_s;
        self.message_burst = burst;
        self
    }

    /// How many requests may wait in the client for a connection, or for room in
    /// [`max_in_flight`](Self::max_in_flight) (at least 1). One more fails at once with
    /// [`Error::QueueFull`]. Repeating the request last queued for an app does not count
    /// again: both callers get the one answer.
    pub fn max_queued(mut self, requests: usize) -> Self {
        self.max_queued = requests;
        self
    }

    /// The TLS settings for `wss://` URLs, for example a private root certificate. Without
    /// it, the server's certificate must chain to one of the Mozilla roots of `webpki-roots`.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Connects and authenticates, then returns the client with its two streams. Fails if the
    /// first connection fails (a wrong URL, an unreachable gateway): the client reconnects by
    /// itself only once it has been connected. The first event on [`Events`] is this
    /// connection's [`Event::Connected`](crate::Event::Connected).
    pub async fn connect(self) -> Result<(Client, Pushes, Events), Error> {
        crate::driver::start(self).await
    }
}
