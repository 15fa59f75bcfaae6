//! The server's durable state: users, YouTubers, subscriptions, videos, and the
//! ids of requests already applied. SQLite (WAL, `synchronous=FULL`): a call
//! that returns `Ok` has reached the disk.
//!
//! Everything the server persists goes through this module, so another
//! backend (PostgreSQL, for several server processes) replaces this file only.
//!
//! Idempotency: each state-changing request is applied in a transaction that
//! also records its id and its reply. A redelivered request finds its id and
//! gets the recorded reply back ([`Applied::Replayed`]) without changing anything.
//!
//! Group commit: [`Store::apply`] applies a batch of requests, in order, in one
//! transaction — one write to the disk for the whole batch — and says for each
//! what the broker must now do ([`Effect`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use crate::{
    error::{Error, Result},
    protocol::{Reply, Request},
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    last_login_ms INTEGER
);
CREATE TABLE IF NOT EXISTS youtubers (
    name          TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    user     TEXT NOT NULL REFERENCES users(name),
    youtuber TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (user, youtuber)
);
CREATE TABLE IF NOT EXISTS videos (
    id             TEXT PRIMARY KEY,
    youtuber       TEXT NOT NULL REFERENCES youtubers(name),
    title          TEXT NOT NULL,
    uploaded_at_ms INTEGER NOT NULL,
    -- 0 until the broker has confirmed the notification: the outbox.
    notified       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS subscriptions_by_youtuber ON subscriptions(youtuber);
CREATE INDEX IF NOT EXISTS videos_by_youtuber ON videos(youtuber, uploaded_at_ms);
CREATE INDEX IF NOT EXISTS videos_to_notify ON videos(uploaded_at_ms) WHERE notified = 0;
CREATE TABLE IF NOT EXISTS applied_requests (
    id            TEXT PRIMARY KEY,
    reply         TEXT NOT NULL,
    video_id      TEXT,
    applied_at_ms INTEGER NOT NULL
);
";

/// A stored video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub id: Uuid,
    pub youtuber: String,
    pub title: String,
    pub uploaded_at_ms: i64,
    /// Whether the broker has confirmed the notification for this upload.
    pub notified: bool,
}

/// A user, for dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOverview {
    pub name: String,
    pub last_login_ms: Option<i64>,
    pub subscriptions: i64,
}

/// A YouTuber, for dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YoutuberOverview {
    pub name: String,
    pub subscribers: i64,
    pub videos: i64,
    pub latest_video: Option<String>,
}

/// The outcome of a state-changing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<T> {
    /// Applied now, for the first time.
    New(T),
    /// Already applied before (a redelivery); nothing changed.
    Replayed(T),
}

impl<T> Applied<T> {
    /// The outcome, whether new or replayed.
    pub fn into_inner(self) -> T {
        match self {
            Applied::New(value) | Applied::Replayed(value) => value,
        }
    }

    /// Whether the request was applied just now.
    pub fn is_new(&self) -> bool {
        matches!(self, Applied::New(_))
    }
}

/// What the broker must do after a request is stored, so that it matches the
/// database. Computed from the database, not from the request, so that doing
/// it again (after a crash or a redelivery) is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// The user's inbox must exist and be bound to each YouTuber the user
    /// follows (a login: it also repairs an inbox lost on the broker's side).
    Inbox {
        user: String,
        subscriptions: Vec<String>,
    },
    /// The user's inbox must be bound to the YouTuber exactly when `subscribed`.
    /// `new_user`: this request added the user, so the inbox may not exist yet.
    Binding {
        user: String,
        youtuber: String,
        subscribed: bool,
        new_user: bool,
    },
    /// The video's notification must be published (unless `video.notified`).
    Notify(Video),
}

