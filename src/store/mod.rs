//! Persistent state behind one interface (SPEC §5): data keys, signing keys, replay records,
//! leases and their credentials, static secrets and environment state.
//!
//! Guarantees:
//! - every write that must be atomic (an exchange: replay record, lease, credentials) runs in
//!   one `BEGIN IMMEDIATE` transaction on the single writer connection and is durable when
//!   `commit` returns (WAL with `synchronous=FULL`);
//! - single use of a source token is enforced by a primary key, not by a read-then-write;
//! - nothing here sees a plaintext secret: callers hand in sealed blobs and token digests.

mod sqlite;

pub use sqlite::{Store, WriteTx};

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
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx errors name tables and constraints, never bound values.
        StoreError::Unavailable(e.to_string())
    }
}

/// Result alias of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One version of a data key row.
#[derive(Debug, Clone)]
pub struct DataKeyRow {
    /// Version number (1, 2, …).
    pub version: i64,
    /// Data key wrapped by the root key, or None once destroyed.
    pub wrapped: Option<Vec<u8>>,
}

/// An environment's signing key.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
}

/// A credential as stored (never its value).
#[derive(Debug, Clone)]
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
    pub kind: String,
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

/// Identity of a sealed record, bound as associated data.
pub fn aad(table: &str, env: &str, id: &str, key_version: i64) -> Vec<u8> {
    format!("jobpass/v1/{table}/{env}/{id}/{key_version}").into_bytes()
}
