//! `kind = "postgres"`: a real PostgreSQL login role per lease, created at exchange time and
//! dropped at expiry or revocation.
//!
//! Guarantees:
//! - the role is `LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS
//!   CONNECTION LIMIT 10`, `VALID UNTIL` the credential's expiry, and a member of exactly the
//!   grant's `member_of` roles. `INHERIT` is deliberate: the role's only privileges are those
//!   of the groups the policy names, and they apply without `SET ROLE`. Each listed group must
//!   already exist (the error names the missing one, and no role is left behind) and must not
//!   be privileged: superuser, CREATEROLE, REPLICATION, BYPASSRLS, one of PostgreSQL's
//!   built-in `pg_*` roles (`pg_execute_server_program` runs programs on the database server),
//!   or a member, directly or not, of a superuser or `pg_*` role;
//! - the password never reaches the server in clear: the statement carries a SCRAM-SHA-256
//!   verifier computed here ([`scram_verifier`]), so server statement logs do not reveal it; the
//!   admin pool has sqlx statement logging disabled so the verifier does not reach the service
//!   log either, and error messages never contain it;
//! - identifiers are always quoted ([`quote_ident`]) and generated role names must match
//!   `^[a-z_][a-z0-9_]{0,62}$`; literals are quoted with [`quote_literal`]. DDL cannot take bind
//!   parameters, so those statements are built as text and passed through `AssertSqlSafe`
//!   only after that validation; every other query binds its values;
//! - dropping a role first forbids new logins (`NOLOGIN`), then terminates its sessions (waiting
//!   for them to end), hands objects it created to the admin user (`REASSIGN OWNED`, so a
//!   job's migrations are not destroyed), removes its remaining privileges (`DROP OWNED`) and
//!   drops it. Dropping a role that does not exist succeeds.
//!
//! Requirements on the server: PostgreSQL 14 or later (`pg_terminate_backend(pid, timeout)`),
//! an admin user with `CREATEROLE` (and, on PostgreSQL 16+, `ADMIN OPTION` on the groups).
//! `VALID UNTIL` only limits password logins; with `trust` authentication it is not enforced,
//! so the broker's own expiry sweep remains necessary. `REASSIGN OWNED` acts on the target's
//! database only: objects the role owns in other databases make the drop fail (and retried).

use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions};
use zeroize::Zeroizing;

use super::MintError;

/// Most concurrent sessions a minted role may open.
const CONNECTION_LIMIT: u32 = 10;
/// PBKDF2 iterations of the SCRAM verifier (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;
/// How long `drop_role` waits for each terminated session to end, in milliseconds.
const TERMINATE_WAIT_MS: i64 = 5000;
/// Longest identifier PostgreSQL keeps (NAMEDATALEN − 1).
const MAX_IDENT_BYTES: usize = 63;
/// Role name prefix of every minted role.
pub const ROLE_PREFIX: &str = "jp_";

