//! The creators' side: every YouTuber's creator inbox consumed on a handful
//! of connections, as the users' inboxes are ([`receiver::spread`]), and the
//! [`CreatorTally`] of the events that arrived, by event id (the id of the
//! user's request), with when each first arrived.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::options::BasicAckOptions;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    SimError,
    receiver::{self, SharedChannel, lock},
    scenario::youtuber_name,
};
use ytnotify::{
    link::{Feed, Link},
    protocol::{self, CreatorEvent},
    topology,
};

/// One event id as the creators' inboxes delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The YouTuber whose inbox delivered it first.
    pub youtuber: u32,
    /// Nanoseconds on the run's clock when it first arrived.
    pub at: u64,
    /// Copies counted: the first, then those in messages the broker
    /// delivered for the first time (more than one means the server sent
    /// the event again).
    pub copies: u32,
    /// Later copies in messages the broker delivered again (an
    /// acknowledgement lost with a connection), which a creator's feed
    /// drops by id as a user session drops a notification's.
    pub redelivered: u32,
}

/// What the creators' inboxes delivered.
#[derive(Debug, Default)]
pub struct CreatorCounts {
    /// Likes and comments, by event id.
    pub arrivals: HashMap<Uuid, Arrival>,
    /// New subscribers and subscribers gone (from churn): not checked.
    pub subscribers: u64,
    /// Messages that were not the server's events for that creator.
    pub unreadable: u64,
    /// Messages delivered, each with several events.
    pub messages: u64,
}

/// The events that reached creators, on the clock of the run's [`receiver::Tally`].
pub struct CreatorTally {
    start: Instant,
    /// Likes and comments arrived (first copies), and when the last did.
    events: AtomicU64,
    last_at: AtomicU64,
    inner: Mutex<CreatorCounts>,
}

