//! The SQL store, one code path for SQLite (the default: a file, no setup) and PostgreSQL
//! (several replicas sharing one database). Every query is written once; `with_db!` expands it
//! for each backend, so both run the same statements (with `$1…$N` placeholders, which SQLite
//! accepts too).
//!
//! SQLite: one writer connection (SQLite allows one writer; queuing in the pool beats
//! busy-waiting), `BEGIN IMMEDIATE` write transactions, WAL with `synchronous=FULL`, and a
//! small pool of readers. PostgreSQL: one pool; uniqueness (single-use tokens, key versions,
//! lease ids) is enforced by primary keys, and migrations take an advisory lock so replicas
//! starting together migrate once.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row, Sqlite, Transaction};

use super::{
    CredentialRow, CredentialState, DataKeyRow, LeaseFilter, LeaseRow, PgIntent, Result,
    SealedRecord, SealedTable, SecretRow, Selector, SigningKeyRow, StoreError, TokenGrant,
    glob_to_like,
};

/// The store.
#[derive(Clone, Debug)]
pub enum Store {
    /// A SQLite file.
    Sqlite {
        /// The single writer connection.
        writer: SqlitePool,
        /// Read-only connections.
        reader: SqlitePool,
    },
    /// A PostgreSQL database shared by replicas.
    Postgres {
        /// The pool.
        pool: PgPool,
    },
}

