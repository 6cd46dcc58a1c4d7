//! The exchange batch on SQLite: one statement reads everything a batch decides on, one
//! multi-statement call writes everything it keeps.
//!
//! Rows travel as one JSON array per table, unpacked by `json_each`, so each statement has
//! one text whatever the batch size: it is prepared once and stays in the connection's
//! statement cache, and a batch costs the same few round trips to the database thread
//! whether it holds one exchange or hundreds. Binary values travel as hex (`unhex`).

use std::collections::HashSet;

use sqlx::{Row, SqliteConnection};

use super::{BatchChecks, BatchItem, NewLease};
use crate::store::{Result, StoreError};

/// Used replay slots, frozen environments, data-key versions and live role intents, as one
/// `(what, name, version, destroyed)` result.
const CHECKS: &str = "
    SELECT 'r' AS what, hex(key) AS name, 0 AS version, 0 AS destroyed FROM replay
        WHERE key IN (SELECT unhex(value) FROM json_each($1))
    UNION ALL
    SELECT 'f', env, 0, 0 FROM environments
        WHERE frozen <> 0 AND env IN (SELECT value FROM json_each($2))
    UNION ALL
    SELECT 'k', env, version, CASE WHEN wrapped IS NULL THEN 1 ELSE 0 END FROM data_keys
        WHERE env IN (SELECT value FROM json_each($2))
    UNION ALL
    SELECT 'i', role_name, 0, 0 FROM pg_intents
        WHERE role_name IN (SELECT value FROM json_each($3))";

/// The text of [`INSERT_LEASES`] (a macro so [`WRITE_BATCH`] can include it).
macro_rules! insert_leases_sql {
    () => {
        "
    INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at, expires_at,
                        key_version, sealed, claims)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6,
               value->>7, value->>8, unhex(value->>9), value->10
        FROM json_each($1);
    INSERT INTO lease_claims_backlog (lease_id) SELECT value->>0 FROM json_each($1);
    INSERT INTO credentials (id, lease_id, env, name, kind, token_hash, scope, expires_at)
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, unhex(value->>5),
               value->>6, value->>7
        FROM json_each($2);"
    };
}

/// Rows of leases (with their claims, their ids into the backlog [`super::super::claims`]
/// folds) and of credentials (`$1`, `$2`).
const INSERT_LEASES: &str = insert_leases_sql!();

/// Replay slots taken (`$3`, at `$5`) and role intents taken over (`$4`), then the rows of
/// [`INSERT_LEASES`]. A slot already used fails the statement (primary key): the checks,
/// read under the same write lock, have already excluded every one.
const WRITE_BATCH: &str = concat!(
    "
    INSERT INTO replay (key, issuer, seen_at, expires_at)
        SELECT unhex(value->>0), value->>1, $5, value->>2 FROM json_each($3);
    DELETE FROM pg_intents WHERE role_name IN (SELECT value FROM json_each($4));",
    insert_leases_sql!()
);

/// A lease's claims as one JSON object (names are unique: they come from one token's claims).
/// Values are JSON strings, always: lookups in the backlog compare them as text, like the index.
struct ClaimObject<'a>(&'a [(String, String)]);

impl serde::Serialize for ClaimObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("batch rows: {e}")))
}

/// The two JSON arrays of [`INSERT_LEASES`].
fn lease_rows(leases: &[&NewLease]) -> Result<[String; 2]> {
    let rows: Vec<_> = leases
        .iter()
        .map(|n| {
            let l = &n.lease;
            (
                &l.id,
                &l.env,
                &l.role,
                &l.issuer,
                &l.subject,
                &l.policy_version,
                l.issued_at,
                l.expires_at,
                l.key_version,
                hex::encode(&l.sealed),
                ClaimObject(&n.claims),
            )
        })
        .collect();
    let creds: Vec<_> = leases
        .iter()
        .flat_map(|n| &n.credentials)
        .map(|c| {
            (
                &c.id,
                &c.lease_id,
                &c.env,
                &c.name,
                c.kind.name(),
                c.token_hash.as_ref().map(hex::encode),
                &c.scope,
                c.expires_at,
            )
        })
        .collect();
    Ok([json(&rows)?, json(&creds)?])
}

pub(super) async fn checks(
    conn: &mut SqliteConnection,
    keys: &[[u8; 32]],
    envs: &[&str],
    intents: &[&str],
) -> Result<BatchChecks> {
    let keys: Vec<String> = keys.iter().map(hex::encode).collect();
    let rows = sqlx::query(CHECKS)
        .bind(json(&keys)?)
        .bind(json(&envs)?)
        .bind(json(&intents)?)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = BatchChecks::default();
    for r in &rows {
        let name: String = r.try_get("name")?;
        match r.try_get::<String, _>("what")?.as_str() {
            "r" => {
                let key = hex::decode(&name)
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
                    .ok_or_else(|| StoreError::Corrupt("replay key".into()))?;
                out.used.insert(key);
            }
            "f" => {
                out.frozen.insert(name);
            }
            "k" => {
                let destroyed = r.try_get::<i64, _>("destroyed")? != 0;
                out.add_key_version(name, r.try_get("version")?, destroyed);
            }
            _ => {
                out.intents.insert(name);
            }
        }
    }
    Ok(out)
}

pub(super) async fn write_batch(
    conn: &mut SqliteConnection,
    items: &[BatchItem<'_>],
    now: i64,
) -> Result<HashSet<[u8; 32]>> {
    let leases: Vec<&NewLease> = items.iter().map(|i| i.lease).collect();
    let [rows, creds] = lease_rows(&leases)?;
    let slots: Vec<_> = items
        .iter()
        .map(|i| (hex::encode(i.slot.key), &i.slot.issuer, i.slot.expires_at))
        .collect();
    let intents: Vec<&str> = items
        .iter()
        .flat_map(|i| i.intents.iter().map(String::as_str))
        .collect();
    sqlx::query(WRITE_BATCH)
        .bind(rows)
        .bind(creds)
        .bind(json(&slots)?)
        .bind(json(&intents)?)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(items.iter().map(|i| i.slot.key).collect())
}

pub(super) async fn insert_leases(conn: &mut SqliteConnection, leases: &[&NewLease]) -> Result<()> {
    let [rows, creds] = lease_rows(leases)?;
    sqlx::query(INSERT_LEASES)
        .bind(rows)
        .bind(creds)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
