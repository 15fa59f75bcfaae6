//! A creator's feed: what users did about a YouTuber and its videos (likes,
//! dislikes, comments, subscribers come and gone), read from the creator's
//! durable inbox, each event once, and gathered so that a burst stays
//! readable: many likes of one video in one window make one line.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    time::Duration,
};

use lapin::{
    Acker,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use uuid::Uuid;

use super::recent::Recent;
use crate::{
    broker,
    error::{Error, Result},
    link::{Feed, Link, Opened, Opening, Session},
    names,
    protocol::{self, CreatorEvent, Reaction},
    topology,
};

/// How many messages (each up to a server batch's events) RabbitMQ may push
/// ahead of those shown.
const PREFETCH: u16 = 64;

/// How many likes (or dislikes) of one video in one window are shown as one
/// line: below it, each is its own line.
pub const GATHER_FROM: usize = 3;

/// How long a burst of events is gathered before its lines are shown.
pub const WINDOW: Duration = Duration::from_millis(500);

/// A line of a creator's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedLine {
    /// One event: `alice liked "Hello"`, `alice subscribed to you`.
    Event(CreatorEvent),
    /// Several likes or dislikes of one video: `12 new likes on "Hello"`.
    Gathered {
        reaction: Reaction,
        video_id: Uuid,
        video: String,
        count: usize,
    },
}

impl FeedLine {
    /// How many events the line stands for.
    pub fn events(&self) -> usize {
        match self {
            FeedLine::Event(_) => 1,
            FeedLine::Gathered { count, .. } => *count,
        }
    }
}

impl fmt::Display for FeedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedLine::Event(event) => event.fmt(f),
            FeedLine::Gathered {
                reaction,
                video,
                count,
                ..
            } => {
                let what = match reaction {
                    Reaction::Like => "likes",
                    Reaction::Dislike => "dislikes",
                };
                write!(
                    f,
                    "{count} new {what} on \"{}\"",
                    names::escape_for_terminal(video)
                )
            }
        }
    }
}

/// The lines for one window's events, in order: the likes (and the
/// dislikes) of a video that come [`GATHER_FROM`] times or more make one
/// line, where the first of them was; comments and subscribers are never
/// gathered.
pub fn gather(events: Vec<CreatorEvent>) -> Vec<FeedLine> {
    let mut counts: HashMap<(Uuid, Reaction), usize> = HashMap::new();
    for event in &events {
        if let CreatorEvent::Reacted {
            video_id, reaction, ..
        } = event
        {
            *counts.entry((*video_id, *reaction)).or_default() += 1;
        }
    }
    let mut placed: HashSet<(Uuid, Reaction)> = HashSet::new();
    let mut lines = Vec::with_capacity(events.len());
    for event in events {
        if let CreatorEvent::Reacted {
            video_id,
            reaction,
            video,
            ..
        } = &event
        {
            let key = (*video_id, *reaction);
            let count = counts[&key];
            if count >= GATHER_FROM {
                if placed.insert(key) {
                    lines.push(FeedLine::Gathered {
                        reaction: *reaction,
                        video_id: *video_id,
                        video: video.clone(),
                        count,
                    });
                }
                continue;
            }
        }
        lines.push(FeedLine::Event(event));
    }
    lines
}

/// A creator's inbox, opened for reading.
pub struct CreatorFeed {
    feed: Feed,
    youtuber: String,
    seen: Recent,
    waiting_at_open: u32,
}

/// The lines of one window, not yet acknowledged: call [`Window::ack`] once
/// they are shown, or their events come back at the next `youtuber watch`.
pub struct Window {
    pub lines: Vec<FeedLine>,
    ackers: Vec<Acker>,
}

impl Window {
    /// Says the lines were shown: their messages leave the inbox. A failure
    /// means the connection is gone: the broker delivers them again, and
    /// the feed, which remembers what it showed, skips them.
    pub async fn ack(self) {
        for acker in self.ackers {
            if let Err(err) = broker::ack(&acker, BasicAckOptions::default()).await {
                tracing::debug!(%err, "could not acknowledge a window already shown");
                return;
            }
        }
    }
}

