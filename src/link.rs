//! The supervised connection to RabbitMQ: reconnection owned by ytnotify.
//!
//! A [`Link`] holds one AMQP connection at a time. A task watches it; when it
//! is lost (broker crash, network cut, missed heartbeats), the task connects
//! again with backoff and jitter, declares the topology again, and publishes
//! the new [`Session`]. Everything that uses the broker is rebuilt on top of
//! the session it finds, never repaired in place:
//!
//! - a [`Feed`] is a consumer that outlives sessions: it re-opens its
//!   channel, QoS, declarations and consumer on each new session, on a
//!   consumer the broker cancelled (a deleted queue), and on a channel that
//!   closed under a live connection (its watchdog). "Next delivery, ride out
//!   an outage, skip a stale delivery" is written here once;
//! - a [`SessionChannel`] is a channel to publish on, opened again on the
//!   session of the moment.
//!
//! lapin's own recovery is off: it replays a connection's channels one after
//! another, stops at the first that fails, and can leave a channel
//! "reconnecting" for good under a connection that is back (see
//! `ARCHITECTURE.md`). A fresh connection with fresh channels has none of
//! these states.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use backon::BackoffBuilder;
use futures_lite::StreamExt;
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicNackOptions},
};
use tokio::sync::watch;

use crate::{
    broker,
    error::{Error, Result},
    topology,
};

/// The first pause before connecting again; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two attempts to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How many network cuts the first connection rides out before giving up.
const FIRST_CONNECT_CUTS: u32 = 3;
/// How often the supervisor looks at the connection's state.
const POLL: Duration = Duration::from_millis(100);
/// How often a feed checks that its channel is still open.
const WATCHDOG: Duration = Duration::from_secs(1);
/// How often an idle feed that watches its queue looks at it.
const QUEUE_CHECK: Duration = Duration::from_secs(5);
/// How long closing a feed waits for a consumer being set up.
const WAIT_FOR_OPENING: Duration = Duration::from_secs(10);
/// How long ending a consumer waits for the broker's answer.
const WAIT_FOR_BROKER: Duration = Duration::from_secs(3);

/// The state of a link, for status lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// Lost; reconnecting with backoff.
    Reconnecting(String),
    /// The broker blocks publishers (a memory or disk alarm); publishes wait.
    Blocked(String),
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Connected => f.write_str("connected"),
            LinkState::Reconnecting(why) => write!(f, "reconnecting ({why})"),
            LinkState::Blocked(why) => write!(f, "blocked by the broker ({why}); waiting"),
        }
    }
}

/// One connection of a link, numbered: a session that is gone is never
/// used again.
#[derive(Clone)]
pub struct Session {
    connection: Arc<Connection>,
    generation: u64,
}

impl Session {
    /// The connection of this session.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Which connection of the link this is: 1 for the first, then 2, ...
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        self.connection.status().connected()
    }
}

/// A connection to RabbitMQ that comes back by itself. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    handle: Arc<Handle>,
}

/// What the clones of a link share; when the last goes, so does the
/// connection (the supervisor holds [`Shared`] only).
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closed.send_replace(true);
        if let Some(session) = self.shared.session.send_replace(None)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = session.connection.close(200, "bye".into()).await;
            });
        }
    }
}

struct Shared {
    url: String,
    name: String,
    /// The live session, `None` while reconnecting.
    session: watch::Sender<Option<Session>>,
    state: watch::Sender<LinkState>,
    closed: watch::Sender<bool>,
}

