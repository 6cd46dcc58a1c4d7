//! An environment's data keys as operators manage them: rotation, re-wrapping and
//! crypto-shredding (SPEC §5), each one audit record.
//!
//! Every operation here writes its own audit record, whatever its outcome: done (`success`),
//! refused before anything changed (`denied`: unknown environment, no reason, no confirmation)
//! or failed (`failure`), under the event name of the operation (`key_rotate`, `key_rewrap`,
//! `key_destroy`). When the audit log cannot take that record the caller gets the audit error.
//! Each operation records its intent (`key_rotate_begin`, `key_rewrap_begin`,
//! `key_destroy_begin`; shredding also its freeze) before it acts and fails closed when that
//! record cannot be written, then records its outcome.
//!
//! Guarantees of shredding (`App::shred`):
//! - it is refused unless the caller gives a reason and repeats the environment's name;
//! - the environment is frozen first (nothing new is minted meanwhile), then every lease of it
//!   is revoked;
//! - database roles are named only inside sealed lease records, so they are dropped while
//!   those records can still be opened; if any cannot be dropped (a database unreachable), the
//!   keys are kept and the call must be repeated — shredding never strands a live role;
//! - every lease of the environment holding database roles is revoked by then — also leases
//!   that expired and were not swept yet;
//! - nothing irreversible happens unless the revocation's audit record was written;
//! - only then are the key versions destroyed and the signing and CA caches of the
//!   environment dropped. Callers run it detached from the request (`App::shred_detached`)
//!   so a client timeout cannot cut it between destruction and its audit record.

pub mod cas;
pub mod signing;

use serde_json::json;

use crate::app::App;
use crate::audit::{AuditError, AuditEvent, Outcome};
use crate::crypto::CryptoError;
use crate::crypto::keyring::Rewrapped;
use crate::freeze::FreezeError;
use crate::leases::revoke::RevokeError;
use crate::reason::{NoReason, Reason};
use crate::store::{Selector, StoreError};

/// Why a key operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// No environment of that name in the policies.
    #[error("{}", crate::names::unknown_environment(.0))]
    UnknownEnvironment(String),
    /// Shredding without the environment's name repeated.
    #[error(
        "crypto-shredding is irreversible: repeat the environment name as \"confirm\": \"{0}\""
    )]
    NotConfirmed(String),
    /// Shredding without a reason.
    #[error(transparent)]
    NoReason(#[from] NoReason),
    /// Some database roles could not be dropped: the keys were kept.
    #[error(
        "the environment is frozen and its leases revoked, but the database roles of {0} lease(s) could not be dropped yet; the keys were NOT destroyed — retry when the databases are reachable"
    )]
    RolesRemain(i64),
    /// The revocation was done but its audit record could not be written: the keys were kept.
    #[error(
        "the leases were revoked but the audit log cannot be written; the keys were NOT destroyed"
    )]
    NotAudited,
    /// The freeze before shredding failed.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// The revocation before shredding failed.
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    /// Key material failed.
    #[error(transparent)]
    Keys(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The detached task ended abnormally.
    #[error("the shredding task failed: {0}")]
    Task(String),
}

/// What shredding did.
#[derive(Debug)]
pub struct Shredded {
    /// Key versions destroyed.
    pub versions: u64,
    /// Leases revoked by this call.
    pub revoked: usize,
}

impl KeysError {
    /// Refused before anything changed (as opposed to failed on the way).
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            KeysError::UnknownEnvironment(_) | KeysError::NotConfirmed(_) | KeysError::NoReason(_)
        )
    }

    /// The audit log itself failed: no other record can be written about it.
    fn is_audit_failure(&self) -> bool {
        matches!(
            self,
            KeysError::Audit(_) | KeysError::NotAudited | KeysError::Freeze(FreezeError::Audit(_))
        )
    }

    /// What the record of a failure says: the refusal or the operator's next step as answered,
    /// and for internal failures only which part failed (details go to the service log).
    fn recorded_reason(&self) -> String {
        match self {
            KeysError::Revoke(_) | KeysError::Freeze(_) | KeysError::Store(_) => {
                "failed: the store could not be written or read".into()
            }
            KeysError::Keys(_) => "failed: the environment's key material could not be used".into(),
            KeysError::Task(_) => "failed: the operation's task ended abnormally".into(),
            other => other.to_string(),
        }
    }
}

impl App {
    /// Makes a new data-key version current; `ev` is the action's audit record.
    pub async fn rotate_key(&self, env: &str, ev: AuditEvent) -> Result<i64, KeysError> {
        let record = ev.clone();
        let result = async {
            self.known_environment(env)?;
            self.intent(&ev, "key_rotate_begin").await?;
            let version = self.keyring.rotate(env).await?;
            let mut ev = ev;
            ev.event = "key_rotate".into();
            ev.details.insert("version".into(), json!(version));
            self.audit.append(ev).await?;
            Ok(version)
        }
        .await;
        self.on_record(record, "key_rotate", None, result).await
    }

    /// Re-seals every record of `env` under its current data key.
    pub async fn rewrap_keys(&self, env: &str, ev: AuditEvent) -> Result<Rewrapped, KeysError> {
        let record = ev.clone();
        let result = async {
            self.known_environment(env)?;
            self.intent(&ev, "key_rewrap_begin").await?;
            let done = self.keyring.rewrap(env).await?;
            let mut ev = ev;
            ev.event = "key_rewrap".into();
            ev.details.insert("version".into(), json!(done.version));
            ev.details.insert("records".into(), json!(done.records));
            self.audit.append(ev).await?;
            Ok(done)
        }
        .await;
        self.on_record(record, "key_rewrap", None, result).await
    }

