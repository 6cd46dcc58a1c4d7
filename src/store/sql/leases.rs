//! Leases: one per exchange, with the claims of its source token kept searchable, listed by
//! the admin API, revoked by selector and swept after expiry.
//!
//! Tables: `leases`, `lease_claims`, `lease_revocations` (one narrow row per revoked lease);
//! the sweep also deletes expired `replay` records.
//!
//! Guarantees:
//! - a revocation by selector is one transaction: the narrow revocation rows and the marking
//!   of leases with database roles as `pending` commit together;
//! - a lease is revoked once: a concurrent revocation of the same lease (another replica)
//!   wins on the primary key and this one does not count it;
//! - claim globs match case-sensitively (`LIKE` with `\` as escape);
//! - the sweep never deletes a lease whose external credentials are not settled (`pending` or
//!   `failed`); expired leases holding database roles are marked `pending` first.

use sqlx::{AssertSqlSafe, QueryBuilder, Row};

use super::Store;
use super::batch::push_list;
use super::open::BeginWrite;
use crate::store::{LeaseFilter, LeaseRow, Result, Selector, StoreError, WriteTx, glob_to_like};

/// A lease row's columns, read from `LEASE_FROM` (`l`: the lease, `r`: its revocation, if any).
pub(super) const LEASE_COLUMNS: &str = "l.id, l.env, l.role, l.issuer, l.subject, l.policy_version,
        l.issued_at, l.expires_at, r.revoked_at, r.reason AS revoke_reason, l.key_version, l.sealed,
        l.revocation, l.revocation_attempts";

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

    /// Leases matching `f`, newest first.
    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<LeaseRow>> {
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
                q.push(" AND EXISTS (SELECT 1 FROM lease_claims c WHERE c.name = ")
                    .push_bind(name.clone())
                    .push(" AND c.value = ")
                    .push_bind(value.clone())
                    .push(" AND c.lease_id = l.id)");
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
                q.push(" AND l.id IN (SELECT lease_id FROM lease_claims WHERE name = ")
                    .push_bind(name.clone())
                    .push(" AND value LIKE ")
                    .push_bind(glob_to_like(glob))
                    .push(" ESCAPE '\\')");
            }
            // In lease order, so two revocations overlapping on PostgreSQL lock their rows in
            // the same order. A concurrent revocation of the same lease (another replica) wins;
            // this one does not count it.
            q.push(" ORDER BY l.id ON CONFLICT (lease_id) DO NOTHING RETURNING lease_id, external");
            let mut tx = w.begin_write().await?;
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
            let leases = sqlx::query(
            "DELETE FROM leases WHERE expires_at < $1 AND (revocation IS NULL OR revocation = 'done')",
        )
        .bind(expired_before)
        .execute(w)
        .await?
        .rows_affected();
            let replay = sqlx::query("DELETE FROM replay WHERE expires_at < $1")
                .bind(now)
                .execute(w)
                .await?
                .rows_affected();
            Ok((leases, replay))
        })
    }
}

impl WriteTx {
    /// Inserts a lease with its indexed claims.
    pub async fn insert_lease(&mut self, l: &LeaseRow, claims: &[(String, String)]) -> Result<()> {
        with_tx!(self, |conn| {
            sqlx::query(
            "INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at, expires_at,
                                 key_version, sealed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&l.id)
        .bind(&l.env)
        .bind(&l.role)
        .bind(&l.issuer)
        .bind(&l.subject)
        .bind(&l.policy_version)
        .bind(l.issued_at)
        .bind(l.expires_at)
        .bind(l.key_version)
        .bind(&l.sealed)
        .execute(&mut *conn)
        .await?;
            for (name, value) in claims {
                sqlx::query("INSERT INTO lease_claims (lease_id, name, value) VALUES ($1, $2, $3)")
                    .bind(&l.id)
                    .bind(name)
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }
}