/// One `[postgres.<name>]` target: a lazily connected admin pool plus the public connection
/// facts handed out with each credential.
pub struct PgTarget {
    name: String,
    pool: PgPool,
    host: String,
    port: u16,
    database: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The admin URL may hold a password: only the public facts are shown.
        f.debug_struct("PgTarget")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// A target named `name` administered through `admin_url`
    /// (`postgres://user[:password]@host:port/db`). Does not connect yet, but must be called
    /// inside a Tokio runtime (the pool's maintenance task is spawned here).
    pub fn new(name: &str, admin_url: &str) -> Result<PgTarget, MintError> {
        if tokio::runtime::Handle::try_current().is_err() {
            // sqlx would panic: refuse instead.
            return Err(MintError::Database {
                target: name.to_string(),
                reason: "PgTarget::new needs a Tokio runtime".into(),
            });
        }
        if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
            return Err(MintError::Database {
                target: name.to_string(),
                reason: "admin URL must start with postgres:// or postgresql://".into(),
            });
        }
        // The parse error could echo parts of the URL (and so a password): not repeated.
        let options = PgConnectOptions::from_str(admin_url).map_err(|_| MintError::Database {
            target: name.to_string(),
            reason: "invalid admin URL".into(),
        })?;
        let options = options
            .application_name("jobpass")
            // A revocation must not hang behind a long query holding locks.
            .options([("lock_timeout", "5s"), ("statement_timeout", "30s")])
            // Statements carry SCRAM verifiers: never log them.
            .disable_statement_logging();
        let host = options.get_host().to_string();
        let port = options.get_port();
        let database = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options);
        Ok(PgTarget {
            name: name.to_string(),
            pool,
            host,
            port,
            database,
        })
    }

    /// The target's name (`[postgres.<name>]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host the credential's user connects to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port the credential's user connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Database the credential's user connects to.
    pub fn database(&self) -> &str {
        &self.database
    }

    fn error(&self, reason: impl Into<String>) -> MintError {
        MintError::Database {
            target: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Maps a driver error without leaking statement text: the server's primary message and
    /// SQLSTATE only, withheld entirely if it could quote a verifier.
    fn db_error(&self, what: &str, e: &sqlx::Error) -> MintError {
        let detail = match e.as_database_error() {
            Some(d) => {
                let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
                format!("{} (SQLSTATE {code})", d.message())
            }
            None => e.to_string(),
        };
        let detail = if detail.contains("SCRAM-SHA-256$") {
            "statement refused (details withheld)".to_string()
        } else {
            detail
        };
        self.error(format!("{what}: {detail}"))
    }

    /// Creates `role_name` as a login role with `password`, valid until `valid_until` (Unix
    /// seconds, UTC), member of exactly `member_of` (each must exist and must not be
    /// privileged, see the module's guarantees). Fails if the role already exists.
    pub async fn create_role(
        &self,
        role_name: &str,
        password: &SecretString,
        valid_until: i64,
        member_of: &[String],
    ) -> Result<(), MintError> {
        check_role_name(role_name).map_err(|r| self.error(r.to_string()))?;
        for group in member_of {
            check_any_ident(group).map_err(|r| self.error(r.to_string()))?;
        }
        let until = pg_timestamp(valid_until).map_err(|r| self.error(r.to_string()))?;
        // 4,096 PBKDF2 rounds: CPU work kept off the async threads.
        let secret = password.clone();
        let verifier = tokio::task::spawn_blocking(move || {
            scram_verifier(secret.expose_secret()).map(Zeroizing::new)
        })
        .await
        .map_err(|e| self.error(format!("verifier task failed: {e}")))??;

        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.db_error("connect", &e))?;
        if !member_of.is_empty() {
            // A group that is, or can become, more than a plain group is refused: superuser,
            // CREATEROLE, REPLICATION or BYPASSRLS, a built-in `pg_*` role (server files and
            // programs, every table), or a member (directly or not) of a superuser or `pg_*`.
            let found: Vec<(String, bool)> = sqlx::query_as(
                r"SELECT r.rolname::text,
                        r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls
                        OR r.rolname LIKE 'pg\_%'
                        OR EXISTS (SELECT 1 FROM pg_roles s
                                   WHERE (s.rolsuper OR s.rolname LIKE 'pg\_%')
                                     AND s.oid <> r.oid
                                     AND pg_has_role(r.oid, s.oid, 'MEMBER'))
                 FROM pg_roles r WHERE r.rolname = ANY($1)",
            )
            .bind(member_of)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.db_error("look up member_of roles", &e))?;
            for group in member_of {
                match found.iter().find(|(n, _)| n == group) {
                    None => {
                        return Err(self.error(format!("member_of role `{group}` does not exist")));
                    }
                    Some((_, true)) => {
                        return Err(self.error(format!(
                            "member_of role `{group}` is privileged (superuser, CREATEROLE, REPLICATION, BYPASSRLS, a built-in pg_* role, or a member of one)"
                        )));
                    }
                    Some((_, false)) => {}
                }
            }
        }
        let mut sql = format!(
            "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT \
             NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {CONNECTION_LIMIT} \
             PASSWORD {} VALID UNTIL {}",
            quote_ident(role_name),
            quote_literal(&verifier),
            quote_literal(&until),
        );
        if !member_of.is_empty() {
            let groups: Vec<String> = member_of.iter().map(|g| quote_ident(g)).collect();
            sql.push_str(" IN ROLE ");
            sql.push_str(&groups.join(", "));
        }
        let sql = Zeroizing::new(sql);
        // Safe: the role name matched the generated-name pattern and is quoted, the group
        // names are quoted identifiers, the verifier and timestamp are quoted literals.
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error("create role", &e))?;
        tx.commit()
            .await
            .map_err(|e| self.db_error("create role", &e))?;
        Ok(())
    }

    /// Drops `role_name`: forbids new logins, terminates its open sessions (waiting for them
    /// to end), drops what it owns and its privileges, then the role. `Ok(())` once the role is gone, including when it never existed.
    pub async fn drop_role(&self, role_name: &str) -> Result<(), MintError> {
        check_role_name(role_name).map_err(|r| self.error(r.to_string()))?;
        if !self.role_exists(role_name).await? {
            return Ok(());
        }
        let ident = quote_ident(role_name);
        // 42704 undefined_object: someone else dropped it meanwhile, which is what we want.
        let gone = |e: &sqlx::Error| {
            e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42704")
        };

        // Safe: validated generated name, quoted.
        match sqlx::query(AssertSqlSafe(format!("ALTER ROLE {ident} NOLOGIN")))
            .execute(&self.pool)
            .await
        {
            Ok(_) => {}
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(self.db_error("disable login", &e)),
        }
        // The session list is materialized first: a plain WHERE would let the planner push
        // pg_terminate_backend below the user-name filter and end other users' sessions.
        let stuck: Vec<(i32,)> = sqlx::query_as(
            "WITH s AS MATERIALIZED (\
               SELECT pid FROM pg_stat_activity \
               WHERE usename = $1 AND pid <> pg_backend_pid()) \
             SELECT pid FROM s WHERE NOT pg_terminate_backend(pid, $2)",
        )
        .bind(role_name)
        .bind(TERMINATE_WAIT_MS)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error("terminate sessions", &e))?;
        if !stuck.is_empty() {
            return Err(self.error(format!(
                "{} session(s) of the role did not end in time",
                stuck.len()
            )));
        }

        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.db_error("connect", &e))?;
        // Objects the job created die with its role: handing them to the admin user would let a
        // job plant, say, a SECURITY DEFINER function that outlives it with more power.
        for (what, sql) in [
            (
                "drop owned objects and privileges",
                format!("DROP OWNED BY {ident}"),
            ),
            ("drop role", format!("DROP ROLE IF EXISTS {ident}")),
        ] {
            // Safe: validated generated name, quoted.
            match sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await {
                Ok(_) => {}
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(self.db_error(what, &e)),
            }
        }
        tx.commit()
            .await
            .map_err(|e| self.db_error("drop role", &e))?;
        Ok(())
    }

    /// Whether `role_name` exists (crash reconciliation).
    pub async fn role_exists(&self, role_name: &str) -> Result<bool, MintError> {
        let (exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role_name)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.db_error("look up role", &e))?;
        Ok(exists)
    }

    /// Roles whose names start with `prefix` (orphan reconciliation), sorted. An empty prefix
    /// is refused so a caller cannot list (and then drop) every role of the server.
    pub async fn roles_with_prefix(&self, prefix: &str) -> Result<Vec<String>, MintError> {
        if prefix.is_empty() {
            return Err(self.error("an empty role prefix would match every role"));
        }
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT rolname::text FROM pg_roles \
             WHERE left(rolname, length($1)) = $1 ORDER BY rolname",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error("list roles", &e))?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }
}

