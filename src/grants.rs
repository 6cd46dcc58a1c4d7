//! Broker tokens presented back to the broker: a token resolves to its grant (lease, role,
//! environment, path globs) only while that grant is live.
//!
//! Guarantees:
//! - a token is looked up by its keyed digest (`crypto::token_digest`), never by its value;
//! - a revoked or expired grant is refused like an unknown token (401), with a message that
//!   says which and never quotes the token.

use secrecy::{ExposeSecret, SecretString};

use crate::app::App;
use crate::audit::Actor;
use crate::crypto::token_digest;
use crate::store::{StoreError, TokenGrant};

/// Why a presented broker token does not stand.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// No token where one was expected (the argument names where).
    #[error("a broker token is required ({0})")]
    Missing(String),
    /// No grant has this token's digest.
    #[error("unknown broker token")]
    Unknown,
    /// The grant's lease was revoked.
    #[error("this credential was revoked")]
    Revoked,
    /// The grant expired.
    #[error("this credential has expired")]
    Expired,
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl App {
    /// The live grant of a broker token.
    pub async fn live_token_grant(&self, token: &SecretString) -> Result<TokenGrant, GrantError> {
        let digest = token_digest(&self.token_key, token.expose_secret());
        let grant = self.store.token_grant(&digest).await?;
        Ok(self.check_live(grant.map(|g| (g, ())))?.0)
    }

    /// A token's grant (found with what came along with it), if it is live.
    pub fn check_live<T>(
        &self,
        found: Option<(TokenGrant, T)>,
    ) -> Result<(TokenGrant, T), GrantError> {
        let (grant, with) = found.ok_or(GrantError::Unknown)?;
        if grant.revoked_at.is_some() {
            return Err(GrantError::Revoked);
        }
        if grant.expires_at <= self.clock.unix() {
            return Err(GrantError::Expired);
        }
        Ok((grant, with))
    }
}

/// The audit actor of a broker token's grant.
pub fn grant_actor(g: &TokenGrant) -> Actor {
    Actor {
        kind: "token".into(),
        subject: Some(g.subject.clone()),
        issuer: Some(g.issuer.clone()),
        role: None,
        claims: serde_json::Map::new(),
    }
}
