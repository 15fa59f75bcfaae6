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
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use backon::BackoffBuilder;
use futures_lite::StreamExt;
use lapin::Connection;
use tokio::sync::watch;

mod feed;
mod queue_watch;
mod session_channel;
pub use feed::{Feed, Opened, Opener, Opening};
pub use session_channel::{CONFIRM_PATIENCE, SessionChannel};

use crate::{
    broker,
    broker_url::BrokerUrl,
    error::{Error, Result},
    topology::{self, Declaring, QueueType},
};

/// The first pause before connecting again; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two attempts to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How many network cuts the first connection rides out before giving up.
const FIRST_CONNECT_CUTS: u32 = 3;
/// How often the supervisor looks at the connection's state.
const POLL: Duration = Duration::from_millis(100);
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
    endpoint: broker::Endpoint,
    /// The URL's user: the account that the link logs in as.
    login: String,
    name: String,
    /// Which of the endpoint's nodes the session is connected to.
    node: AtomicUsize,
    /// How each new session declares the topology.
    declaring: Declaring,
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
    ///
    /// The queues that exist are used as they are; the ones that do not are
    /// made of the vhost's type (a client's way,
    /// [`topology::Declaring::AsFound`]).
    pub async fn connect(endpoint: &broker::Endpoint, name: &str) -> Result<Link> {
        Link::connect_declaring(endpoint, name, Declaring::AsFound).await
    }

    /// [`Link::connect`] for a server, which declares every queue of the
    /// vhost's type ([`Link::queue_type`]): `wanted` if given, else the
    /// type the vhost's request queues have, else classic. A vhost whose
    /// queues are of another type than `wanted` is an error that says how to
    /// move them.
    pub async fn connect_server(
        endpoint: &broker::Endpoint,
        name: &str,
        wanted: Option<QueueType>,
    ) -> Result<Link> {
        let (connection, _) = broker::connect_from(endpoint, 0, name).await?;
        let looked = async {
            let unfinished = topology::unfinished_moves(&connection).await?;
            Ok((unfinished, topology::vhost_queue_type(&connection).await?))
        }
        .await;
        let _ = connection.close(200, "found the queue type".into()).await;
        let (unfinished, found) =
            looked.map_err(|err| broker::topology_error(&endpoint.url, err))?;
        if !unfinished.is_empty() {
            return Err(Error::MoveUnfinished(unfinished.join(", ")));
        }
        let queue_type = match (wanted, found) {
            (Some(wanted), Some(found)) if wanted != found => {
                return Err(Error::QueueTypeMismatch {
                    vhost: endpoint.first_url()?.vhost().to_owned(),
                    found,
                    wanted,
                });
            }
            (Some(queue_type), _) | (None, Some(queue_type)) => queue_type,
            (None, None) => QueueType::Classic,
        };
        Link::connect_declaring(endpoint, name, Declaring::As(queue_type)).await
    }

    async fn connect_declaring(
        endpoint: &broker::Endpoint,
        name: &str,
        declaring: Declaring,
    ) -> Result<Link> {
        let url: BrokerUrl = endpoint.first_url()?;
        if endpoint.ca_cert.is_some() && !url.is_tls() {
            tracing::warn!(
                "{name}: the CA certificate is not used: the broker's URL is amqp://, so the \
                 connection is not encrypted (amqps:// encrypts it)"
            );
        }
        let mut cuts = 0;
        let (connection, node) = loop {
            match open(endpoint, 0, name, declaring).await {
                Ok(opened) => break opened,
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
            endpoint: endpoint.clone(),
            login: url.user().to_owned(),
            name: name.to_owned(),
            node: AtomicUsize::new(node),
            declaring,
            session: watch::channel(Some(session.clone())).0,
            state: watch::channel(LinkState::Connected).0,
            closed: watch::channel(false).0,
        });
        tokio::spawn(supervise(Arc::clone(&shared), session));
        Ok(Link {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// The broker login of the link: the account that what it sends comes
    /// from, as RabbitMQ checks it (`user_id`).
    pub fn login(&self) -> &str {
        &self.handle.shared.login
    }

    /// The type of the queues a server's link declares, the vhost's.
    /// (A client's link says classic, but makes a missing queue of the type
    /// of the vhost's other queues.)
    pub fn queue_type(&self) -> QueueType {
        match self.handle.shared.declaring {
            Declaring::As(queue_type) => queue_type,
            Declaring::AsFound => QueueType::Classic,
        }
    }

    /// Whether a publisher confirm on this link can stay pending for good
    /// while the connection lives: on queues RabbitMQ (3.10 here) may leave
    /// without a leader, quorum queues and streams (see
    /// [`SessionChannel::confirmed`]). Not on a server's link to a vhost of
    /// classic queues, where a confirm always comes, however slow, or the
    /// connection fails; a client's link cannot tell, and says yes.
    pub fn confirms_may_stick(&self) -> bool {
        !matches!(
            self.handle.shared.declaring,
            Declaring::As(QueueType::Classic)
        )
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

/// Opens a connection (without lapin's recovery) to the first node that
/// answers, from the `start`th, and declares the topology. An account that
/// may not declare it (a user's or YouTuber's, in secure mode) checks that
/// the server has.
async fn open(
    endpoint: &broker::Endpoint,
    start: usize,
    name: &str,
    declaring: Declaring,
) -> Result<(Connection, usize)> {
    let (connection, node) = broker::connect_from(endpoint, start, name).await?;
    let declared = async {
        match topology::declare(&connection, declaring).await {
            Err(err) if broker::is_access_refused(&err) => {
                let channel = connection.create_channel().await?;
                topology::check_declared(&channel).await?;
                channel.close(200, "checked".into()).await
            }
            result => result,
        }
    }
    .await;
    if let Err(err) = declared {
        let _ = connection.close(200, "declare failed".into()).await;
        return Err(broker::topology_error(&endpoint.url, err));
    }
    Ok((connection, node))
}

/// Which node a connection went to, for a cluster's log lines: nothing for
/// a single broker.
fn node_shown(endpoint: &broker::Endpoint, node: usize) -> String {
    match endpoint.urls() {
        Ok(urls) if urls.len() > 1 => {
            let (host, port) = urls[node].host_port();
            format!(" through {host}:{port}")
        }
        _ => String::new(),
    }
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
            // A close asked for at the same moment as the connection ends is
            // the close: no warning of a loss.
            biased;
            _ = closed.wait_for(|closed| *closed) => None,
            lost = watch_session(&shared, &session) => Some(lost),
        };
        let Some(lost) = lost.filter(|_| !*closed.borrow()) else {
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
        // The node that was lost is tried last: it is likely down.
        let lost_node = shared.node.load(Ordering::Relaxed);
        let (connection, node) = loop {
            let pause = waits.next().unwrap_or(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = closed.wait_for(|closed| *closed) => return,
            }
            attempts += 1;
            // Each attempt starts from the next node: one that answers
            // wrongly holds up no other.
            let start = lost_node + attempts as usize;
            match open(&shared.endpoint, start, &shared.name, shared.declaring).await {
                Ok(opened) => break opened,
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
        shared.node.store(node, Ordering::Relaxed);
        tracing::warn!(
            "{label}: connected to RabbitMQ again{} after {:.1} s ({attempts} attempt{}); restoring consumers",
            node_shown(&shared.endpoint, node),
            started.elapsed().as_secs_f64(),
            if attempts == 1 { "" } else { "s" },
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
