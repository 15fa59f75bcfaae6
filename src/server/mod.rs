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
    collections::HashSet, fmt, future::Future, io::Write, path::PathBuf, sync::Arc, time::Duration,
};

use futures::FutureExt;
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{broadcast, mpsc, watch};

mod bindings;
use bindings::Bindings;

use crate::{
    broker,
    error::{Error, Result},
    protocol::{self, DecodeError, Notification, Reply, Request, RequestEnvelope},
    store::{Applied, Effect, Store, Video},
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
}

impl ServerConfig {
    /// A configuration with the defaults for everything but the broker and database.
    pub fn new(amqp_url: impl Into<String>, db_path: impl Into<PathBuf>) -> Self {
        ServerConfig {
            amqp_url: amqp_url.into(),
            db_path: db_path.into(),
            prefetch: MAX_BATCH as u16,
            print_events: true,
        }
    }
}

/// The default database file for a broker URL: one file per vhost, in the
/// user's data directory, so two stacks on two vhosts never share state.
pub fn default_db_path(amqp_url: &str) -> PathBuf {
    let vhost = amqp_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, vhost)| vhost.split('?').next().unwrap_or_default())
        .unwrap_or_default();
    let vhost: String = vhost
        .replace("%2f", "/")
        .replace("%2F", "/")
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
    connection: Arc<Connection>,
    store: Store,
    publisher: Channel,
    events: broadcast::Sender<Event>,
    config: ServerConfig,
    user_requests: Option<(Channel, Consumer)>,
    youtuber_requests: Option<(Channel, Consumer)>,
    link: watch::Receiver<broker::LinkState>,
    bindings: Bindings,
}

/// Starts a server and runs it until `shutdown` resolves.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    YoutubeServer::start(config).await?.serve(shutdown).await
}

