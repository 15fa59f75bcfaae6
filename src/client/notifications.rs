//! Every notification of a user, once each, for a live session (`user`,
//! `user watch`, a browser tab through `gateway`): what waited in the inbox
//! while no session was open, and every notification from the moment the
//! session starts, read from the user's history.
//!
//! Several sessions of one user may be open at once, on any machine. Each
//! reads the history from its own position, so each shows every new
//! notification; they share the inbox, whose copy of a notification leaves
//! it once any session has shown that notification. What arrived while no
//! session was open is in the inbox alone, and is shown by the session that
//! takes it.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{Acker, options::BasicAckOptions};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use uuid::Uuid;

use super::{
    celebrities::{Celebrities, Follow, Shown},
    history::{Cursor, Entry, History},
    inbox::{self, Inbox},
    recent::Recent,
    request::Requests,
};
use crate::{
    broker,
    error::{Error, Result},
    link::Link,
    names,
    protocol::Notification,
    store::now_ms,
};

/// How many entries of each source wait to be taken.
const AHEAD: usize = 64;

/// How long closing waits for one more copy from the inbox.
const DRAIN_AT_CLOSE: Duration = Duration::from_millis(50);

/// How long closing waits for each source to close.
const CLOSING: Duration = Duration::from_secs(5);

/// How long a copy from the inbox waits for the history to bring the same
/// notification before it is handed out without a position (the history is
/// slow, or the broker cannot serve it).
const HOLD: Duration = Duration::from_secs(3);

/// A user's notifications, read for a live session.
pub struct Notifications {
    /// `None` while the broker cannot serve the user's history: the inbox
    /// alone then.
    history: Option<Source<Entry>>,
    /// Copies from the inbox waiting for the history to bring the same
    /// notification with its position, each until a deadline.
    held: VecDeque<(Instant, Notification)>,
    inbox: Source<inbox::Received>,
    /// The uploads of the celebrities the user follows, which reach no inbox.
    celebrities: Source<Notification>,
    /// What tells the server which of those were shown.
    telling: JoinHandle<()>,
    /// Where a YouTuber that became a celebrity meanwhile is said.
    follow: mpsc::UnboundedSender<Follow>,
    ledger: Acks,
    opened_at_ms: i64,
    /// Every notification uploaded from then on comes from the history: a
    /// copy of one from the inbox waits for it (see [`Notifications::take_from_inbox`]).
    live_from_ms: Option<i64>,
    recovered: bool,
    position: Cursor,
    /// Whether a notification from the history counts as shown once handed
    /// out (see [`Notifications::resumable`]).
    shown_when_positioned: bool,
    /// Acknowledgements under way, waited for at close: a copy whose
    /// acknowledgement the closing channel cut would come back to the next
    /// session as if never shown.
    acking: Vec<JoinHandle<()>>,
}

/// A notification handed out, not yet acknowledged.
pub struct Received {
    pub notification: Notification,
    /// Stored by the server before the session started: it waited in the
    /// inbox, or in the history for a session that came back.
    pub away: bool,
    /// The session's position in the history after this notification, if it
    /// came from the history; `None` for one taken from the inbox.
    pub cursor: Option<Cursor>,
    acks: Acks,
}

impl Received {
    /// Says the notification has been shown: its copy in the inbox, now or
    /// when it arrives, leaves the inbox.
    pub async fn ack(self) -> Result<()> {
        self.acks.shown(self.notification.id()).await
    }
}

/// What a session reads next.
pub enum Update {
    /// A notification the session has not handed out before.
    Notification(Received),
    /// Nothing to show, but the position in the history moved (past a
    /// notification already handed out from the inbox, say).
    Moved(Cursor),
    /// The history no longer holds everything after the session's position:
    /// some notifications may be missing before the next ones.
    Gap,
}

/// Says which notifications a session has shown; cheap to clone, usable
/// from any task.
#[derive(Clone, Default)]
pub struct Acks(Arc<Mutex<Ledger>>);

#[derive(Default)]
struct Ledger {
    handed_out: Recent,
    shown: Recent,
    /// Copies from the inbox not yet acknowledged, by notification.
    unacked: HashMap<Uuid, Vec<Acker>>,
    /// What remembers, on the server, the celebrities' uploads shown.
    celebrities: Option<Shown>,
}

