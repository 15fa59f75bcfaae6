//! [`QueueWatch`]: how a [`Feed`](super::Feed) that must never leave its
//! queue unread (the server's) finds out, while idle, that its consumer is
//! gone or dead although no cancel came.
//!
//! Two looks, on a channel of their own, every [`QUEUE_CHECK`] of idleness:
//!
//! - the broker lists no consumer on the queue, or the queue is gone: the
//!   consumer went without its cancel reaching the client;
//! - the broker lists one, but a probe (an empty message with the
//!   [`PROBE_HEADER`]) published to the queue does not come back within
//!   [`PROBE_WAIT`]: the broker holds a consumer on this channel that it never
//!   feeds. RabbitMQ 3.10 does this when a queue is declared at the moment it
//!   is deleted (`ARCHITECTURE.md`); closing the channel ends it.
//!
//! A probe that does not come back while the broker lists other consumers
//! may have gone to one of them (a hot standby waits its turn): the feed
//! sets its consumer up again all the same, which costs a standby nothing,
//! and says so only at DEBUG level.

use std::time::Duration;

use lapin::{
    Acker, BasicProperties, Confirmation, Connection,
    message::Delivery,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::time::Instant;

use super::WAIT_FOR_BROKER;
use crate::topology::{self, PROBE_HEADER};

/// How long a feed is idle between two looks at its queue.
pub(super) const QUEUE_CHECK: Duration = Duration::from_secs(5);
/// How long a probe may take to come back before the consumer is held dead.
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// Past this many deliveries remembered, the settled ones are forgotten.
const PRUNE_AT: usize = 512;

/// Why a watched consumer must be set up again.
pub(super) struct Lost {
    pub why: String,
    /// Whether the consumer is surely lost (said at WARN level), or a hot
    /// standby's that merely waits (said at DEBUG level).
    pub sure: bool,
}

/// The watch a [`Feed`](super::Feed) keeps on its queue.
pub(super) struct QueueWatch {
    queue: String,
    last_look: Instant,
    /// The probe sent and not back yet: its token and when it was sent.
    probe: Option<(String, Instant)>,
    /// Deliveries handed out by the live consumer and perhaps not settled:
    /// a feed whose owner holds some is not idle (its prefetch may be used
    /// up), and is not probed.
    handed: Vec<(u64, Acker)>,
    /// False once publishing a probe was refused: the looks go on without.
    can_probe: bool,
}

impl QueueWatch {
    pub(super) fn new(queue: String) -> QueueWatch {
        QueueWatch {
            queue,
            last_look: Instant::now(),
            probe: None,
            handed: Vec::new(),
            can_probe: true,
        }
    }

    /// A new consumer: nothing handed out, no probe on its way to it.
    pub(super) fn restart(&mut self) {
        self.handed.clear();
        self.probe = None;
        self.last_look = Instant::now();
    }

    /// Remembers a delivery handed to the feed's owner.
    pub(super) fn handed_out(&mut self, delivery: &Delivery) {
        if self.handed.len() >= PRUNE_AT {
            self.outstanding();
        }
        self.handed
            .push((delivery.delivery_tag, delivery.acker.clone()));
    }

    /// How many deliveries handed out may not be settled yet. An
    /// acknowledgement with `multiple` settles every delivery before it
    /// too, so everything up to the last settled one counts as settled.
    fn outstanding(&mut self) -> usize {
        let settled_up_to = self
            .handed
            .iter()
            .filter(|(_, acker)| !acker.usable())
            .map(|(tag, _)| *tag)
            .max()
            .unwrap_or(0);
        self.handed
            .retain(|(tag, acker)| *tag > settled_up_to && acker.usable());
        self.handed.len()
    }

    /// The token of a probe (anyone's), if `delivery` is one.
    pub(super) fn probe_token(delivery: &Delivery) -> Option<String> {
        let headers = delivery.properties.headers().as_ref()?;
        match headers.inner().get(PROBE_HEADER)? {
            AMQPValue::LongString(token) => Some(token.to_string()),
            _ => Some(String::new()),
        }
    }

    /// A probe came back: if it is this feed's, the consumer is alive.
    pub(super) fn probe_back(&mut self, token: &str) {
        if self
            .probe
            .as_ref()
            .is_some_and(|(sent, _)| sent.as_str() == token)
        {
            self.probe = None;
        }
    }

    /// Whether it is time for a look: sooner while a probe is out.
    pub(super) fn due(&self) -> bool {
        let every = if self.probe.is_some() {
            PROBE_WAIT
        } else {
            QUEUE_CHECK
        };
        self.last_look.elapsed() >= every
    }

    /// Looks at the queue on a channel of its own (a missing queue closes
    /// it); sends a probe when none is out. `Some` if the consumer must be
    /// set up again.
    pub(super) async fn look(&mut self, connection: &Connection) -> Option<Lost> {
        self.last_look = Instant::now();
        if self.outstanding() > 0 {
            return None;
        }
        let channel = match tokio::time::timeout(WAIT_FOR_BROKER, connection.create_channel()).await
        {
            Ok(Ok(channel)) => channel,
            _ => return None,
        };
        let seen =
            tokio::time::timeout(WAIT_FOR_BROKER, topology::inspect(&channel, &self.queue)).await;
        let consumers = match seen {
            Ok(Ok((_, consumers))) => consumers,
            // Gone: the consumer went with it.
            Ok(Err(err)) if crate::broker::is_not_found(&err) => {
                return Some(Lost {
                    why: "its queue is gone".into(),
                    sure: true,
                });
            }
            _ => return None,
        };
        let verdict = if consumers == 0 {
            Some(Lost {
                why: "the broker lists no consumer on its queue".into(),
                sure: true,
            })
        } else if let Some((_, sent)) = &self.probe {
            if sent.elapsed() < PROBE_WAIT {
                None
            } else if consumers == 1 {
                Some(Lost {
                    why: format!(
                        "a probe sent to its queue {:.1} s ago has not reached it: the broker \
                         lists a consumer that it does not feed",
                        sent.elapsed().as_secs_f64()
                    ),
                    sure: true,
                })
            } else {
                Some(Lost {
                    why: "its probe went to another consumer of the queue (a hot standby waits \
                          its turn)"
                        .into(),
                    sure: false,
                })
            }
        } else {
            self.send_probe(&channel).await;
            None
        };
        let _ = tokio::time::timeout(WAIT_FOR_BROKER, channel.close(200, "looked".into())).await;
        verdict
    }

    /// Publishes an empty message with a fresh token to the queue, through
    /// the default exchange, and waits for the broker's confirm (an account
    /// that may not publish there is refused, and the looks go on without
    /// probes).
    async fn send_probe(&mut self, channel: &lapin::Channel) {
        if !self.can_probe {
            return;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(PROBE_HEADER),
            AMQPValue::LongString(token.as_str().into()),
        );
        let publishing = async {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"",
                    BasicProperties::default().with_headers(headers),
                )
                .await?
                .await
        };
        match tokio::time::timeout(WAIT_FOR_BROKER, publishing).await {
            Ok(Ok(Confirmation::Ack(_))) => self.probe = Some((token, Instant::now())),
            Ok(Err(err)) if crate::broker::is_access_refused(&err) => {
                tracing::info!(
                    queue = %self.queue,
                    "this account may not publish to the queue: its consumer is watched without probes"
                );
                self.can_probe = false;
            }
            _ => {}
        }
    }
}
