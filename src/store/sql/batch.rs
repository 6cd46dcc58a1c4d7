//! The write half of the exchange ledger: what a batch of exchanges reads before it decides
//! ([`WriteTx::checks`]) and the rows it keeps ([`WriteTx::write_batch`]), each a fixed,
//! small number of statements whatever the batch size, inside one write transaction.
//!
//! A batch therefore holds the writer for about as long as one exchange would. Each backend
//! has its own statements ([`sqlite`], [`postgres`]); both keep the same guarantees:
//! - the checks are read inside the transaction that writes: on SQLite under the write lock
//!   taken at `BEGIN IMMEDIATE` (a freeze or revocation never overlaps a batch), on PostgreSQL
//!   after the environments' advisory locks are granted, shared (a freeze or revocation of one
//!   of them waits for the batch, and a batch for one in flight: see
//!   [`env_locks`](super::env_locks)), and with the role intents locked for update
//!   (reconciliation waits);
//! - a source token's slot is claimed once: an exchange whose slot another replica took
//!   meanwhile writes nothing and is reported unclaimed.

mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;

use super::WriteTx;
use crate::store::{CredentialRow, LeaseRow, Result};

/// Rows per multi-row statement (PostgreSQL arrays; SQLite JSON arrays are not split).
const ROWS_PER_STATEMENT: usize = 1000;

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

/// An environment's data-key versions, as a batch sees them.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    /// Newest version (0 when the environment has none).
    pub current: i64,
    /// Versions destroyed.
    pub destroyed: HashSet<i64>,
}

/// What a batch reads, inside its transaction, before it decides.
#[derive(Debug, Default)]
pub struct BatchChecks {
    /// Source tokens already used (replay keys).
    pub used: HashSet<[u8; 32]>,
    /// Frozen environments among those asked.
    pub frozen: HashSet<String>,
    /// Data-key state of each environment asked that has keys.
    pub keys: HashMap<String, KeyState>,
    /// PostgreSQL role intents, among those asked, that still exist (reconciliation has not
    /// claimed them).
    pub intents: HashSet<String>,
}

impl BatchChecks {
    /// Counts one data-key version of `env` (destroyed or not).
    fn add_key_version(&mut self, env: String, version: i64, destroyed: bool) {
        let state = self.keys.entry(env).or_default();
        state.current = state.current.max(version);
        if destroyed {
            state.destroyed.insert(version);
        }
    }
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

/// What one exchange of a batch writes: its slot, the role intents its lease takes over, the
/// lease. Slots of one batch are distinct.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// The source token's slot.
    pub slot: &'a ReplaySlot,
    /// PostgreSQL role intents the lease takes over (all present, per the checks).
    pub intents: &'a [String],
    /// The lease, its claims and credentials.
    pub lease: &'a NewLease,
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

impl WriteTx {
    /// Reads, for a batch: which of `keys` were used, which of `envs` are frozen and their
    /// data-key versions, which of the role intents `intents` still exist (on PostgreSQL
    /// locked until the transaction ends).
    pub async fn checks(
        &mut self,
        keys: &[[u8; 32]],
        envs: &[&str],
        intents: &[&str],
    ) -> Result<BatchChecks> {
        match self {
            WriteTx::Sqlite(tx) => sqlite::checks(tx, keys, envs, intents).await,
            WriteTx::Postgres(tx) => postgres::checks(tx, keys, envs, intents).await,
        }
    }

