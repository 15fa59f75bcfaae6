//! [`SessionChannel`]: a channel to publish on, opened again on the session
//! of the moment.

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
}

impl SessionChannel {
    /// A channel on `link` (opened when first needed).
    pub fn new(link: &Link, confirms: bool) -> SessionChannel {
        SessionChannel {
            link: link.clone(),
            confirms,
            current: tokio::sync::Mutex::new(None),
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
    /// once a quorum queue or stream it published to lost its leader: a
    /// confirm that has not come within [`CONFIRM_PATIENCE`] while the broker
    /// accepts publishing (not blocked by an alarm, connected) renews the
    /// channel and is [`Error::Unconfirmed`], so that the caller sends the
    /// message again on the new one (every message carries an id, and a copy
    /// is dropped by it).
    pub async fn confirmed(&self, unconfirmed: broker::Unconfirmed) -> Result<()> {
        let target = unconfirmed.target().to_owned();
        let mut confirm = std::pin::pin!(unconfirmed.confirmed());
        let state = self.link.state();
        loop {
            match tokio::time::timeout(CONFIRM_PATIENCE, &mut confirm).await {
                Ok(confirmed) => return confirmed,
                Err(_) if *state.borrow() == LinkState::Connected => {
                    tracing::warn!(
                        "RabbitMQ has not confirmed the message for {target} within {} s; \
                         sending it again on another channel",
                        CONFIRM_PATIENCE.as_secs()
                    );
                    self.renew().await;
                    return Err(Error::Unconfirmed(target));
                }
                // Blocked publishers, or a connection going away: the
                // confirm comes, or fails, with the broker.
                Err(_) => {}
            }
        }
    }
}

/// How long a confirm may take while the broker accepts publishing before
/// the channel is taken for stuck ([`SessionChannel::confirmed`]).
pub const CONFIRM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a replaced channel stays open at most for the confirms of what
/// was published on it.
const STALE_CHANNEL_LINGERS: std::time::Duration = std::time::Duration::from_secs(30);
