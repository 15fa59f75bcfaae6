//! The wire format: every message that crosses RabbitMQ, as versioned, tagged JSON.
//!
//! Each message is one JSON object with a protocol version `v`, a `type` tag and
//! the fields of that type:
//!
//! ```json
//! {"v":1,"id":"6f1c…","type":"subscription","user":"alice","youtuber":"bob","subscribe":true}
//! ```
//!
//! Readers ignore fields they do not know, so a newer writer may add fields
//! without breaking older readers; a new `type` is refused by name (the server
//! dead-letters it with that reason), never misread. This module is pure:
//! encoding and decoding only, no I/O.
//!
//! Anyone on the broker can publish into an inbox or a reply queue, so a
//! client must not print what it reads unchecked: `decode_reply` refuses a
//! reply whose texts are not safe to show, a client skips a notification
//! that fails [`Notification::validate`], and `Display` escapes whatever is
//! left (see [`names::escape_for_terminal`]).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::names::{self, InvalidName};

/// The protocol version this build writes and the newest it reads.
pub const PROTOCOL_VERSION: u64 = 1;

/// Largest message the server accepts; anything bigger is dead-lettered.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest `notice` or `reason` a client accepts in a reply, in characters.
pub const MAX_REPLY_TEXT_CHARS: usize = 2_000;

/// A request from a user or a YouTuber to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// A user logs in; the server adds the user the first time, and declares
    /// the user's inbox. `history`: a live session (`user watch`, a browser
    /// tab) asks for the user's history too, which only such users have.
    Login {
        user: String,
        /// Absent on the wire means `false` (older clients).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        history: bool,
    },
    /// A user subscribes to (`subscribe: true`) or unsubscribes from a YouTuber.
    #[serde(rename = "subscription")]
    ChangeSubscription {
        user: String,
        youtuber: String,
        subscribe: bool,
    },
    /// A user asks which YouTubers it follows.
    #[serde(rename = "subscriptions")]
    ListSubscriptions { user: String },
    /// A YouTuber uploads a video; the server adds the YouTuber the first time.
    Upload { youtuber: String, video: String },
    /// A user likes or dislikes a video, or takes either back (`reaction`
    /// null). `video` is the video's id or the start of it.
    #[serde(rename = "reaction")]
    React {
        user: String,
        video: String,
        reaction: Option<Reaction>,
    },
    /// A user comments on a video (`video`: its id or the start of it).
    Comment {
        user: String,
        video: String,
        text: String,
    },
    /// Anyone asks for a YouTuber's videos, newest first: what a channel's
    /// page shows to all.
    #[serde(rename = "videos")]
    ListVideos { youtuber: String },
    /// A YouTuber asks for its subscribers and its videos' counts.
    Stats { youtuber: String },
    /// A live session asks which YouTubers its user follows publish to a
    /// stream (celebrities: `topology::celebrity_stream`), and what of theirs
    /// the user has not been shown yet.
    Celebrities { user: String },
    /// A session says it has shown the user `youtuber`'s streamed uploads up
    /// to number `seq`. Sent without waiting for a reply.
    Seen {
        user: String,
        youtuber: String,
        seq: u64,
    },
}

/// What a user thinks of a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    Like,
    Dislike,
}

impl Reaction {
    /// `like` or `dislike`, as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Reaction::Like => "like",
            Reaction::Dislike => "dislike",
        }
    }

    /// `liked` or `disliked`, as lines say it.
    pub fn past_tense(self) -> &'static str {
        match self {
            Reaction::Like => "liked",
            Reaction::Dislike => "disliked",
        }
    }
}

