//! The server's durable state: users, YouTubers, subscriptions, videos, and the
//! ids of requests already applied, in SQLite (WAL, `synchronous=FULL`) or in
//! PostgreSQL: a call that returns `Ok` has been committed to the disk.
//!
//! Everything the server persists goes through this module. The logic is
//! written once, over the small interface of `db` that both databases
//! implement; `schema` says the tables in each one's words.
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

mod apply;
mod claims;
mod copy;
pub(crate) mod db;
mod interactions;
mod schema;

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::Connection;
use uuid::Uuid;

use crate::{
    error::{Error, Result},
    protocol::{CreatorEvent, Notification, Reply, Request},
};

pub use apply::STREAM_READ_MARGIN_MS;
use apply::{VIDEO_COLUMNS, apply_isolated, is_subscribed, subscriptions_of, video_from_row};
pub use claims::Claims;
pub use copy::Copied;
pub use db::Database;
use db::{Db, DbError, Mode, Tx, args};
use schema::{create_in_postgres, create_or_migrate};

/// The bound given to new users' inboxes unless [`Store::with_inbox_bound`] says otherwise.
pub const DEFAULT_INBOX_BOUND: u32 = 10_000;

/// How many applied requests [`Store::prune_applied`] deletes per transaction.
const PRUNE_CHUNK: usize = 10_000;

/// How long a transaction waits for another writer's lock before it fails
/// (and the server tries the batch again later).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A stored video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub id: Uuid,
    pub youtuber: String,
    pub title: String,
    pub uploaded_at_ms: i64,
    /// Whether the broker has confirmed the notification for this upload.
    pub notified: bool,
    /// Its number among its YouTuber's uploads; `None` if stored before
    /// uploads were numbered.
    pub seq: Option<u64>,
    /// Whether its notification goes to the YouTuber's stream (a
    /// celebrity's) instead of every subscriber's inbox.
    pub streamed: bool,
    /// Whether it is the last upload copied into the inboxes, the one that
    /// made its YouTuber a celebrity: it tells sessions to read the stream.
    pub stream_after: bool,
}

impl Video {
    /// The notification of this upload, as subscribers get it.
    pub fn notification(&self) -> Notification {
        Notification::VideoUploaded {
            id: self.id,
            youtuber: self.youtuber.clone(),
            video: self.title.clone(),
            uploaded_at_ms: self.uploaded_at_ms,
            seq: self.seq,
            stream_after: self.stream_after,
        }
    }
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
    /// The user's inbox and exchange must exist, the exchange be bound to
    /// each YouTuber the user follows (a login: it also repairs what was
    /// lost on the broker's side), and, if `history`, the user's history too.
    Inbox {
        inbox: InboxSpec,
        subscriptions: Vec<String>,
        history: bool,
    },
    /// The user's inbox must be bound to the YouTuber exactly when `subscribed`
    /// (never for a celebrity, whose uploads go to its stream).
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
    /// What a creator is to hear of (a like, a comment, a new subscriber)
    /// and has not yet: stored, to be sent to the creator's inbox and then
    /// marked sent ([`Store::mark_told`]).
    pub tell: Option<CreatorNote>,
}

/// An event for a creator's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatorNote {
    /// The creator.
    pub youtuber: String,
    pub event: CreatorEvent,
}

/// The broker layout this version binds subscriptions in: each user's
/// exchange bound to the notifications exchange, feeding the inbox and the
/// history (see `topology`).
pub const BROKER_LAYOUT: u32 = 2;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The server's database. Cheap to clone; clones share the connection (or,
/// for PostgreSQL, the pool of connections).
#[derive(Clone)]
pub struct Store {
    db: Db,
    database: Database,
    rules: Rules,
}

