//! The background task that owns the connection: it sends requests and matches replies to
//! them, hands pushes and events to the user, pings a silent gateway, and reconnects with
//! backoff, subscribing again to every app the client keeps.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::{Client, Command, Events, Pushes, Status};
use crate::config::ClientBuilder;
use crate::error::Error;
use crate::event::{AuthOutcome, DisconnectCause, Event, Position, Push};
use crate::pacing::Pacing;
use crate::protocol::{Incoming, Reply, Request};
use crate::recovery::{Counters, Streams};
use crate::transport::{Target, Ws};

/// Requests waiting for the background task. Senders wait when it is full, so this bounds
/// memory without losing anything; 64 is far more than one task's worth of replies.
const COMMAND_QUEUE: usize = 64;

/// Connects once (the caller sees that first failure), then leaves the connection to a task.
pub(crate) async fn start(builder: ClientBuilder) -> Result<(Client, Pushes, Events), Error> {
    let target = Arc::new(Target::new(
        &builder.url,
        builder.tls.clone(),
        builder.max_message_bytes,
        builder.credentials.clone(),
    )?);
    let (ws, auth) = open(target.clone(), builder.connect_timeout).await?;
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (pushes_tx, pushes) = mpsc::channel(builder.push_buffer.max(1));
    let (events_tx, events) = mpsc::channel(builder.event_buffer.max(1));
    let (status_tx, status) = watch::channel(Status {
        auth: Some(auth),
        ..Status::default()
    });
    let counters = Arc::new(Counters::default());
    let driver = Driver {
        target,
        connect_timeout: builder.connect_timeout,
        ping_interval: builder.ping_interval.max(Duration::from_millis(1)),
        ping_timeout: builder.ping_timeout,
        stable_after: builder.stable_after,
        max_in_flight: builder.max_in_flight.max(1),
        max_queued: builder.max_queued.max(1),
        messages_per_s: builder.messages_per_s,
        message_burst: builder.message_burst,
        commands,
        pushes: pushes_tx,
        events: events_tx,
        status: status_tx,
        queued: VecDeque::new(),
        backoff: Backoff::new(builder.reconnect_min, builder.reconnect_max),
        held: None,
        close_waiters: Vec::new(),
        streams: Streams::new(counters.clone()),
    };
    tokio::spawn(driver.run(ws, auth));
    let client = Client {
        commands: commands_tx,
        status,
        request_timeout: builder.request_timeout,
        counters,
    };
    Ok((client, Pushes(pushes), Events(events)))
}

async fn open(target: Arc<Target>, within: Duration) -> Result<(Ws, AuthOutcome), Error> {
    timeout(within, target.open())
        .await
        .map_err(|_| Error::ConnectTimeout(within))?
}

/// A request sent or to be sent, with whoever waits for its answer.
#[derive(Debug)]
struct Pending {
    request: Request,
    origin: Origin,
    /// For an unsubscribe: the client kept the app when it was asked. Such an unsubscribe
    /// succeeds even if the gateway says "not subscribed" (the connection that had the app was
    /// lost before the request reached it).
    was_kept: bool,
}

#[derive(Debug)]
enum Origin {
    /// Everyone waiting for it: asking again for what is already queued joins the wait.
    User(Vec<oneshot::Sender<Result<(), Error>>>),
    /// The client's own subscribe after a reconnection.
    Resubscribe,
}

/// The state of one connection.
struct Session {
    ws: Ws,
    auth: AuthOutcome,
    /// Sent requests, oldest first: the gateway answers in this order.
    awaiting: VecDeque<Pending>,
    /// Kept apps still to subscribe again on this connection (sent before `queued`).
    to_resubscribe: VecDeque<String>,
    /// The apps this connection holds or was asked to (subscribes sent, minus unsubscribes
    /// sent, refusals and 410s): an unsubscribe of any other app is answered without asking.
    apps: HashSet<String>,
    /// This connection's frame budget, so the gateway never closes it with 4429.
    pacing: Pacing,
    /// Set when a request waits for the budget: sending resumes then.
    send_at: Option<Instant>,
    /// Resubscriptions not answered yet; `Connected` is announced when it reaches zero.
    resubscribing: usize,
    resubscribed: Vec<String>,
    last_heard: Instant,
    /// When a ping is unanswered past this instant the connection is dead.
    dead_at: Option<Instant>,
}

impl Session {
    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.dead_at = None;
    }
}