/// Whether `name` is an acceptable generated role name: `^[a-z_][a-z0-9_]{0,62}$`.
pub fn is_valid_role_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_IDENT_BYTES
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Why a role statement is refused before it reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum RoleInputError {
    /// A generated role name outside the safe alphabet.
    #[error("role name must match ^[a-z_][a-z0-9_]{{0,62}}$")]
    RoleName,
    /// A `member_of` name PostgreSQL cannot hold.
    #[error("member_of role names must be 1 to 63 bytes without NUL")]
    MemberOf,
    /// An expiry `VALID UNTIL` cannot express.
    #[error("expiry out of range")]
    Expiry,
}

fn check_role_name(name: &str) -> Result<(), RoleInputError> {
    if is_valid_role_name(name) {
        Ok(())
    } else {
        Err(RoleInputError::RoleName)
    }
}

fn check_any_ident(name: &str) -> Result<(), RoleInputError> {
    if name.is_empty() || name.len() > MAX_IDENT_BYTES || name.contains('\0') {
        Err(RoleInputError::MemberOf)
    } else {
        Ok(())
    }
}

/// Quotes an SQL identifier: wrapped in double quotes, inner double quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal: wrapped in single quotes, inner single quotes doubled. Used
/// with `standard_conforming_strings = on` (the default since PostgreSQL 9.1); a backslash
/// makes it switch to the `E''` form with backslashes doubled, which is correct either way.
pub fn quote_literal(text: &str) -> String {
    let body = text.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// `VALID UNTIL` literal text: `YYYY-MM-DD HH:MM:SS+00` (UTC).
fn pg_timestamp(unix: i64) -> Result<String, RoleInputError> {
    // Up to 9999-12-31T23:59:59Z, the range RFC 3339 text covers.
    if !(1..=253_402_300_799).contains(&unix) {
        return Err(RoleInputError::Expiry);
    }
    let text = crate::clock::rfc3339(unix);
    // `2026-11-22T10:15:00Z` → `2026-11-22 10:15:00+00`
    match text.strip_suffix('Z') {
        Some(t) if t.len() == 19 => Ok(format!("{}+00", t.replacen('T', " ", 1))),
        _ => Err(RoleInputError::Expiry),
    }
}

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, MintError> {
    let mut b = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(&mut b[..])
        .map_err(|_| MintError::Crypto("randomness unavailable".into()))?;
    Ok(b)
}

/// A fresh role name: `jp_` + 20 random lowercase base32 characters (100 bits).
pub fn new_role_name() -> Result<String, MintError> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bytes = random_bytes::<20>()?;
    let mut name = String::with_capacity(ROLE_PREFIX.len() + 20);
    name.push_str(ROLE_PREFIX);
    // 256 is a multiple of 32: taking 5 bits of each byte is uniform.
    name.extend(
        bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)])),
    );
    Ok(name)
}

