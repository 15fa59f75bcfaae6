//! Which partitions of the request queues this server consumes
//! ([`topology::RequestQueue`]):
//!
//! - on a SQLite file, every one: a second server on the same file
//!   consumes them too, and waits on each as a hot standby (the queues'
//!   single active consumer);
//! - on PostgreSQL, a fair share: each server claims partitions in the
//!   database ([`Claims`]) until it holds its share of them (the number of
//!   partitions over the number of servers, rounded up), and hands over
//!   what it holds beyond that when another server comes. One that dies
//!   loses its claims with its connection, and the others take its
//!   partitions within [`BALANCE_EVERY`].
//!
//! A partition is handed over the way a stopping server hands over its
//! queues: the batches in hand finish, what was prefetched behind them goes
//! back to the queue in order, the consumers are cancelled; only then is
//! the claim released. The next server sends what a crash left in the
//! partition's outbox before it consumes anything, so a YouTuber's uploads
//! are notified in order.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use super::{YoutubeServer, server_feed};
use crate::{
    error::Result,
    link::{Feed, LinkState},
    store::Claims,
    topology::{self, PARTITIONS, RequestKind, RequestQueue},
};

/// How often a server on PostgreSQL looks whether to claim partitions or
/// hand some over.
pub const BALANCE_EVERY: Duration = Duration::from_secs(1);

/// The partitions this server holds, and how it came to hold them.
pub(super) struct Partitions {
    /// `None` on SQLite: every partition, for the server's whole life.
    shared: Option<Shared>,
    held: BTreeMap<u16, Held>,
}

/// The claims of a server on PostgreSQL.
struct Shared {
    /// `None` while PostgreSQL cannot be reached, or RabbitMQ has been
    /// away too long.
    claims: Option<Claims>,
    /// Whether the loss of the claims has been said.
    lost_said: bool,
    /// Since when RabbitMQ has been away, if it is.
    broker_away_since: Option<tokio::time::Instant>,
}

/// How long a server keeps its claims while RabbitMQ is away from it: past
/// that, servers that still reach it take the partitions (and consume them
/// once the broker has seen this one's consumers go).
const CLAIMS_WITHOUT_BROKER: Duration = Duration::from_secs(15);

struct Held {
    stop: watch::Sender<bool>,
    /// The partition's consumers, until they are set going.
    feeds: Option<[Feed; 3]>,
    /// Stopping, to be handed over.
    releasing: bool,
    /// Claimed on the connection of the moment (not one lost since).
    claimed: bool,
}

impl YoutubeServer {
    /// Takes the partitions this server starts with: every one on SQLite,
    /// its share of those no other server holds on PostgreSQL. Their
    /// consumers are registered; requests wait until [`Self::serve`].
    pub(super) async fn take_partitions(&self) -> Result<Partitions> {
        let claims = self.store.claims().await?;
        let mut partitions = Partitions {
            shared: claims.map(|claims| Shared {
                claims: Some(claims),
                lost_said: false,
                broker_away_since: None,
            }),
            held: BTreeMap::new(),
        };
        if partitions.shared.is_none() {
            let mut standby = 0;
            for partition in 0..PARTITIONS {
                if !self.open_partition(partition, &mut partitions).await? {
                    standby += 1;
                }
            }
            if standby > 0 {
                tracing::info!(
                    "another youtube_server consumes {standby} of the {PARTITIONS} partitions: \
                     this one is a hot standby for them"
                );
            }
        } else {
            // Said by the server's "ready" line.
            self.balance(&mut partitions, false).await?;
        }
        Ok(partitions)
    }

