//! Environment locks: how exchanges, freezes and revocations of one environment are
//! serialised when several replicas share a PostgreSQL store. Owns no table.
//!
//! On PostgreSQL (read committed) a batch that read "not frozen" could otherwise commit after
//! a freeze, and a revocation's statement does not see leases still uncommitted when it
//! starts. So each of them takes transaction-scoped advisory locks, released at commit or
//! rollback, before anything else it reads or locks:
//! - an exchange batch: [`ALL_CLASS`] and then one key per environment of the batch, all
//!   shared (batches never wait for each other), keys in ascending order;
//! - a freeze or unfreeze: its environment's key, exclusive;
//! - a revocation whose selector names an environment: that environment's key, exclusive; one
//!   by lease id whose lease is already committed: none (no other lease can match); any other
//!   (by claim, role, subject, issuer, policy version, time, `all`, or a lease id not yet
//!   committed): the [`ALL_CLASS`] key, exclusive, because a lease still in flight may be in
//!   any environment.
//!
//! Guarantees, on PostgreSQL:
//! - a freeze waits for the batches of its environment in flight, which commit before it;
//!   a batch that asks for the lock later waits for the freeze's commit and then reads it
//!   (each statement of a read-committed transaction sees what committed before it began), so
//!   **no lease of an environment commits after a freeze of it did**;
//! - a revocation waits for the batches in flight that it could match, then its statement
//!   sees their leases: **every lease it could match that committed before the revocation
//!   committed is revoked by it** and counted in its answer; a batch that asks for the lock
//!   after the revocation did commits after it, a new lease the revocation does not cover;
//! - the exchange path stays cheap: shared locks are held by many batches at once; an
//!   exclusive lock pauses the exchanges of its environment (of every environment for the
//!   [`ALL_CLASS`] key) only while its transaction runs;
//! - no deadlock among these locks: every holder of an exclusive lock holds exactly one key
//!   and batches take theirs in one global order (the [`ALL_CLASS`] key, then environment keys
//!   ascending) before any row lock.
//!
//! The key of an environment is part of how replicas agree: all of them must derive it the
//! same way (changing [`env_key`] is like a schema change: replace every replica at once).
//! Two environments whose keys collide merely wait for each other. The two-int form keeps
//! these locks apart from the single-bigint ones (the leader lock, sqlx's migration lock).
//!
//! SQLite needs none of this: every write transaction (a batch with its checks, a freeze, a
//! revocation) runs on the one writer connection and starts with `BEGIN IMMEDIATE`, which
//! takes the database's write lock, also against other processes. They never overlap: a
//! freeze or revocation commits wholly before a batch reads its checks, or after the batch
//! committed. The functions here are no-ops on it.

use std::future::Future;

use sqlx::{PgConnection, SqliteConnection};

use crate::store::{Result, Selector};

/// Lock class (first key of the two-int form) of environment keys: "jpen".
pub(super) const ENV_CLASS: i32 = 0x6a70_656e;
/// Lock class of the key every batch shares and a revocation not bound to one environment
/// takes alone: "jpal", with second key 0.
pub(super) const ALL_CLASS: i32 = 0x6a70_616c;

/// The advisory lock key of environment `env` within [`ENV_CLASS`]: the first four bytes of
/// a SHA-256 of its name, so every replica derives the same key.
#[must_use]
pub(super) fn env_key(env: &str) -> i32 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("jobpass/env-lock/v1/{env}").as_bytes(),
    );
    let mut first = [0u8; 4];
    first.copy_from_slice(&digest.as_ref()[..4]);
    i32::from_be_bytes(first)
}

/// Which exclusive lock a revocation needs (see the module docs).
fn revoke_lock(sel: &Selector) -> (i32, i32) {
    match &sel.env {
        Some(env) => (ENV_CLASS, env_key(env)),
        None => (ALL_CLASS, 0),
    }
}

/// Taking the locks inside a write transaction, per backend.
pub(super) trait EnvLocks {
    /// An exchange batch on `envs`: shared locks, in the one global order.
    fn share_envs(&mut self, envs: &[&str]) -> impl Future<Output = Result<()>> + Send;

    /// A freeze or unfreeze of `env`: its key, exclusive.
    fn lock_env(&mut self, env: &str) -> impl Future<Output = Result<()>> + Send;

    /// A revocation by `sel`: the exclusive lock it needs, if any.
    fn lock_for_revoke(&mut self, sel: &Selector) -> impl Future<Output = Result<()>> + Send;
}

impl EnvLocks for SqliteConnection {
    async fn share_envs(&mut self, _envs: &[&str]) -> Result<()> {
        Ok(())
    }

    async fn lock_env(&mut self, _env: &str) -> Result<()> {
        Ok(())
    }

    async fn lock_for_revoke(&mut self, _sel: &Selector) -> Result<()> {
        Ok(())
    }
}

impl EnvLocks for PgConnection {
    async fn share_envs(&mut self, envs: &[&str]) -> Result<()> {
        let mut keys: Vec<i32> = envs.iter().map(|e| env_key(e)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut classes = Vec::with_capacity(keys.len() + 1);
        classes.push(ALL_CLASS);
        classes.extend(keys.iter().map(|_| ENV_CLASS));
        keys.insert(0, 0);
        // One statement; `unnest` yields the rows, and so takes the locks, in array order.
        sqlx::query(
            "SELECT pg_advisory_xact_lock_shared(c, k) FROM UNNEST($1::int4[], $2::int4[]) AS t (c, k)",
        )
        .bind(&classes)
        .bind(&keys)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn lock_env(&mut self, env: &str) -> Result<()> {
        exclusive(self, (ENV_CLASS, env_key(env))).await
    }

    async fn lock_for_revoke(&mut self, sel: &Selector) -> Result<()> {
        if let Some(id) = &sel.lease_id {
            // A committed lease is the only one the selector can match: nothing in flight
            // matters. One not committed yet may be in flight: wait for it.
            let found = sqlx::query("SELECT 1 AS f FROM leases WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self)
                .await?;
            if found.is_some() {
                return Ok(());
            }
        }
        exclusive(self, revoke_lock(sel)).await
    }
}

async fn exclusive(conn: &mut PgConnection, (class, key): (i32, i32)) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(class)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ALL_CLASS, ENV_CLASS, env_key, revoke_lock};
    use crate::store::Selector;

    #[test]
    fn keys_are_stable_and_revocations_lock_their_environment_or_all() {
        // Replicas of different builds must agree: the derivation is fixed (these values are
        // SHA-256's, computed independently).
        assert_eq!(env_key("prod"), -1_075_136_658);
        assert_eq!(env_key("staging"), 1_532_761_299);
        let by_env = Selector {
            env: Some("prod".into()),
            claims: vec![("run_id".into(), "7".into())],
            ..Selector::default()
        };
        assert_eq!(revoke_lock(&by_env), (ENV_CLASS, env_key("prod")));
        let by_claim = Selector {
            claims: vec![("run_id".into(), "7".into())],
            ..Selector::default()
        };
        assert_eq!(revoke_lock(&by_claim), (ALL_CLASS, 0));
    }
}
