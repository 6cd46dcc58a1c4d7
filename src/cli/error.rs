//! Why a command could not do its job: [`CliError`]. The command line prints it as
//! `error: {e}` and exits with status 2.
//!
//! Messages name files, URLs, variables and flags, never a token or a secret value: where the
//! underlying error could quote the input (a JSON parse error of secret data), it is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;

use openidconnect::http::StatusCode;
use openidconnect::reqwest;

use crate::app::StartError;
use crate::audit::AuditError;
use crate::config::ConfigError;
use crate::crypto::CryptoError;
use crate::dev::DevTokenError;
use crate::policy::PolicyErrors;
use crate::tls::TlsError;

use super::https::error_chain;

/// Everything that can stop a command of the `jobpass` command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file of a `FIELD=@FILE` value could not be read (its name is not echoed: a value
    /// typed by mistake after `@` must not reach the terminal or a log).
    #[error("cannot read the file given for field `{field}` (FIELD=@FILE): {source}")]
    FieldFile {
        /// The field.
        field: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be opened for appending or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Standard input could not be read.
    #[error(transparent)]
    Stdin(std::io::Error),
    /// A grant's name would export a variable that jobpass itself reads (nothing is exported).
    #[error(
        "grant `{grant}` would be exported as {variable}, {why}: nothing was exported, and lease {lease} is revoked (a line above says so if that failed); ask for the grant to be renamed in the policy"
    )]
    CredentialVariable {
        /// The lease (revoked by the command, or said so when that failed).
        lease: String,
        /// The grant.
        grant: String,
        /// The variable.
        variable: String,
        /// What else the variable is.
        why: &'static str,
    },
    /// The server configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker (or what an offline tool needs of it: root key, dev data) could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// TLS material could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A root key problem, or no randomness.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A policy directory is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    /// An audit file could not be read.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A dev token could not be made.
    #[error(transparent)]
    DevToken(#[from] DevTokenError),
    /// `insecure_http` on an address other machines can reach.
    #[error("insecure_http = true is only allowed on a loopback address, not {0}")]
    InsecureListen(SocketAddr),
    /// Neither a server certificate nor `insecure_http`.
    #[error("tls.cert and tls.key are required (or insecure_http = true for development)")]
    NoServerCertificate,
    /// Inline `--claims` JSON is not a JSON object.
    #[error("--claims is not a JSON object: {0}")]
    ClaimsInline(#[source] serde_json::Error),
    /// A `--claims` argument that is neither inline JSON nor `@FILE`.
    #[error(
        "--claims is inline JSON ('{{\"repository\":\"acme/web\"}}') or @FILE (a JSON file; @- \
         reads standard input)"
    )]
    ClaimsSyntax,
    /// A claims file is not a JSON object.
    #[error("{} is not a JSON object: {source}", path.display())]
    ClaimsFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The policy directory has no such environment.
    #[error("no environment `{env}` in {} (its environments: {known})", dir.display())]
    UnknownEnvironment {
        /// The environment asked for.
        env: String,
        /// The policy directory.
        dir: PathBuf,
        /// The environments it has, comma-separated.
        known: String,
    },
    /// An admin command without a client certificate.
    #[error("admin commands need --cert and --key (a client certificate from the admin CA)")]
    NoClientCertificate,
    /// `secrets put --data-file` does not hold a JSON object (the parse error is dropped: it
    /// could quote the secret).
    #[error("--data-file must hold a JSON object of string fields")]
    DataFile,
    /// A `secrets put` field is not `FIELD=@FILE` or `FIELD=@-`.
    #[error("fields are FIELD=@FILE or FIELD=@- (standard input)")]
    FieldSyntax,
    /// A `secrets put` field gave its value on the command line (the field is named, the
    /// value never repeated).
    #[error(
        "refusing the value of `{0}` on the command line (other users see it in `ps`, the shell \
         keeps it in its history): give {0}=@FILE, {0}=@- (standard input) or --data-file FILE|- \
         (a JSON object)"
    )]
    SecretOnCommandLine(String),
    /// `revoke` was given nothing to select leases by.
    #[error(
        "say which leases to revoke: --lease-id, --env, --role, --issuer, --subject, --claim \
         NAME=GLOB, --policy-version, --issued-after or --issued-before (combined with AND), or \
         --all to revoke every live lease"
    )]
    EmptySelector,
    /// `audit find` was given no value to look for.
    #[error(
        "give the leaked value with --value-file FILE, or --value-file - to read it from standard input"
    )]
    NoValue,
    /// The value to look for is empty (an empty file or empty input).
    #[error("the value to look for is empty")]
    EmptyValue,
    /// Two `secrets put` inputs both asked for standard input.
    #[error("standard input can be read once: give at most one FIELD=@- or --data-file -")]
    StdinTwice,
    /// A `leases list --claim` filter is not NAME=VALUE.
    #[error("--claim is NAME=VALUE")]
    ClaimFilterSyntax,
    /// A `revoke --claim` selector is not NAME=GLOB.
    #[error("--claim is NAME=GLOB")]
    ClaimGlobSyntax,
    /// A query string or form could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_urlencoded::ser::Error),
    /// The HTTPS client could not be built.
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The client certificate's key is not the one given.
    #[error(
        "--cert {} and --key {} do not belong together (the key is not the certificate's): give \
         the key issued with that certificate (e.g. admin.pem with admin-key.pem)",
        cert.display(),
        key.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The server's certificate is not signed by a trusted CA.
    #[error(
        "the broker at {url} answered, but its certificate is not signed by {}: pass --ca FILE \
         with the broker's CA certificate (a dev broker's is .jobpass-dev/certs/ca.pem) or set \
         JOBPASS_CA",
        match ca { Some(ca) => format!("the CA in {}", ca.display()), None => "a trusted CA".to_owned() }
    )]
    UntrustedServer {
        /// The URL asked.
        url: String,
        /// The CA file trusted, if one was given.
        ca: Option<PathBuf>,
    },
    /// The server's certificate does not name the host asked for.
    #[error(
        "the broker's certificate is not valid for the host name `{host}` (in {url}): use a \
         name the certificate holds (a dev broker's: localhost or 127.0.0.1), or give the \
         broker a certificate for it (jobpass certs init --san {host})"
    )]
    NameMismatch {
        /// The URL asked.
        url: String,
        /// Its host.
        host: String,
    },
    /// The broker refused the client certificate during the handshake.
    #[error(
        "the broker at {url} refused the client certificate {}: give one issued by the CA of \
         its tls.admin_client_ca (a dev broker's: .jobpass-dev/certs/admin.pem, security.pem or \
         auditor.pem)",
        cert.display()
    )]
    ClientCertificateRefused {
        /// The URL asked.
        url: String,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A plain `http://` URL for a broker that speaks HTTPS.
    #[error("{url} is plain HTTP, but the broker speaks HTTPS only: use {https}")]
    PlainHttp {
        /// The URL asked.
        url: String,
        /// The same URL with `https://`.
        https: String,
    },
    /// Nothing accepts connections at the address.
    #[error(
        "nothing is listening at {url}: is the broker running (`jobpass serve --dev` for a dev \
         broker)? Check --server or JOBPASS_SERVER"
    )]
    NotListening {
        /// The server asked (scheme, host, port).
        url: String,
    },
    /// A request got no answer (connection, TLS, timeout…).
    #[error("cannot reach {url}: {}", error_chain(source))]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The body of an answer could not be read.
    #[error("reading the answer: {0}")]
    ReadAnswer(#[source] reqwest::Error),
    /// The broker refused to name an environment's audience.
    #[error("cannot learn the audience of `{env}`: {answer}")]
    Audience {
        /// The environment.
        env: String,
        /// The broker's error, as [`super::https::error_text`] puts it.
        answer: String,
    },
    /// The broker's environment answer has no audience.
    #[error("the broker did not name the environment's audience")]
    NoAudience,
    /// The client for the GitHub Actions token endpoint could not be built.
    #[error(transparent)]
    TokenEndpointClient(reqwest::Error),
    /// The GitHub Actions token endpoint could not be reached.
    #[error("cannot reach the GitHub Actions token endpoint: {0}")]
    TokenEndpointUnreachable(#[source] reqwest::Error),
    /// The GitHub Actions token endpoint's answer could not be read.
    #[error(transparent)]
    TokenEndpointRead(reqwest::Error),
    /// The GitHub Actions token endpoint refused.
    #[error(
        "the GitHub Actions token endpoint answered {0}; does the job have `permissions: id-token: write`?"
    )]
    TokenEndpointRefused(StatusCode),
    /// The GitHub Actions token endpoint's answer is not JSON.
    #[error("the GitHub Actions token endpoint did not answer JSON")]
    TokenEndpointNotJson,
    /// The GitHub Actions token endpoint's answer has no token.
    #[error("the GitHub Actions token endpoint answered without a token")]
    TokenEndpointNoToken,
    /// `--token-env NAME` names an empty or unset variable.
    #[error("variable {0} is empty or unset (GitLab: declare it under `id_tokens:` in the job)")]
    TokenVariable(String),
    /// No token given and no CI platform to ask for one.
    #[error(
        "no OIDC token found: on GitHub Actions give the job `permissions: id-token: write`; on GitLab CI \
         declare an `id_tokens:` variable and pass --token-env NAME; elsewhere pass --token-file FILE"
    )]
    NoToken,
    /// `--format github` outside GitHub Actions.
    #[error("--format github needs $GITHUB_ENV (run inside GitHub Actions)")]
    NoGithubEnv,
    /// The request revoking a lease got no answer.
    #[error("revocation failed: {0}")]
    RevocationFailed(#[source] reqwest::Error),
    /// The broker refused to revoke a lease.
    #[error("revocation answered {0}")]
    RevocationRefused(StatusCode),
    /// The exchange answer holds no credential that can revoke its own lease.
    #[error("the role grants no token or JWT to revoke the lease with; it ends at its expiry")]
    NothingToRevokeWith,
}
