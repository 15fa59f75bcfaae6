//! `youtube_server`: the only component with state. It consumes user
//! requests, YouTuber requests and interactions at the same time, applies
//! each durably, notifies subscribers of every upload, and tells creators of
//! likes, comments and subscribers.
//!
//! The order of steps for each request is what makes "nothing lost" and
//! "SUCCESS means done" true:
//!
//! 1. decode and validate (a message it cannot read goes to the dead-letter
//!    queue with the reason attached);
//! 2. apply it — with the other requests of its batch, in delivery order — in
//!    one database transaction that also records the request id, so a
//!    redelivery is recognised and applied once;
//! 3. make the broker match the database (declare the inbox, bind or unbind,
//!    publish the notification, send the creator's events, and wait for the
//!    confirms);
//! 4. reply, then acknowledge the request.
//!
//! A crash between any two steps leaves the request unacknowledged; RabbitMQ
//! redelivers it, step 2 recognises it, and step 3 is repeated, which is safe
//! because every broker operation there is idempotent (notifications carry
//! the video's id, and creator events the request's, which clients
//! de-duplicate by).
//!
//! The server in files, by stage:
//!
//! - `mod.rs`: [`ServerConfig`], [`Event`], and [`YoutubeServer`]'s start
//!   ([`YoutubeServer::start`]: the store opened, the consumers started) and
//!   stop ([`YoutubeServer::serve`]: the requests in hand finished, the rest
//!   handed back to their queue).
//! - `pipeline.rs`: consuming a request queue: batches taken in two stages
//!   (store and set the effects going; wait for them, answer, acknowledge),
//!   and a request whose effects fail tried again, up to [`MAX_ATTEMPTS`].
//! - `upkeep.rs`: the outbox of notifications a crash left unsent, the count
//!   of notifications that full inboxes dropped, and the pruning of old
//!   request ids.
//! - `bindings.rs`: the lanes that keep inboxes, creators' inboxes and
//!   bindings in step with the database.
//! - `creators.rs`: the events for creators, grouped into messages and sent,
//!   and those left unsent sent later.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io::Write,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize},
    },
    time::Duration,
};

use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

mod bindings;
mod creators;
mod migrate;
mod partitions;
mod pipeline;
mod upkeep;

use bindings::Bindings;
pub use migrate::{Migrated, migrate_queues};
pub use partitions::BALANCE_EVERY;
use partitions::Partitions;
pub use pipeline::MAX_ATTEMPTS;
pub use upkeep::REDELIVERY_HORIZON;

use crate::{
    broker,
    error::Result,
    link::{Feed, Link, LinkState, Opened, Opening, Session, SessionChannel},
    protocol::Reaction,
    store::{self, Store},
    topology::{self, PARTITIONS, QueueType},
};

/// What the server says once, at start, in open mode.
pub const OPEN_MODE_WARNING: &str = "open mode: any client can act as any user or YouTuber; on a \
     shared broker, start youtube_server --secure and give each one an account \
     (youtube_server account add)";

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The broker; its URL's vhost selects the ytnotify stack.
    pub broker: broker::Endpoint,
    /// Where the state lives: a SQLite file, or a PostgreSQL database.
    pub database: store::Database,
    /// How many unacknowledged requests RabbitMQ may push to each consumer.
    pub prefetch: u16,
    /// Print each event on stdout (`alice logged in`, …), as the exercise asks.
    pub print_events: bool,
    /// The most notifications a new user's inbox keeps waiting (the oldest
    /// is dropped past it, and the user told at the next login); `None`
    /// for no bound. Inboxes keep the bound they were declared with.
    pub inbox_bound: Option<u32>,
    /// How many subscribers make a YouTuber a celebrity, whose uploads are
    /// appended once to its stream instead of copied into every inbox
    /// (`--celebrities-from`); `None`: never.
    pub celebrities_from: Option<u64>,
    /// Secure mode: apply a request only if it comes from the account of the
    /// user or YouTuber it names (see [`crate::accounts`]). Otherwise any
    /// client can act as any user.
    pub secure: bool,
    /// The type of the vhost's queues (`--queue-type`): `None` to use the
    /// queues as they are (classic on a new vhost). A vhost whose queues
    /// are of another type than the one asked for is an error.
    pub queue_type: Option<QueueType>,
}

impl ServerConfig {
    /// "secure" or "open", as logs and the dashboard say it.
    pub fn mode(&self) -> &'static str {
        if self.secure { "secure" } else { "open" }
    }

    /// A configuration with the defaults for everything but the broker and database.
    pub fn new(broker: broker::Endpoint, database: impl Into<store::Database>) -> Self {
        ServerConfig {
            broker,
            database: database.into(),
            prefetch: MAX_BATCH as u16,
            print_events: true,
            inbox_bound: Some(store::DEFAULT_INBOX_BOUND),
            celebrities_from: None,
            secure: false,
            queue_type: None,
        }
    }
}

