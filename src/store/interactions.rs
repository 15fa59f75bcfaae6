//! Interactions: reactions and comments on videos, the listing of a
//! YouTuber's videos with their counts, and the outbox of what creators are
//! to hear of (`creator_events`).

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::CreatorNote;
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
fn resolve(tx: &Connection, reference: &str) -> rusqlite::Result<Result<NamedVideo, String>> {
    // Ids are stored as `Uuid` writes them, in lowercase.
    let reference = reference.to_ascii_lowercase();
    let reference = reference.as_str();
    // Ids hold '0'-'9', 'a'-'f' and '-', all before 'g': every id that
    // starts with the reference sorts between it and the reference + "g",
    // and the primary key's index finds them.
    let found = tx
        .prepare_cached(
            "SELECT id, youtuber, title FROM videos WHERE id >= ?1 AND id < ?1 || 'g'
             ORDER BY id LIMIT ?2",
        )?
        .query_map(params![reference, AMBIGUOUS_SHOWN as i64 + 1], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
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
pub(super) fn react(
    tx: &Connection,
    request_id: Uuid,
    user: &str,
    reference: &str,
    wanted: Option<Reaction>,
    now: i64,
) -> rusqlite::Result<(Reply, Option<CreatorNote>)> {
    let video = match resolve(tx, reference)? {
        Ok(video) => video,
        Err(reason) => return Ok((Reply::Refused { reason }, None)),
    };
    let current: Option<String> = tx
        .prepare_cached("SELECT reaction FROM reactions WHERE video_id = ?1 AND user = ?2")?
        .query_row(params![video.id.to_string(), user], |row| row.get(0))
        .optional()?;
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
    count_reaction(tx, &video.id, current, -1)?;
    count_reaction(tx, &video.id, wanted, 1)?;
    let Some(reaction) = wanted else {
        tx.prepare_cached("DELETE FROM reactions WHERE video_id = ?1 AND user = ?2")?
            .execute(params![video.id.to_string(), user])?;
        return Ok((Reply::Done { notice: None }, None));
    };
    tx.prepare_cached(
        "INSERT INTO reactions (video_id, user, reaction, at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (video_id, user) DO UPDATE SET reaction = excluded.reaction, at_ms = excluded.at_ms",
    )?
    .execute(params![video.id.to_string(), user, reaction.as_str(), now])?;
    // The creator hears of each user's like (and dislike) of a video once:
    // taking it back and giving it again, in a loop, tells no one.
    let first_time = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO reactions_told (video_id, user, reaction) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![video.id.to_string(), user, reaction.as_str()])?
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
    let note = keep_for_creator(tx, &video.youtuber, event, now)?;
    Ok((Reply::Done { notice: None }, Some(note)))
}

/// Adds `by` to the video's count of `reaction`, if any.
fn count_reaction(
    tx: &Connection,
    video: &Uuid,
    reaction: Option<Reaction>,
    by: i64,
) -> rusqlite::Result<()> {
    let sql = match reaction {
        None => return Ok(()),
        Some(Reaction::Like) => "UPDATE videos SET likes = likes + ?2 WHERE id = ?1",
        Some(Reaction::Dislike) => "UPDATE videos SET dislikes = dislikes + ?2 WHERE id = ?1",
    };
    tx.prepare_cached(sql)?
        .execute(params![video.to_string(), by])?;
    Ok(())
}

/// A user's comment on a video.
pub(super) fn comment(
    tx: &Connection,
    request_id: Uuid,
    user: &str,
    reference: &str,
    text: &str,
    now: i64,
) -> rusqlite::Result<(Reply, Option<CreatorNote>)> {
    let video = match resolve(tx, reference)? {
        Ok(video) => video,
        Err(reason) => return Ok((Reply::Refused { reason }, None)),
    };
    tx.prepare_cached(
        "INSERT INTO comments (id, video_id, user, text, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        request_id.to_string(),
        video.id.to_string(),
        user,
        text,
        now
    ])?;
    tx.prepare_cached("UPDATE videos SET comments = comments + 1 WHERE id = ?1")?
        .execute([video.id.to_string()])?;
    let event = CreatorEvent::Commented {
        id: request_id,
        user: user.to_owned(),
        video_id: video.id,
        video: video.title.clone(),
        text: text.to_owned(),
        at_ms: now,
    };
    let note = keep_for_creator(tx, &video.youtuber, event, now)?;
    Ok((Reply::Done { notice: None }, Some(note)))
}

