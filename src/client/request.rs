//! Request and reply over RabbitMQ, shared by both clients.
//!
//! A request is a persistent message on the server's durable queue, published
//! with a confirm, so once [`Client::send`] returns it survives a broker or
//! server restart. Replies come back on the client's own reply queue, matched
//! to their request by correlation id; several requests may be in flight at
//! once. If the connection drops and recovers, requests still waiting for
//! their reply are sent again: the server applies each id once and answers
//! the copy.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{
    Channel, Connection,
    options::BasicConsumeOptions,
    types::{FieldTable, ShortString},
};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::{
    broker,
    error::{Error, Result},
    link::{Feed, Link, LinkState, Opened, SessionChannel},
    protocol::{self, DecodeError, Reply, Request, RequestEnvelope},
    sync::lock,
    topology::{self, Declaring, RequestQueue},
};

/// How long a client waits for the server unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client that timed out looks at the request queue to say
/// whether a server runs.
const LOOK_AT_QUEUE: Duration = Duration::from_secs(2);

/// How many times a publish is tried again on a live connection whose
/// channel failed, before the error is returned.
const PUBLISH_ATTEMPTS: u32 = 3;

/// How long a request that the broker refuses with a negative confirm is
/// sent again. A quorum queue refuses what it is sent while it elects a new
/// leader (its node went down), which takes a few seconds.
const NACKED_FOR_AT_MOST: Duration = Duration::from_secs(20);
/// The pause before a refused request is sent again.
const AFTER_A_NACK: Duration = Duration::from_millis(250);

/// What a client needs to reach the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The broker: its URL's vhost selects the ytnotify stack, its user is
    /// the account that the requests come from.
    pub broker: broker::Endpoint,
    /// How long to wait for each reply from the server.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            broker: broker::Endpoint::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A request waiting for its reply: what to send again after a
/// reconnection (a reply sent while the connection was down is lost with
/// the reply queue; the server applies a request id once).
struct Waiter {
    id: String,
    reply: oneshot::Sender<Result<Reply, DecodeError>>,
    queue: RequestQueue,
    body: Vec<u8>,
}

/// The requests waiting for their reply, in the order they were first sent:
/// they are sent again in that order, so that a subscribe and an
/// unsubscribe in flight never swap.
#[derive(Default)]
struct Waiters {
    next: u64,
    by_order: BTreeMap<u64, Waiter>,
    order_of: HashMap<String, u64>,
}

impl Waiters {
    fn insert(&mut self, waiter: Waiter) {
        self.next += 1;
        self.order_of.insert(waiter.id.clone(), self.next);
        self.by_order.insert(self.next, waiter);
    }

    fn remove(&mut self, id: &str) -> Option<Waiter> {
        let order = self.order_of.remove(id)?;
        self.by_order.remove(&order)
    }

    /// Copies of every waiting request, oldest first.
    fn pending(&self) -> Vec<(String, RequestQueue, Vec<u8>)> {
        self.by_order
            .values()
            .map(|waiter| (waiter.id.clone(), waiter.queue, waiter.body.clone()))
            .collect()
    }
}

/// A connection to RabbitMQ that sends requests to the server and waits for
/// its replies.
pub struct Client {
    link: Link,
    requests: Requests,
    replies: tokio::task::JoinHandle<()>,
}

/// What sends a client's requests and waits for their replies, from any
/// task: cheap to clone, usable for as long as its [`Client`] lives.
#[derive(Clone)]
pub struct Requests {
    publisher: Arc<SessionChannel>,
    login: Arc<str>,
    reply_queue: Arc<str>,
    waiters: Arc<Mutex<Waiters>>,
    timeout: Duration,
}

