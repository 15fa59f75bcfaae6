//! Applying one request of a batch: its savepoint, its reply and effect, and
//! the reads and writes of each kind of request.

use uuid::Uuid;

use super::{
    Applied, Decision, Effect, InboxSpec, Rules, Video,
    db::{DbError, Fault, Row, Tx, args},
    interactions::{self, unsent_note},
};
use crate::protocol::{self, Celebrity, Reply, Request};

/// The columns [`video_from_row`] reads, in its order.
pub(super) const VIDEO_COLUMNS: &str =
    "id, youtuber, title, uploaded_at_ms, notified, seq, streamed";

/// How far back a session reads a celebrity's stream, before the time the
/// server looked at what the user was shown: whatever the server numbered
/// after that look was appended later, by a clock that may be this much
/// behind the server's. What it reads twice it recognises by number.
pub const STREAM_READ_MARGIN_MS: i64 = 60_000;

/// Applies one request in its own savepoint of the batch's transaction, and
/// refuses it if it fails on its own.
pub(super) async fn apply_isolated(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    request: Request,
    now: i64,
    rules: Rules,
) -> Result<Decision, DbError> {
    let is_query = request.is_query();
    tx.batch("SAVEPOINT request").await?;
    let err = match apply_one(tx, request_id, request.clone(), now, rules).await {
        Ok(outcome) => {
            tx.batch("RELEASE SAVEPOINT request").await?;
            return Ok(outcome);
        }
        Err(err) => err,
    };
    tx.batch("ROLLBACK TO SAVEPOINT request").await?;
    match err.kind {
        Fault::Request => {}
        Fault::Database => return Err(err),
        // Another server stored this request while this one applied it, and
        // committed first: now that it is visible, it is replayed.
        Fault::Duplicate if recorded(tx, request_id).await?.is_some() => {
            let replayed = apply_one(tx, request_id, request, now, rules).await?;
            tx.batch("RELEASE SAVEPOINT request").await?;
            return Ok(replayed);
        }
        // The request's own: a redelivery after its id was pruned, of a
        // request whose rows keep its id (a comment).
        Fault::Duplicate => {}
    }
    tracing::warn!(%request_id, %err, "refusing a request the database cannot store");
    let reply = Reply::Refused {
        reason: format!(
            "the server's database cannot handle this request ({err}); it changed nothing now \
             and is refused for good: the server's log has the details"
        ),
    };
    // Recorded, so that a redelivery gets this answer at once instead of
    // failing the same way each time it comes back. A query is not recorded.
    if !is_query && let Err(err) = record_refusal(tx, request_id, &reply, now).await {
        if err.kind == Fault::Database {
            return Err(err);
        }
        // A redelivery fails the same way and is refused again: the same answer.
        tx.batch("ROLLBACK TO SAVEPOINT request").await?;
        tracing::warn!(%request_id, %err, "cannot record the refusal of a request");
    }
    tx.batch("RELEASE SAVEPOINT request").await?;
    Ok(Decision {
        reply: Applied::New(reply),
        effect: Effect::None,
        tell: None,
    })
}