    /// Crypto-shreds `env` (see the module's guarantees). `by` names the operator who froze it;
    /// `ev` is the action's audit record (its actor revokes the leases).
    pub async fn shred(
        &self,
        env: &str,
        confirm: Option<&str>,
        reason: Option<String>,
        by: &str,
        ev: AuditEvent,
    ) -> Result<Shredded, KeysError> {
        let record = ev.clone();
        let given = reason.clone();
        let result = async {
            self.known_environment(env)?;
            let reason = Reason::required(reason)?;
            if confirm != Some(env) {
                return Err(KeysError::NotConfirmed(env.to_string()));
            }
            self.shred_confirmed(env, reason.as_str(), by, ev).await
        }
        .await;
        self.on_record(record, "key_destroy", given, result).await
    }

    /// Records that `ev`'s operation is about to act (`event`), before it does: when the audit
    /// log cannot take it, nothing is done.
    async fn intent(&self, ev: &AuditEvent, event: &str) -> Result<(), KeysError> {
        let mut intent = ev.clone();
        intent.event = event.into();
        self.audit.append(intent).await?;
        Ok(())
    }

    /// A key operation's outcome as it leaves: a refusal or failure gets its own record (the
    /// operation's own record is written on success), and a record that cannot be written
    /// turns the answer into the audit error.
    async fn on_record<T>(
        &self,
        mut record: AuditEvent,
        event: &str,
        reason: Option<String>,
        result: Result<T, KeysError>,
    ) -> Result<T, KeysError> {
        let err = match result {
            Ok(done) => return Ok(done),
            Err(e) if e.is_audit_failure() => return Err(e),
            Err(e) => e,
        };
        record.event = event.into();
        record.outcome = if err.is_refusal() {
            Outcome::Denied
        } else {
            Outcome::Failure
        };
        if !err.is_refusal() {
            tracing::error!(error = %err, operation = event, "key operation failed");
        }
        record.reason = Some(err.recorded_reason());
        if let Some(given) = reason.filter(|r| !r.trim().is_empty()) {
            record
                .details
                .insert("requested_reason".into(), json!(given.trim()));
        }
        self.audit.append(record).await?;
        Err(err)
    }

    async fn shred_confirmed(
        &self,
        env: &str,
        reason: &str,
        by: &str,
        mut ev: AuditEvent,
    ) -> Result<Shredded, KeysError> {
        // The freeze is on record before it takes effect (like any freeze).
        self.set_frozen(env, true, Some(reason.to_string()), by, ev.clone())
            .await?;
        let sel = Selector {
            env: Some(env.to_string()),
            ..Selector::default()
        };
        let revoked = self.revoke(&sel, reason, ev.actor.clone()).await?;
        if !revoked.audited {
            // The audit log cannot take the revocation's record: it would not take the
            // destruction's either. Nothing irreversible happens without its record.
            return Err(KeysError::NotAudited);
        }
        // Every lease of the environment holding database roles is due now — also those that
        // expired and were not swept yet (their roles may still have open sessions).
        let now = self.clock.unix();
        self.store.mark_env_roles_due(env, now).await?;
        // Drop the roles now (the worker may be on some of them as well: a drop is
        // idempotent). Bounded: each pass settles up to 100; what fails stays pending with a
        // backoff, and what cannot be recorded stays due.
        let due = self.store.unsettled_revocations(env).await?;
        let passes = usize::try_from(due).unwrap_or(usize::MAX) / 100 + 2;
        for _ in 0..passes {
            if crate::leases::teardown::run_due_in(self, Some(env)).await == 0 {
                break;
            }
        }
        let unsettled = self.store.unsettled_revocations(env).await?;
        if unsettled > 0 {
            return Err(KeysError::RolesRemain(unsettled));
        }
        // The intent is on record before anything irreversible happens: if the record of the
        // outcome cannot be written afterwards, the log still says destruction began.
        ev.reason = Some(reason.to_string());
        self.intent(&ev, "key_destroy_begin").await?;
        let versions = self.keyring.destroy(env).await?;
        self.signers.invalidate(env);
        self.cas.invalidate(env);
        ev.event = "key_destroy".into();
        ev.details
            .insert("versions_destroyed".into(), json!(versions));
        ev.details
            .insert("leases_revoked".into(), json!(revoked.lease_ids.len()));
        self.audit.append(ev).await?;
        Ok(Shredded {
            versions,
            revoked: revoked.lease_ids.len(),
        })
    }

    /// [`App::shred`] in its own task: it completes even if the caller stops waiting.
    pub async fn shred_detached(
        self: &std::sync::Arc<Self>,
        env: String,
        confirm: Option<String>,
        reason: Option<String>,
        by: String,
        ev: AuditEvent,
    ) -> Result<Shredded, KeysError> {
        let app = self.clone();
        tokio::spawn(async move { app.shred(&env, confirm.as_deref(), reason, &by, ev).await })
            .await
            .map_err(|e| KeysError::Task(e.to_string()))?
    }

    fn known_environment(&self, env: &str) -> Result<(), KeysError> {
        if self.policies.load().environment(env).is_none() {
            return Err(KeysError::UnknownEnvironment(env.to_string()));
        }
        Ok(())
    }
}
