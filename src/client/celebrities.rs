//! The uploads of the celebrities a user follows, read for a live session.
//!
//! A celebrity's uploads are not copied into its subscribers' inboxes: the
//! server appends each once to the celebrity's stream
//! (`topology::celebrity_stream`), numbered (`Notification::seq`). A session
//! asks the server, when it opens, which celebrities its user follows, and
//! gets for each the uploads the user has not been shown yet and the number
//! of the latest; it then reads each stream from a little before that moment
//! and takes only what is numbered after. Each upload is handed out once, in
//! order; a number skipped (the stream was read from too late, or lost what
//! followed) is asked of the server again.
//!
//! What the user was shown is the server's to remember: the session says so
//! (`Request::Seen`, see [`Shown`]) once the uploads up to a number have all
//! been shown, so that the next session starts after them.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::select_all;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{history::stream_offset, request::Requests};
use crate::{
    broker,
    error::{Error, Result},
    link::{Feed, Link, Opened, Opening, Session},
    protocol::{Notification, Request},
    topology,
};

/// How many uploads the broker may push ahead of the reader, per stream.
const PREFETCH: u16 = 100;

/// How long the reader of a stream the server has not declared yet (it does
/// so right after the celebrity's first streamed upload is stored) looks for
/// it again before giving up on it for this session.
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// How long closing waits for the server to be told what was shown.
const TELLING_AT_CLOSE: Duration = Duration::from_secs(5);

/// The celebrities of one session: what the server said the user missed,
/// then each one's stream.
pub(super) struct Celebrities {
    link: Link,
    requests: Requests,
    user: String,
    /// Per celebrity, the number of the last upload handed out (or that the
    /// server said was the latest when the session opened).
    last: HashMap<String, u64>,
    ready: VecDeque<Notification>,
    streams: Vec<Stream>,
}

/// One celebrity's stream, read on a feed that outlives connections.
struct Stream {
    youtuber: String,
    feed: Feed,
    /// Where to attach again after a lost connection: after the last
    /// delivery read.
    next_offset: Arc<Mutex<Option<u64>>>,
}

impl Celebrities {
    /// Asks the server which celebrities `user` follows and what of theirs
    /// the user missed, and attaches to their streams.
    pub(super) async fn open(link: &Link, requests: Requests, user: &str) -> Result<Celebrities> {
        let (read_from_ms, followed) = super::user::celebrities(&requests, user).await?;
        let mut celebrities = Celebrities {
            link: link.clone(),
            requests,
            user: user.to_owned(),
            last: HashMap::new(),
            ready: VecDeque::new(),
            streams: Vec::with_capacity(followed.len()),
        };
        for celebrity in followed {
            let youtuber = celebrity.youtuber.clone();
            match Stream::open(link, &youtuber, read_from_ms).await {
                Ok(stream) => celebrities.streams.push(stream),
                // Its uploads are not said shown: the next session has them.
                Err(err) => tracing::warn!(
                    "cannot read {}: {err}; {user} is shown {youtuber}'s new uploads at the next \
                     session",
                    topology::celebrity_stream(&youtuber)
                ),
            }
            celebrities.last.insert(youtuber, celebrity.latest);
            celebrities.ready.extend(celebrity.missed);
        }
        Ok(celebrities)
    }

    /// Following no celebrity yet: the server would not say (an older one,
    /// or a refusal).
    pub(super) fn none(link: &Link, requests: Requests, user: &str) -> Celebrities {
        Celebrities {
            link: link.clone(),
            requests,
            user: user.to_owned(),
            last: HashMap::new(),
            ready: VecDeque::new(),
            streams: Vec::new(),
        }
    }

    /// Starts reading the stream of a YouTuber that became a celebrity
    /// after this session asked the server, from its upload after `after`.
    async fn follow(&mut self, follow: Follow) {
        if self.last.contains_key(&follow.youtuber) {
            return;
        }
        let youtuber = follow.youtuber;
        match Stream::open(&self.link, &youtuber, follow.read_from_ms).await {
            Ok(stream) => {
                tracing::debug!(%youtuber, "reading the stream of a new celebrity");
                self.streams.push(stream);
                self.last.insert(youtuber, follow.after);
            }
            Err(err) => tracing::warn!(
                "cannot read {}: {err}; {} is shown {youtuber}'s new uploads at the next session",
                topology::celebrity_stream(&youtuber),
                self.user
            ),
        }
    }

