//! The exchange batch on PostgreSQL: each statement takes one array per column (`ANY`,
//! `UNNEST`), so it has one text whatever the batch size and stays prepared on its
//! connection. Statements stay under [`PG_STATEMENT_BYTES`] of bound values.
//!
//! Locks are taken in one order by every replica's batches — the environments' advisory locks
//! (shared, see [`env_locks`](super::super::env_locks)), role intents, replay slots, each
//! sorted — so concurrent batches never deadlock.

use std::collections::HashSet;

use sqlx::{PgConnection, Row};

use super::super::env_locks::EnvLocks;
use super::{BatchChecks, BatchItem, NewLease, ROWS_PER_STATEMENT, chunks_by};
use crate::store::{CredentialRow, LeaseRow, Result};

/// Most bytes of bound values per statement. sqlx leaves Nagle's algorithm on and a socket
/// starts with a 16 KiB send buffer: a larger message goes out in two writes and the second
/// waits for the server's delayed ACK (about 40 ms). Statements stay under it.
const PG_STATEMENT_BYTES: usize = 8 * 1024;

/// A 32-byte replay key from a row's `key` column (anything else is not one of ours).
fn replay_key(r: &sqlx::postgres::PgRow) -> Result<Option<[u8; 32]>> {
    let key: Vec<u8> = r.try_get("key")?;
    Ok(<[u8; 32]>::try_from(key.as_slice()).ok())
}

