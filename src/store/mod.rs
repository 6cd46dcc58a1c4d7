//! Persistent state behind one interface (SPEC §5): data keys, signing keys, replay records,
//! leases and their credentials, static secrets and environment state.
//!
//! Guarantees:
//! - every write that must be atomic (an exchange: replay record, lease, credentials) runs in
//!   one `BEGIN IMMEDIATE` transaction on the single writer connection and is durable when
//!   `commit` returns (WAL with `synchronous=FULL`);
//! - single use of a source token is enforced by a primary key, not by a read-then-write;
//! - nothing here sees a plaintext secret: callers hand in sealed blobs and token digests.

mod sql;

use crate::mint::Kind;

pub use sql::{
    AuditAnchorRow, BatchChecks, BatchItem, KeyState, LeaderLock, NewLease, ReplaySlot, Store,
    WriteTx,
};

/// Store failures. Messages carry no SQL text with values and no secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Schema migration failed.
    #[error("store migration failed: {0}")]
    Migration(String),
    /// The store URL is not supported.
    #[error("unsupported store URL `{0}` (expected sqlite://PATH)")]
    Url(String),
    /// The transaction lost a race with another (PostgreSQL deadlock or serialization
    /// failure) and was rolled back: running it again is safe.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// A stored value could not be decoded (an unknown kind or revocation state, malformed
    /// JSON): the database holds something this broker did not write.
    #[error("store holds an undecodable value: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx errors name tables, columns and constraints, never bound values.
        let lost_race = matches!(&e, sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("40P01" | "40001")));
        match e {
            _ if lost_race => StoreError::Conflict(e.to_string()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(e.to_string())
            }
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Result alias of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One version of a data key row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DataKeyRow {
    /// Version number (1, 2, …).
    pub version: i64,
    /// Data key wrapped by the root key, or None once destroyed.
    pub wrapped: Option<Vec<u8>>,
}

/// An environment's signing key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// Data key version that sealed it.
    pub key_version: i64,
    /// Sealed PKCS#8 private key.
    pub sealed: Vec<u8>,
    /// Public JWK (JSON text).
    pub public_jwk: String,
}

/// A lease as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeaseRow {
    /// `lse_…`
    pub id: String,
    /// Environment.
    pub env: String,
    /// Role.
    pub role: String,
    /// Issuer of the source token.
    pub issuer: String,
    /// Subject of the source token.
    pub subject: String,
    /// Policy version that allowed it.
    pub policy_version: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// Data key version of `sealed`.
    pub key_version: i64,
    /// Sealed lease details.
    pub sealed: Vec<u8>,
    /// Revocation of external credentials (database roles); None when there is none.
    pub revocation: Option<ExternalRevocation>,
    /// Failed revocation attempts so far.
    pub revocation_attempts: i64,
}

/// State of the revocation of a lease's external credentials (database roles), stored in
/// `leases.revocation` as `pending`, `failed` or `done` (NULL: nothing to revoke, or not
/// yet due).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExternalRevocation {
    /// Due: the revocation worker will (re)try it.
    Pending,
    /// Failed too often; still retried, every 5 minutes.
    Failed,
    /// The roles are dropped.
    Done,
}

impl ExternalRevocation {
    /// The name stored and shown by the admin API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalRevocation::Pending => "pending",
            ExternalRevocation::Failed => "failed",
            ExternalRevocation::Done => "done",
        }
    }
}

impl std::fmt::Display for ExternalRevocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revocation state name that is none of [`ExternalRevocation`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation state `{0}`")]
pub struct UnknownRevocationState(pub String);

impl std::str::FromStr for ExternalRevocation {
    type Err = UnknownRevocationState;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        [
            ExternalRevocation::Pending,
            ExternalRevocation::Failed,
            ExternalRevocation::Done,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| UnknownRevocationState(s.to_string()))
    }
}

/// A credential as stored (never its value).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialRow {
    /// `crd_…` (also the `jti` of a minted JWT).
    pub id: String,
    /// Lease it belongs to.
    pub lease_id: String,
    /// Environment.
    pub env: String,
    /// Grant name.
    pub name: String,
    /// Grant kind.
    pub kind: Kind,
    /// Keyed digest of a broker token.
    pub token_hash: Option<Vec<u8>>,
    /// Secret path globs (JSON array) for token grants.
    pub scope: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// What a broker token may do, found by its digest.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// Credential id.
    pub credential_id: String,
    /// Grant name.
    pub name: String,
    /// Lease.
    pub lease_id: String,
    /// Environment.
    pub env: String,
    /// Role.
    pub role: String,
    /// Source subject.
    pub subject: String,
    /// Source issuer.
    pub issuer: String,
    /// Secret path globs.
    pub scope: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds, when the lease was revoked.
    pub revoked_at: Option<i64>,
}