/// Applies one request inside the batch's transaction.
async fn apply_one(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    request: Request,
    now: i64,
    rules: Rules,
) -> Result<Decision, DbError> {
    let inbox_bound = rules.inbox_bound;
    // A query changes nothing and is not recorded; nor is a `seen`, which
    // only ever moves a number forward, so that a copy is harmless.
    let answer = match &request {
        Request::Celebrities { user } => Some(celebrities_of(tx, user, now).await?),
        Request::Seen {
            user,
            youtuber,
            seq,
        } => {
            seen(tx, user, youtuber, *seq).await?;
            Some(Reply::Done { notice: None })
        }
        Request::ListSubscriptions { user } => Some(Reply::Subscriptions {
            youtubers: subscriptions_of(tx, user).await?,
        }),
        Request::ListVideos { youtuber, .. } => {
            Some(interactions::videos_of(tx, youtuber, true).await?)
        }
        Request::Stats { youtuber } => Some(interactions::videos_of(tx, youtuber, false).await?),
        _ => None,
    };
    if let Some(reply) = answer {
        return Ok(Decision {
            reply: Applied::New(reply),
            effect: Effect::None,
            tell: None,
        });
    }
    let replayed = recorded(tx, request_id).await?;
    if let Some((reply, video_id)) = replayed {
        // What the first attempt was to tell a creator, if it is not sent yet.
        let tell = unsent_note(tx, request_id).await?;
        let effect = match request {
            // No user: the first attempt was refused, and left nothing to repair.
            Request::Login { user, history } => match inbox_of(tx, &user).await? {
                Some(inbox) => login_effect(tx, inbox, history).await?,
                None => Effect::None,
            },
            Request::ChangeSubscription { user, youtuber, .. } => {
                match inbox_of(tx, &user).await? {
                    Some(inbox) => Effect::Binding {
                        subscribed: is_subscribed(tx, &user, &youtuber).await?
                            && !is_celebrity(tx, &youtuber).await?,
                        user,
                        youtuber,
                        // The first attempt may have stopped before declaring the inbox.
                        declare: Some(inbox),
                    },
                    None => Effect::None,
                }
            }
            Request::Upload { .. } => match video_id {
                Some(id) => Effect::Notify(video_by_id(tx, &id).await?),
                None => Effect::None,
            },
            Request::React { .. }
            | Request::Comment { .. }
            | Request::ListSubscriptions { .. }
            | Request::ListVideos { .. }
            | Request::Stats { .. }
            | Request::Celebrities { .. }
            | Request::Seen { .. } => Effect::None,
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
            add_user(tx, &user, now, inbox_bound).await?;
            let (inbox, dropped) = user_inbox(tx, &user).await?;
            let notice = (dropped > 0).then(|| dropped_notice(&inbox, dropped));
            if notice.is_some() {
                tx.execute("UPDATE users SET dropped = 0 WHERE name = ?1", args![&user])
                    .await?;
            }
            let effect = login_effect(tx, inbox, history).await?;
            (Reply::Done { notice }, effect, None)
        }
        Request::ChangeSubscription {
            user,
            youtuber,
            subscribe,
        } => {
            let declare = if add_user(tx, &user, now, inbox_bound).await? {
                Some(user_inbox(tx, &user).await?.0)
            } else {
                None
            };
            let (reply, changed) = if subscribe {
                subscribe_in(tx, &user, &youtuber, now).await?
            } else {
                unsubscribe_in(tx, &user, &youtuber).await?
            };
            if changed {
                tell = interactions::subscriber(tx, request_id, &user, &youtuber, subscribe, now)
                    .await?;
            }
            let effect = Effect::Binding {
                // Whether refused or not, the user now follows exactly when
                // the request asked to; a celebrity through its stream.
                subscribed: subscribe && !is_celebrity(tx, &youtuber).await?,
                user,
                youtuber,
                declare,
            };
            (reply, effect, None)
        }
        Request::Upload { youtuber, video } => {
            let video = upload_in(tx, youtuber, video, now, rules.celebrities_from).await?;
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
            let (reply, note) =
                interactions::react(tx, request_id, &user, &video, reaction, now).await?;
            tell = note;
            (reply, Effect::None, None)
        }
        Request::Comment { user, video, text } => {
            let (reply, note) =
                interactions::comment(tx, request_id, &user, &video, &text, now).await?;
            tell = note;
            (reply, Effect::None, None)
        }
        Request::ListSubscriptions { .. }
        | Request::ListVideos { .. }
        | Request::Stats { .. }
        | Request::Celebrities { .. }
        | Request::Seen { .. } => {
            unreachable!("answered above")
        }
    };
    record(tx, request_id, &reply, video_id, now).await?;
    Ok(Decision {
        reply: Applied::New(reply),
        effect,
        tell,
    })
}

/// Adds the user if new (returning `true`) with an inbox of `inbox_bound`,
/// and records the time as their last login: a user who changes a
/// subscription is online.
async fn add_user(
    tx: &mut Tx<'_>,
    user: &str,
    now: i64,
    inbox_bound: Option<u32>,
) -> Result<bool, DbError> {
    let added = tx
        .execute(
            "INSERT INTO users (name, created_at_ms, last_login_ms, inbox_bound)
             VALUES (?1, ?2, ?2, ?3) ON CONFLICT DO NOTHING",
            args![user, now, inbox_bound],
        )
        .await?
        == 1;
    if !added {
        tx.execute(
            "UPDATE users SET last_login_ms = ?2 WHERE name = ?1",
            args![user, now],
        )
        .await?;
    }
    Ok(added)
}

