//! `youtube_server`: the only component with state. It consumes user requests
//! and YouTuber requests at the same time, applies each durably, and notifies
//! subscribers of every upload.
//!
//! The order of steps for each request is what makes "nothing lost" and
//! "SUCCESS means done" true:
//!
//! 1. decode and validate (a message it cannot read goes to the dead-letter
//!    queue with the reason attached);
//! 2. apply it in one SQLite transaction that also records the request id, so
//!    a redelivery is recognised and applied once;
//! 3. make the broker match the database (declare the inbox, bind or unbind,
//!    publish the notification and wait for the confirm);
//! 4. reply, then acknowledge the request.
//!
//! A crash between any two steps leaves the request unacknowledged; RabbitMQ
//! redelivers it, step 2 recognises it, and step 3 is repeated, which is safe
//! because every broker operation there is idempotent (notifications carry
//! the video's id, which clients de-duplicate by).

use std::{fmt, future::Future, io::Write, path::PathBuf, time::Duration};

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

use crate::{
    broker,
    error::{Error, Result},
    protocol::{self, DecodeError, Notification, Reply, Request, RequestEnvelope},
    store::{Applied, Store, Video},
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
            prefetch: 64,
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

    /// Applies logins, subscription changes and queries. Each user's requests
    /// are applied one at a time, in the order they were sent; different users'
    /// requests are applied in parallel.
    pub async fn consume_user_requests(
        &self,
        consumer: Consumer,
        stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        self.consume_requests(topology::USER_REQUESTS, consumer, stopped)
            .await
    }

    /// Applies uploads, notifying subscribers of each: one YouTuber's uploads
    /// in order, different YouTubers' in parallel.
    pub async fn consume_youtuber_requests(
        &self,
        consumer: Consumer,
        stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        self.consume_requests(topology::YOUTUBER_REQUESTS, consumer, stopped)
            .await
    }

    /// Hands each delivery to one of [`WORKERS`] workers, chosen by the
    /// request's key (its user, or its YouTuber for an upload), so that one
    /// key's requests stay in order while the others go on. Each worker has
    /// its own channel: AMQP applies one operation at a time per channel.
    async fn consume_requests(
        &self,
        queue: &'static str,
        mut consumer: Consumer,
        stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut lanes = Vec::with_capacity(WORKERS);
        let mut workers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (lane, deliveries) = mpsc::channel::<Decoded>(LANE_DEPTH);
            let channel = broker::confirming_channel(&self.connection).await?;
            lanes.push(lane);
            workers.push(self.work(queue, channel, deliveries, stopped.clone()));
        }
        let dispatch = async {
            let mut stopped = stopped.clone();
            loop {
                let delivery = tokio::select! {
                    biased;
                    _ = stopped.wait_for(|stop| *stop) => break,
                    delivery = consumer.next() => delivery,
                };
                let delivery = match delivery {
                    None => break,
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => {
                        ride_out(&self.publisher, err).await?;
                        continue;
                    }
                };
                // Decoded once, here: the key picks the lane, the worker applies it.
                let request = protocol::decode_request(&delivery.data);
                let lane = &lanes[lane_of(&request)];
                if lane.send((delivery, request)).await.is_err() {
                    break;
                }
            }
            // Closing the lanes lets each worker finish what it holds, then stop.
            lanes.clear();
            Ok::<(), Error>(())
        };
        let (dispatched, worked) = tokio::join!(dispatch, futures::future::try_join_all(workers));
        dispatched?;
        worked.map(|_| ())
    }

    /// One worker: applies the deliveries of its lane, one at a time.
    async fn work(
        &self,
        queue: &'static str,
        channel: Channel,
        mut deliveries: mpsc::Receiver<Decoded>,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        while let Some((delivery, request)) = deliveries.recv().await {
            // Delivered before a reconnection: RabbitMQ delivers it again.
            if delivery.acker.poisoned() {
                continue;
            }
            self.handle_until_done(queue, &channel, &delivery, &request, &mut stopped)
                .await?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Handles one request, retrying in place (so that the requests behind it
    /// keep their order) while the failure is passing: a broker outage is
    /// waited out; a refused publish or a database error is retried with
    /// backoff, and said on stderr.
    async fn handle_until_done(
        &self,
        queue: &'static str,
        channel: &Channel,
        delivery: &Delivery,
        request: &Result<RequestEnvelope, DecodeError>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.handle(queue, channel, delivery, request.clone()).await {
                Ok(()) => return Ok(()),
                Err(Error::Broker(err)) if err.can_be_recovered() => {
                    // The delivery's channel is gone or going: RabbitMQ
                    // redelivers the request, and it is applied once.
                    return ride_out(channel, err).await;
                }
                Err(err) => {
                    tracing::warn!(%err, queue, "could not apply a request; retrying in {delay:?}");
                    tokio::select! {
                        _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Takes one request from decoding to acknowledgement.
    async fn handle(
        &self,
        queue: &'static str,
        channel: &Channel,
        delivery: &Delivery,
        request: Result<RequestEnvelope, DecodeError>,
    ) -> Result<()> {
        let envelope = match request {
            Ok(envelope) => envelope,
            Err(reason) => {
                return self
                    .dead_letter(channel, queue, delivery, reason.to_string())
                    .await;
            }
        };
        let expected = match envelope.request {
            Request::Upload { .. } => topology::YOUTUBER_REQUESTS,
            _ => topology::USER_REQUESTS,
        };
        if queue != expected {
            let reason = format!(
                "{} requests belong on {expected}, not {queue}",
                envelope.request.kind()
            );
            return self.dead_letter(channel, queue, delivery, reason).await;
        }
        let reply = match envelope.request.validate() {
            Ok(()) => self.apply(channel, envelope).await?,
            Err(invalid) => {
                tracing::warn!(%invalid, "refused a request");
                Reply::Refused {
                    reason: invalid.to_string(),
                }
            }
        };
        self.reply(channel, delivery, &reply).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Applies a valid request: the database first, then the broker.
    async fn apply(&self, channel: &Channel, envelope: RequestEnvelope) -> Result<Reply> {
        let RequestEnvelope { id, request } = envelope;
        match request {
            Request::Login { user } => {
                let applied = self.store.login(id, &user).await?;
                if applied.is_new() {
                    self.emit(Event::LoggedIn { user: user.clone() });
                }
                topology::declare_inbox(channel, &user).await?;
                Ok(applied.into_inner())
            }
            Request::Subscription {
                user,
                youtuber,
                subscribe,
            } => {
                self.update_subscription(channel, id, user, youtuber, subscribe)
                    .await
            }
            Request::Subscriptions { user } => Ok(Reply::Subscriptions {
                youtubers: self.store.subscriptions(&user).await?,
            }),
            Request::Upload { youtuber, video } => {
                let applied = self.store.upload(id, &youtuber, &video).await?;
                if applied.is_new() {
                    self.emit(Event::Uploaded { youtuber, video });
                }
                let stored = applied.into_inner();
                if !stored.notified {
                    self.notify_users_on(channel, &stored).await?;
                }
                Ok(Reply::Done { notice: None })
            }
        }
    }

    /// Records the change, then makes the inbox's binding match the database.
    /// Binding from the database's state, not from the request, is what makes
    /// a replayed request (or a crash between the two steps) harmless.
    async fn update_subscription(
        &self,
        channel: &Channel,
        id: uuid::Uuid,
        user: String,
        youtuber: String,
        subscribe: bool,
    ) -> Result<Reply> {
        let applied = self
            .store
            .change_subscription(id, &user, &youtuber, subscribe)
            .await?;
        if let Applied::New(Reply::Done { .. }) = &applied {
            let (user, youtuber) = (user.clone(), youtuber.clone());
            self.emit(if subscribe {
                Event::Subscribed { user, youtuber }
            } else {
                Event::Unsubscribed { user, youtuber }
            });
        }
        topology::declare_inbox(channel, &user).await?;
        if self.store.is_subscribed(&user, &youtuber).await? {
            topology::bind_subscription(channel, &user, &youtuber).await?;
        } else {
            topology::unbind_subscription(channel, &user, &youtuber).await?;
        }
        Ok(applied.into_inner())
    }

    /// Notifies every subscriber of an upload: one persistent publish to the
    /// notifications exchange, keyed by YouTuber; RabbitMQ copies it into each
    /// subscriber's inbox. Returns once the broker has confirmed it, and
    /// records that in the database.
    pub async fn notify_users(&self, video: &Video) -> Result<()> {
        self.notify_users_on(&self.publisher, video).await
    }

    async fn notify_users_on(&self, channel: &Channel, video: &Video) -> Result<()> {
        let notification = Notification::VideoUploaded {
            id: video.id,
            youtuber: video.youtuber.clone(),
            video: video.title.clone(),
            uploaded_at_ms: video.uploaded_at_ms,
        };
        let properties = broker::persistent_json()
            .with_message_id(ShortString::from(video.id.to_string()))
            .with_timestamp((video.uploaded_at_ms / 1000) as u64);
        broker::publish_confirmed(
            channel,
            topology::NOTIFICATIONS,
            &video.youtuber,
            false,
            &protocol::encode(&notification),
            properties,
        )
        .await?;
        self.store.mark_notified(video.id).await
    }

    /// Answers on the client's reply-to address, if it gave one. A client that
    /// has gone away (timed out, say) misses the answer, not the effect. A
    /// broker outage is an error: the request is then redelivered, recognised,
    /// and answered again.
    async fn reply(&self, channel: &Channel, delivery: &Delivery, reply: &Reply) -> Result<()> {
        let Some(reply_to) = delivery.properties.reply_to() else {
            return Ok(());
        };
        let mut properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        if let Some(correlation) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation.clone());
        }
        let sent = broker::publish_confirmed(
            channel,
            "",
            reply_to.as_str(),
            false,
            &protocol::encode(reply),
            properties,
        )
        .await;
        match sent {
            Err(Error::Broker(err)) => Err(Error::Broker(err)),
            Err(err) => {
                tracing::warn!(%err, "could not send a reply; the request is applied all the same");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
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

/// Workers per request queue. Their SQLite commits are serialised; what runs
/// in parallel is the broker's side (declares, bindings, confirms, replies).
const WORKERS: usize = 8;

/// Deliveries waiting in each worker's lane (the prefetch bounds the total).
const LANE_DEPTH: usize = 16;

/// A delivery in a worker's lane, with what its body decoded to.
type Decoded = (Delivery, Result<RequestEnvelope, DecodeError>);

/// The worker for a request: by its user, or its YouTuber for an upload; a
/// message that does not decode goes to the first (it is dead-lettered there).
fn lane_of(request: &Result<RequestEnvelope, DecodeError>) -> usize {
    use std::hash::{Hash, Hasher};
    let key = match request {
        Ok(envelope) => match &envelope.request {
            Request::Login { user }
            | Request::Subscription { user, .. }
            | Request::Subscriptions { user } => user,
            Request::Upload { youtuber, .. } => youtuber,
        },
        Err(_) => return 0,
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % WORKERS as u64) as usize
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
