//! The two databases the store runs on, behind one small interface, so that
//! the store's logic is written once: SQLite, embedded, for one server; and
//! PostgreSQL, for several servers that share their state.
//!
//! Statements are written once, in the SQL both understand, with numbered
//! parameters (`?1`, turned into PostgreSQL's `$1` here) and plain values
//! ([`Value`]) in and out. Every call of the store is one transaction
//! ([`Db::transact`]), run on a blocking thread: SQLite's calls block, and
//! PostgreSQL's are awaited there too, so that both take the same path.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rusqlite::{Connection, ErrorCode};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use crate::error::Error;

/// Where the server keeps its state, as `--db` gives it: a SQLite file, or a
/// `postgres://` (or `postgresql://`) URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, made if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database, shared by every server given the same URL.
    Postgres(String),
}

impl Database {
    /// Reads `--db`: a PostgreSQL URL, or else the path of a SQLite file.
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(text))
        }
    }

    /// The URL of another database on the same PostgreSQL server as `url`,
    /// with the same login: where a test or a benchmark makes its own.
    pub fn postgres_sibling(url: &str, database: &str) -> Result<String, String> {
        let shown = redact_postgres(url);
        let mut parsed = url::Url::parse(url).map_err(|err| format!("{shown}: {err}"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!("{shown} is not a postgres:// URL"));
        }
        // Everything else stays as given: the login (still percent-encoded),
        // the host, the parameters.
        parsed.set_path(&format!("/{database}"));
        Ok(parsed.to_string())
    }

    /// The database as logs and dashboards show it: the file's path, or the
    /// URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => redact_postgres(url),
        }
    }
}