    /// Consumes the partitions held, claiming and handing over others as
    /// servers come and go, until `stopped`; then finishes the requests in
    /// hand, hands every partition back, and releases the claims.
    pub(super) async fn consume_partitions(
        &self,
        mut partitions: Partitions,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut running = FuturesUnordered::new();
        for (&partition, held) in &mut partitions.held {
            if let Some(feeds) = held.feeds.take() {
                running.push(self.consume_partition(partition, feeds, held.stop.subscribe()));
            }
        }
        let mut tick = tokio::time::interval(BALANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let outcome = loop {
            // What happened, acted on outside the `select!`: the stop's
            // guard must not live across an await.
            let next = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => None,
                Some(finished) = running.next() => Some(Some(finished)),
                _ = tick.tick(), if partitions.shared.is_some() => Some(None),
            };
            match next {
                None => break Ok(()),
                Some(Some((_, Err(err)))) => break Err(err),
                Some(Some((partition, Ok(())))) => {
                    self.outbox_flushed[usize::from(partition)].store(false, Ordering::Release);
                    partitions.handed_over(partition).await;
                }
                Some(None) => {
                    if let Err(err) = self.balance(&mut partitions, true).await {
                        // A claim taken or released halfway is not known
                        // for sure: the connection goes, and every claim
                        // with it.
                        partitions.lose_claims(&format!(
                            "could not balance the partitions with the other servers ({err})"
                        ));
                    }
                    for (&partition, held) in &mut partitions.held {
                        if let Some(feeds) = held.feeds.take() {
                            running.push(self.consume_partition(
                                partition,
                                feeds,
                                held.stop.subscribe(),
                            ));
                        }
                    }
                }
            }
            self.serving.send_replace(partitions.serving());
        };
        for held in partitions.held.values() {
            let _ = held.stop.send(true);
        }
        let mut outcome = outcome;
        while let Some((partition, finished)) = running.next().await {
            if let Err(err) = finished
                && outcome.is_ok()
            {
                outcome = Err(err);
            }
            partitions.handed_over(partition).await;
        }
        outcome
    }

    /// A partition's three queues, consumed until its `stop`.
    async fn consume_partition(
        &self,
        partition: u16,
        [users, youtubers, interactions]: [Feed; 3],
        stop: watch::Receiver<bool>,
    ) -> (u16, Result<()>) {
        let [user_queue, youtuber_queue, interaction_queue] = RequestQueue::in_partition(partition);
        let outcome = tokio::try_join!(
            self.consume_requests(user_queue, users, stop.clone()),
            self.consume_requests(youtuber_queue, youtubers, stop.clone()),
            self.consume_requests(interaction_queue, interactions, stop),
        );
        (partition, outcome.map(drop))
    }