    /// The next upload not handed out before, in order for each celebrity;
    /// meanwhile, follows what `follows` says. Cancel-safe between uploads.
    pub(super) async fn next(
        &mut self,
        follows: &mut mpsc::UnboundedReceiver<Follow>,
    ) -> Result<Notification> {
        loop {
            if let Some(notification) = self.ready.pop_front() {
                return Ok(notification);
            }
            let delivery = async {
                if self.streams.is_empty() {
                    return std::future::pending().await;
                }
                let streams = self.streams.iter_mut();
                let (delivery, index, _) =
                    select_all(streams.map(|stream| Box::pin(stream.feed.next()))).await;
                delivery.map(|delivery| (delivery, index))
            };
            let (delivery, index) = tokio::select! {
                delivery = delivery => delivery?,
                Some(follow) = follows.recv() => {
                    self.follow(follow).await;
                    continue;
                }
            };
            if let Some(offset) = stream_offset(&delivery) {
                *self.streams[index]
                    .next_offset
                    .lock()
                    .expect("never held across a panic") = Some(offset + 1);
            }
            // The acknowledgement of a stream's delivery is only credit.
            let _ = broker::ack(&delivery.acker, BasicAckOptions::default()).await;
            let youtuber = &self.streams[index].youtuber;
            let Some((notification, seq)) = upload_of(&delivery, youtuber) else {
                tracing::warn!(
                    "skipping a message in {} that is not a numbered upload of {youtuber}",
                    topology::celebrity_stream(youtuber)
                );
                continue;
            };
            let youtuber = youtuber.clone();
            let last = self.last.get(&youtuber).copied().unwrap_or_default();
            if seq <= last {
                continue;
            }
            if seq == last + 1 {
                self.last.insert(youtuber, seq);
                self.ready.push_back(notification);
                continue;
            }
            // A gap: what the stream skipped, and this one, are the server's
            // to say.
            let last = self.fill_gap(&youtuber, last).await;
            if seq == last + 1 {
                self.last.insert(youtuber, seq);
                self.ready.push_back(notification);
            } else if seq > last {
                // Numbered past the server's latest: not the server's.
                tracing::warn!(
                    "skipping an upload numbered {seq} in {}, past {youtuber}'s latest ({last})",
                    topology::celebrity_stream(&youtuber)
                );
            }
        }
    }

    /// Asks the server for `youtuber`'s uploads numbered after `last`, which
    /// the stream skipped, and takes them; returns the number of the last one
    /// taken now. If the server does not answer, nothing is taken: the next
    /// upload from the stream asks again, and what is never handed out is
    /// shown at a later session.
    async fn fill_gap(&mut self, youtuber: &str, last: u64) -> u64 {
        tracing::debug!(
            youtuber,
            last,
            "a celebrity's stream skipped uploads; asking the server"
        );
        let followed = match super::user::celebrities(&self.requests, &self.user).await {
            Ok((_, followed)) => followed,
            Err(err) => {
                tracing::warn!(%err, "could not ask the server for {youtuber}'s uploads the stream skipped");
                return last;
            }
        };
        let mut taken = last;
        let missed = followed
            .into_iter()
            .filter(|celebrity| celebrity.youtuber == youtuber)
            .flat_map(|celebrity| celebrity.missed);
        for missed in missed {
            if let Some(seq) = missed.seq().filter(|&seq| seq > taken) {
                taken = seq;
                self.ready.push_back(missed);
            }
        }
        self.last.insert(youtuber.to_owned(), taken);
        taken
    }

    pub(super) async fn close(self) {
        for stream in self.streams {
            stream.feed.close().await;
        }
    }
}

/// A YouTuber that became a celebrity: the session reads its stream from
/// `read_from_ms`, and takes from it the uploads numbered after `after`.
pub(super) struct Follow {
    pub youtuber: String,
    pub after: u64,
    pub read_from_ms: i64,
}

