//! Credentials presented back to the broker. A broker token resolves to its grant (lease,
//! role, environment, path globs) only while that grant is live. A credential presented to the
//! OAuth endpoints — a broker token or a JWT minted here — resolves to its lease for RFC 7662
//! introspection and RFC 7009 revocation.
//!
//! What RFC 7009 revocation ends depends on what was presented (least privilege: a holder ends
//! what it holds, no more):
//! - a **JWT** ends only itself. A job hands its JWTs to downstream services; any of them may
//!   revoke the JWT it received, but must not be able to end the job: the lease, its broker
//!   token, database roles and certificates stay live. The JWT's id is then listed at
//!   `/v1/envs/<env>/revoked` and introspects as inactive;
//! - a **broker token** (`jpt_…`) ends its whole lease, as `POST /v1/revoke/self` does. It is
//!   the job's own handle on the broker, sent to nobody else, and its holder is the job: ending
//!   the lease is how a job says it is done;
//! - database roles and certificates cannot be presented (the form's `token` is a broker token
//!   or a JWT), so a service they were handed to cannot end anything with them.
//!
//! Guarantees:
//! - a token is looked up by its keyed digest (`crypto::token_digest`), never by its value;
//! - a revoked or expired grant is refused like an unknown token (401), with a message that
//!   says which and never quotes the token;
//! - a JWT is believed only once its signature verifies under its environment's signing key,
//!   and its own and its lease's state are read from the store on every call (nothing
//!   revocable is cached);
//! - a presented credential that is unknown, unverifiable, revoked or expired is introspected
//!   as `{"active": false}` alone, and its revocation is a no-op: neither says which;
//! - a JWT revoked on its own is on record (`credential_revoke`, the JWT masked, the actor the
//!   lease's subject) once, however many times or replicas it is presented to.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{Actor, MaskedCredential};
use crate::crypto::token_digest;
use crate::leases::revoke::RevokeError;
use crate::mint::MintError;
use crate::store::{Selector, StoreError, TokenGrant};

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