/// A PostgreSQL URL without its password: `postgres://user:***@host/db`.
fn redact_postgres(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@` ends the credentials: a password may hold one.
    let shown = match rest.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{credentials}@{host}"),
        },
        None => rest.to_owned(),
    };
    // A password may also come as a parameter.
    let shown = match shown.split_once("password=") {
        Some((before, after)) => {
            let end = after.find('&').map_or("", |at| &after[at..]);
            format!("{before}password=***{end}")
        }
        None => shown,
    };
    format!("{scheme}://{shown}")
}

impl From<PathBuf> for Database {
    fn from(path: PathBuf) -> Database {
        Database::Sqlite(path)
    }
}

impl From<&Path> for Database {
    fn from(path: &Path) -> Database {
        Database::Sqlite(path.to_owned())
    }
}

impl fmt::Debug for Database {
    /// Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shown())
    }
}

/// How many connections a server keeps to PostgreSQL: one per request queue
/// storing a batch, and a few for the rest (outboxes, dashboards, upkeep).
const POSTGRES_CONNECTIONS: usize = 8;

/// How long connecting to PostgreSQL may take before the call fails (and the
/// server tries its batch again later).
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long PostgreSQL may stay silent on a connection before it is taken
/// for gone.
const POSTGRES_DEAD_AFTER: Duration = Duration::from_secs(30);

/// The longest one statement may run (the largest is a chunk of a prune).
const POSTGRES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a failed statement means for the batch it is in.
#[derive(Debug)]
pub(super) struct DbError {
    pub(super) kind: Fault,
    pub(super) message: String,
}

/// Whose fault a failed statement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The request's own: its data, a constraint. The request is refused
    /// alone.
    Request,
    /// A key already taken, in PostgreSQL: either another server stored the
    /// same request first (it is then recorded, and replayed), or the
    /// request's own (a redelivery past the horizon of idempotency).
    /// `apply::apply_isolated` tells which.
    Duplicate,
    /// The database as a whole (unreachable, busy, full, a deadlock with
    /// another server): the batch is tried again later.
    Database,
}

impl DbError {
    /// Data read back from the database that does not decode: the request's.
    pub(super) fn data(message: impl fmt::Display) -> DbError {
        DbError {
            kind: Fault::Request,
            message: message.to_string(),
        }
    }

    pub(super) fn database(message: impl fmt::Display) -> DbError {
        DbError {
            kind: Fault::Database,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<DbError> for Error {
    fn from(err: DbError) -> Error {
        Error::Store(err.message)
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> DbError {
        // One writer at a time: no other server can have taken a key.
        let kind = if sqlite_error_is_the_requests(&err) {
            Fault::Request
        } else {
            Fault::Database
        };
        DbError {
            kind,
            message: err.to_string(),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(err: tokio_postgres::Error) -> DbError {
        DbError {
            kind: postgres_fault(err.code()),
            message: format!("PostgreSQL: {}", postgres_reason(&err)),
        }
    }
}

/// What went wrong, in PostgreSQL's words when it said something, else the
/// driver's with its cause ("error connecting to server" alone says little).
fn postgres_reason(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

/// What to do about a first connection to PostgreSQL that failed.
fn postgres_advice(err: &tokio_postgres::Error, config: &tokio_postgres::Config) -> String {
    use tokio_postgres::error::SqlState;
    let database = config.get_dbname().unwrap_or("ytnotify");
    let user = config.get_user().unwrap_or("postgres");
    match err.code() {
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
            format!("create it: sudo -u postgres createdb --owner {user} {database}")
        }
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            format!(
                "check the URL's user and password (to make the user: \
                 sudo -u postgres createuser --pwprompt {user})"
            )
        }
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => format!(
            "the user {user} may not create the tables; give it the database \
             (ALTER DATABASE {database} OWNER TO {user}) or use its owner"
        ),
        Some(_) => "check the URL, and PostgreSQL's log".to_owned(),
        None if postgres_reason(err).contains("TLS") => "this youtube_server talks to \
             PostgreSQL without TLS: add ?sslmode=disable to the URL, on a trusted network"
            .to_owned(),
        None => "start PostgreSQL (sudo apt-get install postgresql, then \
                 sudo service postgresql start), or check the URL's host and port"
            .to_owned(),
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(err: deadpool_postgres::PoolError) -> DbError {
        match err {
            deadpool_postgres::PoolError::Backend(err) => err.into(),
            other => DbError::database(format!("PostgreSQL: {other}")),
        }
    }
}

/// Whether a SQLite error belongs to the request being applied rather than
/// to the database as a whole: locks held by another writer, the disk, the
/// file, memory. Those fail the batch, to be tried again when the database
/// is back; refusing requests for them would lose requests that a retry
/// would store.
pub(super) fn sqlite_error_is_the_requests(err: &rusqlite::Error) -> bool {
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

/// Whose fault a PostgreSQL error is: bad data (class 22) or a broken
/// constraint (class 23) is the request's, a key taken is told apart
/// ([`Fault::Duplicate`]); everything else (the connection, a deadlock or
/// serialization failure, a timeout, resources, the administrator) is the
/// database's. No SQLSTATE: the connection, or a value the driver could not
/// convert (none of the store's can fail so).
pub(super) fn postgres_fault(code: Option<&tokio_postgres::error::SqlState>) -> Fault {
    use tokio_postgres::error::SqlState;
    match code {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => Fault::Duplicate,
        Some(code) if code.code().starts_with("22") || code.code().starts_with("23") => {
            Fault::Request
        }
        _ => Fault::Database,
    }
}

/// A value in or out of a statement: what both databases store here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Value {
        Value::Int(value.into())
    }
}

impl From<u64> for Value {
    /// Past `i64::MAX` (never a count or a number of ours), the greatest.
    fn from(value: u64) -> Value {
        Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(value: usize) -> Value {
        Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_owned())
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Value {
        Value::Text(value.clone())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<Uuid> for Value {
    /// Ids are stored as text, lowercase, as `Uuid` writes them.
    fn from(value: Uuid) -> Value {
        Value::Text(value.to_string())
    }
}

impl From<&Uuid> for Value {
    fn from(value: &Uuid) -> Value {
        Value::from(*value)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

/// The parameters of a statement, `?1` first.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::db::Value::from($value)),*]
    };
}
pub(super) use args;

/// A value read out of a row.
pub(super) trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<i64> {
        match value {
            Value::Int(value) => Some(*value),
            _ => None,
        }
    }
}

impl FromValue for u32 {
    fn from_value(value: &Value) -> Option<u32> {
        i64::from_value(value).and_then(|value| u32::try_from(value).ok())
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value) -> Option<u64> {
        i64::from_value(value).and_then(|value| u64::try_from(value).ok())
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<String> {
        match value {
            Value::Text(text) => Some(text.clone()),
            _ => None,
        }
    }
}

impl FromValue for bool {
    /// A flag: PostgreSQL's booleans, and the 0 and 1 both store in columns.
    fn from_value(value: &Value) -> Option<bool> {
        match value {
            Value::Bool(flag) => Some(*flag),
            Value::Int(number) => Some(*number != 0),
            _ => None,
        }
    }
}

impl FromValue for Uuid {
    fn from_value(value: &Value) -> Option<Uuid> {
        match value {
            Value::Text(text) => Uuid::parse_str(text).ok(),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug)]
pub(super) struct Row(Vec<Value>);

impl Row {
    /// The row's values, first column first.
    pub(super) fn into_values(self) -> Vec<Value> {
        self.0
    }

    /// The column at `index`, as a `T`; an error of the request if it is
    /// missing or of another type (a database edited by hand, say).
    pub(super) fn get<T: FromValue>(&self, index: usize) -> Result<T, DbError> {
        let value = self.0.get(index).unwrap_or(&Value::Null);
        T::from_value(value).ok_or_else(|| {
            DbError::data(format!(
                "column {index} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Whether a transaction writes: SQLite then takes the write lock at once,
/// so that it never fails half-way for a writer that came in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Read,
    Write,
}

/// An opened database.
#[derive(Clone)]
pub(super) enum Db {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Pool),
}

impl Db {
    /// The SQLite connection, set up by the caller.
    pub(super) fn sqlite(connection: Connection) -> Db {
        Db::Sqlite(Arc::new(Mutex::new(connection)))
    }

    /// A pool of connections to the PostgreSQL database at `url`; none is
    /// made yet.
    pub(super) fn postgres(url: &str) -> Result<Db, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|err| format!("{err}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POSTGRES_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("youtube_server");
        }
        // A PostgreSQL that stops answering (its host gone from the network)
        // is noticed within half a minute, not the two hours of TCP's
        // defaults; a lock held by someone else fails the batch after
        // BUSY_TIMEOUT, as SQLite's does, and it is tried again later. A
        // statement that hangs would hold its queue and the server's stop.
        config.keepalives_idle(POSTGRES_DEAD_AFTER);
        config.tcp_user_timeout(POSTGRES_DEAD_AFTER);
        // PostgreSQL's side notices a server that vanished (its host gone)
        // within as long too: until then it would keep the server's claims
        // on partitions (`store::Claims`), which no other server could take.
        let dead_after = POSTGRES_DEAD_AFTER.as_secs();
        let timeouts = format!(
            "-c lock_timeout={} -c statement_timeout={} -c tcp_keepalives_idle={} \
             -c tcp_keepalives_interval={} -c tcp_keepalives_count=3 -c tcp_user_timeout={}",
            super::BUSY_TIMEOUT.as_millis(),
            POSTGRES_STATEMENT_TIMEOUT.as_millis(),
            dead_after / 3,
            dead_after / 6,
            POSTGRES_DEAD_AFTER.as_millis()
        );
        let options = match config.get_options() {
            // The URL's own settings come last, and win.
            Some(given) => format!("{timeouts} {given}"),
            None => timeouts,
        };
        config.options(options);
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                // A connection that PostgreSQL closed (a restart) is seen as
                // closed and replaced; one that broke silently fails its next
                // statement, which fails that batch only.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(POSTGRES_CONNECTIONS)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|err| err.to_string())
            .map(Db::Postgres)
    }

    /// The most requests, each in its savepoint, one transaction takes:
    /// PostgreSQL keeps the savepoints that wrote in a per-session cache of
    /// 64, past which every other session's reads must look them up on disk.
    pub(super) fn most_savepoints(&self) -> usize {
        match self {
            Db::Sqlite(_) => usize::MAX,
            Db::Postgres(_) => 64,
        }
    }

    /// Connects to PostgreSQL once, to say at start what is wrong (and what
    /// to do) rather than at the first request.
    pub(super) async fn check_postgres(&self, url: &str) -> Result<(), (String, String)> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        match pool.get().await {
            Ok(_) => Ok(()),
            Err(deadpool_postgres::PoolError::Backend(err)) => {
                let config: tokio_postgres::Config = url
                    .parse()
                    .map_err(|err| (format!("{err}"), String::new()))?;
                Err((postgres_reason(&err), postgres_advice(&err, &config)))
            }
            Err(other) => Err((other.to_string(), "check the URL".to_owned())),
        }
    }

    /// Runs `work` in one transaction, committed if it returns `Ok` and
    /// rolled back otherwise, on a blocking thread.
    pub(super) async fn transact<T, W>(&self, mode: Mode, work: W) -> Result<T, DbError>
    where
        T: Send + 'static,
        W: AsyncFnOnce(&mut Tx<'_>) -> Result<T, DbError> + Send + 'static,
    {
        let db = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let outcome =
            tokio::task::spawn_blocking(move || runtime.block_on(db.transact_here(mode, work)))
                .await;
        match outcome {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    // SQLite's connection stays locked across the work's awaits: none of
    // them waits for anything (SQLite's calls block), and this runs on a
    // blocking thread of its own, where another call waits for the lock.
    #[allow(clippy::await_holding_lock)]
    async fn transact_here<T, W>(&self, mode: Mode, work: W) -> Result<T, DbError>
    where
        W: AsyncFnOnce(&mut Tx<'_>) -> Result<T, DbError>,
    {
        match self {
            Db::Sqlite(connection) => {
                // A panic inside a transaction cannot leave it half-applied
                // (it is rolled back when dropped), so a poisoned lock is safe
                // to reuse.
                let mut connection = connection
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                connection.execute_batch(match mode {
                    Mode::Read => "BEGIN DEFERRED",
                    Mode::Write => "BEGIN IMMEDIATE",
                })?;
                let mut tx = Tx::Sqlite(SqliteTx {
                    connection: &mut connection,
                    open: true,
                });
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
            Db::Postgres(pool) => {
                let client = pool.get().await?;
                client.batch_execute("BEGIN").await?;
                let mut tx = Tx::Postgres(Box::new(PostgresTx {
                    client: Some(client),
                    failed: false,
                }));
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
        }
    }
}

/// A transaction in progress.
pub(super) enum Tx<'c> {
    Sqlite(SqliteTx<'c>),
    Postgres(Box<PostgresTx>),
}

pub(super) struct SqliteTx<'c> {
    connection: &'c mut Connection,
    open: bool,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Nothing more can be done about a failed rollback: the next
            // BEGIN fails, and with it the next batch, which is retried.
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }
}

pub(super) struct PostgresTx {
    /// `None` once committed.
    client: Option<deadpool_postgres::Object>,
    /// A statement failed and no rollback to a savepoint followed: PostgreSQL
    /// would turn the COMMIT into a rollback, and answer it as if it were one.
    failed: bool,
}

impl Drop for PostgresTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Not committed: the connection leaves the pool and closes, and
            // PostgreSQL rolls its transaction back. (A rollback cannot be
            // awaited here, and the connection must not be lent again in the
            // middle of a transaction.)
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Tx<'_> {
    /// Runs a statement; how many rows it changed.
    pub(super) async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self {
            Tx::Sqlite(tx) => {
                let mut statement = tx.connection.prepare_cached(sql)?;
                Ok(statement.execute(rusqlite::params_from_iter(params))? as u64)
            }
            Tx::Postgres(tx) => {
                let outcome = async {
                    let client = tx.client()?;
                    let statement = client.prepare_cached(&numbered_for_postgres(sql)).await?;
                    Ok(client.execute(&statement, &postgres_params(params)).await?)
                }
                .await;
                tx.note(outcome)
            }
        }
    }

    /// Runs a query; its rows.
    pub(super) async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match self {
            Tx::Sqlite(tx) => {
                let mut statement = tx.connection.prepare_cached(sql)?;
                let columns = statement.column_count();
                let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
                    (0..columns)
                        .map(|index| Ok(sqlite_value(row.get_ref(index)?)))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            }
            Tx::Postgres(tx) => {
                let outcome = async {
                    let client = tx.client()?;
                    let statement = client.prepare_cached(&numbered_for_postgres(sql)).await?;
                    let rows = client.query(&statement, &postgres_params(params)).await?;
                    rows.iter().map(postgres_row).collect()
                }
                .await;
                tx.note(outcome)
            }
        }
    }

    /// The first row of a query, if any.
    pub(super) async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// The first column of the first row of a query that always has one
    /// (a count, `EXISTS`).
    pub(super) async fn query_value<T: FromValue>(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<T, DbError> {
        match self.query_opt(sql, params).await? {
            Some(row) => row.get(0),
            None => Err(DbError::data(format!("no row for: {sql}"))),
        }
    }

    /// Runs statements without parameters (a savepoint, a schema).
    pub(super) async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.connection.execute_batch(sql)?),
            Tx::Postgres(tx) => {
                let outcome = async { Ok(tx.client()?.batch_execute(sql).await?) }.await;
                if outcome.is_ok() && sql.starts_with("ROLLBACK TO SAVEPOINT") {
                    tx.failed = false;
                }
                tx.note(outcome)
            }
        }
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => {
                tx.connection.execute_batch("COMMIT")?;
                tx.open = false;
                Ok(())
            }
            Tx::Postgres(tx) => {
                if tx.failed {
                    return Err(DbError::database(
                        "a statement failed and was not rolled back; nothing is committed",
                    ));
                }
                tx.client()?.batch_execute("COMMIT").await?;
                // Back to the pool, out of any transaction.
                tx.client = None;
                Ok(())
            }
        }
    }
}

impl PostgresTx {
    /// Remembers a failed statement (see [`PostgresTx::failed`]).
    fn note<T>(&mut self, outcome: Result<T, DbError>) -> Result<T, DbError> {
        if outcome.is_err() {
            self.failed = true;
        }
        outcome
    }

    fn client(&self) -> Result<&deadpool_postgres::Object, DbError> {
        self.client
            .as_ref()
            .ok_or_else(|| DbError::database("the transaction is over"))
    }
}

/// `sql` with SQLite's numbered parameters (`?1`) written as PostgreSQL's
/// (`$1`). Statements here hold no `?` of their own.
fn numbered_for_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_value(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(number) => Value::Int(number),
        ValueRef::Text(text) | ValueRef::Blob(text) => {
            Value::Text(String::from_utf8_lossy(text).into_owned())
        }
        // No column here holds a real; kept as text rather than lost.
        ValueRef::Real(number) => Value::Text(number.to_string()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(number) => ToSqlOutput::Borrowed(ValueRef::Integer(*number)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Value::Bool(flag) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*flag))),
        })
    }
}

fn postgres_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|value| value as &(dyn ToSql + Sync))
        .collect()
}

impl ToSql for Value {
    /// Written as the type PostgreSQL gave the parameter when it prepared
    /// the statement.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(number), &Type::INT8) => number.to_sql(ty, out),
            (Value::Int(number), &Type::INT4) => i32::try_from(*number)?.to_sql(ty, out),
            (Value::Int(number), &Type::INT2) => i16::try_from(*number)?.to_sql(ty, out),
            (Value::Int(number), &Type::BOOL) => (*number != 0).to_sql(ty, out),
            (Value::Bool(flag), &Type::BOOL) => flag.to_sql(ty, out),
            (Value::Bool(flag), &Type::INT8) => i64::from(*flag).to_sql(ty, out),
            (Value::Text(text), _) => text.as_str().to_sql(ty, out),
            (value, ty) => Err(format!("cannot pass {value:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn postgres_row(row: &tokio_postgres::Row) -> Result<Row, DbError> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let value = match *column.type_() {
                Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(index)?
                    .map(|n| Value::Int(n.into())),
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(index)?
                    .map(|n| Value::Int(n.into())),
                Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(Value::Bool),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    row.try_get::<_, Option<String>>(index)?.map(Value::Text)
                }
                ref other => {
                    return Err(DbError::data(format!(
                        "column {} is of type {other}, which the store does not read",
                        column.name()
                    )));
                }
            };
            Ok(value.unwrap_or(Value::Null))
        })
        .collect::<Result<Vec<_>, DbError>>()
        .map(Row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_are_written_for_postgres() {
        assert_eq!(
            numbered_for_postgres("SELECT a FROM t WHERE b = ?1 AND c < ?12 || 'g'"),
            "SELECT a FROM t WHERE b = $1 AND c < $12 || 'g'"
        );
        assert_eq!(numbered_for_postgres("SELECT '?'"), "SELECT '?'");
    }

    #[test]
    fn a_sibling_database_keeps_the_server_and_the_login() {
        assert_eq!(
            Database::postgres_sibling("postgres://u:pw@db.example:6543/postgres", "other"),
            Ok("postgres://u:pw@db.example:6543/other".to_owned())
        );
        assert_eq!(
            Database::postgres_sibling(
                "postgres://u%40x:p%2Fw@localhost/postgres?sslmode=disable",
                "x"
            ),
            Ok("postgres://u%40x:p%2Fw@localhost/x?sslmode=disable".to_owned())
        );
        let refused = Database::postgres_sibling("mysql://u:secret@db/x", "y").unwrap_err();
        assert!(!refused.contains("secret"), "{refused}");
    }

    #[test]
    fn a_database_is_a_postgres_url_or_a_file() {
        assert_eq!(
            Database::parse("postgres://u:secret@db/ytnotify"),
            Database::Postgres("postgres://u:secret@db/ytnotify".to_owned())
        );
        assert_eq!(
            Database::parse("postgresql://db/ytnotify"),
            Database::Postgres("postgresql://db/ytnotify".to_owned())
        );
        assert_eq!(
            Database::parse("state/server.db"),
            Database::Sqlite(PathBuf::from("state/server.db"))
        );
        assert_eq!(
            Database::parse("postgres://u:s@cret@db/x").shown(),
            "postgres://u:***@db/x"
        );
        assert_eq!(
            Database::parse("postgresql://db/x?user=u&password=secret&sslmode=disable").shown(),
            "postgresql://db/x?user=u&password=***&sslmode=disable"
        );
        assert!(!format!("{:?}", Database::parse("postgres://u:secret@db/x")).contains("secret"));
    }
}