    /// Claims partitions up to this server's share, or hands over those
    /// beyond it (on PostgreSQL).
    async fn balance(&self, partitions: &mut Partitions, say: bool) -> Result<()> {
        let Some(shared) = &mut partitions.shared else {
            return Ok(());
        };
        let broker_here = matches!(*self.link.state().borrow(), LinkState::Connected);
        let now = tokio::time::Instant::now();
        let away_since = if broker_here {
            shared.broker_away_since = None;
            None
        } else {
            Some(*shared.broker_away_since.get_or_insert(now))
        };
        if shared.claims.as_ref().is_some_and(Claims::is_lost) {
            partitions.lose_claims(
                "lost the connection to PostgreSQL that holds this server's partitions",
            );
        } else if shared.claims.is_some()
            && away_since.is_some_and(|since| now - since >= CLAIMS_WITHOUT_BROKER)
        {
            partitions.lose_claims(&format!(
                "RabbitMQ has been away for {CLAIMS_WITHOUT_BROKER:?}; letting the other servers \
                 take this one's partitions"
            ));
        }
        let Some(shared) = &mut partitions.shared else {
            return Ok(());
        };
        if !broker_here {
            // Claims come back with the broker.
            return Ok(());
        }
        let claims = match &shared.claims {
            Some(claims) => claims,
            None => match self.store.claims().await {
                Ok(claims) => {
                    shared.lost_said = false;
                    shared.claims = claims;
                    shared.claims.as_ref().expect("PostgreSQL has claims")
                }
                Err(err) => {
                    if !std::mem::replace(&mut shared.lost_said, true) {
                        tracing::warn!(%err, "cannot claim partitions until PostgreSQL answers");
                    }
                    return Ok(());
                }
            },
        };
        let servers = claims.servers().await?;
        let share = usize::from(PARTITIONS.div_ceil(servers));
        let active: Vec<u16> = partitions
            .held
            .iter()
            .filter(|(_, held)| !held.releasing)
            .map(|(&partition, _)| partition)
            .collect();
        if active.len() > share {
            let extra = &active[share..];
            tracing::info!(
                "{servers} servers share the partitions: handing {} over",
                listed(extra)
            );
            for partition in extra {
                let held = partitions.held.get_mut(partition).expect("held");
                held.releasing = true;
                let _ = held.stop.send(true);
            }
            return Ok(());
        }
        let mut claimed = Vec::new();
        for partition in 0..PARTITIONS {
            if active.len() + claimed.len() >= share {
                break;
            }
            if partitions.held.contains_key(&partition) || !claims.try_claim(partition).await? {
                continue;
            }
            claimed.push(partition);
        }
        for (index, &partition) in claimed.iter().enumerate() {
            if let Err(err) = self.open_partition(partition, partitions).await {
                // Claimed but not consumed: for another server to take.
                if let Some(claims) = partitions.claims() {
                    for &partition in &claimed[index..] {
                        let _ = claims.release(partition).await;
                    }
                }
                return Err(err);
            }
        }
        if say && !claimed.is_empty() {
            let mut now: Vec<u16> = active;
            now.extend(&claimed);
            now.sort_unstable();
            tracing::info!(
                "took partitions {}: consuming {} ({} of {PARTITIONS}; {servers} server{} share them)",
                listed(&claimed),
                listed(&now),
                now.len(),
                if servers == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }

    /// Registers the consumers of a partition just taken, after sending
    /// what a crash left in its outbox. Returns `false` if another server
    /// consumes it now (this one waits behind it, and sends the outbox
    /// when it gets the partition's first upload).
    async fn open_partition(&self, partition: u16, partitions: &mut Partitions) -> Result<bool> {
        let uploads = RequestQueue {
            kind: RequestKind::Youtubers,
            partition,
        };
        // Declared first: someone may have deleted it while no server held it.
        let (session, _) = self.publisher.get().await?;
        let channel = session.connection().create_channel().await?;
        topology::declare_for_consumer(&channel, uploads.name(), self.link.queue_type()).await?;
        let (_, consumers) = topology::inspect(&channel, uploads.name()).await?;
        let _ = channel.close(200, "looked".into()).await;
        // Whatever this server knew of the partition's outbox is from an
        // earlier claim.
        self.outbox_flushed[usize::from(partition)].store(false, Ordering::Release);
        let first = consumers == 0;
        if first {
            self.flush_outbox(partition).await?;
        }
        let mut feeds = Vec::with_capacity(3);
        for queue in RequestQueue::in_partition(partition) {
            feeds.push(server_feed(&self.link, queue.name(), self.config.prefetch).await?);
        }
        let feeds: [Feed; 3] = feeds.try_into().ok().expect("three queues");
        partitions.held.insert(
            partition,
            Held {
                stop: watch::channel(false).0,
                feeds: Some(feeds),
                releasing: false,
                claimed: partitions.shared.is_some(),
            },
        );
        Ok(first)
    }
}

impl Partitions {
    /// Gives up every claim (the connection goes, and PostgreSQL releases
    /// them), and stops consuming every partition at once: another server
    /// may claim them now, and the single active consumer keeps it from
    /// starting before this one ends.
    fn lose_claims(&mut self, why: &str) {
        let Some(shared) = &mut self.shared else {
            return;
        };
        if shared.claims.take().is_none() {
            return;
        }
        let held: Vec<u16> = self.held.keys().copied().collect();
        tracing::warn!(partitions = %listed(&held), "{why}; handing them over");
        for held in self.held.values_mut() {
            held.claimed = false;
            held.releasing = true;
            let _ = held.stop.send(true);
        }
    }

    /// The partitions consumed now, but those being handed over.
    pub(super) fn serving(&self) -> Vec<u16> {
        self.held
            .iter()
            .filter(|(_, held)| !held.releasing)
            .map(|(&partition, _)| partition)
            .collect()
    }

    fn claims(&self) -> Option<&Claims> {
        self.shared
            .as_ref()
            .and_then(|shared| shared.claims.as_ref())
    }

    /// The partitions held, for the log.
    pub(super) fn describe(&self) -> String {
        let held: Vec<u16> = self.held.keys().copied().collect();
        match (&self.shared, held.len()) {
            (None, _) => format!(
                "every partition of the request queues (0-{})",
                PARTITIONS - 1
            ),
            (Some(_), 0) => "no partition yet: the other servers hold them all, and hand \
                             this one its share within a few seconds"
                .to_owned(),
            (Some(_), count) if count == usize::from(PARTITIONS) => format!(
                "every partition of the request queues (0-{}) until other servers on the same \
                 PostgreSQL come and take their share",
                PARTITIONS - 1
            ),
            (Some(_), count) => format!(
                "partitions {} of the request queues ({count} of {PARTITIONS}; the other \
                 servers on the same PostgreSQL have the rest)",
                listed(&held)
            ),
        }
    }

    /// A partition whose consumers have stopped: let another server claim it.
    async fn handed_over(&mut self, partition: u16) {
        let Some(held) = self.held.remove(&partition) else {
            return;
        };
        if let (true, Some(claims)) = (held.claimed, self.claims()) {
            match claims.release(partition).await {
                Ok(()) => tracing::info!(partition, "handed the partition over"),
                Err(err) => {
                    self.lose_claims(&format!("could not release partition {partition} ({err})"))
                }
            }
        }
    }
}

/// `0, 1, 5`: partitions for the log.
fn listed(partitions: &[u16]) -> String {
    partitions
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
