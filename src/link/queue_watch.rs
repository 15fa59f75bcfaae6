//! [`QueueWatch`]: how a [`Feed`](super::Feed) that must never leave its
//! queue unread (the server's) finds out, while idle, that its consumer is
//! gone or dead although no cancel came.
//!
//! A look, on a channel of its own, every [`QUEUE_CHECK`] of idleness:
//!
//! - the broker lists no consumer on the queue, or the queue is gone: the
//!   consumer went without its cancel reaching the client;
//! - the broker lists one, but a probe (an empty message with the
//!   [`PROBE_HEADER`]) published to the queue is not delivered within
//!   [`PROBE_WAIT`]: the broker keeps a consumer on this channel that it never
//!   feeds. RabbitMQ 3.10 does this when a queue is declared at the moment it
//!   is deleted (`ARCHITECTURE.md`); closing the channel ends it.
//!
//! Under single active consumer a hot standby is fed nothing until it takes
//! over, and its probes would go to the active server. So a consumer sends
//! probes only if the broker has fed it since it was set up, or if it is the
//! only consumer listed; a consumer that may be a standby is watched for a
//! missing consumer only. A probe is judged only if the number of consumers
//! is the same as when it was sent (a hand-over meanwhile may have sent it
//! elsewhere); otherwise another is sent.

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
const QUEUE_CHECK: Duration = Duration::from_secs(5);
/// How long a probe may take to come back before the consumer is held dead.
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// Past this many deliveries remembered, the settled ones are forgotten.
const PRUNE_AT: usize = 512;

/// A probe on its way.
struct Probe {
    token: String,
    sent: Instant,
    /// How many consumers the broker listed when it was sent.
    consumers: u32,
}

/// The watch a [`Feed`](super::Feed) keeps on its queue.
pub(super) struct QueueWatch {
    queue: String,
    last_look: Instant,
    probe: Option<Probe>,
    /// Whether the broker has delivered anything to the live consumer: one
    /// that it never fed, beside other consumers, may be a hot standby, and
    /// is not probed.
    fed: bool,
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
            fed: false,
            handed: Vec::new(),
            can_probe: true,
        }
    }

    /// A new consumer: nothing delivered to it, no probe on its way to it.
    pub(super) fn restart(&mut self) {
        self.handed.clear();
        self.probe = None;
        self.fed = false;
        self.last_look = Instant::now();
    }

    /// Remembers a delivery handed to the feed's owner.
    pub(super) fn handed_out(&mut self, delivery: &Delivery) {
        self.fed = true;
        if self.handed.len() >= PRUNE_AT {
            self.outstanding();
        }
        self.handed
            .push((delivery.delivery_tag, delivery.acker.clone()));
    }

    /// How many deliveries handed out may not be settled yet. The server
    /// acknowledges a batch with `multiple`, which settles every delivery
    /// before the one acknowledged, so everything up to the last settled one
    /// counts as settled.
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

    /// The token of a probe (anyone's), if `delivery` is one: the header,
    /// an empty body and no address for a reply. A request that carries the
    /// header is still a request.
    pub(super) fn probe_token(delivery: &Delivery) -> Option<&str> {
        if !delivery.data.is_empty() || delivery.properties.reply_to().is_some() {
            return None;
        }
        let headers = delivery.properties.headers().as_ref()?;
        match headers.inner().get(PROBE_HEADER)? {
            AMQPValue::LongString(token) => std::str::from_utf8(token.as_bytes()).ok(),
            _ => None,
        }
    }

    /// A probe came back: the broker feeds this consumer.
    pub(super) fn probe_back(&mut self, token: &str) {
        self.fed = true;
        if self
            .probe
            .as_ref()
            .is_some_and(|probe| probe.token == token)
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
    /// it), and sends a probe when none is out. `Some` says why the consumer
    /// must be set up again.
    pub(super) async fn look(&mut self, connection: &Connection) -> Option<String> {
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
                return Some("its queue is gone".into());
            }
            _ => return None,
        };
        let verdict = match self.probe.take() {
            _ if consumers == 0 => Some("the broker lists no consumer on its queue".into()),
            Some(probe) if probe.sent.elapsed() < PROBE_WAIT => {
                self.probe = Some(probe);
                None
            }
            Some(probe) if probe.consumers == consumers => Some(format!(
                "a probe sent through its queue {:.1} s ago was not delivered: the broker \
                 keeps a consumer on this channel that it does not feed",
                probe.sent.elapsed().as_secs_f64()
            )),
            // The consumers changed since (a hand-over may have sent the
            // probe elsewhere): judge another.
            _ => {
                if self.fed || consumers == 1 {
                    self.send_probe(&channel, consumers).await;
                }
                None
            }
        };
        let _ = tokio::time::timeout(WAIT_FOR_BROKER, channel.close(200, "looked".into())).await;
        verdict
    }

    /// Publishes an empty message with a fresh token to the queue, through
    /// the default exchange, and waits for the broker's confirm (an account
    /// that may not publish there is refused, and the looks go on without
    /// probes).
    async fn send_probe(&mut self, channel: &lapin::Channel, consumers: u32) {
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
            Ok(Ok(Confirmation::Ack(_))) => {
                self.probe = Some(Probe {
                    token,
                    sent: Instant::now(),
                    consumers,
                });
            }
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
