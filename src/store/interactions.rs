//! Interactions: reactions and comments on videos, the listing of a
//! YouTuber's videos with their counts, and the outbox of what creators are
//! to hear of (`creator_events`).

use uuid::Uuid;

use super::{
    CreatorNote,
    apply::youtuber_exists,
    db::{DbError, Row, Tx, args},
};
use crate::protocol::{CreatorEvent, MAX_VIDEOS_LISTED, Reaction, Reply, VideoStats};

/// A video that a reference names.
pub(super) struct NamedVideo {
    id: Uuid,
    youtuber: String,
    title: String,
}

/// The most videos a refusal names when a reference is ambiguous.
const AMBIGUOUS_SHOWN: usize = 3;

/// The video that `reference` (its id, or the start of it) names, or why
/// none does.
async fn resolve(tx: &mut Tx<'_>, reference: &str) -> Result<Result<NamedVideo, String>, DbError> {
    // Ids are stored as `Uuid` writes them, in lowercase.
    let reference = reference.to_ascii_lowercase();
    let reference = reference.as_str();
    // Ids hold '0'-'9', 'a'-'f' and '-', all before 'g': every id that
    // starts with the reference sorts between it and the reference + "g"
    // (bytewise, in both databases), and the primary key's index finds them.
    let found = tx
        .query(
            "SELECT id, youtuber, title FROM videos WHERE id >= ?1 AND id < ?1 || 'g'
             ORDER BY id LIMIT ?2",
            args![reference, AMBIGUOUS_SHOWN + 1],
        )
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<String>(1)?,
                row.get::<String>(2)?,
            ))
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(match found.as_slice() {
        [] => Err(format!(
            "no video has an id that starts with {reference}; \
             `user videos <youtuber>` lists a YouTuber's videos with their ids"
        )),
        [(id, youtuber, title)] => match Uuid::parse_str(id) {
            Ok(id) => Ok(NamedVideo {
                id,
                youtuber: youtuber.clone(),
                title: title.clone(),
            }),
            Err(_) => Err(format!("the video {id} has a damaged id in the database")),
        },
        several => {
            let shown: Vec<String> = several
                .iter()
                .take(AMBIGUOUS_SHOWN)
                .map(|(id, youtuber, title)| format!("{id} \"{title}\" by {youtuber}"))
                .collect();
            let more = if several.len() > AMBIGUOUS_SHOWN {
                ", and more"
            } else {
                ""
            };
            Err(format!(
                "{reference} starts the ids of several videos ({}{more}); give more of the id",
                shown.join(", ")
            ))
        }
    })
}

/// A user's like or dislike of a video, or its taking back (`wanted`
/// `None`). The creator hears of a new like or dislike, not of one taken
/// back nor of one the user had already given.
pub(super) async fn react(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    user: &str,
    reference: &str,
    wanted: Option<Reaction>,
    now: i64,
) -> Result<(Reply, Option<CreatorNote>), DbError> {
    let video = match resolve(tx, reference).await? {
        Ok(video) => video,
        Err(reason) => return Ok((Reply::Refused { reason }, None)),
    };
    let current: Option<String> = match tx
        .query_opt(
            r#"SELECT reaction FROM reactions WHERE video_id = ?1 AND "user" = ?2"#,
            args![video.id, user],
        )
        .await?
    {
        Some(row) => Some(row.get(0)?),
        None => None,
    };
    let current = current.as_deref().and_then(|stored| match stored {
        "like" => Some(Reaction::Like),
        "dislike" => Some(Reaction::Dislike),
        _ => None,
    });
    let title = &video.title;
    if current == wanted {
        let notice = match wanted {
            Some(Reaction::Like) => format!("{user} already likes \"{title}\""),
            Some(Reaction::Dislike) => format!("{user} already dislikes \"{title}\""),
            None => format!("{user} had neither liked nor disliked \"{title}\""),
        };
        return Ok((
            Reply::Done {
                notice: Some(notice),
            },
            None,
        ));
    }
    count_reaction(tx, &video.id, current, -1).await?;
    count_reaction(tx, &video.id, wanted, 1).await?;
    let Some(reaction) = wanted else {
        tx.execute(
            r#"DELETE FROM reactions WHERE video_id = ?1 AND "user" = ?2"#,
            args![video.id, user],
        )
        .await?;
        return Ok((Reply::Done { notice: None }, None));
    };
    tx.execute(
        r#"INSERT INTO reactions (video_id, "user", reaction, at_ms) VALUES (?1, ?2, ?3, ?4)
           ON CONFLICT (video_id, "user")
           DO UPDATE SET reaction = excluded.reaction, at_ms = excluded.at_ms"#,
        args![video.id, user, reaction.as_str(), now],
    )
    .await?;
    // The creator hears of each user's like (and dislike) of a video once:
    // taking it back and giving it again, in a loop, tells no one.
    let first_time = tx
        .execute(
            r#"INSERT INTO reactions_told (video_id, "user", reaction) VALUES (?1, ?2, ?3)
               ON CONFLICT DO NOTHING"#,
            args![video.id, user, reaction.as_str()],
        )
        .await?
        == 1;
    if !first_time {
        return Ok((Reply::Done { notice: None }, None));
    }
    let event = CreatorEvent::Reacted {
        id: request_id,
        user: user.to_owned(),
        video_id: video.id,
        video: video.title.clone(),
        reaction,
        at_ms: now,
    };
    let note = keep_for_creator(tx, &video.youtuber, event, now).await?;
    Ok((Reply::Done { notice: None }, Some(note)))
}

