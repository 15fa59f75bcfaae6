//! The receiving side: every simulated user's inbox consumed on a handful of
//! connections (never one connection per user), and the [`Tally`] of what
//! arrived — counts per (user, upload), latency, and when each upload reached
//! its last subscriber.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::task::JoinHandle;

use super::{
    SimError,
    celebrities::{Followed, Following, Read},
    scenario::user_name,
};
use ytnotify::{
    link::{Feed, Link, Opened, Opener, Opening, Session},
    protocol::{self, Notification},
    topology,
};

/// Locks `mutex`, as it is if a panic poisoned it: each guards counters or
/// a map that one call changes at a time.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Notifications RabbitMQ may push to each inbox consumer ahead of its acks
/// (the same as the `user` client's).
const PREFETCH: u16 = 100;
/// How long a closing session waits for each delivery already on its way,
/// until the broker has ended the consumer. A busy broker (10,000 inboxes
/// on one node) takes seconds to answer the cancel; a delivery left behind
/// would stay unacknowledged on the shared channel until the run ends, and
/// count as lost.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Channels per receiving connection.
const CHANNELS_PER_CONNECTION: u32 = 4;

/// A queue of the simulator's own, bound to `user`'s exchange beside the
/// inbox and the history: the broker copies every notification of the user
/// into it too. The receivers read it instead of the inbox for users who
/// have browser clients, whose gateway sessions consume the inbox (two
/// consumers on one queue would split its messages between them).
pub fn tap(user: &str) -> String {
    format!("simulate.tap.{user}")
}