/// The default database file for a broker URL: one file per vhost, in the
/// user's data directory, so two stacks on two vhosts never share state.
pub fn default_db_path(amqp_url: &str) -> PathBuf {
    let vhost = crate::broker_url::parse_list(amqp_url)
        .map(|urls| urls[0].vhost().to_owned())
        .unwrap_or_default();
    let vhost: String = vhost
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let file = match vhost.trim_matches('_') {
        "" => "youtube_server.db".to_owned(),
        named => format!("youtube_server-{named}.db"),
    };
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ytnotify")
        .join(file)
}

/// Something the server did, as it prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    LoggedIn {
        user: String,
    },
    Subscribed {
        user: String,
        youtuber: String,
    },
    Unsubscribed {
        user: String,
        youtuber: String,
    },
    Uploaded {
        youtuber: String,
        video: String,
    },
    Reacted {
        user: String,
        youtuber: String,
        video: String,
        reaction: Reaction,
    },
    Commented {
        user: String,
        youtuber: String,
        video: String,
    },
    DeadLettered {
        queue: String,
        reason: String,
    },
}

impl fmt::Display for Event {
    /// The exact lines of the exercise (including its "unsubscribed to").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::LoggedIn { user } => write!(f, "{user} logged in"),
            Event::Subscribed { user, youtuber } => write!(f, "{user} subscribed to {youtuber}"),
            Event::Unsubscribed { user, youtuber } => {
                write!(f, "{user} unsubscribed to {youtuber}")
            }
            Event::Uploaded { youtuber, video } => write!(f, "{youtuber} uploaded {video}"),
            Event::Reacted {
                user,
                youtuber,
                video,
                reaction,
            } => write!(
                f,
                "{user} {} \"{video}\" by {youtuber}",
                reaction.past_tense()
            ),
            Event::Commented {
                user,
                youtuber,
                video,
            } => write!(f, "{user} commented on \"{video}\" by {youtuber}"),
            Event::DeadLettered { queue, reason } => {
                write!(f, "dead-lettered a message from {queue}: {reason}")
            }
        }
    }
}

/// A running server: connected, topology declared, consumers started.
pub struct YoutubeServer {
    link: Link,
    store: Store,
    publisher: SessionChannel,
    events: broadcast::Sender<Event>,
    config: ServerConfig,
    /// The partitions of the request queues taken at start, until
    /// [`YoutubeServer::serve`] consumes them.
    partitions: Option<Partitions>,
    /// The partitions this server consumes now.
    serving: watch::Sender<Vec<u16>>,
    bindings: Bindings,
    /// How many times each request's effects failed, for those that did.
    attempts: Mutex<HashMap<Uuid, u32>>,
    /// Whether the notifications a crash left unsent have been sent, per
    /// partition.
    outbox_flushed: [AtomicBool; PARTITIONS as usize],
    /// Held while a partition's outbox is sent.
    outbox_sending: [tokio::sync::Mutex<()>; PARTITIONS as usize],
    /// Requests held back to be tried again: while there are any, batches
    /// are acknowledged one request at a time (a `multiple` acknowledgement
    /// would settle them too).
    held: std::sync::Arc<AtomicUsize>,
}

/// Starts a server and runs it until `shutdown` resolves.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    YoutubeServer::start(config).await?.serve(shutdown).await
}

impl YoutubeServer {
    /// Opens the database, connects, declares the topology, and starts
    /// consuming. Requests wait in their queues until
    /// [`YoutubeServer::serve`] runs. If no other server consumes uploads,
    /// the notifications a crash left unsent are sent now; a hot standby
    /// sends them when it takes over, so that it never repeats what the
    /// active server has in flight.
    pub async fn start(config: ServerConfig) -> Result<YoutubeServer> {
        let store = Store::connect(&config.database)
            .await?
            .with_inbox_bound(config.inbox_bound)
            .with_celebrities_from(config.celebrities_from);
        let link =
            Link::connect_server(&config.broker, "youtube_server", config.queue_type).await?;
        // The first line of the log, once there is something to run: a
        // server that cannot start says only why.
        tracing::info!(
            broker = %config.broker.redacted(),
            database = %store.database().shown(),
            inbox_bound = %config.inbox_bound.map_or("none".to_owned(), |bound| bound.to_string()),
            celebrities_from = %config.celebrities_from.map_or("never".to_owned(), |from| from.to_string()),
            queues = %link.queue_type(),
            "youtube_server starting in {} mode",
            config.mode(),
        );
        if !config.secure {
            tracing::warn!("{OPEN_MODE_WARNING}");
        }
        let publisher = SessionChannel::new(&link, true);
        let (events, _) = broadcast::channel(1024);
        let vhost = config.broker.first_url()?.vhost().to_owned();
        let mut server = YoutubeServer {
            bindings: Bindings::start(&link, &vhost),
            link,
            store,
            publisher,
            events,
            config,
            partitions: None,
            serving: watch::channel(Vec::new()).0,
            attempts: Mutex::new(HashMap::new()),
            outbox_flushed: std::array::from_fn(|_| AtomicBool::new(false)),
            outbox_sending: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            held: std::sync::Arc::new(AtomicUsize::new(0)),
        };
        server.move_to_user_exchanges().await?;
        let (session, _) = server.publisher.get().await?;
        match migrate::move_unpartitioned(session.connection()).await {
            Ok(0) => {}
            Ok(moved) => {
                tracing::info!(moved, "moved the requests left in the older request queues");
            }
            // They wait there, unbound: nothing else is lost, and the
            // server serves the partitions meanwhile.
            Err(err) => tracing::warn!(
                "could not move every request left in the older request queues ({err}); \
                 they wait there, and the next start tries again"
            ),
        }
        let partitions = server.take_partitions().await?;
        tracing::info!("youtube_server ready: consuming {}", partitions.describe());
        server.serving.send_replace(partitions.serving());
        server.partitions = Some(partitions);
        Ok(server)
    }

