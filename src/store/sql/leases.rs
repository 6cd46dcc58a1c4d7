//! Leases: one per exchange, with the claims of its source token kept searchable, listed by
//! the admin API, revoked by selector and swept after expiry.
//!
//! Tables: `leases`, `lease_claims` with its backlog (see [`super::claims`]), `lease_revocations` (one narrow row per revoked lease);
//! the sweep also deletes expired `replay` records.
//!
//! Guarantees:
//! - a revocation by selector is one transaction: the narrow revocation rows and the marking
//!   of leases with database roles as `pending` commit together;
//! - a lease is revoked once: a concurrent revocation of the same lease (another replica)
//!   wins on the primary key and this one does not count it;
//! - a revocation covers every matching lease committed before it commits, also those of
//!   exchanges in flight when it began: on SQLite it is a write transaction of the one
//!   writer, as every exchange batch is; on PostgreSQL it first takes the advisory lock of
//!   its environment (of all of them when the selector names none and is not a committed
//!   lease's id), exclusive, so it waits for those batches and sees their leases (see
//!   [`super::env_locks`]); a lease committed after it is a new one it does not cover;
//! - claim globs match case-sensitively (`LIKE` with `\` as escape);
//! - the sweep never deletes a lease whose external credentials are not settled (`pending` or
//!   `failed`); expired leases holding database roles are marked `pending` first.

use sqlx::{AssertSqlSafe, QueryBuilder, Row};

use super::Store;
use super::batch::push_list;
use super::claims::{delete_claims_of, push_has_claim, push_lease_with_claim_like};
use super::env_locks::EnvLocks;
use super::open::BeginWrite;
use crate::store::{LeaseFilter, LeaseRow, Result, Selector, StoreError, glob_to_like};

/// A lease row's columns, read from `LEASE_FROM` (`l`: the lease, `r`: its revocation, if any).
pub(super) const LEASE_COLUMNS: &str = "l.id, l.env, l.role, l.issuer, l.subject, l.policy_version,
        l.issued_at, l.expires_at, r.revoked_at, r.reason AS revoke_reason, l.key_version, l.sealed,
        l.revocation, l.revocation_attempts";

/// The leases the sweep deletes (`$1`: expired before): settled external credentials.
const SWEPT: &str =
    "leases.expires_at < $1 AND (leases.revocation IS NULL OR leases.revocation = 'done')";

/// Leases with their revocation row (revocations live in a narrow table of their own).
pub(super) const LEASE_FROM: &str = "leases l LEFT JOIN lease_revocations r ON r.lease_id = l.id";

