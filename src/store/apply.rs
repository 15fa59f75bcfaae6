//! Applying one request of a batch: its savepoint, its reply and effect, and
//! the reads and writes of each kind of request.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};
use uuid::Uuid;

use super::{
    Applied, Decision, Effect, InboxSpec, Video,
    interactions::{self, unsent_note},
};
use crate::protocol::{Reply, Request};

/// Applies one request in its own savepoint of the batch's transaction, and
/// refuses it if it fails on its own.
pub(super) fn apply_isolated(
    tx: &mut Transaction<'_>,
    request_id: Uuid,
    request: Request,
    now: i64,
    inbox_bound: Option<u32>,
) -> rusqlite::Result<Decision> {
    let is_query = request.is_query();
    let mut savepoint = tx.savepoint()?;
    let err = match apply_one(&savepoint, request_id, request, now, inbox_bound) {
        Ok(outcome) => {
            savepoint.commit()?;
            return Ok(outcome);
        }
        Err(err) if is_request_error(&err) => err,
        Err(err) => return Err(err),
    };
    savepoint.rollback()?;
    tracing::warn!(%request_id, %err, "refusing a request the database cannot store");
    let reply = Reply::Refused {
        reason: format!(
            "the server's database cannot handle this request ({err}); it changed nothing now \
             and is refused for good: the server's log has the details"
        ),
    };
    // Recorded, so that a redelivery gets this answer at once instead of
    // failing the same way each time it comes back. A query is not recorded.
    if !is_query && let Err(err) = record(&savepoint, request_id, &reply, None, now) {
        if !is_request_error(&err) {
            return Err(err);
        }
        // A redelivery fails the same way and is refused again: the same answer.
        savepoint.rollback()?;
        tracing::warn!(%request_id, %err, "cannot record the refusal of a request");
    }
    savepoint.commit()?;
    Ok(Decision {
        reply: Applied::New(reply),
        effect: Effect::None,
        tell: None,
    })
}

/// Whether `err` belongs to the request being applied (its data, a
/// constraint) rather than to the database as a whole: locks held by another
/// writer, the disk, the file, memory. Those fail the batch, to be tried again
/// when the database is back; refusing requests for them would lose requests
/// that a retry would store.
pub(super) fn is_request_error(err: &rusqlite::Error) -> bool {
    use ErrorCode::*;
    !matches!(
        err.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | FileLockingProtocolFailed
                | SystemIoFailure
                | DiskFull
                | CannotOpen
                | PermissionDenied
                | ReadOnly
                | DatabaseCorrupt
                | NotADatabase
                | OutOfMemory
                | OperationInterrupted
        )
    )
}

