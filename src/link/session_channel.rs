//! [`SessionChannel`]: a channel to publish on, opened again on the session
//! of the moment.

use lapin::Channel;

use super::{Link, Session};
use crate::{broker, error::Result};

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
}