    /// Writes a batch's exchanges: claims each slot, deletes the role intents each lease
    /// takes over, inserts the leases with their claims and credentials. Returns the slots
    /// claimed; an exchange whose slot is missing (another replica used the token meanwhile)
    /// wrote nothing.
    pub async fn write_batch(
        &mut self,
        items: &[BatchItem<'_>],
        now: i64,
    ) -> Result<HashSet<[u8; 32]>> {
        if items.is_empty() {
            return Ok(HashSet::new());
        }
        match self {
            WriteTx::Sqlite(tx) => sqlite::write_batch(tx, items, now).await,
            WriteTx::Postgres(tx) => postgres::write_batch(tx, items, now).await,
        }
    }

    /// Inserts leases with their indexed claims and credentials (fixtures; the ledger uses
    /// [`write_batch`](Self::write_batch)).
    pub async fn insert_leases(&mut self, leases: &[&NewLease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        match self {
            WriteTx::Sqlite(tx) => sqlite::insert_leases(tx, leases).await,
            WriteTx::Postgres(tx) => postgres::insert_leases(tx, leases).await,
        }
    }
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

#[cfg(test)]
mod sqlite_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{BatchItem, NewLease, ReplaySlot};
    use crate::mint::Kind;
    use crate::store::{CredentialRow, LeaseFilter, LeaseRow, PgIntent, Selector, Store};

    fn lease(id: &str, claims: &[(&str, &str)], hash: Option<Vec<u8>>) -> NewLease {
        NewLease {
            lease: LeaseRow {
                id: id.into(),
                env: "prod".into(),
                role: "deploy".into(),
                issuer: "https://issuer".into(),
                subject: "repo:o/r:ref:refs/heads/main".into(),
                policy_version: "v1".into(),
                issued_at: 1_000,
                expires_at: 2_000,
                revoked_at: None,
                revoke_reason: None,
                key_version: 1,
                sealed: vec![0, 255, 7, 0, 128],
                revocation: None,
                revocation_attempts: 0,
            },
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            credentials: vec![CredentialRow {
                id: format!("crd_{id}"),
                lease_id: id.into(),
                env: "prod".into(),
                name: "api".into(),
                kind: if hash.is_some() {
                    Kind::Token
                } else {
                    Kind::Jwt
                },
                token_hash: hash,
                scope: r#"["app/*"]"#.into(),
                expires_at: 2_000,
            }],
        }
    }

    fn slot(k: u8) -> ReplaySlot {
        ReplaySlot {
            key: [k; 32],
            issuer: "https://issuer".into(),
            expires_at: 3_000,
        }
    }

    /// Commits one batch of leases (claims go to the backlog).
    async fn commit_leases(store: &Store, leases: &[NewLease], first_slot: u8) {
        let slots: Vec<ReplaySlot> = (0..leases.len())
            .map(|i| slot(first_slot + u8::try_from(i).unwrap()))
            .collect();
        let items: Vec<BatchItem<'_>> = leases
            .iter()
            .zip(&slots)
            .map(|(lease, slot)| BatchItem {
                slot,
                intents: &[],
                lease,
            })
            .collect();
        let mut tx = store.begin().await.unwrap();
        tx.write_batch(&items, 1_000).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn listed(store: &Store, name: &str, value: &str) -> Vec<String> {
        let f = LeaseFilter {
            claims: vec![(name.into(), value.into())],
            limit: 100,
            ..LeaseFilter::default()
        };
        let rows = store.leases(&f).await.unwrap();
        rows.into_iter().map(|l| l.id).collect()
    }

    #[tokio::test]
    async fn leases_are_found_by_claim_before_and_after_their_claims_fold_into_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        let web = [("repository", "acme/web"), ("run_id", "7")];
        let api = [("repository", "acme/api"), ("run_id", "7")];
        commit_leases(
            &store,
            &[lease("lse_1", &web, None), lease("lse_2", &api, None)],
            1,
        )
        .await;
        // lse_1 and lse_2 are folded; lse_3 and lse_4 still wait in the backlog.
        assert_eq!(store.fold_claims(512).await.unwrap(), 2);
        commit_leases(
            &store,
            &[lease("lse_3", &web, None), lease("lse_4", &api, None)],
            3,
        )
        .await;

        assert_eq!(
            listed(&store, "repository", "acme/web").await,
            ["lse_3", "lse_1"]
        );
        assert_eq!(listed(&store, "run_id", "7").await.len(), 4);
        assert!(listed(&store, "repository", "acme/*").await.is_empty());
        // A name present only as a value elsewhere matches nothing.
        assert!(listed(&store, "acme/web", "repository").await.is_empty());

        let sel = Selector {
            claims: vec![("repository".into(), "acme/w*".into())],
            ..Selector::default()
        };
        assert_eq!(
            store.revoke(&sel, 1_500, "INC-1").await.unwrap(),
            ["lse_3", "lse_1"]
        );
        // A fold in chunks moves the rest; the same lookups give the same answers.
        assert_eq!(store.fold_claims(1).await.unwrap(), 1);
        assert_eq!(store.fold_claims(512).await.unwrap(), 1);
        assert_eq!(store.fold_claims(512).await.unwrap(), 0);
        assert_eq!(
            listed(&store, "repository", "acme/web").await,
            ["lse_3", "lse_1"]
        );
        let both = Selector {
            claims: vec![
                ("repository".into(), "*".into()),
                ("run_id".into(), "7".into()),
            ],
            ..Selector::default()
        };
        assert_eq!(
            store.revoke(&both, 1_500, "INC-2").await.unwrap(),
            ["lse_4", "lse_2"]
        );

        // The sweep takes the index entries of the leases it deletes, folded or not.
        commit_leases(&store, &[lease("lse_5", &web, None)], 5).await;
        let Store::Sqlite { writer, .. } = &store else {
            unreachable!()
        };
        let count = |table: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(writer)
            .await
            .unwrap()
        };
        assert_eq!(count("lease_claims").await, 8);
        assert_eq!(count("lease_claims_backlog").await, 1);
        assert_eq!(store.sweep(3_000, 2_500).await.unwrap().0, 5);
        assert_eq!(count("lease_claims").await, 0);
        assert_eq!(count("lease_claims_backlog").await, 0);
    }

    #[tokio::test]
    async fn a_batch_reads_what_it_decides_on_and_writes_every_value_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        store.insert_data_key("prod", 1, b"w1", 1).await.unwrap();
        store.insert_data_key("prod", 2, b"w2", 1).await.unwrap();
        store
            .set_frozen("dev", true, "incident", "sec", 1)
            .await
            .unwrap();
        let intent = |n: &str| PgIntent {
            role_name: n.into(),
            target: "main".into(),
            env: "prod".into(),
            lease_id: "lse_a".into(),
        };
        store.insert_intent(&intent("jp_r1"), 1).await.unwrap();
        store.insert_intent(&intent("jp_r3"), 1).await.unwrap();
        store.destroy_keys("gone", 1).await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let checks = tx
            .checks(&[[1; 32]], &["prod", "dev", "none"], &["jp_r1", "jp_r2"])
            .await
            .unwrap();
        assert!(checks.used.is_empty());
        assert_eq!(checks.frozen.iter().collect::<Vec<_>>(), ["dev"]);
        assert_eq!(checks.keys["prod"].current, 2);
        assert!(!checks.keys.contains_key("none"));
        assert_eq!(checks.intents.iter().collect::<Vec<_>>(), ["jp_r1"]);

        // Values JSON would mangle if the rows were built carelessly.
        let odd = [
            ("nul", "a\u{0}b"),
            ("unicode", "é🦀\u{2028}"),
            ("quotes", "\"x\\y'z"),
            ("empty", ""),
        ];
        let hash = vec![0u8, 1, 254, 255];
        let (a, b) = (
            lease("lse_a", &odd, Some(hash.clone())),
            lease("lse_b", &[], None),
        );
        let (sa, sb) = (slot(1), slot(2));
        let intents = ["jp_r1".to_string()];
        let items = [
            BatchItem {
                slot: &sa,
                intents: &intents,
                lease: &a,
            },
            BatchItem {
                slot: &sb,
                intents: &[],
                lease: &b,
            },
        ];
        let claimed = tx.write_batch(&items, 1_000).await.unwrap();
        assert_eq!(claimed.len(), 2);
        tx.commit().await.unwrap();

        let stored = store.lease("lse_a").await.unwrap().unwrap();
        assert_eq!(stored.sealed, a.lease.sealed);
        assert_eq!(stored.subject, a.lease.subject);
        let creds = store.lease_credentials("lse_a").await.unwrap();
        assert_eq!(creds[0].token_hash.as_deref(), Some(hash.as_slice()));
        assert_eq!(creds[0].kind, Kind::Token);
        let creds = store.lease_credentials("lse_b").await.unwrap();
        assert_eq!(creds[0].token_hash, None);
        let Store::Sqlite { writer, .. } = &store else {
            unreachable!()
        };
        let mut want: Vec<(String, String)> = odd
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        // The claims wait with the lease, its id in the backlog, then fold into the index
        // unchanged.
        let mut backlog: Vec<(String, String)> = sqlx::query_as(
            "SELECT j.key, j.value FROM lease_claims_backlog b JOIN leases l ON l.id = b.lease_id,
             json_each(l.claims) j WHERE b.lease_id = 'lse_a'",
        )
        .fetch_all(writer)
        .await
        .unwrap();
        backlog.sort();
        assert_eq!(backlog, want);
        assert_eq!(store.fold_claims(512).await.unwrap(), 2);
        let mut claims: Vec<(String, String)> =
            sqlx::query_as("SELECT name, value FROM lease_claims WHERE lease_id = 'lse_a'")
                .fetch_all(writer)
                .await
                .unwrap();
        claims.sort();
        assert_eq!(claims, want);
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM lease_claims_backlog")
            .fetch_one(writer)
            .await
            .unwrap();
        assert_eq!(left, 0);

        // The slots are used, the intent taken over; the other intent is left alone.
        let mut tx = store.begin().await.unwrap();
        let checks = tx
            .checks(&[[1; 32], [2; 32], [3; 32]], &[], &["jp_r1", "jp_r3"])
            .await
            .unwrap();
        assert_eq!(checks.used.len(), 2);
        assert!(!checks.used.contains(&[3; 32]));
        assert_eq!(checks.intents.iter().collect::<Vec<_>>(), ["jp_r3"]);
        // A used slot fails the whole write: nothing of it is kept.
        let c = lease("lse_c", &[], None);
        let again = [BatchItem {
            slot: &sa,
            intents: &[],
            lease: &c,
        }];
        assert!(tx.write_batch(&again, 1_001).await.is_err());
        drop(tx);
        assert!(store.lease("lse_c").await.unwrap().is_none());
    }
}
