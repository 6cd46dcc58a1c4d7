//! The command line's argument types (clap). Their docs are the `--help` text. Nothing else in
//! the crate sees them but [`super::run`] and its helpers, which turn them into domain inputs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The broker URL when neither `--server` nor `JOBPASS_SERVER` gives one: a dev broker.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:8443";

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
    ///   # a dev broker (`jobpass serve --dev` in this directory): its CA is found in .jobpass-dev/
    ///   jobpass exchange --env dev --token "$(jobpass dev token --env dev)"
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
        #[arg(long, env = "JOBPASS_SERVER", default_value = DEFAULT_SERVER)]
        server: String,
        /// CA certificate (PEM) to trust for the broker (default: the public roots; for a
        /// broker on a loopback address, .jobpass-dev/certs/ca.pem when it exists).
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
    /// The JSON answer on one line.
    Json,
    /// The JSON answer, indented.
    Pretty,
    /// `export NAME=value` lines for a shell.
    Env,
    /// GitHub Actions: masked values appended to $GITHUB_ENV and $GITHUB_OUTPUT.
    Github,
}

/// JSON output of the commands that print JSON.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonFormat {
    /// On one line.
    Json,
    /// Indented.
    Pretty,
}

/// `exchange`
#[derive(Args)]
pub struct ExchangeArgs {
    /// Broker URL.
    #[arg(long, env = "JOBPASS_SERVER", default_value = DEFAULT_SERVER)]
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
    /// CA certificate (PEM) to trust for the broker (default: the public roots; for a broker
    /// on a loopback address, .jobpass-dev/certs/ca.pem when it exists).
    #[arg(long, env = "JOBPASS_CA")]
    pub ca: Option<PathBuf>,
    /// Output: json (one line), pretty (indented JSON), env (`export` lines) or github
    /// ($GITHUB_ENV/$GITHUB_OUTPUT, values masked). Default: github on GitHub Actions, else
    /// JSON, indented when standard output is a terminal.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Revoke the lease when COMMAND ends (whatever its exit status).
    #[arg(long, requires = "command")]
    pub revoke_at_exit: bool,
    /// Command to run with the credentials in its environment (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

// By hand: the token given with --token never reaches a `Debug` output.
impl std::fmt::Debug for ExchangeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeArgs")
            .field("server", &self.server)
            .field("env", &self.env)
            .field("role", &self.role)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .field("audience", &self.audience)
            .field("ca", &self.ca)
            .field("format", &self.format)
            .field("revoke_at_exit", &self.revoke_at_exit)
            .field("command", &self.command)
            .finish()
    }
}

/// `policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy directory; exit 1 with file:line: reason lines when invalid.
    ///
    /// Valid but risky policies get file:line: warning: lines on standard error (a role
    /// trusting GitHub, GitLab.com or Buildkite without pinning an organization or group, a
    /// condition on a claim the issuer's tokens do not carry) and still exit 0, unless
    /// --strict. A `*.toml` file without an `[environment]` table is refused as not a policy.
    Check {
        /// Directory of `<env>.toml` files.
        dir: PathBuf,
        /// Also check issuers and grant kinds against this server configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Exit 1 on any warning too.
        #[arg(long)]
        strict: bool,
    },
    /// Say whether claims would be allowed, and which condition failed.
    ///
    /// Examples:
    ///   jobpass policy test policies --env prod --role deploy-web --claims @examples/claims/github-deploy-main.json
    ///   jobpass policy test policies --env dev --claims '{"repository":"octo-org/web","repository_owner":"octo-org"}'
    ///   jobpass dev claims --env prod --role deploy-web > claims.json   # claims to start from
    #[command(verbatim_doc_comment)]
    Test {
        /// Directory of `<env>.toml` files.
        dir: PathBuf,
        /// Environment.
        #[arg(long)]
        env: String,
        /// Role (default: the environment's default role).
        #[arg(long)]
        role: Option<String>,
        /// Token claims: inline JSON ('{"k":"v"}'), @FILE (a JSON file) or @- (standard
        /// input); a bare FILE still works.
        #[arg(long, value_name = "JSON|@FILE")]
        claims: String,
    },
}

