//! The schema, in SQLite and in PostgreSQL, and the migration of SQLite
//! databases created by older versions.
//!
//! The two say the same in each database's words. PostgreSQL's adds what
//! SQLite has without asking: a `rowid` (the order rows were stored in, for
//! the statements that break ties with it), and bytewise text order
//! (`COLLATE "C"`), so that names sort, and ids compare, the same in both.

use rusqlite::{Connection, TransactionBehavior};

use super::db::{DbError, Tx};

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
    created_at_ms INTEGER NOT NULL,
    -- How many videos the YouTuber uploaded since uploads were numbered:
    -- the number of the latest.
    uploads       INTEGER NOT NULL DEFAULT 0,
    -- The number of the first upload appended to the YouTuber's stream
    -- instead of copied into each inbox; NULL while not a celebrity.
    streamed_from INTEGER
);
CREATE TABLE IF NOT EXISTS subscriptions (
    user      TEXT NOT NULL REFERENCES users(name),
    youtuber  TEXT NOT NULL,
    since_ms  INTEGER NOT NULL,
    -- For a celebrity: the number of the latest upload the user has been
    -- shown from its stream. NULL: none yet (every upload before the stream
    -- was copied into the inbox).
    shown_seq INTEGER,
    PRIMARY KEY (user, youtuber)
);
CREATE TABLE IF NOT EXISTS videos (
    id             TEXT PRIMARY KEY,
    youtuber       TEXT NOT NULL REFERENCES youtubers(name),
    title          TEXT NOT NULL,
    uploaded_at_ms INTEGER NOT NULL,
    -- 0 until the broker has confirmed the notification: the outbox.
    notified       INTEGER NOT NULL DEFAULT 0,
    -- Kept with each reaction and comment, so that a listing reads them
    -- without counting.
    likes          INTEGER NOT NULL DEFAULT 0,
    dislikes       INTEGER NOT NULL DEFAULT 0,
    comments       INTEGER NOT NULL DEFAULT 0,
    -- The upload's number among its YouTuber's (youtubers.uploads); NULL
    -- for one stored before uploads were numbered.
    seq            INTEGER,
    -- Where its notification goes: 0 to the subscribers' inboxes, 1 to the
    -- YouTuber's stream, 2 to the inboxes as the last one there (it made
    -- the YouTuber a celebrity).
    streamed       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS subscriptions_by_youtuber ON subscriptions(youtuber);
