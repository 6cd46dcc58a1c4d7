//! Revocation (SPEC §4): one call revokes every live lease a selector matches, on every kind of
//! credential those leases hold. Bearer tokens and JWT introspection read the lease state on
//! every request (nothing revocable is cached), so a revocation takes effect at once. A single
//! JWT can also be revoked on its own ([`App::revoke_jwt`], RFC 7009 by its holder): its lease
//! and the lease's other credentials stay live.
//!
//! Guarantees:
//! - a selector that restricts nothing is refused unless it says `all`, and `all` is refused
//!   with any other key;
//! - an operator's revocation (`App::revoke_requested`) needs a non-empty reason; one refused
//!   as asked is on record (a denied `revoke` audit record) before it is answered;
//! - a revocation is committed before it is audited: an emergency revocation does not wait on
//!   a full disk, and says whether its record was written;
//! - "revoked N" is exact: the revocation ends, and counts, every live lease it matches whose
//!   exchange committed before the revocation commits, those in flight when it began
//!   included (it waits for them); an exchange that commits after it is a new lease it does
//!   not cover. On PostgreSQL this is the environments' advisory locks (see
//!   `store::sql::env_locks`): a selector with an environment pauses that environment's
//!   exchanges while the revocation runs, one without (by claim, role, subject, `all`…)
//!   every environment's, and one by the id of a committed lease none.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{Actor, AuditError, AuditEvent, MaskedCredential, Outcome};
use crate::reason::{NoReason, Reason};
use crate::store::{Selector, StoreError};

/// Why a revocation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The selector restricts nothing and `all` was not said.
    #[error("an empty selector is refused; use {{\"all\": true}} to revoke everything")]
    EmptySelector,
    /// `all` together with keys that restrict.
    #[error("`all` cannot be combined with other selector keys")]
    AllWithOthers,
    /// No reason was given, or only blanks.
    #[error(transparent)]
    NoReason(#[from] NoReason),
    /// A time of the selector is not RFC 3339 (the argument names its key).
    #[error("`{0}` must be an RFC 3339 time")]
    InvalidTime(&'static str),
    /// A claim name longer than any indexed claim name: it could never match.
    #[error(
        "claim names are at most {} bytes; longer claims are not kept searchable",
        crate::exchange::MAX_INDEXED_NAME
    )]
    ClaimNameTooLong,
    /// The store failed: nothing was revoked.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The refusal's audit record could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// A selector as an operator writes it (SPEC §4): times are RFC 3339 strings, claims map a
/// name to a glob.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a selector object")]
pub struct SelectorSpec {
    /// One lease.
    pub lease_id: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Issuer of the source token.
    pub issuer: Option<String>,
    /// Subject of the source token.
    pub subject: Option<String>,
    /// Source claims: name → glob.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Policy version that allowed the lease.
    pub policy_version: Option<String>,
    /// Issued at or after (RFC 3339).
    pub issued_after: Option<String>,
    /// Issued at or before (RFC 3339).
    pub issued_before: Option<String>,
    /// Every live lease.
    #[serde(default)]
    pub all: bool,
}

/// An RFC 3339 time of the selector key `field`, as unix seconds.
fn parse_time(field: &'static str, v: Option<String>) -> Result<Option<i64>, RevokeError> {
    v.map(|t| {
        humantime::parse_rfc3339_weak(&t)
            .map(crate::clock::unix_seconds)
            .map_err(|_| RevokeError::InvalidTime(field))
    })
    .transpose()
}

impl SelectorSpec {
    /// The selector, its times parsed. Whether it restricts anything is not checked here.
    pub fn parse(self) -> Result<Selector, RevokeError> {
        if self
            .claims
            .keys()
            .any(|name| name.len() > crate::exchange::MAX_INDEXED_NAME)
        {
            return Err(RevokeError::ClaimNameTooLong);
        }
        Ok(Selector {
            lease_id: self.lease_id,
            env: self.environment,
            role: self.role,
            issuer: self.issuer,
            subject: self.subject,
            claims: self.claims.into_iter().collect(),
            policy_version: self.policy_version,
            issued_after: parse_time("issued_after", self.issued_after)?,
            issued_before: parse_time("issued_before", self.issued_before)?,
            all: self.all,
        })
    }
}

