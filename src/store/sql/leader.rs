//! The background-work leader: which replica runs the sweeper, the revocation worker and
//! intent reconciliation. Owns no table: on PostgreSQL it is a session-level advisory lock.
//!
//! Guarantees:
//! - at most one replica holds the lock at a time (PostgreSQL advisory lock `"jobpass"`);
//! - the lock lives on a dedicated connection and is released when that connection ends, so
//!   a dead replica's role moves to another;
//! - SQLite has one broker, which always leads.

use super::Store;
use crate::store::Result;

/// Advisory lock key of the background-work leader ("jobpass" in ASCII).
const LEADER_LOCK_KEY: i64 = 0x006a_6f62_7061_7373;

/// Proof of leadership for background work.
pub enum LeaderLock {
    /// The only broker (SQLite).
    Local,
    /// The connection holding the advisory lock.
    Postgres(Box<sqlx::PgConnection>),
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaderLock::Local => "LeaderLock::Local",
            LeaderLock::Postgres(_) => "LeaderLock::Postgres",
        })
    }
}

impl LeaderLock {
    /// Whether the lock is still held (its connection alive).
    pub async fn alive(&mut self) -> bool {
        match self {
            LeaderLock::Local => true,
            LeaderLock::Postgres(conn) => {
                sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok()
            }
        }
    }
}

impl Store {
    /// Tries to become the replica that runs background work (sweeper, revocation worker).
    /// SQLite has one broker: always granted. PostgreSQL: a session-level advisory lock held on
    /// a dedicated connection; it is released when that connection ends, so a dead replica's
    /// role moves to another.
    pub async fn try_leader_lock(&self) -> Result<Option<LeaderLock>> {
        match self {
            Store::Sqlite { .. } => Ok(Some(LeaderLock::Local)),
            Store::Postgres { pool } => {
                let mut conn = pool.acquire().await?.detach();
                let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await?;
                Ok(got.then_some(LeaderLock::Postgres(Box::new(conn))))
            }
        }
    }

    /// Waits until this replica holds the background-work lock (PostgreSQL: blocks on the
    /// advisory lock until its holder's session ends).
    pub async fn wait_leader_lock(&self) -> Result<LeaderLock> {
        match self {
            Store::Sqlite { .. } => Ok(LeaderLock::Local),
            Store::Postgres { pool } => {
                let mut conn = pool.acquire().await?.detach();
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(LEADER_LOCK_KEY)
                    .execute(&mut conn)
                    .await?;
                Ok(LeaderLock::Postgres(Box::new(conn)))
            }
        }
    }
}
