//! Minting credentials: one minter per credential kind (token, jwt, postgres, x509), each in
//! its own file, behind one interface ([`Minter`]):
//!
//! - `prepare` does the slow or external work of a grant outside any store transaction:
//!   loading the environment's signing key or CA, creating a PostgreSQL role (recorded as an
//!   intent first, so a crash leaves no orphan);
//! - `issue` makes the credential value and its store row (pure CPU work: random tokens, JWT
//!   signatures, certificates), also outside any transaction;
//! - `teardown` undoes what `prepare` created when the exchange does not commit.
//!
//! Minted values are wrapped in [`secrecy::SecretString`] (zeroized on drop, `[REDACTED]` in
//! `Debug`); only the HTTP response exposes them. [`Minters`] dispatches a grant to the
//! minter of its kind.

pub mod jwt;
pub mod postgres;
pub mod token;
pub mod x509;

use std::future::Future;
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::crypto::random;
use crate::oidc::VerifiedToken;
use crate::policy::{Grant, GrantKind};
use crate::store::CredentialRow;

/// Minting failures.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Randomness or signing failed.
    #[error("could not mint a credential: {0}")]
    Crypto(String),
    /// A signing key could not be loaded or stored.
    #[error("signing key unavailable: {0}")]
    Key(String),
    /// A PostgreSQL target refused or failed an operation.
    #[error("database `{target}`: {reason}")]
    Database {
        /// The `[postgres.<name>]` target.
        target: String,
        /// What went wrong (never a password).
        reason: String,
    },
}

/// The kinds of credential a grant can mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opaque broker token (`jpt_…`) that reads secrets.
    Token,
    /// JWT signed by the environment's key.
    Jwt,
    /// A PostgreSQL login role.
    Postgres,
    /// A client certificate from the environment's CA.
    X509,
}

impl Kind {
    /// The kind of a policy grant.
    #[must_use]
    pub fn of(grant: &GrantKind) -> Kind {
        match grant {
            GrantKind::Token { .. } => Kind::Token,
            GrantKind::Jwt { .. } => Kind::Jwt,
            GrantKind::Postgres { .. } => Kind::Postgres,
            GrantKind::X509 { .. } => Kind::X509,
        }
    }

    /// The name used in policies, answers, the store and the audit log.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Jwt => "jwt",
            Kind::Postgres => "postgres",
            Kind::X509 => "x509",
        }
    }

    /// The JSON field of the answer holding the secret value (SPEC §2).
    #[must_use]
    pub fn secret_field(self) -> &'static str {
        match self {
            Kind::Postgres => "password",
            Kind::X509 => "private_key_pem",
            Kind::Token | Kind::Jwt => "token",
        }
    }
}

