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
                    let (channel, count) = open_existing_inbox(&session, &login, &user).await?;
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
            if !self.seen.insert(notification.id()) {
                tracing::debug!(id = %notification.id(), "skipping a duplicate notification");
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

/// A channel with the inbox's QoS, once the inbox exists: declared
/// passively, so that its arguments stay the server's. A missing inbox is
/// asked for with a login (the server declares it and binds it to the
/// user's subscriptions), and looked for again for a few seconds.
async fn open_existing_inbox(session: &Session, login: &str, user: &str) -> Result<(Channel, u32)> {
    let mut asked = false;
    let deadline = tokio::time::Instant::now() + INBOX_WAIT;
    loop {
        let channel = session.connection().create_channel().await?;
        channel
            .basic_qos(INBOX_PREFETCH, BasicQosOptions::default())
            .await?;
        match topology::inspect(&channel, &topology::inbox(user)).await {
            Ok((waiting, _)) => return Ok((channel, waiting)),
            Err(err) if broker::is_not_found(&err) && tokio::time::Instant::now() < deadline => {
                if !asked {
                    tracing::info!(
                        "{user} has no inbox on the broker; logging in to have it declared"
                    );
                    request_login(session, login, user, false).await?;
                    asked = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) if broker::is_not_found(&err) => return Err(Error::NoInbox(user.to_owned())),
            Err(err) => return Err(err.into()),
        }
    }
}

/// How long a client waits for the server to declare a missing inbox.
const INBOX_WAIT: Duration = Duration::from_secs(10);

/// Publishes a login for `user` without waiting for the reply: the server
/// declares the inbox and binds it, and declares the history if `history`.
pub(super) async fn request_login(
    session: &Session,
    login: &str,
    user: &str,
    history: bool,
) -> Result<()> {
    let channel = broker::confirming_channel(session.connection()).await?;
    let envelope = RequestEnvelope::new(Request::Login {
        user: user.to_owned(),
        history,
    });
    let sender = Sender {
        login,
        reply_queue: None,
    };
    let sent = match publish_request(
        &channel,
        topology::USER_REQUESTS,
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