impl CreatorTally {
    /// A tally whose times count from `start`.
    pub fn new(start: Instant) -> Arc<CreatorTally> {
        Arc::new(CreatorTally {
            start,
            events: AtomicU64::new(0),
            last_at: AtomicU64::new(0),
            inner: Mutex::new(CreatorCounts::default()),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Likes and comments arrived, first copies only.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// When the last like or comment arrived.
    pub fn last_arrival(&self) -> u64 {
        self.last_at.load(Ordering::Relaxed)
    }

    /// Counts one message of `youtuber`'s inbox.
    fn record(&self, youtuber: u32, body: &[u8], redelivered: bool) {
        let now = self.now();
        let mut counts = lock(&self.inner);
        counts.messages += 1;
        let message = match protocol::decode_creator_events(body) {
            Ok(message) if message.youtuber == youtuber_name(youtuber) => message,
            _ => {
                counts.unreadable += 1;
                return;
            }
        };
        let mut first = 0;
        for event in message.events {
            let id = match event {
                CreatorEvent::Reacted { id, .. } | CreatorEvent::Commented { id, .. } => id,
                CreatorEvent::Subscribed { .. } | CreatorEvent::Unsubscribed { .. } => {
                    counts.subscribers += 1;
                    continue;
                }
            };
            match counts.arrivals.get_mut(&id) {
                // The first copy counts whatever the flag says: the first
                // delivery may have come on a channel that died before it
                // could be read.
                None => {
                    first += 1;
                    counts.arrivals.insert(
                        id,
                        Arrival {
                            youtuber,
                            at: now,
                            copies: 1,
                            redelivered: 0,
                        },
                    );
                }
                Some(arrival) if redelivered => arrival.redelivered += 1,
                Some(arrival) => arrival.copies += 1,
            }
        }
        drop(counts);
        if first > 0 {
            self.events.fetch_add(first, Ordering::Relaxed);
            self.last_at.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Reads the counters under the lock.
    pub fn with_counts<T>(&self, read: impl FnOnce(&CreatorCounts) -> T) -> T {
        read(&lock(&self.inner))
    }
}

/// One creator inbox being consumed.
struct Reading {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The creator inboxes of the YouTubers who uploaded, consumed on a few
/// connections and channels.
pub struct CreatorReaders {
    links: Vec<Link>,
    readings: Vec<Reading>,
}

impl CreatorReaders {
    /// Starts consuming the creator inbox of each of `youtubers` (which the
    /// server declared at their first upload) on `channels` channels.
    pub async fn open(
        url: &str,
        channels: u32,
        youtubers: &[u32],
        tally: &Arc<CreatorTally>,
    ) -> Result<CreatorReaders, SimError> {
        let channels = channels.clamp(1, youtubers.len().max(1) as u32);
        let (links, shared) = receiver::spread(url, channels, "creators").await?;
        let mut readings = Vec::with_capacity(youtubers.len());
        for &youtuber in youtubers {
            let (link, channel) = &shared[youtuber as usize % shared.len()];
            readings.push(read(link, channel, youtuber, Arc::clone(tally)).await?);
        }
        Ok(CreatorReaders { links, readings })
    }

    /// Stops every consumer, counting what was already on its way, then
    /// closes the connections.
    pub async fn shut(self) {
        for reading in self.readings {
            let _ = reading.stop.send(());
            if tokio::time::timeout(Duration::from_secs(30), reading.task)
                .await
                .is_err()
            {
                tracing::warn!("a creator inbox consumer did not stop within 30 s");
            }
        }
        for link in &self.links {
            link.close().await;
        }
    }
}

async fn read(
    link: &Link,
    shared: &Arc<SharedChannel>,
    youtuber: u32,
    tally: Arc<CreatorTally>,
) -> Result<Reading, SimError> {
    let name = youtuber_name(youtuber);
    let opener = receiver::consumer_on(
        shared,
        topology::creator_inbox(&name),
        format!("simulate-creator:{name}"),
    );
    let mut feed = Feed::open(link, format!("simulate: {name}'s creator inbox"), opener).await?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = &mut stopped => break,
                delivery = feed.next() => delivery,
            };
            let Ok(delivery) = delivery else { return };
            take(&tally, youtuber, delivery).await;
        }
        // On a shared channel, a delivery left unacknowledged would stay
        // held until the channel closes: count and acknowledge what came.
        feed.cancel().await;
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(3), feed.drain()).await
        {
            take(&tally, youtuber, delivery).await;
        }
        feed.close().await;
    });
    Ok(Reading { stop, task })
}

async fn take(tally: &CreatorTally, youtuber: u32, delivery: lapin::message::Delivery) {
    tally.record(youtuber, &delivery.data, delivery.redelivered);
    let _ = ytnotify::broker::ack(&delivery, BasicAckOptions::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ytnotify::protocol::{CreatorEvents, Reaction};

    fn message(youtuber: &str, events: Vec<CreatorEvent>) -> Vec<u8> {
        protocol::encode(&CreatorEvents {
            youtuber: youtuber.to_owned(),
            events,
        })
    }

    fn liked(id: Uuid) -> CreatorEvent {
        CreatorEvent::Reacted {
            id,
            user: "user000001".into(),
            video_id: Uuid::nil(),
            video: "v0".into(),
            reaction: Reaction::Like,
            at_ms: 0,
        }
    }

    #[test]
    fn the_tally_counts_events_by_id_and_tells_copies_from_redeliveries() {
        let tally = CreatorTally::new(Instant::now());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let subscribed = CreatorEvent::Subscribed {
            id: Uuid::new_v4(),
            user: "user000002".into(),
            at_ms: 0,
        };
        tally.record(0, &message("yt00000", vec![liked(a), subscribed]), false);
        // A redelivery: a's second copy is dropped, b's first counts.
        tally.record(0, &message("yt00000", vec![liked(a), liked(b)]), true);
        // The server sent b again.
        tally.record(0, &message("yt00000", vec![liked(b)]), false);
        tally.record(0, &message("yt00001", vec![liked(b)]), false);
        tally.record(0, b"not json", false);
        assert_eq!(tally.events(), 2);
        tally.with_counts(|counts| {
            assert_eq!(counts.messages, 5);
            assert_eq!(counts.unreadable, 2);
            assert_eq!(counts.subscribers, 1);
            let copies = |id: &Uuid| (counts.arrivals[id].copies, counts.arrivals[id].redelivered);
            assert_eq!(copies(&a), (1, 1));
            assert_eq!(copies(&b), (2, 0));
            assert!(counts.arrivals[&a].at <= counts.arrivals[&b].at);
        });
    }
}