struct Driver {
    target: Arc<Target>,
    connect_timeout: Duration,
    ping_interval: Duration,
    ping_timeout: Duration,
    stable_after: Duration,
    max_in_flight: usize,
    max_queued: usize,
    messages_per_s: u32,
    message_burst: u32,
    commands: mpsc::Receiver<Command>,
    pushes: mpsc::Sender<Push>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<Status>,
    /// Requests not sent yet: asked for while disconnected or while `max_in_flight` requests
    /// were waiting, or unanswered when a connection was lost. Sent in order, after the
    /// resubscriptions; at most `max_queued`.
    queued: VecDeque<Pending>,
    backoff: Backoff,
    /// A push that did not fit in the user's queue; nothing more is read from the gateway
    /// until it does (and it is kept across a reconnection).
    held: Option<Push>,
    /// `Client::close` callers, told (by the drop) when the task has finished.
    close_waiters: Vec<oneshot::Sender<()>>,
    /// The positions of the kept apps subscribed with recovery.
    streams: Streams,
}

impl Driver {
    async fn run(mut self, ws: Ws, auth: AuthOutcome) {
        let mut connection = Some((ws, auth));
        while let Some((ws, auth)) = connection.take() {
            let since = Instant::now();
            let cause = self.serve(ws, auth).await;
            self.status.send_modify(|status| status.auth = None);
            let reconnect = !cause.is_final();
            info!(?cause, reconnect, "gateway connection ended");
            self.emit(Event::Disconnected { cause, reconnect });
            if !reconnect {
                break;
            }
            if since.elapsed() >= self.stable_after {
                self.backoff.reset();
            }
            match self.reconnect().await {
                Ok(opened) => connection = Some(opened),
                Err(cause) => self.emit(Event::Disconnected {
                    cause,
                    reconnect: false,
                }),
            }
        }
        self.status.send_modify(|status| status.closed = true);
        // Dropping `self` fails the queued requests with `Error::Closed`, ends both streams
        // and releases `close` callers.
    }

