//! Single use of source tokens: one replay record per token presented, kept until the token
//! expires. The exchange batch claims them in bulk (`batch.rs`); this file holds the
//! single-token read and write.
//!
//! Tables: `replay` (expired records are deleted by [`Store::sweep`]).
//!
//! Guarantees:
//! - single use is enforced by the primary key on the replay key, inside the write
//!   transaction; the read outside one is only an early check.

use super::Store;
use crate::store::{Result, WriteTx};

impl Store {
    /// Whether a source token was already used (read-only pre-check; the write transaction's
    /// insert is what enforces single use).
    pub async fn replay_seen(&self, key: &[u8]) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query("SELECT 1 AS x FROM replay WHERE key = $1")
                .bind(key)
                .fetch_optional(r)
                .await?;
            Ok(row.is_some())
        })
    }
}

impl WriteTx {
    /// Records a source token as used; false when it was already used (a replay).
    pub async fn claim_replay(
        &mut self,
        key: &[u8],
        issuer: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool> {
        with_tx!(self, |conn| {
            let r = sqlx::query(
                "INSERT INTO replay (key, issuer, seen_at, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(issuer)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }
}
