//! The partitions of the request queues that servers sharing a PostgreSQL
//! database have claimed: session-level advisory locks, held on a
//! connection of each server's own. A server that dies loses its
//! connection, and PostgreSQL its claims, at once; a server that stops
//! releases them.
//!
//! The claims only balance the work. What keeps one partition with one
//! server at a time is the queues' single active consumer: a server that
//! still consumes a partition it no longer holds (its connection to
//! PostgreSQL lost unnoticed) holds up the next one, never runs beside it.

use deadpool_postgres::ClientWrapper;

use super::db::{Db, DbError};
use crate::error::Result;

/// The advisory-lock namespace of the servers' presence: one lock per
/// server, keyed by its session's process id ("ytn1").
const SERVERS: i32 = 0x7974_6e31;
/// The namespace of the partitions' claims, keyed by partition ("ytn2").
const PARTITIONS: i32 = 0x7974_6e32;

/// A server's claims, on a connection of their own.
pub struct Claims {
    client: ClientWrapper,
}

impl Claims {
    /// A new connection that counts this server among those present.
    pub(super) async fn open(db: &Db) -> Result<Claims, DbError> {
        let Db::Postgres(pool) = db else {
            return Err(DbError::database("claims need PostgreSQL".to_owned()));
        };
        // Out of the pool for good: when it goes, its locks go with it.
        let client = deadpool_postgres::Object::take(pool.get().await?);
        client
            .execute("SELECT pg_advisory_lock($1, pg_backend_pid())", &[&SERVERS])
            .await?;
        Ok(Claims { client })
    }

    /// Whether the connection, and with it every claim, is gone.
    pub fn is_lost(&self) -> bool {
        self.client.is_closed()
    }

    /// How many servers share the database now, this one included.
    pub async fn servers(&self) -> Result<u16> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
                   AND classid = $1::int4::oid \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&SERVERS],
            )
            .await
            .map_err(DbError::from)?;
        let servers: i64 = row.get(0);
        Ok(u16::try_from(servers.max(1)).unwrap_or(u16::MAX))
    }

    /// Claims `partition` if no server holds it.
    pub async fn try_claim(&self, partition: u16) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&PARTITIONS, &i32::from(partition)],
            )
            .await
            .map_err(DbError::from)?;
        Ok(row.get(0))
    }

    /// Lets another server claim `partition`.
    pub async fn release(&self, partition: u16) -> Result<()> {
        self.client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&PARTITIONS, &i32::from(partition)],
            )
            .await
            .map_err(DbError::from)?;
        Ok(())
    }
}
