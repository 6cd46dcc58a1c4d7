//! How an exchange can fail, one variant per cause, named for the stage that found it. The
//! HTTP answer of each is decided in one place ([`crate::error`]); the audit record of each
//! in one other ([`super::audit`]).

use crate::audit::AuditError;
use crate::crypto::CryptoError;
use crate::mint::MintError;
use crate::oidc::OidcError;
use crate::policy::Denial;
use crate::store::StoreError;

/// Why an exchange issued nothing.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// resolve: the environment or role asked for is not a name (never echoed).
    #[error("`{0}` must be {rule}", rule = crate::names::NAME_RULE)]
    InvalidName(&'static str),
    /// verify: the caller's source address or token subject is over its rate.
    #[error("{0}")]
    RateLimited(crate::limits::Limited),
    /// resolve: the environment does not exist.
    #[error("{}", crate::names::unknown_environment(.0))]
    UnknownEnvironment(String),
    /// resolve: no role asked for and the environment has no default role.
    #[error("no role given and the environment has no default role")]
    NoRole,
    /// resolve: the role does not exist in the environment.
    #[error("unknown role `{role}` in environment `{env}`")]
    UnknownRole {
        /// Environment.
        env: String,
        /// Role asked for.
        role: String,
    },
    /// verify: the source token is not valid (or its issuer could not be reached).
    #[error(transparent)]
    Token(#[from] OidcError),
    /// decide or commit: the source token was already exchanged.
    #[error("this token was already exchanged")]
    Replayed,
    /// decide or commit: the environment is frozen.
    #[error("environment `{0}` is frozen")]
    Frozen(String),
    /// decide: the role's conditions do not hold for the token's claims.
    #[error("{}", .0.public_message())]
    Denied(Denial),
    /// prepare: the environment's data key could not be loaded.
    #[error(transparent)]
    Keys(#[from] CryptoError),
    /// prepare or issue: a credential could not be minted.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// commit: the store failed; the batch was rolled back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// commit: the audit record could not be written; the batch was rolled back.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// commit: reconciliation claimed a PostgreSQL role of this exchange first.
    #[error("the exchange took too long and was abandoned; nothing was issued")]
    Abandoned,
    /// commit: the audit record was written but the store could not commit.
    #[error("the store could not commit the lease; nothing was issued")]
    NotCommitted(StoreError),
    /// The exchange's task or the ledger stopped.
    #[error("the exchange could not complete: {0}")]
    Internal(String),
}