CREATE INDEX IF NOT EXISTS videos_by_youtuber ON videos(youtuber, uploaded_at_ms);
CREATE INDEX IF NOT EXISTS videos_by_seq ON videos(youtuber, seq);
CREATE INDEX IF NOT EXISTS videos_to_notify ON videos(uploaded_at_ms) WHERE notified = 0;
CREATE TABLE IF NOT EXISTS applied_requests (
    id            TEXT PRIMARY KEY,
    reply         TEXT NOT NULL,
    video_id      TEXT,
    applied_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_requests_by_time ON applied_requests(applied_at_ms);
-- What each user thinks of a video: one row per user and video, at most.
CREATE TABLE IF NOT EXISTS reactions (
    video_id TEXT NOT NULL REFERENCES videos(id),
    user     TEXT NOT NULL,
    reaction TEXT NOT NULL CHECK (reaction IN ('like', 'dislike')),
    at_ms    INTEGER NOT NULL,
    PRIMARY KEY (video_id, user)
);
-- Which likes and dislikes the creator has been told of: each user's like
-- (and dislike) of a video once, however often it is taken back and given
-- again.
CREATE TABLE IF NOT EXISTS reactions_told (
    video_id TEXT NOT NULL,
    user     TEXT NOT NULL,
    reaction TEXT NOT NULL,
    PRIMARY KEY (video_id, user, reaction)
);
CREATE TABLE IF NOT EXISTS comments (
    -- The id of the request that made it.
    id       TEXT PRIMARY KEY,
    video_id TEXT NOT NULL REFERENCES videos(id),
    user     TEXT NOT NULL,
    text     TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_by_video ON comments(video_id, at_ms);
-- What creators are to hear of (a like, a comment, a new subscriber): the
-- outbox of their inboxes, 0 in `sent` until the broker has confirmed it.
CREATE TABLE IF NOT EXISTS creator_events (
    -- The id of the request that made it.
    id            TEXT PRIMARY KEY,
    youtuber      TEXT NOT NULL,
    -- The event as sent (protocol::CreatorEvent, JSON).
    body          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    sent          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS creator_events_unsent ON creator_events(youtuber, created_at_ms) WHERE sent = 0;
CREATE INDEX IF NOT EXISTS creator_events_by_time ON creator_events(created_at_ms);
-- Facts about the database as a whole, such as the broker layout its
-- subscriptions were last bound in.
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Columns added to tables after their first version, for older databases.
const ADDED_COLUMNS: [(&str, &str, &str); 10] = [
    ("users", "inbox_bound", "INTEGER"),
    ("users", "dropped", "INTEGER NOT NULL DEFAULT 0"),
    ("videos", "likes", "INTEGER NOT NULL DEFAULT 0"),
    ("videos", "dislikes", "INTEGER NOT NULL DEFAULT 0"),
    ("videos", "comments", "INTEGER NOT NULL DEFAULT 0"),
    ("videos", "seq", "INTEGER"),
    ("videos", "streamed", "INTEGER NOT NULL DEFAULT 0"),
    ("youtubers", "uploads", "INTEGER NOT NULL DEFAULT 0"),
    ("youtubers", "streamed_from", "INTEGER"),
    ("subscriptions", "shown_seq", "INTEGER"),
];

/// Creates the tables, and adds to an older database the columns it lacks.
pub(super) fn create_or_migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    // Immediate: two servers opening an old database at once must not both
    // add the same column.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The columns first: an index of SCHEMA may name one.
    for (table, column, declaration) in ADDED_COLUMNS {
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [table],
            |row| row.get(0),
        )?;
        if !exists {
            continue;
        }
        let columns = tx
            .prepare(&format!("PRAGMA table_info({table})"))?
            .query_map([], |row| row.get::<_, String>(1))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !columns.iter().any(|c| c == column) {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    tx.execute_batch(SCHEMA)?;
    tx.commit()
}

const POSTGRES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    name          TEXT COLLATE "C" PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    last_login_ms BIGINT,
    inbox_bound   BIGINT,
    dropped       BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS youtubers (
    name          TEXT COLLATE "C" PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    uploads       BIGINT NOT NULL DEFAULT 0,
    streamed_from BIGINT
);
CREATE TABLE IF NOT EXISTS subscriptions (
    "user"    TEXT COLLATE "C" NOT NULL REFERENCES users(name),
    youtuber  TEXT COLLATE "C" NOT NULL,
    since_ms  BIGINT NOT NULL,
    shown_seq BIGINT,
    PRIMARY KEY ("user", youtuber)
);
CREATE TABLE IF NOT EXISTS videos (
    rowid          BIGINT GENERATED ALWAYS AS IDENTITY,
    id             TEXT COLLATE "C" PRIMARY KEY,
    youtuber       TEXT COLLATE "C" NOT NULL REFERENCES youtubers(name),
    title          TEXT NOT NULL,
    uploaded_at_ms BIGINT NOT NULL,
    notified       BIGINT NOT NULL DEFAULT 0,
    likes          BIGINT NOT NULL DEFAULT 0,
    dislikes       BIGINT NOT NULL DEFAULT 0,
    comments       BIGINT NOT NULL DEFAULT 0,
    seq            BIGINT,
    streamed       BIGINT NOT NULL DEFAULT 0
);
-- Columns added after the first version, for older databases.
ALTER TABLE youtubers ADD COLUMN IF NOT EXISTS uploads BIGINT NOT NULL DEFAULT 0;
ALTER TABLE youtubers ADD COLUMN IF NOT EXISTS streamed_from BIGINT;
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS shown_seq BIGINT;
ALTER TABLE videos ADD COLUMN IF NOT EXISTS seq BIGINT;
ALTER TABLE videos ADD COLUMN IF NOT EXISTS streamed BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS subscriptions_by_youtuber ON subscriptions(youtuber);
CREATE INDEX IF NOT EXISTS videos_by_youtuber ON videos(youtuber, uploaded_at_ms);
CREATE INDEX IF NOT EXISTS videos_by_seq ON videos(youtuber, seq);
CREATE INDEX IF NOT EXISTS videos_to_notify ON videos(uploaded_at_ms) WHERE notified = 0;
CREATE TABLE IF NOT EXISTS applied_requests (
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY,
    id            TEXT COLLATE "C" PRIMARY KEY,
    reply         TEXT NOT NULL,
    video_id      TEXT COLLATE "C",
    applied_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_requests_by_time ON applied_requests(applied_at_ms);
CREATE TABLE IF NOT EXISTS reactions (
    video_id TEXT COLLATE "C" NOT NULL REFERENCES videos(id),
    "user"   TEXT COLLATE "C" NOT NULL,
    reaction TEXT NOT NULL CHECK (reaction IN ('like', 'dislike')),
    at_ms    BIGINT NOT NULL,
    PRIMARY KEY (video_id, "user")
);
CREATE TABLE IF NOT EXISTS reactions_told (
    video_id TEXT COLLATE "C" NOT NULL,
    "user"   TEXT COLLATE "C" NOT NULL,
    reaction TEXT NOT NULL,
    PRIMARY KEY (video_id, "user", reaction)
);
CREATE TABLE IF NOT EXISTS comments (
    id       TEXT COLLATE "C" PRIMARY KEY,
    video_id TEXT COLLATE "C" NOT NULL REFERENCES videos(id),
    "user"   TEXT COLLATE "C" NOT NULL,
    text     TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_by_video ON comments(video_id, at_ms);
CREATE TABLE IF NOT EXISTS creator_events (
    rowid         BIGINT GENERATED ALWAYS AS IDENTITY,
    id            TEXT COLLATE "C" PRIMARY KEY,
    youtuber      TEXT COLLATE "C" NOT NULL,
    body          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    sent          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS creator_events_unsent ON creator_events(youtuber, created_at_ms) WHERE sent = 0;
CREATE INDEX IF NOT EXISTS creator_events_by_time ON creator_events(created_at_ms);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT NOT NULL
);
"#;

/// Creates PostgreSQL's tables if they are missing. Several servers may
/// start at once on one database: a lock taken for the transaction lets one
/// create them while the others wait, then find them there.
pub(super) async fn create_in_postgres(tx: &mut Tx<'_>) -> Result<(), DbError> {
    // Any number, as long as it is always the same one: "ytnotify" in ASCII.
    tx.batch("SELECT pg_advisory_xact_lock(8751113753010185337)")
        .await?;
    // "relation … already exists, skipping" at each start says nothing.
    tx.batch("SET LOCAL client_min_messages = warning").await?;
    tx.batch(POSTGRES_SCHEMA).await
}