/// A request that the broker has confirmed and whose reply has not come yet.
#[must_use = "wait for the reply with Client::wait"]
pub struct PendingReply {
    id: Uuid,
    queue: RequestQueue,
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
        let link = Link::connect(&config.broker, name).await?;
        let login = link.login().to_owned();
        let publisher = Arc::new(SessionChannel::new(&link, true));
        // One name for the life of the client: after a reconnection the
        // queue is declared again under it, so a reply addressed to it by a
        // server that took the request earlier still arrives.
        let reply_queue = topology::reply_queue(&login);
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let opener = {
            let (publisher, waiters, reply_queue, login) = (
                Arc::clone(&publisher),
                Arc::clone(&waiters),
                reply_queue.clone(),
                login.clone(),
            );
            let tag = format!("{name}-replies");
            Box::new(move |session: crate::link::Session| {
                let (publisher, waiters, reply_queue, tag, login) = (
                    Arc::clone(&publisher),
                    Arc::clone(&waiters),
                    reply_queue.clone(),
                    tag.clone(),
                    login.clone(),
                );
                Box::pin(async move {
                    let channel = session.connection().create_channel().await?;
                    topology::declare_reply_queue(&channel, &reply_queue).await?;
                    let consumer = channel
                        .basic_consume(
                            reply_queue.as_str().into(),
                            tag.as_str().into(),
                            BasicConsumeOptions {
                                no_ack: true,
                                ..BasicConsumeOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    // Replies sent while the queue did not exist went
                    // nowhere: ask again, in the order first sent, beside
                    // the consumer, so that replies flow meanwhile.
                    let pending = lock(&waiters).pending();
                    if !pending.is_empty() {
                        tokio::spawn(async move {
                            let sender = Sender {
                                login: &login,
                                reply_queue: Some(&reply_queue),
                            };
                            resend(&publisher, sender, pending).await;
                        });
                    }
                    Ok(Opened {
                        channel,
                        consumer,
                        owns_channel: true,
                    })
                }) as crate::link::Opening
            })
        };
        let mut feed = Feed::open(&link, format!("{name}: replies"), opener).await?;
        let routes = Arc::clone(&waiters);
        let replies = tokio::spawn(async move {
            while let Ok(delivery) = feed.next().await {
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
            requests: Requests {
                publisher,
                login: login.into(),
                reply_queue: reply_queue.into(),
                waiters,
                timeout: config.timeout,
            },
            link,
            replies,
        })
    }

    /// What sends this client's requests, for another task.
    pub fn requests(&self) -> Requests {
        self.requests.clone()
    }

    /// The supervised connection, for opening more consumers (an inbox, say).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The state of the connection: connected, reconnecting, or blocked.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.link.state()
    }

    /// Sends a request and returns once the broker has confirmed it (see
    /// [`Requests::send`]).
    pub async fn send(&self, request: Request) -> Result<PendingReply> {
        self.requests.send(request).await
    }

    /// Waits for the reply to a request sent with [`Client::send`] (see
    /// [`Requests::wait`]).
    pub async fn wait(&self, pending: PendingReply) -> Result<Reply> {
        self.requests.wait(pending).await
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&self, request: Request) -> Result<Reply> {
        self.requests.call(request).await
    }

    /// Closes the connection cleanly.
    pub async fn close(self) -> Result<()> {
        self.replies.abort();
        self.link.close().await;
        Ok(())
    }
}

impl Requests {
    /// Sends a request and returns once the broker has confirmed it: from
    /// then on it is durable in the server's queue, whether or not a server
    /// runs. A connection lost before the confirm is ridden out and the
    /// request sent again (the same id makes a copy that did arrive harmless).
    pub async fn send(&self, request: Request) -> Result<PendingReply> {
        request.validate()?;
        let queue = RequestQueue::of(&request);
        let envelope = RequestEnvelope::new(request);
        let id = envelope.id.to_string();
        let body = protocol::encode(&envelope);
        let (sender, reply) = oneshot::channel();
        lock(&self.waiters).insert(Waiter {
            id: id.clone(),
            reply: sender,
            queue,
            body: body.clone(),
        });
        if let Err(err) = publish_surely(&self.publisher, queue, self.sender(), &id, &body).await {
            lock(&self.waiters).remove(&id);
            return Err(err);
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
        let PendingReply { id, queue, reply } = pending;
        let outcome = tokio::time::timeout(self.timeout, reply).await;
        match outcome {
            Ok(Ok(Ok(Reply::Refused { reason }))) => Err(Error::Refused(reason)),
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(undecodable))) => Err(Error::UnexpectedReply(undecodable.to_string())),
            Ok(Err(_closed)) => Err(Error::Stopped(
                "the client stopped listening for replies".to_owned(),
            )),
            Err(_elapsed) => {
                lock(&self.waiters).remove(&id.to_string());
                // Whether a server runs, if the broker can say so at once;
                // while it is away, nothing is claimed about the server.
                let consumers =
                    tokio::time::timeout(LOOK_AT_QUEUE, self.server_consumers(queue)).await;
                Err(Error::ServerTimeout {
                    timeout: self.timeout,
                    server_running: !matches!(consumers, Ok(Ok(0))),
                })
            }
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&self, request: Request) -> Result<Reply> {
        let pending = self.send(request).await?;
        self.wait(pending).await
    }

    fn sender(&self) -> Sender<'_> {
        Sender {
            login: &self.login,
            reply_queue: Some(&self.reply_queue),
        }
    }

    /// Sends a request that wants no reply, and returns once the broker has
    /// confirmed it.
    pub async fn tell(&self, request: Request) -> Result<()> {
        request.validate()?;
        let queue = RequestQueue::of(&request);
        let envelope = RequestEnvelope::new(request);
        let sender = Sender {
            login: &self.login,
            reply_queue: None,
        };
        let id = envelope.id.to_string();
        publish_surely(
            &self.publisher,
            queue,
            sender,
            &id,
            &protocol::encode(&envelope),
        )
        .await
    }