impl Link {
    /// Connects and declares the topology, then keeps the connection up until
    /// [`Link::close`]. The first attempt fails fast, with an error that says
    /// whether the broker is missing or refused us; later losses are ridden
    /// out. `name` labels the connection in `rabbitmqctl list_connections`
    /// and in log lines.
    pub async fn connect(url: &str, name: &str) -> Result<Link> {
        let mut cuts = 0;
        let connection = loop {
            match open(url, name).await {
                Ok(connection) => break connection,
                // Cut while declaring the topology: as during the handshake,
                // try again a few times.
                Err(Error::Broker(err)) if broker::is_cut(&err) && cuts < FIRST_CONNECT_CUTS => {
                    cuts += 1;
                    tokio::time::sleep(MIN_BACKOFF).await;
                }
                Err(err) => return Err(err),
            }
        };
        let session = Session {
            connection: Arc::new(connection),
            generation: 1,
        };
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            name: name.to_owned(),
            session: watch::channel(Some(session.clone())).0,
            state: watch::channel(LinkState::Connected).0,
            closed: watch::channel(false).0,
        });
        tokio::spawn(supervise(Arc::clone(&shared), session));
        Ok(Link {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// The label given at [`Link::connect`].
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// Follows the state: connected, reconnecting, or blocked.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.handle.shared.state.subscribe()
    }

    /// The live session, waiting for one while reconnecting. Fails only once
    /// the link is closed.
    pub async fn session(&self) -> Result<Session> {
        self.session_after(0).await
    }

    /// The first live session newer than `generation`: what to use after
    /// seeing session `generation` fail.
    pub async fn session_after(&self, generation: u64) -> Result<Session> {
        let mut sessions = self.handle.shared.session.subscribe();
        let mut closed = self.handle.shared.closed.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return Err(closed_error(&self.handle.shared.name));
            }
            if let Some(session) = sessions.borrow_and_update().clone()
                && session.generation > generation
                && session.is_alive()
            {
                return Ok(session);
            }
            tokio::select! {
                changed = sessions.changed() => if changed.is_err() {
                    return Err(closed_error(&self.handle.shared.name));
                },
                _ = closed.changed() => {}
                // A session that died is noticed by the supervisor within a poll.
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// The live session, if there is one now.
    pub fn current(&self) -> Option<Session> {
        self.handle
            .shared
            .session
            .borrow()
            .clone()
            .filter(Session::is_alive)
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.handle.shared.closed.send_replace(true);
        if let Some(session) = self.handle.shared.session.send_replace(None) {
            // The broker's answer is a courtesy: a program that stops does
            // not wait long for it (the socket closes with the process, and
            // the broker then puts back whatever was not acknowledged).
            let closing = session.connection.close(200, "bye".into());
            if tokio::time::timeout(WAIT_FOR_BROKER, closing)
                .await
                .is_err()
            {
                tracing::debug!("{}: RabbitMQ did not answer the close", self.name());
            }
        }
    }
}

fn closed_error(name: &str) -> Error {
    Error::Stopped(format!("{name}: the connection to RabbitMQ was closed"))
}

/// Opens a connection (without lapin's recovery) and declares the topology.
async fn open(url: &str, name: &str) -> Result<Connection> {
    let connection = broker::connect(url, name).await?;
    let declared = async {
        let channel = connection.create_channel().await?;
        topology::declare(&channel).await?;
        channel.close(200, "declared".into()).await
    }
    .await;
    if let Err(err) = declared {
        let _ = connection.close(200, "declare failed".into()).await;
        return Err(broker::topology_error(url, err));
    }
    Ok(connection)
}

/// The pauses between attempts: exponential, with jitter, without end.
fn pauses() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Watches the session; when it is lost, connects again with backoff and
/// jitter, for as long as it takes, and publishes the new session.
async fn supervise(shared: Arc<Shared>, mut session: Session) {
    let label = shared.name.clone();
    let mut closed = shared.closed.subscribe();
    loop {
        let lost = tokio::select! {
            lost = watch_session(&shared, &session) => Some(lost),
            _ = closed.wait_for(|closed| *closed) => None,
        };
        let Some(lost) = lost else {
            let _ = session.connection.close(200, "bye".into()).await;
            return;
        };
        shared.session.send_replace(None);
        tracing::warn!("{label}: lost the connection to RabbitMQ ({lost}); reconnecting");
        shared
            .state
            .send_replace(LinkState::Reconnecting(lost.clone()));
        let started = Instant::now();
        let mut waits = pauses();
        let mut attempts = 0u32;
        let connection = loop {
            let pause = waits.next().unwrap_or(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = closed.wait_for(|closed| *closed) => return,
            }
            attempts += 1;
            match open(&shared.url, &shared.name).await {
                Ok(connection) => break connection,
                Err(err) => {
                    tracing::debug!(%err, attempts, "{label}: could not reconnect yet");
                    shared
                        .state
                        .send_replace(LinkState::Reconnecting(err.to_string()));
                }
            }
        };
        if *closed.borrow() {
            let _ = connection.close(200, "bye".into()).await;
            return;
        }
        session = Session {
            connection: Arc::new(connection),
            generation: session.generation + 1,
        };
        tracing::warn!(
            "{label}: connected to RabbitMQ again after {:.1} s ({attempts} attempt{}); restoring consumers",
            started.elapsed().as_secs_f64(),
            if attempts == 1 { "" } else { "s" }
        );
        shared.state.send_replace(LinkState::Connected);
        shared.session.send_replace(Some(session.clone()));
    }
}

/// Follows one session until it is lost, keeping the link's state (blocked
/// or not) up to date. Returns why it was lost.
async fn watch_session(shared: &Shared, session: &Session) -> String {
    let connection = &session.connection;
    let mut events = connection.events_listener();
    let mut tick = tokio::time::interval(POLL);
    let mut last_error = String::from("connection lost");
    let mut blocked_by: Option<String> = None;
    let mut listening = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            event = events.next(), if listening => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => blocked_by = Some(reason),
                Some(lapin::Event::ConnectionUnblocked) => blocked_by = None,
                Some(lapin::Event::Error(err)) => last_error = err.to_string(),
                Some(_) => {}
                None => listening = false,
            },
        }
        let status = connection.status();
        if !status.connected() {
            return last_error;
        }
        let next = if status.blocked() {
            LinkState::Blocked(
                blocked_by
                    .clone()
                    .unwrap_or_else(|| "resource alarm".to_owned()),
            )
        } else {
            LinkState::Connected
        };
        if *shared.state.borrow() != next {
            match &next {
                LinkState::Blocked(why) => tracing::warn!(
                    "{}: RabbitMQ blocks publishing ({why}); waiting until it resumes",
                    shared.name
                ),
                _ => tracing::warn!("{}: RabbitMQ accepts publishing again", shared.name),
            }
            shared.state.send_replace(next);
        }
    }
}