/// A new subscriber of `youtuber`, or one gone (`subscribed` false), for the
/// creator to hear of; `None` for a YouTuber who has not uploaded yet (it
/// has no feed until then).
pub(super) fn subscriber(
    tx: &Connection,
    request_id: Uuid,
    user: &str,
    youtuber: &str,
    subscribed: bool,
    now: i64,
) -> rusqlite::Result<Option<CreatorNote>> {
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM youtubers WHERE name = ?1)")?
        .query_row([youtuber], |row| row.get(0))?;
    if !known {
        return Ok(None);
    }
    let (id, user, at_ms) = (request_id, user.to_owned(), now);
    let event = if subscribed {
        CreatorEvent::Subscribed { id, user, at_ms }
    } else {
        CreatorEvent::Unsubscribed { id, user, at_ms }
    };
    keep_for_creator(tx, youtuber, event, now).map(Some)
}

/// Puts an event in the outbox of `youtuber`'s inbox.
fn keep_for_creator(
    tx: &Connection,
    youtuber: &str,
    event: CreatorEvent,
    now: i64,
) -> rusqlite::Result<CreatorNote> {
    let body = serde_json::to_string(&event)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.prepare_cached(
        "INSERT INTO creator_events (id, youtuber, body, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![event.id().to_string(), youtuber, body, now])?;
    Ok(CreatorNote {
        youtuber: youtuber.to_owned(),
        event,
    })
}

/// The event a request put in the outbox, if it is not sent yet: what a
/// replayed request must still send.
pub(super) fn unsent_note(
    connection: &Connection,
    request_id: Uuid,
) -> rusqlite::Result<Option<CreatorNote>> {
    connection
        .prepare_cached("SELECT youtuber, body FROM creator_events WHERE id = ?1 AND sent = 0")?
        .query_row([request_id.to_string()], note_from_row)
        .optional()
}

/// The creators with events not sent yet, created before `before_ms`.
pub(super) fn creators_with_unsent(
    connection: &Connection,
    before_ms: i64,
) -> rusqlite::Result<Vec<String>> {
    connection
        .prepare_cached(
            "SELECT DISTINCT youtuber FROM creator_events WHERE sent = 0 AND created_at_ms < ?1",
        )?
        .query_map([before_ms], |row| row.get(0))?
        .collect()
}

/// `youtuber`'s events not sent yet, created before `before_ms`, oldest
/// first, at most `limit`.
pub(super) fn unsent_notes(
    connection: &Connection,
    youtuber: &str,
    before_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<CreatorNote>> {
    connection
        .prepare_cached(
            "SELECT youtuber, body FROM creator_events
             WHERE youtuber = ?1 AND sent = 0 AND created_at_ms < ?2
             ORDER BY created_at_ms, rowid LIMIT ?3",
        )?
        .query_map(params![youtuber, before_ms, limit as i64], note_from_row)?
        .collect()
}

fn note_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CreatorNote> {
    let body: String = row.get(1)?;
    let event = serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(CreatorNote {
        youtuber: row.get(0)?,
        event,
    })
}

/// `youtuber`'s subscribers and newest videos with their counts; a refusal
/// for a YouTuber without videos when `refuse_empty` (what a user asks of a
/// name that may be mistyped).
pub(super) fn videos_of(
    connection: &Connection,
    youtuber: &str,
    refuse_empty: bool,
) -> rusqlite::Result<Reply> {
    let count = |sql: &str| -> rusqlite::Result<u64> {
        let count: i64 = connection
            .prepare_cached(sql)?
            .query_row([youtuber], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or_default())
    };
    let total = count("SELECT COUNT(*) FROM videos WHERE youtuber = ?1")?;
    if total == 0 && refuse_empty {
        return Ok(Reply::Refused {
            reason: format!("{youtuber} has not uploaded any video"),
        });
    }
    let subscribers = count("SELECT COUNT(*) FROM subscriptions WHERE youtuber = ?1")?;
    if total == 0 && subscribers == 0 {
        return Ok(Reply::Refused {
            reason: format!(
                "{youtuber} has no video and no subscriber yet; the first upload \
                 (youtuber {youtuber} <video>) makes the channel"
            ),
        });
    }
    let videos = connection
        .prepare_cached(
            "SELECT id, title, uploaded_at_ms, likes, dislikes, comments FROM videos
             WHERE youtuber = ?1 ORDER BY uploaded_at_ms DESC, rowid DESC LIMIT ?2",
        )?
        .query_map(params![youtuber, MAX_VIDEOS_LISTED as i64], |row| {
            let id: String = row.get(0)?;
            let id = Uuid::parse_str(&id).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            let count = |index: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(row.get::<_, i64>(index)?).unwrap_or_default())
            };
            Ok(VideoStats {
                id,
                title: row.get(1)?,
                uploaded_at_ms: row.get(2)?,
                likes: count(3)?,
                dislikes: count(4)?,
                comments: count(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Reply::Videos {
        youtuber: youtuber.to_owned(),
        subscribers,
        total,
        videos,
    })
}
