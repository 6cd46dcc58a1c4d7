//! Policy hot reload (SPEC §1): on a change in the policy directory (debounced) or SIGHUP the
//! whole set is loaded and validated again; a valid set replaces the old one atomically, an
//! invalid one is refused and the last good set stays. Both outcomes are audited. A new set's
//! lint warnings ([`super::lint`]) are logged and kept in its audit record; they never refuse
//! it. Every attempt logs its outcome — also "policies unchanged" with the version in force,
//! so an operator who sent SIGHUP sees it was read — and is counted in the
//! `jobpass_policy_reloads` metric.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::{App, load_policies};
use crate::audit::{AuditEvent, Outcome};

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// A new version is live.
    Changed(String),
    /// The files hash to the live version.
    Unchanged,
    /// Invalid; the last good set stays. The errors, one per line.
    Rejected(String),
}

/// Reloads the policy set now.
pub async fn reload(app: &App, trigger: &str) -> Reload {
    let config = app.config.clone();
    let loaded = match tokio::task::spawn_blocking(move || load_policies(&config)).await {
        Ok(loaded) => loaded.map_err(|errors| errors.to_string()),
        Err(e) => Err(format!("reload task failed: {e}")),
    };
    let old = app.policies.load().version().to_string();
    let mut warnings = Vec::new();
    let (outcome, result) = match loaded {
        Ok(set) => {
            let new = set.version().to_string();
            if new == old {
                tracing::info!(version = %old, trigger, "policies unchanged, version {old}");
                app.metrics.policy_reload("unchanged");
                return Reload::Unchanged;
            }
            warnings = super::lint::log_warnings(&set);
            app.policies.store(Arc::new(set));
            app.policy_version.send_replace(new.clone());
            tracing::info!(old = %old, new = %new, trigger, "policies reloaded, version {new}");
            app.metrics.policy_reload("changed");
            (Outcome::Success, Reload::Changed(new))
        }
        Err(errors) => {
            tracing::error!(trigger, errors = %errors, version = %old, "policy reload refused; keeping the last good policies, version {old}");
            app.metrics.policy_reload("refused");
            (Outcome::Failure, Reload::Rejected(errors))
        }
    };
    let mut ev = AuditEvent::new("policy_reload", outcome);
    ev.actor.kind = "broker".into();
    ev.details
        .insert("trigger".into(), Value::String(trigger.into()));
    ev.details
        .insert("previous_version".into(), Value::String(old));
    match &result {
        Reload::Changed(v) => {
            ev.policy_version = Some(v.clone());
            if !warnings.is_empty() {
                ev.details.insert("warnings".into(), json!(warnings));
            }
        }
        Reload::Rejected(e) => {
            ev.reason = Some("invalid policy set; the last good set stays live".into());
            ev.details
                .insert("errors".into(), json!(e.lines().collect::<Vec<_>>()));
        }
        Reload::Unchanged => {}
    }
    if let Err(e) = app.audit.append(ev).await {
        tracing::error!(error = %e, "audit log write failed for a policy reload");
    }
    result
}

/// Watches the policy directory and SIGHUP; runs until the process ends. The watcher is
/// registered when this returns: a change made afterwards is seen.
pub fn spawn(app: Arc<App>) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let fs_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
        {
            let _ = fs_tx.try_send("file change");
        }
    });
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&app.config.policies, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the policy directory; SIGHUP still reloads");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; SIGHUP still reloads");
            None
        }
    };
    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = hup_tx.send("SIGHUP").await;
                }
            });
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        drop(tx);
        while let Some(trigger) = rx.recv().await {
            // Debounce: editors and deploy tools write in several steps.
            tokio::time::sleep(Duration::from_millis(250)).await;
            while rx.try_recv().is_ok() {}
            reload(&app, trigger).await;
        }
    })
}
