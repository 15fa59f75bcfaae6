//! Following celebrities' streams, as a `user` session does
//! (`ytnotify::client`): a session asks the server which celebrities its
//! user follows and what of theirs it missed, reads each one's stream from
//! then on, takes each upload numbered after the last one taken, and tells
//! the server what was shown, so that the next session starts after it.
//!
//! Each stream reader has a channel of its own (see [`READERS_PER_CONNECTION`]),
//! on a pool of connections. A celebrity's stream is declared by the server
//! with the upload after the one that made it a celebrity, which a session
//! may try to read first: the simulator declares it (idempotently, with the
//! server's arguments) before anyone attaches. A gap in a stream is not
//! asked of the server again, as the client does: it shows in the report
//! as a lost notification.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::select_all};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{SimError, receiver::lock};
use ytnotify::{
    client::{Requests, history::stream_offset},
    link::{Feed, Link, Opened, Opening, Session},
    protocol::{Celebrity, Notification, Request},
    store::STREAM_READ_MARGIN_MS,
    topology,
};

/// Stream deliveries the broker may push ahead of each reader (the `user`
/// client's figure).
const PREFETCH: u16 = 100;

/// Stream readers per connection. Each has a channel of its own, as in the
/// `user` client: stream consumers that share a channel miss deliveries
/// (seen here, RabbitMQ 3.10 with lapin 4: a new consumer misses the chunk
/// that was already in the stream when it attached), so the inboxes'
/// shared channels cannot be used; a connection takes 2,047 channels at most.
const READERS_PER_CONNECTION: usize = 1_000;

/// `seen` requests in flight at most, all users together.
const TELLING_WINDOW: usize = 256;

/// How long shutting down waits for the last `seen` requests to go out.
const TELLING_AT_SHUT: Duration = Duration::from_secs(30);

