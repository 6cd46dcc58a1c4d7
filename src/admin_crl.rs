//! Reloading the admin client CRL (`tls.crl`) on SIGHUP, the signal that also reloads the
//! policies (`policy::reload`).
//!
//! Guarantees:
//! - a CRL file that passes every check of [`crate::tls::AdminClientAuth`] replaces the CRLs in
//!   force atomically: every handshake after the reload uses it, and so does every admin call
//!   on a connection already open or resumed (the `Authorized` extractor checks the chain
//!   again with [`crate::tls::AdminClientAuth::still_valid`]);
//! - a file that cannot be read or fails a check changes nothing (the last good CRLs stay); it
//!   is logged with the reason, counted in `jobpass_admin_crl_reloads{outcome="failure"}`, and
//!   audited;
//! - both outcomes are one `admin_crl_reload` audit record (an audit failure is logged: the
//!   reload itself only ever tightens or keeps what the handshake accepts).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::audit::{AuditEvent, Outcome};
use crate::tls::CrlInfo;

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum CrlReload {
    /// The file's CRLs are in force.
    Loaded(CrlInfo),
    /// No `tls.crl` is configured: nothing to reload.
    NotConfigured,
    /// The file was refused (the reason); the last good CRLs stay.
    Rejected(String),
}

/// Reads the admin CRL file again now (what SIGHUP does).
pub async fn reload(app: &App, trigger: &str) -> CrlReload {
    let Some(auth) = app.admin_client_auth.clone() else {
        return CrlReload::NotConfigured;
    };
    let Some(path) = auth.crl_path().map(|p| p.display().to_string()) else {
        return CrlReload::NotConfigured;
    };
    let clock = app.clock.clone();
    let result = match tokio::task::spawn_blocking(move || auth.reload_crl(&*clock)).await {
        Ok(Ok(Some(info))) => CrlReload::Loaded(info),
        Ok(Ok(None)) => return CrlReload::NotConfigured,
        Ok(Err(e)) => CrlReload::Rejected(e.to_string()),
        Err(e) => CrlReload::Rejected(format!("reload task failed: {e}")),
    };
    let mut ev = match &result {
        CrlReload::Loaded(info) => {
            tracing::info!(
                trigger,
                path,
                crls = info.crls,
                revoked = info.revoked,
                "admin CRL reloaded"
            );
            app.metrics.admin_crl_reload("success");
            app.metrics.admin_crl_loaded(Some(*info));
            let mut ev = AuditEvent::new("admin_crl_reload", Outcome::Success);
            ev.details.insert("crls".into(), json!(info.crls));
            ev.details.insert("revoked".into(), json!(info.revoked));
            ev.details
                .insert("next_update".into(), json!(info.next_update));
            ev
        }
        CrlReload::Rejected(error) => {
            tracing::error!(trigger, error = %error, "admin CRL reload refused; keeping the last good CRL");
            app.metrics.admin_crl_reload("failure");
            let mut ev = AuditEvent::new("admin_crl_reload", Outcome::Failure);
            ev.reason = Some("invalid CRL file; the last good CRL stays in force".into());
            ev.details
                .insert("error".into(), Value::String(error.clone()));
            ev
        }
        CrlReload::NotConfigured => return CrlReload::NotConfigured,
    };
    ev.actor.kind = "broker".into();
    ev.details
        .insert("trigger".into(), Value::String(trigger.into()));
    ev.details.insert("path".into(), Value::String(path));
    if let Err(e) = app.audit.append(ev).await {
        tracing::error!(error = %e, "audit log write failed for an admin CRL reload");
    }
    result
}

/// Reloads the admin CRL on every SIGHUP until the process ends; None (nothing to watch)
/// without `tls.crl`. The signal handler is installed when this returns.
pub fn spawn(app: Arc<App>) -> Option<JoinHandle<()>> {
    app.admin_client_auth.as_ref()?.crl_path()?;
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the admin CRL will not be reloaded");
                return None;
            }
        };
        Some(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload(&app, "SIGHUP").await;
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = app;
        None
    }
}
