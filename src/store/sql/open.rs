//! Opening the store: connection pools, migrations, the backend's name, readiness, and write
//! transactions ([`WriteTx`]). Owns no table; it runs the migrations that create them all
//! (`migrations/sqlite`, `migrations/postgres`, unchanged files applied in order).
//!
//! Guarantees:
//! - SQLite: a single writer connection (WAL, `synchronous=FULL`, foreign keys on,
//!   case-sensitive `LIKE` for claim globs) and up to four read-only connections; write
//!   transactions start with `BEGIN IMMEDIATE`, so the write lock is taken at once and never
//!   upgraded later;
//! - PostgreSQL: migrations run under sqlx's advisory lock, so replicas starting together
//!   apply each migration once; a database URL never appears in an error (it may hold a
//!   password);
//! - a [`WriteTx`] dropped without [`commit`](WriteTx::commit) is rolled back.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};

use super::Store;
use crate::store::{Result, StoreError};

/// An open write transaction; rolled back when dropped without `commit`.
pub enum WriteTx {
    /// On SQLite.
    Sqlite(Transaction<'static, Sqlite>),
    /// On PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
}

/// How each backend begins a write transaction.
pub(super) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<Transaction<'static, Sqlite>, sqlx::Error>> + Send
    {
        // Take the write lock at BEGIN: no deadlock-prone lock upgrade later.
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    fn begin_write(
        &self,
    ) -> impl Future<Output = std::result::Result<Transaction<'static, Postgres>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

/// Page cache of the SQLite writer connection: 16 MiB (a negative `cache_size` is KiB).
const WRITER_CACHE_KIB: &str = "-16384";
/// WAL pages after which a commit checkpoints (SQLite's default is 1,000).
const WAL_CHECKPOINT_PAGES: &str = "8192";

pub(super) static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Opens the store at `url` (`sqlite://PATH` or `postgres://…`) and runs migrations.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| StoreError::Url(url.split("://").next().unwrap_or("").to_string()))?;
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Claim selectors are globs turned into LIKE patterns: they must be case-sensitive.
            .pragma("case_sensitive_like", "ON");
        // The writer's page cache holds the pages a batch and a claim fold touch, so they are
        // not read back from the WAL; checkpoints copy a page rewritten by several batches
        // once (every 32 MiB of WAL instead of 4 MiB). Readers keep SQLite's 2 MiB default.
        let writer_opts = opts
            .clone()
            .pragma("cache_size", WRITER_CACHE_KIB)
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // A local file: a ping before every write transaction would only cost a round
            // trip to the connection's thread (a failed statement still surfaces as an error).
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(writer_opts)
            .await?;
        SQLITE_MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Store::Sqlite { writer, reader })
    }

    async fn open_postgres(url: &str) -> Result<Store> {
        // The URL may hold a password: never repeat it in an error.
        let opts = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Url("postgres (invalid URL)".into()))?
            .application_name("jobpass");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        // sqlx takes a PostgreSQL advisory lock while migrating: replicas starting together
        // apply each migration once.
        POSTGRES_MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Store::Postgres { pool })
    }

    /// Which backend: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite { .. } => "sqlite",
            Store::Postgres { .. } => "postgres",
        }
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> Result<WriteTx> {
        Ok(match self {
            Store::Sqlite { writer, .. } => WriteTx::Sqlite(writer.begin_write().await?),
            Store::Postgres { pool } => WriteTx::Postgres(pool.begin_write().await?),
        })
    }

    /// Checks the store answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query("SELECT 1").execute(r).await?;
            Ok(())
        })
    }
}

impl WriteTx {
    /// Makes every write of the transaction durable.
    pub async fn commit(self) -> Result<()> {
        match self {
            WriteTx::Sqlite(tx) => tx.commit().await?,
            WriteTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Discards every write of the transaction.
    pub async fn rollback(self) -> Result<()> {
        match self {
            WriteTx::Sqlite(tx) => tx.rollback().await?,
            WriteTx::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod migration_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::SQLITE_MIGRATOR;
    use crate::store::{ExternalRevocation, LeaseFilter, Selector, Store};

    /// A store written by the schema before revocations had their own table keeps every
    /// revocation, reason, claim and pending role drop once migrated.
    #[tokio::test]
    async fn revocations_and_claims_survive_the_narrow_table_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        SQLITE_MIGRATOR.run_to(2, &pool).await.unwrap();
        for (id, revoked) in [
            ("l-live", None),
            ("l-gone", Some(1_000)),
            ("l-pg", Some(1_001)),
        ] {
            sqlx::query(
                    "INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at,
                     expires_at, revoked_at, revoke_reason, key_version, sealed, revocation)
                     VALUES ($1, 'prod', 'deploy', 'https://issuer', 'repo:a/b', 'v1', 900, 9000000000,
                     $2, $3, 1, x'00', $4)",
                )
                .bind(id)
                .bind(revoked)
                .bind(revoked.map(|_| format!("INC-{id}")))
                .bind((id == "l-pg").then_some("pending"))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO lease_claims (lease_id, name, value) VALUES ($1, 'repository', 'a/b')",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO credentials (id, lease_id, env, name, kind, scope, expires_at)
                 VALUES ('c-pg', 'l-pg', 'prod', 'db', 'postgres', '{}', 9000000000)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let gone = store.lease("l-gone").await.unwrap().unwrap();
        assert_eq!(gone.revoked_at, Some(1_000));
        assert_eq!(gone.revoke_reason.as_deref(), Some("INC-l-gone"));
        let pg = store.lease("l-pg").await.unwrap().unwrap();
        assert_eq!(pg.revoked_at, Some(1_001));
        assert_eq!(pg.revocation, Some(ExternalRevocation::Pending));
        assert_eq!(
            store.lease("l-live").await.unwrap().unwrap().revoked_at,
            None
        );

        let filter = LeaseFilter {
            claims: vec![("repository".into(), "a/b".into())],
            active_at: Some(2_000),
            limit: 10,
            ..LeaseFilter::default()
        };
        let live: Vec<String> = store
            .leases(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(live, ["l-live"]);
        let sel = Selector {
            claims: vec![("repository".into(), "a/*".into())],
            ..Selector::default()
        };
        assert_eq!(
            store.revoke(&sel, 2_000, "again").await.unwrap(),
            ["l-live"]
        );
        assert!(store.revoke(&sel, 2_001, "twice").await.unwrap().is_empty());
        let live = store.leases(&filter).await.unwrap();
        assert!(live.is_empty(), "{live:?}");

        // Claims written before the backlog were copied onto their leases, so the sweep
        // still finds their index entries by key.
        let Store::Sqlite { writer, .. } = &store else {
            unreachable!()
        };
        let claims: Option<String> =
            sqlx::query_scalar("SELECT claims FROM leases WHERE id = 'l-live'")
                .fetch_one(writer)
                .await
                .unwrap();
        assert_eq!(claims.as_deref(), Some(r#"{"repository":"a/b"}"#));
        sqlx::raw_sql(
            "UPDATE leases SET expires_at = 1, revocation = NULL; DELETE FROM credentials",
        )
        .execute(writer)
        .await
        .unwrap();
        assert_eq!(store.sweep(3_000, 2_000).await.unwrap().0, 3);
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM lease_claims")
            .fetch_one(writer)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
}
