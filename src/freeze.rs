//! Freezing an environment (SPEC §4): a frozen environment mints nothing until it is unfrozen;
//! what was already issued stays valid unless it is revoked.
//!
//! Guarantees:
//! - a freeze or unfreeze names an environment of the policies and gives a non-empty reason,
//!   or it is refused and changes nothing;
//! - every call is one audit record (`freeze` / `unfreeze`), refused ones as `denied`;
//! - the record is written before the store changes: a freeze is a security decision that is
//!   on record whenever it takes effect, and when the audit log cannot take it nothing changes;
//!   when the store then fails, a second record says so (best effort);
//! - no lease of the environment commits after the freeze did: exchanges in flight when it
//!   was asked commit before it (the freeze waits for them), later ones are refused (on
//!   PostgreSQL through the environment's advisory lock, see `store::sql::env_locks`).

use serde_json::json;

use crate::app::App;
use crate::audit::{AuditError, AuditEvent, Outcome};
use crate::reason::{NoReason, Reason};
use crate::store::StoreError;

/// Why a freeze or unfreeze was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// No environment of that name in the policies.
    #[error("{}", crate::names::unknown_environment(.0))]
    UnknownEnvironment(String),
    /// No reason was given, or only blanks.
    #[error(transparent)]
    NoReason(#[from] NoReason),
    /// The store failed: the environment's state did not change.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written: nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// An environment's state after a freeze or unfreeze.
#[derive(Debug)]
pub struct FreezeState {
    /// Whether it is frozen now.
    pub frozen: bool,
    /// The reason recorded.
    pub reason: Reason,
}

impl App {
    /// Freezes (`frozen`) or unfreezes `env`. `by` names the operator; `ev` is the call's
    /// audit record, completed here and written before the store changes.
    pub async fn set_frozen(
        &self,
        env: &str,
        frozen: bool,
        reason: Option<String>,
        by: &str,
        mut ev: AuditEvent,
    ) -> Result<FreezeState, FreezeError> {
        ev.event = if frozen { "freeze" } else { "unfreeze" }.into();
        let checked = if self.policies.load().environment(env).is_none() {
            Err(FreezeError::UnknownEnvironment(env.to_string()))
        } else {
            Reason::required(reason).map_err(FreezeError::from)
        };
        let reason = match checked {
            Ok(r) => r,
            Err(e) => {
                ev.outcome = Outcome::Denied;
                ev.reason = Some(e.to_string());
                self.audit.append(ev).await?;
                return Err(e);
            }
        };
        ev.reason = Some(reason.to_string());
        ev.details.insert("frozen".into(), json!(frozen));
        let mut failed = ev.clone();
        self.audit.append(ev).await?;
        if let Err(e) = self
            .store
            .set_frozen(env, frozen, reason.as_str(), by, self.clock.unix())
            .await
        {
            // The log already says it was done: say that it was not (best effort; the caller
            // gets the store's failure either way).
            tracing::error!(error = %e, "freeze recorded but the store could not take it");
            failed.outcome = Outcome::Failure;
            failed.reason = Some("failed: the store could not be written".into());
            if let Err(a) = self.audit.append(failed).await {
                tracing::error!(error = %a, "the failed freeze could not be recorded");
            }
            return Err(e.into());
        }
        Ok(FreezeState { frozen, reason })
    }
}
