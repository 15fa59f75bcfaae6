//! [`Feed`]: a consumer that outlives sessions. "Next delivery, ride out an
//! outage, skip a stale delivery" is written here once.

use std::{future::Future, pin::Pin, time::Duration};

use futures_lite::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions},
};

use super::{Link, MAX_BACKOFF, Session, WAIT_FOR_BROKER, pauses, queue_watch::QueueWatch};
use crate::error::{Error, Result};

/// How often a feed checks that its channel is still open.
const WATCHDOG: Duration = Duration::from_secs(1);
/// How long setting a consumer up may take before the log says so.
const SLOW_OPENING: Duration = Duration::from_secs(10);
/// How long closing a feed waits for a consumer being set up.
const WAIT_FOR_OPENING: Duration = Duration::from_secs(10);

/// What a [`Feed`] runs on each new session to set its consumer up: open or
/// borrow a channel, set its QoS, declare what it needs, consume.
pub type Opener = Box<dyn FnMut(Session) -> Opening + Send + Sync>;

/// The future an [`Opener`] returns.
pub type Opening = Pin<Box<dyn Future<Output = Result<Opened>> + Send>>;

/// A consumer set up by an [`Opener`].
pub struct Opened {
    pub channel: Channel,
    pub consumer: Consumer,
    /// Whether the channel belongs to this feed alone (closed with it) or is
    /// shared with other feeds (only the consumer is cancelled).
    pub owns_channel: bool,
}

struct Live {
    session: Session,
    channel: Channel,
    consumer: Consumer,
    owns_channel: bool,
    /// Cancelled by [`Feed::cancel`]: nothing to cancel on release.
    cancelled: bool,
}

/// A consumer that outlives sessions. [`Feed::next`] returns the next
/// delivery and, on the way, rides out every loss: a lost connection, a
/// consumer cancelled by the broker, a channel closed under a live
/// connection. Each time it runs its [`Opener`] again on the session of the
/// moment (with backoff while that fails) and says so at WARN level.
pub struct Feed {
    link: Link,
    label: String,
    opener: Opener,
    live: Option<Live>,
    /// The session the last consumer was lost with, not to be used again.
    lost_generation: u64,
    /// The opener at work, if a call of [`Feed::next`] was cancelled while
    /// it ran.
    opening: Option<(Session, tokio::task::JoinHandle<Result<Opened>>)>,
    /// Failed attempts to set the consumer up since the last success.
    failures: u32,
    /// The watch on the queue while idle, for a feed that must never leave
    /// it unread.
    watch: Option<QueueWatch>,
    /// A probe taken by [`Feed::try_next`], acknowledged before the next
    /// delivery is handed out (acknowledgements with `multiple` that come
    /// after must not cover it first).
    probe_to_ack: Option<Delivery>,
}

/// What a consumer's next item turned out to be.
enum Item {
    Delivery(Delivery),
    /// A probe (see [`QueueWatch`]): acknowledged, never handed out.
    Probe(Delivery),
    /// Nothing for the caller: a stale delivery, or the consumer was lost.
    Nothing,
}

impl Feed {
    /// Sets the consumer up on the live session. An error of this first
    /// attempt is returned as it is (a queue refused to this user, say), so
    /// that the caller can say what is wrong.
    pub async fn open(link: &Link, label: impl Into<String>, mut opener: Opener) -> Result<Feed> {
        let session = link.session().await?;
        let opened = opener(session.clone()).await?;
        Ok(Feed {
            link: link.clone(),
            label: label.into(),
            opener,
            live: Some(Live {
                session,
                channel: opened.channel,
                consumer: opened.consumer,
                owns_channel: opened.owns_channel,
                cancelled: false,
            }),
            lost_generation: 0,
            opening: None,
            failures: 0,
            watch: None,
            probe_to_ack: None,
        })
    }

