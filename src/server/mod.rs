//! `youtube_server`: the only component with state. It consumes user requests
//! and YouTuber requests at the same time, applies each durably, and notifies
//! subscribers of every upload.
//!
//! The order of steps for each request is what makes "nothing lost" and
//! "SUCCESS means done" true:
//!
//! 1. decode and validate (a message it cannot read goes to the dead-letter
//!    queue with the reason attached);
//! 2. apply it — with the other requests of its batch, in delivery order — in
//!    one SQLite transaction that also records the request id, so a
//!    redelivery is recognised and applied once;
//! 3. make the broker match the database (declare the inbox, bind or unbind,
//!    publish the notification and wait for the confirm);
//! 4. reply, then acknowledge the request.
//!
//! A crash between any two steps leaves the request unacknowledged; RabbitMQ
//! redelivers it, step 2 recognises it, and step 3 is repeated, which is safe
//! because every broker operation there is idempotent (notifications carry
//! the video's id, which clients de-duplicate by).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    io::Write,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

mod bindings;
use bindings::{Bindings, Failure};

use crate::{
    broker,
    broker_url::BrokerUrl,
    error::{Error, Result},
    link::{Feed, Link, LinkState, Opened, Opening, Session, SessionChannel},
    protocol::{self, DecodeError, Notification, Reply, Request, RequestEnvelope},
    store::{self, Applied, Effect, Store, Video},
    sync::lock,
    topology,
};

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The broker, as an AMQP URL; its vhost selects the ytnotify stack.
    pub amqp_url: String,
    /// The SQLite database file.
    pub db_path: PathBuf,
    /// How many unacknowledged requests RabbitMQ may push to each consumer.
    pub prefetch: u16,
    /// Print each event on stdout (`alice logged in`, …), as the exercise asks.
    pub print_events: bool,
    /// The most notifications a new user's inbox keeps waiting (the oldest
    /// is dropped past it, and the user told at the next login); `None`
    /// for no bound. Inboxes keep the bound they were declared with.
    pub inbox_bound: Option<u32>,
}

impl ServerConfig {
    /// A configuration with the defaults for everything but the broker and database.
    pub fn new(amqp_url: impl Into<String>, db_path: impl Into<PathBuf>) -> Self {
        ServerConfig {
            amqp_url: amqp_url.into(),
            db_path: db_path.into(),
            prefetch: MAX_BATCH as u16,
            print_events: true,
            inbox_bound: Some(store::DEFAULT_INBOX_BOUND),
        }
    }
}