/// What a server decides for new users and YouTubers, beside what requests say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// The bound of a new user's inbox (`None`: unbounded).
    pub inbox_bound: Option<u32>,
    /// How many subscribers make a YouTuber a celebrity, whose uploads are
    /// appended to a stream instead of copied into each inbox (`None`: never).
    pub celebrities_from: Option<u64>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            inbox_bound: Some(DEFAULT_INBOX_BOUND),
            celebrities_from: None,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, and its directory.
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
                 PRAGMA foreign_keys = ON;",
            )
            .and_then(|()| connection.busy_timeout(BUSY_TIMEOUT))
            .and_then(|()| create_or_migrate(&mut connection))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Store {
            db: Db::sqlite(connection),
            database: Database::Sqlite(path.to_owned()),
            rules: Rules::default(),
        })
    }

    /// Opens `database`: a SQLite file as [`Store::open`] does, or a
    /// PostgreSQL database, whose tables are made if missing.
    pub async fn connect(database: &Database) -> Result<Store> {
        let url = match database {
            Database::Sqlite(path) => return Store::open(path),
            Database::Postgres(url) => url,
        };
        let unusable = |reason: String, advice: String| Error::PostgresUnusable {
            url: database.shown(),
            reason,
            advice,
        };
        let db = Db::postgres(url).map_err(|reason| Error::BadPostgresUrl {
            url: database.shown(),
            reason,
        })?;
        db.check_postgres(url)
            .await
            .map_err(|(reason, advice)| unusable(reason, advice))?;
        db.transact(Mode::Write, async |tx: &mut Tx<'_>| {
            create_in_postgres(tx).await
        })
        .await
        .map_err(|err| unusable(err.message, "check PostgreSQL's log".to_owned()))?;
        Ok(Store {
            db,
            database: database.clone(),
            rules: Rules::default(),
        })
    }

    /// Sets the bound given to the inboxes of users added from now on
    /// (`None`: unbounded); users already stored keep the bound they were
    /// added with.
    pub fn with_inbox_bound(mut self, bound: Option<u32>) -> Store {
        self.rules.inbox_bound = bound;
        self
    }

    /// Makes a YouTuber a celebrity at its first upload with at least
    /// `subscribers` subscribers (`None`: never): from that upload on, its
    /// uploads are appended to its stream (`topology::celebrity_stream`)
    /// instead of copied into each subscriber's inbox, and each subscriber's
    /// sessions read them there. A YouTuber stays a celebrity.
    pub fn with_celebrities_from(mut self, subscribers: Option<u64>) -> Store {
        self.rules.celebrities_from = subscribers;
        self
    }

    /// This server's claims on the partitions of the request queues, for a
    /// database that several servers share (PostgreSQL); `None` for a
    /// SQLite file, whose one server takes every partition.
    pub async fn claims(&self) -> Result<Option<Claims>> {
        match &self.db {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(_) => Ok(Some(Claims::open(&self.db).await?)),
        }
    }

    /// Where the state lives.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs `work` in one transaction that only reads.
    async fn read<T, W>(&self, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: AsyncFnOnce(&mut Tx<'_>) -> Result<T, DbError> + Send + 'static,
    {
        Ok(self.db.transact(Mode::Read, work).await?)
    }

    /// Runs `work` in one transaction that writes.
    async fn write<T, W>(&self, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: AsyncFnOnce(&mut Tx<'_>) -> Result<T, DbError> + Send + 'static,
    {
        Ok(self.db.transact(Mode::Write, work).await?)
    }

    /// Applies `requests` in order, in one transaction, and returns what each
    /// did. Queries among them see the changes made before them in the batch.
    /// (On PostgreSQL, one transaction per 64 requests: past 64 savepoints in
    /// one transaction, every other session's reads slow down. A failure
    /// after the first has committed fails the call; tried again, what was
    /// committed is replayed.)
    ///
    /// A request that fails on its own (data that no longer decodes, a
    /// constraint) is undone alone and refused, and the refusal recorded under
    /// its id like any reply; the others are stored. An error of the database
    /// as a whole (unreachable, busy, disk full, I/O, a conflict with another
    /// server) stores none of the batch: try the batch again later.
    pub async fn apply(&self, requests: Vec<(Uuid, Request)>) -> Result<Vec<Decision>> {
        let rules = self.rules;
        let mut decisions = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let part: Vec<_> = requests.by_ref().take(self.db.most_savepoints()).collect();
            let decided = self
                .write(async move |tx: &mut Tx<'_>| {
                    let now = now_ms();
                    let mut outcomes = Vec::with_capacity(part.len());
                    for (id, request) in part {
                        outcomes.push(apply_isolated(tx, id, request, now, rules).await?);
                    }
                    Ok(outcomes)
                })
                .await?;
            decisions.extend(decided);
        }
        Ok(decisions)
    }

    /// Adds the user the first time, and records the login.
    pub async fn login(&self, request_id: Uuid, user: &str) -> Result<Applied<Reply>> {
        let request = Request::login(user);
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
        self.mark_sent("UPDATE videos SET notified = 1 WHERE id = ?1", video_ids)
            .await
    }

    /// Records that the broker confirmed these creator events (by id) in
    /// their creators' inboxes.
    pub async fn mark_told(&self, event_ids: Vec<Uuid>) -> Result<()> {
        self.mark_sent(
            "UPDATE creator_events SET sent = 1 WHERE id = ?1",
            event_ids,
        )
        .await
    }

    /// Runs `update` for each id, in one transaction: an outbox's rows marked sent.
    async fn mark_sent(&self, update: &'static str, ids: Vec<Uuid>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(async move |tx: &mut Tx<'_>| {
            for id in ids {
                tx.execute(update, args![id]).await?;
            }
            Ok(())
        })
        .await
    }

    /// The creators with events not sent yet that were stored before
    /// `before_ms`: what a crash, a refused message or a creator inbox that
    /// could not be declared left behind.
    pub async fn creators_with_unsent(&self, before_ms: i64) -> Result<Vec<String>> {
        self.read(async move |tx: &mut Tx<'_>| {
            interactions::creators_with_unsent(tx, before_ms).await
        })
        .await
    }

    /// `youtuber`'s events not sent yet that were stored before `before_ms`,
    /// oldest first, at most `limit`.
    pub async fn creator_events_to_send(
        &self,
        youtuber: &str,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<CreatorNote>> {
        let youtuber = youtuber.to_owned();
        self.read(async move |tx: &mut Tx<'_>| {
            interactions::unsent_notes(tx, &youtuber, before_ms, limit).await
        })
        .await
    }

    /// Adds notifications the broker dropped from full inboxes to each user's
    /// count, reported at the user's next login. Unknown users are ignored.
    pub async fn record_dropped(&self, counts: Vec<(String, u64)>) -> Result<()> {
        self.write(async move |tx: &mut Tx<'_>| {
            for (user, count) in counts {
                // Saturating: past i64::MAX, SQLite would turn the sum into a
                // float and PostgreSQL fail.
                tx.execute(
                    "UPDATE users SET dropped = CASE
                         WHEN ?2 > 9223372036854775807 - dropped THEN 9223372036854775807
                         ELSE dropped + ?2 END
                     WHERE name = ?1",
                    args![user, i64::try_from(count).unwrap_or(i64::MAX)],
                )
                .await?;
            }
            Ok(())
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
        let pruned = self
            .delete_in_chunks(
                "DELETE FROM applied_requests WHERE applied_at_ms < ?1 AND applied_at_ms <= COALESCE(
                     (SELECT applied_at_ms FROM applied_requests WHERE applied_at_ms < ?1
                      ORDER BY applied_at_ms LIMIT 1 OFFSET ?2), ?1)",
                applied_before_ms,
            )
            .await?;
        // The creator events of then go with them: a replay of their
        // request would be applied again anyway. One never sent by then (its
        // creator's inbox could not be declared all that time) is given up.
        let given_up: i64 = self
            .read(async move |tx: &mut Tx<'_>| {
                tx.query_value(
                    "SELECT COUNT(*) FROM creator_events WHERE sent = 0 AND created_at_ms < ?1",
                    args![applied_before_ms],
                )
                .await
            })
            .await?;
        if given_up > 0 {
            tracing::warn!(
                events = given_up,
                "giving up creator events that could not be sent for a week"
            );
        }
        self.delete_in_chunks(
            "DELETE FROM creator_events WHERE created_at_ms < ?1 AND created_at_ms <= COALESCE(
                 (SELECT created_at_ms FROM creator_events WHERE created_at_ms < ?1
                  ORDER BY created_at_ms LIMIT 1 OFFSET ?2), ?1)",
            applied_before_ms,
        )
        .await?;
        Ok(pruned)
    }

    /// Runs `delete` (with `before` as ?1 and [`PRUNE_CHUNK`] as ?2) until it
    /// deletes less than a chunk; returns how many rows went. One chunk per
    /// transaction, giving the connection back in between, so that batches
    /// of requests never wait behind a large prune for long. A chunk is the
    /// oldest rows up to the time of the chunk's last one (a few more when
    /// several share it): a range of the time index, which both databases
    /// walk without reading the rest of the table.
    async fn delete_in_chunks(&self, delete: &'static str, before: i64) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let chunk = self
                .write(async move |tx: &mut Tx<'_>| {
                    tx.execute(delete, args![before, PRUNE_CHUNK]).await
                })
                .await?;
            let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
            deleted += chunk;
            if chunk < PRUNE_CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// How many applied requests are remembered (what [`Store::prune_applied`]
    /// keeps in check).
    pub async fn applied_count(&self) -> Result<u64> {
        let count: i64 = self
            .read(async |tx: &mut Tx<'_>| {
                tx.query_value("SELECT COUNT(*) FROM applied_requests", &[])
                    .await
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// Whether the broker has confirmed the notification of this video (no
    /// such video: no).
    pub async fn is_notified(&self, video: Uuid) -> Result<bool> {
        self.read(async move |tx: &mut Tx<'_>| {
            match tx
                .query_opt("SELECT notified FROM videos WHERE id = ?1", args![video])
                .await?
            {
                Some(row) => row.get(0),
                None => Ok(false),
            }
        })
        .await
    }

    /// Videos whose notification the broker has not confirmed yet, oldest first:
    /// what a crash between storing and notifying left behind.
    pub async fn videos_to_notify(&self) -> Result<Vec<Video>> {
        self.read(async |tx: &mut Tx<'_>| {
            tx.query(
                &format!(
                    "SELECT {VIDEO_COLUMNS} FROM videos
                     WHERE notified = 0 ORDER BY uploaded_at_ms, rowid"
                ),
                &[],
            )
            .await?
            .iter()
            .map(video_from_row)
            .collect()
        })
        .await
    }

    /// The broker layout the subscriptions were last bound in: 1 (the
    /// inbox bound straight to the notifications exchange) until the server
    /// has moved them to [`BROKER_LAYOUT`] and said so with
    /// [`Store::set_broker_layout`].
    pub async fn broker_layout(&self) -> Result<u32> {
        self.read(async |tx: &mut Tx<'_>| {
            match tx
                .query_opt(
                    "SELECT value FROM settings WHERE key = 'broker_layout'",
                    &[],
                )
                .await?
            {
                Some(row) => row.get(0),
                None => Ok(1),
            }
        })
        .await
    }

    /// Records that the subscriptions are bound in `layout`.
    pub async fn set_broker_layout(&self, layout: u32) -> Result<()> {
        self.write(async move |tx: &mut Tx<'_>| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('broker_layout', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                args![layout],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Every user's inbox and subscriptions, in name order: what the broker
    /// must hold for the database.
    pub async fn every_inbox(&self) -> Result<Vec<(InboxSpec, Vec<String>)>> {
        self.read(async |tx: &mut Tx<'_>| {
            let inboxes = tx
                .query("SELECT name, inbox_bound FROM users ORDER BY name", &[])
                .await?
                .iter()
                .map(|row| {
                    Ok(InboxSpec {
                        user: row.get(0)?,
                        bound: row.get(1)?,
                    })
                })
                .collect::<Result<Vec<_>, DbError>>()?;
            let mut every = Vec::with_capacity(inboxes.len());
            for inbox in inboxes {
                let subscriptions = subscriptions_of(tx, &inbox.user).await?;
                every.push((inbox, subscriptions));
            }
            Ok(every)
        })
        .await
    }

    /// The YouTubers `user` follows, in name order.
    pub async fn subscriptions(&self, user: &str) -> Result<Vec<String>> {
        let user = user.to_owned();
        self.read(async move |tx: &mut Tx<'_>| subscriptions_of(tx, &user).await)
            .await
    }

    /// Whether `user` follows `youtuber`.
    pub async fn is_subscribed(&self, user: &str, youtuber: &str) -> Result<bool> {
        let (user, youtuber) = (user.to_owned(), youtuber.to_owned());
        self.read(async move |tx: &mut Tx<'_>| is_subscribed(tx, &user, &youtuber).await)
            .await
    }

    /// The videos of a YouTuber, oldest first.
    pub async fn videos_of(&self, youtuber: &str) -> Result<Vec<Video>> {
        let youtuber = youtuber.to_owned();
        self.read(async move |tx: &mut Tx<'_>| {
            tx.query(
                &format!(
                    "SELECT {VIDEO_COLUMNS} FROM videos
                     WHERE youtuber = ?1 ORDER BY uploaded_at_ms, rowid"
                ),
                args![youtuber],
            )
            .await?
            .iter()
            .map(video_from_row)
            .collect()
        })
        .await
    }

    /// Every user with how many YouTubers they follow, in name order.
    pub async fn users_overview(&self) -> Result<Vec<UserOverview>> {
        self.read(async |tx: &mut Tx<'_>| {
            tx.query(
                r#"SELECT u.name, u.last_login_ms, COUNT(s.youtuber) FROM users u
                   LEFT JOIN subscriptions s ON s."user" = u.name
                   GROUP BY u.name ORDER BY u.name"#,
                &[],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(UserOverview {
                    name: row.get(0)?,
                    last_login_ms: row.get(1)?,
                    subscriptions: row.get(2)?,
                })
            })
            .collect()
        })
        .await
    }

    /// Every YouTuber (anyone who uploaded or has subscribers) with their
    /// subscriber count, video count and latest video, in name order.
    pub async fn youtubers_overview(&self) -> Result<Vec<YoutuberOverview>> {
        self.read(async |tx: &mut Tx<'_>| {
            tx.query(
                "WITH names AS (SELECT name FROM youtubers UNION SELECT youtuber FROM subscriptions)
                 SELECT n.name,
                        (SELECT COUNT(*) FROM subscriptions s WHERE s.youtuber = n.name),
                        (SELECT COUNT(*) FROM videos v WHERE v.youtuber = n.name),
                        (SELECT title FROM videos v WHERE v.youtuber = n.name
                         ORDER BY uploaded_at_ms DESC, rowid DESC LIMIT 1)
                 FROM names n ORDER BY n.name",
                &[],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(YoutuberOverview {
                    name: row.get(0)?,
                    subscribers: row.get(1)?,
                    videos: row.get(2)?,
                    latest_video: row.get(3)?,
                })
            })
            .collect()
        })
        .await
    }

    /// Whether a user of that name exists.
    pub async fn user_exists(&self, user: &str) -> Result<bool> {
        let user = user.to_owned();
        self.read(async move |tx: &mut Tx<'_>| {
            tx.query_value(
                "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                args![user],
            )
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests;