/// A strong random password: 32 random bytes as unpadded base64url (43 characters, no quotes
/// or backslashes).
pub fn new_password() -> Result<SecretString, MintError> {
    let bytes = random_bytes::<32>()?;
    Ok(SecretString::from(B64URL.encode(&bytes[..])))
}

struct ScramKeys {
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

fn scram_keys(password: &str, salt: &[u8], iterations: u32) -> Result<ScramKeys, MintError> {
    let iterations = std::num::NonZeroU32::new(iterations)
        .ok_or_else(|| MintError::Crypto("SCRAM iteration count must be positive".into()))?;
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut salted[..],
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted[..]);
    let client_key = Zeroizing::new(hmac::sign(&key, b"Client Key").as_ref().to_vec());
    let mut stored_key = [0u8; 32];
    stored_key.copy_from_slice(digest::digest(&digest::SHA256, &client_key).as_ref());
    let mut server_key = [0u8; 32];
    server_key.copy_from_slice(hmac::sign(&key, b"Server Key").as_ref());
    Ok(ScramKeys {
        stored_key,
        server_key,
    })
}

/// Refuses passwords that PostgreSQL's SASLprep could change: printable ASCII only.
fn check_scram_password(password: &str) -> Result<(), MintError> {
    if password.is_empty() || !password.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(MintError::Crypto(
            "password must be non-empty printable ASCII".into(),
        ));
    }
    Ok(())
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677 in PostgreSQL's
/// format `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, standard base64),
/// with PBKDF2-HMAC-SHA256, 4096 iterations and a random 16-byte salt. The password must be
/// printable ASCII (SASLprep leaves it unchanged, so clients derive the same keys).
pub fn scram_verifier(password: &str) -> Result<String, MintError> {
    check_scram_password(password)?;
    let salt = random_bytes::<16>()?;
    let keys = scram_keys(password, &salt[..], SCRAM_ITERATIONS)?;
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(&salt[..]),
        B64.encode(keys.stored_key),
        B64.encode(keys.server_key)
    ))
}