/// The result of one request of a batch given to [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply, and whether the request was applied now or before.
    pub reply: Applied<Reply>,
    pub effect: Effect,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The server's database. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, and its directory.
    pub fn open(path: &Path) -> Result<Store> {
        let open_error = |reason: String| Error::StoreOpen {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let connection = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .and_then(|()| connection.execute_batch(SCHEMA))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_owned(),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the connection in a blocking thread.
    async fn with<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        let outcome = tokio::task::spawn_blocking(move || {
            // A panic inside `work` cannot leave a half-applied transaction
            // (it rolls back on drop), so a poisoned lock is safe to reuse.
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection)
        })
        .await;
        match outcome {
            Ok(result) => Ok(result?),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// Applies `requests` in order, in one transaction, and returns what each
    /// did. Queries among them see the changes made before them in the batch.
    /// Either every request of the batch is stored or none is.
    pub async fn apply(&self, requests: Vec<(Uuid, Request)>) -> Result<Vec<Outcome>> {
        self.with(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let outcomes = requests
                .into_iter()
                .map(|(id, request)| apply_one(&tx, id, request, now))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(outcomes)
        })
        .await
    }

    /// Adds the user the first time, and records the login.
    pub async fn login(&self, request_id: Uuid, user: &str) -> Result<Applied<Reply>> {
        let request = Request::Login {
            user: user.to_owned(),
        };
        Ok(self.apply_single(request_id, request).await?.reply)
    }

    /// Subscribes `user` to `youtuber`, or unsubscribes. Unsubscribing from a
    /// YouTuber the user does not follow is refused, and the refusal recorded
    /// like any other reply.
    pub async fn change_subscription(
        &self,
        request_id: Uuid,
        user: &str,
        youtuber: &str,
        subscribe: bool,
    ) -> Result<Applied<Reply>> {
        let request = Request::Subscription {
            user: user.to_owned(),
            youtuber: youtuber.to_owned(),
            subscribe,
        };
        Ok(self.apply_single(request_id, request).await?.reply)
    }

    /// Stores an upload, adding the YouTuber the first time. The video starts
    /// un-notified: the caller publishes the notification, then calls
    /// [`Store::mark_notified`].
    pub async fn upload(
        &self,
        request_id: Uuid,
        youtuber: &str,
        title: &str,
    ) -> Result<Applied<Video>> {
        let request = Request::Upload {
            youtuber: youtuber.to_owned(),
            video: title.to_owned(),
        };
        let outcome = self.apply_single(request_id, request).await?;
        match (outcome.reply, outcome.effect) {
            (Applied::New(_), Effect::Notify(video)) => Ok(Applied::New(video)),
            (Applied::Replayed(_), Effect::Notify(video)) => Ok(Applied::Replayed(video)),
            (_, other) => unreachable!("an upload's effect is a notification, not {other:?}"),
        }
    }

    async fn apply_single(&self, request_id: Uuid, request: Request) -> Result<Outcome> {
        let mut outcomes = self.apply(vec![(request_id, request)]).await?;
        Ok(outcomes.remove(0))
    }

    /// Records that the broker confirmed the notifications of these videos.
    pub async fn mark_notified(&self, video_ids: Vec<Uuid>) -> Result<()> {
        self.with(move |connection| {
            let tx = connection.transaction()?;
            {
                let mut statement =
                    tx.prepare_cached("UPDATE videos SET notified = 1 WHERE id = ?1")?;
                for id in video_ids {
                    statement.execute([id.to_string()])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Videos whose notification the broker has not confirmed yet, oldest first:
    /// what a crash between storing and notifying left behind.
    pub async fn videos_to_notify(&self) -> Result<Vec<Video>> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, youtuber, title, uploaded_at_ms, notified FROM videos
                 WHERE notified = 0 ORDER BY uploaded_at_ms",
            )?;
            let videos = statement.query_map([], video_from_row)?;
            videos.collect()
        })
        .await
    }

    /// The YouTubers `user` follows, in name order.
    pub async fn subscriptions(&self, user: &str) -> Result<Vec<String>> {
        let user = user.to_owned();
        self.with(move |connection| subscriptions_of(connection, &user))
            .await
    }

    /// Whether `user` follows `youtuber`.
    pub async fn is_subscribed(&self, user: &str, youtuber: &str) -> Result<bool> {
        let (user, youtuber) = (user.to_owned(), youtuber.to_owned());
        self.with(move |connection| is_subscribed(connection, &user, &youtuber))
            .await
    }

    /// The videos of a YouTuber, oldest first.
    pub async fn videos_of(&self, youtuber: &str) -> Result<Vec<Video>> {
        let youtuber = youtuber.to_owned();
        self.with(move |connection| {
            let mut statement = connection.prepare(
                "SELECT id, youtuber, title, uploaded_at_ms, notified FROM videos
                 WHERE youtuber = ?1 ORDER BY uploaded_at_ms, rowid",
            )?;
            let videos = statement.query_map([youtuber], video_from_row)?;
            videos.collect()
        })
        .await
    }

    /// Every user with how many YouTubers they follow, in name order.
    pub async fn users_overview(&self) -> Result<Vec<UserOverview>> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT u.name, u.last_login_ms, COUNT(s.youtuber) FROM users u
                 LEFT JOIN subscriptions s ON s.user = u.name
                 GROUP BY u.name ORDER BY u.name",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(UserOverview {
                    name: row.get(0)?,
                    last_login_ms: row.get(1)?,
                    subscriptions: row.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Every YouTuber (anyone who uploaded or has subscribers) with their
    /// subscriber count, video count and latest video, in name order.
    pub async fn youtubers_overview(&self) -> Result<Vec<YoutuberOverview>> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "WITH names AS (SELECT name FROM youtubers UNION SELECT youtuber FROM subscriptions)
                 SELECT n.name,
                        (SELECT COUNT(*) FROM subscriptions s WHERE s.youtuber = n.name),
                        (SELECT COUNT(*) FROM videos v WHERE v.youtuber = n.name),
                        (SELECT title FROM videos v WHERE v.youtuber = n.name
                         ORDER BY uploaded_at_ms DESC, rowid DESC LIMIT 1)
                 FROM names n ORDER BY n.name",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(YoutuberOverview {
                    name: row.get(0)?,
                    subscribers: row.get(1)?,
                    videos: row.get(2)?,
                    latest_video: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Whether a user of that name exists.
    pub async fn user_exists(&self, user: &str) -> Result<bool> {
        let user = user.to_owned();
        self.with(move |connection| {
            connection.query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                [user],
                |row| row.get(0),
            )
        })
        .await
    }
}

