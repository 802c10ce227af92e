//! The background task that owns the connection: it sends requests and matches replies to
//! them, hands pushes and events to the user, pings a silent gateway, and reconnects with
//! backoff, subscribing again to every app the client keeps.

use std::collections::VecDeque;
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
use crate::event::{AuthOutcome, DisconnectCause, Event, Push};
use crate::protocol::{Incoming, Request};
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
    let driver = Driver {
        target,
        connect_timeout: builder.connect_timeout,
        ping_interval: builder.ping_interval.max(Duration::from_millis(1)),
        ping_timeout: builder.ping_timeout,
        stable_after: builder.stable_after,
        commands,
        pushes: pushes_tx,
        events: events_tx,
        status: status_tx,
        queued: VecDeque::new(),
        backoff: Backoff::new(builder.reconnect_min, builder.reconnect_max),
        held: None,
        close_waiters: Vec::new(),
    };
    tokio::spawn(driver.run(ws, auth));
    let client = Client {
        commands: commands_tx,
        status,
        request_timeout: builder.request_timeout,
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
    User(oneshot::Sender<Result<(), Error>>),
    /// The client's own subscribe after a reconnection.
    Resubscribe,
}

/// The state of one connection.
struct Session {
    ws: Ws,
    auth: AuthOutcome,
    /// Sent requests, oldest first: the gateway answers in this order.
    awaiting: VecDeque<Pending>,
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
    commands: mpsc::Receiver<Command>,
    pushes: mpsc::Sender<Push>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<Status>,
    /// Requests not sent yet: asked for while disconnected, or unanswered when a connection
    /// was lost. Sent, in order, after the resubscriptions of the next connection.
    queued: VecDeque<Pending>,
    backoff: Backoff,
    /// A push that did not fit in the user's queue; nothing more is read from the gateway
    /// until it does (and it is kept across a reconnection).
    held: Option<Push>,
    /// `Client::close` callers, told (by the drop) when the task has finished.
    close_waiters: Vec<oneshot::Sender<()>>,
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
            connection = self.reconnect().await;
            if connection.is_none() {
                self.emit(Event::Disconnected {
                    cause: DisconnectCause::ClosedByClient,
                    reconnect: false,
                });
            }
        }
        self.status.send_modify(|status| status.closed = true);
        // Dropping `self` fails the queued requests with `Error::Closed`, ends both streams
        // and releases `close` callers.
    }

    /// Waits and reconnects until it succeeds; `None` if the user closed meanwhile.
    async fn reconnect(&mut self) -> Option<(Ws, AuthOutcome)> {
        loop {
            let (attempt, delay) = self.backoff.next_delay(|bound| fastrand::u64(0..=bound));
            self.emit(Event::Reconnecting { attempt, delay });
            self.while_disconnected(sleep(delay)).await?;
            let attempt_open = open(self.target.clone(), self.connect_timeout);
            match self.while_disconnected(attempt_open).await? {
                Ok(connection) => return Some(connection),
                Err(error) => {
                    debug!(attempt, %error, "reconnection failed");
                    self.emit(Event::ReconnectFailed { attempt, error });
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
                    Some(Command::Request { request, answer }) => {
                        let pending = self.accept(request, answer);
                        self.queued.push_back(pending);
                    }
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
        let mut session = Session {
            ws,
            auth,
            awaiting: VecDeque::new(),
            resubscribing: 0,
            resubscribed: Vec::new(),
            last_heard: Instant::now(),
            dead_at: None,
        };
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

    /// Subscribes again to every kept app, then sends the queued requests.
    async fn start_session(&mut self, session: &mut Session) -> Result<(), DisconnectCause> {
        self.status
            .send_modify(|status| status.auth = Some(session.auth));
        let kept: Vec<String> = self.status.borrow().subscriptions.iter().cloned().collect();
        session.resubscribing = kept.len();
        for app in kept {
            let request = Request::Subscribe(app);
            let message = request.message();
            session.awaiting.push_back(Pending {
                request,
                origin: Origin::Resubscribe,
                was_kept: true,
            });
            self.send(&mut session.ws, Message::text(message)).await?;
        }
        if session.resubscribing == 0 {
            self.announce(session);
        }
        while let Some(pending) = self.queued.pop_front() {
            self.send_request(session, pending).await?;
        }
        Ok(())
    }

    async fn serve_frames(&mut self, session: &mut Session) -> DisconnectCause {
        loop {
            let ping_due = session
                .dead_at
                .unwrap_or(session.last_heard + self.ping_interval);
            let reading = self.held.is_none();
            let step = tokio::select! {
                frame = session.ws.next(), if reading => {
                    session.heard();
                    self.on_frame(session, frame).await
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
            Some(Incoming::Push(push)) => self.deliver(push),
            Some(Incoming::Reply(reply)) => match session.awaiting.pop_front() {
                Some(pending) => self.answer(session, pending, &reply),
                None => warn!(?reply, "a gateway reply to no request; ignored"),
            },
            Some(Incoming::UnsubscribedByServer { app }) => {
                self.forget(&app);
                self.emit(Event::UnsubscribedByServer { app });
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

    fn answer(&mut self, session: &mut Session, pending: Pending, reply: &crate::protocol::Reply) {
        let mut outcome = pending.request.outcome(reply);
        match (&pending.request, &outcome) {
            (Request::Subscribe(app), Ok(())) => self.keep(app),
            (Request::Unsubscribe(app), _) => {
                // A subscribe answered between the request and this reply kept it again.
                self.forget(app);
                if pending.was_kept && matches!(outcome, Err(Error::NotSubscribed { .. })) {
                    outcome = Ok(());
                }
            }
            (Request::Subscribe(_), Err(_)) => {}
        }
        match pending.origin {
            Origin::User(answer) => {
                let _ = answer.send(outcome);
            }
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
                session.resubscribing -= 1;
                if session.resubscribing == 0 {
                    self.announce(session);
                }
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
                let pending = self.accept(request, answer);
                self.send_request(session, pending).await
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
            Request::Subscribe(_) => false,
        };
        Pending {
            request,
            origin: Origin::User(answer),
            was_kept,
        }
    }

    async fn send_request(
        &mut self,
        session: &mut Session,
        pending: Pending,
    ) -> Result<(), DisconnectCause> {
        // A subscribe whose caller gave up (request timeout) is not sent: the caller was told
        // it failed. An unsubscribe is always sent, since the app is already forgotten.
        if let (Origin::User(answer), Request::Subscribe(_)) = (&pending.origin, &pending.request)
            && answer.is_closed()
        {
            return Ok(());
        }
        let message = pending.request.message();
        session.awaiting.push_back(pending);
        self.send(&mut session.ws, Message::text(message)).await
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

    /// Stops keeping `app`; whether it was kept.
    fn forget(&self, app: &str) -> bool {
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
