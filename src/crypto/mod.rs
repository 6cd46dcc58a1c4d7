//! Key material and encryption at rest (SPEC §5).
//!
//! Guarantees:
//! - the root key never encrypts data itself: it only wraps per-environment data keys and
//!   derives the audit and token-hash keys (HKDF-SHA256 with distinct labels);
//! - every stored secret value, credential record, signing key and CA key is sealed with
//!   AES-256-GCM under its environment's current data-key version, with the record's identity
//!   as associated data, so a ciphertext moved to another row or environment does not open;
//! - broker tokens are stored only as HMAC-SHA256 digests under the token-hash key;
//! - key bytes zeroize on drop and never print.

pub mod aead;
pub mod keyring;
pub mod random;
pub mod rootkey;

pub use keyring::Keyring;
pub use rootkey::RootKey;

/// Errors of the crypto layer. Messages never contain key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The root key file or variable is missing, unreadable or malformed.
    #[error("root key: {0}")]
    RootKey(String),
    /// A ciphertext did not authenticate (wrong key, wrong record, or tampering).
    #[error(
        "a stored record of environment `{env}` could not be decrypted (wrong key or tampered)"
    )]
    Open {
        /// Environment of the record.
        env: String,
    },
    /// The environment's keys were destroyed: its records can never be decrypted again.
    #[error("the keys of environment `{0}` were destroyed; its records cannot be decrypted")]
    Destroyed(String),
    /// Data-key version unknown.
    #[error("environment `{env}` has no data key version {version}")]
    UnknownVersion {
        /// Environment.
        env: String,
        /// Version asked for.
        version: i64,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Store failure while reading or writing keys.
    #[error("key store: {0}")]
    Store(String),
}

/// HMAC-SHA256 digest of a broker token under the token-hash key: the only form in which
/// broker tokens are stored.
pub fn token_digest(key: &ring::hmac::Key, token: &str) -> Vec<u8> {
    ring::hmac::sign(key, token.as_bytes()).as_ref().to_vec()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