/// `audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the HMAC chain of one or more audit files.
    ///
    /// With --anchor, each file is also checked against its replica's anchor in the store the
    /// configuration names (read-only, no migration): a file behind it (lines cut from the
    /// end, or another chain) fails with both heads.
    Verify {
        /// Server configuration (for the root key, and with --anchor the store).
        #[arg(long)]
        config: PathBuf,
        /// Also check each file against its anchor in the store.
        #[arg(long)]
        anchor: bool,
        /// The replica whose anchor to check against (default: the replica named by the
        /// file's last record; for an empty file, the configuration's audit.replica).
        #[arg(long, requires = "anchor")]
        replica: Option<String>,
        /// Audit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List records whose credential fingerprints match a leaked value.
    #[command(group(clap::ArgGroup::new("needle").required(true).args(["value", "value_file"])))]
    Find {
        /// Server configuration (for the root key).
        #[arg(long)]
        config: PathBuf,
        /// The value to look for (visible to other users in `ps`: prefer --value-file).
        #[arg(
            long,
            required_unless_present = "value_file",
            conflicts_with = "value_file"
        )]
        value: Option<String>,
        /// Read the value from this file, or from standard input with `-` (one trailing
        /// newline is dropped).
        #[arg(long)]
        value_file: Option<PathBuf>,
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
    ///
    /// Its claims are those `jobpass dev claims` prints, with times and a `jti`: GitHub-shaped,
    /// shaped to the role when they can be, and --claims over them (`aud` and `iss` too: a
    /// wrong audience or issuer shows a refusal).
    ///
    /// Examples:
    ///   jobpass dev token --env dev
    ///   jobpass dev token --env prod --role deploy-web
    ///   jobpass dev token --env dev --claims '{"repository":"acme/web"}'
    ///   jobpass dev token --env dev --claims @claims.json
    #[command(verbatim_doc_comment)]
    Token {
        /// The claims' environment, role and changes.
        #[command(flatten)]
        shape: DevClaimsArgs,
        /// Lifetime of the token.
        #[arg(long, default_value = "5m")]
        ttl: humantime::Duration,
    },
    /// Print the claims a dev token would carry (less its times and `jti`), shaped to the
    /// role's conditions when they can be: a file to try with `jobpass policy test`.
    ///
    /// Example:
    ///   jobpass dev claims --env prod --role deploy-web > claims.json
    ///   jobpass policy test policies --env prod --role deploy-web --claims @claims.json
    #[command(verbatim_doc_comment)]
    Claims {
        /// The claims' environment, role and changes.
        #[command(flatten)]
        shape: DevClaimsArgs,
        /// Output: json (one line) or pretty (default: pretty on a terminal).
        #[arg(long, value_enum)]
        format: Option<JsonFormat>,
    },
}

/// What a dev token's claims are made from (`dev token`, `dev claims`).
#[derive(Args, Debug)]
pub struct DevClaimsArgs {
    /// Environment (its audience is the token's).
    #[arg(long)]
    pub env: String,
    /// Role whose conditions the claims are shaped to (default: the environment's default
    /// role).
    #[arg(long)]
    pub role: Option<String>,
    /// Claims merged over the defaults: inline JSON ('{"k":"v"}'), @FILE or @- (standard
    /// input).
    #[arg(long, value_name = "JSON|@FILE")]
    pub claims: Option<String>,
    /// Data directory of the dev server (its issuer).
    #[arg(long, default_value = ".jobpass-dev")]
    pub data_dir: PathBuf,
    /// Policy directory.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
}

/// Connection and output options of admin API clients.
#[derive(Args, Debug)]
pub struct AdminConn {
    /// Broker URL.
    #[arg(long, env = "JOBPASS_SERVER", global = true, default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Client certificate (PEM) (default, for a broker on a loopback address: the dev
    /// broker's certificate of the role the command needs, in .jobpass-dev/certs/).
    #[arg(long, env = "JOBPASS_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "JOBPASS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the broker (default: the public roots; for a broker
    /// on a loopback address, .jobpass-dev/certs/ca.pem when it exists).
    #[arg(long, env = "JOBPASS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Output: json (one line) or pretty (indented; the default on a terminal).
    #[arg(long, value_enum, global = true)]
    pub format: Option<JsonFormat>,
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
    /// Store a new version. Values are read from files or standard input, never taken from the
    /// command line (other users see it in `ps`, the shell keeps it in its history).
    Put {
        /// Environment.
        env: String,
        /// Secret path, e.g. deploy/web/api.
        path: String,
        /// FIELD=@FILE (the value is the file's text) or FIELD=@- (standard input); one
        /// trailing newline is dropped. FIELD=VALUE is refused.
        #[arg(value_name = "FIELD=@FILE|FIELD=@-")]
        fields: Vec<String>,
        /// JSON object of string fields (`-` reads standard input); FIELD=@… items override it.
        #[arg(long, value_name = "FILE|-")]
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