    /// Waits and reconnects until it succeeds; otherwise why the client stops: the user
    /// closed it meanwhile, or the gateway refused a handshake for good.
    async fn reconnect(&mut self) -> Result<(Ws, AuthOutcome), DisconnectCause> {
        let closed = || DisconnectCause::ClosedByClient;
        loop {
            let (attempt, delay) = self.backoff.next_delay(|bound| fastrand::u64(0..=bound));
            self.emit(Event::Reconnecting { attempt, delay });
            self.while_disconnected(sleep(delay))
                .await
                .ok_or_else(closed)?;
            let attempt_open = open(self.target.clone(), self.connect_timeout);
            match self
                .while_disconnected(attempt_open)
                .await
                .ok_or_else(closed)?
            {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    debug!(attempt, %error, "reconnection failed");
                    let stop = match &error {
                        Error::HandshakeRefused { code, reason } => Some(DisconnectCause::Closed {
                            code: *code,
                            reason: reason.clone(),
                        }),
                        _ => None,
                    };
                    self.emit(Event::ReconnectFailed { attempt, error });
                    if let Some(cause) = stop {
                        return Err(cause);
                    }
                }
            }
        }
    }

    /// Runs `fut` while queueing requests; `None` if the user closed meanwhile.
    async fn while_disconnected<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                command = self.commands.recv() => match command {
                    Some(Command::Request { request, answer }) => self.enqueue(request, answer),
                    Some(Command::Close { done }) => {
                        self.close_waiters.push(done);
                        return None;
                    }
                    None => return None,
                },
            }
        }
    }

    /// Serves one connection until it ends; unanswered requests go back to `queued`.
    async fn serve(&mut self, ws: Ws, auth: AuthOutcome) -> DisconnectCause {
        // The auth message was this connection's first frame.
        let since_upgrade = Instant::now();
        let mut session = Session {
            ws,
            auth,
            awaiting: VecDeque::new(),
            to_resubscribe: VecDeque::new(),
            apps: HashSet::new(),
            pacing: Pacing::new(since_upgrade, self.messages_per_s, self.message_burst),
            send_at: None,
            resubscribing: 0,
            resubscribed: Vec::new(),
            last_heard: Instant::now(),
            dead_at: None,
        };
        session.pacing.take(since_upgrade);
        let cause = match self.start_session(&mut session).await {
            Ok(()) => self.serve_frames(&mut session).await,
            Err(cause) => cause,
        };
        // Resubscriptions need no retry (the apps are still kept); user requests are sent
        // again, in order, before anything asked later.
        for pending in session.awaiting.into_iter().rev() {
            if let Origin::User(_) = pending.origin {
                self.queued.push_front(pending);
            }
        }
        cause
    }

    /// Subscribes again to every kept app, then sends the queued requests, both as the
    /// window and the budget allow (`pump`).
    async fn start_session(&mut self, session: &mut Session) -> Result<(), DisconnectCause> {
        self.status
            .send_modify(|status| status.auth = Some(session.auth));
        session
            .to_resubscribe
            .extend(self.status.borrow().subscriptions.iter().cloned());
        session.resubscribing = session.to_resubscribe.len();
        if session.resubscribing == 0 {
            self.announce(session);
        }
        self.pump(session).await
    }

    /// Sends what waits (resubscriptions first, then `queued`) while fewer than
    /// `max_in_flight` requests wait for a reply and the frame budget allows; when the budget
    /// is spent, `send_at` says when to go on.
    async fn pump(&mut self, session: &mut Session) -> Result<(), DisconnectCause> {
        while session.awaiting.len() < self.max_in_flight {
            let Some(pending) = self.next_to_send(session) else {
                return Ok(());
            };
            let now = Instant::now();
            if !session.pacing.try_take(now) {
                session.send_at = Some(session.pacing.next_token_at());
                self.put_back(session, pending);
                return Ok(());
            }
            let since = self.since(session, &pending);
            if let Request::Subscribe { app, .. } = &pending.request {
                session.apps.insert(app.clone());
            } else {
                session.apps.remove(pending.request.app());
            }
            let message = pending.request.message(since.as_ref());
            session.awaiting.push_back(pending);
            self.send(&mut session.ws, Message::text(message)).await?;
        }
        Ok(())
    }

    /// Where a subscribe with recovery starts: after the position the client last handed out
    /// when this connection does not hold the app yet (a resubscription after a
    /// reconnection); from now on (`recover`) when it is a first subscribe, or the connection
    /// holds the app already (nothing was missed on it).
    fn since(&self, session: &Session, pending: &Pending) -> Option<Position> {
        match &pending.request {
            Request::Subscribe { app, recover: true } if !session.apps.contains(app) => {
                self.streams.since(app).cloned()
            }
            _ => None,
        }
    }

    /// The next request worth sending. Skipped on the way: resubscriptions of apps
    /// unsubscribed meanwhile, requests whose callers all gave up (request timeout), and
    /// unsubscribes of apps this connection does not hold, answered at once (`Ok` if the
    /// client kept the app when asked, else `NotSubscribed`).
    fn next_to_send(&mut self, session: &mut Session) -> Option<Pending> {
        while let Some(app) = session.to_resubscribe.pop_front() {
            if self.status.borrow().subscriptions.contains(&app) {
                let recover = self.streams.is_recovering(&app);
                return Some(Pending {
                    request: Request::Subscribe { app, recover },
                    origin: Origin::Resubscribe,
                    was_kept: true,
                });
            }
            self.resubscription_done(session);
        }
        while let Some(pending) = self.queued.pop_front() {
            let Origin::User(answers) = &pending.origin else {
                return Some(pending);
            };
            // An abandoned unsubscribe still goes if the connection holds the app (below),
            // since the client no longer keeps it.
            if matches!(pending.request, Request::Subscribe { .. })
                && answers.iter().all(oneshot::Sender::is_closed)
            {
                continue;
            }
            if let Request::Unsubscribe(app) = &pending.request
                && !session.apps.contains(app)
            {
                let outcome = if pending.was_kept {
                    Ok(())
                } else {
                    Err(Error::NotSubscribed { app: app.clone() })
                };
                Self::tell(pending.origin, &outcome);
                continue;
            }
            return Some(pending);
        }
        None
    }

    fn put_back(&mut self, session: &mut Session, pending: Pending) {
        match pending.origin {
            Origin::Resubscribe => session
                .to_resubscribe
                .push_front(pending.request.app().to_owned()),
            Origin::User(_) => self.queued.push_front(pending),
        }
    }

    /// Takes a request from a caller into `queued`: joins the request last queued for the
    /// same app if it is the same, else fails fast when `max_queued` wait already.
    fn enqueue(&mut self, request: Request, answer: oneshot::Sender<Result<(), Error>>) {
        let last_for_app = self
            .queued
            .iter_mut()
            .rev()
            .find(|pending| pending.request.app() == request.app());
        if let Some(Pending {
            request: last,
            origin: Origin::User(answers),
            ..
        }) = last_for_app
            && *last == request
        {
            // (An unsubscribe's app is already forgotten: this one was queued last.)
            answers.push(answer);
            return;
        }
        if self.queued.len() >= self.max_queued {
            let _ = answer.send(Err(Error::QueueFull(self.max_queued)));
            return;
        }
        let pending = self.accept(request, answer);
        self.queued.push_back(pending);
    }

    fn tell(origin: Origin, outcome: &Result<(), Error>) {
        if let Origin::User(answers) = origin {
            for answer in answers {
                let _ = answer.send(outcome.clone());
            }
        }
    }

    fn resubscription_done(&mut self, session: &mut Session) {
        session.resubscribing -= 1;
        if session.resubscribing == 0 {
            self.announce(session);
        }
    }

    async fn serve_frames(&mut self, session: &mut Session) -> DisconnectCause {
        loop {
            let ping_due = session
                .dead_at
                .unwrap_or(session.last_heard + self.ping_interval);
            let reading = self.held.is_none();
            let send_at = session.send_at;
            let step = tokio::select! {
                frame = session.ws.next(), if reading => {
                    session.heard();
                    match self.on_frame(session, frame).await {
                        // A reply may have made room in the window.
                        Ok(()) => self.pump(session).await,
                        Err(cause) => Err(cause),
                    }
                }
                // Only the output type must not borrow `self`, so the permit is released here
                // and the slot taken again below (this task is the only sender).
                () = async { drop(self.pushes.reserve().await) }, if !reading => {
                    if let Some(push) = self.held.take() {
                        self.deliver(push);
                    }
                    // The gateway was not listened to meanwhile: its silence was ours.
                    session.heard();
                    Ok(())
                }
                command = self.commands.recv() => self.on_command(session, command).await,
                () = sleep_until(ping_due), if reading => self.on_ping_due(session).await,
                () = sleep_until(send_at.unwrap_or(ping_due)), if send_at.is_some() =>
                {
                    session.send_at = None;
                    self.pump(session).await
                }
            };
            if let Err(cause) = step {
                return cause;
            }
        }
    }

    async fn on_frame(
        &mut self,
        session: &mut Session,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), DisconnectCause> {
        match frame {
            None => Err(DisconnectCause::ConnectionLost(
                "the connection ended without a close frame".into(),
            )),
            Some(Err(err)) => Err(DisconnectCause::ConnectionLost(err.to_string())),
            Some(Ok(Message::Text(text))) => {
                self.on_text(session, text.as_str());
                Ok(())
            }
            Some(Ok(Message::Close(frame))) => {
                // tungstenite has queued the close reply: send it, then drop the connection
                // rather than wait for the gateway to drop it first.
                let _ = timeout(self.ping_timeout, session.ws.flush()).await;
                let (code, reason) = frame
                    .map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                Err(DisconnectCause::Closed { code, reason })
            }
            Some(Ok(Message::Binary(_))) => {
                debug!("binary frame from the gateway ignored (it sends only text)");
                Ok(())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
        }
    }

    fn on_text(&mut self, session: &mut Session, text: &str) {
        match Incoming::parse(text) {
            Some(Incoming::Push(push)) => {
                if self.streams.admit(&push) {
                    self.deliver(push);
                }
            }
            Some(Incoming::Reply(reply)) => match session.awaiting.pop_front() {
                Some(pending) => self.answer(session, pending, &reply),
                None => warn!(?reply, "a gateway reply to no request; ignored"),
            },
            Some(Incoming::UnsubscribedByServer { app }) => {
                session.apps.remove(&app);
                self.forget(&app);
                self.emit(Event::UnsubscribedByServer { app });
            }
            Some(Incoming::PushesLost { app, position }) => {
                warn!(
                    app,
                    ?position,
                    "the gateway lost pushes of a recovered stream"
                );
                let event = self.streams.lost(&app, position);
                self.emit(event);
            }
            None => warn!(frame = text, "a frame that is not the gateway's; ignored"),
        }
    }

    /// Hands a push to the user, or holds it (and stops reading) when their queue is full.
    fn deliver(&mut self, push: Push) {
        match self.pushes.try_send(push) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(push)) => self.held = Some(push),
            // The user dropped `Pushes`: they do not want them.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn answer(&mut self, session: &mut Session, pending: Pending, reply: &Reply) {
        let mut outcome = pending.request.outcome(reply);
        match (&pending.request, &outcome) {
            (Request::Subscribe { app, recover }, Ok(())) => {
                self.keep(app);
                if !recover {
                    self.streams.forget(app);
                } else if let Some(lost) = self.streams.subscribed(app, reply) {
                    warn!(app, "the gateway could not recover every missed push");
                    self.emit(lost);
                }
            }
            (Request::Unsubscribe(app), _) => {
                // A subscribe answered between the request and this reply kept it again.
                self.forget(app);
                if pending.was_kept && matches!(outcome, Err(Error::NotSubscribed { .. })) {
                    outcome = Ok(());
                }
            }
            (Request::Subscribe { app, .. }, Err(_)) => {
                session.apps.remove(app);
            }
        }
        match pending.origin {
            Origin::User(_) => Self::tell(pending.origin, &outcome),
            Origin::Resubscribe => {
                let app = pending.request.app().to_owned();
                match outcome {
                    Ok(()) => session.resubscribed.push(app),
                    Err(error) => {
                        warn!(app, %error, "the gateway refused a resubscription");
                        self.forget(&app);
                        self.emit(Event::ResubscribeFailed { app, error });
                    }
                }
                self.resubscription_done(session);
            }
        }
    }

    async fn on_command(
        &mut self,
        session: &mut Session,
        command: Option<Command>,
    ) -> Result<(), DisconnectCause> {
        match command {
            Some(Command::Request { request, answer }) => {
                self.enqueue(request, answer);
                self.pump(session).await
            }
            Some(Command::Close { done }) => {
                self.close_waiters.push(done);
                Err(self.close(session).await)
            }
            // Every `Client` was dropped: nobody can ask anything any more.
            None => Err(self.close(session).await),
        }
    }

    async fn on_ping_due(&mut self, session: &mut Session) -> Result<(), DisconnectCause> {
        if session.dead_at.is_some() {
            return Err(DisconnectCause::PingTimeout(self.ping_timeout));
        }
        session.dead_at = Some(Instant::now() + self.ping_timeout);
        self.send(&mut session.ws, Message::Ping(Default::default()))
            .await
    }

    async fn close(&mut self, session: &mut Session) -> DisconnectCause {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = timeout(self.ping_timeout, async {
            if session.ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = session.ws.next().await {}
            }
        })
        .await;
        DisconnectCause::ClosedByClient
    }

    /// Takes a user request in: an unsubscribe forgets its app at once, so a reconnection
    /// before the answer does not subscribe to it again.
    fn accept(&mut self, request: Request, answer: oneshot::Sender<Result<(), Error>>) -> Pending {
        let was_kept = match &request {
            Request::Unsubscribe(app) => self.forget(app),
            Request::Subscribe { .. } => false,
        };
        Pending {
            request,
            origin: Origin::User(vec![answer]),
            was_kept,
        }
    }

    /// Writes one message; a write the gateway does not take within the ping timeout means
    /// the connection is dead.
    async fn send(&self, ws: &mut Ws, message: Message) -> Result<(), DisconnectCause> {
        match timeout(self.ping_timeout, ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(DisconnectCause::ConnectionLost(format!(
                "write failed: {err}"
            ))),
            Err(_) => Err(DisconnectCause::ConnectionLost(format!(
                "a write did not finish within {:?}",
                self.ping_timeout
            ))),
        }
    }

    fn announce(&mut self, session: &mut Session) {
        let resubscribed = std::mem::take(&mut session.resubscribed);
        debug!(auth = ?session.auth, ?resubscribed, "connected to the gateway");
        self.emit(Event::Connected {
            auth: session.auth,
            resubscribed,
        });
    }

    fn keep(&self, app: &str) {
        self.status.send_if_modified(|status| {
            !status.subscriptions.contains(app) && status.subscriptions.insert(app.to_owned())
        });
    }

    /// Stops keeping `app` (and its position); whether it was kept.
    fn forget(&mut self, app: &str) -> bool {
        self.streams.forget(app);
        self.status
            .send_if_modified(|status| status.subscriptions.remove(app))
    }

    fn emit(&self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                warn!(
                    ?event,
                    "the event queue is full (event_buffer); event dropped"
                );
            }
        }
    }
}
