//! Revocation (SPEC §4): one call revokes every live lease a selector matches, on every kind of
//! credential those leases hold. Bearer tokens and JWT introspection read the lease state on
//! every request (nothing revocable is cached), so a revocation takes effect at once.

use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::{Selector, StoreError};

/// Why a revocation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The selector restricts nothing and `all` was not said.
    #[error("an empty selector is refused; use {{\"all\": true}} to revoke everything")]
    EmptySelector,
    /// No reason was given.
    #[error("a reason is required")]
    NoReason,
    /// The store failed: nothing was revoked.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Revokes every live lease `sel` matches. The revocation is committed first — an
    /// emergency revocation must not wait on a full disk — and then audited.
    pub async fn revoke(
        &self,
        sel: &Selector,
        reason: &str,
        actor: Actor,
    ) -> Result<Revoked, RevokeError> {
        if sel.is_empty() && !sel.all {
            return Err(RevokeError::EmptySelector);
        }
        if reason.trim().is_empty() {
            return Err(RevokeError::NoReason);
        }
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