pub(super) async fn checks(
    conn: &mut PgConnection,
    keys: &[[u8; 32]],
    envs: &[&str],
    intents: &[&str],
) -> Result<BatchChecks> {
    let mut out = BatchChecks::default();
    // First of all, before any row is read or locked: the environments' shared locks. A
    // freeze or revocation of one of them in flight has committed once they are granted, and
    // every statement below sees it; one asking later waits for this transaction.
    conn.share_envs(envs).await?;
    for chunk in chunks_by(keys, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, |_| 40) {
        let rows = sqlx::query("SELECT key FROM replay WHERE key = ANY($1::bytea[])")
            .bind(chunk.iter().map(|k| k.to_vec()).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        for r in &rows {
            out.used.extend(replay_key(r)?);
        }
    }
    if !envs.is_empty() {
        let envs: Vec<String> = envs.iter().map(|e| e.to_string()).collect();
        let rows =
            sqlx::query("SELECT env FROM environments WHERE env = ANY($1::text[]) AND frozen <> 0")
                .bind(&envs)
                .fetch_all(&mut *conn)
                .await?;
        for r in &rows {
            out.frozen.insert(r.try_get("env")?);
        }
        let rows = sqlx::query(
            "SELECT env, version, CAST(CASE WHEN wrapped IS NULL THEN 1 ELSE 0 END AS BIGINT)
             AS destroyed FROM data_keys WHERE env = ANY($1::text[])",
        )
        .bind(&envs)
        .fetch_all(&mut *conn)
        .await?;
        for r in &rows {
            let destroyed = r.try_get::<i64, _>("destroyed")? != 0;
            out.add_key_version(r.try_get("env")?, r.try_get("version")?, destroyed);
        }
    }
    // Locked until the transaction ends, so reconciliation cannot claim them in between.
    let mut sorted = intents.to_vec();
    sorted.sort_unstable();
    for chunk in chunks_by(&sorted, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, |n| {
        8 + n.len()
    }) {
        let rows = sqlx::query(
            "SELECT role_name FROM pg_intents WHERE role_name = ANY($1::text[])
             ORDER BY role_name FOR UPDATE",
        )
        .bind(chunk.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        for r in &rows {
            out.intents.insert(r.try_get("role_name")?);
        }
    }
    Ok(out)
}

/// Claims the slots (in key order); only the exchanges whose slot this transaction claimed
/// (not another replica meanwhile) take their intents over and have their rows inserted.
pub(super) async fn write_batch(
    conn: &mut PgConnection,
    items: &[BatchItem<'_>],
    now: i64,
) -> Result<HashSet<[u8; 32]>> {
    let mut sorted: Vec<&BatchItem<'_>> = items.iter().collect();
    sorted.sort_unstable_by_key(|i| i.slot.key);
    let mut claimed = HashSet::with_capacity(sorted.len());
    let slot_bytes = |i: &&BatchItem<'_>| 60 + i.slot.issuer.len();
    for chunk in chunks_by(&sorted, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, slot_bytes) {
        let rows = sqlx::query(
            "INSERT INTO replay (key, issuer, seen_at, expires_at)
             SELECT k, i, $3, e FROM UNNEST($1::bytea[], $2::text[], $4::int8[]) AS t (k, i, e)
             ORDER BY k
             ON CONFLICT (key) DO NOTHING RETURNING key",
        )
        .bind(
            chunk
                .iter()
                .map(|i| i.slot.key.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|i| i.slot.issuer.clone())
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(chunk.iter().map(|i| i.slot.expires_at).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        for r in &rows {
            claimed.extend(replay_key(r)?);
        }
    }
    let kept: Vec<&BatchItem<'_>> = items
        .iter()
        .filter(|i| claimed.contains(&i.slot.key))
        .collect();
    let names: Vec<String> = kept
        .iter()
        .flat_map(|i| i.intents.iter().cloned())
        .collect();
    for chunk in chunks_by(&names, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, |n| {
        8 + n.len()
    }) {
        sqlx::query("DELETE FROM pg_intents WHERE role_name = ANY($1::text[])")
            .bind(chunk)
            .execute(&mut *conn)
            .await?;
    }
    let leases: Vec<&NewLease> = kept.iter().map(|i| i.lease).collect();
    insert_leases(conn, &leases).await?;
    Ok(claimed)
}

/// PostgreSQL: the same rows through `UNNEST` of one array per column, so each statement has
/// one text whatever the batch size (it stays prepared on its connection), in statements of
/// at most [`PG_STATEMENT_BYTES`].
pub(super) async fn insert_leases(conn: &mut PgConnection, leases: &[&NewLease]) -> Result<()> {
    let lease_bytes = |n: &&NewLease| 160 + n.lease.sealed.len() + n.lease.subject.len();
    for chunk in chunks_by(leases, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, lease_bytes) {
        let text = |f: &dyn Fn(&LeaseRow) -> String| -> Vec<String> {
            chunk.iter().map(|n| f(&n.lease)).collect()
        };
        let int = |f: &dyn Fn(&LeaseRow) -> i64| -> Vec<i64> {
            chunk.iter().map(|n| f(&n.lease)).collect()
        };
        sqlx::query(
            "INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at,
                                 expires_at, key_version, sealed)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::bytea[])",
        )
        .bind(text(&|l| l.id.clone()))
        .bind(text(&|l| l.env.clone()))
        .bind(text(&|l| l.role.clone()))
        .bind(text(&|l| l.issuer.clone()))
        .bind(text(&|l| l.subject.clone()))
        .bind(text(&|l| l.policy_version.clone()))
        .bind(int(&|l| l.issued_at))
        .bind(int(&|l| l.expires_at))
        .bind(int(&|l| l.key_version))
        .bind(
            chunk
                .iter()
                .map(|n| n.lease.sealed.clone())
                .collect::<Vec<Vec<u8>>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    let claims: Vec<(&str, &str, &str)> = leases
        .iter()
        .flat_map(|n| {
            n.claims
                .iter()
                .map(|(k, v)| (n.lease.id.as_str(), k.as_str(), v.as_str()))
        })
        .collect();
    let claim_bytes = |(id, k, v): &(&str, &str, &str)| 12 + id.len() + k.len() + v.len();
    for chunk in chunks_by(&claims, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, claim_bytes) {
        sqlx::query(
            "INSERT INTO lease_claims (lease_id, name, value)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
        )
        .bind(chunk.iter().map(|c| c.0.to_string()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|c| c.1.to_string()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|c| c.2.to_string()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    let creds: Vec<&CredentialRow> = leases.iter().flat_map(|n| &n.credentials).collect();
    let cred_bytes = |c: &&CredentialRow| 160 + c.scope.len();
    for chunk in chunks_by(&creds, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, cred_bytes) {
        let text = |f: &dyn Fn(&CredentialRow) -> String| -> Vec<String> {
            chunk.iter().map(|c| f(c)).collect()
        };
        sqlx::query(
            "INSERT INTO credentials (id, lease_id, env, name, kind, token_hash, scope, expires_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::bytea[], $7::text[], $8::int8[])",
        )
        .bind(text(&|c| c.id.clone()))
        .bind(text(&|c| c.lease_id.clone()))
        .bind(text(&|c| c.env.clone()))
        .bind(text(&|c| c.name.clone()))
        .bind(text(&|c| c.kind.name().to_string()))
        .bind(
            chunk
                .iter()
                .map(|c| c.token_hash.clone())
                .collect::<Vec<Option<Vec<u8>>>>(),
        )
        .bind(text(&|c| c.scope.clone()))
        .bind(chunk.iter().map(|c| c.expires_at).collect::<Vec<i64>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