/// A credential kind name that is none of [`Kind`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown credential kind `{0}`")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    /// The kind named `s` (the inverse of [`Kind::name`]).
    fn from_str(s: &str) -> Result<Kind, UnknownKind> {
        [Kind::Token, Kind::Jwt, Kind::Postgres, Kind::X509]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// One minted credential, as answered to the job.
pub struct IssuedCredential {
    /// Grant name.
    pub name: String,
    /// Grant kind.
    pub kind: Kind,
    /// The secret value: broker token, JWT, database password or certificate private key.
    pub value: SecretString,
    /// Public parts (username, host, certificate, CA…).
    pub public: Map<String, Value>,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("value", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A credential minted for a lease: the value for the answer, the row for the store.
pub struct Minted {
    /// The credential answered to the job.
    pub credential: IssuedCredential,
    /// Its row (never its value).
    pub row: CredentialRow,
}

/// What every grant of one exchange is minted for.
pub struct MintContext<'a> {
    /// Environment.
    pub env: &'a str,
    /// Role.
    pub role: &'a str,
    /// Lease the credentials belong to.
    pub lease_id: &'a str,
    /// The verified source token.
    pub source: &'a VerifiedToken,
    /// Unix seconds.
    pub now: i64,
    /// Unix seconds; every credential of the lease expires then.
    pub expires_at: i64,
    /// `iss` of the environment's minted JWTs.
    pub jwt_issuer: &'a str,
    /// Time source (certificate validity).
    pub clock: &'a dyn Clock,
}

impl MintContext<'_> {
    /// A new credential id (`crd_…`, time-ordered; also the `jti` of a minted JWT).
    pub fn credential_id(&self) -> Result<String, MintError> {
        random::time_ordered_id("crd_", self.clock.unix_millis())
            .map_err(|e| MintError::Crypto(e.to_string()))
    }

    /// The store row of a credential of this lease.
    #[must_use]
    pub fn row(
        &self,
        id: String,
        grant: &Grant,
        token_hash: Option<Vec<u8>>,
        scope: String,
    ) -> CredentialRow {
        CredentialRow {
            id,
            lease_id: self.lease_id.to_string(),
            env: self.env.to_string(),
            name: grant.name.clone(),
            kind: Kind::of(&grant.kind),
            token_hash,
            scope,
            expires_at: self.expires_at,
        }
    }
}

/// What `prepare` readied for one grant.
pub enum Prepared {
    /// Nothing to ready (broker tokens).
    Nothing,
    /// The environment's JWT signing key.
    Jwt(Arc<jwt::JwtSigner>),
    /// The environment's CA.
    X509(Arc<x509::EnvCa>),
    /// A PostgreSQL role created for this exchange.
    Postgres(postgres::CreatedRole),
}

/// A minter of one credential kind.
pub trait Minter: Send + Sync {
    /// Readies `grant` outside any store transaction (keys, external resources). On error
    /// nothing of this grant is left behind.
    fn prepare(
        &self,
        grant: &Grant,
        cx: &MintContext<'_>,
    ) -> impl Future<Output = Result<Prepared, MintError>> + Send;

    /// Mints the credential of a prepared grant (CPU only, no I/O).
    fn issue(
        &self,
        grant: &Grant,
        prepared: &Prepared,
        cx: &MintContext<'_>,
    ) -> Result<Minted, MintError>;

    /// Undoes `prepare` for an exchange that did not commit.
    fn teardown(&self, prepared: &Prepared) -> impl Future<Output = ()> + Send;
}

/// The minters of every kind.
pub struct Minters {
    /// Broker tokens.
    pub token: token::TokenMinter,
    /// JWTs.
    pub jwt: jwt::JwtMinter,
    /// PostgreSQL roles.
    pub postgres: postgres::PostgresMinter,
    /// Client certificates.
    pub x509: x509::X509Minter,
}

impl Minters {
    /// Readies every grant of a role in order; on error, what was readied is torn down.
    pub async fn prepare(
        &self,
        grants: &[Grant],
        cx: &MintContext<'_>,
    ) -> Result<Vec<Prepared>, MintError> {
        let mut out = Vec::with_capacity(grants.len());
        for grant in grants {
            let step = match Kind::of(&grant.kind) {
                Kind::Token => self.token.prepare(grant, cx).await,
                Kind::Jwt => self.jwt.prepare(grant, cx).await,
                Kind::Postgres => self.postgres.prepare(grant, cx).await,
                Kind::X509 => self.x509.prepare(grant, cx).await,
            };
            match step {
                Ok(p) => out.push(p),
                Err(e) => {
                    self.teardown(&out).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Mints every prepared grant.
    pub fn issue(
        &self,
        grants: &[Grant],
        prepared: &[Prepared],
        cx: &MintContext<'_>,
    ) -> Result<Vec<Minted>, MintError> {
        grants
            .iter()
            .zip(prepared)
            .map(|(grant, p)| match Kind::of(&grant.kind) {
                Kind::Token => self.token.issue(grant, p, cx),
                Kind::Jwt => self.jwt.issue(grant, p, cx),
                Kind::Postgres => self.postgres.issue(grant, p, cx),
                Kind::X509 => self.x509.issue(grant, p, cx),
            })
            .collect()
    }

    /// Undoes every prepared grant (only PostgreSQL roles have anything to undo).
    pub async fn teardown(&self, prepared: &[Prepared]) {
        for p in prepared {
            match p {
                Prepared::Postgres(_) => self.postgres.teardown(p).await,
                Prepared::Nothing => self.token.teardown(p).await,
                Prepared::Jwt(_) => self.jwt.teardown(p).await,
                Prepared::X509(_) => self.x509.teardown(p).await,
            }
        }
    }
}
