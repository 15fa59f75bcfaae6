//! The `user` client: log in, change subscriptions, and receive notifications
//! from the user's durable inbox — first those that waited while the user was
//! away, then live ones.

use std::{collections::HashSet, future::Future};

use futures_lite::StreamExt;
use lapin::{
    Acker, Channel, Connection, Consumer,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use uuid::Uuid;

use crate::{
    client::Client,
    error::{Error, Result},
    names,
    protocol::{self, Notification, Reply, Request},
    topology,
};

/// How many notifications RabbitMQ may push ahead of the ones shown.
const INBOX_PREFETCH: u16 = 100;

/// A subscription change, as the exercise's `s` and `u`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub youtuber: String,
    pub subscribe: bool,
}

/// Logs `user` in, adding them the first time. Returns the server's notice, if any.
pub async fn login(client: &Client, user: &str) -> Result<Option<String>> {
    let reply = client
        .call(Request::Login {
            user: user.to_owned(),
        })
        .await?;
    into_notice(reply)
}

/// Subscribes `user` to a YouTuber or unsubscribes. Returns once the server
/// has stored the change and bound (or unbound) the inbox: an upload sent
/// after this returns reaches (or skips) the user.
pub async fn update_subscription(
    client: &Client,
    user: &str,
    change: &SubscriptionChange,
) -> Result<Option<String>> {
    let reply = client.call(subscription_request(user, change)).await?;
    into_notice(reply)
}

/// Logs in and, if asked, changes a subscription, sending both requests at once
/// (the server applies one user's requests in order). Returns the notices.
pub async fn login_and_update(
    client: &Client,
    user: &str,
    change: Option<&SubscriptionChange>,
) -> Result<Vec<String>> {
    let login = client
        .send(Request::Login {
            user: user.to_owned(),
        })
        .await?;
    let update = match change {
        Some(change) => Some(client.send(subscription_request(user, change)).await?),
        None => None,
    };
    let mut notices = Vec::new();
    notices.extend(into_notice(client.wait(login).await?)?);
    if let Some(update) = update {
        notices.extend(into_notice(client.wait(update).await?)?);
    }
    Ok(notices)
}

/// The YouTubers `user` follows, in name order.
pub async fn subscriptions(client: &Client, user: &str) -> Result<Vec<String>> {
    match client
        .call(Request::Subscriptions {
            user: user.to_owned(),
        })
        .await?
    {
        Reply::Subscriptions { youtubers } => Ok(youtubers),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}

fn subscription_request(user: &str, change: &SubscriptionChange) -> Request {
    Request::Subscription {
        user: user.to_owned(),
        youtuber: change.youtuber.clone(),
        subscribe: change.subscribe,
    }
}

fn into_notice(reply: Reply) -> Result<Option<String>> {
    match reply {
        Reply::Done { notice } => Ok(notice),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}

/// A user's inbox, opened for reading. Yields each notification once per
/// session, even if RabbitMQ delivers it again.
pub struct Inbox {
    channel: Channel,
    consumer: Consumer,
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
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

impl Inbox {
    /// Opens `user`'s inbox on its own channel, declaring it if needed.
    pub async fn open(connection: &Connection, user: &str) -> Result<Inbox> {
        names::check_user(user)?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(INBOX_PREFETCH, BasicQosOptions::default())
            .await?;
        let (waiting_at_open, _) = topology::declare_inbox(&channel, user).await?;
        // Exclusive: two sessions would split the notifications between them.
        let consumer = channel
            .basic_consume(
                topology::inbox(user).as_str().into(),
                format!("user:{user}:{}", Uuid::new_v4()).as_str().into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|err| match err.kind() {
                lapin::ErrorKind::ProtocolError(amqp)
                    if amqp.kind()
                        == &lapin::protocol::AMQPErrorKind::Soft(
                            lapin::protocol::AMQPSoftError::ACCESSREFUSED,
                        ) =>
                {
                    Error::AlreadyWatching(user.to_owned())
                }
                _ => Error::Broker(err),
            })?;
        Ok(Inbox {
            channel,
            consumer,
            seen: HashSet::new(),
            waiting_at_open,
        })
    }

    /// How many notifications were waiting when the inbox was opened: those
    /// that arrived while the user was away.
    pub fn waiting_at_open(&self) -> u32 {
        self.waiting_at_open
    }

    /// The next notification not yet seen in this session, or `None` when the
    /// broker ends the consumer. Duplicates and unreadable messages are
    /// acknowledged and skipped.
    pub async fn next(&mut self) -> Result<Option<Received>> {
        while let Some(delivery) = self.consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                // A broker restart or a network cut: wait for the reconnection;
                // what was delivered but not acknowledged comes again.
                Err(err) => {
                    self.channel.wait_for_recovery(err).await?;
                    continue;
                }
            };
            if delivery.acker.poisoned() {
                continue;
            }
            let notification = match protocol::decode_notification(&delivery.data) {
                Ok(notification) => notification,
                Err(reason) => {
                    tracing::warn!(%reason, "skipping a notification this client cannot read");
                    delivery.ack(BasicAckOptions::default()).await?;
                    continue;
                }
            };
            if !self.seen.insert(notification.id()) {
                tracing::debug!(id = %notification.id(), "skipping a duplicate notification");
                delivery.ack(BasicAckOptions::default()).await?;
                continue;
            }
            return Ok(Some(Received {
                notification,
                acker: delivery.acker,
            }));
        }
        Ok(None)
    }

    /// Stops reading; notifications not yet acknowledged stay in the inbox.
    pub async fn close(self) -> Result<()> {
        self.channel.close(200, "bye".into()).await?;
        Ok(())
    }
}

/// Shows every notification of `user` with `show` — those that waited while
/// the user was away first, then live ones — until `shutdown` resolves.
/// Each is acknowledged only after `show` returns `Ok`.
pub async fn receive_notifications<F>(
    connection: &Connection,
    user: &str,
    mut show: F,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    F: FnMut(&Notification) -> std::io::Result<()>,
{
    let mut inbox = Inbox::open(connection, user).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let received = tokio::select! {
            () = &mut shutdown => break,
            received = inbox.next() => received?,
        };
        let Some(received) = received else { break };
        if let Err(err) = show(&received.notification) {
            // Unacknowledged, the notification stays in the inbox for next time.
            tracing::warn!(%err, "could not show a notification; it stays in the inbox");
            break;
        }
        if let Err(err) = received.ack().await {
            // Shown but not acknowledged: it comes again after the
            // reconnection, and this session skips it as already seen.
            tracing::debug!(%err, "could not acknowledge a notification");
        }
    }
    // Unacknowledged notifications go back to the inbox whether or not the
    // close reaches the broker.
    let _ = inbox.close().await;
    Ok(())
}
