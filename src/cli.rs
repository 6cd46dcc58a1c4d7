//! The `jobpass` command line: the server, offline tools (policy, audit, keys, certs, dev
//! tokens) and clients of the HTTP and admin APIs.
#![allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::app::{self, App};
use crate::audit;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::crypto::RootKey;
use crate::policy::{AnyCapabilities, Denial, PolicySet};

/// jobpass: exchange a CI job's OIDC token for scoped, short-lived credentials.
#[derive(Parser, Debug)]
#[command(name = "jobpass", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// The variants' docs are the `--help` text, shown verbatim: their URLs stay bare.
#[allow(rustdoc::bare_urls)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker.
    ///
    /// Examples:
    ///   jobpass serve --dev
    ///   jobpass serve --config /etc/jobpass/jobpass.toml
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Exchange this job's OIDC token for credentials.
    ///
    /// Examples:
    ///   # GitHub Actions (permissions: id-token: write): values masked, written to $GITHUB_ENV
    ///   jobpass exchange --server https://jobpass.example.com --env prod --role deploy-web
    ///   # GitLab CI (id_tokens: JOBPASS_ID_TOKEN: aud: https://jobpass.example.com)
    ///   eval "$(jobpass exchange --server … --env prod --role deploy --token-env JOBPASS_ID_TOKEN --format env)"
    ///   # run a command with the credentials, revoke the lease when it ends
    ///   jobpass exchange --server … --env prod --role deploy-web --revoke-at-exit -- ./deploy.sh
    #[command(verbatim_doc_comment)]
    Exchange(ExchangeArgs),
    /// Offline policy tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Root key tools.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Certificate tools.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Development helpers (only meaningful with `serve --dev`).
    #[command(subcommand)]
    Dev(DevCmd),
    /// Manage static secrets (admin API).
    Secrets(SecretsArgs),
    /// List leases (admin API).
    Leases(LeasesArgs),
    /// Revoke every live lease matching a selector (security role).
    ///
    /// Examples:
    ///   jobpass revoke --claim repository=acme/web --reason INC-42
    ///   jobpass revoke --env prod --role deploy-web --issued-after 2026-11-22T09:00:00Z --reason INC-42
    ///   jobpass revoke --all --reason "root key compromise drill"
    #[command(verbatim_doc_comment)]
    Revoke(RevokeArgs),
    /// Freeze an environment: it mints nothing until unfrozen (security role).
    Freeze(FreezeArgs),
    /// Unfreeze an environment (security role).
    Unfreeze(FreezeArgs),
    /// Print shell completions.
    ///
    /// Example: jobpass completions bash > /etc/bash_completion.d/jobpass
    #[command(verbatim_doc_comment)]
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Check a running broker: GET /healthz; exit 0 when healthy (container health checks).
    Health {
        /// Broker URL.
        #[arg(long, env = "JOBPASS_SERVER", default_value = "https://127.0.0.1:8443")]
        server: String,
        /// CA certificate (PEM) to trust for the broker.
        #[arg(long, env = "JOBPASS_CA")]
        ca: Option<PathBuf>,
    },
}

/// `revoke`
#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: AdminConn,
    /// One lease.
    #[arg(long)]
    pub lease_id: Option<String>,
    /// Environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Role.
    #[arg(long)]
    pub role: Option<String>,
    /// Issuer of the source token.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Subject of the source token.
    #[arg(long)]
    pub subject: Option<String>,
    /// Source claim NAME=GLOB (repeatable; `*` matches any run of characters).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// Policy version that allowed the leases.
    #[arg(long)]
    pub policy_version: Option<String>,
    /// Issued at or after (RFC 3339).
    #[arg(long)]
    pub issued_after: Option<String>,
    /// Issued at or before (RFC 3339).
    #[arg(long)]
    pub issued_before: Option<String>,
    /// Every live lease.
    #[arg(long)]
    pub all: bool,
    /// Why (ticket, incident); required.
    #[arg(long)]
    pub reason: String,
}