impl Request {
    /// Checks every name the request carries.
    pub fn validate(&self) -> Result<(), InvalidName> {
        match self {
            Request::Login { user, .. }
            | Request::ListSubscriptions { user }
            | Request::Celebrities { user } => names::check_user(user),
            Request::ChangeSubscription { user, youtuber, .. }
            | Request::Seen { user, youtuber, .. } => {
                names::check_user(user)?;
                names::check_youtuber(youtuber)
            }
            Request::Upload { youtuber, video } => {
                names::check_youtuber(youtuber)?;
                names::check_video(video)
            }
            Request::React { user, video, .. } => {
                names::check_user(user)?;
                names::check_video_ref(video)
            }
            Request::Comment { user, video, text } => {
                names::check_user(user)?;
                names::check_video_ref(video)?;
                names::check_comment(text)
            }
            Request::ListVideos { youtuber } | Request::Stats { youtuber } => {
                names::check_youtuber(youtuber)
            }
        }
    }

    /// Whether the request only asks (and is neither stored nor recorded).
    pub fn is_query(&self) -> bool {
        matches!(
            self,
            Request::ListSubscriptions { .. }
                | Request::ListVideos { .. }
                | Request::Stats { .. }
                | Request::Celebrities { .. }
        )
    }

    /// A login without history: what every client but a live session sends.
    pub fn login(user: impl Into<String>) -> Request {
        Request::Login {
            user: user.into(),
            history: false,
        }
    }

    /// The user or YouTuber the request is about: its partition follows
    /// the name (`topology::partition_of`).
    pub fn subject(&self) -> &str {
        match self {
            Request::Login { user, .. }
            | Request::ChangeSubscription { user, .. }
            | Request::ListSubscriptions { user }
            | Request::React { user, .. }
            | Request::Comment { user, .. }
            | Request::Celebrities { user }
            | Request::Seen { user, .. } => user,
            Request::Upload { youtuber, .. }
            | Request::ListVideos { youtuber }
            | Request::Stats { youtuber } => youtuber,
        }
    }

    /// The type tag, as it appears on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Login { .. } => "login",
            Request::ChangeSubscription { .. } => "subscription",
            Request::ListSubscriptions { .. } => "subscriptions",
            Request::Upload { .. } => "upload",
            Request::React { .. } => "reaction",
            Request::Comment { .. } => "comment",
            Request::ListVideos { .. } => "videos",
            Request::Stats { .. } => "stats",
            Request::Celebrities { .. } => "celebrities",
            Request::Seen { .. } => "seen",
        }
    }
}

/// The type tags of [`Request`], as on the wire.
const REQUEST_TYPES: [&str; 10] = [
    "login",
    "subscription",
    "subscriptions",
    "upload",
    "reaction",
    "comment",
    "videos",
    "stats",
    "celebrities",
    "seen",
];

/// A request with the id that makes it idempotent: the server applies each id once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub id: Uuid,
    #[serde(flatten)]
    pub request: Request,
}

impl RequestEnvelope {
    /// Wraps a request with a fresh random id.
    pub fn new(request: Request) -> Self {
        RequestEnvelope {
            id: Uuid::new_v4(),
            request,
        }
    }
}

/// The server's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// The request is applied and durable. `notice` carries advice worth showing.
    Done {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notice: Option<String>,
    },
    /// The YouTubers a user follows, in name order.
    Subscriptions { youtubers: Vec<String> },
    /// A YouTuber's subscribers and videos, newest first: the latest
    /// [`MAX_VIDEOS_LISTED`] of `total`.
    Videos {
        youtuber: String,
        subscribers: u64,
        total: u64,
        videos: Vec<VideoStats>,
    },
    /// The request was refused and changed nothing.
    Refused { reason: String },
    /// The celebrities a user follows: for each, the uploads the user has
    /// not been shown (the latest [`MAX_MISSED_LISTED`] at most), and the
    /// number of its latest upload. A session reads each one's stream from
    /// `read_from_ms` on, and takes from it the uploads numbered after that.
    Celebrities {
        read_from_ms: i64,
        celebrities: Vec<Celebrity>,
    },
}