/// Adds `by` to the video's count of `reaction`, if any.
async fn count_reaction(
    tx: &mut Tx<'_>,
    video: &Uuid,
    reaction: Option<Reaction>,
    by: i64,
) -> Result<(), DbError> {
    let sql = match reaction {
        None => return Ok(()),
        Some(Reaction::Like) => "UPDATE videos SET likes = likes + ?2 WHERE id = ?1",
        Some(Reaction::Dislike) => "UPDATE videos SET dislikes = dislikes + ?2 WHERE id = ?1",
    };
    tx.execute(sql, args![video, by]).await?;
    Ok(())
}

/// A user's comment on a video.
pub(super) async fn comment(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    user: &str,
    reference: &str,
    text: &str,
    now: i64,
) -> Result<(Reply, Option<CreatorNote>), DbError> {
    let video = match resolve(tx, reference).await? {
        Ok(video) => video,
        Err(reason) => return Ok((Reply::Refused { reason }, None)),
    };
    tx.execute(
        r#"INSERT INTO comments (id, video_id, "user", text, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)"#,
        args![request_id, video.id, user, text, now],
    )
    .await?;
    tx.execute(
        "UPDATE videos SET comments = comments + 1 WHERE id = ?1",
        args![video.id],
    )
    .await?;
    let event = CreatorEvent::Commented {
        id: request_id,
        user: user.to_owned(),
        video_id: video.id,
        video: video.title.clone(),
        text: text.to_owned(),
        at_ms: now,
    };
    let note = keep_for_creator(tx, &video.youtuber, event, now).await?;
    Ok((Reply::Done { notice: None }, Some(note)))
}

/// A new subscriber of `youtuber`, or one gone (`subscribed` false), for the
/// creator to hear of; `None` for a YouTuber who has not uploaded yet (it
/// has no feed until then).
pub(super) async fn subscriber(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    user: &str,
    youtuber: &str,
    subscribed: bool,
    now: i64,
) -> Result<Option<CreatorNote>, DbError> {
    if !youtuber_exists(tx, youtuber).await? {
        return Ok(None);
    }
    let (id, user, at_ms) = (request_id, user.to_owned(), now);
    let event = if subscribed {
        CreatorEvent::Subscribed { id, user, at_ms }
    } else {
        CreatorEvent::Unsubscribed { id, user, at_ms }
    };
    keep_for_creator(tx, youtuber, event, now).await.map(Some)
}

/// Puts an event in the outbox of `youtuber`'s inbox.
async fn keep_for_creator(
    tx: &mut Tx<'_>,
    youtuber: &str,
    event: CreatorEvent,
    now: i64,
) -> Result<CreatorNote, DbError> {
    let body = serde_json::to_string(&event).map_err(DbError::data)?;
    tx.execute(
        "INSERT INTO creator_events (id, youtuber, body, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        args![event.id(), youtuber, body, now],
    )
    .await?;
    Ok(CreatorNote {
        youtuber: youtuber.to_owned(),
        event,
    })
}

