//! Static secrets: versioned, sealed under the environment's data key, with their field names
//! in clear (JSON array) for listings.
//!
//! Tables: `secrets` (a broker token's secret read joins it, see `credentials.rs`).
//!
//! Guarantees:
//! - versions of a path only grow: the next version is read inside the write transaction
//!   that inserts it, and `(env, path, version)` is the primary key;
//! - field names that do not decode as a JSON array of strings are an error, never an empty
//!   list.

use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};

use super::Store;
use super::decode::json_column;
use crate::store::{Result, SecretRow, WriteTx};

impl<'r, R: Row> FromRow<'r, R> for SecretRow
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(r: &'r R) -> sqlx::Result<Self> {
        Ok(SecretRow {
            version: r.try_get("version")?,
            fields: json_column(r, "fields")?,
            key_version: r.try_get("key_version")?,
            sealed: r.try_get("sealed")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

impl Store {
    /// Latest version of a secret.
    pub async fn latest_secret(&self, env: &str, path: &str) -> Result<Option<SecretRow>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, SecretRow>(
                "SELECT version, fields, key_version, sealed, created_at FROM secrets
             WHERE env = $1 AND path = $2 ORDER BY version DESC LIMIT 1",
            )
            .bind(env)
            .bind(path)
            .fetch_optional(r)
            .await?)
        })
    }

    /// Every version of a secret, newest first.
    pub async fn secret_versions(&self, env: &str, path: &str) -> Result<Vec<SecretRow>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, SecretRow>(
                "SELECT version, fields, key_version, sealed, created_at FROM secrets
             WHERE env = $1 AND path = $2 ORDER BY version DESC",
            )
            .bind(env)
            .bind(path)
            .fetch_all(r)
            .await?)
        })
    }

    /// Paths of an environment's secrets with a prefix.
    pub async fn secret_paths(&self, env: &str, prefix: &str) -> Result<Vec<String>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_scalar::<Db, String>(
                "SELECT DISTINCT path FROM secrets WHERE env = $1 AND substr(path, 1, length($2)) = $2 ORDER BY path",
            )
            .bind(env)
            .bind(prefix)
            .fetch_all(r)
            .await?)
        })
    }
}

impl WriteTx {
    /// Deletes every version of a secret; the number of versions removed.
    pub async fn delete_secret(&mut self, env: &str, path: &str) -> Result<u64> {
        with_tx!(self, |conn| {
            let r = sqlx::query("DELETE FROM secrets WHERE env = $1 AND path = $2")
                .bind(env)
                .bind(path)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected())
        })
    }

    /// Next version number of a secret.
    pub async fn next_secret_version(&mut self, env: &str, path: &str) -> Result<i64> {
        with_tx!(self, |conn| {
            let row = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM secrets WHERE env = $1 AND path = $2",
        )
        .bind(env)
        .bind(path)
        .fetch_one(&mut *conn)
        .await?;
            Ok(row.try_get("v")?)
        })
    }

    /// Inserts a secret version.
    pub async fn insert_secret(&mut self, env: &str, path: &str, s: &SecretRow) -> Result<()> {
        with_tx!(self, |conn| {
            let fields = serde_json::to_string(&s.fields).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO secrets (env, path, version, fields, key_version, sealed, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(env)
            .bind(path)
            .bind(s.version)
            .bind(fields)
            .bind(s.key_version)
            .bind(&s.sealed)
            .bind(s.created_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }
}
