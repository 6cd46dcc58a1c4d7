//! Revocation of external credentials (SPEC §3): a revoked or expired lease holding PostgreSQL
//! roles is marked `pending`; this worker terminates the roles' sessions and drops them,
//! retrying with backoff while the database is unreachable, and records `done` — or `failed`
//! after a bound, the role's own `VALID UNTIL` being the backstop. Every step is audited.
//! At start it also reconciles role-creation intents left by a crash: a role whose lease was
//! never committed is dropped.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::audit::{AuditEvent, Outcome};
use crate::store::{ExternalRevocation, LeaseRow};

/// Attempts before a revocation is shown as `failed` (it is still retried every 5 minutes:
/// a leaked password must not keep a session open because the database was down once).
pub const MAX_ATTEMPTS: i64 = 12;

/// Seconds between two reconciliations of role-creation intents.
const RECONCILE_EVERY_SECS: i64 = 30;

/// Longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds to wait before attempt `n + 1` (1, 2, 4, … capped at 5 minutes).
fn backoff(attempts: i64) -> i64 {
    1_i64
        .checked_shl(u32::try_from(attempts.clamp(0, 20)).unwrap_or(20))
        .unwrap_or(300)
        .min(300)
}

async fn audit(
    app: &App,
    lease: &LeaseRow,
    outcome: Outcome,
    event: &str,
    reason: Option<String>,
    attempts: i64,
) {
    let mut ev = AuditEvent::new(event, outcome);
    ev.environment = Some(lease.env.clone());
    ev.role = Some(lease.role.clone());
    ev.lease_id = Some(lease.id.clone());
    ev.reason = reason;
    ev.details.insert("attempts".into(), json!(attempts));
    if let Err(e) = app.audit.append(ev).await {
        tracing::error!(error = %e, "audit log write failed for a revocation step");
    }
}