impl Ledger {
    /// Records that `id` was shown; returns the copies from the inbox to
    /// acknowledge now.
    fn show(&mut self, id: Uuid) -> Vec<Acker> {
        self.shown.insert(id);
        if let Some(celebrities) = &self.celebrities {
            celebrities.shown(id);
        }
        self.unacked.remove(&id).unwrap_or_default()
    }
}

impl Acks {
    /// Says that the notification `id` has been shown. Its copies in the
    /// inbox that this session holds leave the inbox now, those that come
    /// later at once. An id this session has not handed out is ignored: a
    /// client cannot make a copy leave the inbox before it has it.
    pub async fn shown(&self, id: Uuid) -> Result<()> {
        let ackers = {
            let mut ledger = self.0.lock().expect("never held across a panic");
            if !ledger.handed_out.contains(&id) {
                return Ok(());
            }
            ledger.show(id)
        };
        acknowledge(ackers).await
    }
}

async fn acknowledge(ackers: Vec<Acker>) -> Result<()> {
    for acker in ackers {
        broker::ack(&acker, BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Acknowledges copies of notifications already shown. A failure means the
/// connection is gone: the broker delivers the copies again, and the
/// session recognises them.
async fn acknowledge_quietly(ackers: Vec<Acker>) {
    if let Err(err) = acknowledge(ackers).await {
        tracing::debug!(%err, "could not acknowledge a copy already shown");
    }
}

impl Acks {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.0.lock().expect("never held across a panic")
    }

    /// Records notifications the client had before this session (it comes
    /// back after them) as shown; returns the copies from the inbox to
    /// acknowledge now. Copies that come later are acknowledged at once,
    /// never handed out.
    fn had_before(&self, ids: impl IntoIterator<Item = Uuid>) -> Vec<Acker> {
        let mut ledger = self.ledger();
        ids.into_iter().flat_map(|id| ledger.show(id)).collect()
    }
}

/// A reader run as a task, so that waiting on both at once loses nothing.
struct Source<T> {
    entries: mpsc::Receiver<Result<T>>,
    task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Notifications {
    /// Opens a session for `user` after `from` (a position this session's
    /// user was given before), or from now. `requests` asks the server
    /// which celebrities the user follows, and tells it which of their
    /// uploads were shown.
    pub async fn open(
        link: &Link,
        requests: &Requests,
        user: &str,
        from: Option<Cursor>,
    ) -> Result<Notifications> {
        names::check_user(user)?;
        let opened_at_ms = now_ms();
        let ledger = Acks::default();
        let (shown, telling) = Shown::start(requests.clone(), user);
        ledger.ledger().celebrities = Some(shown);
        let position = from.unwrap_or(Cursor::Time { ms: opened_at_ms });
        // The history first: whatever the server stores after it is
        // attached is read from it; what came before waits in the inbox.
        let (history, recovered, live_from_ms) = match History::open(link, user, position).await {
            Ok(mut history) => {
                let recovered = history.resumed_whole();
                let live_from_ms = history.live_from_ms();
                // Before the inbox is read, so that no copy of them is shown.
                let none_yet = ledger.had_before(history.take_before_position());
                debug_assert!(none_yet.is_empty(), "the inbox is not read yet");
                let history = Source::spawn(history, next_entry, close_history);
                (Some(history), recovered, live_from_ms)
            }
            Err(err @ (Error::NoHistory(_) | Error::HistoryUnavailable { .. })) => {
                tracing::warn!(
                    "{err}: with another session of {user} open, this one may miss what that one shows"
                );
                (None, from.is_none(), None)
            }
            Err(Error::AccessRefused(reason)) => {
                // An account added by an older youtube_server may read its
                // inbox but not its history.
                tracing::warn!(
                    "{user} may not read the history ({reason}); notifications come from the inbox \
                     alone. An account added before histories existed lacks the permission: \
                     remove it and add it again (youtube_server account remove/add {user})"
                );
                (None, from.is_none(), None)
            }
            Err(err) => return Err(err),
        };
        let inbox = Inbox::open(link, user).await?;
        let inbox = Source::spawn(inbox, next_in_inbox, close_inbox);
        let (follow, follows) = mpsc::unbounded_channel();
        let following = Following {
            state: State::Asking {
                link: link.clone(),
                requests: requests.clone(),
                user: user.to_owned(),
            },
            follows,
        };
        let celebrities = Source::spawn(following, next_of_celebrity, close_celebrities);
        Ok(Notifications {
            history,
            held: VecDeque::new(),
            inbox,
            celebrities,
            telling,
            follow,
            ledger,
            opened_at_ms,
            live_from_ms,
            recovered,
            position,
            shown_when_positioned: false,
            acking: Vec::new(),
        })
    }

    /// For a client that keeps its position and comes back after it (a
    /// browser, through `gateway`): a notification handed out with a
    /// position leaves the inbox at once, since the history keeps it for
    /// such a client. One from the inbox alone (it waited there, older than
    /// the session) still leaves only once [`Acks::shown`] says so.
    pub fn resumable(mut self) -> Notifications {
        self.shown_when_positioned = true;
        self
    }

    /// Whether everything after the position the session was opened from is
    /// still kept (always, for a session opened from now).
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The session's position in the history: what a session opened from it
    /// later would start after.
    pub fn position(&self) -> Cursor {
        self.position
    }

    /// What says that notifications have been shown, from any task.
    pub fn acks(&self) -> Acks {
        self.ledger.clone()
    }

    /// The next notification not yet handed out in this session. Fails only
    /// when the connection is closed.
    pub async fn next(&mut self) -> Result<Received> {
        loop {
            if let Update::Notification(received) = self.next_update().await? {
                return Ok(received);
            }
        }
    }

    /// The next update: a notification, or a move of the position.
    ///
    /// Cancel-safe, as `select!` needs: nothing is awaited once an entry is
    /// taken (acknowledgements are spawned), so dropping this future loses
    /// nothing.
    pub async fn next_update(&mut self) -> Result<Update> {
        loop {
            let history = async {
                match self.history.as_mut() {
                    Some(history) => history.entries.recv().await,
                    None => std::future::pending().await,
                }
            };
            let held_until = self.held.front().map(|(deadline, _)| *deadline);
            // Biased, oldest sources first: what waited in the inbox comes
            // before what the history or a celebrity's stream brings now,
            // when both are there at once.
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(held_until.unwrap_or_else(Instant::now)), if held_until.is_some() => {
                    if let Some(update) = self.release_held() {
                        return Ok(update);
                    }
                }
                received = self.inbox.entries.recv() => {
                    let received = received.unwrap_or_else(|| Err(closed()))?;
                    if let Some(update) = self.take_from_inbox(received).await? {
                        return Ok(update);
                    }
                }
                entry = history => {
                    let entry = entry.unwrap_or_else(|| Err(closed()))?;
                    if let Some(update) = self.take_from_history(entry).await? {
                        return Ok(update);
                    }
                }
                upload = self.celebrities.entries.recv() => {
                    let upload = upload.unwrap_or_else(|| Err(closed()))?;
                    if let Some(update) = self.take_from_celebrity(upload) {
                        return Ok(update);
                    }
                }
            }
        }
    }

    async fn take_from_history(&mut self, entry: Entry) -> Result<Option<Update>> {
        Ok(Some(match entry {
            Entry::Gap => Update::Gap,
            Entry::Moved(cursor) => {
                self.position = cursor;
                Update::Moved(cursor)
            }
            Entry::Resumed { cursor, id, before } => {
                // The client had it before it came back, and those before
                // it: shown, so their copies in the inbox may go.
                self.position = cursor;
                let ackers = self.ledger.had_before(before.into_iter().chain([id]));
                self.acknowledge_later(ackers);
                Update::Moved(cursor)
            }
            Entry::Notification {
                notification,
                cursor,
            } => {
                self.position = cursor;
                let id = notification.id();
                if !self.hand_out(id) {
                    return Ok(Some(Update::Moved(cursor)));
                }
                if self.shown_when_positioned {
                    let ackers = self.ledger.ledger().show(id);
                    self.acknowledge_later(ackers);
                }
                Update::Notification(self.received(notification, Some(cursor)))
            }
        }))
    }

    /// A copy from the inbox. One of a notification the history brings
    /// (uploaded since [`Notifications::live_from_ms`]) waits for it: the
    /// client gets each notification with its position whenever it can, so
    /// that a client that comes back after it is not sent it again. Either
    /// way the copy leaves the inbox once the notification is shown.
    async fn take_from_inbox(&mut self, received: inbox::Received) -> Result<Option<Update>> {
        let (notification, acker) = received.into_parts();
        let id = notification.id();
        let shown = {
            let mut ledger = self.ledger.ledger();
            let shown = ledger.shown.contains(&id);
            if !shown {
                ledger.unacked.entry(id).or_default().push(acker.clone());
            }
            shown
        };
        if shown {
            self.acknowledge_later(vec![acker]);
            return Ok(None);
        }
        let from_history = self.history.is_some()
            && self
                .live_from_ms
                .is_some_and(|live_from| notification.uploaded_at_ms() >= live_from);
        if from_history {
            self.held.push_back((Instant::now() + HOLD, notification));
            return Ok(None);
        }
        Ok(self
            .hand_out(id)
            .then(|| Update::Notification(self.received(notification, None))))
    }

    /// A celebrity's upload, which comes from its stream alone.
    fn take_from_celebrity(&mut self, notification: Notification) -> Option<Update> {
        if !self.hand_out(notification.id()) {
            return None;
        }
        if let Some(celebrities) = &self.ledger.ledger().celebrities {
            celebrities.handed_out(&notification);
        }
        Some(Update::Notification(self.received(notification, None)))
    }

    /// The oldest copy held for the history, past its deadline: handed out
    /// without a position, unless the history brought it meanwhile.
    fn release_held(&mut self) -> Option<Update> {
        let (_, notification) = self.held.pop_front()?;
        if !self.hand_out(notification.id()) {
            return None;
        }
        tracing::debug!(id = %notification.id(), "the history did not bring a notification in time; showing the inbox's copy");
        Some(Update::Notification(self.received(notification, None)))
    }

    /// Acknowledges copies in a task of their own (so that nothing is
    /// awaited once an entry is taken), which `close` waits for.
    fn acknowledge_later(&mut self, ackers: Vec<Acker>) {
        if ackers.is_empty() {
            return;
        }
        self.acking.retain(|task| !task.is_finished());
        self.acking.push(tokio::spawn(acknowledge_quietly(ackers)));
    }

    /// Records `id` as handed out; whether it was not before.
    fn hand_out(&self, id: Uuid) -> bool {
        self.ledger.ledger().handed_out.insert(id)
    }

    fn received(&self, notification: Notification, cursor: Option<Cursor>) -> Received {
        if let Some(follow) = Follow::after(&notification) {
            let _ = self.follow.send(follow);
        }
        let away = notification.uploaded_at_ms() < self.opened_at_ms;
        Received {
            notification,
            away,
            cursor,
            acks: self.ledger.clone(),
        }
    }

    /// Ends the session; what it did not acknowledge stays in the inbox.
    /// Copies that reached the session after their notification was shown
    /// (and were not taken yet) are acknowledged first, so that the next
    /// session does not show them again.
    pub async fn close(mut self) {
        while let Ok(Some(Ok(received))) =
            tokio::time::timeout(DRAIN_AT_CLOSE, self.inbox.entries.recv()).await
        {
            let (notification, acker) = received.into_parts();
            if self.ledger.ledger().shown.contains(&notification.id()) {
                acknowledge_quietly(vec![acker]).await;
            }
        }
        for task in self.acking.drain(..) {
            let _ = tokio::time::timeout(CLOSING, task).await;
        }
        let history = async {
            if let Some(history) = self.history {
                history.close().await;
            }
        };
        tokio::join!(history, self.inbox.close(), self.celebrities.close());
        let shown = self.ledger.ledger().celebrities.take();
        if let Some(shown) = shown {
            shown.close(self.telling).await;
        }
    }
}

fn closed() -> Error {
    Error::Stopped("the session's reader stopped".into())
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn next_entry(history: &mut History) -> Boxed<'_, Result<Entry>> {
    Box::pin(history.next())
}

fn close_history(history: History) -> Boxed<'static, ()> {
    Box::pin(history.close())
}

fn next_in_inbox(inbox: &mut Inbox) -> Boxed<'_, Result<inbox::Received>> {
    Box::pin(inbox.next_copy())
}