/// What a [`Feed`] runs on each new session to set its consumer up: open or
/// borrow a channel, set its QoS, declare what it needs, consume.
pub type Opener = Box<dyn FnMut(Session) -> Opening + Send + Sync>;

/// The future an [`Opener`] returns.
pub type Opening = Pin<Box<dyn Future<Output = Result<Opened>> + Send>>;

/// A consumer set up by an [`Opener`].
pub struct Opened {
    pub channel: Channel,
    pub consumer: Consumer,
    /// Whether the channel belongs to this feed alone (closed with it) or is
    /// shared with other feeds (only the consumer is cancelled).
    pub owns_channel: bool,
}

struct Live {
    session: Session,
    channel: Channel,
    consumer: Consumer,
    owns_channel: bool,
    /// Cancelled by [`Feed::cancel`]: nothing to cancel on release.
    cancelled: bool,
}

/// A consumer that outlives sessions. [`Feed::next`] returns the next
/// delivery and, on the way, rides out every loss: a lost connection, a
/// consumer cancelled by the broker, a channel closed under a live
/// connection. Each time it runs its [`Opener`] again on the session of the
/// moment (with backoff while that fails) and says so at WARN level.
pub struct Feed {
    link: Link,
    label: String,
    opener: Opener,
    live: Option<Live>,
    /// The session the last consumer was lost with, not to be used again.
    lost_generation: u64,
    /// The opener at work, if a call of [`Feed::next`] was cancelled while
    /// it ran.
    opening: Option<(Session, tokio::task::JoinHandle<Result<Opened>>)>,
    /// Failed attempts to set the consumer up since the last success.
    failures: u32,
    /// The queue looked at while idle, and when it was last.
    watched: Option<(String, tokio::time::Instant)>,
}

impl Feed {
    /// Sets the consumer up on the live session. An error of this first
    /// attempt is returned as it is (a queue refused to this user, say), so
    /// that the caller can say what is wrong.
    pub async fn open(link: &Link, label: impl Into<String>, mut opener: Opener) -> Result<Feed> {
        let session = link.session().await?;
        let opened = opener(session.clone()).await?;
        Ok(Feed {
            link: link.clone(),
            label: label.into(),
            opener,
            live: Some(Live {
                session,
                channel: opened.channel,
                consumer: opened.consumer,
                owns_channel: opened.owns_channel,
                cancelled: false,
            }),
            lost_generation: 0,
            opening: None,
            failures: 0,
            watched: None,
        })
    }

