//! The write half of the exchange ledger: a whole batch of exchanges in a few multi-row
//! statements inside one write transaction, the same SQL on SQLite and PostgreSQL.
//!
//! Each call costs one round trip to the database whatever the batch size, so a batch of
//! exchanges holds the writer for about as long as one exchange used to. Rows are chunked so
//! no statement exceeds the backends' limits on bound parameters.

use std::collections::{HashMap, HashSet};

use sqlx::{QueryBuilder, Row};

use super::WriteTx;
use crate::store::{CredentialRow, LeaseRow, Result};

/// Rows per multi-row statement on SQLite (it allows 32,766 bound parameters; the widest row
/// here binds 10).
const ROWS_PER_STATEMENT: usize = 1000;
/// Most bytes of bound values per statement on PostgreSQL. sqlx leaves Nagle's algorithm on
/// and a socket starts with a 16 KiB send buffer: a larger message goes out in two writes and
/// the second waits for the server's delayed ACK (about 40 ms). Statements stay under it.
const PG_STATEMENT_BYTES: usize = 8 * 1024;

/// Splits `rows` into runs of at most `max_rows` rows and `budget` bytes (by `size`); a row
/// larger than the budget goes alone.
fn chunks_by<T>(
    rows: &[T],
    max_rows: usize,
    budget: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let b = size(row);
        if i > start && (i - start >= max_rows || bytes + b > budget) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// Runs `$body` with `$c` bound to the transaction's connection and `$db` to its database type.
macro_rules! with_tx_db {
    ($tx:expr, |$c:ident, $db:ident| $body:block) => {
        match $tx {
            WriteTx::Sqlite(tx) => {
                let $c = &mut **tx;
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            WriteTx::Postgres(tx) => {
                let $c = &mut **tx;
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}

/// An environment's data-key versions, as a batch sees them.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    /// Newest version (0 when the environment has none).
    pub current: i64,
    /// Versions destroyed.
    pub destroyed: HashSet<i64>,
}

/// A source token's single-use slot.
#[derive(Debug, Clone)]
pub struct ReplaySlot {
    /// SHA-256 replay key (issuer + jti, or issuer + signed part of the token).
    pub key: [u8; 32],
    /// Issuer of the token.
    pub issuer: String,
    /// Unix seconds until which the slot is kept (token expiry plus leeway).
    pub expires_at: i64,
}

/// A lease with its indexed claims, as one exchange writes it.
#[derive(Debug, Clone)]
pub struct NewLease {
    /// The lease row.
    pub lease: LeaseRow,
    /// Claim name and value pairs kept searchable for revocation by claim.
    pub claims: Vec<(String, String)>,
    /// Credentials of the lease (never their values).
    pub credentials: Vec<CredentialRow>,
}

/// Appends `(v1, v2, …)`, each value bound, then `tail`.
pub(super) fn push_list<DB, T>(
    q: &mut QueryBuilder<DB>,
    values: impl IntoIterator<Item = T>,
    tail: &str,
) where
    DB: sqlx::Database,
    for<'t> T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    q.push("(");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v);
    }
    q.push(")").push(tail);
}

/// A 32-byte replay key from a row's `key` column (anything else is not one of ours).
fn replay_key<R: Row>(r: &R) -> Result<Option<[u8; 32]>>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'d> Vec<u8>: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let key: Vec<u8> = r.try_get("key")?;
    Ok(<[u8; 32]>::try_from(key.as_slice()).ok())
}

impl WriteTx {
    /// `rows` in runs sized for one statement of this backend (`size`: bytes a row binds).
    fn statements<'r, T>(&self, rows: &'r [T], size: impl Fn(&T) -> usize) -> Vec<&'r [T]> {
        match self {
            WriteTx::Sqlite(_) => chunks_by(rows, ROWS_PER_STATEMENT, usize::MAX, size),
            WriteTx::Postgres(_) => chunks_by(rows, ROWS_PER_STATEMENT, PG_STATEMENT_BYTES, size),
        }
    }

    /// Which of `envs` are frozen, read inside the transaction. On PostgreSQL the rows are
    /// share-locked, so a freeze waits for this transaction to end: no lease of a batch that
    /// did not see the freeze commits after the freeze has.
    pub async fn frozen_among(&mut self, envs: &[&str]) -> Result<HashSet<String>> {
        if envs.is_empty() {
            return Ok(HashSet::new());
        }
        let postgres = matches!(self, WriteTx::Postgres(_));
        with_tx_db!(self, |conn, Db| {
            // Every environment gets a row, so there is always one to lock.
            let mut q: QueryBuilder<Db> = QueryBuilder::new("INSERT INTO environments (env) ");
            q.push_values(envs, |mut b, env| {
                b.push_bind(env.to_string());
            });
            q.push(" ON CONFLICT (env) DO NOTHING");
            q.build().execute(&mut *conn).await?;
            let mut q: QueryBuilder<Db> =
                QueryBuilder::new("SELECT env, frozen FROM environments WHERE env IN ");
            let lock = if postgres { " FOR SHARE" } else { "" };
            push_list(&mut q, envs.iter().map(|e| e.to_string()), lock);
            let rows = q.build().fetch_all(&mut *conn).await?;
            let mut frozen = HashSet::new();
            for r in &rows {
                if r.try_get::<i64, _>("frozen")? != 0 {
                    frozen.insert(r.try_get::<String, _>("env")?);
                }
            }
            Ok(frozen)
        })
    }

    /// The data-key state of `envs` as committed now: per environment, its newest version and
    /// the versions destroyed (crypto-shredded).
    pub async fn key_versions(&mut self, envs: &[&str]) -> Result<HashMap<String, KeyState>> {
        let mut out: HashMap<String, KeyState> = HashMap::new();
        if envs.is_empty() {
            return Ok(out);
        }
        with_tx_db!(self, |conn, Db| {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(
                "SELECT env, version, CAST(CASE WHEN wrapped IS NULL THEN 1 ELSE 0 END AS BIGINT)
                 AS destroyed FROM data_keys WHERE env IN ",
            );
            push_list(&mut q, envs.iter().map(|e| e.to_string()), "");
            for r in q.build().fetch_all(&mut *conn).await? {
                let env: String = r.try_get("env")?;
                let version: i64 = r.try_get("version")?;
                let state = out.entry(env).or_default();
                state.current = state.current.max(version);
                if r.try_get::<i64, _>("destroyed")? != 0 {
                    state.destroyed.insert(version);
                }
            }
        });
        Ok(out)
    }

    /// Which of `keys` were already used (read inside the transaction).
    pub async fn replays_seen(&mut self, keys: &[[u8; 32]]) -> Result<HashSet<[u8; 32]>> {
        let mut seen = HashSet::new();
        for chunk in self.statements(keys, |_| 40) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new("SELECT key FROM replay WHERE key IN ");
                push_list(&mut q, chunk.iter().map(|k| k.to_vec()), "");
                for r in q.build().fetch_all(&mut *conn).await? {
                    seen.extend(replay_key(&r)?);
                }
            });
        }
        Ok(seen)
    }

    /// Which of the role intents `role_names` still exist; on PostgreSQL they are locked
    /// until the transaction ends, so reconciliation cannot claim them in between.
    pub async fn lock_intents(&mut self, role_names: &[&str]) -> Result<HashSet<String>> {
        let postgres = matches!(self, WriteTx::Postgres(_));
        let mut sorted = role_names.to_vec();
        sorted.sort_unstable();
        let mut present = HashSet::with_capacity(sorted.len());
        for chunk in self.statements(&sorted, |n| 8 + n.len()) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new("SELECT role_name FROM pg_intents WHERE role_name IN ");
                let lock = if postgres {
                    " ORDER BY role_name FOR UPDATE"
                } else {
                    ""
                };
                push_list(&mut q, chunk.iter().map(|n| n.to_string()), lock);
                for r in q.build().fetch_all(&mut *conn).await? {
                    present.insert(r.try_get::<String, _>("role_name")?);
                }
            });
        }
        Ok(present)
    }

    /// Records source tokens as used; returns the keys recorded now. A key missing from the
    /// answer was already used (a replay). Keys must be distinct; they are inserted in
    /// ascending order so concurrent batches on PostgreSQL lock them in the same order and
    /// never deadlock.
    pub async fn claim_replays(
        &mut self,
        slots: &[&ReplaySlot],
        now: i64,
    ) -> Result<HashSet<[u8; 32]>> {
        let mut sorted: Vec<&ReplaySlot> = slots.to_vec();
        sorted.sort_unstable_by_key(|s| s.key);
        let mut claimed = HashSet::with_capacity(sorted.len());
        for chunk in self.statements(&sorted, |s| 60 + s.issuer.len()) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new("INSERT INTO replay (key, issuer, seen_at, expires_at) ");
                q.push_values(chunk, |mut b, s| {
                    b.push_bind(s.key.to_vec())
                        .push_bind(s.issuer.clone())
                        .push_bind(now)
                        .push_bind(s.expires_at);
                });
                q.push(" ON CONFLICT (key) DO NOTHING RETURNING key");
                for r in q.build().fetch_all(&mut *conn).await? {
                    claimed.extend(replay_key(&r)?);
                }
            });
        }
        Ok(claimed)
    }

    /// Gives single-use slots back (an exchange of the batch was abandoned after its slot was
    /// taken: its token may be presented again).
    pub async fn release_replays(&mut self, keys: &[[u8; 32]]) -> Result<()> {
        for chunk in self.statements(keys, |_| 40) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> = QueryBuilder::new("DELETE FROM replay WHERE key IN ");
                push_list(&mut q, chunk.iter().map(|k| k.to_vec()), "");
                q.build().execute(&mut *conn).await?;
            });
        }
        Ok(())
    }

    /// Deletes role intents as their leases take over (locked first with
    /// [`lock_intents`](Self::lock_intents), so all of them exist).
    pub async fn take_intents(&mut self, role_names: &[&str]) -> Result<()> {
        for chunk in self.statements(role_names, |n| 8 + n.len()) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new("DELETE FROM pg_intents WHERE role_name IN ");
                push_list(&mut q, chunk.iter().map(|n| n.to_string()), "");
                q.build().execute(&mut *conn).await?;
            });
        }
        Ok(())
    }

    /// Inserts leases with their indexed claims and credentials: three multi-row statements
    /// (more only for batches beyond `ROWS_PER_STATEMENT` rows).
    pub async fn insert_leases(&mut self, leases: &[&NewLease]) -> Result<()> {
        if let WriteTx::Postgres(tx) = self {
            return insert_leases_pg(tx, leases).await;
        }
        for chunk in leases.chunks(ROWS_PER_STATEMENT) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> = QueryBuilder::new(
                    "INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at,
                                         expires_at, key_version, sealed) ",
                );
                q.push_values(chunk, |mut b, n| {
                    let l = &n.lease;
                    b.push_bind(l.id.clone())
                        .push_bind(l.env.clone())
                        .push_bind(l.role.clone())
                        .push_bind(l.issuer.clone())
                        .push_bind(l.subject.clone())
                        .push_bind(l.policy_version.clone())
                        .push_bind(l.issued_at)
                        .push_bind(l.expires_at)
                        .push_bind(l.key_version)
                        .push_bind(l.sealed.clone());
                });
                q.build().execute(&mut *conn).await?;
            });
        }
        let claims: Vec<(&str, &str, &str)> = leases
            .iter()
            .flat_map(|n| {
                n.claims
                    .iter()
                    .map(|(k, v)| (n.lease.id.as_str(), k.as_str(), v.as_str()))
            })
            .collect();
        for chunk in claims.chunks(ROWS_PER_STATEMENT) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new("INSERT INTO lease_claims (lease_id, name, value) ");
                q.push_values(chunk, |mut b, (id, name, value)| {
                    b.push_bind(id.to_string())
                        .push_bind(name.to_string())
                        .push_bind(value.to_string());
                });
                q.build().execute(&mut *conn).await?;
            });
        }
        let creds: Vec<&CredentialRow> = leases.iter().flat_map(|n| &n.credentials).collect();
        for chunk in creds.chunks(ROWS_PER_STATEMENT) {
            with_tx_db!(self, |conn, Db| {
                let mut q: QueryBuilder<Db> = QueryBuilder::new(
                    "INSERT INTO credentials (id, lease_id, env, name, kind, token_hash, scope,
                                              expires_at) ",
                );
                q.push_values(chunk, |mut b, c| {
                    b.push_bind(c.id.clone())
                        .push_bind(c.lease_id.clone())
                        .push_bind(c.env.clone())
                        .push_bind(c.name.clone())
                        .push_bind(c.kind.name())
                        .push_bind(c.token_hash.clone())
                        .push_bind(c.scope.clone())
                        .push_bind(c.expires_at);
                });
                q.build().execute(&mut *conn).await?;
            });
        }
        Ok(())
    }
}

/// PostgreSQL: the same rows through `UNNEST` of one array per column, so each statement has
/// one text whatever the batch size (it stays prepared on its connection), in statements of
/// at most [`PG_STATEMENT_BYTES`].
async fn insert_leases_pg(conn: &mut sqlx::PgConnection, leases: &[&NewLease]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::chunks_by;

    #[test]
    fn statements_respect_both_the_row_and_the_byte_budget() {
        let rows: Vec<usize> = vec![3, 3, 3, 10, 1, 1, 1, 1];
        let sizes = |c: Vec<&[usize]>| c.iter().map(|s| s.len()).collect::<Vec<_>>();
        assert_eq!(sizes(chunks_by(&rows, 100, 6, |r| *r)), [2, 1, 1, 4]);
        assert_eq!(sizes(chunks_by(&rows, 3, usize::MAX, |r| *r)), [3, 3, 2]);
        assert!(chunks_by(&Vec::<usize>::new(), 3, 6, |r| *r).is_empty());
    }
}
