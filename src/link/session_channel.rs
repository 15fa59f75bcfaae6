//! [`SessionChannel`]: a channel to publish on, opened again on the session
//! of the moment.

use std::sync::atomic::{AtomicU64, Ordering};

use lapin::Channel;

use super::{Link, LinkState, Session};
use crate::{
    broker,
    error::{Error, Result},
};

/// A channel on the live session, opened again on the next session after a
/// loss, with publisher confirms if asked.
pub struct SessionChannel {
    link: Link,
    confirms: bool,
    current: tokio::sync::Mutex<Option<(Session, Channel)>>,
    /// How long the last confirm took, in milliseconds.
    last_wait_ms: AtomicU64,
}

impl SessionChannel {
    /// A channel on `link` (opened when first needed).
    pub fn new(link: &Link, confirms: bool) -> SessionChannel {
        SessionChannel {
            link: link.clone(),
            confirms,
            current: tokio::sync::Mutex::new(None),
            last_wait_ms: AtomicU64::new(0),
        }
    }

    /// The channel to use now, with the session it belongs to; waits for a
    /// session while reconnecting.
    pub async fn get(&self) -> Result<(Session, Channel)> {
        let mut current = self.current.lock().await;
        if let Some((session, channel)) = current.as_ref()
            && session.is_alive()
            && channel.status().connected()
        {
            return Ok((session.clone(), channel.clone()));
        }
        let mut after = 0;
        loop {
            let session = self.link.session_after(after).await?;
            let opened = if self.confirms {
                broker::confirming_channel(session.connection()).await
            } else {
                Ok(session.connection().create_channel().await?)
            };
            match opened {
                Ok(channel) => {
                    *current = Some((session.clone(), channel.clone()));
                    return Ok((session, channel));
                }
                Err(err) if !session.is_alive() => {
                    tracing::debug!(%err, "the session ended while opening a channel");
                    after = session.generation;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Stops handing out the channel of the moment: the next
    /// [`SessionChannel::get`] opens another. For a channel that refuses
    /// every publish to a quorum queue whose leader moved: RabbitMQ 3.10
    /// sends them to the leader the queue had when the channel first
    /// published to it, for good, while a new channel finds the new leader
    /// (`ARCHITECTURE.md`). It is closed once what was sent on it has been
    /// confirmed, or after [`STALE_CHANNEL_LINGERS`] at most.
    pub async fn renew(&self) {
        if let Some((_, stale)) = self.current.lock().await.take() {
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(STALE_CHANNEL_LINGERS, stale.wait_for_confirms()).await;
                let _ = stale.close(200, "replaced".into()).await;
            });
        }
    }

    /// Waits for the confirm of a message published on this channel. On a
    /// cluster, RabbitMQ 3.10 can leave a channel's confirms pending for good
    /// once a quorum queue or stream it published to lost its leader: where
    /// that can happen ([`Link::confirms_may_stick`]), a confirm that has not
    /// come within its patience while the broker accepts publishing (not
    /// blocked by an alarm, connected) renews the channel and is
    /// [`Error::Unconfirmed`], so that the caller sends the message again on
    /// the new one (every message carries an id, and a copy is dropped by it).
    ///
    /// Slow is not stuck: a broker copying each message into thousands of
    /// queues confirms seconds late, and a message sent again would be
    /// copied into all of them once more, shown twice to whoever reads it in
    /// another session, and make the broker slower still. So the patience is
    /// four times the last confirm's wait on this publisher, within
    /// [`CONFIRM_PATIENCE`] and [`CONFIRM_PATIENCE_AT_MOST`]; and where
    /// confirms cannot stick, there is no limit: the confirm comes, or the
    /// connection fails.
    pub async fn confirmed(&self, unconfirmed: broker::Unconfirmed) -> Result<()> {
        let target = unconfirmed.target().to_owned();
        let mut confirm = std::pin::pin!(unconfirmed.confirmed());
        let state = self.link.state();
        let started = std::time::Instant::now();
        let patience = (4 * self.last_wait()).clamp(CONFIRM_PATIENCE, CONFIRM_PATIENCE_AT_MOST);
        // Since when the broker has accepted publishing without a break.
        let mut calm_since = started;
        loop {
            let left = patience
                .saturating_sub(calm_since.elapsed())
                .max(CONFIRM_LOOK_EVERY);
            match tokio::time::timeout(left, &mut confirm).await {
                Ok(confirmed) => {
                    if confirmed.is_ok() {
                        self.record_wait(calm_since.elapsed());
                    }
                    return confirmed;
                }
                // Blocked publishers, or a connection going away: the
                // confirm comes, or fails, with the broker.
                Err(_) if *state.borrow() != LinkState::Connected => {
                    calm_since = std::time::Instant::now();
                }
                Err(_) if self.link.confirms_may_stick() && calm_since.elapsed() >= patience => {
                    tracing::warn!(
                        "RabbitMQ has not confirmed the message for {target} within {:.0} s; \
                         sending it again on another channel",
                        patience.as_secs_f64()
                    );
                    self.renew().await;
                    return Err(Error::Unconfirmed(target));
                }
                // A broker that is only slow.
                Err(_) => {}
            }
        }
    }

    /// How long the last confirm on this publisher took, from the last time
    /// the broker accepted publishing again.
    fn last_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.last_wait_ms.load(Ordering::Relaxed))
    }

    fn record_wait(&self, waited: std::time::Duration) {
        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        self.last_wait_ms.store(ms, Ordering::Relaxed);
    }
}

/// How long a confirm may take at least, where confirms can stick, while the
/// broker accepts publishing, before the channel is taken for stuck
/// ([`SessionChannel::confirmed`]).
pub const CONFIRM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest patience, however slow the last confirm was: what a confirm
/// that stuck costs at most.
pub const CONFIRM_PATIENCE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a confirm that may not stick is looked at again once its
/// patience is past (while publishers are blocked, for one).
const CONFIRM_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a replaced channel stays open at most for the confirms of what
/// was published on it.
const STALE_CHANNEL_LINGERS: std::time::Duration = std::time::Duration::from_secs(30);
