//! Keeps the broker's inboxes and bindings in step with the database.
//!
//! A subscription is a binding of the user's inbox to the notifications
//! exchange, keyed by the YouTuber. After each batch of requests is stored,
//! the server declares the inboxes that may be missing, then binds or unbinds
//! each (user, YouTuber) pair the batch touched, according to its final state.
//!
//! The work is spread by user over [`LANES`] lanes, each a task with its own
//! channel that carries its share of one batch after another, pipelined: the
//! broker applies one channel's operations one at a time and different
//! channels' in parallel, and no lane waits for the others. A user always goes
//! to the same lane, so the operations on one pair are carried out in the
//! order the batches were stored.
//!
//! lapin remembers every declare and bind made on a channel in order to replay
//! them after a reconnection. The broker keeps durable bindings by itself, and
//! that memory would grow with every subscription ever made; so a lane
//! replaces its channel after [`RECYCLE_AFTER`] operations, which bounds both
//! the memory and the replay. Because a pair always uses the same lane, what a
//! channel replays is the last thing the server did to that pair.

use std::{collections::HashMap, sync::Arc};

use lapin::{Channel, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Result},
    store::{Effect, Outcome},
    topology,
};

/// Lanes, each with a channel, that carry declarations and bindings.
const LANES: usize = 32;

/// Operations a lane's channel carries before it is replaced by a fresh one.
const RECYCLE_AFTER: usize = 512;

/// The lanes that keep inboxes and bindings in step with the database.
pub(crate) struct Bindings {
    lanes: Vec<mpsc::UnboundedSender<Job>>,
}

/// A lane's share of one batch, and where to say when it is done.
struct Job {
    work: Work,
    done: oneshot::Sender<Result<()>>,
}

/// The inboxes to declare and the pairs to bind or unbind on one lane.
#[derive(Default)]
struct Work {
    inboxes: Vec<String>,
    /// (user, YouTuber, subscribed)
    pairs: Vec<(String, String, bool)>,
}

/// A batch's declarations and bindings, under way.
#[must_use = "the batch's bindings are only in place once `done` returns"]
pub(crate) struct Pending(Vec<oneshot::Receiver<Result<()>>>);

impl Bindings {
    /// Starts the lanes on `connection`; they stop when this is dropped.
    pub(crate) fn start(connection: Arc<Connection>) -> Bindings {
        let lanes = (0..LANES)
            .map(|_| {
                let (lane, jobs) = mpsc::unbounded_channel();
                tokio::spawn(run_lane(Arc::clone(&connection), jobs));
                lane
            })
            .collect();
        Bindings { lanes }
    }

    /// Sets the effects of a stored batch going: the inboxes of logins and of
    /// new users, then the final state of each pair the batch touched (a
    /// login touches all of the user's subscriptions). Each lane carries it
    /// after the batches handed to it before.
    pub(crate) fn carry_out(&self, outcomes: &[Outcome]) -> Pending {
        let mut work: HashMap<usize, Work> = HashMap::new();
        let mut pairs: HashMap<(&str, &str), bool> = HashMap::new();
        for outcome in outcomes {
            match &outcome.effect {
                Effect::Inbox {
                    user,
                    subscriptions,
                } => {
                    let lane = work.entry(lane_of(user)).or_default();
                    lane.inboxes.push(user.clone());
                    for youtuber in subscriptions {
                        pairs.insert((user, youtuber), true);
                    }
                }
                Effect::Binding {
                    user,
                    youtuber,
                    subscribed,
                    new_user,
                } => {
                    if *new_user {
                        let lane = work.entry(lane_of(user)).or_default();
                        lane.inboxes.push(user.clone());
                    }
                    // The last change of a pair in the batch is its state.
                    pairs.insert((user, youtuber), *subscribed);
                }
                Effect::None | Effect::Notify(_) => {}
            }
        }
        for ((user, youtuber), subscribed) in pairs {
            let lane = work.entry(lane_of(user)).or_default();
            lane.pairs
                .push((user.to_owned(), youtuber.to_owned(), subscribed));
        }
        let pending = work
            .into_iter()
            .map(|(lane, mut work)| {
                work.inboxes.sort_unstable();
                work.inboxes.dedup();
                let (done, finished) = oneshot::channel();
                // A lane ends only when `Bindings` is dropped; then `finished`
                // reports it.
                let _ = self.lanes[lane].send(Job { work, done });
                finished
            })
            .collect();
        Pending(pending)
    }
}

impl Pending {
    /// Waits until the broker has done all of the batch's declarations and
    /// bindings, or one of them failed.
    pub(crate) async fn done(self) -> Result<()> {
        for lane in self.0 {
            lane.await
                .map_err(|_| Error::Stopped("a binding lane stopped".into()))??;
        }
        Ok(())
    }
}

/// One lane: carries its jobs one after another on its channel.
async fn run_lane(connection: Arc<Connection>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut channel: Option<Channel> = None;
    let mut operations = 0;
    while let Some(Job { work, done }) = jobs.recv().await {
        let result = async {
            let channel = fresh(&connection, &mut channel, &mut operations).await?;
            operations += work.inboxes.len() + work.pairs.len();
            work.run(&channel).await?;
            Ok(())
        }
        .await;
        let _ = done.send(result);
    }
    if let Some(channel) = channel {
        let _ = channel.close(200, "done".into()).await;
    }
}

/// The lane's channel, opened, or replaced when it is worn or broken.
async fn fresh(
    connection: &Connection,
    current: &mut Option<Channel>,
    operations: &mut usize,
) -> Result<Channel> {
    if let Some(channel) = current
        && channel.status().connected()
        && *operations < RECYCLE_AFTER
    {
        return Ok(channel.clone());
    }
    if let Some(worn) = current.take() {
        tokio::spawn(async move {
            let _ = worn.close(200, "replaced".into()).await;
        });
    }
    let channel = connection.create_channel().await?;
    *current = Some(channel.clone());
    *operations = 0;
    Ok(channel)
}

impl Work {
    /// Declares the inboxes, then binds and unbinds, pipelined on `channel`.
    async fn run(&self, channel: &Channel) -> Result<(), lapin::Error> {
        futures::future::try_join_all(
            self.inboxes
                .iter()
                .map(|user| topology::declare_inbox(channel, user)),
        )
        .await?;
        futures::future::try_join_all(self.pairs.iter().map(
            |(user, youtuber, subscribed)| async move {
                if *subscribed {
                    topology::bind_subscription(channel, user, youtuber).await
                } else {
                    topology::unbind_subscription(channel, user, youtuber).await
                }
            },
        ))
        .await?;
        Ok(())
    }
}

/// The lane of a user: always the same one.
fn lane_of(user: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut hasher);
    (hasher.finish() % LANES as u64) as usize
}