/// `freeze` / `unfreeze`
#[derive(Args, Debug)]
pub struct FreezeArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: AdminConn,
    /// Environment.
    pub env: String,
    /// Why; required.
    #[arg(long)]
    pub reason: String,
}

/// `serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML); `JOBPASS_*` variables override it.
    #[arg(long, env = "JOBPASS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Development mode: dev root key, self-signed certificates, built-in dev issuer.
    #[arg(long)]
    pub dev: bool,
    /// Data directory of dev mode.
    #[arg(long, default_value = ".jobpass-dev")]
    pub data_dir: PathBuf,
    /// Policy directory of dev mode.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// Listen address of dev mode.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
}

/// Output formats of `exchange`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// The JSON answer.
    Json,
    /// `export NAME=value` lines for a shell.
    Env,
    /// GitHub Actions: masked values appended to $GITHUB_ENV and $GITHUB_OUTPUT.
    Github,
}

/// `exchange`
#[derive(Args, Debug)]
pub struct ExchangeArgs {
    /// Broker URL.
    #[arg(long, env = "JOBPASS_SERVER")]
    pub server: String,
    /// Environment.
    #[arg(long)]
    pub env: String,
    /// Role (default: the environment's default role).
    #[arg(long)]
    pub role: Option<String>,
    /// The OIDC token (prefer --token-file or --token-env: arguments are visible to other processes).
    #[arg(long, conflicts_with_all = ["token_file", "token_env"])]
    pub token: Option<String>,
    /// File holding the OIDC token.
    #[arg(long, conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Variable holding the OIDC token (GitLab CI: the name under `id_tokens:`).
    #[arg(long)]
    pub token_env: Option<String>,
    /// Audience to ask GitHub Actions for (default: the environment's, asked of the broker).
    #[arg(long)]
    pub audience: Option<String>,
    /// CA certificate (PEM) to trust for the broker.
    #[arg(long, env = "JOBPASS_CA")]
    pub ca: Option<PathBuf>,
    /// Output: json, env (`export` lines) or github ($GITHUB_ENV/$GITHUB_OUTPUT, values
    /// masked). Default: github on GitHub Actions, else json.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Revoke the lease when COMMAND ends (whatever its exit status).
    #[arg(long, requires = "command")]
    pub revoke_at_exit: bool,
    /// Command to run with the credentials in its environment (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy directory; exit 1 with file:line: reason lines when invalid.
    Check {
        /// Directory of `<env>.toml` files.
        dir: PathBuf,
        /// Also check issuers and grant kinds against this server configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Say whether claims would be allowed, and which condition failed.
    ///
    /// Example: jobpass policy test policies --env prod --role deploy-web --claims claims.json
    Test {
        /// Directory of `<env>.toml` files.
        dir: PathBuf,
        /// Environment.
        #[arg(long)]
        env: String,
        /// Role (default: the environment's default role).
        #[arg(long)]
        role: Option<String>,
        /// JSON file of token claims.
        #[arg(long)]
        claims: PathBuf,
    },
}

/// `audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the HMAC chain of one or more audit files.
    Verify {
        /// Server configuration (for the root key).
        #[arg(long)]
        config: PathBuf,
        /// Audit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List records whose credential fingerprints match a leaked value.
    Find {
        /// Server configuration (for the root key).
        #[arg(long)]
        config: PathBuf,
        /// The value to look for.
        #[arg(long)]
        value: String,
        /// Audit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `keys …`
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a new root key file (mode 0600).
    Generate {
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// New data-key version for an environment (admin API).
    Rotate {
        /// Connection.
        #[command(flatten)]
        conn: AdminConn,
        /// Environment.
        env: String,
    },
    /// Re-encrypt an environment's older records under its current key version (admin API).
    Rewrap {
        /// Connection.
        #[command(flatten)]
        conn: AdminConn,
        /// Environment.
        env: String,
    },
    /// Crypto-shred an environment: destroy every key version (admin API). Irreversible.
    Destroy {
        /// Connection.
        #[command(flatten)]
        conn: AdminConn,
        /// Environment.
        env: String,
        /// Why; required.
        #[arg(long)]
        reason: String,
        /// Repeat the environment name to confirm.
        #[arg(long)]
        confirm: String,
    },
}

/// `certs …`
#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a dev CA, a server certificate and one client certificate per admin role.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Extra subject alternative names of the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// `dev …`
#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Print a token from the dev issuer of a `serve --dev` server.
    #[command(verbatim_doc_comment)]
    ///
    /// Example: jobpass dev token --env dev --claims '{"repository":"acme/web"}'
    Token {
        /// Environment (its audience is used).
        #[arg(long)]
        env: String,
        /// Claims (JSON object) merged over GitHub-shaped defaults.
        #[arg(long, default_value = "{}")]
        claims: String,
        /// Data directory of the dev server.
        #[arg(long, default_value = ".jobpass-dev")]
        data_dir: PathBuf,
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Lifetime of the token.
        #[arg(long, default_value = "5m")]
        ttl: humantime::Duration,
    },
}

/// Connection options of admin API clients.
#[derive(Args, Debug)]
pub struct AdminConn {
    /// Broker URL.
    #[arg(
        long,
        env = "JOBPASS_SERVER",
        global = true,
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Client certificate (PEM).
    #[arg(long, env = "JOBPASS_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "JOBPASS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the broker.
    #[arg(long, env = "JOBPASS_CA", global = true)]
    pub ca: Option<PathBuf>,
}

/// `secrets …`
#[derive(Args, Debug)]
pub struct SecretsArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: AdminConn,
    /// Operation.
    #[command(subcommand)]
    pub op: SecretsOp,
}

/// Secret operations.
#[derive(Subcommand, Debug)]
pub enum SecretsOp {
    /// Store a new version. Fields as FIELD=VALUE, or a JSON object with --data-file (`-` = stdin).
    Put {
        /// Environment.
        env: String,
        /// Secret path, e.g. deploy/web/api.
        path: String,
        /// FIELD=VALUE pairs.
        fields: Vec<String>,
        /// JSON object of string fields (`-` reads standard input).
        #[arg(long)]
        data_file: Option<PathBuf>,
    },
    /// Show metadata (versions, field names); never values.
    Get {
        /// Environment.
        env: String,
        /// Secret path.
        path: String,
    },
    /// List secret paths.
    List {
        /// Environment.
        env: String,
        /// Only paths starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete every version.
    Delete {
        /// Environment.
        env: String,
        /// Secret path.
        path: String,
    },
}

/// `leases list`
#[derive(Args, Debug)]
pub struct LeasesArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: AdminConn,
    /// Operation.
    #[command(subcommand)]
    pub op: LeasesOp,
}

/// Lease operations.
#[derive(Subcommand, Debug)]
pub enum LeasesOp {
    /// List leases, newest first.
    List {
        /// Environment.
        #[arg(long)]
        env: Option<String>,
        /// Role.
        #[arg(long)]
        role: Option<String>,
        /// Only live leases.
        #[arg(long)]
        active: bool,
        /// Claim filters NAME=VALUE.
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
        /// Last lease id of the previous page.
        #[arg(long)]
        after: Option<String>,
    },
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Exchange(a) => crate::ci::exchange(a).await,
        Command::Policy(c) => policy(c),
        Command::Audit(c) => audit_cmd(c),
        Command::Keys(KeysCmd::Generate { out }) => RootKey::generate_file(&out)
            .map(|()| {
                println!("wrote {} (mode 0600)", out.display());
                0
            })
            .map_err(|e| e.to_string()),
        Command::Keys(k) => crate::client::keys(k).await,
        Command::Revoke(a) => crate::client::revoke(a).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "jobpass", &mut out);
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            drop(std::io::stdout().write_all(&out));
            Ok(0)
        }
        Command::Health { server, ca } => crate::client::health(&server, ca.as_deref()).await,
        Command::Freeze(a) => crate::client::freeze(a, true).await,
        Command::Unfreeze(a) => crate::client::freeze(a, false).await,
        Command::Certs(CertsCmd::Init { dir, sans, force }) => {
            crate::tls::certs_init(&dir, &sans, force, &SystemClock)
                .map(|files| {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    0
                })
                .map_err(|e| e.to_string())
        }
        Command::Dev(DevCmd::Token {
            env,
            claims,
            data_dir,
            policies,
            ttl,
        }) => dev_token(&env, &claims, &data_dir, &policies, ttl),
        Command::Secrets(a) => crate::client::secrets(a).await,
        Command::Leases(a) => crate::client::leases(a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn dev_token(
    env: &str,
    claims: &str,
    data_dir: &Path,
    policies: &Path,
    ttl: humantime::Duration,
) -> Result<i32, String> {
    let extra: Map<String, Value> =
        serde_json::from_str(claims).map_err(|e| format!("--claims is not a JSON object: {e}"))?;
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(300);
    let t = crate::dev::token(data_dir, policies, env, extra, ttl, &SystemClock)
        .map_err(|e| e.to_string())?;
    println!("{t}");
    Ok(0)
}

async fn serve(a: ServeArgs) -> Result<i32, String> {
    let clock: SharedClock = Arc::new(SystemClock);
    let (config, dev) = if a.dev {
        let d = crate::dev::prepare(&a.data_dir, &a.policies, a.listen, clock.as_ref())
            .map_err(|e| e.to_string())?;
        (d.config, Some(d.issuer))
    } else {
        (
            Config::load(a.config.as_deref()).map_err(|e| e.to_string())?,
            None,
        )
    };
    let tls = if config.insecure_http {
        // Tokens and secrets cross this connection: plain HTTP only where nothing else can
        // listen in (a loopback address, e.g. behind a TLS-terminating sidecar).
        if !config.listen.ip().is_loopback() {
            return Err(format!(
                "insecure_http = true is only allowed on a loopback address, not {}",
                config.listen
            ));
        }
        tracing::warn!("serving plain HTTP on loopback (insecure_http = true)");
        None
    } else {
        let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
            return Err(
                "tls.cert and tls.key are required (or insecure_http = true for development)"
                    .into(),
            );
        };
        Some(
            crate::tls::server_config(cert, key, config.tls.admin_client_ca.as_deref())
                .map_err(|e| e.to_string())?,
        )
    };
    let listen = config.listen;
    let app = App::build(config, clock, dev.clone())
        .await
        .map_err(|e| e.to_string())?;
    let running = crate::http::server::serve(app.clone(), listen, tls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let vault = match app.config.vault_compat_listen {
        Some(addr) => Some(
            crate::http::server::serve_router(
                crate::http::vault::router(app.clone()),
                addr,
                tls.clone(),
            )
            .await
            .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    crate::policy::reload::spawn(app.clone());
    crate::leases::sweeper::spawn(app.clone());
    crate::leases::teardown::spawn(app.clone());
    tracing::info!(addr = %running.addr, "jobpass listening");
    if let Some(dev) = &dev {
        print_dev_banner(&a.data_dir, &app.public_url, dev);
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
    // Exchanges already queued are committed (or refused) before the process ends.
    app.ledger.stop().await;
    Ok(0)
}

fn print_dev_banner(data_dir: &Path, url: &str, dev: &app::DevIssuer) {
    let d = data_dir.display();
    println!(
        "\njobpass dev server on {url} (DEV MODE: dev root key and a built-in issuer {iss} that every environment trusts)\n\
         \nGet a dev token and exchange it:\n\
         \n  TOKEN=$(jobpass dev token --env dev)\
         \n  curl --cacert {d}/certs/ca.pem {url}/v1/exchange \\\
         \n    -H 'content-type: application/json' \\\
         \n    -d \"{{\\\"token\\\":\\\"$TOKEN\\\",\\\"environment\\\":\\\"dev\\\"}}\"\n\
         \nAdmin client certificates: {d}/certs/{{admin,security,auditor}}.pem\n",
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

fn policy(c: PolicyCmd) -> Result<i32, String> {
    match c {
        PolicyCmd::Check { dir, config } => {
            let result = match config {
                Some(cfg) => {
                    let mut cfg = Config::load(Some(&cfg)).map_err(|e| e.to_string())?;
                    cfg.policies = dir.clone();
                    app::load_policies(&cfg).map_err(|e| e.to_string())
                }
                None => PolicySet::load_dir(&dir, &AnyCapabilities).map_err(|e| e.to_string()),
            };
            match result {
                Ok(set) => {
                    let envs: Vec<&str> = set.environments().map(|e| e.name.as_str()).collect();
                    println!(
                        "OK: {} environments ({}), version {}",
                        envs.len(),
                        envs.join(", "),
                        set.version()
                    );
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(1)
                }
            }
        }
        PolicyCmd::Test {
            dir,
            env,
            role,
            claims,
        } => {
            let set = PolicySet::load_dir(&dir, &AnyCapabilities).map_err(|e| e.to_string())?;
            let text = std::fs::read_to_string(&claims)
                .map_err(|e| format!("cannot read {}: {e}", claims.display()))?;
            let claims: Map<String, Value> = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a JSON object: {e}", claims.display()))?;
            let environment = set
                .environment(&env)
                .ok_or_else(|| format!("no environment `{env}` in {}", dir.display()))?;
            match environment.evaluate(role.as_deref(), &claims) {
                Ok(r) => {
                    println!("allow: environment `{env}`, role `{}`", r.name);
                    Ok(0)
                }
                Err(Denial::Condition {
                    claim,
                    guardrail,
                    expected,
                    missing,
                }) => {
                    let place = if guardrail {
                        "environment guardrail"
                    } else {
                        "role condition"
                    };
                    let got = if missing {
                        "the claim is missing".to_string()
                    } else {
                        format!(
                            "got {}",
                            claims
                                .get(&claim)
                                .map(Value::to_string)
                                .unwrap_or_else(|| "a nested value".into())
                        )
                    };
                    println!("deny: {place} on claim `{claim}` failed: expected {expected}, {got}");
                    Ok(1)
                }
                Err(d) => {
                    println!("deny: {}", d.public_message());
                    Ok(1)
                }
            }
        }
    }
}

fn audit_cmd(c: AuditCmd) -> Result<i32, String> {
    let key_for = |cfg: &Path| -> Result<audit::AuditKey, String> {
        let cfg = Config::load(Some(cfg)).map_err(|e| e.to_string())?;
        let root = app::load_root_key(&cfg).map_err(|e| e.to_string())?;
        app::audit_key(&root).map_err(|e| e.to_string())
    };
    match c {
        AuditCmd::Verify { config, files } => {
            let key = key_for(&config)?;
            let mut code = 0;
            for f in files {
                match audit::verify(&f, &key) {
                    Ok(r) => println!("{}: OK, {} records, head {}", f.display(), r.lines, r.head),
                    Err(e) => {
                        println!("{}: FAILED: {e}", f.display());
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        AuditCmd::Find {
            config,
            value,
            files,
        } => {
            let key = key_for(&config)?;
            let mut found = 0;
            for f in files {
                for (line, text) in audit::find(&f, &key, &value).map_err(|e| e.to_string())? {
                    println!("{}:{line}: {text}", f.display());
                    found += 1;
                }
            }
            if found == 0 {
                eprintln!("no record matches that value");
                return Ok(1);
            }
            Ok(0)
        }
    }
}