/// A celebrity a user follows, in [`Reply::Celebrities`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Celebrity {
    pub youtuber: String,
    /// The number of its latest upload (0: none yet).
    pub latest: u64,
    /// Its uploads numbered up to `latest` that the user has not been shown,
    /// oldest first, each with its `seq`.
    pub missed: Vec<Notification>,
}

/// The most uploads of one celebrity that a [`Reply::Celebrities`] brings:
/// the latest. Like a full inbox, a user away for longer is shown those.
pub const MAX_MISSED_LISTED: usize = 100;

impl Reply {
    /// The reply with its texts escaped and cut to fit [`Reply::validate`]:
    /// what a server sends, whatever went into its reasons (a broker's error
    /// text, a long list of names).
    pub fn fitted(self) -> Reply {
        match self {
            Reply::Done { notice } => Reply::Done {
                notice: notice.map(|notice| fit_reply_text(&notice)),
            },
            Reply::Refused { reason } => Reply::Refused {
                reason: fit_reply_text(&reason),
            },
            listing @ (Reply::Subscriptions { .. }
            | Reply::Videos { .. }
            | Reply::Celebrities { .. }) => listing,
        }
    }

    /// Checks that the reply is safe to print: `notice` and `reason` hold at
    /// most [`MAX_REPLY_TEXT_CHARS`] characters and no control or format
    /// character, and every name in `youtubers` is a valid YouTuber name.
    pub fn validate(&self) -> Result<(), InvalidReply> {
        match self {
            Reply::Done { notice: None } => Ok(()),
            Reply::Done {
                notice: Some(notice),
            } => check_reply_text("notice", notice),
            Reply::Refused { reason } => check_reply_text("reason", reason),
            Reply::Subscriptions { youtubers } => {
                youtubers.iter().enumerate().try_for_each(|(index, name)| {
                    names::check_youtuber(name).map_err(|invalid| InvalidReply {
                        field: format!("youtubers[{index}]"),
                        problem: format!("holds an {invalid}"),
                    })
                })
            }
            Reply::Videos {
                youtuber, videos, ..
            } => {
                names::check_youtuber(youtuber).map_err(|invalid| InvalidReply {
                    field: "youtuber".to_owned(),
                    problem: format!("holds an {invalid}"),
                })?;
                videos.iter().enumerate().try_for_each(|(index, video)| {
                    names::check_video(&video.title).map_err(|invalid| InvalidReply {
                        field: format!("videos[{index}].title"),
                        problem: format!("holds an {invalid}"),
                    })
                })
            }
            Reply::Celebrities { celebrities, .. } => {
                celebrities
                    .iter()
                    .enumerate()
                    .try_for_each(|(index, celebrity)| {
                        let invalid = |field: String, invalid: InvalidName| InvalidReply {
                            field,
                            problem: format!("holds an {invalid}"),
                        };
                        names::check_youtuber(&celebrity.youtuber)
                            .map_err(|e| invalid(format!("celebrities[{index}].youtuber"), e))?;
                        celebrity
                            .missed
                            .iter()
                            .enumerate()
                            .try_for_each(|(at, missed)| {
                                missed.validate().map_err(|e| {
                                    invalid(format!("celebrities[{index}].missed[{at}]"), e)
                                })?;
                                if missed.youtuber() != celebrity.youtuber || missed.seq().is_none()
                                {
                                    return Err(InvalidReply {
                                        field: format!("celebrities[{index}].missed[{at}]"),
                                        problem: "is not a numbered upload of that YouTuber"
                                            .to_owned(),
                                    });
                                }
                                Ok(())
                            })
                    })
            }
        }
    }

    /// The type tag, as it appears on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Done { .. } => "done",
            Reply::Subscriptions { .. } => "subscriptions",
            Reply::Videos { .. } => "videos",
            Reply::Refused { .. } => "refused",
            Reply::Celebrities { .. } => "celebrities",
        }
    }
}