    /// The next delivery. Never ends while the link is open: losses are
    /// ridden out, and deliveries from a channel that is gone (whose
    /// acknowledgement could not reach the broker, so that it delivers them
    /// again) are skipped. Fails only once the link is closed.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            if let Some(probe) = self.probe_to_ack.take() {
                ack_probe(&probe).await;
            }
            if self.live.is_none() {
                self.reopen().await?;
            }
            let live = self.live.as_mut().expect("set up just above");
            let item = tokio::select! {
                biased;
                item = live.consumer.next() => item,
                () = tokio::time::sleep(WATCHDOG) => {
                    if !live.channel.status().connected() {
                        let why = if live.session.is_alive() {
                            "its channel closed under a live connection"
                        } else {
                            "the connection was lost"
                        };
                        self.lose(why);
                    } else if let Some(why) = self.look_at_queue().await {
                        self.lose(&why);
                    }
                    continue;
                }
            };
            match self.accept(item) {
                Item::Delivery(delivery) => return Ok(delivery),
                Item::Probe(probe) => ack_probe(&probe).await,
                Item::Nothing => {}
            }
        }
    }

    /// Watches `queue` too: while the consumer is idle, the feed looks every
    /// few seconds whether the broker still lists a consumer on it and still
    /// feeds this one (a probe through the queue), and sets its own up again
    /// if not. This catches a consumer that the broker dropped, or kept but
    /// stopped feeding, without a cancel reaching the client (see
    /// [`QueueWatch`]); a feed whose queue must never go unread (the
    /// server's) uses it.
    pub fn watching(mut self, queue: impl Into<String>) -> Feed {
        self.watch = Some(QueueWatch::new(queue.into()));
        self
    }

    /// The queue watch's verdict, if it is time for a look: why the
    /// consumer must be set up again, if it must.
    async fn look_at_queue(&mut self) -> Option<String> {
        let (Some(watch), Some(live)) = (self.watch.as_mut(), self.live.as_ref()) else {
            return None;
        };
        if !watch.due() {
            return None;
        }
        watch.look(live.session.connection()).await
    }

    /// A delivery that has already arrived, without waiting; `None` if there
    /// is none now (or the consumer was just lost: [`Feed::next`] takes over).
    pub fn try_next(&mut self) -> Option<Delivery> {
        use futures::FutureExt;
        if self.probe_to_ack.is_some() {
            return None;
        }
        let live = self.live.as_mut()?;
        let item = live.consumer.next().now_or_never()?;
        match self.accept(item) {
            Item::Delivery(delivery) => Some(delivery),
            Item::Probe(probe) => {
                self.probe_to_ack = Some(probe);
                None
            }
            Item::Nothing => None,
        }
    }

    fn accept(&mut self, item: Option<lapin::Result<Delivery>>) -> Item {
        match item {
            Some(Ok(delivery)) => {
                // Delivered on a channel whose session has ended: its
                // acknowledgement cannot reach the broker, which delivers it
                // again.
                if delivery.acker.poisoned() {
                    return Item::Nothing;
                }
                if let Some(watch) = self.watch.as_mut() {
                    if let Some(token) = QueueWatch::probe_token(&delivery) {
                        watch.probe_back(token);
                        return Item::Probe(delivery);
                    }
                    watch.handed_out(&delivery);
                }
                Item::Delivery(delivery)
            }
            Some(Err(err)) => {
                let why = format!("the consumer failed: {err}");
                self.lose(&why);
                Item::Nothing
            }
            None => {
                let alive = self
                    .live
                    .as_ref()
                    .is_some_and(|live| live.session.is_alive());
                let why = if alive {
                    "the broker cancelled the consumer (was the queue deleted?)"
                } else {
                    "the connection was lost"
                };
                self.lose(why);
                Item::Nothing
            }
        }
    }

    /// Forgets the consumer, closing its channel if it is the feed's own:
    /// the broker then sends every unacknowledged delivery back to the
    /// queue, in order.
    pub fn reset(&mut self, why: &str) {
        self.lose(why);
    }

    fn lose(&mut self, why: &str) {
        let Some(live) = self.live.take() else { return };
        if live.session.is_alive() {
            tracing::warn!("{}: {why}; setting the consumer up again", self.label);
        } else {
            tracing::debug!("{}: {why}", self.label);
            self.lost_generation = live.session.generation;
        }
        // A probe from this consumer's channel cannot be acknowledged on
        // another: the broker puts it back with the rest.
        self.probe_to_ack = None;
        tokio::spawn(release(live));
    }

    /// Sets the consumer up again, on the live session or the next one, with
    /// backoff while it fails.
    ///
    /// Cancel-safe, as `select!` needs: the opener runs in a task of its own
    /// that this feed keeps, so that a consumer it sets up is never left
    /// behind unread (on a shared channel, what the broker sent it would stay
    /// unacknowledged until the channel closes).
    async fn reopen(&mut self) -> Result<()> {
        loop {
            if self.opening.is_none() {
                let session = self.link.session_after(self.lost_generation).await?;
                let opening = tokio::spawn((self.opener)(session.clone()));
                self.opening = Some((session, opening));
            }
            let (_, opening) = self.opening.as_mut().expect("set just above");
            // A consumer that takes this long to set up is said so (the
            // broker may not answer a declaration), and waited for still.
            let mut waited = Duration::ZERO;
            let opened = loop {
                match tokio::time::timeout(SLOW_OPENING, &mut *opening).await {
                    Ok(opened) => break opened,
                    Err(_) => {
                        waited += SLOW_OPENING;
                        tracing::warn!(
                            "{}: setting the consumer up has taken {waited:?} so far",
                            self.label
                        );
                    }
                }
            };
            let (session, _) = self.opening.take().expect("set just above");
            let opened = opened.unwrap_or_else(|join| {
                Err(Error::Stopped(format!(
                    "setting a consumer up failed: {join}"
                )))
            });
            match opened {
                Ok(opened) => {
                    self.failures = 0;
                    tracing::info!(
                        "{}: consuming again (session {})",
                        self.label,
                        session.generation
                    );
                    if let Some(watch) = self.watch.as_mut() {
                        watch.restart();
                    }
                    self.live = Some(Live {
                        session,
                        channel: opened.channel,
                        consumer: opened.consumer,
                        owns_channel: opened.owns_channel,
                        cancelled: false,
                    });
                    return Ok(());
                }
                Err(err) if !session.is_alive() => {
                    tracing::debug!(%err, "{}: the session ended while setting up", self.label);
                    self.lost_generation = session.generation;
                }
                Err(err) => {
                    let pause = pauses().nth(self.failures as usize).unwrap_or(MAX_BACKOFF);
                    self.failures += 1;
                    // Said at the 1st, 2nd, 4th, 8th... failure: a queue the
                    // broker cannot serve for long does not flood the log.
                    if self.failures.is_power_of_two() {
                        tracing::warn!(
                            "{}: cannot consume yet ({err}); trying again in {:.1} s \
                             (failure {})",
                            self.label,
                            pause.as_secs_f64(),
                            self.failures
                        );
                    } else {
                        tracing::debug!(%err, failures = self.failures, "{}: cannot consume yet", self.label);
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Cancels the consumer, keeping what the broker already sent: read it
    /// with [`Feed::drain`]. On a shared channel, a delivery left
    /// unacknowledged would be held until the channel closes.
    pub async fn cancel(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.session.is_alive() {
            // A broker that stalls answers nothing until the heartbeats
            // give up on it: do not wait that long. A cancel that did not go
            // through is tried again when the feed is released.
            let cancelling = live
                .channel
                .basic_cancel(live.consumer.tag(), BasicCancelOptions::default());
            live.cancelled = matches!(
                tokio::time::timeout(WAIT_FOR_BROKER, cancelling).await,
                Ok(Ok(()))
            );
        }
    }

    /// After [`Feed::cancel`], the next delivery that was already on its
    /// way; `None` once the consumer has ended.
    pub async fn drain(&mut self) -> Option<Delivery> {
        if let Some(probe) = self.probe_to_ack.take() {
            ack_probe(&probe).await;
        }
        let live = self.live.as_mut()?;
        loop {
            match live.consumer.next().await {
                Some(Ok(probe))
                    if self.watch.is_some() && QueueWatch::probe_token(&probe).is_some() =>
                {
                    ack_probe(&probe).await;
                }
                Some(Ok(delivery)) if !delivery.acker.poisoned() => return Some(delivery),
                Some(Ok(_stale)) => {}
                Some(Err(_)) | None => {
                    self.live = None;
                    return None;
                }
            }
        }
    }

    /// Stops consuming. Deliveries not yet acknowledged go back to the queue.
    pub async fn close(mut self) {
        if let Some(live) = self.live.take() {
            release(live).await;
        }
        // A consumer being set up is released once it is.
        if let Some((session, opening)) = self.opening.take()
            && let Ok(Ok(Ok(opened))) = tokio::time::timeout(WAIT_FOR_OPENING, opening).await
        {
            release(Live {
                session,
                channel: opened.channel,
                consumer: opened.consumer,
                owns_channel: opened.owns_channel,
                cancelled: false,
            })
            .await;
        }
    }
}

/// Takes a probe off the queue; a probe is never handed out.
async fn ack_probe(probe: &Delivery) {
    let _ = crate::broker::ack(&probe.acker, BasicAckOptions::default()).await;
}

/// Ends a consumer: closes its channel if it owns it (the broker then puts
/// every unacknowledged delivery back), else cancels it and puts back
/// itself what the broker sent before the cancel went through, which would
/// otherwise stay unacknowledged on the shared channel.
async fn release(mut live: Live) {
    if !live.session.is_alive() {
        return;
    }
    if live.owns_channel {
        let closing = live.channel.close(200, "consumer done".into());
        let _ = tokio::time::timeout(WAIT_FOR_BROKER, closing).await;
        return;
    }
    if !live.cancelled {
        let cancelling = live
            .channel
            .basic_cancel(live.consumer.tag(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(WAIT_FOR_BROKER, cancelling).await;
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(WAIT_FOR_BROKER, live.consumer.next()).await
    {
        let _ = crate::broker::nack(
            &delivery,
            BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            },
        )
        .await;
    }
}
