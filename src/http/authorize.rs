//! Who may call what on the admin API (SPEC §4), in one table, and the extractor that enforces
//! it in each handler's signature: `async fn revoke(call: Authorized<Revoke>, …)`; and the
//! job-side counterparts: [`BearerToken`] (a broker token was presented) and [`LiveGrant`] (it
//! is the token of a live lease).
//!
//! Guarantees:
//! - a handler that takes [`Authorized<C>`] runs only for a caller whose TLS client
//!   certificate (from the admin CA) carries one of `C::ROLES`;
//! - the check runs before the path, query or body of the request is read, so a caller
//!   without the role learns nothing from how its input would have been parsed;
//! - a caller with an admin identity whose role may not make the call is refused with one audit
//!   record (`admin_call`, `denied`, with the call's name and, when the route names a valid
//!   environment, that environment); when that record cannot be written the caller gets 503
//!   instead of 403;
//! - a caller without an admin identity, or over its certificate's admin rate
//!   (`[limits] admin_per_subject`), is counted into the aggregate `refusals` records (one per
//!   source, call and answer per interval): anyone can send such requests, so they never
//!   cost a line each;
//! - an authorized call carries its audit record ([`Authorized::ev`], actor filled in) for the
//!   domain function to complete and write.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::ConnInfo;
use crate::app::App;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::error::ApiError;
use crate::store::TokenGrant;
use crate::tls::{AdminIdentity, AdminRole};

/// One admin call: its name in audit records and the roles that may make it.
pub trait AdminCall {
    /// The call's name (`details.call` of its audit records).
    const NAME: &'static str;
    /// The certificate roles allowed to make it.
    const ROLES: &'static [AdminRole];
}

