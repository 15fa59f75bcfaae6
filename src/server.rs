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

use std::{collections::HashMap, fmt, future::Future, io::Write, path::PathBuf, time::Duration};

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
use tokio::sync::{broadcast, watch};

use crate::{
    broker,
    error::{Error, Result},
    protocol::{self, DecodeError, Notification, Reply, Request, RequestEnvelope},
    store::{Applied, Effect, Outcome, Store, Video},
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
    connection: Connection,
    store: Store,
    publisher: Channel,
    events: broadcast::Sender<Event>,
    config: ServerConfig,
    user_requests: Option<(Channel, Consumer)>,
    youtuber_requests: Option<(Channel, Consumer)>,
    link: watch::Receiver<broker::LinkState>,
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
        let connection = broker::connect(&config.amqp_url, "youtube_server").await?;
        let link = broker::watch_link(&connection, "youtube_server");
        let publisher = broker::confirming_channel(&connection).await?;
        topology::declare(&publisher).await?;
        let (events, _) = broadcast::channel(1024);
        let user_requests =
            Some(consume(&connection, topology::USER_REQUESTS, config.prefetch).await?);
        let youtuber_requests =
            Some(consume(&connection, topology::YOUTUBER_REQUESTS, config.prefetch).await?);
        let server = YoutubeServer {
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
        let (user_channel, user_consumer) = self.user_requests.take().expect("consumer started");
        let (youtuber_channel, youtuber_consumer) =
            self.youtuber_requests.take().expect("consumer started");
        let work = async {
            tokio::try_join!(
                self.consume_user_requests(user_consumer, stopped.clone()),
                self.consume_youtuber_requests(youtuber_consumer, stopped.clone()),
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

    /// Applies logins, subscription changes and queries, in the order they
    /// were sent.
    pub async fn consume_user_requests(
        &self,
        consumer: Consumer,
        stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        self.consume_requests(topology::USER_REQUESTS, consumer, stopped)
            .await
    }

    /// Applies uploads, notifying the subscribers of each, in the order they
    /// were sent.
    pub async fn consume_youtuber_requests(
        &self,
        consumer: Consumer,
        stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        self.consume_requests(topology::YOUTUBER_REQUESTS, consumer, stopped)
            .await
    }

    /// Takes a queue's requests in batches: whatever has arrived (up to
    /// [`MAX_BATCH`]) is applied in one database transaction, then carried to
    /// the broker together — bindings on several channels at once,
    /// notifications and replies with their confirms in flight together —
    /// then acknowledged. Under load the batches grow, and one disk write and
    /// one round of confirms serve many requests; when idle a batch is a
    /// single request. One batch follows another, so requests are applied in
    /// the order they were delivered.
    async fn consume_requests(
        &self,
        queue: &'static str,
        mut consumer: Consumer,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let channel = broker::confirming_channel(&self.connection).await?;
        loop {
            let first = tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                delivery = consumer.next() => delivery,
            };
            let mut batch = match first {
                None => break,
                Some(Ok(delivery)) => vec![delivery],
                Some(Err(err)) => {
                    ride_out(&channel, err).await?;
                    continue;
                }
            };
            let mut disturbed = None;
            while batch.len() < MAX_BATCH {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(err))) => {
                        disturbed = Some(err);
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            if let Some(err) = disturbed {
                // RabbitMQ delivers the batch again after the reconnection.
                ride_out(&channel, err).await?;
                continue;
            }
            // Delivered before a reconnection: RabbitMQ delivers them again.
            batch.retain(|delivery| !delivery.acker.poisoned());
            if !batch.is_empty() {
                self.handle_until_done(queue, &channel, &batch, &mut stopped)
                    .await?;
            }
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Handles a batch, retrying it in place (so that the requests behind it
    /// keep their order) while the failure is passing: a broker outage is
    /// waited out; a refused publish or a database error is retried with
    /// backoff, and said on stderr. A retry is safe: the requests already
    /// stored are recognised by their ids and only their effects are redone.
    async fn handle_until_done(
        &self,
        queue: &'static str,
        channel: &Channel,
        batch: &[Delivery],
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let requests: Vec<_> = batch
            .iter()
            .map(|delivery| triage(queue, protocol::decode_request(&delivery.data)))
            .collect();
        let mut delay = Duration::from_millis(100);
        let mut retry = false;
        loop {
            match self.handle(queue, channel, batch, &requests, retry).await {
                Ok(()) => return Ok(()),
                Err(Error::Broker(err)) if err.can_be_recovered() => {
                    // The deliveries' channel is gone or going: RabbitMQ
                    // redelivers the requests, and each is applied once.
                    return ride_out(channel, err).await;
                }
                Err(err) => {
                    tracing::warn!(%err, queue, "could not apply {} request(s); retrying in {delay:?}", batch.len());
                    tokio::select! {
                        _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                    retry = true;
                }
            }
        }
    }

    /// Takes a batch from its requests to their acknowledgements: the
    /// database first, then the broker, then the replies; the deliveries are
    /// settled last, so that nothing before can be undone by a retry.
    async fn handle(
        &self,
        queue: &'static str,
        channel: &Channel,
        batch: &[Delivery],
        requests: &[Triaged],
        retry: bool,
    ) -> Result<()> {
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
            self.store.apply(to_apply.clone()).await?
        };
        for ((_, request), outcome) in to_apply.into_iter().zip(&outcomes) {
            if let Some(event) = event_of(request, &outcome.reply) {
                self.emit(event);
            }
        }
        self.carry_topology(&outcomes, retry).await?;
        self.notify_all(channel, &outcomes).await?;

        let mut outcomes = outcomes.into_iter();
        let mut replies = Vec::new();
        for (delivery, triaged) in batch.iter().zip(requests) {
            let reply = match triaged {
                Triaged::DeadLetter(_) => continue,
                Triaged::Refuse(reply) => reply.clone(),
                Triaged::Apply(_) => match outcomes.next() {
                    Some(outcome) => outcome.reply.into_inner(),
                    None => unreachable!("the store answers every request it is given"),
                },
            };
            replies.extend(self.reply(channel, delivery, &reply).await?);
        }
        for reply in replies {
            match reply.confirmed().await {
                Err(Error::Broker(err)) => return Err(Error::Broker(err)),
                Err(err) => {
                    tracing::warn!(%err, "could not send a reply; the request is applied all the same")
                }
                Ok(()) => {}
            }
        }

        for (delivery, triaged) in batch.iter().zip(requests) {
            match triaged {
                Triaged::DeadLetter(reason) => {
                    self.dead_letter(channel, queue, delivery, reason.clone())
                        .await?
                }
                _ => {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        Ok(())
    }

    /// Makes inboxes and bindings match the database after a batch: each
    /// inbox that may be missing is declared (on a retry, every inbox the batch
    /// touches), then each (user, YouTuber) pair the batch touched is bound or
    /// unbound according to its final state. The work is spread by user over
    /// up to [`TOPOLOGY_CHANNELS`] channels and pipelined on each. The
    /// channels are short-lived: lapin remembers what each channel declared
    /// and bound in order to replay it after a reconnection, and the server's
    /// bindings, durable on the broker, need no replaying.
    async fn carry_topology(&self, outcomes: &[Outcome], declare_all: bool) -> Result<()> {
        let mut inboxes: Vec<&str> = Vec::new();
        let mut bindings: HashMap<(&str, &str), bool> = HashMap::new();
        for outcome in outcomes {
            match &outcome.effect {
                Effect::Inbox { user } => inboxes.push(user),
                Effect::Binding {
                    user,
                    youtuber,
                    subscribed,
                    new_user,
                } => {
                    if *new_user || declare_all {
                        inboxes.push(user);
                    }
                    // The last change of a pair in the batch is its state.
                    bindings.insert((user, youtuber), *subscribed);
                }
                Effect::None | Effect::Notify(_) => {}
            }
        }
        if inboxes.is_empty() && bindings.is_empty() {
            return Ok(());
        }
        inboxes.sort_unstable();
        inboxes.dedup();
        let mut users: Vec<&str> = inboxes.clone();
        users.extend(bindings.keys().map(|(user, _)| *user));
        users.sort_unstable();
        users.dedup();
        let lanes = users.len().min(TOPOLOGY_CHANNELS);
        let mut work: Vec<TopologyWork> = vec![TopologyWork::default(); lanes];
        for user in inboxes {
            work[spread(user, lanes)].inboxes.push(user);
        }
        for ((user, youtuber), subscribed) in bindings {
            work[spread(user, lanes)]
                .bindings
                .push((user, youtuber, subscribed));
        }
        let channels =
            futures::future::try_join_all((0..lanes).map(|_| self.connection.create_channel()))
                .await?;
        let done = futures::future::try_join_all(
            channels
                .iter()
                .zip(&work)
                .map(|(channel, work)| work.carry_out(channel)),
        )
        .await;
        for channel in channels {
            tokio::spawn(async move {
                let _ = channel.close(200, "done".into()).await;
            });
        }
        done?;
        Ok(())
    }

    /// Publishes the notification of every upload of a batch not notified yet,
    /// in order, with their confirms in flight together; then records them as
    /// notified.
    async fn notify_all(&self, channel: &Channel, outcomes: &[Outcome]) -> Result<()> {
        let videos: Vec<&Video> = outcomes
            .iter()
            .filter_map(|outcome| match &outcome.effect {
                Effect::Notify(video) if !video.notified => Some(video),
                _ => None,
            })
            .collect();
        if videos.is_empty() {
            return Ok(());
        }
        let mut sent = Vec::with_capacity(videos.len());
        for video in &videos {
            sent.push(publish_notification(channel, video).await?);
        }
        for notification in sent {
            notification.confirmed().await?;
        }
        self.store
            .mark_notified(videos.iter().map(|video| video.id).collect())
            .await
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

/// The most channels one batch's bindings are spread over: the broker
/// applies one channel's operations one at a time.
const TOPOLOGY_CHANNELS: usize = 16;

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
fn event_of(request: Request, reply: &Applied<Reply>) -> Option<Event> {
    let Applied::New(Reply::Done { .. }) = reply else {
        return None;
    };
    Some(match request {
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

/// The inboxes to declare and the bindings to make on one channel.
#[derive(Debug, Clone, Default)]
struct TopologyWork<'a> {
    inboxes: Vec<&'a str>,
    /// (user, YouTuber, subscribed)
    bindings: Vec<(&'a str, &'a str, bool)>,
}

impl TopologyWork<'_> {
    /// Declares the inboxes, then binds and unbinds, all pipelined on `channel`.
    async fn carry_out(&self, channel: &Channel) -> Result<(), lapin::Error> {
        futures::future::try_join_all(
            self.inboxes
                .iter()
                .map(|user| topology::declare_inbox(channel, user)),
        )
        .await?;
        futures::future::try_join_all(self.bindings.iter().map(
            |&(user, youtuber, subscribed)| async move {
                if subscribed {
                    topology::bind_subscription(channel, user, youtuber).await
                } else {
                    topology::unbind_subscription(channel, user, youtuber).await
                }
            },
        ))
        .await?;
        Ok(())
    }
}

/// Which of `lanes` channels carries a user's inbox and bindings: always the
/// same one within a batch, so that its inbox is declared before it is bound.
fn spread(user: &str, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
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