/// Refuses a selector that restricts nothing without `all`, or `all` with other keys.
fn check_selector(sel: &Selector) -> Result<(), RevokeError> {
    if sel.is_empty() && !sel.all {
        Err(RevokeError::EmptySelector)
    } else if sel.all && !sel.is_empty() {
        Err(RevokeError::AllWithOthers)
    } else {
        Ok(())
    }
}

/// Most lease ids written into one audit record (the count is always exact).
const AUDITED_IDS: usize = 1000;

/// Result of a revocation.
#[derive(Debug)]
pub struct Revoked {
    /// Leases revoked by this call, newest first.
    pub lease_ids: Vec<String>,
    /// False when the revocation happened but its audit record could not be written.
    pub audited: bool,
}

/// The selector as the audit log shows it.
pub fn selector_json(sel: &Selector) -> Value {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    };
    put("lease_id", &sel.lease_id);
    put("environment", &sel.env);
    put("role", &sel.role);
    put("issuer", &sel.issuer);
    put("subject", &sel.subject);
    put("policy_version", &sel.policy_version);
    if let Some(t) = sel.issued_after {
        m.insert(
            "issued_after".into(),
            Value::String(crate::clock::rfc3339(t)),
        );
    }
    if let Some(t) = sel.issued_before {
        m.insert(
            "issued_before".into(),
            Value::String(crate::clock::rfc3339(t)),
        );
    }
    if !sel.claims.is_empty() {
        let c: serde_json::Map<String, Value> = sel
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        m.insert("claims".into(), Value::Object(c));
    }
    if sel.all {
        m.insert("all".into(), Value::Bool(true));
    }
    Value::Object(m)
}

impl App {
    /// An operator's revocation: `spec` parsed and checked, then [`App::revoke`] with `ev`'s
    /// actor. `ev` is the caller's audit record; it is written, denied, only when the
    /// selector or the reason is refused.
    pub async fn revoke_requested(
        &self,
        spec: SelectorSpec,
        reason: Option<String>,
        ev: AuditEvent,
    ) -> Result<Revoked, RevokeError> {
        let sel = match spec.parse() {
            Ok(sel) => sel,
            Err(e) => return Err(self.refuse_revoke(ev, None, e).await),
        };
        let checked = Reason::required(reason)
            .map_err(RevokeError::from)
            .and_then(|r| check_selector(&sel).map(|()| r));
        let reason = match checked {
            Ok(r) => r,
            Err(e) => return Err(self.refuse_revoke(ev, Some(&sel), e).await),
        };
        self.revoke(&sel, reason.as_str(), ev.actor).await
    }

    /// Records a refused revocation request (with its selector when it parsed) and returns
    /// the refusal, or the audit error when the record cannot be written.
    async fn refuse_revoke(
        &self,
        mut ev: AuditEvent,
        sel: Option<&Selector>,
        e: RevokeError,
    ) -> RevokeError {
        ev.outcome = Outcome::Denied;
        ev.event = "revoke".into();
        ev.reason = Some(e.to_string());
        if let Some(sel) = sel {
            ev.details.insert("selector".into(), selector_json(sel));
        }
        match self.audit.append(ev).await {
            Ok(_) => e,
            Err(a) => a.into(),
        }
    }