/// What the receivers share to follow celebrities: the simulator's clients,
/// to ask and tell the server, and the streams known to exist.
pub struct Following {
    requests: Vec<Requests>,
    turn: AtomicUsize,
    declared: tokio::sync::Mutex<HashSet<String>>,
    /// The declaring side of `declared`: a connection of its own, so that
    /// a refused declaration closes nobody's consumers.
    declaring: Link,
    url: String,
    /// The readers' connections, and how many readers went to the last.
    reading: tokio::sync::Mutex<(Vec<Link>, usize)>,
    telling: std::sync::Mutex<Option<mpsc::UnboundedSender<(String, String, u64)>>>,
    teller: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Following {
    /// Follows through `requests` (one per client, used in turn).
    pub async fn start(url: &str, requests: Vec<Requests>) -> Result<Arc<Following>, SimError> {
        let declaring = Link::connect(
            &ytnotify::broker::Endpoint::new(url),
            "simulate-celebrity-streams",
        )
        .await?;
        let (telling, told) = mpsc::unbounded_channel();
        let teller = tokio::spawn(tell(requests.clone(), told));
        Ok(Arc::new(Following {
            requests,
            turn: AtomicUsize::new(0),
            declared: tokio::sync::Mutex::new(HashSet::new()),
            declaring,
            url: url.to_owned(),
            reading: tokio::sync::Mutex::new((Vec::new(), 0)),
            telling: std::sync::Mutex::new(Some(telling)),
            teller: std::sync::Mutex::new(Some(teller)),
        }))
    }

    fn requests(&self) -> &Requests {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.requests[turn % self.requests.len()]
    }

    /// The connection for the next stream reader.
    async fn link(&self) -> Result<Link, SimError> {
        let mut reading = self.reading.lock().await;
        let (links, on_last) = &mut *reading;
        if links.is_empty() || *on_last == READERS_PER_CONNECTION {
            let name = format!("simulate-celebrity-readers-{}", links.len());
            links.push(Link::connect(&ytnotify::broker::Endpoint::new(&self.url), &name).await?);
            *on_last = 0;
        }
        *on_last += 1;
        Ok(links.last().expect("one was just opened").clone())
    }

    /// What the server says `user` follows: from when to read the streams,
    /// and each celebrity with what the user missed.
    pub async fn ask(&self, user: &str) -> Result<(i64, Vec<Celebrity>), SimError> {
        Ok(ytnotify::client::user::celebrities(self.requests(), user).await?)
    }

    /// Tells the server, soon, that `user` was shown `youtuber`'s uploads up
    /// to `seq`.
    pub fn shown(&self, user: &str, youtuber: &str, seq: u64) {
        if let Some(telling) = lock(&self.telling).as_ref() {
            let _ = telling.send((user.to_owned(), youtuber.to_owned(), seq));
        }
    }

    /// Declares `youtuber`'s stream unless it was already.
    async fn ensure_stream(&self, youtuber: &str) -> Result<(), SimError> {
        let mut declared = self.declared.lock().await;
        if declared.contains(youtuber) {
            return Ok(());
        }
        let mut attempt = 1;
        loop {
            let session = self.declaring.session().await?;
            match probe(&session, youtuber).await {
                Ok(()) => break,
                Err(err) if attempt < PROBE_ATTEMPTS => {
                    tracing::debug!(youtuber, %err, attempt, "a new stream cannot be read yet");
                    attempt += 1;
                    if session.is_alive() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    } else {
                        self.declaring.session_after(session.generation()).await?;
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        declared.insert(youtuber.to_owned());
        Ok(())
    }

    /// Sends what is left to tell, then closes.
    pub async fn shut(&self) {
        lock(&self.telling).take();
        let teller = lock(&self.teller).take();
        if let Some(teller) = teller
            && tokio::time::timeout(TELLING_AT_SHUT, teller).await.is_err()
        {
            tracing::warn!("the last `seen` requests did not go out within {TELLING_AT_SHUT:?}");
        }
        self.declaring.close().await;
        for link in &self.reading.lock().await.0 {
            link.close().await;
        }
    }
}

/// How many times a stream is declared and read on the declaring
/// connection before giving up on it.
const PROBE_ATTEMPTS: u32 = 10;

/// Declares `youtuber`'s stream and attaches to it once, on a channel of its
/// own. RabbitMQ 3.10 sometimes answers the first consumer of a stream
/// created a moment ago with an internal error that closes the whole
/// connection (see ARCHITECTURE.md): that must happen here, where no other
/// consumer is, and not on a readers' connection, which holds a thousand.
async fn probe(session: &Session, youtuber: &str) -> Result<(), lapin::Error> {
    let channel = session.connection().create_channel().await?;
    topology::declare_celebrity_stream(&channel, youtuber).await?;
    channel
        .basic_qos(1, lapin::options::BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongString("next".into()),
    );
    let consumer = channel
        .basic_consume(
            topology::celebrity_stream(youtuber).as_str().into(),
            "simulate-probe".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;
    let _ = channel
        .basic_cancel(
            consumer.tag(),
            lapin::options::BasicCancelOptions::default(),
        )
        .await;
    let _ = channel.close(200, "probed".into()).await;
    Ok(())
}

/// Sends the `seen` requests, the greatest number of each (user, celebrity)
/// of what came meanwhile, [`TELLING_WINDOW`] at a time.
async fn tell(requests: Vec<Requests>, mut told: mpsc::UnboundedReceiver<(String, String, u64)>) {
    let mut turn = 0usize;
    while let Some(first) = told.recv().await {
        let mut latest: HashMap<(String, String), u64> = HashMap::new();
        let mut note = |(user, youtuber, seq): (String, String, u64)| {
            let entry = latest.entry((user, youtuber)).or_default();
            *entry = (*entry).max(seq);
        };
        note(first);
        while let Ok(more) = told.try_recv() {
            note(more);
        }
        let sends = latest.into_iter().map(|((user, youtuber), seq)| {
            turn += 1;
            let requests = requests[turn % requests.len()].clone();
            async move {
                let request = Request::Seen {
                    user,
                    youtuber,
                    seq,
                };
                if let Err(err) = requests.tell(request).await {
                    tracing::warn!(%err, "could not tell the server which uploads were shown");
                }
            }
        });
        futures::stream::iter(sends)
            .buffer_unordered(TELLING_WINDOW)
            .collect::<()>()
            .await;
    }
}

/// A stream offset at `ms` since the epoch, to the second.
fn timestamp(ms: i64) -> AMQPValue {
    AMQPValue::Timestamp((ms.max(0) / 1000) as u64)
}

/// One celebrity's stream, read for one session.
struct Stream {
    youtuber: String,
    feed: Feed,
    /// Where to attach again on a new connection: after the last delivery.
    next_offset: Arc<std::sync::Mutex<Option<u64>>>,
}

/// The celebrities one user's session follows.
pub(crate) struct Followed {
    user: String,
    following: Arc<Following>,
    /// Per celebrity, the number of the last upload taken.
    last: HashMap<String, u64>,
    streams: Vec<Stream>,
}

/// What a stream's delivery gave: an upload to take, or nothing.
pub(crate) enum Read {
    Upload(Notification),
    Nothing,
}

impl Followed {
    /// Asks the server what `user` follows; returns the session and the
    /// uploads the user missed, to be taken first.
    pub(crate) async fn open(
        following: &Arc<Following>,
        user: &str,
    ) -> Result<(Followed, Vec<Notification>), SimError> {
        let (read_from_ms, followed) = following.ask(user).await?;
        let mut session = Followed {
            user: user.to_owned(),
            following: Arc::clone(following),
            last: HashMap::new(),
            streams: Vec::new(),
        };
        let mut missed = Vec::new();
        for celebrity in followed {
            session
                .attach(&celebrity.youtuber, timestamp(read_from_ms))
                .await?;
            session
                .last
                .insert(celebrity.youtuber.clone(), celebrity.latest);
            missed.extend(celebrity.missed);
        }
        Ok((session, missed))
    }

    /// Follows the YouTuber that `notification` made a celebrity, if it did.
    pub(crate) async fn follow_after(
        &mut self,
        notification: &Notification,
    ) -> Result<(), SimError> {
        let (true, Some(seq)) = (notification.stream_after(), notification.seq()) else {
            return Ok(());
        };
        let youtuber = notification.youtuber();
        if self.last.contains_key(youtuber) {
            return Ok(());
        }
        let read_from_ms = notification.uploaded_at_ms() - STREAM_READ_MARGIN_MS;
        self.attach(youtuber, timestamp(read_from_ms)).await?;
        self.last.insert(youtuber.to_owned(), seq);
        Ok(())
    }

    async fn attach(&mut self, youtuber: &str, start: AMQPValue) -> Result<(), SimError> {
        self.following.ensure_stream(youtuber).await?;
        let next_offset = Arc::new(std::sync::Mutex::new(None::<u64>));
        let opener = {
            let next_offset = Arc::clone(&next_offset);
            let (stream, tag, start) = (
                topology::celebrity_stream(youtuber),
                format!("simulate-celebrity:{}:{youtuber}", self.user),
                start,
            );
            Box::new(move |session: Session| {
                let next_offset = Arc::clone(&next_offset);
                let (stream, tag, start) = (stream.clone(), tag.clone(), start.clone());
                Box::pin(async move {
                    let start = match *lock(&next_offset) {
                        Some(offset) => AMQPValue::LongLongInt(offset as i64),
                        None => start,
                    };
                    let mut arguments = FieldTable::default();
                    arguments.insert(ShortString::from("x-stream-offset"), start);
                    let channel = session.connection().create_channel().await?;
                    channel
                        .basic_qos(PREFETCH, lapin::options::BasicQosOptions::default())
                        .await?;
                    let tag = format!("{tag}:{}", uuid::Uuid::new_v4().simple());
                    let consumer = channel
                        .basic_consume(
                            stream.as_str().into(),
                            tag.as_str().into(),
                            BasicConsumeOptions::default(),
                            arguments,
                        )
                        .await?;
                    Ok(Opened {
                        channel,
                        consumer,
                        owns_channel: true,
                    })
                }) as Opening
            })
        };
        let link = self.following.link().await?;
        let feed = Feed::open(
            &link,
            format!("simulate: {}'s {youtuber} stream", self.user),
            opener,
        )
        .await?;
        self.streams.push(Stream {
            youtuber: youtuber.to_owned(),
            feed,
            next_offset,
        });
        Ok(())
    }

    /// The next delivery from any stream, with the stream's index; pending
    /// while there is none.
    pub(crate) async fn next(&mut self) -> ytnotify::Result<(Delivery, usize)> {
        if self.streams.is_empty() {
            return std::future::pending().await;
        }
        let feeds = self
            .streams
            .iter_mut()
            .map(|stream| Box::pin(stream.feed.next()));
        let (delivery, index, _) = select_all(feeds).await;
        delivery.map(|delivery| (delivery, index))
    }

    /// Reads a delivery of stream `index`: the upload, if it is the
    /// celebrity's and numbered after the last one taken.
    pub(crate) async fn read(&mut self, delivery: Delivery, index: usize) -> Read {
        let stream = &self.streams[index];
        if let Some(offset) = stream_offset(&delivery) {
            *lock(&stream.next_offset) = Some(offset + 1);
        }
        // The acknowledgement of a stream's delivery is only credit.
        let _ = ytnotify::broker::ack(&delivery, BasicAckOptions::default()).await;
        let upload = ytnotify::protocol::decode_notification(&delivery.data)
            .ok()
            .filter(|notification| notification.youtuber() == stream.youtuber)
            .and_then(|notification| Some((notification.seq()?, notification)));
        let Some((seq, notification)) = upload else {
            return Read::Nothing;
        };
        let last = self.last.entry(stream.youtuber.clone()).or_default();
        if seq <= *last {
            return Read::Nothing;
        }
        *last = seq;
        Read::Upload(notification)
    }

    /// Tells the server `notification` was shown, if it is a celebrity's
    /// numbered upload.
    pub(crate) fn shown(&self, notification: &Notification) {
        if let Some(seq) = notification.seq()
            && self.last.contains_key(notification.youtuber())
        {
            self.following
                .shown(&self.user, notification.youtuber(), seq);
        }
    }

    pub(crate) async fn close(self) {
        for stream in self.streams {
            stream.feed.close().await;
        }
    }
}
