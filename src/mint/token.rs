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

/// Mints broker tokens; the store keeps only their keyed digest and their secret-path globs.
pub struct TokenMinter {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMinter([REDACTED])")
    }
}

impl TokenMinter {
    /// A minter whose digests are keyed with `key` (the token-hash key of the root key).
    #[must_use]
    pub fn new(key: ring::hmac::Key) -> Self {
        Self { key }
    }
}

impl super::Minter for TokenMinter {
    async fn prepare(
        &self,
        _grant: &crate::policy::Grant,
        _cx: &super::MintContext<'_>,
    ) -> Result<super::Prepared, MintError> {
        Ok(super::Prepared::Nothing)
    }

    fn issue(
        &self,
        grant: &crate::policy::Grant,
        _prepared: &super::Prepared,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Minted, MintError> {
        let crate::policy::GrantKind::Token { secrets } = &grant.kind else {
            return Err(MintError::Crypto("not a token grant".into()));
        };
        let value = mint()?;
        let digest =
            crate::crypto::token_digest(&self.key, secrecy::ExposeSecret::expose_secret(&value));
        let scope = serde_json::to_string(secrets).unwrap_or_else(|_| "[]".into());
        let row = cx.row(cx.credential_id()?, grant, Some(digest), scope);
        Ok(super::Minted {
            credential: super::IssuedCredential {
                name: grant.name.clone(),
                kind: super::Kind::Token,
                value,
                public: serde_json::Map::new(),
                expires_at: cx.expires_at,
            },
            row,
        })
    }

    async fn teardown(&self, _prepared: &super::Prepared) {}
}
