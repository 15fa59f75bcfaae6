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
//! what the broker must now do ([`Effect`]). Each request runs in its own
//! savepoint, so that a request the database cannot store is refused alone
//! instead of failing, again and again, every batch it is in.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};
use uuid::Uuid;

use crate::{
    error::{Error, Result},
    protocol::{Reply, Request},
};

/// The bound given to new users' inboxes unless [`Store::with_inbox_bound`] says otherwise.
pub const DEFAULT_INBOX_BOUND: u32 = 10_000;

/// How many applied requests [`Store::prune_applied`] deletes per transaction.
const PRUNE_CHUNK: usize = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    last_login_ms INTEGER,
    -- The bound the inbox was declared with, and must be declared with again:
    -- RabbitMQ refuses to declare a queue with other arguments. NULL: declared
    -- before inboxes were bounded, so unbounded.
    inbox_bound   INTEGER,
    -- Notifications dropped from the full inbox since the last login.
    dropped       INTEGER NOT NULL DEFAULT 0
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
CREATE INDEX IF NOT EXISTS applied_requests_by_time ON applied_requests(applied_at_ms);
";

/// Columns added to `users` after its first version, for older databases.
const ADDED_USER_COLUMNS: [(&str, &str); 2] = [
    ("inbox_bound", "INTEGER"),
    ("dropped", "INTEGER NOT NULL DEFAULT 0"),
];

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

/// A user's inbox as the broker must declare it: the bound it was created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSpec {
    /// The user whose inbox it is.
    pub user: String,
    /// The most notifications it keeps (`None`: unbounded).
    pub bound: Option<u32>,
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
        inbox: InboxSpec,
        subscriptions: Vec<String>,
    },
    /// The user's inbox must be bound to the YouTuber exactly when `subscribed`.
    /// `declare`: the inbox may not exist yet (this request added the user, or
    /// it is a replay whose first attempt may have stopped before declaring it).
    Binding {
        user: String,
        youtuber: String,
        subscribed: bool,
        declare: Option<InboxSpec>,
    },
    /// The video's notification must be published (unless `video.notified`).
    Notify(Video),
}

