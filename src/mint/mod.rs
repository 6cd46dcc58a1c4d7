//! Minting credentials, one file per kind. Minted values are returned wrapped in
//! [`secrecy::SecretString`] (zeroized on drop, `[REDACTED]` in `Debug`); only the HTTP
//! response exposes them.

pub mod jwt;
pub mod token;

/// Minting failures.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Randomness or signing failed.
    #[error("could not mint a credential: {0}")]
    Crypto(String),
    /// A signing key could not be loaded or stored.
    #[error("signing key unavailable: {0}")]
    Key(String),
}
