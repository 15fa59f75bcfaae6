//! Keeps the broker's inboxes and bindings in step with the database.
//!
//! A subscription is a binding of the user's exchange to the notifications
//! exchange, keyed by the YouTuber. After each batch of requests is stored,
//! the server declares the inboxes (with the users' exchanges) and histories
//! that may be missing, then binds or unbinds each (user, YouTuber) pair the
//! batch touched, according to its final state.
//!
//! The work is spread by user over [`LANES`] lanes, each a task with its own
//! channel that carries its share of one batch after another, pipelined: the
//! broker applies one channel's operations one at a time and different
//! channels' in parallel, and no lane waits for the others. A user always goes
//! to the same lane, so the operations on one pair are carried out in the
//! order the batches were stored.
//!
//! One user's failure is that user's alone. An error the broker raises on a
//! channel (an inbox that another client declared first with other
//! settings, say) closes the channel and every operation pipelined behind
//! it; the lane then carries its share again one user at a time on fresh
//! channels, and reports which users failed and why ([`Failure`]), so that
//! the server refuses or retries their requests and serves the others.
//!
//! A lane replaces its channel after [`RECYCLE_AFTER`] operations, which
//! bounds what the client library keeps per channel.

use std::{collections::HashMap, sync::Arc};

use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Result},
    link::{Link, Session},
    store::{Decision, Effect, InboxSpec},
    topology::{self, QueueType},
};

/// Lanes, each with a channel, that carry declarations and bindings.
const LANES: usize = 32;

/// Operations a lane's channel carries before it is replaced by a fresh one.
const RECYCLE_AFTER: usize = 512;

/// Why the broker could not be brought in step for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What went wrong and what to do, for the refusal sent to the user.
    pub reason: String,
    /// Trying again cannot help (an inbox with other settings): refuse now.
    pub permanent: bool,
}

/// The users whose declarations or bindings failed, with why.
pub(crate) type Failures = HashMap<String, Failure>;

/// The lanes that keep inboxes and bindings in step with the database.
pub(crate) struct Bindings {
    lanes: Vec<mpsc::UnboundedSender<Job>>,
}

/// A lane's share of one batch, and where to say when it is done.
struct Job {
    work: Work,
    done: oneshot::Sender<Result<Failures>>,
}

/// The inboxes and histories to declare and the pairs to bind or unbind on
/// one lane.
#[derive(Default)]
struct Work {
    inboxes: Vec<InboxSpec>,
    /// Users whose history must exist.
    histories: Vec<String>,
    /// (user, YouTuber, subscribed)
    pairs: Vec<(String, String, bool)>,
    /// (user, YouTuber): inbox bindings of the older layout to remove.
    direct: Vec<(String, String)>,
    /// YouTubers whose creator inbox must exist.
    creators: Vec<String>,
}

/// The key under which a creator inbox's failure is reported: not a user
/// name (names hold no space).
pub(crate) fn creator_key(youtuber: &str) -> String {
    format!("creator {youtuber}")
}

/// A batch's declarations and bindings, under way.
#[must_use = "the batch's bindings are only in place once `done` returns"]
pub(crate) struct Pending(Vec<oneshot::Receiver<Result<Failures>>>);

impl Bindings {
    /// Starts the lanes on `link`; they stop when this is dropped. `vhost`
    /// is named in the advice given for an inbox with other settings.
    pub(crate) fn start(link: &Link, vhost: &str) -> Bindings {
        let vhost: Arc<str> = Arc::from(vhost);
        let lanes = (0..LANES)
            .map(|_| {
                let (lane, jobs) = mpsc::unbounded_channel();
                tokio::spawn(run_lane(link.clone(), Arc::clone(&vhost), jobs));
                lane
            })
            .collect();
        Bindings { lanes }
    }

