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

use sqlx::{AssertSqlSafe, Row};

use super::Store;
use super::leases::{LEASE_COLUMNS, LEASE_FROM};
use crate::store::{ExternalRevocation, LeaseRow, Result};

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

    /// Leases of the whole store whose external credentials are not revoked yet: (`pending`,
    /// `failed`). Read on the `(revocation, revocation_next_at)` index.
    pub async fn unsettled_revocation_counts(&self) -> Result<(i64, i64)> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
                "SELECT COALESCE(SUM(CASE WHEN revocation = 'pending' THEN 1 ELSE 0 END), 0) AS pending,
                        COALESCE(SUM(CASE WHEN revocation = 'failed' THEN 1 ELSE 0 END), 0) AS failed
                 FROM leases WHERE revocation IN ('pending', 'failed')",
            )
            .fetch_one(r)
            .await?;
            Ok((row.try_get("pending")?, row.try_get("failed")?))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::decode::tests::store_with;
    use crate::store::ExternalRevocation;

    #[tokio::test]
    async fn an_attempt_ending_after_done_does_not_undo_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, Some("done"), "postgres", "{}", "[]").await;
        store
            .set_revocation(
                "l1",
                ExternalRevocation::Pending,
                3,
                Some(1_000),
                Some("timeout"),
            )
            .await
            .unwrap();
        let lease = store.lease("l1").await.unwrap().unwrap();
        assert_eq!(lease.revocation, Some(ExternalRevocation::Done));
        assert!(
            store
                .due_revocations(i64::MAX, 10, None)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn shredding_makes_a_role_waiting_out_its_backoff_due_now() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, None, "postgres", "{}", "[]").await;
        store
            .set_revocation(
                "l1",
                ExternalRevocation::Pending,
                1,
                Some(5_000),
                Some("down"),
            )
            .await
            .unwrap();
        assert!(
            store
                .due_revocations(2_000, 10, Some("prod"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.mark_env_roles_due("prod", 2_000).await.unwrap(), 1);
        let due = store
            .due_revocations(2_000, 10, Some("prod"))
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].revocation, Some(ExternalRevocation::Pending));
        assert!(
            store
                .due_revocations(2_000, 10, Some("staging"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.mark_env_roles_due("staging", 2_000).await.unwrap(), 0);
    }
}