/// An open write transaction; rolled back when dropped without `commit`.
pub enum WriteTx {
    /// On SQLite.
    Sqlite(Transaction<'static, Sqlite>),
    /// On PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$w` (writer pool), `$r` (reader pool) and `$db` (the sqlx database
/// type) bound for the store's backend.
macro_rules! with_db {
    ($store:expr, |$w:ident, $r:ident, $db:ident| $body:block) => {
        match $store {
            Store::Sqlite { writer, reader } => {
                #[allow(unused_variables)]
                let ($w, $r) = (writer, reader);
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            Store::Postgres { pool } => {
                #[allow(unused_variables)]
                let ($w, $r) = (pool, pool);
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}

/// Runs `$body` with `$c` bound to the transaction's connection.
macro_rules! with_tx {
    ($tx:expr, |$c:ident| $body:block) => {
        match $tx {
            WriteTx::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
            WriteTx::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

mod batch;
pub use batch::{KeyState, NewLease, ReplaySlot};

macro_rules! lease_row {
    ($r:expr) => {{
        let r = $r;
        (|| -> Result<LeaseRow> {
            Ok(LeaseRow {
                id: r.try_get("id")?,
                env: r.try_get("env")?,
                role: r.try_get("role")?,
                issuer: r.try_get("issuer")?,
                subject: r.try_get("subject")?,
                policy_version: r.try_get("policy_version")?,
                issued_at: r.try_get("issued_at")?,
                expires_at: r.try_get("expires_at")?,
                revoked_at: r.try_get("revoked_at")?,
                revoke_reason: r.try_get("revoke_reason")?,
                key_version: r.try_get("key_version")?,
                sealed: r.try_get("sealed")?,
                revocation: r.try_get("revocation")?,
                revocation_attempts: r.try_get("revocation_attempts")?,
            })
        })()
    }};
}

/// A broker token's grant from a row with the columns of `token_grant`.
macro_rules! token_grant_row {
    ($r:expr) => {{
        let r = $r;
        (|| -> Result<TokenGrant> {
            let scope: String = r.try_get("scope")?;
            Ok(TokenGrant {
                credential_id: r.try_get("id")?,
                name: r.try_get("name")?,
                lease_id: r.try_get("lease_id")?,
                env: r.try_get("env")?,
                role: r.try_get("role")?,
                subject: r.try_get("subject")?,
                issuer: r.try_get("issuer")?,
                scope: serde_json::from_str(&scope).unwrap_or_default(),
                expires_at: r.try_get("expires_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })()
    }};
}

macro_rules! credential_row {
    ($r:expr) => {{
        let r = $r;
        (|| -> Result<CredentialRow> {
            Ok(CredentialRow {
                id: r.try_get("id")?,
                lease_id: r.try_get("lease_id")?,
                env: r.try_get("env")?,
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                token_hash: r.try_get("token_hash")?,
                scope: r.try_get("scope")?,
                expires_at: r.try_get("expires_at")?,
            })
        })()
    }};
}

macro_rules! secret_row {
    ($r:expr) => {{
        let r = $r;
        (|| -> Result<SecretRow> {
            let fields: String = r.try_get("fields")?;
            Ok(SecretRow {
                version: r.try_get("version")?,
                fields: serde_json::from_str(&fields).unwrap_or_default(),
                key_version: r.try_get("key_version")?,
                sealed: r.try_get("sealed")?,
                created_at: r.try_get("created_at")?,
            })
        })()
    }};
}

/// How each backend begins a write transaction.
trait BeginWrite {
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

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
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

    // ---- data keys ----

    /// Every version of an environment's data key, oldest first.
    pub async fn data_keys(&self, env: &str) -> Result<Vec<DataKeyRow>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
                "SELECT version, wrapped FROM data_keys WHERE env = $1 ORDER BY version",
            )
            .bind(env)
            .fetch_all(r)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(DataKeyRow {
                        version: r.try_get("version")?,
                        wrapped: r.try_get("wrapped")?,
                    })
                })
                .collect()
        })
    }

    /// Inserts a data key version; false when that version already exists (another writer won).
    pub async fn insert_data_key(
        &self,
        env: &str,
        version: i64,
        wrapped: &[u8],
        now: i64,
    ) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let r = sqlx::query(
                "INSERT INTO data_keys (env, version, wrapped, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (env, version) DO NOTHING",
            )
            .bind(env)
            .bind(version)
            .bind(wrapped)
            .bind(now)
            .execute(w)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    // ---- signing keys ----

    /// The environment's signing key for `purpose`.
    pub async fn signing_key(&self, env: &str, purpose: &str) -> Result<Option<SigningKeyRow>> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
            "SELECT kid, key_version, sealed, public_jwk FROM signing_keys WHERE env = $1 AND purpose = $2",
        )
        .bind(env)
        .bind(purpose)
        .fetch_optional(r)
        .await?;
            row.map(|r| {
                Ok(SigningKeyRow {
                    kid: r.try_get("kid")?,
                    key_version: r.try_get("key_version")?,
                    sealed: r.try_get("sealed")?,
                    public_jwk: r.try_get("public_jwk")?,
                })
            })
            .transpose()
        })
    }

    /// Stores a signing key unless one exists; false when another writer stored one first.
    pub async fn insert_signing_key(
        &self,
        env: &str,
        purpose: &str,
        row: &SigningKeyRow,
        now: i64,
    ) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let r = sqlx::query(
            "INSERT INTO signing_keys (env, purpose, kid, key_version, sealed, public_jwk, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (env, purpose) DO NOTHING",
        )
        .bind(env)
        .bind(purpose)
        .bind(&row.kid)
        .bind(row.key_version)
        .bind(&row.sealed)
        .bind(&row.public_jwk)
        .bind(now)
        .execute(w)
        .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    // ---- broker tokens ----

    /// The grant behind a broker token digest, with its lease's state.
    pub async fn token_grant(&self, digest: &[u8]) -> Result<Option<TokenGrant>> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
            "SELECT c.id, c.name, c.scope, c.expires_at, l.id AS lease_id, l.env, l.role, l.subject,
                    l.issuer, r.revoked_at
             FROM credentials c JOIN leases l ON l.id = c.lease_id
             LEFT JOIN lease_revocations r ON r.lease_id = l.id
             WHERE c.token_hash = $1",
        )
        .bind(digest)
        .fetch_optional(r)
        .await?;
            row.as_ref().map(|r| token_grant_row!(r)).transpose()
        })
    }