/// Applies one request inside the batch's transaction.
fn apply_one(
    tx: &Connection,
    request_id: Uuid,
    request: Request,
    now: i64,
    inbox_bound: Option<u32>,
) -> rusqlite::Result<Decision> {
    // A query changes nothing and is not recorded.
    let answer = match &request {
        Request::ListSubscriptions { user } => Some(Reply::Subscriptions {
            youtubers: subscriptions_of(tx, user)?,
        }),
        Request::ListVideos { youtuber, .. } => Some(interactions::videos_of(tx, youtuber, true)?),
        Request::Stats { youtuber } => Some(interactions::videos_of(tx, youtuber, false)?),
        _ => None,
    };
    if let Some(reply) = answer {
        return Ok(Decision {
            reply: Applied::New(reply),
            effect: Effect::None,
            tell: None,
        });
    }
    let replayed = recorded(tx, request_id)?;
    if let Some((reply, video_id)) = replayed {
        // What the first attempt was to tell a creator, if it is not sent yet.
        let tell = unsent_note(tx, request_id)?;
        let effect = match request {
            // No user: the first attempt was refused, and left nothing to repair.
            Request::Login { user, history } => match inbox_of(tx, &user)? {
                Some(inbox) => Effect::Inbox {
                    subscriptions: subscriptions_of(tx, &user)?,
                    inbox,
                    history,
                },
                None => Effect::None,
            },
            Request::ChangeSubscription { user, youtuber, .. } => match inbox_of(tx, &user)? {
                Some(inbox) => Effect::Binding {
                    subscribed: is_subscribed(tx, &user, &youtuber)?,
                    user,
                    youtuber,
                    // The first attempt may have stopped before declaring the inbox.
                    declare: Some(inbox),
                },
                None => Effect::None,
            },
            Request::Upload { .. } => match video_id {
                Some(id) => Effect::Notify(video_by_id(tx, &id)?),
                None => Effect::None,
            },
            Request::React { .. }
            | Request::Comment { .. }
            | Request::ListSubscriptions { .. }
            | Request::ListVideos { .. }
            | Request::Stats { .. } => Effect::None,
        };
        return Ok(Decision {
            reply: Applied::Replayed(reply),
            effect,
            tell,
        });
    }
    let mut tell = None;
    let (reply, effect, video_id) = match request {
        Request::Login { user, history } => {
            add_user(tx, &user, now, inbox_bound)?;
            let (inbox, dropped) = user_inbox(tx, &user)?;
            let notice = (dropped > 0).then(|| dropped_notice(&inbox, dropped));
            if notice.is_some() {
                tx.prepare_cached("UPDATE users SET dropped = 0 WHERE name = ?1")?
                    .execute([&user])?;
            }
            let effect = Effect::Inbox {
                subscriptions: subscriptions_of(tx, &user)?,
                inbox,
                history,
            };
            (Reply::Done { notice }, effect, None)
        }
        Request::ChangeSubscription {
            user,
            youtuber,
            subscribe,
        } => {
            let declare = if add_user(tx, &user, now, inbox_bound)? {
                Some(user_inbox(tx, &user)?.0)
            } else {
                None
            };
            let (reply, changed) = if subscribe {
                subscribe_in(tx, &user, &youtuber, now)?
            } else {
                unsubscribe_in(tx, &user, &youtuber)?
            };
            if changed {
                tell = interactions::subscriber(tx, request_id, &user, &youtuber, subscribe, now)?;
            }
            let effect = Effect::Binding {
                // Whether refused or not, the user now follows exactly when
                // the request asked to.
                subscribed: subscribe,
                user,
                youtuber,
                declare,
            };
            (reply, effect, None)
        }
        Request::Upload { youtuber, video } => {
            let video = upload_in(tx, youtuber, video, now)?;
            let id = video.id;
            (
                Reply::Done { notice: None },
                Effect::Notify(video),
                Some(id),
            )
        }
        Request::React {
            user,
            video,
            reaction,
        } => {
            let (reply, note) = interactions::react(tx, request_id, &user, &video, reaction, now)?;
            tell = note;
            (reply, Effect::None, None)
        }
        Request::Comment { user, video, text } => {
            let (reply, note) = interactions::comment(tx, request_id, &user, &video, &text, now)?;
            tell = note;
            (reply, Effect::None, None)
        }
        Request::ListSubscriptions { .. } | Request::ListVideos { .. } | Request::Stats { .. } => {
            unreachable!("answered above")
        }
    };
    record(tx, request_id, &reply, video_id, now)?;
    Ok(Decision {
        reply: Applied::New(reply),
        effect,
        tell,
    })
}

/// Adds the user if new (returning `true`) with an inbox of `inbox_bound`,
/// and records the time as their last login: a user who changes a
/// subscription is online.
fn add_user(
    tx: &Connection,
    user: &str,
    now: i64,
    inbox_bound: Option<u32>,
) -> rusqlite::Result<bool> {
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO users (name, created_at_ms, last_login_ms, inbox_bound)
             VALUES (?1, ?2, ?2, ?3)",
        )?
        .execute(params![user, now, inbox_bound])?
        == 1;
    if !added {
        tx.prepare_cached("UPDATE users SET last_login_ms = ?2 WHERE name = ?1")?
            .execute(params![user, now])?;
    }
    Ok(added)
}

/// The user's inbox as recorded, and how many notifications it dropped since
/// the last login; an error if there is no such user.
fn user_inbox(connection: &Connection, user: &str) -> rusqlite::Result<(InboxSpec, u64)> {
    connection
        .prepare_cached("SELECT inbox_bound, dropped FROM users WHERE name = ?1")?
        .query_row([user], |row| {
            let inbox = InboxSpec {
                user: user.to_owned(),
                bound: row.get(0)?,
            };
            let dropped: i64 = row.get(1)?;
            // Never negative unless edited by hand: then nothing to report.
            Ok((inbox, u64::try_from(dropped).unwrap_or_default()))
        })
}

/// The user's inbox as recorded, if there is such a user.
fn inbox_of(connection: &Connection, user: &str) -> rusqlite::Result<Option<InboxSpec>> {
    Ok(user_inbox(connection, user)
        .optional()?
        .map(|(inbox, _)| inbox))
}

/// The notice of a login after the broker dropped `dropped` notifications
/// from the user's full inbox.
pub(super) fn dropped_notice(inbox: &InboxSpec, dropped: u64) -> String {
    let user = &inbox.user;
    let (notifications, were) = if dropped == 1 {
        ("notification", "was")
    } else {
        ("notifications", "were")
    };
    let why = match inbox.bound {
        Some(1) => "the inbox keeps only the latest one".to_owned(),
        Some(bound) => format!("the inbox keeps only the latest {bound}"),
        None => "the inbox was full".to_owned(),
    };
    format!("{dropped} {notifications} for {user} {were} dropped while {user} was away: {why}")
}

