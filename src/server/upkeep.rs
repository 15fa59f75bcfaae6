//! Upkeep beside the request queues: the outbox of notifications a crash
//! left unsent, the count of notifications that full inboxes dropped, and
//! the pruning of the ids of requests applied long ago.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use lapin::{Channel, options::BasicAckOptions, types::ShortString};
use tokio::sync::watch;

use super::{MAX_BATCH, MAX_RETRY_DELAY, YoutubeServer, next_batch, server_feed};
use crate::{
    broker,
    error::Result,
    protocol,
    store::{self, Video},
    topology,
};

/// How often a server looks whether it consumes alone a partition whose
/// outbox it has not sent.
const LOOK_FOR_OUTBOXES_EVERY: Duration = Duration::from_secs(2);

impl YoutubeServer {
    /// Moves a database's subscriptions from the older broker layout (each
    /// inbox bound straight to the notifications exchange) to the users'
    /// exchanges, once: what a server of this version does at its first
    /// start on an older database, before it applies any request.
    pub(super) async fn move_to_user_exchanges(&self) -> Result<()> {
        if self.store.broker_layout().await? >= store::BROKER_LAYOUT {
            return Ok(());
        }
        let users = self.store.every_inbox().await?;
        if users.is_empty() {
            return self.store.set_broker_layout(store::BROKER_LAYOUT).await;
        }
        let subscriptions: usize = users.iter().map(|(_, youtubers)| youtubers.len()).sum();
        tracing::info!(
            users = users.len(),
            subscriptions,
            "binding every subscription through its user's exchange (a database of an older version)"
        );
        let failures = self.bindings.move_to_user_exchanges(users).done().await?;
        if let Some((user, failure)) = failures.iter().next() {
            // Left in the older layout, the user still receives every upload;
            // the next start tries again.
            tracing::warn!(
                user,
                reason = failure.reason,
                failed = failures.len(),
                "some users' subscriptions could not be moved; they are tried again at the next start"
            );
            return Ok(());
        }
        self.store.set_broker_layout(store::BROKER_LAYOUT).await
    }

    /// Sends, and records as sent, every notification of a partition's
    /// YouTubers that a crash left unsent, oldest first, unless that is done
    /// already. An upload of the partition waits until it is: it must be
    /// notified after those.
    pub(super) async fn flush_outbox(&self, partition: u16) -> Result<()> {
        let index = usize::from(partition);
        let _sending = self.outbox_sending[index].lock().await;
        if self.outbox_flushed[index].load(Ordering::Acquire) {
            return Ok(());
        }
        let videos = self.store.videos_to_notify().await?.into_iter();
        for video in videos.filter(|video| topology::partition_of(&video.youtuber) == partition) {
            tracing::info!(video = %video.id, "sending a notification left unsent by a crash");
            self.notify_users(&video).await?;
        }
        self.outbox_flushed[index].store(true, Ordering::Release);
        Ok(())
    }