/// The event a request put in the outbox, if it is not sent yet: what a
/// replayed request must still send.
pub(super) async fn unsent_note(
    tx: &mut Tx<'_>,
    request_id: Uuid,
) -> Result<Option<CreatorNote>, DbError> {
    tx.query_opt(
        "SELECT youtuber, body FROM creator_events WHERE id = ?1 AND sent = 0",
        args![request_id],
    )
    .await?
    .as_ref()
    .map(note_from_row)
    .transpose()
}

/// The creators with events not sent yet, created before `before_ms`.
pub(super) async fn creators_with_unsent(
    tx: &mut Tx<'_>,
    before_ms: i64,
) -> Result<Vec<String>, DbError> {
    tx.query(
        "SELECT DISTINCT youtuber FROM creator_events WHERE sent = 0 AND created_at_ms < ?1",
        args![before_ms],
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// `youtuber`'s events not sent yet, created before `before_ms`, oldest
/// first, at most `limit`.
pub(super) async fn unsent_notes(
    tx: &mut Tx<'_>,
    youtuber: &str,
    before_ms: i64,
    limit: usize,
) -> Result<Vec<CreatorNote>, DbError> {
    tx.query(
        "SELECT youtuber, body FROM creator_events
         WHERE youtuber = ?1 AND sent = 0 AND created_at_ms < ?2
         ORDER BY created_at_ms, rowid LIMIT ?3",
        args![youtuber, before_ms, limit],
    )
    .await?
    .iter()
    .map(note_from_row)
    .collect()
}

fn note_from_row(row: &Row) -> Result<CreatorNote, DbError> {
    let body: String = row.get(1)?;
    let event = serde_json::from_str(&body).map_err(DbError::data)?;
    Ok(CreatorNote {
        youtuber: row.get(0)?,
        event,
    })
}

/// `youtuber`'s subscribers and newest videos with their counts; a refusal
/// for a YouTuber without videos when `refuse_empty` (what a user asks of a
/// name that may be mistyped).
pub(super) async fn videos_of(
    tx: &mut Tx<'_>,
    youtuber: &str,
    refuse_empty: bool,
) -> Result<Reply, DbError> {
    let total: i64 = tx
        .query_value(
            "SELECT COUNT(*) FROM videos WHERE youtuber = ?1",
            args![youtuber],
        )
        .await?;
    let total = u64::try_from(total).unwrap_or_default();
    if total == 0 && refuse_empty {
        return Ok(Reply::Refused {
            reason: format!("{youtuber} has not uploaded any video"),
        });
    }
    let subscribers: i64 = tx
        .query_value(
            "SELECT COUNT(*) FROM subscriptions WHERE youtuber = ?1",
            args![youtuber],
        )
        .await?;
    let subscribers = u64::try_from(subscribers).unwrap_or_default();
    if total == 0 && subscribers == 0 {
        return Ok(Reply::Refused {
            reason: format!(
                "{youtuber} has no video and no subscriber yet; the first upload \
                 (youtuber {youtuber} <video>) makes the channel"
            ),
        });
    }
    let videos = tx
        .query(
            "SELECT id, title, uploaded_at_ms, likes, dislikes, comments FROM videos
             WHERE youtuber = ?1 ORDER BY uploaded_at_ms DESC, rowid DESC LIMIT ?2",
            args![youtuber, MAX_VIDEOS_LISTED],
        )
        .await?
        .iter()
        .map(|row| {
            let count = |index: usize| -> Result<u64, DbError> {
                Ok(u64::try_from(row.get::<i64>(index)?).unwrap_or_default())
            };
            Ok(VideoStats {
                id: row.get(0)?,
                title: row.get(1)?,
                uploaded_at_ms: row.get(2)?,
                likes: count(3)?,
                dislikes: count(4)?,
                comments: count(5)?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(Reply::Videos {
        youtuber: youtuber.to_owned(),
        subscribers,
        total,
        videos,
    })
}
