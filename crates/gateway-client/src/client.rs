//! The handles the user holds: [`Client`] to send requests, [`Pushes`] and [`Events`] to
//! receive. The connection itself lives in a background task (`driver`).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientBuilder;
use crate::error::Error;
use crate::event::{AuthOutcome, ClientStats, Event, Push};
use crate::protocol::{Request, check_app};
use crate::recovery::Counters;

/// What a [`Client`] asks of the background task.
#[derive(Debug)]
pub(crate) enum Command {
    Request {
        request: Request,
        answer: oneshot::Sender<Result<(), Error>>,
    },
    /// Close the connection and stop; `done` is dropped when the task has finished.
    Close { done: oneshot::Sender<()> },
}

/// What the background task shares with every [`Client`] handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// The current connection's auth outcome; `None` while disconnected.
    pub(crate) auth: Option<AuthOutcome>,
    /// The apps the client subscribes to again after a reconnection.
    pub(crate) subscriptions: BTreeSet<String>,
    pub(crate) closed: bool,
}

/// A handle on one logical connection to ws-gateway, kept alive across reconnections by a
/// background task. Cheap to clone; when the last clone is dropped the connection is closed
/// (1000) and the task ends.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) request_timeout: Duration,
    pub(crate) counters: Arc<Counters>,
}

/// How to subscribe: [`Client::subscribe_with`]. The default is [`Client::subscribe`]'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Ask the gateway for positions and, after every reconnection, for the pushes missed
    /// meanwhile (see [`SubscribeOptions::recover`]).
    pub recover: bool,
}

impl SubscribeOptions {
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// Subscribe with recovery. The first subscribe sends `{"app":"x","recover":true}`; the
    /// client then remembers the position of every push it hands out ([`Push::position`]),
    /// and after a reconnection subscribes again with
    /// `{"app":"x","since":{"offset":N,"epoch":"e"}}`, so the gateway sends every push
    /// missed meanwhile before the live ones, in order, as long as its history reaches back
    /// that far (by default the last 100 pushes of the stream, for 5 minutes). When it does
    /// not, [`Event::PushesLost`] says so and the client continues from where the stream
    /// stands. A push whose offset is not past the last one handed out is dropped (and
    /// counted in [`ClientStats::duplicates_dropped`]), so none is handed out twice.
    pub fn recover(mut self, recover: bool) -> SubscribeOptions {
        self.recover = recover;
        self
    }
}

impl Client {
    /// Starts the settings of a client of the gateway at `url` (`ws://host:port/` or
    /// `wss://…`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Subscribes to `app` and waits for the gateway's answer. On success the client keeps
    /// the app: it subscribes again after every reconnection until you
    /// [`unsubscribe`](Self::unsubscribe) or the gateway removes it
    /// ([`Event::UnsubscribedByServer`]). Subscribing twice is harmless (each push still
    /// arrives once). While the client reconnects the request waits for the new connection.
    ///
    /// Errors: [`Error::Forbidden`] (a private app, not a member), [`Error::TooManySubscriptions`],
    /// [`Error::Refused`] (any other refusal), [`Error::InvalidApp`], [`Error::RequestTimeout`],
    /// [`Error::QueueFull`], [`Error::Closed`].
    pub async fn subscribe(&self, app: &str) -> Result<(), Error> {
        self.subscribe_with(app, SubscribeOptions::default()).await
    }

    /// [`subscribe`](Self::subscribe) with options, such as recovery of the pushes missed
    /// while reconnecting ([`SubscribeOptions::recover`]). The last subscribe of an app
    /// decides: subscribing again without recovery stops it.
    pub async fn subscribe_with(&self, app: &str, options: SubscribeOptions) -> Result<(), Error> {
        check_app(app)?;
        self.request(Request::Subscribe {
            app: app.to_owned(),
            recover: options.recover,
        })
        .await
    }

    /// The counters of the streams subscribed with recovery: duplicates dropped, offsets
    /// skipped silently, losses announced by the gateway.
    pub fn stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// Unsubscribes from `app` and waits for the gateway's answer; the client stops keeping
    /// the app at once. After `Ok`, no push to `app` accepted by the gateway from then on
    /// reaches this client (pushes already on their way may still arrive just before the
    /// reply). While the client reconnects the request waits for the new connection; an app
    /// the client kept then counts as unsubscribed even though the new connection never had it.
    /// An app the current connection does not hold is answered by the client itself, without
    /// asking the gateway.
    ///
    /// Errors: [`Error::NotSubscribed`], [`Error::Refused`] (`400 unknown action` from a
    /// gateway without the verb), [`Error::InvalidApp`], [`Error::RequestTimeout`],
    /// [`Error::QueueFull`], [`Error::Closed`].
    pub async fn unsubscribe(&self, app: &str) -> Result<(), Error> {
        check_app(app)?;
        self.request(Request::Unsubscribe(app.to_owned())).await
    }

    async fn request(&self, request: Request) -> Result<(), Error> {
        let (answer, answered) = oneshot::channel();
        let waiting = async {
            self.commands
                .send(Command::Request { request, answer })
                .await
                .map_err(|_| Error::Closed)?;
            answered.await.map_err(|_| Error::Closed)?
        };
        tokio::time::timeout(self.request_timeout, waiting)
            .await
            .map_err(|_| Error::RequestTimeout(self.request_timeout))?
    }

    /// The apps the client keeps subscribed (and subscribes to again after a reconnection),
    /// sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        self.status.borrow().subscriptions.iter().cloned().collect()
    }

    /// How the current connection was authenticated; `None` while the client is between
    /// connections or closed.
    pub fn auth(&self) -> Option<AuthOutcome> {
        self.status.borrow().auth
    }

    /// Whether the client has stopped for good (see [`Error::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.status.borrow().closed
    }

    /// Closes the connection (close code 1000, waiting at most the ping timeout for the
    /// gateway's close frame) and stops reconnecting; returns when the background task has
    /// finished. Pending requests fail with [`Error::Closed`]; [`Pushes`] and [`Events`] end
    /// after what they already hold.
    pub async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// The pushes of every app the client subscribed to, in the order the gateway sent them.
/// Ends (`None`) when the client has stopped. See
/// [`ClientBuilder::push_buffer`] for what happens when you do not read.
#[derive(Debug)]
pub struct Pushes(pub(crate) mpsc::Receiver<Push>);

impl Pushes {
    /// The next push; `None` once the client has stopped and every push was read.
    pub async fn next(&mut self) -> Option<Push> {
        self.0.recv().await
    }
}

impl Stream for Pushes {
    type Item = Push;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        self.0.poll_recv(cx)
    }
}

/// Events about the connection (connected, disconnected, reconnecting, server-side
/// unsubscribe). Ends (`None`) when the client has stopped. See
/// [`ClientBuilder::event_buffer`] for what happens when you do not read.
#[derive(Debug)]
pub struct Events(pub(crate) mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.poll_recv(cx)
    }
}