    /// Sends the outbox of each partition that this server has come to
    /// consume alone since it took it behind another server (a hot standby
    /// whose active server stopped): one whose first upload has not come
    /// yet would otherwise keep it, and its creators' events, waiting.
    pub(super) async fn flush_outboxes_left_behind(
        &self,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                () = tokio::time::sleep(LOOK_FOR_OUTBOXES_EVERY) => {}
            }
            let waiting: Vec<u16> = self
                .serving
                .borrow()
                .iter()
                .copied()
                .filter(|&partition| {
                    !self.outbox_flushed[usize::from(partition)].load(Ordering::Acquire)
                })
                .collect();
            for partition in waiting {
                if let Err(err) = self.flush_outbox_if_alone(partition).await {
                    tracing::warn!(%err, partition, "could not send the notifications a crash left unsent; trying again later");
                }
            }
        }
    }

    async fn flush_outbox_if_alone(&self, partition: u16) -> Result<()> {
        let uploads = topology::RequestQueue {
            kind: topology::RequestKind::Youtubers,
            partition,
        };
        let (_, channel) = self.publisher.get().await?;
        let (_, consumers) = topology::inspect(&channel, uploads.name()).await?;
        // This server's consumer alone, on a partition it still holds.
        if consumers == 1 && self.serving.borrow().contains(&partition) {
            self.flush_outbox(partition).await?;
        }
        Ok(())
    }

    /// Whether this server is the one that takes `youtuber`'s uploads now:
    /// it holds the partition, and has sent what a crash left in its outbox.
    pub(super) fn serves_uploads_of(&self, youtuber: &str) -> bool {
        let partition = topology::partition_of(youtuber);
        self.outbox_flushed[usize::from(partition)].load(Ordering::Acquire)
            && self.serving.borrow().contains(&partition)
    }

    /// Notifies every subscriber of an upload: one persistent publish to the
    /// notifications exchange, keyed by YouTuber; RabbitMQ copies it into each
    /// subscriber's inbox. Returns once the broker has confirmed it, and
    /// records that in the database.
    pub async fn notify_users(&self, video: &Video) -> Result<()> {
        self.declare_celebrity_streams([video]).await?;
        let (_, channel) = self.publisher.get().await?;
        publish_notification(&channel, video)
            .await?
            .confirmed()
            .await?;
        self.store.mark_notified(vec![video.id]).await
    }

    /// Counts the notifications that full inboxes dropped, per user, so
    /// that each user is told at the next login.
    pub(super) async fn count_dropped(&self, mut stopped: watch::Receiver<bool>) -> Result<()> {
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
                // A notification its user rejected is dead-lettered here
                // too; only one that a full inbox dropped is counted.
                if dropped_by_a_full_inbox(delivery) && crate::names::check_user(user).is_ok() {
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
                    let _ = broker::ack(&last.acker, BasicAckOptions { multiple: true }).await;
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
    pub(super) async fn prune_applied(&self, mut stopped: watch::Receiver<bool>) -> Result<()> {
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
}

/// How long the id of an applied request is kept to recognise a copy: a
/// request is delivered again only while it waits unacknowledged in its
/// queue (a crash) or when its client sends it again (seconds), so a week
/// covers a server that stays down over a long weekend.
pub const REDELIVERY_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// When the first pruning of old request ids runs after start.
const PRUNE_FIRST: Duration = Duration::from_secs(600);

/// How often old request ids are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Publishes the notification of an upload, without waiting for the confirm:
/// to the notifications exchange, or appended to the YouTuber's stream if it
/// is a celebrity's (declared before: see [`declare_celebrity_streams`]),
/// through the default exchange, `mandatory` so that a stream deleted
/// meanwhile fails the publish instead of dropping it.
pub(super) async fn publish_notification(
    channel: &Channel,
    video: &Video,
) -> Result<broker::Unconfirmed> {
    let notification = video.notification();
    let properties = broker::persistent_json()
        .with_message_id(ShortString::from(video.id.to_string()))
        .with_timestamp((video.uploaded_at_ms / 1000) as u64);
    let (exchange, key, mandatory) = if video.streamed {
        ("", topology::celebrity_stream(&video.youtuber), true)
    } else {
        (topology::NOTIFICATIONS, video.youtuber.clone(), false)
    };
    broker::publish(
        channel,
        exchange,
        &key,
        mandatory,
        &protocol::encode(&notification),
        properties,
    )
    .await
}

impl YoutubeServer {
    /// Declares the stream of each celebrity among `videos`' YouTubers, on a
    /// channel of its own (a refusal closes it): at each batch, so that one
    /// deleted meanwhile is there again. One that cannot be declared (a
    /// client declared a queue of that name with other settings) is said;
    /// its uploads' publish then fails, and they stay in the outbox until
    /// that queue is gone.
    pub(super) async fn declare_celebrity_streams<'a>(
        &self,
        videos: impl IntoIterator<Item = &'a Video>,
    ) -> Result<()> {
        let youtubers: std::collections::BTreeSet<&str> = videos
            .into_iter()
            .filter(|video| (video.streamed || video.stream_after) && !video.notified)
            .map(|video| video.youtuber.as_str())
            .collect();
        for youtuber in youtubers {
            let session = self.link.session().await?;
            let channel = session.connection().create_channel().await?;
            match topology::declare_celebrity_stream(&channel, youtuber).await {
                Ok(()) => {
                    let _ = channel.close(200, "declared".into()).await;
                }
                Err(err) => {
                    let stream = topology::celebrity_stream(youtuber);
                    tracing::warn!(
                        "cannot declare {stream}: {}; {youtuber}'s uploads wait until that \
                         queue is deleted (rabbitmqctl delete_queue {stream})",
                        broker::amqp_reason(&err)
                    );
                }
            }
        }
        Ok(())
    }
}

/// Whether a dead-lettered notification left its inbox because the inbox was
/// full (RabbitMQ's `x-first-death-reason` is `maxlen`), not because its
/// user rejected it.
fn dropped_by_a_full_inbox(delivery: &lapin::message::Delivery) -> bool {
    let reason = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-first-death-reason").cloned());
    match reason {
        Some(lapin::types::AMQPValue::LongString(reason)) => reason.as_bytes() == b"maxlen",
        _ => false,
    }
}
