//! `kind = "token"`: opaque broker tokens `jpt_<43 base64url chars>` (256 random bits). Only
//! their keyed digest is stored.

use secrecy::SecretString;

use super::MintError;
use crate::crypto::random;

/// Prefix of every broker token.
pub const PREFIX: &str = "jpt_";

/// A new broker token.
pub fn mint() -> Result<SecretString, MintError> {
    random::bearer(PREFIX)
        .map(SecretString::from)
        .map_err(|e| MintError::Crypto(e.to_string()))
}
