//! `jobpass serve`: builds the broker from a configuration file (or dev mode), serves the
//! native API (and the Vault-compatible one when configured), starts the background workers,
//! and stops cleanly on SIGINT or SIGTERM.
#![allow(
    clippy::print_stdout,
    reason = "dev mode prints its banner on standard output"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::{App, DevIssuer};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;

use super::error::CliError;

/// What to serve.
#[derive(Debug, Clone)]
pub enum ServeMode {
    /// The configuration of this file (or only `JOBPASS_*` variables without one).
    Config(Option<PathBuf>),
    /// Development mode: dev root key, self-signed certificates, built-in dev issuer.
    Dev(DevOptions),
}

/// Where dev mode keeps its files and listens.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Data directory (root key, certificates, dev issuer key, store, audit log).
    pub data_dir: PathBuf,
    /// Policy directory.
    pub policies: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
}

/// Runs the broker until a shutdown signal; exchanges already queued are committed (or
/// refused) before it returns.
///
/// # Errors
/// Anything that stops the broker from starting: configuration, TLS material, root key,
/// store, policies, listeners.
pub async fn serve(mode: ServeMode) -> Result<(), CliError> {
    let clock: SharedClock = Arc::new(SystemClock);
    let (config, dev) = match &mode {
        ServeMode::Dev(d) => {
            let prepared = crate::dev::prepare(&d.data_dir, &d.policies, d.listen, clock.as_ref())?;
            (
                prepared.config,
                Some((d.data_dir.as_path(), prepared.issuer)),
            )
        }
        ServeMode::Config(file) => (Config::load(file.as_deref())?, None),
    };
    if !config.ignored_env_vars.is_empty() {
        // Names only: such a variable may hold a credential `exchange --format env` exported.
        tracing::warn!(
            names = ?config.ignored_env_vars,
            "JOBPASS_* variables that are not configuration keys were ignored"
        );
    }
    let tls_files = if config.insecure_http {
        // Tokens and secrets cross this connection: plain HTTP only where nothing else can
        // listen in (a loopback address, e.g. behind a TLS-terminating sidecar).
        // Both listeners: the Vault-compatible one carries the same tokens and secrets.
        for addr in std::iter::once(config.listen).chain(config.vault_compat_listen) {
            if !addr.ip().is_loopback() {
                return Err(CliError::InsecureListen(addr));
            }
        }
        tracing::warn!("serving plain HTTP on loopback (insecure_http = true)");
        None
    } else {
        let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
            return Err(CliError::NoServerCertificate);
        };
        Some((cert.clone(), key.clone()))
    };
    let listen = config.listen;
    let app = App::build(
        config,
        clock,
        dev.as_ref().map(|(_, issuer)| issuer.clone()),
    )
    .await?;
    // The admin client verifier is the broker's: a CRL reload reaches every listener.
    let tls = match tls_files {
        Some((cert, key)) => Some(crate::tls::server_config(
            &cert,
            &key,
            app.admin_client_auth(),
        )?),
        None => None,
    };
    // Valid but risky policies: logged, never refused (`policy check --strict` refuses them).
    crate::policy::lint::log_warnings(&app.policies.load());
    let running = crate::http::server::serve(app.clone(), listen, tls.clone()).await?;
    let vault = match app.config.vault_compat_listen {
        Some(addr) => Some(
            crate::http::server::serve_router(
                crate::http::vault::router(app.clone()),
                addr,
                tls.clone(),
                app.limits(),
            )
            .await?,
        ),
        None => None,
    };
    crate::policy::reload::spawn(app.clone());
    crate::admin_crl::spawn(app.clone());
    crate::leases::sweeper::spawn(app.clone());
    crate::leases::teardown::spawn(app.clone());
    crate::limits::upkeep::spawn(app.clone());
    tracing::info!(addr = %running.addr, "jobpass listening");
    if let Some((data_dir, issuer)) = &dev {
        print_dev_banner(data_dir, &app.public_url, issuer);
    }
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    running.wait().await;
    if let Some(v) = vault {
        v.shutdown().await;
    }
    // The refusals counted since the last interval are on record before the process ends.
    drop(app.flush_refusals().await);
    // Exchanges already queued are committed (or refused) before the process ends.
    app.ledger.stop().await;
    Ok(())
}

fn print_dev_banner(data_dir: &Path, url: &str, dev: &DevIssuer) {
    let d = data_dir.display();
    // The directory of this very binary, so the commands work however it was started
    // (`cargo run` puts nothing on PATH).
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "target/debug".to_owned());
    println!(
        "\njobpass dev server on {url} (DEV MODE: dev root key and a built-in issuer {iss} that every environment trusts)\n\
         \nIn a second terminal, in this directory (README, Five-minute walk-through, steps 1 and 3):\n\
         \n  export PATH=\"{bin}:$PATH\"\
         \n  export JOBPASS_SERVER={url} JOBPASS_CA={d}/certs/ca.pem\
         \n  TOKEN=$(jobpass dev token --env dev)\
         \n  eval \"$(jobpass exchange --env dev --token \"$TOKEN\" --format env)\"\
         \n  echo \"lease $JOBPASS_LEASE_ID\"\n\
         \nAdmin client certificates: {d}/certs/{{admin,security,auditor}}.pem (with -key.pem)\n",
        iss = dev.url
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
