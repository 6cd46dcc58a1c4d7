//! Environments: whether each is frozen (an emergency stop of new exchanges), and by whom.
//!
//! Tables: `environments` (a row once an environment was frozen).
//!
//! Guarantees:
//! - a freeze is one upsert, so it holds whether or not the environment had a row;
//! - no lease of an environment commits after a freeze of it did: on SQLite the freeze and
//!   every exchange batch are write transactions of the one writer; on PostgreSQL the freeze
//!   holds the environment's advisory lock exclusively, which batches share (see
//!   [`env_locks`](super::env_locks));
//! - the check inside a write transaction reads the committed state at that point; the
//!   early check outside one is only a shortcut.

use super::Store;
use super::env_locks::EnvLocks;
use super::open::BeginWrite;
use crate::store::{Result, WriteTx};

impl Store {
    /// Freezes or unfreezes an environment. On PostgreSQL it first takes the environment's
    /// lock, exclusive: it waits for the batches of the environment in flight, and the
    /// batches after it read its state (see `store::sql::env_locks`).
    pub async fn set_frozen(
        &self,
        env: &str,
        frozen: bool,
        reason: &str,
        by: &str,
        now: i64,
    ) -> Result<()> {
        with_db!(self, |w, r, Db| {
            let mut tx = w.begin_write().await?;
            tx.lock_env(env).await?;
            sqlx::query(
                "INSERT INTO environments (env, frozen, frozen_reason, frozen_at, frozen_by) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (env) DO UPDATE SET frozen = $2, frozen_reason = $3, frozen_at = $4, frozen_by = $5",
            )
            .bind(env)
            .bind(i64::from(frozen))
            .bind(reason)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Whether the environment is frozen (outside a transaction: a cheap early check).
    pub async fn is_frozen(&self, env: &str) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query("SELECT 1 AS f FROM environments WHERE env = $1 AND frozen = 1")
                .bind(env)
                .fetch_optional(r)
                .await?;
            Ok(row.is_some())
        })
    }
}

impl WriteTx {
    /// Whether the environment is frozen (read inside the transaction).
    pub async fn environment_frozen(&mut self, env: &str) -> Result<bool> {
        with_tx!(self, |conn| {
            let row = sqlx::query("SELECT 1 AS f FROM environments WHERE env = $1 AND frozen = 1")
                .bind(env)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(row.is_some())
        })
    }
}