/// Why a presented credential could not be resolved or revoked: server-side failures only (a
/// credential that is not one of ours, or not live, is an answer, not an error).
#[derive(Debug, thiserror::Error)]
pub enum PresentedError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The environment's signing key could not be loaded.
    #[error(transparent)]
    Signing(#[from] MintError),
    /// The revocation of the credential's lease failed.
    #[error(transparent)]
    Revoke(#[from] RevokeError),
}

/// A credential presented to the OAuth endpoints, resolved to its lease.
#[derive(Debug)]
struct Presented {
    /// What it is.
    kind: PresentedKind,
    /// Its lease.
    lease_id: String,
    /// Neither revoked nor expired.
    active: bool,
    /// Its RFC 7662 introspection answer.
    body: Value,
}

/// The kinds of credential the OAuth endpoints accept.
#[derive(Debug)]
enum PresentedKind {
    /// A broker token: the job's own handle, whose revocation ends the lease.
    BrokerToken,
    /// A JWT minted here, whose revocation ends only itself.
    Jwt(JwtRef),
}

/// What the audit record of a JWT revoked on its own names.
#[derive(Debug)]
struct JwtRef {
    /// Credential id (the JWT's `jti`).
    id: String,
    /// Grant name.
    name: String,
    /// Environment.
    env: String,
    /// Role of the lease.
    role: String,
    /// Subject of the lease's source token.
    subject: String,
    /// Issuer of the lease's source token.
    issuer: String,
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

impl App {
    /// Resolves a broker token or a JWT minted here; None when it is neither.
    async fn resolve_credential(&self, token: &str) -> Result<Option<Presented>, PresentedError> {
        let now = self.clock.unix();
        if token.starts_with(crate::mint::token::PREFIX) {
            let digest = token_digest(&self.token_key, token);
            let Some(g) = self.store.token_grant(&digest).await? else {
                return Ok(None);
            };
            let active = g.revoked_at.is_none() && g.expires_at > now;
            return Ok(Some(Presented {
                kind: PresentedKind::BrokerToken,
                lease_id: g.lease_id.clone(),
                active,
                body: json!({"active": active, "token_type": "Bearer", "exp": g.expires_at,
                    "sub": g.subject, "scope": g.role, "jti": g.credential_id, "env": g.env,
                    "role": g.role, "lease_id": g.lease_id}),
            }));
        }
        let Some(env) = crate::mint::jwt::unverified_claims(token)
            .and_then(|c| c["env"].as_str().map(str::to_string))
        else {
            return Ok(None);
        };
        if self.policies.load().environment(&env).is_none() {
            return Ok(None);
        }
        let signer = self.signers.for_env(&env).await?;
        let Some(claims) = signer.verify(token) else {
            return Ok(None);
        };
        let Some(jti) = claims["jti"].as_str() else {
            return Ok(None);
        };
        let Some(state) = self.store.credential_state(jti).await? else {
            return Ok(None);
        };
        if state.credential.kind != crate::mint::Kind::Jwt || state.credential.env != env {
            return Ok(None);
        }
        let active = state.revoked_at.is_none() && state.credential.expires_at > now;
        let scope = claims["scope"]
            .as_str()
            .map_or_else(|| state.role.clone(), str::to_string);
        Ok(Some(Presented {
            lease_id: state.credential.lease_id.clone(),
            active,
            body: json!({"active": active, "token_type": "JWT", "exp": state.credential.expires_at,
                "sub": state.subject, "scope": scope, "jti": jti, "aud": claims["aud"],
                "iss": claims["iss"], "env": env, "role": state.role,
                "lease_id": state.credential.lease_id}),
            kind: PresentedKind::Jwt(JwtRef {
                id: state.credential.id,
                name: state.credential.name,
                env,
                role: state.role,
                subject: state.subject,
                issuer: state.issuer,
            }),
        }))
    }

    /// The RFC 7662 introspection answer for a presented credential: its claims while it is
    /// live, `{"active": false}` otherwise.
    pub async fn introspect(&self, token: &SecretString) -> Result<Value, PresentedError> {
        let answer = match self.resolve_credential(token.expose_secret()).await? {
            Some(p) if p.active => p.body,
            _ => json!({"active": false}),
        };
        Ok(answer)
    }

    /// RFC 7009 revocation: possession of a live credential is the authority to revoke it —
    /// a JWT alone, a broker token with its whole lease (see the module documentation).
    /// Anything else is left alone, without saying so.
    pub async fn revoke_presented(&self, token: &SecretString) -> Result<(), PresentedError> {
        let Some(p) = self.resolve_credential(token.expose_secret()).await? else {
            return Ok(());
        };
        if !p.active {
            return Ok(());
        }
        match p.kind {
            PresentedKind::BrokerToken => {
                let actor = Actor {
                    kind: "token".into(),
                    subject: p.body["sub"].as_str().map(str::to_string),
                    ..Actor::default()
                };
                let sel = Selector {
                    lease_id: Some(p.lease_id),
                    ..Selector::default()
                };
                self.revoke(&sel, "revoked by its holder (RFC 7009)", actor)
                    .await?;
            }
            PresentedKind::Jwt(jwt) => {
                let masked = MaskedCredential::new(
                    &self.audit_key,
                    &jwt.name,
                    crate::mint::Kind::Jwt.name(),
                    token.expose_secret(),
                );
                self.revoke_jwt(
                    crate::leases::revoke::RevokedJwt {
                        id: &jwt.id,
                        lease_id: &p.lease_id,
                        env: &jwt.env,
                        role: &jwt.role,
                        masked,
                    },
                    "revoked by its holder (RFC 7009)",
                    Actor::token(Some(&jwt.subject), Some(&jwt.issuer)),
                )
                .await?;
            }
        }
        Ok(())
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
