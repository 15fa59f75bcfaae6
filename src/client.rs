//! Request and reply over RabbitMQ, shared by the `user` and `youtuber` clients.
//!
//! A request is a persistent message on the server's durable queue, published
//! with a confirm, so once [`Client::send`] returns it survives a broker or
//! server restart. Replies come back on the client's own reply queue, matched
//! to their request by correlation id; several requests may be in flight at
//! once. If the connection drops and recovers, requests still waiting for
//! their reply are sent again: the server applies each id once and answers
//! the copy.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_lite::StreamExt;
use lapin::{
    Channel, Connection,
    options::BasicConsumeOptions,
    types::{FieldTable, ShortString},
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{
    broker,
    error::{Error, Result},
    protocol::{self, DecodeError, Reply, Request, RequestEnvelope},
    sync::lock,
    topology,
};

/// After a reconnection, how often a request still without its reply is sent again.
const RESEND_EVERY: Duration = Duration::from_secs(2);

/// How long a client waits for the server unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client needs to reach the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The broker, as an AMQP URL; its vhost selects the ytnotify stack.
    pub amqp_url: String,
    /// How long to wait for each reply from the server.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            amqp_url: broker::DEFAULT_AMQP_URL.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A request waiting for its reply: what to send again if the connection is
/// recovered before the reply comes (a reply sent while the connection was
/// down is lost with the reply queue; the server applies a request id once).
struct Waiter {
    reply: oneshot::Sender<Result<Reply, DecodeError>>,
    queue: &'static str,
    body: Vec<u8>,
}

type Waiters = Arc<Mutex<HashMap<String, Waiter>>>;

/// A connection to RabbitMQ that sends requests to the server and waits for
/// its replies.
pub struct Client {
    connection: Connection,
    channel: Channel,
    reply_queue: String,
    waiters: Waiters,
    timeout: Duration,
    link: tokio::sync::watch::Receiver<broker::LinkState>,
}

/// A request that the broker has confirmed and whose reply has not come yet.
#[must_use = "wait for the reply with Client::wait"]
pub struct PendingReply {
    id: Uuid,
    queue: &'static str,
    reply: oneshot::Receiver<Result<Reply, DecodeError>>,
}

impl PendingReply {
    /// The request's id, which is also its correlation id.
    pub fn id(&self) -> Uuid {
        self.id
    }
}

impl Client {
    /// Connects, declares the topology and starts listening for replies.
    /// `name` labels the connection in RabbitMQ's tools.
    pub async fn connect(config: &ClientConfig, name: &str) -> Result<Client> {
        let connection = broker::connect(&config.amqp_url, name).await?;
        let link = broker::watch_link(&connection, name);
        let channel = broker::confirming_channel(&connection).await?;
        topology::declare(&channel).await?;
        let reply_queue = topology::reply_queue();
        topology::declare_reply_queue(&channel, &reply_queue).await?;
        let mut replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                ShortString::from(format!("{name}-replies")),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiters = Waiters::default();
        let routes = Arc::clone(&waiters);
        let resend_on = channel.clone();
        let resend_to = reply_queue.clone();
        tokio::spawn(async move {
            while let Some(delivery) = replies.next().await {
                let delivery = match delivery {
                    Ok(delivery) => delivery,
                    Err(err) => {
                        if resend_on.wait_for_recovery(err).await.is_err() {
                            break;
                        }
                        resend_pending(&resend_on, &resend_to, &routes).await;
                        continue;
                    }
                };
                let Some(correlation) = delivery.properties.correlation_id() else {
                    tracing::warn!("ignoring a reply without correlation id");
                    continue;
                };
                let waiter = lock(&routes).remove(correlation.as_str());
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.reply.send(protocol::decode_reply(&delivery.data));
                    }
                    None => tracing::debug!(%correlation, "ignoring a reply nobody waits for"),
                }
            }
        });
        Ok(Client {
            connection,
            channel,
            reply_queue,
            waiters,
            timeout: config.timeout,
            link,
        })
    }

    /// The underlying connection, for opening more channels (an inbox, say).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The state of the connection: connected, reconnecting, or blocked.
    pub fn link(&self) -> tokio::sync::watch::Receiver<broker::LinkState> {
        self.link.clone()
    }

    /// Sends a request and returns once the broker has confirmed it: from
    /// then on it is durable in the server's queue, whether or not a server runs.
    pub async fn send(&self, request: Request) -> Result<PendingReply> {
        request.validate()?;
        let queue = match request {
            Request::Upload { .. } => topology::YOUTUBER_REQUESTS,
            _ => topology::USER_REQUESTS,
        };
        let envelope = RequestEnvelope::new(request);
        let id = envelope.id.to_string();
        let body = protocol::encode(&envelope);
        let (sender, reply) = oneshot::channel();
        lock(&self.waiters).insert(
            id.clone(),
            Waiter {
                reply: sender,
                queue,
                body: body.clone(),
            },
        );
        loop {
            match publish_request(&self.channel, queue, &self.reply_queue, &id, &body).await {
                Ok(()) => break,
                // Not confirmed: send it again once reconnected. The same id
                // makes a copy that did arrive harmless.
                Err(Error::Broker(err)) if err.can_be_recovered() => {
                    if let Err(err) = self.channel.wait_for_recovery(err).await {
                        lock(&self.waiters).remove(&id);
                        return Err(err.into());
                    }
                }
                Err(err) => {
                    lock(&self.waiters).remove(&id);
                    return Err(err);
                }
            }
        }
        Ok(PendingReply {
            id: envelope.id,
            queue,
            reply,
        })
    }

    /// Waits for the reply to a request sent with [`Client::send`]. A refusal
    /// becomes [`Error::Refused`]; silence past the timeout becomes
    /// [`Error::ServerTimeout`], and the request stays queued.
    pub async fn wait(&self, pending: PendingReply) -> Result<Reply> {
        let PendingReply {
            id,
            queue,
            mut reply,
        } = pending;
        let deadline = tokio::time::Instant::now() + self.timeout;
        // After the connection has dropped, a reply may have gone to a reply
        // queue that did not exist at that moment: send the request again
        // every few seconds while connected (the server answers a copy
        // without applying it twice).
        let mut link = self.link.clone();
        let mut disturbed = false;
        let mut again = tokio::time::interval(RESEND_EVERY);
        again.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut reply => break Some(outcome),
                () = tokio::time::sleep_until(deadline) => break None,
                Ok(()) = link.changed() => disturbed = true,
                _ = again.tick() => {
                    if disturbed && *link.borrow() == broker::LinkState::Connected {
                        self.resend(&id.to_string()).await;
                    }
                }
            }
        };
        match outcome {
            Some(Ok(Ok(Reply::Refused { reason }))) => Err(Error::Refused(reason)),
            Some(Ok(Ok(reply))) => Ok(reply),
            Some(Ok(Err(undecodable))) => Err(Error::UnexpectedReply(undecodable.to_string())),
            Some(Err(_closed)) => Err(Error::UnexpectedReply(
                "the connection closed before the reply came".to_owned(),
            )),
            None => {
                lock(&self.waiters).remove(&id.to_string());
                Err(Error::ServerTimeout {
                    timeout: self.timeout,
                    server_running: self.server_consumers(queue).await? > 0,
                })
            }
        }
    }

    /// Sends a waiting request again, unchanged (same id).
    async fn resend(&self, id: &str) {
        let copy = lock(&self.waiters)
            .get(id)
            .map(|waiter| (waiter.queue, waiter.body.clone()));
        if let Some((queue, body)) = copy
            && let Err(err) =
                publish_request(&self.channel, queue, &self.reply_queue, id, &body).await
        {
            tracing::debug!(%err, "could not send a request again");
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&self, request: Request) -> Result<Reply> {
        let pending = self.send(request).await?;
        self.wait(pending).await
    }

    /// How many servers consume a request queue now.
    async fn server_consumers(&self, queue: &str) -> Result<u32> {
        let (_, consumers) = topology::inspect(&self.channel, queue).await?;
        Ok(consumers)
    }

    /// Closes the connection cleanly.
    pub async fn close(self) -> Result<()> {
        self.connection.close(200, "bye".into()).await?;
        Ok(())
    }
}

async fn publish_request(
    channel: &Channel,
    queue: &str,
    reply_queue: &str,
    id: &str,
    body: &[u8],
) -> Result<()> {
    let properties = broker::persistent_json()
        .with_message_id(ShortString::from(id))
        .with_correlation_id(ShortString::from(id))
        .with_reply_to(ShortString::from(reply_queue));
    broker::publish_confirmed(channel, "", queue, true, body, properties).await
}

/// After a reconnection, sends again every request still waiting for its
/// reply: a reply sent while the connection was down went nowhere.
async fn resend_pending(channel: &Channel, reply_queue: &str, waiters: &Waiters) {
    let pending: Vec<(String, &'static str, Vec<u8>)> = lock(waiters)
        .iter()
        .map(|(id, waiter)| (id.clone(), waiter.queue, waiter.body.clone()))
        .collect();
    for (id, queue, body) in pending {
        if let Err(err) = publish_request(channel, queue, reply_queue, &id, &body).await {
            tracing::warn!(%err, "could not send a request again after reconnecting");
        }
    }
}