/// The most videos a [`Reply::Videos`] lists: the newest. A hundred titles
/// of 100 four-byte characters still fit in a message.
pub const MAX_VIDEOS_LISTED: usize = 100;

/// A video and what users made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoStats {
    pub id: Uuid,
    pub title: String,
    /// Upload time, in milliseconds since the Unix epoch.
    pub uploaded_at_ms: i64,
    pub likes: u64,
    pub dislikes: u64,
    pub comments: u64,
}

/// Makes any text fit to be a reply's `notice` or `reason`: control and
/// format characters escaped, and cut to [`MAX_REPLY_TEXT_CHARS`] characters
/// (the last one then `…`). Text that already fits comes back unchanged.
pub fn fit_reply_text(text: &str) -> String {
    let escaped = names::escape_for_terminal(text);
    if escaped.chars().nth(MAX_REPLY_TEXT_CHARS).is_none() {
        return escaped.into_owned();
    }
    let mut cut: String = escaped.chars().take(MAX_REPLY_TEXT_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn check_reply_text(field: &str, text: &str) -> Result<(), InvalidReply> {
    let fail = |problem: String| InvalidReply {
        field: field.to_owned(),
        problem,
    };
    let count = text.chars().count();
    if count > MAX_REPLY_TEXT_CHARS {
        return Err(fail(format!(
            "has {count} characters; a reply holds at most {MAX_REPLY_TEXT_CHARS}"
        )));
    }
    match names::first_unprintable(text) {
        Some(bad) => Err(fail(format!(
            "has {bad}; a reply holds printable text only"
        ))),
        None => Ok(()),
    }
}

/// A reply that a client must not show, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct InvalidReply {
    /// The field as written on the wire: `notice`, `reason`, `youtubers[2]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A notification delivered to a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notification {
    /// A YouTuber the user follows uploaded a video. `id` is the video's id:
    /// the same upload always carries the same id, so clients de-duplicate by it.
    VideoUploaded {
        id: Uuid,
        youtuber: String,
        video: String,
        /// Upload time, in milliseconds since the Unix epoch.
        uploaded_at_ms: i64,
        /// The upload's number among its YouTuber's uploads (1, 2, …):
        /// how a reader of a celebrity's stream keeps its place. Absent
        /// from uploads stored by older servers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// The YouTuber became a celebrity with this upload: the later ones
        /// go to its stream (`topology::celebrity_stream`), which a session
        /// that shows this one starts reading.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stream_after: bool,
    },
}

impl Notification {
    /// The YouTuber who uploaded.
    pub fn youtuber(&self) -> &str {
        match self {
            Notification::VideoUploaded { youtuber, .. } => youtuber,
        }
    }

    /// The upload's number among its YouTuber's uploads, if known.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Notification::VideoUploaded { seq, .. } => *seq,
        }
    }

    /// Whether the YouTuber's later uploads go to its stream.
    pub fn stream_after(&self) -> bool {
        match self {
            Notification::VideoUploaded { stream_after, .. } => *stream_after,
        }
    }

    /// The id clients de-duplicate by.
    pub fn id(&self) -> Uuid {
        match self {
            Notification::VideoUploaded { id, .. } => *id,
        }
    }

    /// When the server stored the upload, in milliseconds since the Unix epoch.
    pub fn uploaded_at_ms(&self) -> i64 {
        match self {
            Notification::VideoUploaded { uploaded_at_ms, .. } => *uploaded_at_ms,
        }
    }

    /// Checks the names a notification carries, as the server checked them
    /// before sending: one that fails was not written by the server.
    pub fn validate(&self) -> Result<(), InvalidName> {
        match self {
            Notification::VideoUploaded {
                youtuber, video, ..
            } => {
                names::check_youtuber(youtuber)?;
                names::check_video(video)
            }
        }
    }
}