    /// How many servers consume a request queue now.
    async fn server_consumers(&self, queue: RequestQueue) -> Result<u32> {
        let (_, channel) = self.publisher.get().await?;
        let (_, consumers) = topology::inspect(&channel, queue.name()).await?;
        Ok(consumers)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Who sends a request: the login that RabbitMQ checks its `user_id`
/// against, and where the answer goes.
#[derive(Clone, Copy)]
pub(super) struct Sender<'a> {
    pub login: &'a str,
    pub reply_queue: Option<&'a str>,
}

/// Publishes a request to the exchange of its queue, as `sender`; the
/// caller waits for the confirm.
pub(super) async fn publish_request(
    channel: &Channel,
    queue: RequestQueue,
    sender: Sender<'_>,
    id: &str,
    body: &[u8],
) -> Result<broker::Unconfirmed> {
    let mut properties = broker::persistent_json()
        .with_message_id(ShortString::from(id))
        .with_correlation_id(ShortString::from(id))
        .with_user_id(ShortString::from(sender.login));
    if let Some(reply_queue) = sender.reply_queue {
        properties = properties.with_reply_to(ShortString::from(reply_queue));
    }
    broker::publish(
        channel,
        queue.exchange(),
        queue.routing_key(),
        true,
        body,
        properties,
    )
    .await
}

/// Publishes a request until the broker confirms it: a lost connection is
/// waited out, and a request queue that someone deleted is declared again.
async fn publish_surely(
    publisher: &SessionChannel,
    queue: RequestQueue,
    sender: Sender<'_>,
    id: &str,
    body: &[u8],
) -> Result<()> {
    let mut failures = 0;
    let mut first_nack = None;
    loop {
        let (session, channel) = publisher.get().await?;
        let sent = match publish_request(&channel, queue, sender, id, body).await {
            Ok(unconfirmed) => publisher.confirmed(unconfirmed).await,
            Err(err) => Err(err),
        };
        match sent {
            Ok(()) => return Ok(()),
            // Not confirmed: send it again on the next connection.
            Err(_) if !session.is_alive() => {}
            Err(Error::Broker(err)) if broker::is_access_refused(&err) => {
                return Err(Error::AccessRefused(broker::amqp_reason(&err)));
            }
            // The channel was renewed: send it again at once.
            Err(Error::Unconfirmed(_))
                if first_nack.get_or_insert_with(Instant::now).elapsed() < NACKED_FOR_AT_MOST => {}
            Err(Error::Nacked(target))
                if first_nack.get_or_insert_with(Instant::now).elapsed() < NACKED_FOR_AT_MOST =>
            {
                tracing::debug!(
                    "RabbitMQ refused the request for {target}; sending it again on another channel"
                );
                publisher.renew().await;
                tokio::time::sleep(AFTER_A_NACK).await;
            }
            Err(Error::Unroutable(target)) => {
                failures += 1;
                if failures >= PUBLISH_ATTEMPTS {
                    return Err(Error::Unroutable(target));
                }
                tracing::warn!("{queue} is missing on the broker; declaring it again");
                declare_again(session.connection(), queue).await?;
            }
            // The request exchange itself was deleted.
            Err(Error::Broker(err)) if broker::is_not_found(&err) => {
                failures += 1;
                if failures >= PUBLISH_ATTEMPTS {
                    return Err(Error::Broker(err));
                }
                let (session, _) = publisher.get().await?;
                tracing::warn!(
                    "the exchange for {queue} is missing on the broker; declaring it again"
                );
                declare_again(session.connection(), queue).await?;
            }
            Err(Error::Broker(err)) => {
                failures += 1;
                if failures >= PUBLISH_ATTEMPTS {
                    return Err(Error::Broker(err));
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Declares the topology again, for a request queue or exchange that
/// someone deleted. An account that may not declare it (secure mode) says so.
async fn declare_again(connection: &Connection, queue: RequestQueue) -> Result<()> {
    topology::declare(connection, Declaring::AsFound)
        .await
        .map_err(|err| {
            if broker::is_access_refused(&err) {
                Error::QueueMissing(queue.name().to_owned())
            } else {
                Error::Broker(err)
            }
        })
}

/// After the reply queue is declared again, sends the requests that were
/// still waiting for their reply again, oldest first, each confirmed before
/// the next (a request refused while a quorum queue elects its leader is
/// sent again, as at first).
async fn resend(
    publisher: &SessionChannel,
    sender: Sender<'_>,
    pending: Vec<(String, RequestQueue, Vec<u8>)>,
) {
    tracing::warn!(
        "sending again {} request{} still waiting for a reply",
        pending.len(),
        if pending.len() == 1 { "" } else { "s" }
    );
    for (id, queue, body) in &pending {
        if let Err(err) = publish_surely(publisher, *queue, sender, id, body).await {
            tracing::warn!(%err, "could not send a request again after reconnecting");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_requests_are_sent_again_in_the_order_first_sent() {
        let mut waiters = Waiters::default();
        for id in ["zeta", "alpha", "mu", "beta"] {
            waiters.insert(Waiter {
                id: id.to_owned(),
                reply: oneshot::channel().0,
                queue: RequestQueue::of(&Request::login("alice")),
                body: id.as_bytes().to_vec(),
            });
        }
        waiters.remove("mu");
        let order: Vec<String> = waiters.pending().into_iter().map(|(id, ..)| id).collect();
        assert_eq!(order, ["zeta", "alpha", "beta"]);
    }
}