/// Subscribes; the reply, and whether the user did not follow before.
fn subscribe_in(
    tx: &Connection,
    user: &str,
    youtuber: &str,
    now: i64,
) -> rusqlite::Result<(Reply, bool)> {
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO subscriptions (user, youtuber, since_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![user, youtuber, now])?
        == 1;
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM youtubers WHERE name = ?1)")?
        .query_row([youtuber], |row| row.get(0))?;
    let notice = (!known).then(|| {
        format!(
            "{youtuber} has not uploaded any video yet; \
             {user} will be notified of the first one"
        )
    });
    Ok((Reply::Done { notice }, added))
}

/// Unsubscribes; the reply, and whether the user followed before.
fn unsubscribe_in(tx: &Connection, user: &str, youtuber: &str) -> rusqlite::Result<(Reply, bool)> {
    let removed = tx
        .prepare_cached("DELETE FROM subscriptions WHERE user = ?1 AND youtuber = ?2")?
        .execute(params![user, youtuber])?;
    Ok(if removed == 1 {
        (Reply::Done { notice: None }, true)
    } else {
        let reason = not_following(tx, user, youtuber)?;
        (Reply::Refused { reason }, false)
    })
}

fn upload_in(
    tx: &Connection,
    youtuber: String,
    title: String,
    now: i64,
) -> rusqlite::Result<Video> {
    tx.prepare_cached("INSERT OR IGNORE INTO youtubers (name, created_at_ms) VALUES (?1, ?2)")?
        .execute(params![youtuber, now])?;
    let video = Video {
        id: Uuid::new_v4(),
        youtuber,
        title,
        uploaded_at_ms: now,
        notified: false,
    };
    tx.prepare_cached(
        "INSERT INTO videos (id, youtuber, title, uploaded_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        video.id.to_string(),
        video.youtuber,
        video.title,
        now
    ])?;
    Ok(video)
}

pub(super) fn is_subscribed(
    connection: &Connection,
    user: &str,
    youtuber: &str,
) -> rusqlite::Result<bool> {
    connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE user = ?1 AND youtuber = ?2)",
        )?
        .query_row(params![user, youtuber], |row| row.get(0))
}

fn record(
    connection: &Connection,
    request_id: Uuid,
    reply: &Reply,
    video_id: Option<Uuid>,
    now: i64,
) -> rusqlite::Result<()> {
    // Stored as it is sent, so that a replay decodes it like the client did.
    let reply = String::from_utf8(crate::protocol::encode(&reply.clone().fitted()))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    connection
        .prepare_cached(
            "INSERT INTO applied_requests (id, reply, video_id, applied_at_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            request_id.to_string(),
            reply,
            video_id.map(|id| id.to_string()),
            now
        ])?;
    Ok(())
}

/// The reply recorded for a request applied before, and the video it stored.
fn recorded(
    connection: &Connection,
    request_id: Uuid,
) -> rusqlite::Result<Option<(Reply, Option<String>)>> {
    let stored: Option<(String, Option<String>)> = connection
        .prepare_cached("SELECT reply, video_id FROM applied_requests WHERE id = ?1")?
        .query_row([request_id.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    stored
        .map(|(text, video_id)| {
            let reply = crate::protocol::decode_reply(text.as_bytes()).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            Ok((reply, video_id))
        })
        .transpose()
}

pub(super) fn subscriptions_of(
    connection: &Connection,
    user: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection
        .prepare_cached("SELECT youtuber FROM subscriptions WHERE user = ?1 ORDER BY youtuber")?;
    let youtubers = statement.query_map([user], |row| row.get(0))?;
    youtubers.collect()
}

fn not_following(connection: &Connection, user: &str, youtuber: &str) -> rusqlite::Result<String> {
    let follows = subscriptions_of(connection, user)?;
    Ok(if follows.is_empty() {
        format!("{user} is not subscribed to {youtuber} (and follows nobody)")
    } else {
        format!(
            "{user} is not subscribed to {youtuber} ({user} follows: {})",
            follows.join(", ")
        )
    })
}

fn video_by_id(connection: &Connection, id: &str) -> rusqlite::Result<Video> {
    connection.query_row(
        "SELECT id, youtuber, title, uploaded_at_ms, notified FROM videos WHERE id = ?1",
        [id],
        video_from_row,
    )
}

pub(super) fn video_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Video> {
    let id: String = row.get(0)?;
    let id = Uuid::parse_str(&id).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Video {
        id,
        youtuber: row.get(1)?,
        title: row.get(2)?,
        uploaded_at_ms: row.get(3)?,
        notified: row.get(4)?,
    })
}