/// The default database file for a broker URL: one file per vhost, in the
/// user's data directory, so two stacks on two vhosts never share state.
pub fn default_db_path(amqp_url: &str) -> PathBuf {
    let vhost = amqp_url
        .parse::<BrokerUrl>()
        .map(|url| url.vhost().to_owned())
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
    LoggedIn { user: String },
    Subscribed { user: String, youtuber: String },
    Unsubscribed { user: String, youtuber: String },
    Uploaded { youtuber: String, video: String },
    DeadLettered { queue: String, reason: String },
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
    user_requests: Option<Feed>,
    youtuber_requests: Option<Feed>,
    bindings: Bindings,
    /// How many times each request's effects failed, for those that did.
    attempts: Mutex<HashMap<Uuid, u32>>,
    /// Whether the notifications a crash left unsent have been sent.
    outbox_flushed: AtomicBool,
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
        let store = Store::open(&config.db_path)?.with_inbox_bound(config.inbox_bound);
        let link = Link::connect(&config.amqp_url, "youtube_server").await?;
        let publisher = SessionChannel::new(&link, true);
        let (_, channel) = publisher.get().await?;
        let (_, active_servers) = topology::inspect(&channel, topology::YOUTUBER_REQUESTS).await?;
        let (events, _) = broadcast::channel(1024);
        let vhost = config
            .amqp_url
            .parse::<BrokerUrl>()
            .map(|url| url.vhost().to_owned())?;
        let user_requests =
            Some(server_feed(&link, topology::USER_REQUESTS, config.prefetch).await?);
        let youtuber_requests =
            Some(server_feed(&link, topology::YOUTUBER_REQUESTS, config.prefetch).await?);
        let server = YoutubeServer {
            bindings: Bindings::start(&link, &vhost),
            link,
            store,
            publisher,
            events,
            config,
            user_requests,
            youtuber_requests,
            attempts: Mutex::new(HashMap::new()),
            outbox_flushed: AtomicBool::new(false),
            held: std::sync::Arc::new(AtomicUsize::new(0)),
        };
        if active_servers == 0 {
            server.flush_outbox().await?;
        } else {
            tracing::info!(
                "another youtube_server consumes {}: this one is a hot standby",
                topology::YOUTUBER_REQUESTS
            );
        }
        tracing::info!(
            broker = %broker::redact(&server.config.amqp_url),
            database = %server.store.path().display(),
            inbox_bound = %server.config.inbox_bound.map_or("none".to_owned(), |bound| bound.to_string()),
            "youtube_server ready: consuming {} and {}",
            topology::USER_REQUESTS,
            topology::YOUTUBER_REQUESTS,
        );
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

    /// The server's database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Consumes both request queues at the same time until `shutdown`
    /// resolves, then finishes the batches in hand, returns the requests
    /// prefetched behind them to their queue at once (so that a hot standby
    /// takes them in order), and closes the connection.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        // `start` always fills both slots and `serve` consumes the server.
        let users = self.user_requests.take().expect("consumer started");
        let youtubers = self.youtuber_requests.take().expect("consumer started");
        let work = async {
            tokio::try_join!(
                self.consume_requests(topology::USER_REQUESTS, users, stopped.clone()),
                self.consume_requests(topology::YOUTUBER_REQUESTS, youtubers, stopped.clone()),
                self.count_dropped(stopped.clone()),
                self.prune_applied(stopped.clone()),
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

    /// Applies a queue's requests in the order they were delivered, until
    /// `stopped`. The consumer outlives lost connections and cancelled
    /// consumers ([`Feed`]). Any failure of a batch as a whole — the
    /// connection, the database — closes the consuming channel, which sends
    /// every unacknowledged request back to the queue in order; after an
    /// outage they are taken again at once, after another failure after a
    /// pause that doubles each time, up to [`MAX_RETRY_DELAY`]. A failure of
    /// one request's effects is that request's alone ([`Self::finish`]).
    async fn consume_requests(
        &self,
        queue: &'static str,
        mut feed: Feed,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let publisher = SessionChannel::new(&self.link, true);
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let started_on = self.link.current().map(|session| session.generation());
            let failure = match self
                .pipeline(queue, &publisher, &mut feed, &mut stopped, &mut delay)
                .await
            {
                Ok(()) => break,
                Err(failure) => failure,
            };
            feed.reset("requests go back to the queue");
            if self.link.current().map(|session| session.generation()) != started_on {
                tracing::warn!(%failure, queue, "the connection to RabbitMQ changed under a batch; taking its requests again");
                continue;
            }
            tracing::warn!(
                %failure,
                queue,
                "could not apply requests; they go back to the queue and are tried again in {delay:?}"
            );
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
        // Hand-over: what was prefetched behind the last batch goes back to
        // the queue now, ahead of anything a standby could take.
        feed.close().await;
        tracing::info!(
            queue,
            "stopped consuming; requests not taken are back in the queue"
        );
        Ok(())
    }

    /// Takes a queue's requests in batches, through two stages that overlap:
    ///
    /// 1. [`prepare`](Self::prepare): whatever has arrived (up to
    ///    [`MAX_BATCH`]) is stored in one database transaction, and its
    ///    effects are set going: bindings on the [`Bindings`] lanes,
    ///    notifications published;
    /// 2. [`finish`](Self::finish): once those are done and confirmed, the
    ///    replies are sent and the requests acknowledged.
    ///
    /// While one batch finishes, the next is stored. Under load the batches
    /// grow, and one disk write and one round of confirms serve many
    /// requests; when idle a batch is a single request. Each stage takes the
    /// batches in order, so requests are applied, carried out and answered in
    /// the order they were delivered.
    async fn pipeline(
        &self,
        queue: &'static str,
        publisher: &SessionChannel,
        feed: &mut Feed,
        stopped: &mut watch::Receiver<bool>,
        delay: &mut Duration,
    ) -> Result<()> {
        let (prepared, mut to_finish) = mpsc::channel::<Prepared>(1);
        // Videos whose notification is published but not yet recorded as
        // sent: a redelivered upload among them is not notified twice. It
        // lives as long as this pipeline: after a failure, what was in
        // flight is published again.
        let unrecorded = Mutex::new(HashSet::new());
        let unrecorded = &unrecorded;
        let prepare = async move {
            while let Some(batch) = next_batch(feed, stopped).await? {
                let batch = self.prepare(queue, publisher, batch, unrecorded).await?;
                if prepared.send(batch).await.is_err() {
                    break;
                }
            }
            Ok::<(), Error>(())
        };
        let finish = async {
            while let Some(batch) = to_finish.recv().await {
                self.finish(queue, publisher, batch, unrecorded).await?;
                *delay = FIRST_RETRY_DELAY;
            }
            Ok::<(), Error>(())
        };
        tokio::try_join!(prepare, finish).map(|_| ())
    }

    /// The first stage: stores the batch and sets its effects going.
    async fn prepare(
        &self,
        queue: &'static str,
        publisher: &SessionChannel,
        batch: Vec<Delivery>,
        unrecorded: &Mutex<HashSet<Uuid>>,
    ) -> Result<Prepared> {
        let started = std::time::Instant::now();
        // The channel of the connection of the moment: one that a lost
        // connection took away is replaced before it is used.
        let (_, publisher) = publisher.get().await?;
        let publisher = &publisher;
        if queue == topology::YOUTUBER_REQUESTS && !self.outbox_flushed.load(Ordering::Acquire) {
            // This server has just become the one that takes uploads: send
            // what a crash left unsent before anything else.
            self.flush_outbox().await?;
        }
        let requests: Vec<Triaged> = batch
            .iter()
            .map(|delivery| triage(queue, protocol::decode_request(&delivery.data)))
            .collect();
        let to_apply: Vec<(Uuid, Request)> = requests
            .iter()
            .filter_map(|triaged| match triaged {
                Triaged::Apply(envelope) => Some((envelope.id, envelope.request.clone())),
                _ => None,
            })
            .collect();
        let outcomes = if to_apply.is_empty() {
            Vec::new()
        } else {
            self.store.apply(to_apply).await?
        };
        let envelopes = requests.iter().filter_map(|triaged| match triaged {
            Triaged::Apply(envelope) => Some(envelope),
            _ => None,
        });
        for (envelope, outcome) in envelopes.clone().zip(&outcomes) {
            if let Some(event) = event_of(&envelope.request, &outcome.reply) {
                self.emit(event);
            }
        }
        let bindings = self.bindings.carry_out(&outcomes);
        let mut notifications = Vec::new();
        for (index, outcome) in outcomes.iter().enumerate() {
            if let Effect::Notify(video) = &outcome.effect
                && !video.notified
                && lock(unrecorded).insert(video.id)
            {
                let unconfirmed = publish_notification(publisher, video).await?;
                notifications.push((video.id, index, unconfirmed));
            }
        }
        let applied = envelopes
            .zip(outcomes)
            .map(|(envelope, outcome)| AppliedRequest {
                id: envelope.id,
                users: effect_users(&outcome.effect),
                reply: outcome.reply.into_inner(),
            })
            .collect();
        Ok(Prepared {
            deliveries: batch,
            requests,
            applied,
            bindings,
            notifications,
            started,
        })
    }

    /// The second stage: waits for the batch's effects, records the
    /// notifications as sent, answers, and acknowledges. The deliveries are
    /// settled last, once nothing before can fail.
    ///
    /// A request whose effects failed (its user's inbox refused by the
    /// broker, its notification refused) is that request's problem alone:
    /// it goes back to the queue after a pause, without holding up the
    /// others, and after [`MAX_ATTEMPTS`] attempts — or at once when trying
    /// again cannot help — it is refused to its sender with the reason and
    /// dead-lettered. Its stored part stays stored; a later attempt carries
    /// out the effects from the database, so a retry never undoes a later
    /// request of the same user.
    async fn finish(
        &self,
        queue: &'static str,
        publisher: &SessionChannel,
        batch: Prepared,
        unrecorded: &Mutex<HashSet<Uuid>>,
    ) -> Result<()> {
        let Prepared {
            deliveries,
            requests,
            applied,
            bindings,
            notifications,
            started,
        } = batch;
        let failed_users = bindings.done().await?;
        let mut failures: HashMap<usize, Failure> = HashMap::new();
        for (index, request) in applied.iter().enumerate() {
            if let Some(failure) = request.users.iter().find_map(|user| failed_users.get(user)) {
                failures.insert(index, failure.clone());
            }
        }
        if !notifications.is_empty() {
            let mut sent = Vec::with_capacity(notifications.len());
            let mut settled = Vec::with_capacity(notifications.len());
            let mut outcome = Ok(());
            for (video, index, notification) in notifications {
                settled.push(video);
                match notification.confirmed().await {
                    Ok(()) => sent.push(video),
                    Err(err @ (Error::Nacked(_) | Error::Unroutable(_))) => {
                        failures.insert(
                            index,
                            Failure {
                                reason: format!("the notification was not taken: {err}"),
                                permanent: false,
                            },
                        );
                    }
                    Err(err) => outcome = Err(err),
                }
            }
            // Recorded before they leave `unrecorded`: a copy of the upload
            // in the next batch must find them either in flight or sent.
            let recorded = match outcome {
                Ok(()) => self.store.mark_notified(sent).await,
                Err(err) => Err(err),
            };
            let mut unrecorded = lock(unrecorded);
            for video in settled {
                unrecorded.remove(&video);
            }
            drop(unrecorded);
            recorded?;
        }
        let carried = started.elapsed();

        let (_, publisher) = publisher.get().await?;
        let publisher = &publisher;
        let mut answers = Vec::new();
        let mut settle = Vec::with_capacity(deliveries.len());
        let mut applied = applied.into_iter().enumerate();
        for (delivery, triaged) in deliveries.into_iter().zip(&requests) {
            let action = match triaged {
                Triaged::DeadLetter(reason) => Settle::DeadLetter(reason.clone()),
                Triaged::Refuse(reply) => {
                    answers.extend(self.reply(publisher, &delivery, reply).await?);
                    Settle::Ack
                }
                Triaged::Apply(_) => {
                    let (index, request) = applied
                        .next()
                        .expect("the store answers every request it is given");
                    match failures.remove(&index) {
                        None => {
                            lock(&self.attempts).remove(&request.id);
                            answers.extend(self.reply(publisher, &delivery, &request.reply).await?);
                            Settle::Ack
                        }
                        Some(failure) => {
                            let attempt = self.count_attempt(request.id);
                            if failure.permanent || attempt >= MAX_ATTEMPTS {
                                lock(&self.attempts).remove(&request.id);
                                let reason = if failure.permanent {
                                    failure.reason
                                } else {
                                    format!("{} (gave up after {attempt} attempts)", failure.reason)
                                };
                                let refusal = Reply::Refused {
                                    reason: reason.clone(),
                                };
                                answers.extend(self.reply(publisher, &delivery, &refusal).await?);
                                Settle::DeadLetter(reason)
                            } else {
                                tracing::warn!(
                                    request = %request.id,
                                    attempt,
                                    reason = %failure.reason,
                                    "could not carry out a request; trying it again later"
                                );
                                Settle::Retry(attempt)
                            }
                        }
                    }
                }
            };
            settle.push((delivery, action));
        }
        for answer in answers {
            match answer.confirmed().await {
                Err(Error::Broker(err)) => return Err(Error::Broker(err)),
                Err(err) => {
                    tracing::warn!(%err, "could not send a reply; the request is applied all the same")
                }
                Ok(()) => {}
            }
        }
        let replied = started.elapsed();

        // One acknowledgement for the whole batch (`multiple`: everything
        // delivered up to its last request) unless a request is held back to
        // be tried again, in this batch or an earlier one: it would be
        // settled too.
        let singly = self.held.load(Ordering::Acquire) > 0
            || settle
                .iter()
                .any(|(_, action)| matches!(action, Settle::Retry(_)));
        let mut last_ack = None;
        for (delivery, action) in settle {
            match action {
                Settle::Ack if singly => {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Settle::Ack => last_ack = Some(delivery),
                Settle::DeadLetter(reason) => {
                    self.dead_letter(publisher, queue, &delivery, reason)
                        .await?
                }
                Settle::Retry(attempt) => self.retry_later(delivery, attempt),
            }
        }
        if let Some(last) = last_ack {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        tracing::debug!(
            queue,
            requests = requests.len(),
            ?carried,
            ?replied,
            settled = ?started.elapsed(),
            "handled a batch"
        );
        Ok(())
    }

    /// Counts one more failed attempt of a request, and returns how many.
    fn count_attempt(&self, id: Uuid) -> u32 {
        let mut attempts = lock(&self.attempts);
        // Entries leave when their request succeeds or is refused; one whose
        // request another server took never would: forget them all rather
        // than grow without bound.
        if attempts.len() >= MAX_TRACKED_ATTEMPTS {
            attempts.clear();
        }
        let count = attempts.entry(id).or_insert(0);
        *count += 1;
        *count
    }

    /// Sends a request back to its queue after a pause that grows with the
    /// attempts; meanwhile the requests behind it go on.
    fn retry_later(&self, delivery: Delivery, attempt: u32) {
        let pause = FIRST_RETRY_DELAY * 2u32.saturating_pow(attempt.saturating_sub(1));
        let held = std::sync::Arc::clone(&self.held);
        held.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            tokio::time::sleep(pause.min(MAX_RETRY_DELAY)).await;
            // If the channel has closed meanwhile, the broker has already
            // put the request back.
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            held.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Sends, and records as sent, every notification that a crash left
    /// unsent, oldest first.
    async fn flush_outbox(&self) -> Result<()> {
        self.outbox_flushed.store(true, Ordering::Release);
        for video in self.store.videos_to_notify().await? {
            tracing::info!(video = %video.id, "sending a notification left unsent by a crash");
            if let Err(err) = self.notify_users(&video).await {
                self.outbox_flushed.store(false, Ordering::Release);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Counts the notifications that full inboxes dropped, per user, so
    /// that each user is told at the next login.
    async fn count_dropped(&self, mut stopped: watch::Receiver<bool>) -> Result<()> {
        let opening = server_feed(&self.link, topology::INBOX_OVERFLOW_QUEUE, MAX_BATCH as u16);
        let mut feed = tokio::select! {
            feed = opening => feed?,
            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
        };
        loop {
            let Some(batch) = next_batch(&mut feed, &mut stopped).await? else {
                break;
            };
            let mut counts: HashMap<String, u64> = HashMap::new();
            for delivery in &batch {
                let user = delivery.routing_key.as_str();
                if crate::names::check_user(user).is_ok() {
                    *counts.entry(user.to_owned()).or_default() += 1;
                }
            }
            let last = batch.last().expect("a batch is never empty");
            match self
                .store
                .record_dropped(counts.into_iter().collect())
                .await
            {
                Ok(()) => {
                    let _ = last.acker.ack(BasicAckOptions { multiple: true }).await;
                }
                Err(err) => {
                    tracing::warn!(%err, "could not count dropped notifications; trying again");
                    feed.reset("counting dropped notifications failed");
                    tokio::time::sleep(MAX_RETRY_DELAY / 10).await;
                }
            }
        }
        feed.close().await;
        tracing::debug!("stopped counting dropped notifications");
        Ok(())
    }

    /// Forgets, now and then, the ids of requests applied longer ago than
    /// [`REDELIVERY_HORIZON`]: a copy of one delivered later would be
    /// applied again. The first pass waits a while after start, so that the
    /// redeliveries of a crash are recognised first.
    async fn prune_applied(&self, mut stopped: watch::Receiver<bool>) -> Result<()> {
        let mut wait = PRUNE_FIRST;
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            wait = PRUNE_EVERY;
            let horizon = store::now_ms() - REDELIVERY_HORIZON.as_millis() as i64;
            match self.store.prune_applied(horizon).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(pruned, "forgot the ids of requests applied over a week ago")
                }
                Err(err) => tracing::warn!(%err, "could not prune the ids of old requests"),
            }
        }
    }

    /// Notifies every subscriber of an upload: one persistent publish to the
    /// notifications exchange, keyed by YouTuber; RabbitMQ copies it into each
    /// subscriber's inbox. Returns once the broker has confirmed it, and
    /// records that in the database.
    pub async fn notify_users(&self, video: &Video) -> Result<()> {
        let (_, channel) = self.publisher.get().await?;
        publish_notification(&channel, video)
            .await?
            .confirmed()
            .await?;
        self.store.mark_notified(vec![video.id]).await
    }

    /// Sends the answer to the client's reply-to address, if it gave one;
    /// the caller waits for the confirm. A client that has gone away (timed
    /// out, say) misses the answer, not the effect. A broker outage is an
    /// error: the request is then redelivered, recognised, and answered again.
    async fn reply(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        reply: &Reply,
    ) -> Result<Option<broker::Unconfirmed>> {
        let Some(reply_to) = delivery.properties.reply_to() else {
            return Ok(None);
        };
        let mut properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        if let Some(correlation) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation.clone());
        }
        let sent = broker::publish(
            channel,
            "",
            reply_to.as_str(),
            false,
            &protocol::encode(&reply.clone().fitted()),
            properties,
        )
        .await?;
        Ok(Some(sent))
    }

    /// Moves an unreadable message to the dead-letter queue with the reason
    /// in a header, then acknowledges it; the server carries on.
    async fn dead_letter(
        &self,
        channel: &Channel,
        queue: &str,
        delivery: &Delivery,
        reason: String,
    ) -> Result<()> {
        tracing::warn!(queue, %reason, "dead-lettering a message");
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(topology::REASON_HEADER),
            AMQPValue::LongString(reason.as_str().into()),
        );
        headers.insert(
            ShortString::from(topology::SOURCE_QUEUE_HEADER),
            AMQPValue::LongString(queue.into()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let moved = broker::publish_confirmed(
            channel,
            topology::DEAD_LETTER_EXCHANGE,
            queue,
            false,
            &delivery.data,
            properties,
        )
        .await;
        match moved {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await?,
            // The queue's own dead-letter exchange still keeps the message,
            // without our reason header.
            Err(err) => {
                tracing::warn!(%err, "could not attach a reason; rejecting to the dead-letter exchange");
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await?
            }
        };
        self.emit(Event::DeadLettered {
            queue: queue.to_owned(),
            reason,
        });
        Ok(())
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

/// The most requests applied together in one batch (and one transaction).
const MAX_BATCH: usize = 256;

/// The first pause before requests that failed are tried again.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The longest pause before requests that failed are tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How many times a request whose effects fail is tried before it is
/// refused and dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;

/// The most requests whose failed attempts are counted at once.
const MAX_TRACKED_ATTEMPTS: usize = 10_000;

/// How long the id of an applied request is kept to recognise a copy: a
/// request is delivered again only while it waits unacknowledged in its
/// queue (a crash) or when its client sends it again (seconds), so a week
/// covers a server that stays down over a long weekend.
pub const REDELIVERY_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// When the first pruning of old request ids runs after start.
const PRUNE_FIRST: Duration = Duration::from_secs(600);

/// How often old request ids are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A batch between the two stages of [`YoutubeServer::pipeline`].
struct Prepared {
    deliveries: Vec<Delivery>,
    requests: Vec<Triaged>,
    /// Each request the store applied, in order.
    applied: Vec<AppliedRequest>,
    bindings: bindings::Pending,
    /// Each new upload's video id, the index of its request in `applied`,
    /// and its notification, unconfirmed.
    notifications: Vec<(Uuid, usize, broker::Unconfirmed)>,
    started: std::time::Instant,
}

/// A request the store applied: its id, its reply, and the users whose
/// inboxes its effects touch.
struct AppliedRequest {
    id: Uuid,
    reply: Reply,
    users: Vec<String>,
}

/// What becomes of a delivered request once its batch is carried out.
enum Settle {
    Ack,
    DeadLetter(String),
    /// Back to the queue after a pause; the number of attempts so far.
    Retry(u32),
}

/// The users whose inboxes an effect touches.
fn effect_users(effect: &Effect) -> Vec<String> {
    match effect {
        Effect::Inbox { inbox, .. } => vec![inbox.user.clone()],
        Effect::Binding { user, .. } => vec![user.clone()],
        Effect::None | Effect::Notify(_) => Vec::new(),
    }
}

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

/// What a delivered request needs.
#[derive(Debug, Clone)]
enum Triaged {
    /// Unreadable or on the wrong queue: to the dead-letter queue, with why.
    DeadLetter(String),
    /// Readable but invalid: answered with a refusal, nothing stored.
    Refuse(Reply),
    /// To apply.
    Apply(RequestEnvelope),
}

fn triage(queue: &str, request: std::result::Result<RequestEnvelope, DecodeError>) -> Triaged {
    let envelope = match request {
        Ok(envelope) => envelope,
        Err(reason) => return Triaged::DeadLetter(reason.to_string()),
    };
    let expected = match envelope.request {
        Request::Upload { .. } => topology::YOUTUBER_REQUESTS,
        _ => topology::USER_REQUESTS,
    };
    if queue != expected {
        return Triaged::DeadLetter(format!(
            "{} requests belong on {expected}, not {queue}",
            envelope.request.kind()
        ));
    }
    match envelope.request.validate() {
        Ok(()) => Triaged::Apply(envelope),
        Err(invalid) => {
            tracing::warn!(%invalid, "refused a request");
            Triaged::Refuse(Reply::Refused {
                reason: invalid.to_string(),
            })
        }
    }
}

/// The event a request makes, if it was applied now and changed something.
fn event_of(request: &Request, reply: &Applied<Reply>) -> Option<Event> {
    let Applied::New(Reply::Done { .. }) = reply else {
        return None;
    };
    Some(match request.clone() {
        Request::Login { user } => Event::LoggedIn { user },
        Request::ChangeSubscription {
            user,
            youtuber,
            subscribe: true,
        } => Event::Subscribed { user, youtuber },
        Request::ChangeSubscription {
            user,
            youtuber,
            subscribe: false,
        } => Event::Unsubscribed { user, youtuber },
        Request::Upload { youtuber, video } => Event::Uploaded { youtuber, video },
        Request::ListSubscriptions { .. } => return None,
    })
}

/// Publishes the notification of an upload, without waiting for the confirm.
async fn publish_notification(channel: &Channel, video: &Video) -> Result<broker::Unconfirmed> {
    let notification = Notification::VideoUploaded {
        id: video.id,
        youtuber: video.youtuber.clone(),
        video: video.title.clone(),
        uploaded_at_ms: video.uploaded_at_ms,
    };
    let properties = broker::persistent_json()
        .with_message_id(ShortString::from(video.id.to_string()))
        .with_timestamp((video.uploaded_at_ms / 1000) as u64);
    broker::publish(
        channel,
        topology::NOTIFICATIONS,
        &video.youtuber,
        false,
        &protocol::encode(&notification),
        properties,
    )
    .await
}

/// A consumer of one of the server's queues: on each session, a channel
/// with `prefetch`, the topology declared again (someone may have deleted
/// the queue), and the consumer.
async fn server_feed(link: &Link, queue: &'static str, prefetch: u16) -> Result<Feed> {
    let opener = Box::new(move |session: Session| {
        Box::pin(async move {
            let channel = session.connection().create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            topology::declare(&channel).await?;
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