/// Declares and binds the taps of users `0..users` (their exchanges exist:
/// set-up logged every user in).
pub async fn declare_taps(channel: &Channel, users: u32) -> Result<(), SimError> {
    for user in 0..users {
        let name = user_name(user);
        let queue = tap(&name);
        channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                topology::user_exchange(&name).as_str().into(),
                "".into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Deletes the taps of users `0..users`, so that nothing piles up in them
/// after the run.
pub async fn delete_taps(channel: &Channel, users: u32) -> Result<(), SimError> {
    for user in 0..users {
        channel
            .queue_delete(
                tap(&user_name(user)).as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    Ok(())
}

/// Upload titles carry their sequence number: `v<seq>`.
pub fn title(seq: u32) -> String {
    format!("v{seq}")
}

/// The upload's sequence number (from the title) and the video's id.
fn read(notification: &Notification) -> Option<(u32, uuid::Uuid)> {
    match notification {
        Notification::VideoUploaded { id, video, .. } => {
            Some((video.strip_prefix('v')?.parse().ok()?, *id))
        }
    }
}

/// What arrived, for one phase (our run, or the ceiling).
pub struct Tally {
    start: Instant,
    /// Nanoseconds from `start` to the send of each upload, plus one; 0 = not sent.
    sent_at: Vec<AtomicU64>,
    /// Nanoseconds from `start` to the last live delivery of each upload.
    last_live_at: Vec<AtomicU64>,
    /// The id of each upload's video, as its notification carries it: what
    /// a user names when it likes or comments on the video.
    video_ids: Vec<OnceLock<uuid::Uuid>>,
    last_any_at: AtomicU64,
    received: AtomicU64,
    /// Of `received`, those read from a celebrity's stream.
    streamed: AtomicU64,
    inner: Mutex<Counts>,
}

/// The tally's counters behind its lock.
pub struct Counts {
    /// Copies received per (user, upload).
    pub per_pair: HashMap<(u32, u32), u32>,
    /// Upload sent to received, in microseconds, for users online when it was sent.
    pub latency: Histogram<u64>,
    pub catch_up: u64,
    pub unreadable: u64,
    /// Copies of a notification already received in the same session that
    /// the broker flagged as redelivered (after a lost acknowledgement).
    pub redelivered: u64,
    /// Copies of a notification already received in the same session that
    /// the broker did not flag: the same notification published again.
    pub republished: u64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes at 3 significant figures; the bounds are valid constants.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    pub fn new(uploads: u32) -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            sent_at: (0..uploads).map(|_| AtomicU64::new(0)).collect(),
            last_live_at: (0..uploads).map(|_| AtomicU64::new(0)).collect(),
            video_ids: (0..uploads).map(|_| OnceLock::new()).collect(),
            last_any_at: AtomicU64::new(0),
            received: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
            inner: Mutex::new(Counts {
                per_pair: HashMap::new(),
                latency: histogram(),
                catch_up: 0,
                unreadable: 0,
                redelivered: 0,
                republished: 0,
            }),
        })
    }

    /// Nanoseconds since the tally started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant [`Tally::now`] counts from, for other counters that
    /// must share its clock.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The id of upload `seq`'s video, once a notification of it arrived.
    pub fn video(&self, seq: u32) -> Option<uuid::Uuid> {
        self.video_ids.get(seq as usize)?.get().copied()
    }

    /// Records that upload `seq` is being sent now; returns the time.
    pub fn mark_sent(&self, seq: u32) -> u64 {
        let now = self.now();
        self.sent_at[seq as usize].store(now + 1, Ordering::Release);
        now
    }

    /// When upload `seq` was sent, if it was.
    pub fn sent(&self, seq: u32) -> Option<u64> {
        match self.sent_at.get(seq as usize)?.load(Ordering::Acquire) {
            0 => None,
            at => Some(at - 1),
        }
    }

    /// Notifications received so far, all users together.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Notifications read from celebrities' streams (not from inboxes).
    pub fn streamed(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed)
    }

    fn record_streamed(&self) {
        self.streamed.fetch_add(1, Ordering::Relaxed);
    }

    /// When the last notification arrived.
    pub fn last_delivery(&self) -> u64 {
        self.last_any_at.load(Ordering::Relaxed)
    }

    /// When upload `seq` reached its last subscriber online at the time.
    pub fn last_live(&self, seq: u32) -> Option<u64> {
        match self.last_live_at[seq as usize].load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    fn record(&self, user: u32, body: &[u8], session_start: u64) {
        let notification = protocol::decode_notification(body).ok();
        self.record_read(user, notification.as_ref(), session_start);
    }

    /// [`Tally::record`] of a notification already decoded (`None`: it
    /// could not be).
    fn record_read(&self, user: u32, notification: Option<&Notification>, session_start: u64) {
        let now = self.now();
        let read = notification
            .and_then(read)
            .filter(|&(seq, _)| (seq as usize) < self.sent_at.len());
        let mut counts = lock(&self.inner);
        let Some((seq, video)) = read else {
            counts.unreadable += 1;
            return;
        };
        let _ = self.video_ids[seq as usize].set(video);
        *counts.per_pair.entry((user, seq)).or_default() += 1;
        match self.sent(seq) {
            Some(sent) if sent >= session_start => {
                let micros = (now.saturating_sub(sent) / 1_000).max(1);
                let _ = counts.latency.record(micros);
                self.last_live_at[seq as usize].fetch_max(now, Ordering::Relaxed);
            }
            _ => counts.catch_up += 1,
        }
        drop(counts);
        self.last_any_at.fetch_max(now, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a copy of a notification already received in this session:
    /// `redelivered` if the broker flagged it so, else published again.
    fn record_copy(&self, redelivered: bool) {
        let mut counts = lock(&self.inner);
        if redelivered {
            counts.redelivered += 1;
        } else {
            counts.republished += 1;
        }
    }

    /// Reads the counters under the lock.
    pub fn with_counts<T>(&self, read: impl FnOnce(&Counts) -> T) -> T {
        read(&lock(&self.inner))
    }
}

/// The notification ids one simulated session has received.
#[derive(Default)]
struct SeenInSession(std::collections::HashSet<uuid::Uuid>);

impl SeenInSession {
    /// Whether this is the first copy of its notification in the session
    /// (what cannot be read is counted by the tally, once each).
    fn first_time(&mut self, body: &[u8]) -> bool {
        match protocol::decode_notification(body) {
            Ok(notification) => self.0.insert(notification.id()),
            Err(_) => true,
        }
    }
}

/// Counts a delivery and acknowledges it. A copy of a notification already
/// received (a redelivery after a lost acknowledgement, or the same
/// notification published again) is dropped by id, as a `user` session
/// drops it, and counted apart.
async fn take(
    tally: &Tally,
    seen: &mut SeenInSession,
    user: u32,
    session_start: u64,
    delivery: lapin::message::Delivery,
) {
    if seen.first_time(&delivery.data) {
        tally.record(user, &delivery.data, session_start);
    } else {
        tally.record_copy(delivery.redelivered);
    }
    let _ = ytnotify::broker::ack(&delivery, BasicAckOptions::default()).await;
}

/// One user's celebrities, beside its inbox: what `take` does for an inbox
/// delivery, plus following a YouTuber it made a celebrity; and the uploads
/// of each celebrity's stream.
struct Celebrities {
    followed: Followed,
    tally: Arc<Tally>,
    user: u32,
    session_start: u64,
}

impl Celebrities {
    async fn take_from_inbox(
        &mut self,
        seen: &mut SeenInSession,
        delivery: lapin::message::Delivery,
    ) {
        if let Ok(notification) = protocol::decode_notification(&delivery.data) {
            if let Err(err) = self.followed.follow_after(&notification).await {
                tracing::warn!(%err, user = self.user, "cannot follow a new celebrity");
            }
            self.followed.shown(&notification);
        }
        take(&self.tally, seen, self.user, self.session_start, delivery).await;
    }

    fn take_upload(&self, seen: &mut SeenInSession, notification: &Notification) {
        if seen.0.insert(notification.id()) {
            self.tally
                .record_read(self.user, Some(notification), self.session_start);
            self.tally.record_streamed();
        } else {
            self.tally.record_copy(false);
        }
        self.followed.shown(notification);
    }
}

/// One user's inbox being consumed: its task, and how to stop it.
struct Reading {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A channel shared by many consumers, opened again on each session.
pub(crate) struct SharedChannel {
    current: tokio::sync::Mutex<Option<(Session, Channel)>>,
}

impl SharedChannel {
    /// The channel on `session`, with the inboxes' prefetch.
    pub(crate) async fn on(&self, session: &Session) -> ytnotify::Result<Channel> {
        let mut current = self.current.lock().await;
        if let Some((open_on, channel)) = current.as_ref()
            && open_on.generation() == session.generation()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = session.connection().create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        *current = Some((session.clone(), channel.clone()));
        Ok(channel)
    }
}

/// `channels` shared channels over as few connections as hold them,
/// [`CHANNELS_PER_CONNECTION`] each: how the simulator reads thousands of
/// queues without a connection each. Consumers go to channel `key % channels`.
pub(crate) async fn spread(
    url: &str,
    channels: u32,
    label: &str,
) -> Result<(Vec<Link>, Vec<(Link, Arc<SharedChannel>)>), SimError> {
    let mut links: Vec<Link> = Vec::new();
    let mut shared = Vec::new();
    for i in 0..channels {
        if i % CHANNELS_PER_CONNECTION == 0 {
            let name = format!("simulate-{label}-{}", links.len());
            links.push(Link::connect(&ytnotify::broker::Endpoint::new(url), &name).await?);
        }
        let link = links.last().expect("a connection was just opened").clone();
        shared.push((
            link,
            Arc::new(SharedChannel {
                current: tokio::sync::Mutex::new(None),
            }),
        ));
    }
    Ok((links, shared))
}

/// What sets up a consumer of `queue`, which must exist, on a shared
/// channel, again on each new session; its tag starts with `tag`.
pub(crate) fn consumer_on(shared: &Arc<SharedChannel>, queue: String, tag: String) -> Opener {
    let shared = Arc::clone(shared);
    Box::new(move |session: Session| {
        let (shared, queue, tag) = (Arc::clone(&shared), queue.clone(), tag.clone());
        Box::pin(async move {
            // Nothing here may fail with a channel error, which would close
            // the channel under every other consumer on it: the queue
            // exists, and the consumer is not exclusive (the simulator
            // reads each queue once; a consumer left on a connection that
            // died has its deliveries put back when the broker notices).
            let channel = shared.on(&session).await?;
            let tag = format!("{tag}:{}", uuid::Uuid::new_v4().simple());
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(Opened {
                channel,
                consumer,
                owns_channel: false,
            })
        }) as Opening
    })
}

/// Every user's inbox, consumed on a few connections and channels.
pub struct Receivers {
    links: Vec<Link>,
    channels: Vec<(Link, Arc<SharedChannel>)>,
    readings: Mutex<HashMap<u32, Reading>>,
    tally: Arc<Tally>,
    label: &'static str,
    /// Users below this number are read from their [`tap`], not their inbox.
    tapped: u32,
    /// How sessions follow celebrities' streams; `None`: they read inboxes only.
    following: Option<Arc<Following>>,
}

impl Receivers {
    /// Opens `channels` channels over enough connections (four channels each).
    pub async fn connect(
        url: &str,
        channels: u32,
        tally: Arc<Tally>,
        label: &'static str,
    ) -> Result<Receivers, SimError> {
        let (links, shared) = spread(url, channels, &format!("{label}-receive")).await?;
        Ok(Receivers {
            links,
            channels: shared,
            readings: Mutex::new(HashMap::new()),
            tally,
            label,
            tapped: 0,
            following: None,
        })
    }

    /// Reads users `0..users` from their [`tap`] (declared already) instead of their inbox.
    pub fn reading_taps(mut self, users: u32) -> Receivers {
        self.tapped = users;
        self
    }

    /// Follows celebrities' streams too, as `following` says.
    pub fn following(mut self, following: Arc<Following>) -> Receivers {
        self.following = Some(following);
        self
    }

    /// Starts consuming `user`'s inbox (which the server declared at login),
    /// as the `user` client does: the consumer outlives lost connections.
    pub async fn open(&self, user: u32) -> Result<(), SimError> {
        let index = user as usize % self.channels.len();
        let (link, shared) = &self.channels[index];
        let name = user_name(user);
        let queue = if user < self.tapped {
            tap(&name)
        } else {
            topology::inbox(&name)
        };
        let label = self.label;
        // The inbox exists (set-up logged every user in).
        let opener = consumer_on(shared, queue, format!("simulate-{label}:{name}"));
        let session_start = self.tally.now();
        let mut feed = Feed::open(link, format!("simulate-{label}: {name}"), opener).await?;
        let tally = Arc::clone(&self.tally);
        let mut seen = SeenInSession::default();
        let mut celebrities = match &self.following {
            Some(following) => {
                let (followed, missed) = Followed::open(following, &name).await?;
                let celebrities = Celebrities {
                    followed,
                    tally: Arc::clone(&tally),
                    user,
                    session_start,
                };
                for notification in &missed {
                    celebrities.take_upload(&mut seen, notification);
                }
                Some(celebrities)
            }
            None => None,
        };
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let streamed = async {
                    match &mut celebrities {
                        Some(celebrities) => celebrities.followed.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut stopped => break,
                    delivery = feed.next() => {
                        let Ok(delivery) = delivery else { break };
                        match &mut celebrities {
                            Some(celebrities) => celebrities.take_from_inbox(&mut seen, delivery).await,
                            None => take(&tally, &mut seen, user, session_start, delivery).await,
                        }
                    }
                    delivery = streamed => {
                        let Ok((delivery, index)) = delivery else { break };
                        let Some(celebrities) = &mut celebrities else { continue };
                        if let Read::Upload(notification) = celebrities.followed.read(delivery, index).await {
                            celebrities.take_upload(&mut seen, &notification);
                        }
                    }
                }
            }
            // Deliveries already on their way are counted and acknowledged:
            // on a shared channel, one left unacknowledged would stay held
            // until the channel closes.
            feed.cancel().await;
            while let Ok(Some(delivery)) = tokio::time::timeout(DRAIN_WAIT, feed.drain()).await {
                match &mut celebrities {
                    Some(celebrities) => celebrities.take_from_inbox(&mut seen, delivery).await,
                    None => take(&tally, &mut seen, user, session_start, delivery).await,
                }
            }
            // A consumer that was being set up when asked to stop.
            feed.close().await;
            if let Some(celebrities) = celebrities {
                celebrities.followed.close().await;
            }
        });
        lock(&self.readings).insert(user, Reading { stop, task });
        Ok(())
    }

    /// Stops consuming `user`'s inbox; what arrives later waits there.
    pub async fn close(&self, user: u32) -> Result<(), SimError> {
        let Some(reading) = lock(&self.readings).remove(&user) else {
            return Ok(());
        };
        let _ = reading.stop.send(());
        if tokio::time::timeout(2 * DRAIN_WAIT, reading.task)
            .await
            .is_err()
        {
            tracing::warn!(
                user,
                "an inbox consumer did not stop within {:?}",
                2 * DRAIN_WAIT
            );
        }
        Ok(())
    }

    /// Opens (or closes) many inboxes, one task per channel.
    pub async fn open_all(self: &Arc<Self>, users: Vec<u32>, open: bool) -> Result<(), SimError> {
        let lanes = self.channels.len();
        let mut by_lane = vec![Vec::new(); lanes];
        for user in users {
            by_lane[user as usize % lanes].push(user);
        }
        let mut tasks = Vec::new();
        for lane in by_lane.into_iter().filter(|lane| !lane.is_empty()) {
            let receivers = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                for user in lane {
                    if open {
                        receivers.open(user).await?;
                    } else {
                        receivers.close(user).await?;
                    }
                }
                Ok::<(), SimError>(())
            }));
        }
        for task in tasks {
            task.await
                .map_err(|e| SimError::Harness(format!("a receiving task failed: {e}")))??;
        }
        Ok(())
    }

    /// The users whose inbox is being consumed now.
    pub fn open_users(&self) -> Vec<u32> {
        lock(&self.readings).keys().copied().collect()
    }

    /// Closes every inbox, then the connections.
    pub async fn shut(self: Arc<Self>) -> Result<(), SimError> {
        let users = self.open_users();
        self.open_all(users, false).await?;
        if let Some(following) = &self.following {
            following.shut().await;
        }
        for link in &self.links {
            link.close().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(video: &str) -> Vec<u8> {
        protocol::encode(&Notification::VideoUploaded {
            id: uuid::Uuid::nil(),
            youtuber: "yt00001".into(),
            video: video.into(),
            uploaded_at_ms: 0,
            seq: None,
            stream_after: false,
        })
    }

    #[test]
    fn the_tally_counts_pairs_latency_and_catch_up() {
        let tally = Tally::new(3);
        tally.mark_sent(0);
        tally.mark_sent(1);
        tally.record(7, &notification("v0"), 0);
        tally.record(7, &notification("v0"), 0);
        tally.record(8, &notification("v1"), u64::MAX); // opened after the send: catch-up
        tally.record(8, b"not json", 0);
        tally.record(8, &notification("v99"), 0);
        assert_eq!(tally.received(), 3);
        tally.with_counts(|counts| {
            assert_eq!(counts.per_pair[&(7, 0)], 2);
            assert_eq!(counts.per_pair[&(8, 1)], 1);
            assert_eq!(counts.latency.len(), 2);
            assert_eq!(counts.catch_up, 1);
            assert_eq!(counts.unreadable, 2);
        });
        assert!(tally.last_live(0).is_some());
        assert!(tally.last_live(1).is_none());
        assert_eq!(tally.sent(2), None);
    }
}
