//! The user's requests: log in, change or list subscriptions, list a
//! YouTuber's videos, like, dislike and comment.

use crate::{
    client::{Client, Requests},
    error::{Error, Result},
    protocol::{Celebrity, Reaction, Reply, Request},
};

pub use crate::protocol::VideoStats;

/// A YouTuber's subscribers and newest videos (at most
/// [`MAX_VIDEOS_LISTED`](crate::protocol::MAX_VIDEOS_LISTED) of `total`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Channel {
    pub youtuber: String,
    pub subscribers: u64,
    pub total: u64,
    pub videos: Vec<VideoStats>,
}

/// The celebrities `user` follows, each with the uploads the user has not
/// been shown, and from when (milliseconds since the epoch) a session reads
/// their streams: what a session asks when it opens.
pub async fn celebrities(requests: &Requests, user: &str) -> Result<(i64, Vec<Celebrity>)> {
    let request = Request::Celebrities {
        user: user.to_owned(),
    };
    match requests.call(request).await? {
        Reply::Celebrities {
            read_from_ms,
            celebrities,
        } => Ok((read_from_ms, celebrities)),
        other => Err(Error::UnexpectedReply(format!(
            "a {} reply to a question about celebrities",
            other.kind()
        ))),
    }
}

/// `youtuber`'s videos, newest first, with their ids and counts. Refused for
/// a YouTuber who has not uploaded any.
pub async fn videos(client: &Client, youtuber: &str) -> Result<Channel> {
    let request = Request::ListVideos {
        youtuber: youtuber.to_owned(),
    };
    into_channel(client.call(request).await?)
}

/// Likes or dislikes a video as `user`, or takes either back (`None`).
/// `video` is the video's id or the start of it. Returns the server's notice
/// (the user had done so already, say).
pub async fn react(
    client: &Client,
    user: &str,
    video: &str,
    reaction: Option<Reaction>,
) -> Result<Option<String>> {
    let request = Request::React {
        user: user.to_owned(),
        video: video.to_owned(),
        reaction,
    };
    into_notice(client.call(request).await?)
}

/// Comments on a video as `user` (`video`: its id or the start of it).
pub async fn comment(client: &Client, user: &str, video: &str, text: &str) -> Result<()> {
    let request = Request::Comment {
        user: user.to_owned(),
        video: video.to_owned(),
        text: text.to_owned(),
    };
    into_notice(client.call(request).await?).map(|_| ())
}

impl Channel {
    /// The videos as a table, one line each, newest first:
    ///
    /// ```text
    /// ID        UPLOADED          LIKES  DISLIKES  COMMENTS  TITLE
    /// 3f2a9c1e  2026-11-30 11:02      12         1         3  Hello
    /// ```
    ///
    /// The ID column shows the first 8 characters of each id, which the
    /// commands that take a video accept.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut table =
            String::from("ID        UPLOADED          LIKES  DISLIKES  COMMENTS  TITLE\n");
        for video in &self.videos {
            let id = video.id.to_string();
            let _ = writeln!(
                table,
                "{}  {}  {:>5}  {:>8}  {:>8}  {}",
                &id[..SHORT_ID],
                local_time(video.uploaded_at_ms),
                video.likes,
                video.dislikes,
                video.comments,
                crate::names::escape_for_terminal(&video.title)
            );
        }
        table
    }
}

/// How many characters of a video's id tables show.
pub const SHORT_ID: usize = 8;

/// `2026-11-30 11:02`, in the machine's time zone.
fn local_time(ms: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(time) => time.format("%Y-%m-%d %H:%M").to_string(),
        None => format!("{ms:>16}"),
    }
}

pub(super) fn into_channel(reply: Reply) -> Result<Channel> {
    match reply {
        Reply::Videos {
            youtuber,
            subscribers,
            total,
            videos,
        } => Ok(Channel {
            youtuber,
            subscribers,
            total,
            videos,
        }),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}

/// A subscription change, as the exercise's `s` and `u`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub youtuber: String,
    pub subscribe: bool,
}

impl SubscriptionChange {
    /// Subscribe to `youtuber`.
    pub fn subscribe(youtuber: impl Into<String>) -> SubscriptionChange {
        SubscriptionChange {
            youtuber: youtuber.into(),
            subscribe: true,
        }
    }

    /// Unsubscribe from `youtuber`.
    pub fn unsubscribe(youtuber: impl Into<String>) -> SubscriptionChange {
        SubscriptionChange {
            youtuber: youtuber.into(),
            subscribe: false,
        }
    }
}

/// Logs `user` in, adding them the first time, and has the user's history kept
/// (the user reads notifications live). Returns the server's notice, if any.
pub async fn login(client: &Client, user: &str) -> Result<Option<String>> {
    let reply = client.call(live_login(user)).await?;
    into_notice(reply)
}

/// Subscribes `user` to a YouTuber or unsubscribes. Returns once the server
/// has stored the change and bound (or unbound) the inbox: an upload sent
/// after this returns reaches (or skips) the user.
pub async fn update_subscription(
    client: &Client,
    user: &str,
    change: &SubscriptionChange,
) -> Result<Option<String>> {
    let reply = client.call(subscription_request(user, change)).await?;
    into_notice(reply)
}

/// Logs in and, if asked, changes a subscription, sending both requests at once
/// (the server applies one user's requests in order). Returns the notices.
pub async fn login_and_update(
    client: &Client,
    user: &str,
    change: Option<&SubscriptionChange>,
) -> Result<Vec<String>> {
    let login = client.send(live_login(user)).await?;
    let update = match change {
        Some(change) => Some(client.send(subscription_request(user, change)).await?),
        None => None,
    };
    let mut notices = Vec::new();
    notices.extend(into_notice(client.wait(login).await?)?);
    if let Some(update) = update {
        notices.extend(into_notice(client.wait(update).await?)?);
    }
    Ok(notices)
}

/// The YouTubers `user` follows, in name order.
pub async fn subscriptions(client: &Client, user: &str) -> Result<Vec<String>> {
    match client
        .call(Request::ListSubscriptions {
            user: user.to_owned(),
        })
        .await?
    {
        Reply::Subscriptions { youtubers } => Ok(youtubers),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}

/// A login of someone who reads notifications as they come: it asks the
/// server for the user's history too (see `client::notifications`).
fn live_login(user: &str) -> Request {
    Request::Login {
        user: user.to_owned(),
        history: true,
    }
}

fn subscription_request(user: &str, change: &SubscriptionChange) -> Request {
    Request::ChangeSubscription {
        user: user.to_owned(),
        youtuber: change.youtuber.clone(),
        subscribe: change.subscribe,
    }
}

fn into_notice(reply: Reply) -> Result<Option<String>> {
    match reply {
        Reply::Done { notice } => Ok(notice),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}
