//! Copying the whole state from one database to another: how a server that
//! kept its state in a SQLite file moves to PostgreSQL (or back) without
//! losing a user, a subscription, a video or the memory of a request.

use super::{
    Store,
    db::{DbError, Mode, Row, Tx, Value},
};
use crate::error::{Error, Result};

/// The tables, parents before children, each with the columns copied and
/// the order of its rows: the order they were stored in (`rowid`) where
/// statements break ties with it, else the primary key's.
const TABLES: [(&str, &str, &str); 10] = [
    (
        "users",
        "name, created_at_ms, last_login_ms, inbox_bound, dropped",
        "name",
    ),
    (
        "youtubers",
        "name, created_at_ms, uploads, streamed_from",
        "name",
    ),
    (
        "subscriptions",
        r#""user", youtuber, since_ms, shown_seq"#,
        r#""user", youtuber"#,
    ),
    (
        "videos",
        "id, youtuber, title, uploaded_at_ms, notified, likes, dislikes, comments, seq, streamed",
        "rowid",
    ),
    (
        "applied_requests",
        "id, reply, video_id, applied_at_ms",
        "rowid",
    ),
    (
        "reactions",
        r#"video_id, "user", reaction, at_ms"#,
        r#"video_id, "user""#,
    ),
    (
        "reactions_told",
        r#"video_id, "user", reaction"#,
        r#"video_id, "user", reaction"#,
    ),
    (
        "comments",
        r#"id, video_id, "user", text, at_ms"#,
        "at_ms, id",
    ),
    (
        "creator_events",
        "id, youtuber, body, created_at_ms, sent",
        "rowid",
    ),
    ("settings", "key, value", "key"),
];

/// How many rows of each table were copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied(pub Vec<(&'static str, usize)>);

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: Vec<String> = self
            .0
            .iter()
            .map(|(table, rows)| format!("{table} {rows}"))
            .collect();
        f.write_str(&counts.join(", "))
    }
}

impl Store {
    /// Copies every row of this database into `to`, in one transaction on
    /// each side: `to` has all of it or nothing. `to` must be empty (a
    /// database the server has not used), so that nothing is mixed; stop the
    /// servers using this one first, or what they store meanwhile stays
    /// behind.
    pub async fn copy_to(&self, to: &Store) -> Result<Copied> {
        let from = self.database().shown();
        let target = to.database().shown();
        if from == target {
            return Err(Error::CopyRefused(format!(
                "{from} is both the source and the target"
            )));
        }
        let rows = self
            .db
            .transact(Mode::Read, async |tx: &mut Tx<'_>| {
                let mut tables = Vec::with_capacity(TABLES.len());
                for (table, columns, order) in TABLES {
                    let sql = format!("SELECT {columns} FROM {table} ORDER BY {order}");
                    tables.push(tx.query(&sql, &[]).await?);
                }
                Ok(tables)
            })
            .await?;
        let copied = to
            .db
            .transact(Mode::Write, async move |tx: &mut Tx<'_>| {
                let mut copied = Vec::with_capacity(TABLES.len());
                for ((table, columns, _), rows) in TABLES.into_iter().zip(rows) {
                    let present: i64 = tx
                        .query_value(&format!("SELECT COUNT(*) FROM {table}"), &[])
                        .await?;
                    if present > 0 && table != "settings" {
                        return Err(DbError::data(format!(
                            "{target} is not empty (its table {table} has rows); copy into a \
                             new database"
                        )));
                    }
                    let count = rows.len();
                    insert_all(tx, table, columns, rows).await?;
                    copied.push((table, count));
                }
                Ok(copied)
            })
            .await
            .map_err(|err| Error::CopyRefused(err.message))?;
        Ok(Copied(copied))
    }
}

/// Inserts `rows` into `table`; a setting the target already has (written
/// when its tables were made) takes the source's value.
async fn insert_all(
    tx: &mut Tx<'_>,
    table: &str,
    columns: &str,
    rows: Vec<Row>,
) -> Result<(), DbError> {
    let width = columns.split(',').count();
    let placeholders: Vec<String> = (1..=width).map(|n| format!("?{n}")).collect();
    let conflict = if table == "settings" {
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO {table} ({columns}) VALUES ({}){conflict}",
        placeholders.join(", ")
    );
    for row in rows {
        let values: Vec<Value> = row.into_values();
        tx.execute(&sql, &values).await?;
    }
    Ok(())
}
