//! Keys: an environment's data-key versions (wrapped by the root key) and its signing keys
//! (sealed under a data key), crypto-shredding and rewrap of sealed records.
//!
//! Tables: `data_keys`, `signing_keys`; rewrap also reads and rewrites the `key_version` and
//! `sealed` columns of `leases` and `secrets`.
//!
//! Guarantees:
//! - a data-key version and an environment's signing key per purpose are written once: a
//!   second writer loses on the primary key and is told so (`false`), never overwrites;
//! - crypto-shredding forgets every wrapped data key of the environment and deletes its
//!   signing keys in one transaction;
//! - a reseal replaces a record's ciphertext only while it is still under the version it was
//!   read with, so a concurrent rewrap or write is never undone.

use sqlx::Row;

use super::Store;
use super::open::BeginWrite;
use crate::store::{DataKeyRow, Result, SealedRecord, SealedTable, SigningKeyRow};

impl Store {
    /// Every version of an environment's data key, oldest first.
    pub async fn data_keys(&self, env: &str) -> Result<Vec<DataKeyRow>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, DataKeyRow>(
                "SELECT version, wrapped FROM data_keys WHERE env = $1 ORDER BY version",
            )
            .bind(env)
            .fetch_all(r)
            .await?)
        })
    }

    /// Inserts a data key version; false when that version already exists (another writer won).
    pub async fn insert_data_key(
        &self,
        env: &str,
        version: i64,
        wrapped: &[u8],
        now: i64,
    ) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let r = sqlx::query(
                "INSERT INTO data_keys (env, version, wrapped, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (env, version) DO NOTHING",
            )
            .bind(env)
            .bind(version)
            .bind(wrapped)
            .bind(now)
            .execute(w)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// The environment's signing key for `purpose`.
    pub async fn signing_key(&self, env: &str, purpose: &str) -> Result<Option<SigningKeyRow>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, SigningKeyRow>(
                "SELECT kid, key_version, sealed, public_jwk FROM signing_keys WHERE env = $1 AND purpose = $2",
            )
            .bind(env)
            .bind(purpose)
            .fetch_optional(r)
            .await?)
        })
    }

    /// Stores a signing key unless one exists; false when another writer stored one first.
    pub async fn insert_signing_key(
        &self,
        env: &str,
        purpose: &str,
        row: &SigningKeyRow,
        now: i64,
    ) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let r = sqlx::query(
            "INSERT INTO signing_keys (env, purpose, kid, key_version, sealed, public_jwk, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (env, purpose) DO NOTHING",
        )
        .bind(env)
        .bind(purpose)
        .bind(&row.kid)
        .bind(row.key_version)
        .bind(&row.sealed)
        .bind(&row.public_jwk)
        .bind(now)
        .execute(w)
        .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Crypto-shredding: forgets every wrapped data key of `env` and its signing keys.
    pub async fn destroy_keys(&self, env: &str, now: i64) -> Result<u64> {
        with_db!(self, |w, r, Db| {
            let mut tx = w.begin_write().await?;
            let n = sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = $1 WHERE env = $2 AND wrapped IS NOT NULL",
        )
        .bind(now)
        .bind(env)
        .execute(&mut *tx)
        .await?
        .rows_affected();
            sqlx::query("DELETE FROM signing_keys WHERE env = $1")
                .bind(env)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Up to `limit` records of `table` in `env` sealed under a version below `version`.
    pub async fn sealed_below(
        &self,
        table: SealedTable,
        env: &str,
        version: i64,
        limit: i64,
    ) -> Result<Vec<SealedRecord>> {
        with_db!(self, |w, r, Db| {
            let sql = match table {
                SealedTable::Leases => {
                    "SELECT id AS rid, key_version, sealed FROM leases WHERE env = $1 AND key_version < $2 LIMIT $3"
                }
                SealedTable::Secrets => {
                    "SELECT path || '#' || version AS rid, key_version, sealed FROM secrets WHERE env = $1 AND key_version < $2 LIMIT $3"
                }
                SealedTable::SigningKeys => {
                    "SELECT kid AS rid, key_version, sealed FROM signing_keys WHERE env = $1 AND key_version < $2 LIMIT $3"
                }
            };
            Ok(sqlx::query_as::<Db, SealedRecord>(sql)
                .bind(env)
                .bind(version)
                .bind(limit)
                .fetch_all(r)
                .await?)
        })
    }

    /// Replaces a record's ciphertext, only if it is still under `old_version`.
    pub async fn reseal(
        &self,
        table: SealedTable,
        env: &str,
        rec: &SealedRecord,
        new_version: i64,
        sealed: &[u8],
    ) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let sql = match table {
                SealedTable::Leases => {
                    "UPDATE leases SET key_version = $1, sealed = $2 WHERE env = $3 AND id = $4 AND key_version = $5"
                }
                SealedTable::Secrets => {
                    "UPDATE secrets SET key_version = $1, sealed = $2 WHERE env = $3 AND path || '#' || version = $4 AND key_version = $5"
                }
                SealedTable::SigningKeys => {
                    "UPDATE signing_keys SET key_version = $1, sealed = $2 WHERE env = $3 AND kid = $4 AND key_version = $5"
                }
            };
            let r = sqlx::query(sql)
                .bind(new_version)
                .bind(sealed)
                .bind(env)
                .bind(&rec.id)
                .bind(rec.key_version)
                .execute(w)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Number of records per table still sealed under versions below `version`.
    pub async fn count_sealed_below(&self, env: &str, version: i64) -> Result<i64> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM leases WHERE env = $1 AND key_version < $2)
                  + (SELECT COUNT(*) FROM secrets WHERE env = $1 AND key_version < $2)
                  + (SELECT COUNT(*) FROM signing_keys WHERE env = $1 AND key_version < $2) AS n",
            )
            .bind(env)
            .bind(version)
            .fetch_one(r)
            .await?;
            Ok(row.try_get("n")?)
        })
    }
}