    /// Sets the effects of a stored batch going: the inboxes of logins and of
    /// new users, then the final state of each pair the batch touched (a
    /// login touches all of the user's subscriptions), and the creator
    /// inboxes of YouTubers who uploaded or have something to hear of. Each
    /// lane carries it after the batches handed to it before.
    pub(crate) fn carry_out(&self, outcomes: &[Decision]) -> Pending {
        let mut work: HashMap<usize, Work> = HashMap::new();
        let mut pairs: HashMap<(&str, &str), bool> = HashMap::new();
        for outcome in outcomes {
            let creator = match (&outcome.effect, &outcome.tell) {
                (_, Some(note)) => Some(&note.youtuber),
                (Effect::Notify(video), None) => Some(&video.youtuber),
                _ => None,
            };
            if let Some(youtuber) = creator {
                let lane = work.entry(lane_of(&creator_key(youtuber))).or_default();
                lane.creators.push(youtuber.clone());
            }
            match &outcome.effect {
                Effect::Inbox {
                    inbox,
                    subscriptions,
                    history,
                } => {
                    let lane = work.entry(lane_of(&inbox.user)).or_default();
                    lane.inboxes.push(inbox.clone());
                    if *history {
                        lane.histories.push(inbox.user.clone());
                    }
                    for youtuber in subscriptions {
                        pairs.insert((&inbox.user, youtuber), true);
                    }
                }
                Effect::Binding {
                    user,
                    youtuber,
                    subscribed,
                    declare,
                } => {
                    if let Some(inbox) = declare {
                        let lane = work.entry(lane_of(user)).or_default();
                        lane.inboxes.push(inbox.clone());
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
        self.hand_out(work)
    }

    /// Moves subscriptions bound in the older layout (each inbox bound
    /// straight to the notifications exchange) to the users' exchanges:
    /// declares each inbox with its exchange, binds the exchange for each
    /// subscription, and only then removes the direct binding, so that no
    /// upload meanwhile is missed (one may reach an inbox twice; clients
    /// de-duplicate by id).
    pub(crate) fn move_to_user_exchanges(&self, users: Vec<(InboxSpec, Vec<String>)>) -> Pending {
        let mut work: HashMap<usize, Work> = HashMap::new();
        for (inbox, subscriptions) in users {
            let lane = work.entry(lane_of(&inbox.user)).or_default();
            for youtuber in subscriptions {
                lane.pairs
                    .push((inbox.user.clone(), youtuber.clone(), true));
                lane.direct.push((inbox.user.clone(), youtuber));
            }
            lane.inboxes.push(inbox);
        }
        self.hand_out(work)
    }

    /// Declares the creator inboxes of `youtubers`.
    pub(crate) fn declare_creators(&self, youtubers: impl IntoIterator<Item = String>) -> Pending {
        let mut work: HashMap<usize, Work> = HashMap::new();
        for youtuber in youtubers {
            let lane = work.entry(lane_of(&creator_key(&youtuber))).or_default();
            lane.creators.push(youtuber);
        }
        self.hand_out(work)
    }

    fn hand_out(&self, work: HashMap<usize, Work>) -> Pending {
        let pending = work
            .into_iter()
            .map(|(lane, mut work)| {
                work.inboxes.sort_unstable_by(|a, b| a.user.cmp(&b.user));
                work.inboxes.dedup_by(|a, b| a.user == b.user);
                work.histories.sort_unstable();
                work.histories.dedup();
                work.creators.sort_unstable();
                work.creators.dedup();
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
    /// bindings. Returns the users for whom it failed; an error means the
    /// whole batch must be carried out again (the connection was lost).
    pub(crate) async fn done(self) -> Result<Failures> {
        let mut failures = Failures::new();
        for lane in self.0 {
            let failed = lane
                .await
                .map_err(|_| Error::Stopped("a binding lane stopped".into()))??;
            failures.extend(failed);
        }
        Ok(failures)
    }
}

/// A lane's channel and how many operations it has carried.
struct LaneChannel {
    session: Session,
    channel: Channel,
    operations: usize,
}

/// One lane: carries its jobs one after another on its channel.
async fn run_lane(link: Link, vhost: Arc<str>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut current: Option<LaneChannel> = None;
    while let Some(Job { work, done }) = jobs.recv().await {
        let result = work.carry(&link, &vhost, &mut current).await;
        let _ = done.send(result);
    }
    if let Some(lane) = current {
        let _ = lane.channel.close(200, "done".into()).await;
    }
}

/// The lane's channel: the one in use, or a new one when it is worn or broken.
async fn lane_channel(
    link: &Link,
    current: &mut Option<LaneChannel>,
) -> Result<(Session, Channel)> {
    if let Some(lane) = current
        && lane.session.is_alive()
        && lane.channel.status().connected()
        && lane.operations < RECYCLE_AFTER
    {
        return Ok((lane.session.clone(), lane.channel.clone()));
    }
    if let Some(worn) = current.take()
        && worn.session.is_alive()
    {
        tokio::spawn(async move {
            let _ = worn.channel.close(200, "replaced".into()).await;
        });
    }
    let session = link.session().await?;
    let channel = session.connection().create_channel().await?;
    *current = Some(LaneChannel {
        session: session.clone(),
        channel: channel.clone(),
        operations: 0,
    });
    Ok((session, channel))
}

impl Work {
    fn size(&self) -> usize {
        self.inboxes.len()
            + self.histories.len()
            + self.pairs.len()
            + self.direct.len()
            + self.creators.len()
    }

    /// Carries the work out, pipelined; if the broker refuses part of it,
    /// again one user at a time, to find whose part fails.
    async fn carry(
        self,
        link: &Link,
        vhost: &str,
        current: &mut Option<LaneChannel>,
    ) -> Result<Failures> {
        let (session, channel) = lane_channel(link, current).await?;
        if let Some(lane) = current.as_mut() {
            lane.operations += self.size();
        }
        match self.run(&channel, link.queue_type()).await {
            Ok(()) => return Ok(Failures::new()),
            Err(err) if !session.is_alive() => return Err(err.into()),
            Err(err) => {
                tracing::debug!(%err, "a binding lane's channel failed; finding whose part")
            }
        }
        let mut failures = Failures::new();
        for one in self.by_user() {
            let (session, channel) = lane_channel(link, current).await?;
            match one.run(&channel, link.queue_type()).await {
                Ok(()) => {}
                Err(err) if !session.is_alive() => return Err(err.into()),
                Err(err) => {
                    let (key, failure) = match one.creators.first() {
                        Some(youtuber) => (
                            creator_key(youtuber),
                            creator_failure(youtuber, vhost, &err),
                        ),
                        None => {
                            let user = one.user().to_owned();
                            let failure = failure(&user, vhost, &err);
                            (user, failure)
                        }
                    };
                    tracing::warn!(%err, key, "the broker refused a declaration or binding");
                    failures.insert(key, failure);
                }
            }
        }
        Ok(failures)
    }

    /// The work split by user, each part in the order it would have run.
    fn by_user(&self) -> Vec<Work> {
        let mut parts: Vec<Work> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for inbox in &self.inboxes {
            let at = *index.entry(&inbox.user).or_insert_with(|| {
                parts.push(Work::default());
                parts.len() - 1
            });
            parts[at].inboxes.push(inbox.clone());
        }
        for user in &self.histories {
            let at = *index.entry(user).or_insert_with(|| {
                parts.push(Work::default());
                parts.len() - 1
            });
            parts[at].histories.push(user.clone());
        }
        for pair in &self.pairs {
            let at = *index.entry(&pair.0).or_insert_with(|| {
                parts.push(Work::default());
                parts.len() - 1
            });
            parts[at].pairs.push(pair.clone());
        }
        for pair in &self.direct {
            let at = *index.entry(&pair.0).or_insert_with(|| {
                parts.push(Work::default());
                parts.len() - 1
            });
            parts[at].direct.push(pair.clone());
        }
        // Each creator inbox alone: its failure is the creator's, not a user's.
        for youtuber in &self.creators {
            parts.push(Work {
                creators: vec![youtuber.clone()],
                ..Work::default()
            });
        }
        parts
    }

    fn user(&self) -> &str {
        self.inboxes
            .first()
            .map(|inbox| inbox.user.as_str())
            .or_else(|| self.histories.first().map(String::as_str))
            .or_else(|| self.pairs.first().map(|pair| pair.0.as_str()))
            .or_else(|| self.direct.first().map(|pair| pair.0.as_str()))
            .unwrap_or_default()
    }

    /// Declares the inboxes, binds and unbinds, pipelined on `channel`,
    /// then declares the histories.
    async fn run(&self, channel: &Channel, queue_type: QueueType) -> Result<(), lapin::Error> {
        futures::future::try_join_all(
            self.inboxes.iter().map(|inbox| {
                topology::declare_inbox(channel, &inbox.user, inbox.bound, queue_type)
            }),
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
        futures::future::try_join_all(
            self.direct
                .iter()
                .map(|(user, youtuber)| topology::unbind_inbox_directly(channel, user, youtuber)),
        )
        .await?;
        futures::future::try_join_all(
            self.creators
                .iter()
                .map(|youtuber| topology::declare_creator_inbox(channel, youtuber, queue_type)),
        )
        .await?;
        // Last, and never a failure of the request: a user without a
        // history still gets every notification (from the inbox), and the
        // next live session asks for it again. An error here closes the
        // channel after everything else is done; the lane opens another.
        for user in &self.histories {
            if let Err(err) = topology::declare_history(channel, user).await {
                tracing::warn!(%err, user, "could not declare a history; the user's sessions read the inbox alone");
                break;
            }
        }
        Ok(())
    }
}

/// What to tell a user whose inbox the broker refused, and whether trying
/// again can help.
fn failure(user: &str, vhost: &str, err: &lapin::Error) -> Failure {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let queue = topology::inbox(user);
    let soft = match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some((soft.clone(), amqp.get_message().to_string())),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    };
    match soft {
        Some((AMQPSoftError::PRECONDITIONFAILED, text)) if text.contains("'x-queue-type'") => {
            Failure {
                reason: format!(
                    "{user}'s inbox {queue} is of another queue type than the vhost's ({text}); \
                     a move between queue types has not finished: stop the servers and run \
                     `youtube_server migrate-queues --to <the vhost's type>`, then {user} logs \
                     in again (nothing waiting in it is lost)"
                ),
                permanent: true,
            }
        }
        Some((AMQPSoftError::PRECONDITIONFAILED, text)) => Failure {
            reason: format!(
                "{user}'s inbox {queue} exists on the broker with other settings than \
                 youtube_server gives inboxes ({text}), so it cannot be used; an administrator \
                 must delete it with `rabbitmqctl delete_queue -p {vhost} {queue}` (the \
                 notifications waiting in it are lost), then {user} logs in again"
            ),
            permanent: true,
        },
        Some((AMQPSoftError::RESOURCELOCKED | AMQPSoftError::ACCESSREFUSED, text)) => Failure {
            reason: format!(
                "{user}'s inbox {queue} is held by another connection ({text}); close the \
                 client that declared it, or have an administrator delete it with \
                 `rabbitmqctl delete_queue -p {vhost} {queue}`, then {user} logs in again"
            ),
            permanent: true,
        },
        _ => Failure {
            reason: format!("RabbitMQ refused an operation on {queue} ({err})"),
            permanent: false,
        },
    }
}

/// What to log of a creator inbox the broker refused. Nobody's request
/// fails for it: what the creator is to hear of waits in the database, and
/// is sent once the inbox can be declared.
fn creator_failure(youtuber: &str, vhost: &str, err: &lapin::Error) -> Failure {
    let queue = topology::creator_inbox(youtuber);
    Failure {
        reason: format!(
            "{youtuber}'s creator inbox {queue} cannot be declared ({err}); if it exists with \
             other settings, an administrator must delete it with `rabbitmqctl delete_queue -p \
             {vhost} {queue}`: what {youtuber} is to hear of waits in the database until then"
        ),
        permanent: true,
    }
}

/// The lane of a user: always the same one.
fn lane_of(user: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut hasher);
    (hasher.finish() % LANES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_split_by_user_keeps_each_users_order() {
        let spec = |user: &str| InboxSpec {
            user: user.to_owned(),
            bound: Some(10),
        };
        let pair =
            |user: &str, youtuber: &str, on: bool| (user.to_owned(), youtuber.to_owned(), on);
        let work = Work {
            inboxes: vec![spec("bob"), spec("alice")],
            histories: vec!["dave".to_owned(), "alice".to_owned()],
            pairs: vec![
                pair("alice", "x", true),
                pair("carol", "y", false),
                pair("alice", "z", false),
            ],
            direct: vec![("erin".to_owned(), "x".to_owned())],
            creators: vec!["alice".to_owned()],
        };
        let parts = work.by_user();
        let users: Vec<&str> = parts.iter().take(5).map(Work::user).collect();
        assert_eq!(users, ["bob", "alice", "dave", "carol", "erin"]);
        assert_eq!(parts[1].inboxes, [spec("alice")]);
        assert_eq!(parts[1].histories, ["alice"]);
        assert_eq!(
            parts[1].pairs,
            [pair("alice", "x", true), pair("alice", "z", false)]
        );
        assert!(parts[0].pairs.is_empty());
        assert_eq!(parts[4].direct, [("erin".to_owned(), "x".to_owned())]);
        // A creator's part is apart from the user of the same name.
        assert_eq!(parts[5].creators, ["alice"]);
        assert!(parts[5].pairs.is_empty());
        assert_eq!(parts.iter().map(Work::size).sum::<usize>(), work.size());
    }
}
