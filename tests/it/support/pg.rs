//! The real local PostgreSQL for the integration tests: connecting to it, a shared
//! fixture schema with a read-only group role, logging in as a role, and reading back what the
//! server stores about a role (SCRAM verifier, expiry, memberships, attributes).
//!
//! Caveats:
//! - The local server uses `trust` for loopback, so [`connect_as`] proves only that the role
//!   exists and may log in (LOGIN attribute, not dropped); it does NOT check the password and
//!   PostgreSQL does NOT enforce `VALID UNTIL` under trust (it only applies to password auth).
//!   Prove the password with [`password_matches`] and the expiry with [`valid_until`].
//! - Roles and grants are cluster-wide; tests must use unique role names and drop them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{AssertSqlSafe, Connection, Row};

/// Environment variable naming the admin URL (a superuser: `pg_authid` is read).
pub const ENV: &str = "JOBPASS_TEST_POSTGRES_URL";
/// Tried when [`ENV`] is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The fixture schema, table and group role made by [`ensure_reader_group`].
pub const SCHEMA: &str = "jp_it";
pub const TABLE: &str = "jp_it.items";
pub const READER_GROUP: &str = "jp_it_reader";

/// Bound on every connection attempt made here.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Arbitrary fixed key of the advisory lock serialising [`ensure_reader_group`] across tests
/// and test processes.
const FIXTURE_LOCK: i64 = 0x6a70_5f69_745f_7267; // "jp_it_rg"

/// The admin URL the harness found at start-up (`JOBPASS_TEST_POSTGRES_URL`, else
/// [`DEFAULT_URL`] if it answered). Only tests the harness runs because a server was found call
/// this; elsewhere it panics.
pub fn admin_url() -> String {
    super::harness::postgres_url()
}

/// `url` parsed; on a loopback host without an explicit `sslmode`, TLS is off (sqlx's default
/// `prefer` costs ~85 ms per connection against the local server, which has `ssl = on`).
pub fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?;
    let loopback = matches!(opts.get_host(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
    Ok(if loopback && !url.contains("sslmode") {
        opts.ssl_mode(PgSslMode::Disable)
    } else {
        opts
    })
}

/// Whether a connection with `url` succeeds within `within`.
pub async fn reachable(url: &str, within: Duration) -> bool {
    let Ok(opts) = options(url) else {
        return false;
    };
    match tokio::time::timeout(within, PgConnection::connect_with(&opts)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        _ => false,
    }
}

/// A connection with the admin URL. Panics if it cannot be made.
pub async fn admin(admin_url: &str) -> PgConnection {
    let opts = options(admin_url).expect("admin URL parses");
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
        .await
        .expect("admin connection within 5 s")
        .expect("admin connection")
}

/// Runs one statement (no parameters) as admin; panics on error.
pub async fn exec(admin_url: &str, sql: &str) {
    let mut c = admin(admin_url).await;
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.close().await;
}

/// Idempotent and safe under concurrent tests (one transaction holding a transaction-level
/// advisory lock): creates schema `jp_it`, table `jp_it.items(id int primary key, name text)`
/// with the row (1, 'one'), and the NOLOGIN group role `jp_it_reader` with exactly USAGE on
/// schema `jp_it` and SELECT on `jp_it.items` (any other privilege it has on those two objects
/// is revoked each time). Server defaults (e.g. on schema `public`) are left alone.
/// Returns the group role name.
pub async fn ensure_reader_group(admin_url: &str) -> String {
    let mut c = admin(admin_url).await;
    let mut tx = c.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(FIXTURE_LOCK)
        .execute(&mut *tx)
        .await
        .expect("advisory lock");
    let script = format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, name text);
INSERT INTO {TABLE} (id, name) VALUES (1, 'one') ON CONFLICT (id) DO NOTHING;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER_GROUP}') THEN
        CREATE ROLE {READER_GROUP} NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON SCHEMA {SCHEMA} FROM {READER_GROUP};
REVOKE ALL ON TABLE {TABLE} FROM {READER_GROUP};
GRANT USAGE ON SCHEMA {SCHEMA} TO {READER_GROUP};
GRANT SELECT ON TABLE {TABLE} TO {READER_GROUP};
"#
    );
    sqlx::raw_sql(AssertSqlSafe(script))
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("creating the reader fixture: {e}"));
    tx.commit().await.expect("commit reader fixture");
    let _ = c.close().await;
    READER_GROUP.to_string()
}

/// Connects as `user` to the same host/port/database as `admin_url`, without a password
/// (the local server trusts loopback). `Err` (the server's message) if the login is refused:
/// role missing/dropped or NOLOGIN. Under trust auth an expired `VALID UNTIL` is NOT refused
/// and a wrong password is not detected; see [`password_matches`] / [`valid_until`].
pub async fn connect_as(admin_url: &str, user: &str) -> Result<PgConnection, String> {
    connect(admin_url, user, None).await
}

/// Like [`connect_as`] but sends `password` (for servers that do not trust loopback).
pub async fn connect_with_password(
    admin_url: &str,
    user: &str,
    password: &str,
) -> Result<PgConnection, String> {
    connect(admin_url, user, Some(password)).await
}