/// Applies one request inside the batch's transaction.
fn apply_one(
    tx: &Connection,
    request_id: Uuid,
    request: Request,
    now: i64,
) -> rusqlite::Result<Outcome> {
    if let Request::Subscriptions { user } = request {
        // A query changes nothing and is not recorded.
        let youtubers = subscriptions_of(tx, &user)?;
        return Ok(Outcome {
            reply: Applied::New(Reply::Subscriptions { youtubers }),
            effect: Effect::None,
        });
    }
    let replayed = recorded(tx, request_id)?;
    if let Some((reply, video_id)) = replayed {
        let effect = match request {
            Request::Login { user } => Effect::Inbox {
                subscriptions: subscriptions_of(tx, &user)?,
                user,
            },
            Request::Subscription { user, youtuber, .. } => Effect::Binding {
                subscribed: is_subscribed(tx, &user, &youtuber)?,
                user,
                youtuber,
                // The first attempt may have stopped before declaring the inbox.
                new_user: true,
            },
            Request::Upload { .. } => match video_id {
                Some(id) => Effect::Notify(video_by_id(tx, &id)?),
                None => Effect::None,
            },
            Request::Subscriptions { .. } => Effect::None,
        };
        return Ok(Outcome {
            reply: Applied::Replayed(reply),
            effect,
        });
    }
    let (reply, effect, video_id) = match request {
        Request::Login { user } => {
            add_user(tx, &user, now)?;
            let effect = Effect::Inbox {
                subscriptions: subscriptions_of(tx, &user)?,
                user,
            };
            (Reply::Done { notice: None }, effect, None)
        }
        Request::Subscription {
            user,
            youtuber,
            subscribe,
        } => {
            let new_user = add_user(tx, &user, now)?;
            let reply = if subscribe {
                subscribe_in(tx, &user, &youtuber, now)?
            } else {
                unsubscribe_in(tx, &user, &youtuber)?
            };
            let effect = Effect::Binding {
                // Whether refused or not, the user now follows exactly when
                // the request asked to.
                subscribed: subscribe,
                user,
                youtuber,
                new_user,
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
        Request::Subscriptions { .. } => unreachable!("answered above"),
    };
    record(tx, request_id, &reply, video_id, now)?;
    Ok(Outcome {
        reply: Applied::New(reply),
        effect,
    })
}

/// Adds the user if new (returning `true`), and records the time as their
/// last login: a user who changes a subscription is online.
fn add_user(tx: &Connection, user: &str, now: i64) -> rusqlite::Result<bool> {
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO users (name, created_at_ms, last_login_ms) VALUES (?1, ?2, ?2)",
        )?
        .execute(params![user, now])?
        == 1;
    if !added {
        tx.prepare_cached("UPDATE users SET last_login_ms = ?2 WHERE name = ?1")?
            .execute(params![user, now])?;
    }
    Ok(added)
}

fn subscribe_in(tx: &Connection, user: &str, youtuber: &str, now: i64) -> rusqlite::Result<Reply> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO subscriptions (user, youtuber, since_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![user, youtuber, now])?;
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM youtubers WHERE name = ?1)")?
        .query_row([youtuber], |row| row.get(0))?;
    let notice = (!known).then(|| {
        format!(
            "{youtuber} has not uploaded any video yet; \
             {user} will be notified of the first one"
        )
    });
    Ok(Reply::Done { notice })
}