/// A stored secret version.
#[derive(Debug, Clone)]
pub struct SecretRow {
    /// Version number.
    pub version: i64,
    /// Field names.
    pub fields: Vec<String>,
    /// Data key version of `sealed`.
    pub key_version: i64,
    /// Sealed JSON object of the fields.
    pub sealed: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Filter of `GET /v1/admin/leases`.
#[derive(Debug, Clone, Default)]
pub struct LeaseFilter {
    /// Environment.
    pub env: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Exact claim values (`claim.<name>=`).
    pub claims: Vec<(String, String)>,
    /// Only live leases (not revoked, not expired at `now`).
    pub active_at: Option<i64>,
    /// Page size.
    pub limit: i64,
    /// Lease id of the last row of the previous page.
    pub after: Option<String>,
}

/// Which leases a revocation hits (SPEC §4). Every present field must match (AND).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// One lease.
    pub lease_id: Option<String>,
    /// Environment.
    pub env: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Issuer of the source token.
    pub issuer: Option<String>,
    /// Subject of the source token.
    pub subject: Option<String>,
    /// Source claims: name → glob (`*` matches any run of characters).
    pub claims: Vec<(String, String)>,
    /// Policy version that allowed the lease.
    pub policy_version: Option<String>,
    /// Issued at or after (unix seconds).
    pub issued_after: Option<i64>,
    /// Issued at or before (unix seconds).
    pub issued_before: Option<i64>,
    /// Every live lease.
    pub all: bool,
}

impl Selector {
    /// True when nothing would restrict the revocation (refused unless `all`).
    pub fn is_empty(&self) -> bool {
        self.lease_id.is_none()
            && self.env.is_none()
            && self.role.is_none()
            && self.issuer.is_none()
            && self.subject.is_none()
            && self.claims.is_empty()
            && self.policy_version.is_none()
            && self.issued_after.is_none()
            && self.issued_before.is_none()
    }
}

/// A glob (`*` = any run) as a SQL `LIKE` pattern with `\` as the escape character.
pub fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A minted credential found by id (JWT introspection), with its lease's state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialState {
    /// The credential.
    #[sqlx(flatten)]
    pub credential: CredentialRow,
    /// Role of the lease.
    pub role: String,
    /// Subject of the lease's source token.
    pub subject: String,
    /// Issuer of the lease's source token.
    pub issuer: String,
    /// Unix seconds, when the credential was revoked on its own, else when its lease was.
    pub revoked_at: Option<i64>,
}

/// Tables holding sealed records (for rewrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedTable {
    /// Lease details.
    Leases,
    /// Secret versions.
    Secrets,
    /// Signing keys.
    SigningKeys,
}

impl SealedTable {
    /// Every sealed table.
    pub const ALL: [SealedTable; 3] = [
        SealedTable::Leases,
        SealedTable::Secrets,
        SealedTable::SigningKeys,
    ];

    /// The table name (also the associated-data label).
    pub fn name(self) -> &'static str {
        match self {
            SealedTable::Leases => "leases",
            SealedTable::Secrets => "secrets",
            SealedTable::SigningKeys => "signing_key",
        }
    }
}

/// A sealed record to re-encrypt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedRecord {
    /// Record identity used as associated data (also finds the row again).
    #[sqlx(rename = "rid")]
    pub id: String,
    /// Data key version of `sealed`.
    pub key_version: i64,
    /// Ciphertext.
    pub sealed: Vec<u8>,
}

/// A PostgreSQL role about to be created (recorded first, so a crash leaves no orphan).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PgIntent {
    /// Role name.
    pub role_name: String,
    /// `[postgres.<name>]` target.
    pub target: String,
    /// Environment.
    pub env: String,
    /// Lease that will hold it.
    pub lease_id: String,
}

/// Identity of a sealed record, bound as associated data.
pub fn aad(table: &str, env: &str, id: &str, key_version: i64) -> Vec<u8> {
    format!("jobpass/v1/{table}/{env}/{id}/{key_version}").into_bytes()
}
