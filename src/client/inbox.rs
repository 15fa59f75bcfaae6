//! The user's durable inbox, read: the notifications that no session of the
//! user has shown yet. A live session reads it beside the user's history
//! (see `notifications.rs`).

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use lapin::{
    Acker, Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use uuid::Uuid;

use super::{Sender, publish_request};
use crate::{
    broker,
    error::{Error, Result},
    link::{Feed, Link, Opened, Opening, Session},
    names,
    protocol::{self, Notification, Request, RequestEnvelope},
    topology,
};

/// How many notifications RabbitMQ may push ahead of the ones shown.
const INBOX_PREFETCH: u16 = 100;

/// A user's inbox, opened for reading. Yields each notification once per
/// session, even if RabbitMQ delivers it again, and rides out every loss of
/// the connection or of the consumer (see [`Feed`]).
pub struct Inbox {
    feed: Feed,
    seen: HashSet<Uuid>,
    waiting_at_open: u32,
}

/// A notification that has been received but not yet acknowledged: call
/// [`Received::ack`] once it has been shown, or it comes back next session.
pub struct Received {
    pub notification: Notification,
    acker: Acker,
}

impl Received {
    /// Tells RabbitMQ the notification has been shown; it leaves the inbox.
    pub async fn ack(self) -> Result<()> {
        broker::ack(&self.acker, BasicAckOptions::default()).await?;
        Ok(())
    }

    /// The notification, and what acknowledges it.
    pub(super) fn into_parts(self) -> (Notification, Acker) {
        (self.notification, self.acker)
    }
}

impl Inbox {
    /// Opens `user`'s inbox on a channel of its own. The server declares
    /// inboxes (with their bound) at login; an inbox that does not exist yet,
    /// or that was deleted on the broker, is asked for with a login.
    pub async fn open(link: &Link, user: &str) -> Result<Inbox> {
        names::check_user(user)?;
        let waiting = Arc::new(AtomicU32::new(0));
        let opener = {
            let (user, waiting, login) = (
                user.to_owned(),
                Arc::clone(&waiting),
                link.login().to_owned(),
            );
            Box::new(move |session: Session| {
                let (user, waiting, login) = (user.clone(), Arc::clone(&waiting), login.clone());
                Box::pin(async move {
                    let (channel, count) =
                        existing_queue(&session, &login, &user, UserQueue::Inbox, INBOX_PREFETCH)
                            .await?;
                    waiting.store(count, Ordering::Relaxed);
                    // Not exclusive: each live session of the user reads the
                    // inbox beside the others, and all of them read the
                    // history (see `Notifications`).
                    let consumer = channel
                        .basic_consume(
                            topology::inbox(&user).as_str().into(),
                            format!("user:{user}:{}", Uuid::new_v4()).as_str().into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(refused)?;
                    Ok(Opened {
                        channel,
                        consumer,
                        owns_channel: true,
                    })
                }) as Opening
            })
        };
        let feed = Feed::open(link, format!("{user}'s inbox"), opener).await?;
        Ok(Inbox {
            feed,
            seen: HashSet::new(),
            waiting_at_open: waiting.load(Ordering::Relaxed),
        })
    }

    /// How many notifications were waiting when the inbox was opened: those
    /// that arrived while the user was away.
    pub fn waiting_at_open(&self) -> u32 {
        self.waiting_at_open
    }

    /// The next notification not yet seen in this session. Duplicates, and
    /// messages that are not valid notifications (in open mode anyone on the
    /// broker can publish into an inbox), are acknowledged and skipped. Fails
    /// only when the connection is closed.
    pub async fn next(&mut self) -> Result<Received> {
        loop {
            let received = self.next_copy().await?;
            if !self.seen.insert(received.notification.id()) {
                tracing::debug!(id = %received.notification.id(), "skipping a duplicate notification");
                let _ = broker::ack(&received.acker, BasicAckOptions::default()).await;
                continue;
            }
            return Ok(received);
        }
    }

    /// The next valid notification, duplicates included: for a reader that
    /// knows better than this inbox whether a copy was shown (a session
    /// that reads ahead, or waits for a browser's word). Cancel-safe.
    pub(super) async fn next_copy(&mut self) -> Result<Received> {
        loop {
            let delivery = self.feed.next().await?;
            let notification = match protocol::decode_notification(&delivery.data) {
                Ok(notification) => notification,
                Err(reason) => {
                    tracing::warn!(%reason, "skipping a notification this client cannot read");
                    let _ = broker::ack(&delivery, BasicAckOptions::default()).await;
                    continue;
                }
            };
            if let Err(invalid) = notification.validate() {
                tracing::warn!(%invalid, "skipping a notification that breaks the naming rules");
                let _ = broker::ack(&delivery, BasicAckOptions::default()).await;
                continue;
            }
            return Ok(Received {
                notification,
                acker: delivery.acker,
            });
        }
    }

    /// Stops reading; notifications not yet acknowledged stay in the inbox.
    pub async fn close(self) {
        self.feed.close().await;
    }
}

/// A queue of a user's that a session reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UserQueue {
    Inbox,
    History,
}

impl UserQueue {
    fn name(self, user: &str) -> String {
        match self {
            UserQueue::Inbox => topology::inbox(user),
            UserQueue::History => topology::history(user),
        }
    }

    fn missing(self, user: &str) -> Error {
        match self {
            UserQueue::Inbox => Error::NoInbox(user.to_owned()),
            UserQueue::History => Error::NoHistory(user.to_owned()),
        }
    }
}

/// A channel with `prefetch`, once the user's `queue` exists, and how many
/// messages wait in it: declared passively, so that its arguments stay the
/// server's. A missing queue is asked for with a login (the server declares
/// it, and binds it), and looked for again for a few seconds. A history the
/// broker cannot serve now is said so at once.
pub(super) async fn existing_queue(
    session: &Session,
    login: &str,
    user: &str,
    queue: UserQueue,
    prefetch: u16,
) -> Result<(Channel, u32)> {
    let mut asked = false;
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    let name = queue.name(user);
    loop {
        let channel = session.connection().create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        match topology::inspect(&channel, &name).await {
            Ok((waiting, _)) => return Ok((channel, waiting)),
            Err(err) if queue == UserQueue::History && broker::is_unavailable(&err) => {
                return Err(Error::HistoryUnavailable {
                    user: user.to_owned(),
                    reason: broker::amqp_reason(&err),
                });
            }
            Err(err) if broker::is_not_found(&err) && tokio::time::Instant::now() < deadline => {
                if !asked {
                    tracing::info!("{name} does not exist; logging {user} in to have it declared");
                    request_login(session, login, user, queue == UserQueue::History).await?;
                    asked = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) if broker::is_not_found(&err) => return Err(queue.missing(user)),
            Err(err) => return Err(err.into()),
        }
    }
}

/// How long a client waits for the server to declare a missing inbox or
/// history.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Publishes a login for `user` without waiting for the reply: the server
/// declares the inbox and binds it, and declares the history if `history`.
async fn request_login(session: &Session, login: &str, user: &str, history: bool) -> Result<()> {
    let channel = broker::confirming_channel(session.connection()).await?;
    let request = Request::Login {
        user: user.to_owned(),
        history,
    };
    let queue = topology::RequestQueue::of(&request);
    let envelope = RequestEnvelope::new(request);
    let sender = Sender {
        login,
        reply_queue: None,
    };
    let sent = match publish_request(
        &channel,
        queue,
        sender,
        &envelope.id.to_string(),
        &protocol::encode(&envelope),
    )
    .await
    {
        Ok(unconfirmed) => unconfirmed.confirmed().await,
        Err(err) => Err(err),
    };
    let _ = channel.close(200, "asked".into()).await;
    sent
}

/// A refused consume: the account may not read the inbox.
fn refused(err: lapin::Error) -> Error {
    if broker::is_access_refused(&err) {
        Error::AccessRefused(broker::amqp_reason(&err))
    } else {
        Error::Broker(err)
    }
}