fn unsubscribe_in(tx: &Connection, user: &str, youtuber: &str) -> rusqlite::Result<Reply> {
    let removed = tx
        .prepare_cached("DELETE FROM subscriptions WHERE user = ?1 AND youtuber = ?2")?
        .execute(params![user, youtuber])?;
    Ok(if removed == 1 {
        Reply::Done { notice: None }
    } else {
        Reply::Refused {
            reason: not_following(tx, user, youtuber)?,
        }
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

fn is_subscribed(connection: &Connection, user: &str, youtuber: &str) -> rusqlite::Result<bool> {
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
    let reply = String::from_utf8(crate::protocol::encode(reply))
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

fn subscriptions_of(connection: &Connection, user: &str) -> rusqlite::Result<Vec<String>> {
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

fn video_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Video> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nested/dir/test.db")).unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn a_replayed_request_changes_nothing_and_gets_the_same_reply() {
        let (store, _dir) = temp_store();
        let id = Uuid::new_v4();
        let first = store
            .change_subscription(id, "alice", "bob", true)
            .await
            .unwrap();
        assert!(first.is_new());
        // Unsubscribe in between; replaying the subscribe must not re-subscribe.
        store
            .change_subscription(Uuid::new_v4(), "alice", "bob", false)
            .await
            .unwrap();
        let again = store
            .change_subscription(id, "alice", "bob", true)
            .await
            .unwrap();
        assert_eq!(again, Applied::Replayed(first.into_inner()));
        assert!(!store.is_subscribed("alice", "bob").await.unwrap());
    }

    #[tokio::test]
    async fn unsubscribing_from_someone_not_followed_is_refused_with_the_list() {
        let (store, _dir) = temp_store();
        store
            .change_subscription(Uuid::new_v4(), "alice", "bob", true)
            .await
            .unwrap();
        let reply = store
            .change_subscription(Uuid::new_v4(), "alice", "carol", false)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply,
            Reply::Refused {
                reason: "alice is not subscribed to carol (alice follows: bob)".into()
            }
        );
    }

    #[tokio::test]
    async fn subscribing_to_a_youtuber_without_videos_carries_a_notice() {
        let (store, _dir) = temp_store();
        let reply = store
            .change_subscription(Uuid::new_v4(), "alice", "bob", true)
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(reply, Reply::Done { notice: Some(ref n) } if n.contains("bob has not uploaded"))
        );
        store.upload(Uuid::new_v4(), "bob", "First").await.unwrap();
        let reply = store
            .change_subscription(Uuid::new_v4(), "carol", "bob", true)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply, Reply::Done { notice: None });
    }

    #[tokio::test]
    async fn uploads_are_an_outbox_until_marked_notified() {
        let (store, _dir) = temp_store();
        let request = Uuid::new_v4();
        let video = store
            .upload(request, "bob", "Hello")
            .await
            .unwrap()
            .into_inner();
        assert_eq!(store.videos_to_notify().await.unwrap(), vec![video.clone()]);
        // A redelivered upload returns the same video and stores no second one.
        let replayed = store.upload(request, "bob", "Hello").await.unwrap();
        assert_eq!(replayed, Applied::Replayed(video.clone()));
        assert_eq!(store.videos_of("bob").await.unwrap().len(), 1);
        store.mark_notified(vec![video.id]).await.unwrap();
        assert!(store.videos_to_notify().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let store = Store::open(&path).unwrap();
            store.login(Uuid::new_v4(), "alice").await.unwrap();
            store
                .change_subscription(Uuid::new_v4(), "alice", "bob", true)
                .await
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert!(store.user_exists("alice").await.unwrap());
        assert_eq!(store.subscriptions("alice").await.unwrap(), vec!["bob"]);
    }

    #[tokio::test]
    async fn overviews_count_subscriptions_videos_and_the_latest() {
        let (store, _dir) = temp_store();
        store
            .change_subscription(Uuid::new_v4(), "alice", "bob", true)
            .await
            .unwrap();
        store
            .change_subscription(Uuid::new_v4(), "alice", "newbie", true)
            .await
            .unwrap();
        store
            .change_subscription(Uuid::new_v4(), "carol", "bob", true)
            .await
            .unwrap();
        store.upload(Uuid::new_v4(), "bob", "First").await.unwrap();
        store.upload(Uuid::new_v4(), "bob", "Second").await.unwrap();
        store.upload(Uuid::new_v4(), "dave", "Alone").await.unwrap();
        let users = store.users_overview().await.unwrap();
        let counts: Vec<(&str, i64)> = users
            .iter()
            .map(|u| (u.name.as_str(), u.subscriptions))
            .collect();
        assert_eq!(counts, [("alice", 2), ("carol", 1)]);
        let youtubers = store.youtubers_overview().await.unwrap();
        let rows: Vec<(&str, i64, i64, Option<&str>)> = youtubers
            .iter()
            .map(|y| {
                (
                    y.name.as_str(),
                    y.subscribers,
                    y.videos,
                    y.latest_video.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("bob", 2, 2, Some("Second")),
                ("dave", 0, 1, Some("Alone")),
                ("newbie", 1, 0, None),
            ]
        );
    }

    #[test]
    fn an_unwritable_path_says_which_file_and_what_to_do() {
        let err = Store::open(Path::new("/proc/ytnotify/db.sqlite"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot open the database /proc/ytnotify/db.sqlite"),
            "{text}"
        );
        assert!(text.contains("--db"), "{text}");
    }
}