    /// The next delivery. Never ends while the link is open: losses are
    /// ridden out, and deliveries from a channel that is gone (whose
    /// acknowledgement could not reach the broker, so that it delivers them
    /// again) are skipped. Fails only once the link is closed.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            if self.live.is_none() {
                self.reopen().await?;
            }
            let live = self.live.as_mut().expect("set up just above");
            let item = tokio::select! {
                biased;
                item = live.consumer.next() => item,
                () = tokio::time::sleep(WATCHDOG) => {
                    if !live.channel.status().connected() {
                        let why = if live.session.is_alive() {
                            "its channel closed under a live connection"
                        } else {
                            "the connection was lost"
                        };
                        self.lose(why);
                    } else if self.queue_unconsumed().await {
                        self.lose("the broker lists no consumer on its queue");
                    }
                    continue;
                }
            };
            if let Some(delivery) = self.accept(item) {
                return Ok(delivery);
            }
        }
    }

    /// Watches `queue` too: while the consumer is idle, the feed looks every
    /// [`QUEUE_CHECK`] whether the broker still lists a consumer on it, and
    /// sets its own up again if not. This catches a consumer that the broker
    /// dropped without the cancel reaching the client (a queue deleted while
    /// it was being declared again, say); a feed whose queue must never go
    /// unread (the server's) uses it.
    pub fn watching(mut self, queue: impl Into<String>) -> Feed {
        self.watched = Some((queue.into(), tokio::time::Instant::now()));
        self
    }

    /// Whether the watched queue has no consumer at all (so not this one).
    /// Looked at on a channel of its own: a queue that is missing closes it.
    async fn queue_unconsumed(&mut self) -> bool {
        let Some((queue, last)) = self.watched.as_mut() else {
            return false;
        };
        if last.elapsed() < QUEUE_CHECK {
            return false;
        }
        *last = tokio::time::Instant::now();
        let Some(live) = self.live.as_ref() else {
            return false;
        };
        let look = async {
            let channel = live.session.connection().create_channel().await?;
            let seen = crate::topology::inspect(&channel, queue).await;
            if seen.is_ok() {
                let _ = channel.close(200, "looked".into()).await;
            }
            seen
        };
        match tokio::time::timeout(WAIT_FOR_BROKER, look).await {
            Ok(Ok((_, consumers))) => consumers == 0,
            // Gone: the consumer went with it.
            Ok(Err(err)) => crate::broker::is_not_found(&err),
            Err(_) => false,
        }
    }

    /// A delivery that has already arrived, without waiting; `None` if there
    /// is none now (or the consumer was just lost: [`Feed::next`] takes over).
    pub fn try_next(&mut self) -> Option<Delivery> {
        use futures::FutureExt;
        let live = self.live.as_mut()?;
        let item = live.consumer.next().now_or_never()?;
        self.accept(item)
    }

    fn accept(&mut self, item: Option<lapin::Result<Delivery>>) -> Option<Delivery> {
        match item {
            Some(Ok(delivery)) => {
                // Delivered on a channel whose session has ended: its
                // acknowledgement cannot reach the broker, which delivers it
                // again.
                if delivery.acker.poisoned() {
                    return None;
                }
                Some(delivery)
            }
            Some(Err(err)) => {
                let why = format!("the consumer failed: {err}");
                self.lose(&why);
                None
            }
            None => {
                let alive = self
                    .live
                    .as_ref()
                    .is_some_and(|live| live.session.is_alive());
                let why = if alive {
                    "the broker cancelled the consumer (was the queue deleted?)"
                } else {
                    "the connection was lost"
                };
                self.lose(why);
                None
            }
        }
    }

    /// Forgets the consumer, closing its channel if it is the feed's own:
    /// the broker then sends every unacknowledged delivery back to the
    /// queue, in order.
    pub fn reset(&mut self, why: &str) {
        self.lose(why);
    }

    fn lose(&mut self, why: &str) {
        let Some(live) = self.live.take() else { return };
        if live.session.is_alive() {
            tracing::warn!("{}: {why}; setting the consumer up again", self.label);
        } else {
            tracing::debug!("{}: {why}", self.label);
            self.lost_generation = live.session.generation;
        }
        tokio::spawn(release(live));
    }

    /// Sets the consumer up again, on the live session or the next one, with
    /// backoff while it fails.
    ///
    /// Cancel-safe, as `select!` needs: the opener runs in a task of its own
    /// that this feed keeps, so that a consumer it sets up is never left
    /// behind unread (on a shared channel, what the broker sent it would stay
    /// unacknowledged until the channel closes).
    async fn reopen(&mut self) -> Result<()> {
        loop {
            if self.opening.is_none() {
                let session = self.link.session_after(self.lost_generation).await?;
                let opening = tokio::spawn((self.opener)(session.clone()));
                self.opening = Some((session, opening));
            }
            let (_, opening) = self.opening.as_mut().expect("set just above");
            let opened = opening.await;
            let (session, _) = self.opening.take().expect("set just above");
            let opened = opened.unwrap_or_else(|join| {
                Err(Error::Stopped(format!(
                    "setting a consumer up failed: {join}"
                )))
            });
            match opened {
                Ok(opened) => {
                    self.failures = 0;
                    tracing::info!(
                        "{}: consuming again (session {})",
                        self.label,
                        session.generation
                    );
                    self.live = Some(Live {
                        session,
                        channel: opened.channel,
                        consumer: opened.consumer,
                        owns_channel: opened.owns_channel,
                        cancelled: false,
                    });
                    return Ok(());
                }
                Err(err) if !session.is_alive() => {
                    tracing::debug!(%err, "{}: the session ended while setting up", self.label);
                    self.lost_generation = session.generation;
                }
                Err(err) => {
                    let pause = pauses().nth(self.failures as usize).unwrap_or(MAX_BACKOFF);
                    self.failures += 1;
                    tracing::warn!(
                        "{}: cannot consume yet ({err}); trying again in {:.1} s",
                        self.label,
                        pause.as_secs_f64()
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Cancels the consumer, keeping what the broker already sent: read it
    /// with [`Feed::drain`]. On a shared channel, a delivery left
    /// unacknowledged would be held until the channel closes.
    pub async fn cancel(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.session.is_alive() {
            // A broker that stalls answers nothing until the heartbeats
            // give up on it: do not wait that long. A cancel that did not go
            // through is tried again when the feed is released.
            let cancelling = live
                .channel
                .basic_cancel(live.consumer.tag(), BasicCancelOptions::default());
            live.cancelled = matches!(
                tokio::time::timeout(WAIT_FOR_BROKER, cancelling).await,
                Ok(Ok(()))
            );
        }
    }

    /// After [`Feed::cancel`], the next delivery that was already on its
    /// way; `None` once the consumer has ended.
    pub async fn drain(&mut self) -> Option<Delivery> {
        let live = self.live.as_mut()?;
        loop {
            match live.consumer.next().await {
                Some(Ok(delivery)) if !delivery.acker.poisoned() => return Some(delivery),
                Some(Ok(_stale)) => {}
                Some(Err(_)) | None => {
                    self.live = None;
                    return None;
                }
            }
        }
    }

    /// Stops consuming. Deliveries not yet acknowledged go back to the queue.
    pub async fn close(mut self) {
        if let Some(live) = self.live.take() {
            release(live).await;
        }
        // A consumer being set up is released once it is.
        if let Some((session, opening)) = self.opening.take()
            && let Ok(Ok(Ok(opened))) = tokio::time::timeout(WAIT_FOR_OPENING, opening).await
        {
            release(Live {
                session,
                channel: opened.channel,
                consumer: opened.consumer,
                owns_channel: opened.owns_channel,
                cancelled: false,
            })
            .await;
        }
    }
}

/// Ends a consumer: closes its channel if it owns it (the broker then puts
/// every unacknowledged delivery back), else cancels it and puts back
/// itself what the broker sent before the cancel went through, which would
/// otherwise stay unacknowledged on the shared channel.
async fn release(mut live: Live) {
    if !live.session.is_alive() {
        return;
    }
    if live.owns_channel {
        let closing = live.channel.close(200, "consumer done".into());
        let _ = tokio::time::timeout(WAIT_FOR_BROKER, closing).await;
        return;
    }
    if !live.cancelled {
        let cancelling = live
            .channel
            .basic_cancel(live.consumer.tag(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(WAIT_FOR_BROKER, cancelling).await;
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(WAIT_FOR_BROKER, live.consumer.next()).await
    {
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    }
}

/// A channel on the live session, opened again on the next session after a
/// loss, with publisher confirms if asked.
pub struct SessionChannel {
    link: Link,
    confirms: bool,
    current: tokio::sync::Mutex<Option<(Session, Channel)>>,
}

impl SessionChannel {
    /// A channel on `link` (opened when first needed).
    pub fn new(link: &Link, confirms: bool) -> SessionChannel {
        SessionChannel {
            link: link.clone(),
            confirms,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The channel to use now, with the session it belongs to; waits for a
    /// session while reconnecting.
    pub async fn get(&self) -> Result<(Session, Channel)> {
        let mut current = self.current.lock().await;
        if let Some((session, channel)) = current.as_ref()
            && session.is_alive()
            && channel.status().connected()
        {
            return Ok((session.clone(), channel.clone()));
        }
        let mut after = 0;
        loop {
            let session = self.link.session_after(after).await?;
            let opened = if self.confirms {
                broker::confirming_channel(session.connection()).await
            } else {
                Ok(session.connection().create_channel().await?)
            };
            match opened {
                Ok(channel) => {
                    *current = Some((session.clone(), channel.clone()));
                    return Ok((session, channel));
                }
                Err(err) if !session.is_alive() => {
                    tracing::debug!(%err, "the session ended while opening a channel");
                    after = session.generation;
                }
                Err(err) => return Err(err),
            }
        }
    }
}