    /// Receives every event from now on (for dashboards and tests).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The state of the server's connection to RabbitMQ.
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.link.state()
    }

    /// The partitions of the request queues this server consumes now (on
    /// SQLite every one, as the active server or its hot standby).
    pub fn partitions(&self) -> watch::Receiver<Vec<u16>> {
        self.serving.subscribe()
    }

    /// How the server was set up.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The server's database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Consumes the request queues at the same time until `shutdown`
    /// resolves, then finishes the batches in hand, returns the requests
    /// prefetched behind them to their queue at once (so that a hot standby
    /// takes them in order), and closes the connection.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        // `start` always fills the slot and `serve` consumes the server.
        let partitions = self.partitions.take().expect("partitions taken");
        let work = async {
            tokio::try_join!(
                self.consume_partitions(partitions, stopped.clone()),
                self.count_dropped(stopped.clone()),
                self.prune_applied(stopped.clone()),
                self.tell_creators_later(stopped.clone()),
                self.flush_outboxes_left_behind(stopped.clone()),
            )
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut work = std::pin::pin!(work);
        let outcome = tokio::select! {
            outcome = &mut work => outcome.map(|_| ()),
            () = &mut shutdown => {
                tracing::info!("shutting down: finishing the requests in hand");
                let _ = stop.send(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await {
                    Ok(outcome) => outcome.map(|_| ()),
                    Err(_) => {
                        // RabbitMQ is away or blocks us: what is in hand
                        // cannot be finished. Closing the link ends every
                        // wait on it; the requests not acknowledged stay in
                        // their queue for the next server.
                        tracing::warn!(
                            "RabbitMQ did not let the requests in hand finish within {SHUTDOWN_GRACE:?}; \
                             stopping without them (they stay queued)"
                        );
                        self.link.close().await;
                        let _ = work.await;
                        Ok(())
                    }
                }
            }
        };
        tracing::info!("closing the connection to RabbitMQ");
        self.link.close().await;
        tracing::info!("youtube_server stopped");
        outcome
    }

    fn emit(&self, event: Event) {
        match event {
            Event::DeadLettered { .. } => {}
            _ if self.config.print_events => {
                // A closed stdout must not stop the server.
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{event}").and_then(|()| stdout.flush());
            }
            _ => {}
        }
        // No receiver is not an error: dashboards come and go.
        let _ = self.events.send(event);
    }
}

/// How long a stopping server waits for the requests in hand to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The longest pause before requests that failed are tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The most requests applied together in one batch (and one transaction).
const MAX_BATCH: usize = 256;

/// The next batch: the first delivery waited for, then whatever else has
/// already arrived, up to [`MAX_BATCH`]. `None` once stopped.
async fn next_batch(
    feed: &mut Feed,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<Delivery>>> {
    let first = tokio::select! {
        biased;
        _ = stopped.wait_for(|stop| *stop) => return Ok(None),
        delivery = feed.next() => delivery?,
    };
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match feed.try_next() {
            Some(delivery) => batch.push(delivery),
            None => break,
        }
    }
    Ok(Some(batch))
}

/// A consumer of one of the server's queues: on each session, a channel
/// with `prefetch`, the topology declared again (someone may have deleted
/// the queue; the other request queue is left alone), and the consumer.
async fn server_feed(link: &Link, queue: &'static str, prefetch: u16) -> Result<Feed> {
    let queue_type = link.queue_type();
    let opener = Box::new(move |session: Session| {
        Box::pin(async move {
            let channel = session.connection().create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            topology::declare_for_consumer(&channel, queue, queue_type).await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    format!("youtube_server:{queue}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(Opened {
                channel,
                consumer,
                owns_channel: true,
            })
        }) as Opening
    });
    Ok(Feed::open(link, format!("youtube_server: {queue}"), opener)
        .await?
        .watching(queue))
}