async fn connect(
    admin_url: &str,
    user: &str,
    password: Option<&str>,
) -> Result<PgConnection, String> {
    let base = options(admin_url).map_err(|e| e.to_string())?;
    let mut opts = PgConnectOptions::new_without_pgpass()
        .host(base.get_host())
        .port(base.get_port())
        .ssl_mode(base.get_ssl_mode())
        .username(user)
        .password(password.unwrap_or(""));
    if let Some(db) = base.get_database() {
        opts = opts.database(db);
    }
    if let Some(socket) = base.get_socket() {
        opts = opts.socket(socket);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("connecting as {user}: timed out")),
    }
}

/// True when `password` matches the SCRAM-SHA-256 verifier stored in `pg_authid.rolpassword`
/// for `role` (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`): StoredKey and ServerKey
/// are recomputed from the password with the stored salt and iteration count and compared.
/// False for a wrong password, a missing role, no password, or an MD5 verifier.
/// The password is used as raw UTF-8 bytes (PostgreSQL applies SASLprep first: identical for
/// ASCII passwords, may differ for some non-ASCII ones).
pub async fn password_matches(admin_url: &str, role: &str, password: &str) -> bool {
    match stored_verifier(admin_url, role).await {
        Some(v) => scram_verifier_matches(&v, password),
        None => false,
    }
}

/// `pg_authid.rolpassword` of the role (None if no role or no password). Needs a superuser.
pub async fn stored_verifier(admin_url: &str, role: &str) -> Option<String> {
    let mut c = admin(admin_url).await;
    let row = sqlx::query("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut c)
        .await
        .expect("read pg_authid (needs a superuser admin URL)");
    let _ = c.close().await;
    row.and_then(|r| r.get::<Option<String>, _>(0))
}

/// A parsed `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: NonZeroU32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramVerifier {
    /// None if `verifier` is not a well-formed SCRAM-SHA-256 verifier (e.g. an MD5 hash).
    pub fn parse(verifier: &str) -> Option<ScramVerifier> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: NonZeroU32::new(iter.parse().ok()?)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        })
    }

    /// Recomputes StoredKey and ServerKey from `password` and compares.
    pub fn matches(&self, password: &str) -> bool {
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &mut salted,
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
        let client_key = ring::hmac::sign(&key, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
        let server_key = ring::hmac::sign(&key, b"Server Key");
        stored_key.as_ref() == self.stored_key.as_slice()
            && server_key.as_ref() == self.server_key.as_slice()
    }
}

/// Checks `password` against a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` string
/// (false if it is not one).
pub fn scram_verifier_matches(verifier: &str, password: &str) -> bool {
    ScramVerifier::parse(verifier).is_some_and(|v| v.matches(password))
}

/// `rolvaliduntil` of the role as unix seconds (floored). None if no role, no limit, or
/// 'infinity'; `i64::MIN` for '-infinity'.
pub async fn valid_until(admin_url: &str, role: &str) -> Option<i64> {
    let mut c = admin(admin_url).await;
    let row = sqlx::query(
        "SELECT CASE
                  WHEN rolvaliduntil IS NULL OR rolvaliduntil = 'infinity' THEN NULL
                  WHEN rolvaliduntil = '-infinity' THEN $2
                  ELSE floor(extract(epoch FROM rolvaliduntil))::bigint
                END
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .bind(i64::MIN)
    .fetch_optional(&mut c)
    .await
    .expect("read rolvaliduntil");
    let _ = c.close().await;
    row.and_then(|r| r.get::<Option<i64>, _>(0))
}

/// Whether the role exists.
pub async fn role_exists(admin_url: &str, role: &str) -> bool {
    let mut c = admin(admin_url).await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut c)
            .await
            .expect("read pg_roles");
    let _ = c.close().await;
    exists
}

/// Names of the roles `role` is a direct member of (`pg_auth_members`), sorted. Empty if the
/// role does not exist.
pub async fn member_of(admin_url: &str, role: &str) -> Vec<String> {
    let mut c = admin(admin_url).await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT g.rolname::text
         FROM pg_auth_members m
         JOIN pg_roles g ON g.oid = m.roleid
         JOIN pg_roles u ON u.oid = m.member
         WHERE u.rolname = $1
         ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut c)
    .await
    .expect("read pg_auth_members");
    let _ = c.close().await;
    names
}

/// Role attributes: (rolsuper, rolcreatedb, rolcreaterole, rolcanlogin). Panics if the role
/// does not exist (so an assertion of "not superuser" cannot pass vacuously).
pub async fn attributes(admin_url: &str, role: &str) -> (bool, bool, bool, bool) {
    let mut c = admin(admin_url).await;
    let row = sqlx::query(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut c)
    .await
    .expect("read pg_roles")
    .unwrap_or_else(|| panic!("role {role} does not exist"));
    let _ = c.close().await;
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Drops the role if it exists (revoking nothing else: fixture roles own no objects).
/// A role with live sessions is still dropped; those sessions stay open.
pub async fn drop_role(admin_url: &str, role: &str) {
    exec(
        admin_url,
        &format!("DROP ROLE IF EXISTS {}", quote_ident(role)),
    )
    .await;
}

/// A fresh unique role name with the given prefix (lowercase, safe unquoted).
pub fn unique_role(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