impl Store {
    /// One lease.
    pub async fn lease(&self, id: &str) -> Result<Option<LeaseRow>> {
        with_db!(self, |w, r, Db| {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM {LEASE_FROM} WHERE l.id = $1");
            Ok(sqlx::query_as::<Db, LeaseRow>(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(r)
                .await?)
        })
    }

    /// Leases of `env` live at `now` (not expired, not revoked): the unexpired ones counted
    /// on the `(env, expires_at)` index, less the unexpired ones with a revocation row.
    pub async fn active_leases(&self, env: &str, now: i64) -> Result<i64> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM leases WHERE env = $1 AND expires_at > $2)
                      - (SELECT COUNT(*) FROM lease_revocations v JOIN leases l ON l.id = v.lease_id
                         WHERE l.env = $1 AND l.expires_at > $2) AS n",
            )
            .bind(env)
            .bind(now)
            .fetch_one(r)
            .await?;
            Ok(row.try_get("n")?)
        })
    }

    /// Leases matching `f`, newest first.
    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<LeaseRow>> {
        let backlog = self.has_claims_backlog();
        with_db!(self, |w, r, Db| {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "SELECT {LEASE_COLUMNS} FROM {LEASE_FROM} WHERE 1 = 1"
            ));
            if let Some(env) = &f.env {
                q.push(" AND l.env = ").push_bind(env.clone());
            }
            if let Some(role) = &f.role {
                q.push(" AND l.role = ").push_bind(role.clone());
            }
            if let Some(now) = f.active_at {
                q.push(" AND r.lease_id IS NULL AND l.expires_at > ")
                    .push_bind(now);
            }
            if let Some(after) = &f.after {
                q.push(" AND l.id < ").push_bind(after.clone());
            }
            for (name, value) in &f.claims {
                push_has_claim(&mut q, backlog, name, value);
            }
            q.push(" ORDER BY l.id DESC LIMIT ").push_bind(f.limit);
            Ok(q.build_query_as::<LeaseRow>().fetch_all(r).await?)
        })
    }

    /// Revokes every live lease (not revoked, not expired at `now`) the selector matches, in one
    /// transaction; returns the ids revoked now (already revoked ones are not counted again).
    /// A transaction that loses a race with another replica's revocation is run again.
    pub async fn revoke(&self, sel: &Selector, now: i64, reason: &str) -> Result<Vec<String>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.revoke_once(sel, now, reason).await {
                Err(StoreError::Conflict(e)) if attempts < 5 => {
                    tracing::warn!(error = %e, attempts, "revocation raced another; running it again");
                }
                other => return other,
            }
        }
    }

    async fn revoke_once(&self, sel: &Selector, now: i64, reason: &str) -> Result<Vec<String>> {
        let backlog = self.has_claims_backlog();
        with_db!(self, |w, r, Db| {
            // One narrow row per lease revoked now; `external` marks the leases whose
            // database roles the revocation worker must drop.
            let mut q: QueryBuilder<Db> = QueryBuilder::new(
                "INSERT INTO lease_revocations (lease_id, revoked_at, reason, external) SELECT l.id, ",
            );
            q.push_bind(now)
                .push(", ")
                .push_bind(reason.to_string())
                .push(
                    ", CASE WHEN EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = l.id
                       AND c.kind = 'postgres') THEN 1 ELSE 0 END
                     FROM leases l WHERE l.expires_at > ",
                )
                .push_bind(now)
                .push(
                    " AND NOT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.lease_id = l.id)",
                );
            for (col, v) in [
                ("id", &sel.lease_id),
                ("env", &sel.env),
                ("role", &sel.role),
                ("issuer", &sel.issuer),
                ("subject", &sel.subject),
                ("policy_version", &sel.policy_version),
            ] {
                if let Some(v) = v {
                    q.push(" AND l.").push(col).push(" = ").push_bind(v.clone());
                }
            }
            if let Some(t) = sel.issued_after {
                q.push(" AND l.issued_at >= ").push_bind(t);
            }
            if let Some(t) = sel.issued_before {
                q.push(" AND l.issued_at <= ").push_bind(t);
            }
            for (name, glob) in &sel.claims {
                push_lease_with_claim_like(&mut q, backlog, name, &glob_to_like(glob));
            }
            // In lease order, so two revocations overlapping on PostgreSQL lock their rows in
            // the same order. A concurrent revocation of the same lease (another replica) wins;
            // this one does not count it.
            q.push(" ORDER BY l.id ON CONFLICT (lease_id) DO NOTHING RETURNING lease_id, external");
            let mut tx = w.begin_write().await?;
            // PostgreSQL: wait for the exchange batches in flight it could match, and keep
            // later ones out until it commits (see `env_locks`).
            tx.lock_for_revoke(sel).await?;
            let rows = q.build().fetch_all(&mut *tx).await?;
            let mut ids = Vec::with_capacity(rows.len());
            let mut external = Vec::new();
            for r in &rows {
                let id: String = r.try_get("lease_id")?;
                if r.try_get::<i64, _>("external")? != 0 {
                    external.push(id.clone());
                }
                ids.push(id);
            }
            for chunk in external.chunks(500) {
                let mut q: QueryBuilder<Db> = QueryBuilder::new(
                    "UPDATE leases SET revocation = 'pending', revocation_next_at = ",
                );
                q.push_bind(now)
                    .push(" WHERE revocation IS NULL AND id IN ");
                push_list(&mut q, chunk.iter().cloned(), "");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            ids.sort_unstable_by(|a, b| b.cmp(a));
            Ok(ids)
        })
    }

    /// Marks expired leases holding external credentials for revocation (the credential's own
    /// expiry is only the backstop), deletes leases that expired before `expired_before` and
    /// whose external credentials are settled (their credential rows go with them), and replay
    /// records past their token's expiry. Returns (leases deleted, replay records deleted).
    pub async fn sweep(&self, now: i64, expired_before: i64) -> Result<(u64, u64)> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
            "UPDATE leases SET revocation = 'pending', revocation_next_at = $1
             WHERE expires_at <= $1 AND revocation IS NULL
               AND EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = leases.id AND c.kind = 'postgres')",
        )
        .bind(now)
        .execute(w)
        .await?;
            Ok::<(), StoreError>(())
        })?;
        let delete_leases = format!("DELETE FROM leases WHERE {SWEPT}");
        let leases = match self {
            Store::Sqlite { writer, .. } => {
                // Claim-index entries have no foreign key on SQLite: they go by their keys, in
                // the transaction that deletes their leases.
                let mut tx = writer.begin_write().await?;
                sqlx::query(AssertSqlSafe(delete_claims_of(SWEPT)))
                    .bind(expired_before)
                    .execute(&mut *tx)
                    .await?;
                let n = sqlx::query(AssertSqlSafe(delete_leases))
                    .bind(expired_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                n
            }
            Store::Postgres { pool } => sqlx::query(AssertSqlSafe(delete_leases))
                .bind(expired_before)
                .execute(pool)
                .await?
                .rows_affected(),
        };
        let replay = with_db!(self, |w, r, Db| {
            Ok::<u64, StoreError>(
                sqlx::query("DELETE FROM replay WHERE expires_at < $1")
                    .bind(now)
                    .execute(w)
                    .await?
                    .rows_affected(),
            )
        })?;
        Ok((leases, replay))
    }
}