impl Follow {
    /// What `notification` says to follow, if it made its YouTuber a
    /// celebrity.
    pub(super) fn after(notification: &Notification) -> Option<Follow> {
        if !notification.stream_after() {
            return None;
        }
        Some(Follow {
            youtuber: notification.youtuber().to_owned(),
            after: notification.seq()?,
            read_from_ms: notification.uploaded_at_ms() - crate::store::STREAM_READ_MARGIN_MS,
        })
    }
}

/// The upload a delivery from `youtuber`'s stream carries, with its number;
/// `None` for anything else (anyone on the broker may publish there in open
/// mode).
fn upload_of(delivery: &Delivery, youtuber: &str) -> Option<(Notification, u64)> {
    let notification = crate::protocol::decode_notification(&delivery.data).ok()?;
    notification.validate().ok()?;
    let seq = notification.seq()?;
    (notification.youtuber() == youtuber).then_some((notification, seq))
}

impl Stream {
    /// Attaches to `youtuber`'s stream at `read_from_ms`; after a lost
    /// connection, right after the last delivery read.
    ///
    /// RabbitMQ (3.10 here) sometimes fails a consumer that attaches to a
    /// stream created a moment ago with an internal error (`stream_not_found`
    /// in its log) that closes the whole connection. The link connects
    /// again, and the attach is tried again on the new connection, where it
    /// succeeds: this is the one place that works around it.
    async fn open(link: &Link, youtuber: &str, read_from_ms: i64) -> Result<Stream> {
        let next_offset = Arc::new(Mutex::new(None::<u64>));
        let mut attempt = 1;
        loop {
            let generation = link.session().await?.generation();
            let opener = {
                let (youtuber, next_offset) = (youtuber.to_owned(), Arc::clone(&next_offset));
                Box::new(move |session: Session| {
                    let (youtuber, next_offset) = (youtuber.clone(), Arc::clone(&next_offset));
                    Box::pin(async move {
                        let start = match *next_offset.lock().expect("never held across a panic") {
                            Some(offset) => AMQPValue::LongLongInt(offset as i64),
                            None => AMQPValue::Timestamp((read_from_ms.max(0) / 1000) as u64),
                        };
                        attach(&session, &youtuber, start).await
                    }) as Opening
                })
            };
            match Feed::open(link, format!("{youtuber}'s stream"), opener).await {
                Ok(feed) => {
                    return Ok(Stream {
                        youtuber: youtuber.to_owned(),
                        feed,
                        next_offset,
                    });
                }
                Err(err) if attempt < ATTACH_ATTEMPTS && is_connection_error(&err) => {
                    tracing::debug!(youtuber, %err, attempt, "attaching to a stream closed the connection; trying again");
                    attempt += 1;
                    link.session_after(generation).await?;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Whether `err` closed the connection (an AMQP hard error), not just the
/// channel.
fn is_connection_error(err: &Error) -> bool {
    use lapin::protocol::AMQPErrorKind;
    matches!(
        err,
        Error::Broker(err) if matches!(
            err.kind(),
            lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Hard(_))
        )
    )
}

/// How many times a session tries to attach to a stream when the broker
/// closes its connection instead of answering.
const ATTACH_ATTEMPTS: u32 = 4;

/// A consumer on `youtuber`'s stream from `start`, once the stream exists.
async fn attach(session: &Session, youtuber: &str, start: AMQPValue) -> Result<Opened> {
    let stream = topology::celebrity_stream(youtuber);
    let deadline = tokio::time::Instant::now() + STREAM_WAIT;
    loop {
        let channel = session.connection().create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(ShortString::from("x-stream-offset"), start.clone());
        let consumed = channel
            .basic_consume(
                stream.as_str().into(),
                format!("celebrity:{youtuber}:{}", Uuid::new_v4().simple())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await;
        match consumed {
            Ok(consumer) => {
                return Ok(Opened {
                    channel,
                    consumer,
                    owns_channel: true,
                });
            }
            // Declared a moment ago: the broker starts a new stream's
            // members before it can be read.
            Err(err)
                if (broker::is_not_found(&err) || broker::is_unavailable(&err))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) if broker::is_access_refused(&err) => {
                return Err(Error::AccessRefused(format!(
                    "{}; an account added before celebrities existed lacks the permission: \
                     remove it and add it again",
                    broker::amqp_reason(&err)
                )));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Says to the server which celebrity uploads a session has shown: for each
/// celebrity, up to the number before the first handed out and not shown
/// yet, so that none is skipped by the next session however the client
/// acknowledges. Cheap to clone.
#[derive(Clone)]
pub(super) struct Shown(Arc<Mutex<ShownState>>);

struct ShownState {
    /// Handed out, not shown yet: by celebrity, the numbers.
    pending: HashMap<String, BTreeSet<u64>>,
    /// By celebrity, the greatest number shown.
    shown: HashMap<String, u64>,
    /// By celebrity, the number the server was last told.
    told: HashMap<String, u64>,
    /// Which notification is which celebrity's upload.
    of: HashMap<Uuid, (String, u64)>,
    to_tell: Option<mpsc::UnboundedSender<(String, u64)>>,
}

impl Shown {
    /// Starts telling the server, as `user`, through `requests`; the task
    /// ends once every clone is dropped or [`Shown::close`] is called.
    pub(super) fn start(requests: Requests, user: &str) -> (Shown, tokio::task::JoinHandle<()>) {
        let (to_tell, mut told) = mpsc::unbounded_channel::<(String, u64)>();
        let user = user.to_owned();
        let task = tokio::spawn(async move {
            while let Some(first) = told.recv().await {
                // What came meanwhile goes in the same round: the greatest
                // number of each celebrity.
                let mut latest: HashMap<String, u64> = HashMap::from([first]);
                while let Ok((youtuber, seq)) = told.try_recv() {
                    let entry = latest.entry(youtuber).or_default();
                    *entry = (*entry).max(seq);
                }
                for (youtuber, seq) in latest {
                    let request = Request::Seen {
                        user: user.clone(),
                        youtuber,
                        seq,
                    };
                    if let Err(err) = requests.tell(request).await {
                        // Not recorded: the next session shows them again.
                        tracing::warn!(%err, "could not tell the server which uploads were shown");
                    }
                }
            }
        });
        let state = ShownState {
            pending: HashMap::new(),
            shown: HashMap::new(),
            told: HashMap::new(),
            of: HashMap::new(),
            to_tell: Some(to_tell),
        };
        (Shown(Arc::new(Mutex::new(state))), task)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ShownState> {
        self.0.lock().expect("never held across a panic")
    }

    /// Records that `notification`, a celebrity's upload, is handed out.
    pub(super) fn handed_out(&self, notification: &Notification) {
        let Some(seq) = notification.seq() else {
            return;
        };
        let youtuber = notification.youtuber().to_owned();
        let mut state = self.lock();
        state
            .pending
            .entry(youtuber.clone())
            .or_default()
            .insert(seq);
        state.of.insert(notification.id(), (youtuber, seq));
    }

    /// Records that the notification `id` was shown; if it is a celebrity's
    /// upload, the server is told once every one before it is shown too.
    pub(super) fn shown(&self, id: Uuid) {
        let mut state = self.lock();
        let Some((youtuber, seq)) = state.of.remove(&id) else {
            return;
        };
        let pending = state.pending.entry(youtuber.clone()).or_default();
        pending.remove(&seq);
        let first_pending = pending.first().copied();
        let shown = state.shown.entry(youtuber.clone()).or_default();
        *shown = (*shown).max(seq);
        let up_to = match first_pending {
            Some(first) => first.saturating_sub(1),
            None => *shown,
        };
        let told = state.told.entry(youtuber.clone()).or_default();
        if up_to > *told {
            *told = up_to;
            if let Some(to_tell) = &state.to_tell {
                let _ = to_tell.send((youtuber, up_to));
            }
        }
    }

    /// Stops telling: what is on its way is sent, for at most a few seconds.
    pub(super) async fn close(&self, task: tokio::task::JoinHandle<()>) {
        self.lock().to_tell = None;
        let _ = tokio::time::timeout(TELLING_AT_CLOSE, task).await;
    }
}