fn close_inbox(inbox: Inbox) -> Boxed<'static, ()> {
    Box::pin(inbox.close())
}

/// The celebrities of a session: asked of the server in the source's own
/// task, so that a session opens, and shows what its inbox and history hold,
/// while no server answers; and those that become celebrities meanwhile.
struct Following {
    state: State,
    follows: mpsc::UnboundedReceiver<Follow>,
}

enum State {
    Asking {
        link: Link,
        requests: Requests,
        user: String,
    },
    Reading(Celebrities),
}

/// How long a session waits before asking again a server that did not
/// answer which celebrities its user follows, at most.
const ASK_AGAIN_AT_MOST: Duration = Duration::from_secs(60);

impl Following {
    async fn next(&mut self) -> Result<Notification> {
        let mut wait = Duration::from_secs(1);
        loop {
            match &mut self.state {
                State::Reading(celebrities) => return celebrities.next(&mut self.follows).await,
                State::Asking {
                    link,
                    requests,
                    user,
                } => match Celebrities::open(link, requests.clone(), user).await {
                    Ok(celebrities) => self.state = State::Reading(celebrities),
                    Err(Error::ServerTimeout { .. }) => {
                        tracing::debug!("no answer yet about {user}'s celebrities; asking again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(ASK_AGAIN_AT_MOST);
                    }
                    Err(err @ (Error::Refused(_) | Error::UnexpectedReply(_))) => {
                        tracing::warn!(
                            "the server did not say which celebrities {user} follows ({err}); \
                             their uploads are shown at a later session"
                        );
                        self.state =
                            State::Reading(Celebrities::none(link, requests.clone(), user));
                    }
                    Err(err) => return Err(err),
                },
            }
        }
    }

    async fn close(self) {
        if let State::Reading(celebrities) = self.state {
            celebrities.close().await;
        }
    }
}

fn next_of_celebrity(following: &mut Following) -> Boxed<'_, Result<Notification>> {
    Box::pin(following.next())
}