/// The parts of a stored verifier.
struct ParsedVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn parse_verifier(verifier: &str) -> Option<ParsedVerifier> {
    let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ParsedVerifier {
        iterations: iterations.parse().ok()?,
        salt: B64.decode(salt).ok()?,
        stored_key: B64.decode(stored).ok()?,
        server_key: B64.decode(server).ok()?,
    })
}

/// Whether `password` matches a PostgreSQL SCRAM-SHA-256 `verifier` (constant-time compare of
/// both keys). Malformed verifiers, and iteration counts above 10⁶ (a cost bomb), do not match.
pub fn scram_check(password: &str, verifier: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(v) = parse_verifier(verifier) else {
        return false;
    };
    if v.iterations > 1_000_000 {
        return false;
    }
    let Ok(keys) = scram_keys(password, &v.salt, v.iterations) else {
        return false;
    };
    let ok =
        keys.stored_key[..].ct_eq(&v.stored_key[..]) & keys.server_key[..].ct_eq(&v.server_key[..]);
    bool::from(ok)
}

/// A PostgreSQL role created for an exchange in progress.
pub struct CreatedRole {
    /// The `[postgres.<name>]` target.
    pub target: String,
    /// The role's name (also its username).
    pub role_name: String,
    /// Its password.
    pub password: SecretString,
}

impl std::fmt::Debug for CreatedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedRole")
            .field("target", &self.target)
            .field("role_name", &self.role_name)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// Mints PostgreSQL login roles. Each role is recorded as an intent before `CREATE ROLE`, so
/// a crash between the two leaves something reconciliation finds; the lease takes the
/// intent over when it commits, and an exchange that does not commit drops its roles.
pub struct PostgresMinter {
    /// `[postgres.<name>]` targets.
    pub targets: std::sync::Arc<std::collections::BTreeMap<String, PgTarget>>,
    store: crate::store::Store,
}

impl PostgresMinter {
    /// A minter over the configured targets, recording intents in `store`.
    #[must_use]
    pub fn new(
        targets: std::sync::Arc<std::collections::BTreeMap<String, PgTarget>>,
        store: crate::store::Store,
    ) -> Self {
        Self { targets, store }
    }

    fn target(&self, name: &str) -> Result<&PgTarget, MintError> {
        self.targets.get(name).ok_or_else(|| MintError::Database {
            target: name.to_string(),
            reason: "not configured".into(),
        })
    }
}

