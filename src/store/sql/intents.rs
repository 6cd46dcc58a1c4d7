//! PostgreSQL role intents: a role about to be created is recorded (and committed) before
//! `CREATE ROLE`, so a crash between the two leaves a record to reconcile, not an orphan role.
//!
//! Tables: `pg_intents` (reads whether the intent's lease exists in `leases`).
//!
//! Guarantees:
//! - an intent is taken exactly once: by the exchange committing its lease (in the lease's
//!   own transaction) or by reconciliation, whichever deletes the row first; the other is
//!   told it lost.

use sqlx::{FromRow, Row};

use super::Store;
use crate::store::{PgIntent, Result, WriteTx};

impl Store {
    /// Records that a PostgreSQL role is about to be created (committed before `CREATE ROLE`).
    pub async fn insert_intent(&self, i: &PgIntent, now: i64) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
            "INSERT INTO pg_intents (role_name, target, env, lease_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&i.role_name)
        .bind(&i.target)
        .bind(&i.env)
        .bind(&i.lease_id)
        .bind(now)
        .execute(w)
        .await?;
            Ok(())
        })
    }

    /// Claims an intent for reconciliation: deletes it and says whether this call did (an
    /// exchange committing at the same moment deletes it in its own transaction instead).
    pub async fn claim_intent(&self, role_name: &str) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let r = sqlx::query("DELETE FROM pg_intents WHERE role_name = $1")
                .bind(role_name)
                .execute(w)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Forgets an intent (its lease committed, or its role was dropped).
    pub async fn delete_intent(&self, role_name: &str) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query("DELETE FROM pg_intents WHERE role_name = $1")
                .bind(role_name)
                .execute(w)
                .await?;
            Ok(())
        })
    }

    /// Intents recorded before `before` (unix seconds), with whether their lease exists.
    pub async fn intents(&self, before: i64) -> Result<Vec<(PgIntent, bool)>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
                "SELECT i.role_name, i.target, i.env, i.lease_id,
                    EXISTS (SELECT 1 FROM leases l WHERE l.id = i.lease_id) AS committed
             FROM pg_intents i WHERE i.created_at < $1",
            )
            .bind(before)
            .fetch_all(w)
            .await?;
            rows.iter()
                .map(|r| Ok((PgIntent::from_row(r)?, r.try_get::<bool, _>("committed")?)))
                .collect()
        })
    }
}

impl WriteTx {
    /// Deletes a role intent as part of committing its lease; false when reconciliation
    /// claimed it first (the exchange must then abort).
    pub async fn take_intent(&mut self, role_name: &str) -> Result<bool> {
        with_tx!(self, |conn| {
            let r = sqlx::query("DELETE FROM pg_intents WHERE role_name = $1")
                .bind(role_name)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }
}