    /// Revokes every live lease `sel` matches. The revocation is committed first — an
    /// emergency revocation must not wait on a full disk — and then audited.
    pub async fn revoke(
        &self,
        sel: &Selector,
        reason: &str,
        actor: Actor,
    ) -> Result<Revoked, RevokeError> {
        check_selector(sel)?;
        let reason = Reason::required(Some(reason.to_owned()))?;
        let reason = reason.as_str();
        let now = self.clock.unix();
        let ids = self.store.revoke(sel, now, reason).await?;
        // External credentials (database roles) are dropped by the revocation worker.
        self.revocations.notify_one();
        let mut ev = AuditEvent::new("revoke", Outcome::Success);
        ev.actor = actor;
        ev.environment = sel.env.clone();
        ev.role = sel.role.clone();
        ev.reason = Some(reason.to_string());
        if ids.len() == 1 {
            ev.lease_id = ids.first().cloned();
        }
        ev.details.insert("selector".into(), selector_json(sel));
        ev.details.insert("revoked".into(), json!(ids.len()));
        ev.details.insert(
            "lease_ids".into(),
            json!(ids.iter().take(AUDITED_IDS).collect::<Vec<_>>()),
        );
        let audited = match self.audit.append(ev).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, revoked = ids.len(), "revocation done but its audit record could not be written");
                false
            }
        };
        tracing::info!(revoked = ids.len(), "leases revoked");
        Ok(Revoked {
            lease_ids: ids,
            audited,
        })
    }
}

/// One JWT to revoke on its own, as its audit record names it.
#[derive(Debug)]
pub struct RevokedJwt<'a> {
    /// Credential id (the JWT's `jti`).
    pub id: &'a str,
    /// Its lease.
    pub lease_id: &'a str,
    /// Environment.
    pub env: &'a str,
    /// Role of the lease.
    pub role: &'a str,
    /// The JWT, masked.
    pub masked: MaskedCredential,
}

impl App {
    /// Revokes one JWT, and nothing else: its lease and the lease's other credentials stay
    /// live. Committed first, then audited (`credential_revoke`), like [`App::revoke`]. True
    /// when this call revoked it; false (and no record) when it already was.
    pub async fn revoke_jwt(
        &self,
        jwt: RevokedJwt<'_>,
        reason: &str,
        actor: Actor,
    ) -> Result<bool, RevokeError> {
        let reason = Reason::required(Some(reason.to_owned()))?;
        if !self.store.revoke_jwt(jwt.id, self.clock.unix()).await? {
            return Ok(false);
        }
        let ev = AuditEvent::new("credential_revoke", Outcome::Success)
            .with_actor(actor)
            .with_environment(jwt.env)
            .with_role(jwt.role)
            .with_lease_id(jwt.lease_id)
            .with_reason(reason.as_str())
            .with_credential(jwt.masked)
            .with_detail("credential_id", json!(jwt.id));
        if let Err(e) = self.audit.append(ev).await {
            tracing::error!(error = %e, "a JWT was revoked but its audit record could not be written");
        }
        tracing::info!(lease_id = jwt.lease_id, "one JWT revoked on its own");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times_and_claims() {
        let spec = SelectorSpec {
            environment: Some("prod".into()),
            claims: BTreeMap::from([("run_id".to_string(), "12*".to_string())]),
            issued_after: Some("1970-01-01T00:01:40Z".into()),
            ..SelectorSpec::default()
        };
        let sel = spec.parse().expect("valid selector");
        assert_eq!(sel.env.as_deref(), Some("prod"));
        assert_eq!(sel.issued_after, Some(100));
        assert_eq!(sel.issued_before, None);
        assert_eq!(sel.claims, vec![("run_id".to_string(), "12*".to_string())]);
    }

    #[test]
    fn refuses_a_time_that_is_not_rfc_3339() {
        let spec = SelectorSpec {
            issued_before: Some("yesterday".into()),
            ..SelectorSpec::default()
        };
        let e = spec.parse().expect_err("refused");
        assert_eq!(e.to_string(), "`issued_before` must be an RFC 3339 time");
    }

    #[test]
    fn refuses_empty_selectors_and_all_with_others() {
        let empty = Selector::default();
        assert!(matches!(
            check_selector(&empty),
            Err(RevokeError::EmptySelector)
        ));
        let all = Selector {
            all: true,
            ..Selector::default()
        };
        assert!(check_selector(&all).is_ok());
        let mixed = Selector {
            env: Some("prod".into()),
            all: true,
            ..Selector::default()
        };
        assert_eq!(
            check_selector(&mixed).expect_err("refused").to_string(),
            "`all` cannot be combined with other selector keys"
        );
    }
}