impl std::fmt::Display for Notification {
    /// The line a user sees: `New Notification: <youtuber> uploaded <video>`.
    ///
    /// The names are escaped even though clients validate them first: a
    /// notification shown without validation still cannot command the
    /// terminal. A valid one prints exactly as sent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notification::VideoUploaded {
                youtuber, video, ..
            } => write!(
                f,
                "New Notification: {} uploaded {}",
                names::escape_for_terminal(youtuber),
                names::escape_for_terminal(video)
            ),
        }
    }
}

/// What a creator's inbox (`topology::creator_inbox`) holds: what users did
/// about the creator and its videos, several events to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "creator_events")]
pub struct CreatorEvents {
    pub youtuber: String,
    pub events: Vec<CreatorEvent>,
}

/// One thing a user did that its creator hears of. `id` is the id of the
/// user's request: the same event always carries the same id, so a creator
/// shows each once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CreatorEvent {
    /// A user liked or disliked a video (from nothing, or from the other).
    Reacted {
        id: Uuid,
        user: String,
        video_id: Uuid,
        video: String,
        reaction: Reaction,
        at_ms: i64,
    },
    Commented {
        id: Uuid,
        user: String,
        video_id: Uuid,
        video: String,
        text: String,
        at_ms: i64,
    },
    Subscribed {
        id: Uuid,
        user: String,
        at_ms: i64,
    },
    Unsubscribed {
        id: Uuid,
        user: String,
        at_ms: i64,
    },
}

impl CreatorEvent {
    /// The id a creator de-duplicates by.
    pub fn id(&self) -> Uuid {
        match self {
            CreatorEvent::Reacted { id, .. }
            | CreatorEvent::Commented { id, .. }
            | CreatorEvent::Subscribed { id, .. }
            | CreatorEvent::Unsubscribed { id, .. } => *id,
        }
    }

    /// The user who did it.
    pub fn user(&self) -> &str {
        match self {
            CreatorEvent::Reacted { user, .. }
            | CreatorEvent::Commented { user, .. }
            | CreatorEvent::Subscribed { user, .. }
            | CreatorEvent::Unsubscribed { user, .. } => user,
        }
    }

    /// Checks what the event carries, as the server checked it before
    /// storing: one that fails was not written by the server.
    pub fn validate(&self) -> Result<(), InvalidName> {
        names::check_user(self.user())?;
        match self {
            CreatorEvent::Reacted { video, .. } => names::check_video(video),
            CreatorEvent::Commented { video, text, .. } => {
                names::check_video(video)?;
                names::check_comment(text)
            }
            CreatorEvent::Subscribed { .. } | CreatorEvent::Unsubscribed { .. } => Ok(()),
        }
    }
}

impl std::fmt::Display for CreatorEvent {
    /// The line a creator sees: `alice liked "Hello"`, `alice commented on
    /// "Hello": Nice!`, `alice subscribed to you`. Escaped, as notifications are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = names::escape_for_terminal(self.user());
        match self {
            CreatorEvent::Reacted {
                video, reaction, ..
            } => write!(
                f,
                "{user} {} \"{}\"",
                reaction.past_tense(),
                names::escape_for_terminal(video)
            ),
            CreatorEvent::Commented { video, text, .. } => write!(
                f,
                "{user} commented on \"{}\": {}",
                names::escape_for_terminal(video),
                names::escape_for_terminal(text)
            ),
            CreatorEvent::Subscribed { .. } => write!(f, "{user} subscribed to you"),
            CreatorEvent::Unsubscribed { .. } => write!(f, "{user} unsubscribed from you"),
        }
    }
}

/// Why a message could not be decoded. The text is the reason attached to a
/// dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    /// The body is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// The `v` field is missing or not a whole number.
    #[error("missing or invalid protocol version \"v\" (this server speaks v{PROTOCOL_VERSION})")]
    MissingVersion,
    /// The message was written by a newer protocol version.
    #[error("unsupported protocol version {0} (this server speaks v{PROTOCOL_VERSION})")]
    UnsupportedVersion(u64),
    /// The `type` field is missing.
    #[error("missing message \"type\"")]
    MissingType,
    /// The `type` is not one this reader knows.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The type is known but its fields are wrong.
    #[error("malformed {kind:?} message: {detail}")]
    Malformed { kind: String, detail: String },
}