/// The user's inbox as recorded, and how many notifications it dropped since
/// the last login, if there is such a user.
async fn recorded_inbox(tx: &mut Tx<'_>, user: &str) -> Result<Option<(InboxSpec, u64)>, DbError> {
    let Some(row) = tx
        .query_opt(
            "SELECT inbox_bound, dropped FROM users WHERE name = ?1",
            args![user],
        )
        .await?
    else {
        return Ok(None);
    };
    let inbox = InboxSpec {
        user: user.to_owned(),
        bound: row.get(0)?,
    };
    let dropped: i64 = row.get(1)?;
    // Never negative unless edited by hand: then nothing to report.
    Ok(Some((inbox, u64::try_from(dropped).unwrap_or_default())))
}

/// The user's inbox as recorded, and how many notifications it dropped since
/// the last login; an error if there is no such user.
async fn user_inbox(tx: &mut Tx<'_>, user: &str) -> Result<(InboxSpec, u64), DbError> {
    recorded_inbox(tx, user)
        .await?
        .ok_or_else(|| DbError::data(format!("no user {user}")))
}

/// The user's inbox as recorded, if there is such a user.
async fn inbox_of(tx: &mut Tx<'_>, user: &str) -> Result<Option<InboxSpec>, DbError> {
    Ok(recorded_inbox(tx, user).await?.map(|(inbox, _)| inbox))
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

/// Whether a YouTuber of that name has uploaded.
pub(super) async fn youtuber_exists(tx: &mut Tx<'_>, youtuber: &str) -> Result<bool, DbError> {
    tx.query_value(
        "SELECT EXISTS (SELECT 1 FROM youtubers WHERE name = ?1)",
        args![youtuber],
    )
    .await
}

/// Subscribes; the reply, and whether the user did not follow before.
async fn subscribe_in(
    tx: &mut Tx<'_>,
    user: &str,
    youtuber: &str,
    now: i64,
) -> Result<(Reply, bool), DbError> {
    let added = tx
        .execute(
            // A celebrity's subscriber has been shown none of its uploads
            // so far, and will be shown every later one.
            r#"INSERT INTO subscriptions ("user", youtuber, since_ms, shown_seq)
               VALUES (?1, ?2, ?3,
                       (SELECT uploads FROM youtubers WHERE name = ?2 AND streamed_from IS NOT NULL))
               ON CONFLICT DO NOTHING"#,
            args![user, youtuber, now],
        )
        .await?
        == 1;
    let notice = (!youtuber_exists(tx, youtuber).await?).then(|| {
        format!(
            "{youtuber} has not uploaded any video yet; \
             {user} will be notified of the first one"
        )
    });
    Ok((Reply::Done { notice }, added))
}

/// Unsubscribes; the reply, and whether the user followed before.
async fn unsubscribe_in(
    tx: &mut Tx<'_>,
    user: &str,
    youtuber: &str,
) -> Result<(Reply, bool), DbError> {
    let removed = tx
        .execute(
            r#"DELETE FROM subscriptions WHERE "user" = ?1 AND youtuber = ?2"#,
            args![user, youtuber],
        )
        .await?;
    Ok(if removed == 1 {
        (Reply::Done { notice: None }, true)
    } else {
        let reason = not_following(tx, user, youtuber).await?;
        (Reply::Refused { reason }, false)
    })
}

/// Stores an upload with the next number of its YouTuber. If the YouTuber
/// has `celebrities_from` subscribers or more, it becomes a celebrity: this
/// upload is the last copied into the inboxes, and tells sessions to read
/// the stream the later ones go to.
async fn upload_in(
    tx: &mut Tx<'_>,
    youtuber: String,
    title: String,
    now: i64,
    celebrities_from: Option<u64>,
) -> Result<Video, DbError> {
    tx.execute(
        "INSERT INTO youtubers (name, created_at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        args![&youtuber, now],
    )
    .await?;
    let numbered = tx
        .query_opt(
            "UPDATE youtubers SET uploads = uploads + 1 WHERE name = ?1
             RETURNING uploads, streamed_from",
            args![&youtuber],
        )
        .await?
        .ok_or_else(|| DbError::data(format!("no YouTuber {youtuber}")))?;
    let seq: u64 = numbered.get(0)?;
    let (streamed, stream_after) = match (numbered.get::<Option<u64>>(1)?, celebrities_from) {
        (Some(_), _) => (true, false),
        (None, Some(threshold)) => {
            let subscribers: u64 = tx
                .query_value(
                    "SELECT count(*) FROM subscriptions WHERE youtuber = ?1",
                    args![&youtuber],
                )
                .await?;
            let becomes = subscribers >= threshold;
            if becomes {
                tx.execute(
                    "UPDATE youtubers SET streamed_from = ?2 WHERE name = ?1",
                    args![&youtuber, seq + 1],
                )
                .await?;
                tracing::info!(
                    youtuber,
                    subscribers,
                    "became a celebrity: its uploads after this one go to its stream"
                );
            }
            (false, becomes)
        }
        (None, None) => (false, false),
    };
    let video = Video {
        id: Uuid::new_v4(),
        youtuber,
        title,
        uploaded_at_ms: now,
        notified: false,
        seq: Some(seq),
        streamed,
        stream_after,
    };
    // `streamed`: 0 to the inboxes, 1 to the stream, 2 to the inboxes, the
    // last one there.
    let delivery: i64 = match (streamed, stream_after) {
        (true, _) => 1,
        (false, true) => 2,
        (false, false) => 0,
    };
    tx.execute(
        "INSERT INTO videos (id, youtuber, title, uploaded_at_ms, seq, streamed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![video.id, &video.youtuber, &video.title, now, seq, delivery],
    )
    .await?;
    Ok(video)
}

/// Whether `youtuber` is a celebrity.
async fn is_celebrity(tx: &mut Tx<'_>, youtuber: &str) -> Result<bool, DbError> {
    tx.query_value(
        "SELECT EXISTS (SELECT 1 FROM youtubers WHERE name = ?1 AND streamed_from IS NOT NULL)",
        args![youtuber],
    )
    .await
}

/// What a login makes the broker do: the inbox, and the user's exchange
/// bound to each YouTuber the user follows but the celebrities.
///
/// A binding to a celebrity made before it became one stays: nothing is
/// published there any more, and removing it could race with the last
/// upload copied into the inboxes. Unsubscribing removes it.
async fn login_effect(tx: &mut Tx<'_>, inbox: InboxSpec, history: bool) -> Result<Effect, DbError> {
    let subscriptions = tx
        .query(
            r#"SELECT s.youtuber FROM subscriptions s
               LEFT JOIN youtubers y ON y.name = s.youtuber
               WHERE s."user" = ?1 AND y.streamed_from IS NULL ORDER BY s.youtuber"#,
            args![&inbox.user],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect::<Result<_, _>>()?;
    Ok(Effect::Inbox {
        inbox,
        subscriptions,
        history,
    })
}

/// The celebrities `user` follows, and what of theirs the user was not shown.
async fn celebrities_of(tx: &mut Tx<'_>, user: &str, now: i64) -> Result<Reply, DbError> {
    let followed = tx
        .query(
            // A subscriber from before the YouTuber became a celebrity had
            // the uploads before its stream in the inbox.
            r#"SELECT s.youtuber, COALESCE(s.shown_seq, y.streamed_from - 1), y.uploads
               FROM subscriptions s JOIN youtubers y ON y.name = s.youtuber
               WHERE s."user" = ?1 AND y.streamed_from IS NOT NULL ORDER BY s.youtuber"#,
            args![user],
        )
        .await?;
    let mut celebrities = Vec::with_capacity(followed.len());
    for row in followed {
        let youtuber: String = row.get(0)?;
        let shown: u64 = row.get(1)?;
        let latest: u64 = row.get(2)?;
        // Up to `latest` only: one numbered after it (stored since that
        // read) is for the stream to bring.
        let mut missed = tx
            .query(
                &format!(
                    "SELECT {VIDEO_COLUMNS} FROM videos
                     WHERE youtuber = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT ?4"
                ),
                args![&youtuber, shown, latest, protocol::MAX_MISSED_LISTED],
            )
            .await?
            .iter()
            .map(|row| video_from_row(row).map(|video| video.notification()))
            .collect::<Result<Vec<_>, _>>()?;
        missed.reverse();
        celebrities.push(Celebrity {
            youtuber,
            latest,
            missed,
        });
    }
    Ok(Reply::Celebrities {
        read_from_ms: now - STREAM_READ_MARGIN_MS,
        celebrities,
    })
}

/// Records that `user` was shown `youtuber`'s uploads up to `seq`: never
/// backwards, never past the latest.
async fn seen(tx: &mut Tx<'_>, user: &str, youtuber: &str, seq: u64) -> Result<(), DbError> {
    tx.execute(
        r#"UPDATE subscriptions SET shown_seq = ?3
           WHERE "user" = ?1 AND youtuber = ?2 AND COALESCE(shown_seq, 0) < ?3
             AND ?3 <= (SELECT uploads FROM youtubers WHERE name = ?2)"#,
        args![user, youtuber, seq],
    )
    .await?;
    Ok(())
}

pub(super) async fn is_subscribed(
    tx: &mut Tx<'_>,
    user: &str,
    youtuber: &str,
) -> Result<bool, DbError> {
    tx.query_value(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE "user" = ?1 AND youtuber = ?2)"#,
        args![user, youtuber],
    )
    .await
}

async fn record(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    reply: &Reply,
    video_id: Option<Uuid>,
    now: i64,
) -> Result<(), DbError> {
    // Stored as it is sent, so that a replay decodes it like the client did.
    let reply = String::from_utf8(crate::protocol::encode(&reply.clone().fitted()))
        .map_err(DbError::data)?;
    tx.execute(
        "INSERT INTO applied_requests (id, reply, video_id, applied_at_ms) VALUES (?1, ?2, ?3, ?4)",
        args![request_id, reply, video_id, now],
    )
    .await?;
    Ok(())
}

/// Records the refusal of a request the database could not store. Its id
/// may be recorded already, with a reply that no longer decodes: that stays,
/// and is refused the same way at each redelivery.
async fn record_refusal(
    tx: &mut Tx<'_>,
    request_id: Uuid,
    reply: &Reply,
    now: i64,
) -> Result<(), DbError> {
    let reply = String::from_utf8(crate::protocol::encode(&reply.clone().fitted()))
        .map_err(DbError::data)?;
    tx.execute(
        "INSERT INTO applied_requests (id, reply, applied_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO NOTHING",
        args![request_id, reply, now],
    )
    .await?;
    Ok(())
}

/// The reply recorded for a request applied before, and the video it stored.
async fn recorded(
    tx: &mut Tx<'_>,
    request_id: Uuid,
) -> Result<Option<(Reply, Option<String>)>, DbError> {
    let Some(row) = tx
        .query_opt(
            "SELECT reply, video_id FROM applied_requests WHERE id = ?1",
            args![request_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let text: String = row.get(0)?;
    let reply = crate::protocol::decode_reply(text.as_bytes()).map_err(DbError::data)?;
    Ok(Some((reply, row.get(1)?)))
}

pub(super) async fn subscriptions_of(tx: &mut Tx<'_>, user: &str) -> Result<Vec<String>, DbError> {
    tx.query(
        r#"SELECT youtuber FROM subscriptions WHERE "user" = ?1 ORDER BY youtuber"#,
        args![user],
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect()
}

async fn not_following(tx: &mut Tx<'_>, user: &str, youtuber: &str) -> Result<String, DbError> {
    let follows = subscriptions_of(tx, user).await?;
    Ok(if follows.is_empty() {
        format!("{user} is not subscribed to {youtuber} (and follows nobody)")
    } else {
        format!(
            "{user} is not subscribed to {youtuber} ({user} follows: {})",
            follows.join(", ")
        )
    })
}

async fn video_by_id(tx: &mut Tx<'_>, id: &str) -> Result<Video, DbError> {
    let row = tx
        .query_opt(
            &format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE id = ?1"),
            args![id],
        )
        .await?
        .ok_or_else(|| DbError::data(format!("no video {id}")))?;
    video_from_row(&row)
}

pub(super) fn video_from_row(row: &Row) -> Result<Video, DbError> {
    Ok(Video {
        id: row.get(0)?,
        youtuber: row.get(1)?,
        title: row.get(2)?,
        uploaded_at_ms: row.get(3)?,
        notified: row.get(4)?,
        seq: row.get(5)?,
        streamed: row.get::<i64>(6)? == 1,
        stream_after: row.get::<i64>(6)? == 2,
    })
}