impl YoutubeServer {
    /// Opens the database, connects, declares the topology, publishes any
    /// notification a crash left unsent, and starts consuming. Requests wait
    /// in their queues until [`YoutubeServer::serve`] runs.
    pub async fn start(config: ServerConfig) -> Result<YoutubeServer> {
        let store = Store::open(&config.db_path)?;
        let connection = Arc::new(broker::connect(&config.amqp_url, "youtube_server").await?);
        let link = broker::watch_link(&connection, "youtube_server");
        let publisher = broker::confirming_channel(&connection).await?;
        topology::declare(&publisher).await?;
        let (events, _) = broadcast::channel(1024);
        let user_requests =
            Some(consume(&connection, topology::USER_REQUESTS, config.prefetch).await?);
        let youtuber_requests =
            Some(consume(&connection, topology::YOUTUBER_REQUESTS, config.prefetch).await?);
        let server = YoutubeServer {
            bindings: Bindings::start(Arc::clone(&connection)),
            connection,
            store,
            publisher,
            events,
            config,
            user_requests,
            youtuber_requests,
            link,
        };
        for video in server.store.videos_to_notify().await? {
            tracing::info!(video = %video.id, "sending a notification left unsent by a crash");
            server.notify_users(&video).await?;
        }
        tracing::info!(
            broker = %broker::redact(&server.config.amqp_url),
            database = %server.store.path().display(),
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
    pub fn link(&self) -> watch::Receiver<broker::LinkState> {
        self.link.clone()
    }

    /// The server's database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Consumes both request queues at the same time until `shutdown`
    /// resolves, then stops consuming, finishes the request in hand and
    /// closes the connection. Unacknowledged requests go back to their queue.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        // `start` always fills both slots and `serve` consumes the server.
        let users = self.user_requests.take().expect("consumer started");
        let youtubers = self.youtuber_requests.take().expect("consumer started");
        let (user_channel, youtuber_channel) = (users.0.clone(), youtubers.0.clone());
        let work = async {
            tokio::try_join!(
                self.consume_requests(topology::USER_REQUESTS, users, stopped.clone()),
                self.consume_requests(topology::YOUTUBER_REQUESTS, youtubers, stopped.clone()),
            )
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut work = std::pin::pin!(work);
        let outcome = tokio::select! {
            outcome = &mut work => outcome.map(|_| ()),
            () = &mut shutdown => {
                tracing::info!("shutting down: finishing the requests in hand");
                let _ = stop.send(true);
                for (channel, queue) in [(&user_channel, topology::USER_REQUESTS), (&youtuber_channel, topology::YOUTUBER_REQUESTS)] {
                    let _ = channel.basic_cancel(consumer_tag(queue).into(), BasicCancelOptions::default()).await;
                }
                work.await.map(|_| ())
            }
        };
        let _ = self
            .connection
            .close(200, "youtube_server stopped".into())
            .await;
        outcome
    }

    /// Applies a queue's requests in the order they were delivered, until
    /// `stopped`. A broker outage is waited out (lapin reconnects; what was
    /// not acknowledged is delivered again and recognised). Any other failure
    /// — the database, a refused publish — sends every request not yet
    /// acknowledged back to the queue, in order, and tries them again after a
    /// pause that doubles each time, up to [`MAX_RETRY_DELAY`].
    async fn consume_requests(
        &self,
        queue: &'static str,
        (mut consuming, mut consumer): (Channel, Consumer),
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut publisher = broker::confirming_channel(&self.connection).await?;
        let mut delay = FIRST_RETRY_DELAY;
        'batches: loop {
            let failure = match self
                .pipeline(queue, &publisher, &mut consumer, &mut stopped, &mut delay)
                .await
            {
                Ok(()) => break,
                Err(Error::Broker(err)) if broker::is_outage(&err) => {
                    ride_out(&publisher, err).await?;
                    continue;
                }
                Err(failure) => failure,
            };
            tracing::warn!(
                %failure,
                queue,
                "could not apply requests; they go back to the queue and are tried again in {delay:?}"
            );
            // Closing the channel returns every unacknowledged request to the
            // queue, in the order they came.
            let _ = consuming.close(200, "trying again".into()).await;
            let _ = publisher.close(200, "trying again".into()).await;
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => break 'batches,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                match self.reopen(queue).await {
                    Ok(((channel, stream), confirming)) => {
                        (consuming, consumer, publisher) = (channel, stream, confirming);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(%err, queue, "cannot consume again yet; trying again in {delay:?}")
                    }
                }
            }
        }
        let _ = publisher.close(200, "done".into()).await;
        Ok(())
    }

    /// A fresh consumer of `queue` and a fresh channel to publish on.
    async fn reopen(&self, queue: &'static str) -> Result<((Channel, Consumer), Channel)> {
        let consuming = consume(&self.connection, queue, self.config.prefetch).await?;
        let publisher = broker::confirming_channel(&self.connection).await?;
        Ok((consuming, publisher))
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
        publisher: &Channel,
        consumer: &mut Consumer,
        stopped: &mut watch::Receiver<bool>,
        delay: &mut Duration,
    ) -> Result<()> {
        let (prepared, mut to_finish) = mpsc::channel::<Prepared>(1);
        // Videos whose notification is published but not yet recorded as
        // sent: a redelivered upload among them is not notified twice.
        let unrecorded = std::sync::Mutex::new(HashSet::new());
        let unrecorded = &unrecorded;
        let prepare = async move {
            while let Some(batch) = next_batch(consumer, stopped).await? {
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
        publisher: &Channel,
        batch: Vec<Delivery>,
        unrecorded: &std::sync::Mutex<HashSet<uuid::Uuid>>,
    ) -> Result<Prepared> {
        let started = std::time::Instant::now();
        let requests: Vec<Triaged> = batch
            .iter()
            .map(|delivery| triage(queue, protocol::decode_request(&delivery.data)))
            .collect();
        let to_apply: Vec<(uuid::Uuid, Request)> = requests
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
        let applied = requests.iter().filter_map(|triaged| match triaged {
            Triaged::Apply(envelope) => Some(&envelope.request),
            _ => None,
        });
        for (request, outcome) in applied.zip(&outcomes) {
            if let Some(event) = event_of(request, &outcome.reply) {
                self.emit(event);
            }
        }
        let bindings = self.bindings.carry_out(&outcomes);
        let mut notifications = Vec::new();
        for outcome in &outcomes {
            if let Effect::Notify(video) = &outcome.effect
                && !video.notified
                && lock(unrecorded).insert(video.id)
            {
                notifications.push((video.id, publish_notification(publisher, video).await?));
            }
        }
        Ok(Prepared {
            deliveries: batch,
            requests,
            replies: outcomes
                .into_iter()
                .map(|outcome| outcome.reply.into_inner())
                .collect(),
            bindings,
            notifications,
            started,
        })
    }

    /// The second stage: waits for the batch's effects, records the
    /// notifications as sent, answers, and acknowledges. The deliveries are
    /// settled last, once nothing before can fail.
    async fn finish(
        &self,
        queue: &'static str,
        publisher: &Channel,
        batch: Prepared,
        unrecorded: &std::sync::Mutex<HashSet<uuid::Uuid>>,
    ) -> Result<()> {
        let Prepared {
            deliveries,
            requests,
            replies,
            bindings,
            notifications,
            started,
        } = batch;
        bindings.done().await?;
        if !notifications.is_empty() {
            let mut sent = Vec::with_capacity(notifications.len());
            for (video, notification) in notifications {
                notification.confirmed().await?;
                sent.push(video);
            }
            self.store.mark_notified(sent.clone()).await?;
            let mut unrecorded = lock(unrecorded);
            for video in sent {
                unrecorded.remove(&video);
            }
        }
        let carried = started.elapsed();

        let mut replies = replies.into_iter();
        let mut answers = Vec::new();
        for (delivery, triaged) in deliveries.iter().zip(&requests) {
            let reply = match triaged {
                Triaged::DeadLetter(_) => continue,
                Triaged::Refuse(reply) => reply.clone(),
                Triaged::Apply(_) => replies
                    .next()
                    .expect("the store answers every request it is given"),
            };
            answers.extend(self.reply(publisher, delivery, &reply).await?);
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

        let mut last_applied = None;
        for (delivery, triaged) in deliveries.iter().zip(&requests) {
            match triaged {
                Triaged::DeadLetter(reason) => {
                    self.dead_letter(publisher, queue, delivery, reason.clone())
                        .await?
                }
                _ => last_applied = Some(delivery),
            }
        }
        // One acknowledgement for the whole batch: everything delivered up to
        // its last request is settled (the dead-lettered ones already are).
        if let Some(last) = last_applied {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        tracing::debug!(
            queue,
            requests = deliveries.len(),
            ?carried,
            ?replied,
            settled = ?started.elapsed(),
            "handled a batch"
        );
        Ok(())
    }

    /// Notifies every subscriber of an upload: one persistent publish to the
    /// notifications exchange, keyed by YouTuber; RabbitMQ copies it into each
    /// subscriber's inbox. Returns once the broker has confirmed it, and
    /// records that in the database.
    pub async fn notify_users(&self, video: &Video) -> Result<()> {
        publish_notification(&self.publisher, video)
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
            &protocol::encode(reply),
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

/// The most requests applied together in one batch (and one transaction).
const MAX_BATCH: usize = 256;

/// The first pause before requests that failed are tried again.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The longest pause before requests that failed are tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A batch between the two stages of [`YoutubeServer::pipeline`].
struct Prepared {
    deliveries: Vec<Delivery>,
    requests: Vec<Triaged>,
    /// The store's reply to each request it applied, in order.
    replies: Vec<Reply>,
    bindings: bindings::Pending,
    /// Each new upload's video id and its notification, unconfirmed.
    notifications: Vec<(uuid::Uuid, broker::Unconfirmed)>,
    started: std::time::Instant,
}

/// The next batch: the first delivery waited for, then whatever else has
/// already arrived, up to [`MAX_BATCH`]. `None` once stopped or when the
/// broker ended the consumer.
async fn next_batch(
    consumer: &mut Consumer,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<Delivery>>> {
    loop {
        let first = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return Ok(None),
            delivery = consumer.next() => delivery,
        };
        let mut batch = match first {
            None => return Ok(None),
            Some(delivery) => vec![delivery?],
        };
        while batch.len() < MAX_BATCH {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                Some(None) | None => break,
            }
        }
        // Delivered before a reconnection: RabbitMQ delivers them again.
        batch.retain(|delivery| !delivery.acker.poisoned());
        if !batch.is_empty() {
            return Ok(Some(batch));
        }
    }
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
        Request::Subscription {
            user,
            youtuber,
            subscribe: true,
        } => Event::Subscribed { user, youtuber },
        Request::Subscription {
            user,
            youtuber,
            subscribe: false,
        } => Event::Unsubscribed { user, youtuber },
        Request::Upload { youtuber, video } => Event::Uploaded { youtuber, video },
        Request::Subscriptions { .. } => return None,
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

/// Waits until lapin has reconnected and replayed the topology, or returns
/// the error if it is not one that recovery can fix.
async fn ride_out(channel: &Channel, err: lapin::Error) -> Result<()> {
    tracing::warn!(%err, "lost the connection to RabbitMQ; waiting for it to come back");
    channel.wait_for_recovery(err).await?;
    tracing::warn!("reconnected to RabbitMQ; carrying on");
    Ok(())
}

fn consumer_tag(queue: &str) -> String {
    format!("youtube_server:{queue}")
}

async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            consumer_tag(queue).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}
