//! Revocation of external credentials (database roles): the work queue of the revocation
//! worker, kept on the lease itself.
//!
//! Tables: the `revocation`, `revocation_attempts`, `revocation_next_at` and
//! `revocation_error` columns of `leases` (leases are marked `pending` by
//! [`Store::revoke`] and [`Store::sweep`]).
//!
//! Guarantees:
//! - the state is one of [`ExternalRevocation`] (NULL: none); any other stored text is a
//!   decode error, never a silently ignored lease;
//! - a lease is due while `pending` or `failed` and its next attempt time has come; the
//!   queue is read on the writer, so a worker sees its own last outcome.

use sqlx::{AssertSqlSafe, Database, Decode, Row, Type};

use super::Store;
use super::leases::{LEASE_COLUMNS, LEASE_FROM};
use crate::store::{ExternalRevocation, LeaseRow, Result};

/// Stored as its name (`pending`, `failed`, `done`); any other text fails to decode.
impl<DB: Database> Type<DB> for ExternalRevocation
where
    str: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for ExternalRevocation
where
    &'r str: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        Ok(<&'r str as Decode<'r, DB>>::decode(value)?.parse()?)
    }
}

impl Store {
    /// Leases whose external credentials are due for a revocation attempt (of `env` only,
    /// when given).
    pub async fn due_revocations(
        &self,
        now: i64,
        limit: i64,
        env: Option<&str>,
    ) -> Result<Vec<LeaseRow>> {
        with_db!(self, |w, r, Db| {
            let sql = format!(
                "SELECT {LEASE_COLUMNS} FROM {LEASE_FROM} WHERE l.revocation IN ('pending', 'failed')
             AND (l.revocation_next_at IS NULL OR l.revocation_next_at <= $1)
             AND ($3 IS NULL OR l.env = $3)
             ORDER BY l.revocation_next_at LIMIT $2"
            );
            Ok(sqlx::query_as::<Db, LeaseRow>(AssertSqlSafe(sql))
                .bind(now)
                .bind(limit)
                .bind(env)
                .fetch_all(w)
                .await?)
        })
    }

    /// Records the outcome of a revocation attempt.
    pub async fn set_revocation(
        &self,
        lease_id: &str,
        state: ExternalRevocation,
        attempts: i64,
        next_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
                // An attempt that ends after another one recorded `done` (the worker and a
                // shredding running together) does not undo it.
                "UPDATE leases SET revocation = $1, revocation_attempts = $2, revocation_next_at = $3,
             revocation_error = $4
             WHERE id = $5 AND (revocation IS NULL OR revocation <> 'done')",
            )
            .bind(state.as_str())
            .bind(attempts)
            .bind(next_at)
            .bind(error)
            .bind(lease_id)
            .execute(w)
            .await?;
            Ok(())
        })
    }

    /// Makes every lease of `env` holding database roles due now, unless its roles are
    /// already dropped: those whose teardown never started (live, revoked, or expired and not
    /// yet swept) and those waiting out a retry backoff. Crypto-shredding drops them all while
    /// their sealed records can still be opened.
    pub async fn mark_env_roles_due(&self, env: &str, now: i64) -> Result<u64> {
        with_db!(self, |w, r, Db| {
            let done = sqlx::query(
                "UPDATE leases SET revocation = COALESCE(revocation, 'pending'), revocation_next_at = $1
                 WHERE env = $2 AND (revocation IS NULL OR revocation IN ('pending', 'failed'))
                   AND EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = leases.id
                               AND c.kind = 'postgres')",
            )
            .bind(now)
            .bind(env)
            .execute(w)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// Leases of `env` whose external credentials are not revoked yet (`pending` or `failed`).
    pub async fn unsettled_revocations(&self, env: &str) -> Result<i64> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM leases WHERE env = $1 AND revocation IN ('pending', 'failed')",
        )
        .bind(env)
        .fetch_one(w)
        .await?;
            Ok(row.try_get("n")?)
        })
    }
}