impl super::Minter for PostgresMinter {
    async fn prepare(
        &self,
        grant: &crate::policy::Grant,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Prepared, MintError> {
        let crate::policy::GrantKind::Postgres {
            database,
            member_of,
        } = &grant.kind
        else {
            return Err(MintError::Crypto("not a postgres grant".into()));
        };
        let target = self.target(database)?;
        let created = CreatedRole {
            target: database.clone(),
            role_name: new_role_name()?,
            password: new_password()?,
        };
        let intent = crate::store::PgIntent {
            role_name: created.role_name.clone(),
            target: database.clone(),
            env: cx.env.to_string(),
            lease_id: cx.lease_id.to_string(),
        };
        self.store
            .insert_intent(&intent, cx.clock.unix())
            .await
            .map_err(|e| target.error(format!("could not record the role intent: {e}")))?;
        let prepared = super::Prepared::Postgres(created);
        if let super::Prepared::Postgres(c) = &prepared
            && let Err(e) = target
                .create_role(&c.role_name, &c.password, cx.expires_at, member_of)
                .await
        {
            self.teardown(&prepared).await;
            return Err(e);
        }
        Ok(prepared)
    }

    fn issue(
        &self,
        grant: &crate::policy::Grant,
        prepared: &super::Prepared,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Minted, MintError> {
        let super::Prepared::Postgres(created) = prepared else {
            return Err(MintError::Database {
                target: grant.name.clone(),
                reason: "role was not created".into(),
            });
        };
        let target = self.target(&created.target)?;
        let mut public = serde_json::Map::new();
        public.insert(
            "username".into(),
            serde_json::Value::String(created.role_name.clone()),
        );
        public.insert(
            "host".into(),
            serde_json::Value::String(target.host().to_string()),
        );
        public.insert("port".into(), serde_json::json!(target.port()));
        public.insert(
            "database".into(),
            serde_json::Value::String(target.database().to_string()),
        );
        let scope = serde_json::json!({"target": created.target}).to_string();
        let row = cx.row(cx.credential_id()?, grant, None, scope);
        Ok(super::Minted {
            credential: super::IssuedCredential {
                name: grant.name.clone(),
                kind: super::Kind::Postgres,
                value: created.password.clone(),
                public,
                expires_at: cx.expires_at,
            },
            row,
        })
    }

    /// Drops the role and forgets its intent (an intent whose drop failed stays, and
    /// reconciliation retries it).
    async fn teardown(&self, prepared: &super::Prepared) {
        let super::Prepared::Postgres(created) = prepared else {
            return;
        };
        let Ok(target) = self.target(&created.target) else {
            return;
        };
        match target.drop_role(&created.role_name).await {
            Ok(()) => {
                if let Err(e) = self.store.delete_intent(&created.role_name).await {
                    tracing::warn!(error = %e, "could not forget the intent of a dropped role; reconciliation will");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not drop the role of an aborted exchange; reconciliation will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Pure functions only: the tests that need a PostgreSQL server (creating, checking and
    //! dropping real roles) are in the integration suite, `tests/it/pg_roles.rs`, where the
    //! harness lists them as ignored when no server is found.

    use super::*;

    #[test]
    fn generated_names_and_passwords_have_the_promised_shape() {
        let a = new_role_name().unwrap();
        let b = new_role_name().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 23);
        assert!(a.starts_with("jp_") && is_valid_role_name(&a));
        let p = new_password().unwrap();
        assert_eq!(p.expose_secret().len(), 43);
        assert!(
            p.expose_secret()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(!format!("{p:?}").contains(p.expose_secret()));
    }

    #[test]
    fn role_names_outside_the_pattern_are_refused() {
        for bad in [
            "",
            "Jp_x",
            "1abc",
            "jp-x",
            "jp_x\"",
            "jp x",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_role_name(bad), "{bad:?}");
        }
        assert!(is_valid_role_name("_x") && is_valid_role_name(&"a".repeat(63)));
    }

    #[test]
    fn quoting_doubles_the_quote_characters() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_ident("x; DROP ROLE postgres"),
            "\"x; DROP ROLE postgres\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
    }

    #[test]
    fn valid_until_literal_is_utc_text() {
        assert_eq!(
            pg_timestamp(1_795_342_500).unwrap(),
            "2026-11-22 10:15:00+00"
        );
        assert!(pg_timestamp(0).is_err());
        assert!(pg_timestamp(253_402_300_800).is_err());
    }

    #[test]
    fn scram_verifier_has_postgres_format_and_checks_the_password() {
        let v = scram_verifier("correct horse").unwrap();
        assert!(has_postgres_verifier_shape(&v), "{v}");
        assert!(scram_check("correct horse", &v));
        assert!(!scram_check("correct horsf", &v));
        assert!(!scram_check("correct horse", "md5abc"));
        // Fresh salt each time.
        assert_ne!(v, scram_verifier("correct horse").unwrap());
        assert!(scram_verifier("").is_err());
        assert!(scram_verifier("pässword").is_err());
    }

    fn has_postgres_verifier_shape(v: &str) -> bool {
        let Some(rest) = v.strip_prefix("SCRAM-SHA-256$4096:") else {
            return false;
        };
        let Some((salt, keys)) = rest.split_once('$') else {
            return false;
        };
        let Some((stored, server)) = keys.split_once(':') else {
            return false;
        };
        B64.decode(salt).map(|s| s.len()) == Ok(16)
            && B64.decode(stored).map(|s| s.len()) == Ok(32)
            && B64.decode(server).map(|s| s.len()) == Ok(32)
    }

    #[test]
    fn target_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(PgTarget::new("main", "postgres://postgres@127.0.0.1:5432/postgres").is_err());
    }

    #[tokio::test]
    async fn target_exposes_public_facts_and_hides_the_admin_password() {
        let t = PgTarget::new("main", "postgres://admin:hunter2@db.internal:6543/app").unwrap();
        assert_eq!(
            (t.host(), t.port(), t.database()),
            ("db.internal", 6543, "app")
        );
        assert!(!format!("{t:?}").contains("hunter2"));
        let err = PgTarget::new("main", "mysql://admin:hunter2@x/y").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
