//! Minting credentials, one file per kind. Minted values are returned wrapped in
//! [`secrecy::SecretString`] (zeroized on drop, `[REDACTED]` in `Debug`); only the HTTP
//! response exposes them.

pub mod cas;
pub mod jwt;
pub mod keystore;
pub mod postgres;
pub mod token;
pub mod x509;

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