impl CreatorFeed {
    /// Opens `youtuber`'s creator inbox, which the server declares at the
    /// first upload.
    pub async fn open(link: &Link, youtuber: &str) -> Result<CreatorFeed> {
        names::check_youtuber(youtuber)?;
        let waiting = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let opener = {
            let (youtuber, waiting) = (youtuber.to_owned(), std::sync::Arc::clone(&waiting));
            Box::new(move |session: Session| {
                let (youtuber, waiting) = (youtuber.clone(), std::sync::Arc::clone(&waiting));
                Box::pin(async move {
                    let channel = session.connection().create_channel().await?;
                    channel
                        .basic_qos(PREFETCH, BasicQosOptions::default())
                        .await?;
                    let queue = topology::creator_inbox(&youtuber);
                    let (count, _) = topology::inspect(&channel, &queue).await.map_err(|err| {
                        match broker::is_not_found(&err) {
                            true => Error::NoCreatorInbox(youtuber.clone()),
                            false => Error::Broker(err),
                        }
                    })?;
                    waiting.store(count, std::sync::atomic::Ordering::Relaxed);
                    let consumer = channel
                        .basic_consume(
                            queue.as_str().into(),
                            format!("creator:{youtuber}:{}", Uuid::new_v4().simple())
                                .as_str()
                                .into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|err| match broker::is_access_refused(&err) {
                            true => Error::AccessRefused(broker::amqp_reason(&err)),
                            false => Error::Broker(err),
                        })?;
                    Ok(Opened {
                        channel,
                        consumer,
                        owns_channel: true,
                    })
                }) as Opening
            })
        };
        let feed = Feed::open(link, format!("{youtuber}'s creator inbox"), opener).await?;
        Ok(CreatorFeed {
            feed,
            youtuber: youtuber.to_owned(),
            seen: Recent::default(),
            waiting_at_open: waiting.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// How many messages waited when the feed was opened.
    pub fn waiting_at_open(&self) -> u32 {
        self.waiting_at_open
    }

    /// The next window: waits for an event not shown before, then takes
    /// whatever else comes within `window` of it, and gathers them
    /// ([`gather`]). A message with nothing new in it (not the server's, or
    /// every event in it shown already) is acknowledged at once: a pile of
    /// them never holds up what comes behind.
    pub async fn next_window(&mut self, window: Duration) -> Result<Window> {
        let mut events = Vec::new();
        let mut ackers = Vec::new();
        let mut deadline = None;
        loop {
            let delivery = match deadline {
                None => self.feed.next().await?,
                Some(deadline) => match tokio::time::timeout_at(deadline, self.feed.next()).await {
                    Ok(delivery) => delivery?,
                    Err(_) => break,
                },
            };
            let new: Vec<CreatorEvent> = match protocol::decode_creator_events(&delivery.data) {
                Ok(message) if message.youtuber == self.youtuber => message
                    .events
                    .into_iter()
                    .filter(|event| self.seen.insert(event.id()))
                    .collect(),
                Ok(_) => {
                    tracing::warn!("skipping events meant for another creator");
                    Vec::new()
                }
                Err(reason) => {
                    tracing::warn!(%reason, "skipping a message this client cannot read");
                    Vec::new()
                }
            };
            if new.is_empty() {
                let acker = delivery.acker;
                tokio::spawn(async move {
                    let _ = broker::ack(&acker, BasicAckOptions::default()).await;
                });
                continue;
            }
            events.extend(new);
            ackers.push(delivery.acker);
            if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + window);
            }
        }
        Ok(Window {
            lines: gather(events),
            ackers,
        })
    }

    /// Stops reading; what was not acknowledged stays in the inbox.
    pub async fn close(self) {
        self.feed.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reacted(user: &str, video: Uuid, reaction: Reaction) -> CreatorEvent {
        CreatorEvent::Reacted {
            id: Uuid::new_v4(),
            user: user.into(),
            video_id: video,
            video: format!("Video {}", video.as_u128()),
            reaction,
            at_ms: 0,
        }
    }

    #[test]
    fn a_burst_of_likes_is_one_line_and_comments_stay_apart() {
        let (hello, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let comment = CreatorEvent::Commented {
            id: Uuid::new_v4(),
            user: "carol".into(),
            video_id: hello,
            video: "Video 1".into(),
            text: "Nice!".into(),
            at_ms: 0,
        };
        let mut events = vec![reacted("u0", hello, Reaction::Like), comment.clone()];
        for n in 1..12 {
            events.push(reacted(&format!("u{n}"), hello, Reaction::Like));
        }
        events.push(reacted("dave", other, Reaction::Like));
        events.push(reacted("erin", hello, Reaction::Dislike));
        let lines: Vec<String> = gather(events).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "12 new likes on \"Video 1\"",
                "carol commented on \"Video 1\": Nice!",
                "dave liked \"Video 2\"",
                "erin disliked \"Video 1\"",
            ]
        );
    }

    #[test]
    fn below_the_threshold_each_like_is_its_own_line() {
        let video = Uuid::from_u128(1);
        let events: Vec<CreatorEvent> = (0..GATHER_FROM - 1)
            .map(|n| reacted(&format!("u{n}"), video, Reaction::Like))
            .collect();
        let lines = gather(events);
        assert_eq!(lines.len(), GATHER_FROM - 1);
        assert!(lines.iter().all(|line| matches!(line, FeedLine::Event(_))));
        assert_eq!(
            lines.iter().map(FeedLine::events).sum::<usize>(),
            GATHER_FROM - 1
        );
    }
}