#[derive(Serialize)]
struct Versioned<'a, T> {
    v: u64,
    #[serde(flatten)]
    body: &'a T,
}

/// Encodes any message of this protocol as versioned JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let versioned = Versioned {
        v: PROTOCOL_VERSION,
        body: message,
    };
    // Serialising these plain structs to a Vec cannot fail: every key is a
    // string and no type has a fallible Serialize impl.
    serde_json::to_vec(&versioned).expect("protocol messages always serialise")
}

/// Decodes a message, naming what is wrong when it cannot.
///
/// `known` lists the type tags of `T`, so that an unknown type is reported as
/// such instead of as a generic parse error.
fn decode<T: DeserializeOwned>(bytes: &[u8], known: &[&str]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::NotJson(one_line(&e.to_string())))?;
    let object = value
        .as_object()
        .ok_or_else(|| DecodeError::NotJson(format!("found {}", json_kind(&value))))?;
    let version = object
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .ok_or(DecodeError::MissingVersion)?;
    if version == 0 || version > PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let kind = object
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or(DecodeError::MissingType)?;
    if !known.contains(&kind) {
        return Err(DecodeError::UnknownType(kind.to_owned()));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value).map_err(|e| DecodeError::Malformed {
        kind,
        detail: one_line(&e.to_string()),
    })
}

/// Escapes control and format characters: a reason quotes what the sender
/// wrote, and must stay one harmless line in a log, a dead-letter header or
/// a terminal.
fn one_line(text: &str) -> String {
    names::escape_for_terminal(text).into_owned()
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Decodes a request sent to the server.
pub fn decode_request(bytes: &[u8]) -> Result<RequestEnvelope, DecodeError> {
    decode(bytes, &REQUEST_TYPES)
}

/// Decodes the server's reply, refusing one that fails [`Reply::validate`]:
/// a client prints what it gets, and the server writes only replies that
/// pass (see [`fit_reply_text`]).
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    let reply: Reply = decode(
        bytes,
        &["done", "subscriptions", "videos", "refused", "celebrities"],
    )?;
    match reply.validate() {
        Ok(()) => Ok(reply),
        Err(invalid) => Err(DecodeError::Malformed {
            kind: reply.kind().to_owned(),
            detail: invalid.to_string(),
        }),
    }
}

/// Decodes what a creator's inbox holds, refusing a message with an event
/// that fails [`CreatorEvent::validate`].
pub fn decode_creator_events(bytes: &[u8]) -> Result<CreatorEvents, DecodeError> {
    let message: CreatorEvents = decode(bytes, &["creator_events"])?;
    let checked = names::check_youtuber(&message.youtuber)
        .and_then(|()| message.events.iter().try_for_each(CreatorEvent::validate));
    match checked {
        Ok(()) => Ok(message),
        Err(invalid) => Err(DecodeError::Malformed {
            kind: "creator_events".to_owned(),
            detail: invalid.to_string(),
        }),
    }
}