/// What the store decided for one request of a batch given to
/// [`Store::apply`]: the reply, and the effect to carry out on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
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
    inbox_bound: Option<u32>,
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
        let mut connection = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .and_then(|()| create_or_migrate(&mut connection))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_owned(),
            inbox_bound: Some(DEFAULT_INBOX_BOUND),
        })
    }

    /// Sets the bound given to the inboxes of users added from now on
    /// (`None`: unbounded); users already stored keep the bound they were
    /// added with.
    pub fn with_inbox_bound(mut self, bound: Option<u32>) -> Store {
        self.inbox_bound = bound;
        self
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
    ///
    /// A request that fails on its own (data that no longer decodes, a
    /// constraint) is undone alone and refused, and the refusal recorded under
    /// its id like any reply; the others are stored. An error of the database
    /// as a whole (busy, disk full, I/O) stores none of the batch: try the
    /// batch again later.
    pub async fn apply(&self, requests: Vec<(Uuid, Request)>) -> Result<Vec<Decision>> {
        let inbox_bound = self.inbox_bound;
        self.with(move |connection| {
            let mut tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let outcomes = requests
                .into_iter()
                .map(|(id, request)| apply_isolated(&mut tx, id, request, now, inbox_bound))
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
        let request = Request::ChangeSubscription {
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
            (reply, _) => Err(Error::Refused(match reply.into_inner() {
                Reply::Refused { reason } => reason,
                // Only a request id reused for another kind of request gets here.
                _ => format!(
                    "request {request_id} was applied before as another kind of request; \
                     send the upload again with a new id"
                ),
            })),
        }
    }

    async fn apply_single(&self, request_id: Uuid, request: Request) -> Result<Decision> {
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

    /// Adds notifications the broker dropped from full inboxes to each user's
    /// count, reported at the user's next login. Unknown users are ignored.
    pub async fn record_dropped(&self, counts: Vec<(String, u64)>) -> Result<()> {
        self.with(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                // Saturating: past i64::MAX, SQLite would turn the sum into a float.
                let mut statement = tx.prepare_cached(
                    "UPDATE users SET dropped = dropped + MIN(?2, 9223372036854775807 - dropped)
                     WHERE name = ?1",
                )?;
                for (user, count) in counts {
                    statement.execute(params![user, i64::try_from(count).unwrap_or(i64::MAX)])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Forgets the requests applied before `applied_before_ms` (milliseconds
    /// since the Unix epoch) and returns how many.
    ///
    /// This is the horizon of idempotency: a request redelivered after its id
    /// is pruned is applied again (an upload stores and notifies a second
    /// video; a subscription change may undo a later one). Prune only what no
    /// queue or client can still deliver: older than the longest a request
    /// can wait in its queue and a client keeps sending it again.
    pub async fn prune_applied(&self, applied_before_ms: i64) -> Result<usize> {
        let mut pruned = 0;
        loop {
            // One chunk per transaction, giving the connection back in
            // between, so that batches of requests never wait behind a large
            // prune for long.
            let deleted = self
                .with(move |connection| {
                    connection
                        .prepare_cached(
                            "DELETE FROM applied_requests WHERE rowid IN (
                                 SELECT rowid FROM applied_requests
                                 WHERE applied_at_ms < ?1 LIMIT ?2)",
                        )?
                        .execute(params![applied_before_ms, PRUNE_CHUNK as i64])
                })
                .await?;
            pruned += deleted;
            if deleted < PRUNE_CHUNK {
                return Ok(pruned);
            }
        }
    }

    /// How many applied requests are remembered (what [`Store::prune_applied`]
    /// keeps in check).
    pub async fn applied_count(&self) -> Result<u64> {
        self.with(|connection| {
            let count: i64 =
                connection.query_row("SELECT COUNT(*) FROM applied_requests", [], |row| {
                    row.get(0)
                })?;
            Ok(u64::try_from(count).unwrap_or_default())
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

/// Creates the tables, and adds to an older database the columns it lacks.
fn create_or_migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    // Immediate: two servers opening an old database at once must not both
    // add the same column.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    let columns = tx
        .prepare("PRAGMA table_info(users)")?
        .query_map([], |row| row.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (column, declaration) in ADDED_USER_COLUMNS {
        if !columns.iter().any(|c| c == column) {
            tx.execute_batch(&format!(
                "ALTER TABLE users ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    tx.commit()
}

/// Applies one request in its own savepoint of the batch's transaction, and
/// refuses it if it fails on its own.
fn apply_isolated(
    tx: &mut Transaction<'_>,
    request_id: Uuid,
    request: Request,
    now: i64,
    inbox_bound: Option<u32>,
) -> rusqlite::Result<Decision> {
    let is_query = matches!(request, Request::ListSubscriptions { .. });
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
    })
}

/// Whether `err` belongs to the request being applied (its data, a
/// constraint) rather than to the database as a whole: locks held by another
/// writer, the disk, the file, memory. Those fail the batch, to be tried again
/// when the database is back; refusing requests for them would lose requests
/// that a retry would store.
fn is_request_error(err: &rusqlite::Error) -> bool {
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
    if let Request::ListSubscriptions { user } = request {
        // A query changes nothing and is not recorded.
        let youtubers = subscriptions_of(tx, &user)?;
        return Ok(Decision {
            reply: Applied::New(Reply::Subscriptions { youtubers }),
            effect: Effect::None,
        });
    }
    let replayed = recorded(tx, request_id)?;
    if let Some((reply, video_id)) = replayed {
        let effect = match request {
            // No user: the first attempt was refused, and left nothing to repair.
            Request::Login { user } => match inbox_of(tx, &user)? {
                Some(inbox) => Effect::Inbox {
                    subscriptions: subscriptions_of(tx, &user)?,
                    inbox,
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
            Request::ListSubscriptions { .. } => Effect::None,
        };
        return Ok(Decision {
            reply: Applied::Replayed(reply),
            effect,
        });
    }
    let (reply, effect, video_id) = match request {
        Request::Login { user } => {
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
        Request::ListSubscriptions { .. } => unreachable!("answered above"),
    };
    record(tx, request_id, &reply, video_id, now)?;
    Ok(Decision {
        reply: Applied::New(reply),
        effect,
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
fn dropped_notice(inbox: &InboxSpec, dropped: u64) -> String {
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

    /// The schema before inboxes were bounded, as the first servers created it.
    const SCHEMA_BEFORE_BOUNDS: &str = "
        CREATE TABLE users (
            name          TEXT PRIMARY KEY,
            created_at_ms INTEGER NOT NULL,
            last_login_ms INTEGER
        );
        CREATE TABLE youtubers (
            name          TEXT PRIMARY KEY,
            created_at_ms INTEGER NOT NULL
        );
        CREATE TABLE subscriptions (
            user     TEXT NOT NULL REFERENCES users(name),
            youtuber TEXT NOT NULL,
            since_ms INTEGER NOT NULL,
            PRIMARY KEY (user, youtuber)
        );
        CREATE TABLE videos (
            id             TEXT PRIMARY KEY,
            youtuber       TEXT NOT NULL REFERENCES youtubers(name),
            title          TEXT NOT NULL,
            uploaded_at_ms INTEGER NOT NULL,
            notified       INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX subscriptions_by_youtuber ON subscriptions(youtuber);
        CREATE INDEX videos_by_youtuber ON videos(youtuber, uploaded_at_ms);
        CREATE INDEX videos_to_notify ON videos(uploaded_at_ms) WHERE notified = 0;
        CREATE TABLE applied_requests (
            id            TEXT PRIMARY KEY,
            reply         TEXT NOT NULL,
            video_id      TEXT,
            applied_at_ms INTEGER NOT NULL
        );
    ";

    /// Runs SQL on the store's connection, as an operator (or a fault) would.
    fn execute(store: &Store, sql: &str) {
        store.connection.lock().unwrap().execute_batch(sql).unwrap();
    }

    fn login(user: &str) -> Request {
        Request::Login { user: user.into() }
    }

    fn subscribe(user: &str, youtuber: &str) -> Request {
        Request::ChangeSubscription {
            user: user.into(),
            youtuber: youtuber.into(),
            subscribe: true,
        }
    }

    fn upload(youtuber: &str, video: &str) -> Request {
        Request::Upload {
            youtuber: youtuber.into(),
            video: video.into(),
        }
    }

    fn inbox(user: &str, bound: Option<u32>) -> InboxSpec {
        InboxSpec {
            user: user.into(),
            bound,
        }
    }

    #[tokio::test]
    async fn an_old_database_gains_the_new_columns_and_its_users_stay_unbounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(SCHEMA_BEFORE_BOUNDS).unwrap();
            old.execute_batch(
                "INSERT INTO users VALUES ('alice', 1, 1);
                 INSERT INTO subscriptions VALUES ('alice', 'bob', 1);",
            )
            .unwrap();
        }
        // Opening twice: the migration runs once, then finds nothing to do.
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap().with_inbox_bound(Some(500));
        let alice = store
            .apply(vec![(Uuid::new_v4(), login("alice"))])
            .await
            .unwrap();
        assert_eq!(
            alice[0].effect,
            Effect::Inbox {
                inbox: inbox("alice", None),
                subscriptions: vec!["bob".into()],
            }
        );
        let carol = store
            .apply(vec![(Uuid::new_v4(), login("carol"))])
            .await
            .unwrap();
        assert_eq!(
            carol[0].effect,
            Effect::Inbox {
                inbox: inbox("carol", Some(500)),
                subscriptions: vec![],
            }
        );
        let indexed: bool = store
            .connection
            .lock()
            .unwrap()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'applied_requests_by_time')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(indexed, "prune_applied would scan the whole table");
        // The old user's dropped count starts at 0 and counts from there.
        store
            .record_dropped(vec![("alice".into(), 2)])
            .await
            .unwrap();
        let reply = store
            .login(Uuid::new_v4(), "alice")
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply,
            Reply::Done {
                notice: Some(
                    "2 notifications for alice were dropped while alice was away: \
                     the inbox was full"
                        .into()
                )
            }
        );
    }

    #[tokio::test]
    async fn effects_carry_the_bound_recorded_for_the_user_not_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let subscribed = Uuid::new_v4();
        {
            let store = Store::open(&path).unwrap().with_inbox_bound(Some(100));
            let outcomes = store
                .apply(vec![(subscribed, subscribe("alice", "bob"))])
                .await
                .unwrap();
            assert_eq!(
                outcomes[0].effect,
                Effect::Binding {
                    user: "alice".into(),
                    youtuber: "bob".into(),
                    subscribed: true,
                    declare: Some(inbox("alice", Some(100))),
                }
            );
        }
        let store = Store::open(&path).unwrap().with_inbox_bound(None);
        let outcomes = store
            .apply(vec![
                (Uuid::new_v4(), login("alice")),
                (subscribed, subscribe("alice", "bob")),
                (Uuid::new_v4(), subscribe("alice", "carol")),
                (Uuid::new_v4(), subscribe("dave", "bob")),
            ])
            .await
            .unwrap();
        let effects: Vec<Effect> = outcomes.into_iter().map(|o| o.effect).collect();
        assert_eq!(
            effects,
            [
                Effect::Inbox {
                    inbox: inbox("alice", Some(100)),
                    subscriptions: vec!["bob".into()],
                },
                // A replay declares the inbox again, as first declared.
                Effect::Binding {
                    user: "alice".into(),
                    youtuber: "bob".into(),
                    subscribed: true,
                    declare: Some(inbox("alice", Some(100))),
                },
                // A known user's inbox exists already.
                Effect::Binding {
                    user: "alice".into(),
                    youtuber: "carol".into(),
                    subscribed: true,
                    declare: None,
                },
                Effect::Binding {
                    user: "dave".into(),
                    youtuber: "bob".into(),
                    subscribed: true,
                    declare: Some(inbox("dave", None)),
                },
            ]
        );
    }

    #[tokio::test]
    async fn dropped_notifications_are_reported_once_at_the_next_login() {
        let (store, _dir) = temp_store();
        store.login(Uuid::new_v4(), "alice").await.unwrap();
        store
            .record_dropped(vec![("alice".into(), 2), ("ghost".into(), 5)])
            .await
            .unwrap();
        store
            .record_dropped(vec![("alice".into(), 1)])
            .await
            .unwrap();
        assert!(!store.user_exists("ghost").await.unwrap());
        let id = Uuid::new_v4();
        let first = store.login(id, "alice").await.unwrap();
        let expected = Reply::Done {
            notice: Some(
                "3 notifications for alice were dropped while alice was away: \
                 the inbox keeps only the latest 10000"
                    .into(),
            ),
        };
        assert_eq!(first, Applied::New(expected.clone()));
        assert_eq!(
            store.login(id, "alice").await.unwrap(),
            Applied::Replayed(expected)
        );
        assert_eq!(
            store.login(Uuid::new_v4(), "alice").await.unwrap(),
            Applied::New(Reply::Done { notice: None })
        );
    }

    #[test]
    fn the_dropped_notice_counts_in_words() {
        assert_eq!(
            dropped_notice(&inbox("alice", Some(1)), 1),
            "1 notification for alice was dropped while alice was away: \
             the inbox keeps only the latest one"
        );
        assert_eq!(
            dropped_notice(&inbox("bob", Some(50)), 7),
            "7 notifications for bob were dropped while bob was away: \
             the inbox keeps only the latest 50"
        );
    }

    #[tokio::test]
    async fn pruning_forgets_only_old_requests_which_then_apply_again() {
        let (store, _dir) = temp_store();
        let old_upload = Uuid::new_v4();
        store.upload(old_upload, "bob", "Hello").await.unwrap();
        store.login(Uuid::new_v4(), "alice").await.unwrap();
        let recent = Uuid::new_v4();
        store.login(recent, "carol").await.unwrap();
        execute(
            &store,
            &format!("UPDATE applied_requests SET applied_at_ms = 1000 WHERE id != '{recent}'"),
        );
        assert_eq!(store.applied_count().await.unwrap(), 3);
        assert_eq!(store.prune_applied(1000).await.unwrap(), 0);
        assert_eq!(store.prune_applied(1001).await.unwrap(), 2);
        assert_eq!(store.applied_count().await.unwrap(), 1);
        assert!(!store.login(recent, "carol").await.unwrap().is_new());
        // Past the horizon, a redelivery is a new request: a second video.
        assert!(
            store
                .upload(old_upload, "bob", "Hello")
                .await
                .unwrap()
                .is_new()
        );
        assert_eq!(store.videos_of("bob").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_large_prune_runs_in_chunks_to_the_end() {
        let (store, _dir) = temp_store();
        execute(
            &store,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000)
             INSERT INTO applied_requests (id, reply, applied_at_ms)
             SELECT 'old-' || i, '{}', i FROM n;",
        );
        assert_eq!(store.prune_applied(i64::MAX).await.unwrap(), 25_000);
        assert_eq!(store.applied_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_request_whose_recorded_reply_is_corrupt_is_refused_alone() {
        let (store, _dir) = temp_store();
        let corrupt = Uuid::new_v4();
        store.login(corrupt, "alice").await.unwrap();
        execute(
            &store,
            &format!("UPDATE applied_requests SET reply = 'not json' WHERE id = '{corrupt}'"),
        );
        let batch = vec![
            (corrupt, login("alice")),
            (Uuid::new_v4(), subscribe("carol", "bob")),
            (Uuid::new_v4(), upload("bob", "Hello")),
        ];
        let outcomes = store.apply(batch.clone()).await.unwrap();
        let Applied::New(Reply::Refused { reason }) = &outcomes[0].reply else {
            panic!("the corrupt request is not refused: {:?}", outcomes[0]);
        };
        assert!(
            reason.starts_with("the server's database cannot handle this request (")
                && reason.ends_with("); it changed nothing now and is refused for good: the server's log has the details"),
            "{reason}"
        );
        assert_eq!(outcomes[0].effect, Effect::None);
        assert!(outcomes[1].reply.is_new() && outcomes[2].reply.is_new());
        assert!(store.is_subscribed("carol", "bob").await.unwrap());
        assert_eq!(store.videos_of("bob").await.unwrap().len(), 1);
        // Redelivered, the corrupt one is refused the same way, the others replayed.
        let again = store.apply(batch).await.unwrap();
        assert_eq!(again[0], outcomes[0]);
        assert!(!again[1].reply.is_new() && !again[2].reply.is_new());
    }

    #[tokio::test]
    async fn a_refused_request_is_undone_and_its_refusal_recorded() {
        let (store, _dir) = temp_store();
        // A constraint that only this title breaks, after the request has
        // already added its YouTuber.
        execute(
            &store,
            "CREATE TRIGGER poison BEFORE INSERT ON videos WHEN NEW.title = 'Poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned title'); END;",
        );
        let poisoned = Uuid::new_v4();
        let outcomes = store
            .apply(vec![
                (poisoned, upload("mallory", "Poison")),
                (Uuid::new_v4(), upload("bob", "Fine")),
            ])
            .await
            .unwrap();
        let refusal = Reply::Refused {
            reason: "the server's database cannot handle this request (poisoned title); \
                     it changed nothing now and is refused for good: the server's log has the details"
                .into(),
        };
        assert_eq!(
            outcomes[0],
            Decision {
                reply: Applied::New(refusal.clone()),
                effect: Effect::None,
            }
        );
        assert!(matches!(outcomes[1].effect, Effect::Notify(_)));
        let youtubers = store.youtubers_overview().await.unwrap();
        assert_eq!(
            youtubers
                .iter()
                .map(|y| y.name.as_str())
                .collect::<Vec<_>>(),
            ["bob"]
        );
        // Once the cause is gone, a redelivery still gets the recorded answer.
        execute(&store, "DROP TRIGGER poison;");
        let again = store
            .apply(vec![(poisoned, upload("mallory", "Poison"))])
            .await
            .unwrap();
        assert_eq!(
            again[0],
            Decision {
                reply: Applied::Replayed(refusal.clone()),
                effect: Effect::None,
            }
        );
        let err = store
            .upload(poisoned, "mallory", "Poison")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Refused(ref reason) if reason.contains("poisoned")));
    }

    #[test]
    fn only_errors_of_the_whole_database_fail_a_batch() {
        use rusqlite::ffi;
        let sqlite = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_FULL,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOMEM,
        ] {
            assert!(!is_request_error(&sqlite(code)), "{code}");
        }
        for code in [
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
            ffi::SQLITE_MISMATCH,
            ffi::SQLITE_TOOBIG,
        ] {
            assert!(is_request_error(&sqlite(code)), "{code}");
        }
        assert!(is_request_error(&rusqlite::Error::QueryReturnedNoRows));
        assert!(is_request_error(
            &rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                "not json".into(),
            )
        ));
    }
}