    /// One round trip for a secret read: the grant behind a broker token digest (with its
    /// lease's state) and, when present, the secret `env`/`path` at `version` (the latest when
    /// None) with whether its data key is still live. The caller checks the grant before it
    /// decrypts anything.
    pub async fn token_secret(
        &self,
        digest: &[u8],
        env: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<(TokenGrant, Option<(SecretRow, bool)>)>> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
                "SELECT c.id, c.name, c.scope, c.expires_at, l.id AS lease_id, l.env, l.role,
                        l.subject, l.issuer, r.revoked_at,
                        s.version AS s_version, s.fields AS s_fields,
                        s.key_version AS s_key_version, s.sealed AS s_sealed,
                        s.created_at AS s_created_at,
                        CAST(CASE WHEN d.wrapped IS NULL THEN 0 ELSE 1 END AS BIGINT) AS s_key_live
                 FROM credentials c JOIN leases l ON l.id = c.lease_id
                 LEFT JOIN lease_revocations r ON r.lease_id = l.id
                 LEFT JOIN secrets s ON s.env = $2 AND s.path = $3 AND s.version = COALESCE($4,
                     (SELECT MAX(version) FROM secrets WHERE env = $2 AND path = $3))
                 LEFT JOIN data_keys d ON d.env = s.env AND d.version = s.key_version
                 WHERE c.token_hash = $1",
            )
            .bind(digest)
            .bind(env)
            .bind(path)
            .bind(version)
            .fetch_optional(r)
            .await?;
            let Some(r) = row else { return Ok(None) };
            let grant = token_grant_row!(&r)?;
            let secret = match r.try_get::<Option<i64>, _>("s_version")? {
                None => None,
                Some(version) => {
                    let fields: String = r.try_get("s_fields")?;
                    Some((
                        SecretRow {
                            version,
                            fields: serde_json::from_str(&fields).unwrap_or_default(),
                            key_version: r.try_get("s_key_version")?,
                            sealed: r.try_get("s_sealed")?,
                            created_at: r.try_get("s_created_at")?,
                        },
                        r.try_get::<i64, _>("s_key_live")? != 0,
                    ))
                }
            };
            Ok(Some((grant, secret)))
        })
    }

    /// Credentials of a lease.
    pub async fn lease_credentials(&self, lease_id: &str) -> Result<Vec<CredentialRow>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
            "SELECT id, lease_id, env, name, kind, token_hash, scope, expires_at FROM credentials
             WHERE lease_id = $1 ORDER BY id",
        )
        .bind(lease_id)
        .fetch_all(r)
        .await?;
            rows.iter().map(|r| credential_row!(r)).collect()
        })
    }

    // ---- leases ----

    /// One lease.
    pub async fn lease(&self, id: &str) -> Result<Option<LeaseRow>> {
        with_db!(self, |w, r, Db| {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM {LEASE_FROM} WHERE l.id = $1");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(r)
                .await?;
            row.as_ref().map(|r| lease_row!(r)).transpose()
        })
    }

    /// Leases matching `f`, newest first.
    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<LeaseRow>> {
        with_db!(self, |w, r, Db| {
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
                "SELECT {LEASE_COLUMNS} FROM {LEASE_FROM} WHERE 1 = 1"
            ));
            if let Some(env) = &f.env {
                q.push(" AND l.env = ").push_bind(env.clone());
            }
            if let Some(role) = &f.role {
                q.push(" AND l.role = ").push_bind(role.clone());
            }
            if let Some(now) = f.active_at {
                q.push(" AND r.lease_id IS NULL AND l.expires_at > ")
                    .push_bind(now);
            }
            if let Some(after) = &f.after {
                q.push(" AND l.id < ").push_bind(after.clone());
            }
            for (name, value) in &f.claims {
                q.push(" AND EXISTS (SELECT 1 FROM lease_claims c WHERE c.name = ")
                    .push_bind(name.clone())
                    .push(" AND c.value = ")
                    .push_bind(value.clone())
                    .push(" AND c.lease_id = l.id)");
            }
            q.push(" ORDER BY l.id DESC LIMIT ").push_bind(f.limit);
            let rows = q.build().fetch_all(r).await?;
            rows.iter().map(|r| lease_row!(r)).collect()
        })
    }

    /// Revokes every live lease (not revoked, not expired at `now`) the selector matches, in one
    /// transaction; returns the ids revoked now (already revoked ones are not counted again).
    /// A transaction that loses a race with another replica's revocation is run again.
    pub async fn revoke(&self, sel: &Selector, now: i64, reason: &str) -> Result<Vec<String>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.revoke_once(sel, now, reason).await {
                Err(StoreError::Conflict(e)) if attempts < 5 => {
                    tracing::warn!(error = %e, attempts, "revocation raced another; running it again");
                }
                other => return other,
            }
        }
    }

    async fn revoke_once(&self, sel: &Selector, now: i64, reason: &str) -> Result<Vec<String>> {
        with_db!(self, |w, r, Db| {
            // One narrow row per lease revoked now; `external` marks the leases whose
            // database roles the revocation worker must drop.
            let mut q: QueryBuilder<Db> = QueryBuilder::new(
                "INSERT INTO lease_revocations (lease_id, revoked_at, reason, external) SELECT l.id, ",
            );
            q.push_bind(now)
                .push(", ")
                .push_bind(reason.to_string())
                .push(
                    ", CASE WHEN EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = l.id
                       AND c.kind = 'postgres') THEN 1 ELSE 0 END
                     FROM leases l WHERE l.expires_at > ",
                )
                .push_bind(now)
                .push(
                    " AND NOT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.lease_id = l.id)",
                );
            for (col, v) in [
                ("id", &sel.lease_id),
                ("env", &sel.env),
                ("role", &sel.role),
                ("issuer", &sel.issuer),
                ("subject", &sel.subject),
                ("policy_version", &sel.policy_version),
            ] {
                if let Some(v) = v {
                    q.push(" AND l.").push(col).push(" = ").push_bind(v.clone());
                }
            }
            if let Some(t) = sel.issued_after {
                q.push(" AND l.issued_at >= ").push_bind(t);
            }
            if let Some(t) = sel.issued_before {
                q.push(" AND l.issued_at <= ").push_bind(t);
            }
            for (name, glob) in &sel.claims {
                q.push(" AND l.id IN (SELECT lease_id FROM lease_claims WHERE name = ")
                    .push_bind(name.clone())
                    .push(" AND value LIKE ")
                    .push_bind(glob_to_like(glob))
                    .push(" ESCAPE '\\')");
            }
            // In lease order, so two revocations overlapping on PostgreSQL lock their rows in
            // the same order. A concurrent revocation of the same lease (another replica) wins;
            // this one does not count it.
            q.push(" ORDER BY l.id ON CONFLICT (lease_id) DO NOTHING RETURNING lease_id, external");
            let mut tx = w.begin_write().await?;
            let rows = q.build().fetch_all(&mut *tx).await?;
            let mut ids = Vec::with_capacity(rows.len());
            let mut external = Vec::new();
            for r in &rows {
                let id: String = r.try_get("lease_id")?;
                if r.try_get::<i64, _>("external")? != 0 {
                    external.push(id.clone());
                }
                ids.push(id);
            }
            for chunk in external.chunks(500) {
                let mut q: QueryBuilder<Db> = QueryBuilder::new(
                    "UPDATE leases SET revocation = 'pending', revocation_next_at = ",
                );
                q.push_bind(now)
                    .push(" WHERE revocation IS NULL AND id IN ");
                batch::push_list(&mut q, chunk.iter().cloned(), "");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            ids.sort_unstable_by(|a, b| b.cmp(a));
            Ok(ids)
        })
    }

    /// Ids and expiry of an environment's JWT credentials whose lease is revoked and which
    /// have not expired yet.
    pub async fn revoked_jwts(&self, env: &str, now: i64) -> Result<Vec<(String, i64)>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
                "SELECT c.id, c.expires_at FROM credentials c
             JOIN lease_revocations r ON r.lease_id = c.lease_id
             WHERE c.env = $1 AND c.kind = 'jwt' AND c.expires_at > $2
             ORDER BY c.id",
            )
            .bind(env)
            .bind(now)
            .fetch_all(r)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("expires_at")?)))
                .collect()
        })
    }

    /// A credential by id with its lease's state.
    pub async fn credential_state(&self, id: &str) -> Result<Option<CredentialState>> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
            "SELECT c.id, c.lease_id, c.env, c.name, c.kind, c.token_hash, c.scope, c.expires_at,
                    l.role, l.subject, r.revoked_at
             FROM credentials c JOIN leases l ON l.id = c.lease_id
             LEFT JOIN lease_revocations r ON r.lease_id = l.id WHERE c.id = $1",
        )
        .bind(id)
        .fetch_optional(r)
        .await?;
            row.map(|r| {
                Ok(CredentialState {
                    credential: credential_row!(&r)?,
                    role: r.try_get("role")?,
                    subject: r.try_get("subject")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .transpose()
        })
    }

    /// Marks expired leases holding external credentials for revocation (the credential's own
    /// expiry is only the backstop), deletes leases that expired before `expired_before` and
    /// whose external credentials are settled (their credential rows go with them), and replay
    /// records past their token's expiry. Returns (leases deleted, replay records deleted).
    pub async fn sweep(&self, now: i64, expired_before: i64) -> Result<(u64, u64)> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
            "UPDATE leases SET revocation = 'pending', revocation_next_at = $1
             WHERE expires_at <= $1 AND revocation IS NULL
               AND EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = leases.id AND c.kind = 'postgres')",
        )
        .bind(now)
        .execute(w)
        .await?;
            let leases = sqlx::query(
            "DELETE FROM leases WHERE expires_at < $1 AND (revocation IS NULL OR revocation = 'done')",
        )
        .bind(expired_before)
        .execute(w)
        .await?
        .rows_affected();
            let replay = sqlx::query("DELETE FROM replay WHERE expires_at < $1")
                .bind(now)
                .execute(w)
                .await?
                .rows_affected();
            Ok((leases, replay))
        })
    }

    /// Leases whose external credentials are due for a revocation attempt.
    pub async fn due_revocations(&self, now: i64, limit: i64) -> Result<Vec<LeaseRow>> {
        with_db!(self, |w, r, Db| {
            let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM {LEASE_FROM} WHERE l.revocation IN ('pending', 'failed')
             AND (l.revocation_next_at IS NULL OR l.revocation_next_at <= $1)
             ORDER BY l.revocation_next_at LIMIT $2"
        );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(now)
                .bind(limit)
                .fetch_all(w)
                .await?;
            rows.iter().map(|r| lease_row!(r)).collect()
        })
    }

    /// Records the outcome of a revocation attempt.
    pub async fn set_revocation(
        &self,
        lease_id: &str,
        state: &str,
        attempts: i64,
        next_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
            "UPDATE leases SET revocation = $1, revocation_attempts = $2, revocation_next_at = $3,
             revocation_error = $4 WHERE id = $5",
        )
        .bind(state)
        .bind(attempts)
        .bind(next_at)
        .bind(error)
        .bind(lease_id)
        .execute(w)
        .await?;
            Ok(())
        })
    }

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

    /// Marks every lease of `env` holding database roles whose revocation was never started
    /// (live, revoked or expired but not yet swept) as due now: crypto-shredding drops them all
    /// while their sealed records can still be opened.
    pub async fn mark_env_roles_due(&self, env: &str, now: i64) -> Result<u64> {
        with_db!(self, |w, r, Db| {
            let done = sqlx::query(
                "UPDATE leases SET revocation = 'pending', revocation_next_at = $1
                 WHERE env = $2 AND revocation IS NULL
                   AND EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = leases.id
                               AND c.kind = 'postgres')",
            )
            .bind(now)
            .bind(env)
            .execute(w)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// Leases of `env` whose external credentials are not revoked yet (`pending` or `failed`).
    pub async fn unsettled_revocations(&self, env: &str) -> Result<i64> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM leases WHERE env = $1 AND revocation IN ('pending', 'failed')",
        )
        .bind(env)
        .fetch_one(w)
        .await?;
            Ok(row.try_get("n")?)
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
                .map(|r| {
                    Ok((
                        PgIntent {
                            role_name: r.try_get("role_name")?,
                            target: r.try_get("target")?,
                            env: r.try_get("env")?,
                            lease_id: r.try_get("lease_id")?,
                        },
                        r.try_get::<bool, _>("committed")?,
                    ))
                })
                .collect()
        })
    }

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

    /// Serials and revocation times of an environment's unexpired certificates whose lease is
    /// revoked (the CRL's content).
    pub async fn revoked_certificates(&self, env: &str, now: i64) -> Result<Vec<(String, i64)>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
                "SELECT c.scope, r.revoked_at FROM credentials c
             JOIN lease_revocations r ON r.lease_id = c.lease_id
             WHERE c.env = $1 AND c.kind = 'x509' AND c.expires_at > $2
             ORDER BY c.id",
            )
            .bind(env)
            .bind(now)
            .fetch_all(r)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let scope: String = r.try_get("scope")?;
                let serial = serde_json::from_str::<serde_json::Value>(&scope)
                    .ok()
                    .and_then(|v| v["serial"].as_str().map(str::to_string));
                if let Some(serial) = serial {
                    out.push((serial, r.try_get("revoked_at")?));
                }
            }
            Ok(out)
        })
    }

    // ---- key management ----

    /// Crypto-shredding: forgets every wrapped data key of `env` and its signing keys.
    pub async fn destroy_keys(&self, env: &str, now: i64) -> Result<u64> {
        with_db!(self, |w, r, Db| {
            let mut tx = w.begin_write().await?;
            let n = sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = $1 WHERE env = $2 AND wrapped IS NOT NULL",
        )
        .bind(now)
        .bind(env)
        .execute(&mut *tx)
        .await?
        .rows_affected();
            sqlx::query("DELETE FROM signing_keys WHERE env = $1")
                .bind(env)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Up to `limit` records of `table` in `env` sealed under a version below `version`.
    pub async fn sealed_below(
        &self,
        table: SealedTable,
        env: &str,
        version: i64,
        limit: i64,
    ) -> Result<Vec<SealedRecord>> {
        with_db!(self, |w, r, Db| {
            let sql = match table {
                SealedTable::Leases => {
                    "SELECT id AS rid, key_version, sealed FROM leases WHERE env = $1 AND key_version < $2 LIMIT $3"
                }
                SealedTable::Secrets => {
                    "SELECT path || '#' || version AS rid, key_version, sealed FROM secrets WHERE env = $1 AND key_version < $2 LIMIT $3"
                }
                SealedTable::SigningKeys => {
                    "SELECT kid AS rid, key_version, sealed FROM signing_keys WHERE env = $1 AND key_version < $2 LIMIT $3"
                }
            };
            let rows = sqlx::query(sql)
                .bind(env)
                .bind(version)
                .bind(limit)
                .fetch_all(r)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(SealedRecord {
                        id: r.try_get("rid")?,
                        key_version: r.try_get("key_version")?,
                        sealed: r.try_get("sealed")?,
                    })
                })
                .collect()
        })
    }

    /// Replaces a record's ciphertext, only if it is still under `old_version`.
    pub async fn reseal(
        &self,
        table: SealedTable,
        env: &str,
        rec: &SealedRecord,
        new_version: i64,
        sealed: &[u8],
    ) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let sql = match table {
                SealedTable::Leases => {
                    "UPDATE leases SET key_version = $1, sealed = $2 WHERE env = $3 AND id = $4 AND key_version = $5"
                }
                SealedTable::Secrets => {
                    "UPDATE secrets SET key_version = $1, sealed = $2 WHERE env = $3 AND path || '#' || version = $4 AND key_version = $5"
                }
                SealedTable::SigningKeys => {
                    "UPDATE signing_keys SET key_version = $1, sealed = $2 WHERE env = $3 AND kid = $4 AND key_version = $5"
                }
            };
            let r = sqlx::query(sql)
                .bind(new_version)
                .bind(sealed)
                .bind(env)
                .bind(&rec.id)
                .bind(rec.key_version)
                .execute(w)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Number of records per table still sealed under versions below `version`.
    pub async fn count_sealed_below(&self, env: &str, version: i64) -> Result<i64> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM leases WHERE env = $1 AND key_version < $2)
                  + (SELECT COUNT(*) FROM secrets WHERE env = $1 AND key_version < $2)
                  + (SELECT COUNT(*) FROM signing_keys WHERE env = $1 AND key_version < $2) AS n",
            )
            .bind(env)
            .bind(version)
            .fetch_one(r)
            .await?;
            Ok(row.try_get("n")?)
        })
    }

    // ---- environments ----

    /// Freezes or unfreezes an environment.
    pub async fn set_frozen(
        &self,
        env: &str,
        frozen: bool,
        reason: &str,
        by: &str,
        now: i64,
    ) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
            "INSERT INTO environments (env, frozen, frozen_reason, frozen_at, frozen_by) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (env) DO UPDATE SET frozen = $2, frozen_reason = $3, frozen_at = $4, frozen_by = $5",
        )
        .bind(env)
        .bind(i64::from(frozen))
        .bind(reason)
        .bind(now)
        .bind(by)
        .execute(w)
        .await?;
            Ok(())
        })
    }

    // ---- secrets ----

    /// Latest version of a secret.
    pub async fn latest_secret(&self, env: &str, path: &str) -> Result<Option<SecretRow>> {
        with_db!(self, |w, r, Db| {
            let row = sqlx::query(
                "SELECT version, fields, key_version, sealed, created_at FROM secrets
             WHERE env = $1 AND path = $2 ORDER BY version DESC LIMIT 1",
            )
            .bind(env)
            .bind(path)
            .fetch_optional(r)
            .await?;
            row.as_ref().map(|r| secret_row!(r)).transpose()
        })
    }

    /// Every version of a secret, newest first.
    pub async fn secret_versions(&self, env: &str, path: &str) -> Result<Vec<SecretRow>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
                "SELECT version, fields, key_version, sealed, created_at FROM secrets
             WHERE env = $1 AND path = $2 ORDER BY version DESC",
            )
            .bind(env)
            .bind(path)
            .fetch_all(r)
            .await?;
            rows.iter().map(|r| secret_row!(r)).collect()
        })
    }

    /// Paths of an environment's secrets with a prefix.
    pub async fn secret_paths(&self, env: &str, prefix: &str) -> Result<Vec<String>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
            "SELECT DISTINCT path FROM secrets WHERE env = $1 AND substr(path, 1, length($2)) = $2 ORDER BY path",
        )
        .bind(env)
        .bind(prefix)
        .fetch_all(r)
        .await?;
            rows.iter().map(|r| Ok(r.try_get("path")?)).collect()
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

    /// Deletes every version of a secret; the number of versions removed.
    pub async fn delete_secret(&mut self, env: &str, path: &str) -> Result<u64> {
        with_tx!(self, |conn| {
            let r = sqlx::query("DELETE FROM secrets WHERE env = $1 AND path = $2")
                .bind(env)
                .bind(path)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected())
        })
    }

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

    /// Inserts a lease with its indexed claims.
    pub async fn insert_lease(&mut self, l: &LeaseRow, claims: &[(String, String)]) -> Result<()> {
        with_tx!(self, |conn| {
            sqlx::query(
            "INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at, expires_at,
                                 key_version, sealed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&l.id)
        .bind(&l.env)
        .bind(&l.role)
        .bind(&l.issuer)
        .bind(&l.subject)
        .bind(&l.policy_version)
        .bind(l.issued_at)
        .bind(l.expires_at)
        .bind(l.key_version)
        .bind(&l.sealed)
        .execute(&mut *conn)
        .await?;
            for (name, value) in claims {
                sqlx::query("INSERT INTO lease_claims (lease_id, name, value) VALUES ($1, $2, $3)")
                    .bind(&l.id)
                    .bind(name)
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }

    /// Inserts a credential row.
    pub async fn insert_credential(&mut self, c: &CredentialRow) -> Result<()> {
        with_tx!(self, |conn| {
            sqlx::query(
            "INSERT INTO credentials (id, lease_id, env, name, kind, token_hash, scope, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&c.id)
        .bind(&c.lease_id)
        .bind(&c.env)
        .bind(&c.name)
        .bind(&c.kind)
        .bind(c.token_hash.as_deref())
        .bind(&c.scope)
        .bind(c.expires_at)
        .execute(&mut *conn)
        .await?;
            Ok(())
        })
    }

    /// Next version number of a secret.
    pub async fn next_secret_version(&mut self, env: &str, path: &str) -> Result<i64> {
        with_tx!(self, |conn| {
            let row = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM secrets WHERE env = $1 AND path = $2",
        )
        .bind(env)
        .bind(path)
        .fetch_one(&mut *conn)
        .await?;
            Ok(row.try_get("v")?)
        })
    }

    /// Inserts a secret version.
    pub async fn insert_secret(&mut self, env: &str, path: &str, s: &SecretRow) -> Result<()> {
        with_tx!(self, |conn| {
            let fields = serde_json::to_string(&s.fields).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO secrets (env, path, version, fields, key_version, sealed, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(env)
            .bind(path)
            .bind(s.version)
            .bind(fields)
            .bind(s.key_version)
            .bind(&s.sealed)
            .bind(s.created_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }

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

/// A lease row's columns, read from `LEASE_FROM` (`l`: the lease, `r`: its revocation, if any).
const LEASE_COLUMNS: &str = "l.id, l.env, l.role, l.issuer, l.subject, l.policy_version,
        l.issued_at, l.expires_at, r.revoked_at, r.reason AS revoke_reason, l.key_version, l.sealed,
        l.revocation, l.revocation_attempts";

/// Leases with their revocation row (revocations live in a narrow table of their own).
const LEASE_FROM: &str = "leases l LEFT JOIN lease_revocations r ON r.lease_id = l.id";

#[cfg(test)]
mod migration_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

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
        assert_eq!(pg.revocation.as_deref(), Some("pending"));
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
    }
}