macro_rules! admin_calls {
    ($($(#[$doc:meta])* $ty:ident = $name:literal: [$($role:ident),+];)*) => {
        $(
            $(#[$doc])*
            pub struct $ty;
            impl AdminCall for $ty {
                const NAME: &'static str = $name;
                const ROLES: &'static [AdminRole] = &[$(AdminRole::$role),+];
            }
        )*
    };
}

admin_calls! {
    /// `PUT /secrets/{env}/{path}`: store a new secret version.
    SecretsPut = "secrets.put": [Admin];
    /// `GET /secrets/{env}/{path}`: a secret's metadata, never its values.
    SecretsGet = "secrets.get": [Admin, Auditor];
    /// `GET /secrets/{env}`: secret paths.
    SecretsList = "secrets.list": [Admin, Auditor];
    /// `DELETE /secrets/{env}/{path}`: every version of a secret.
    SecretsDelete = "secrets.delete": [Admin];
    /// `GET /leases`: leases, values masked.
    LeasesList = "leases.list": [Admin, Security, Auditor];
    /// `POST /revoke`: revoke by selector.
    Revoke = "revoke": [Security];
    /// `POST /environments/{env}/freeze`.
    Freeze = "freeze": [Security];
    /// `POST /environments/{env}/unfreeze`.
    Unfreeze = "unfreeze": [Security];
    /// `POST /keys/{env}/rotate`.
    KeysRotate = "keys.rotate": [Admin];
    /// `POST /keys/{env}/rewrap`.
    KeysRewrap = "keys.rewrap": [Admin];
    /// `POST /keys/{env}/destroy`: crypto-shredding.
    KeysDestroy = "keys.destroy": [Admin];
}

/// A call of kind `C` by a caller allowed to make it.
pub struct Authorized<C> {
    /// The caller, from its client certificate.
    pub id: AdminIdentity,
    /// The call's audit record, for the domain function to complete and write.
    pub ev: AuditEvent,
    call: PhantomData<C>,
}

impl<C: AdminCall> FromRequestParts<Arc<App>> for Authorized<C> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let conn = parts.extensions.get::<ConnInfo>().cloned();
        // The environment of the route, for the record (a refusal included). Read as text
        // only: nothing else of the request is looked at before the role check.
        let source = conn.as_ref().map(|c| c.peer.ip());
        let id = match conn.as_ref().and_then(|c| c.admin.clone()) {
            Some(id) => id,
            None => {
                // No identity proved: counted into the aggregate refusal records.
                let with_cert = conn.as_ref().is_some_and(|c| c.client_cert);
                let err = ApiError::AccessDenied(if with_cert {
                    "the client certificate carries no admin role (OU=admin|security|auditor)"
                        .into()
                } else {
                    "an admin client certificate is required".into()
                });
                app.note_refusal(source, C::NAME, &err);
                return Err(err);
            }
        };
        if let Err(limited) = app
            .limits
            .rates
            .check_subject(crate::limits::Class::Admin, &id.common_name)
        {
            let err = ApiError::RateLimited(limited);
            app.note_refusal(source, C::NAME, &err);
            return Err(err);
        }
        // The chain is checked again on every call: a resumed TLS session skips the verifier,
        // and a connection outlives a CRL reload or the certificate's expiry.
        if let Some(auth) = app.admin_client_auth.as_ref() {
            let chain = conn.as_ref().and_then(|c| c.client_chain.clone());
            if !chain.is_some_and(|c| auth.still_valid(&c, app.clock.unix())) {
                let mut ev = AuditEvent::new("admin_call", Outcome::Denied);
                ev.actor = actor(&id);
                ev.details
                    .insert("call".into(), Value::String(C::NAME.into()));
                let err = ApiError::AccessDenied(
                    "the client certificate is revoked or expired; connect with a valid one".into(),
                );
                return Err(refused(app, ev, err).await);
            }
        }
        // The environment of the route, for the record (a refusal included). Read as text
        // only, and only if it is a name: nothing else of the request is looked at before
        // the role check.
        let env = RawPathParams::from_request_parts(parts, app)
            .await
            .ok()
            .and_then(|p| {
                p.iter()
                    .find(|(name, _)| *name == "env")
                    .map(|(_, v)| v.to_string())
            })
            .filter(|env| crate::names::is_name(env));
        let mut ev = AuditEvent::new("admin_call", Outcome::Denied);
        ev.environment = env;
        ev.details
            .insert("call".into(), Value::String(C::NAME.into()));
        ev.actor = actor(&id);
        if !C::ROLES.contains(&id.role) {
            let err = ApiError::AccessDenied(format!(
                "role `{}` may not call {}",
                role_name(id.role),
                C::NAME
            ));
            return Err(refused(app, ev, err).await);
        }
        ev.outcome = Outcome::Success;
        Ok(Authorized {
            id,
            ev,
            call: PhantomData,
        })
    }
}

impl<C> Authorized<C> {
    /// Refuses the authorized call for its input (a body or path that does not parse), on
    /// the caller's record like every other refusal of a caller with an identity.
    pub async fn refuse(&self, app: &App, err: ApiError) -> ApiError {
        let mut ev = self.ev.clone();
        ev.outcome = Outcome::Denied;
        refused(app, ev, err).await
    }
}

/// Records a refused call; the refusal, or the audit log's failure.
async fn refused(app: &App, mut ev: AuditEvent, err: ApiError) -> ApiError {
    ev.reason = Some(err.to_string());
    match app.audit.append(ev).await {
        Ok(_) => err,
        Err(e) => e.into(),
    }
}

fn actor(id: &AdminIdentity) -> Actor {
    Actor {
        kind: "admin".into(),
        subject: Some(id.common_name.clone()),
        issuer: None,
        role: Some(role_name(id.role).into()),
        claims: Map::new(),
    }
}

fn role_name(r: AdminRole) -> &'static str {
    match r {
        AdminRole::Admin => "admin",
        AdminRole::Security => "security",
        AdminRole::Auditor => "auditor",
    }
}

/// The broker token a job presents (`Authorization: Bearer …`); redacted in `Debug`.
#[derive(Debug)]
pub struct BearerToken(pub SecretString);

/// The token of a request's `Authorization` header, if it is a non-empty bearer token.
pub fn bearer(headers: &HeaderMap) -> Option<SecretString> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then(|| SecretString::from(token.to_string()))
}

impl BearerToken {
    fn from_parts(parts: &Parts) -> Option<BearerToken> {
        bearer(&parts.headers).map(BearerToken)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        BearerToken::from_parts(parts).ok_or_else(|| {
            ApiError::InvalidToken("a broker token is required (Authorization: Bearer)".into())
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for BearerToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> Result<Option<Self>, std::convert::Infallible> {
        Ok(BearerToken::from_parts(parts))
    }
}

/// The grant of the live broker token the caller presented: the caller is a job whose lease
/// is neither revoked nor expired.
pub struct LiveGrant(pub TokenGrant);

impl FromRequestParts<Arc<App>> for LiveGrant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let BearerToken(token) =
            <BearerToken as FromRequestParts<Arc<App>>>::from_request_parts(parts, app).await?;
        Ok(LiveGrant(app.live_token_grant(&token).await?))
    }
}