fn close_celebrities(following: Following) -> Boxed<'static, ()> {
    Box::pin(following.close())
}

impl<T: Send + 'static> Source<T> {
    /// Runs `reader` in a task that passes on what `next` reads, until it
    /// fails or the source is closed, then runs `close`.
    fn spawn<R: Send + 'static>(
        mut reader: R,
        next: for<'a> fn(&'a mut R) -> Boxed<'a, Result<T>>,
        close: fn(R) -> Boxed<'static, ()>,
    ) -> Source<T> {
        let (sender, entries) = mpsc::channel(AHEAD);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    _ = stopped.changed() => break,
                    entry = next(&mut reader) => entry,
                };
                let failed = entry.is_err();
                if sender.send(entry).await.is_err() || failed {
                    break;
                }
            }
            close(reader).await;
        });
        Source {
            entries,
            task,
            stop,
        }
    }

    async fn close(self) {
        let _ = self.stop.send(true);
        drop(self.entries);
        let _ = tokio::time::timeout(CLOSING, self.task).await;
    }
}

/// Shows every notification of `user` with `show` — those that waited while
/// the user was away first, then live ones — until `shutdown` resolves.
/// Each is acknowledged only after `show` returns `Ok`.
pub async fn receive_notifications<F>(
    client: &super::Client,
    user: &str,
    mut show: F,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    F: FnMut(&Notification) -> std::io::Result<()>,
{
    let mut notifications =
        Notifications::open(client.link(), &client.requests(), user, None).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let received = tokio::select! {
            () = &mut shutdown => break,
            received = notifications.next() => received?,
        };
        if let Err(err) = show(&received.notification) {
            // Unacknowledged, the notification stays in the inbox for next time.
            tracing::warn!(%err, "could not show a notification; it stays in the inbox");
            break;
        }
        if let Err(err) = received.ack().await {
            // Shown but not acknowledged: it comes again after the
            // reconnection, and this session skips it as already seen.
            tracing::debug!(%err, "could not acknowledge a notification");
        }
    }
    // Unacknowledged notifications go back to the inbox whether or not the
    // close reaches the broker.
    notifications.close().await;
    Ok(())
}