/// Why one attempt to drop a lease's database roles failed (kept on the lease and audited;
/// never a secret: role names and target names only).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The lease's sealed details cannot be opened (its key destroyed, or corrupt).
    #[error("{0}")]
    Open(#[from] crate::crypto::CryptoError),
    /// The opened details are not the JSON a lease holds.
    #[error("{0}")]
    Details(#[from] serde_json::Error),
    /// The lease names a `[postgres.<name>]` target the configuration no longer has.
    #[error("postgres target `{0}` is no longer configured")]
    TargetGone(String),
    /// The database refused or failed.
    #[error("{0}")]
    Drop(#[from] crate::mint::MintError),
    /// The database did not answer in time.
    #[error("dropping a role on `{0}` timed out")]
    Timeout(String),
}

/// The PostgreSQL roles recorded in a lease's sealed details: (target, role).
async fn lease_roles(app: &App, lease: &LeaseRow) -> Result<Vec<(String, String)>, AttemptError> {
    let plain = app
        .keyring
        .open(
            &lease.env,
            "leases",
            &lease.id,
            lease.key_version,
            &lease.sealed,
        )
        .await?;
    let details: Value = serde_json::from_slice(&plain)?;
    Ok(details["postgres"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["target"].as_str()?.to_string(),
                p["role"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// One attempt for one lease.
async fn revoke_external(app: &App, lease: &LeaseRow) -> Result<(), AttemptError> {
    for (target, role) in lease_roles(app, lease).await? {
        let t = app
            .pg_targets
            .get(&target)
            .ok_or_else(|| AttemptError::TargetGone(target.clone()))?;
        match tokio::time::timeout(ATTEMPT_TIMEOUT, t.drop_role(&role)).await {
            Ok(r) => r?,
            Err(_) => return Err(AttemptError::Timeout(target)),
        }
    }
    Ok(())
}

/// Runs every due revocation once; returns how many were settled (done or failed).
pub async fn run_due(app: &App) -> usize {
    run_due_in(app, None).await
}

/// [`run_due`] for the leases of `env` only, when given (up to 100 per call).
pub async fn run_due_in(app: &App, env: Option<&str>) -> usize {
    let now = app.clock.unix();
    let due = match app.store.due_revocations(now, 100, env).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read pending revocations");
            return 0;
        }
    };
    let mut settled = 0;
    for lease in due {
        let attempts = lease.revocation_attempts + 1;
        let why = if lease.revoked_at.is_some() {
            "revoked"
        } else {
            "expired"
        };
        let result = revoke_external(app, &lease)
            .await
            .map_err(|e| e.to_string());
        // The backoff counts from the end of this attempt (it may have waited on a timeout).
        let ended = app.clock.unix();
        // Settled only once recorded: a lease whose outcome cannot be stored stays due.
        let (settles, stored) = match &result {
            Ok(()) => {
                audit(
                    app,
                    &lease,
                    Outcome::Success,
                    "revocation_done",
                    Some(format!("database roles dropped ({why})")),
                    attempts,
                )
                .await;
                (
                    true,
                    app.store
                        .set_revocation(&lease.id, ExternalRevocation::Done, attempts, None, None)
                        .await,
                )
            }
            Err(e) if attempts >= MAX_ATTEMPTS => {
                app.metrics.revocation_failed();
                audit(
                    app,
                    &lease,
                    Outcome::Failure,
                    "revocation_failed",
                    Some(format!(
                        "{attempts} attempts failed, retrying every 5 minutes: {e}"
                    )),
                    attempts,
                )
                .await;
                (
                    true,
                    app.store
                        .set_revocation(
                            &lease.id,
                            ExternalRevocation::Failed,
                            attempts,
                            Some(ended + 300),
                            Some(e),
                        )
                        .await,
                )
            }
            Err(e) => {
                app.metrics.revocation_failed();
                audit(
                    app,
                    &lease,
                    Outcome::Failure,
                    "revocation_retry",
                    Some(format!("attempt {attempts} failed: {e}")),
                    attempts,
                )
                .await;
                let stored = app
                    .store
                    .set_revocation(
                        &lease.id,
                        ExternalRevocation::Pending,
                        attempts,
                        Some(ended + backoff(attempts)),
                        Some(e),
                    )
                    .await;
                (false, stored)
            }
        };
        match stored {
            Ok(()) if settles => settled += 1,
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record a revocation attempt"),
        }
    }
    settled
}

/// Intents younger than this may belong to an exchange still in flight (requests time out
/// after 30 s), so reconciliation leaves them alone.
pub const INTENT_GRACE_SECS: i64 = 120;

/// Drops roles whose creation intent has no committed lease (a crash between `CREATE ROLE`
/// and the lease commit); clears intents whose lease exists. Returns roles dropped.
pub async fn reconcile_intents(app: &App) -> usize {
    let before = app.clock.unix() - INTENT_GRACE_SECS;
    let intents = match app.store.intents(before).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read role intents");
            return 0;
        }
    };
    let mut dropped = 0;
    for (intent, committed) in intents {
        // Claiming deletes the intent; an exchange committing now would have taken it in its
        // own transaction, so the two can never both act on one role.
        match app.store.claim_intent(&intent.role_name).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a role intent");
                continue;
            }
        }
        if committed {
            continue;
        }
        let Some(t) = app.pg_targets.get(&intent.target) else {
            continue;
        };
        if let Err(e) = t.drop_role(&intent.role_name).await {
            tracing::warn!(error = %e, "cannot drop an orphaned role yet; will retry");
            // Put the intent back (old enough to be retried at the next pass).
            if let Err(e) = app.store.insert_intent(&intent, before - 1).await {
                tracing::error!(error = %e, role = %intent.role_name, "cannot put the intent back; the role stays until an operator drops it");
            }
            continue;
        }
        dropped += 1;
        let mut ev = AuditEvent::new("orphan_role_dropped", Outcome::Success);
        ev.environment = Some(intent.env.clone());
        ev.lease_id = Some(intent.lease_id.clone());
        ev.reason =
            Some("a database role created for an exchange that never committed was dropped".into());
        ev.details
            .insert("target".into(), Value::String(intent.target.clone()));
        if let Err(e) = app.audit.append(ev).await {
            tracing::error!(error = %e, "audit log write failed");
        }
    }
    dropped
}

/// Pause before asking again after the store refused the background-work lock (an error, not
/// a polling cadence: a standby otherwise waits on the lock itself).
const LOCK_RETRY: Duration = Duration::from_secs(2);

/// Longest single wait of a standby on the background-work lock before it asks again.
const LEAD_WAIT: Duration = Duration::from_secs(30);

/// Works through pending revocations whenever woken (after a revocation) and every second,
/// and reconciles role intents at start and every half minute — on the replica that runs the
/// background work; a standby waits on the lock (no polling) and takes over when it is freed.
pub fn spawn(app: Arc<App>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Unix second of the last reconciliation (the broker's clock, like every cadence).
        let mut last_reconcile: Option<i64> = None;
        loop {
            match app.wait_lead(LEAD_WAIT).await {
                Ok(true) => {}
                // Still a standby: wait again (on a fresh connection).
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for the background-work lock; will retry");
                    tokio::time::sleep(LOCK_RETRY).await;
                    continue;
                }
            }
            if !app.pg_targets.is_empty()
                && last_reconcile.is_none_or(|t| app.clock.unix() - t >= RECONCILE_EVERY_SECS)
            {
                reconcile_intents(&app).await;
                last_reconcile = Some(app.clock.unix());
            }
            run_due(&app).await;
            tokio::select! {
                () = app.revocations.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}