/// Decodes a notification from a user's inbox.
pub fn decode_notification(bytes: &[u8]) -> Result<Notification, DecodeError> {
    decode(bytes, &["video_uploaded"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str) -> RequestEnvelope {
        RequestEnvelope::new(Request::login(user))
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::login("alice"),
            Request::ChangeSubscription {
                user: "alice".into(),
                youtuber: "bob".into(),
                subscribe: false,
            },
            Request::ListSubscriptions {
                user: "alice".into(),
            },
            Request::Upload {
                youtuber: "bob".into(),
                video: "Rust in 100 seconds".into(),
            },
        ];
        for request in requests {
            let envelope = RequestEnvelope::new(request);
            assert_eq!(decode_request(&encode(&envelope)), Ok(envelope));
        }
    }

    #[test]
    fn the_wire_form_is_flat_tagged_and_versioned() {
        let envelope = RequestEnvelope {
            id: Uuid::nil(),
            request: Request::ChangeSubscription {
                user: "alice".into(),
                youtuber: "bob".into(),
                subscribe: true,
            },
        };
        let json: serde_json::Value = serde_json::from_slice(&encode(&envelope)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "v": 1,
                "id": "00000000-0000-0000-0000-000000000000",
                "type": "subscription",
                "user": "alice",
                "youtuber": "bob",
                "subscribe": true,
            })
        );
    }

    #[test]
    fn replies_and_notifications_round_trip() {
        for reply in [
            Reply::Done { notice: None },
            Reply::Done {
                notice: Some("bob has not uploaded yet".into()),
            },
            Reply::Subscriptions {
                youtubers: vec!["bob".into(), "carol".into()],
            },
            Reply::Refused {
                reason: "no".into(),
            },
        ] {
            assert_eq!(decode_reply(&encode(&reply)), Ok(reply));
        }
        let notification = Notification::VideoUploaded {
            id: Uuid::new_v4(),
            youtuber: "bob".into(),
            video: "Hello".into(),
            uploaded_at_ms: 1_700_000_000_000,
            seq: None,
            stream_after: false,
        };
        assert_eq!(
            decode_notification(&encode(&notification)),
            Ok(notification.clone())
        );
        assert_eq!(
            notification.to_string(),
            "New Notification: bob uploaded Hello"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let body = br#"{"v":1,"id":"00000000-0000-0000-0000-000000000000","type":"login","user":"alice","device":"phone"}"#;
        let envelope = decode_request(body).unwrap();
        assert_eq!(envelope.request, Request::login("alice"));
    }

    #[test]
    fn every_kind_of_bad_message_gets_a_reason() {
        let cases: [(&[u8], DecodeError); 7] = [
            (
                b"hello",
                DecodeError::NotJson("expected value at line 1 column 1".into()),
            ),
            (b"[1,2]", DecodeError::NotJson("found an array".into())),
            (
                br#"{"type":"login","user":"a"}"#,
                DecodeError::MissingVersion,
            ),
            (
                br#"{"v":2,"type":"login","user":"a"}"#,
                DecodeError::UnsupportedVersion(2),
            ),
            (br#"{"v":1,"user":"a"}"#, DecodeError::MissingType),
            (
                br#"{"v":1,"type":"like","video":"x"}"#,
                DecodeError::UnknownType("like".into()),
            ),
            (
                br#"{"v":1,"id":"00000000-0000-0000-0000-000000000000","type":"login"}"#,
                DecodeError::Malformed {
                    kind: "login".into(),
                    detail: "missing field `user`".into(),
                },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                decode_request(body),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode_request(&huge),
            Err(DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }

    #[test]
    fn validation_covers_every_name_in_a_request() {
        assert!(login("alice").request.validate().is_ok());
        assert!(login("al ice").request.validate().is_err());
        let upload = Request::Upload {
            youtuber: "bob".into(),
            video: "bad\u{7}title".into(),
        };
        assert_eq!(upload.validate().unwrap_err().kind, names::NameKind::Video);
    }

    fn upload(youtuber: &str, video: &str) -> Notification {
        Notification::VideoUploaded {
            id: Uuid::nil(),
            youtuber: youtuber.into(),
            video: video.into(),
            uploaded_at_ms: 0,
            seq: None,
            stream_after: false,
        }
    }

    #[test]
    fn a_forged_notification_fails_validation_and_prints_harmlessly() {
        assert!(upload("bob", "Hello").validate().is_ok());
        let forged = upload("bob", "Hello\u{1b}[2J");
        let err = forged.validate().unwrap_err();
        assert_eq!(err.kind, names::NameKind::Video);
        assert!(err.problem.contains("at position 6"), "{err}");
        assert_eq!(
            forged.to_string(),
            r"New Notification: bob uploaded Hello\u{1b}[2J"
        );
        let forged = upload("\u{202e}bob", "x");
        assert_eq!(
            forged.validate().unwrap_err().kind,
            names::NameKind::Youtuber
        );
        assert_eq!(
            forged.to_string(),
            r"New Notification: \u{202e}bob uploaded x"
        );
    }

    #[test]
    fn replies_that_are_unsafe_to_print_are_refused_with_the_field() {
        let cases = [
            (
                Reply::Refused {
                    reason: "no\u{1b}[2J".into(),
                },
                "malformed \"refused\" message: field `reason` has control character '\\u{1b}' \
                 at position 3; a reply holds printable text only",
            ),
            (
                Reply::Done {
                    notice: Some("\u{2067}ok".into()),
                },
                "malformed \"done\" message: field `notice` has invisible formatting character \
                 U+2067 at position 1; a reply holds printable text only",
            ),
            (
                Reply::Done {
                    notice: Some("x".repeat(MAX_REPLY_TEXT_CHARS + 1)),
                },
                "malformed \"done\" message: field `notice` has 2001 characters; \
                 a reply holds at most 2000",
            ),
            (
                Reply::Subscriptions {
                    youtubers: vec!["bob".into(), "b ob".into()],
                },
                "malformed \"subscriptions\" message: field `youtubers[1]` holds an invalid \
                 YouTuber name \"b ob\": a space at position 2 is not allowed; \
                 use 1-64 ASCII letters, digits, '_', '-' or '.'",
            ),
        ];
        for (reply, expected) in cases {
            let err = decode_reply(&encode(&reply)).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
        let longest = Reply::Refused {
            reason: "é".repeat(MAX_REPLY_TEXT_CHARS),
        };
        assert_eq!(decode_reply(&encode(&longest)), Ok(longest));
    }

    #[test]
    fn any_text_can_be_made_fit_for_a_reply() {
        assert_eq!(fit_reply_text("bob is not here"), "bob is not here");
        assert_eq!(fit_reply_text("two\nlines"), r"two\u{a}lines");
        let long = fit_reply_text(&"\u{1b}".repeat(MAX_REPLY_TEXT_CHARS));
        assert_eq!(long.chars().count(), MAX_REPLY_TEXT_CHARS);
        assert!(long.ends_with('…'), "{long}");
        let exact = "é".repeat(MAX_REPLY_TEXT_CHARS);
        assert_eq!(fit_reply_text(&exact), exact);
        let reply = Reply::Refused { reason: long };
        assert_eq!(decode_reply(&encode(&reply)), Ok(reply));
    }

    #[test]
    fn every_refusal_the_server_writes_passes_the_clients_check() {
        for request in [
            Request::login("x".repeat(MAX_MESSAGE_BYTES)),
            Request::Upload {
                youtuber: "bob".into(),
                video: "\u{10ffff}".repeat(MAX_MESSAGE_BYTES / 4),
            },
            Request::Upload {
                youtuber: "bob".into(),
                video: "\u{1b}".repeat(MAX_MESSAGE_BYTES),
            },
        ] {
            let reason = request.validate().unwrap_err().to_string();
            assert_eq!(Reply::Refused { reason }.validate(), Ok(()));
        }
    }

    #[test]
    fn decode_errors_escape_what_the_sender_wrote() {
        let body = "{\"v\":1,\"type\":\"login\",\"id\":\"00000000-0000-0000-0000-000000000\u{202e}\",\"user\":\"a\"}";
        let reason = decode_request(body.as_bytes()).unwrap_err().to_string();
        assert!(!reason.chars().any(names::is_unprintable), "{reason}");
        assert!(reason.contains(r"\u{202e}"), "{reason}");
    }
}
