//! The offline tools: policy check and test, audit verification and search, root key
//! generation, development certificates and dev tokens. None of them talks to a broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::app;
use crate::audit::{self, AuditError, AuditKey, VerifyReport};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::crypto::RootKey;
use crate::policy::{AnyCapabilities, Denial, PolicyErrors, PolicySet};
use crate::store::Store;

use super::error::CliError;

/// The outcome of a policy check.
#[derive(Debug)]
pub enum PolicyCheck {
    /// Every file is valid.
    Valid(PolicySet),
    /// Every problem found, each with file, line and reason.
    Invalid(PolicyErrors),
}

/// Validates the policy directory `dir`; with `config`, also checks issuers and grant kinds
/// against that server configuration.
///
/// # Errors
/// Only an invalid `config`: invalid policies are [`PolicyCheck::Invalid`].
pub fn check_policies(dir: &Path, config: Option<&Path>) -> Result<PolicyCheck, CliError> {
    let result = match config {
        Some(file) => {
            let mut config = Config::load(Some(file))?;
            config.policies = dir.to_path_buf();
            app::load_policies(&config)
        }
        None => PolicySet::load_dir(dir, &AnyCapabilities),
    };
    Ok(match result {
        Ok(set) => PolicyCheck::Valid(set),
        Err(errors) => PolicyCheck::Invalid(errors),
    })
}

/// What the policy says of a set of claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, as this role.
    Allow {
        /// The role that matched (the default role when none was named).
        role: String,
    },
    /// Refused, and why (which condition failed, what it expected and what it got).
    Deny(String),
}

/// Says whether `claims` would be allowed in environment `env` (role `role`, else the default
/// role) of the policy directory `dir`.
///
/// # Errors
/// Invalid policies, an unknown environment.
pub fn test_policy(
    dir: &Path,
    env: &str,
    role: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<Verdict, CliError> {
    let set = PolicySet::load_dir(dir, &AnyCapabilities)?;
    let environment = set
        .environment(env)
        .ok_or_else(|| CliError::UnknownEnvironment {
            env: env.to_owned(),
            dir: dir.to_path_buf(),
            known: set
                .environments()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    Ok(match environment.evaluate(role, claims) {
        Ok(r) => Verdict::Allow {
            role: r.name.clone(),
        },
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
            Verdict::Deny(format!(
                "{place} on claim `{claim}` failed: expected {expected}, {got}"
            ))
        }
        Err(d) => Verdict::Deny(d.public_message()),
    })
}

/// The audit key of the server configured by the file `config` (derived from its root key).
fn audit_key(config: &Path) -> Result<AuditKey, CliError> {
    let config = Config::load(Some(config))?;
    let root = app::load_root_key(&config)?;
    Ok(app::audit_key(&root)?)
}

/// Verifies the HMAC chain of each audit file with the key of the server configured by
/// `config`; yields each file with its report or the first problem, file by file.
///
/// # Errors
/// An invalid configuration or root key (before any file is read).
pub fn verify_audit<'a>(
    config: &Path,
    files: &'a [PathBuf],
) -> Result<impl Iterator<Item = (&'a Path, Result<VerifyReport, AuditError>)> + 'a, CliError> {
    let key = audit_key(config)?;
    Ok(files
        .iter()
        .map(move |f| (f.as_path(), audit::verify(f, &key))))
}

/// The anchors of the store a configuration names, for `audit verify --anchor`.
pub struct Anchors {
    store: String,
    key: AuditKey,
    /// `--replica`.
    replica: Option<String>,
    /// The configuration's `audit.replica` (for an empty file).
    configured: Option<String>,
}

/// Why a file failed its anchor check.
#[derive(Debug, thiserror::Error)]
pub enum AnchorCheckError {
    /// The store has no anchor for the replica.
    #[error(
        "no anchor for replica {0} in the store (a broker of this version never ran as that \
         replica, or --replica names another)"
    )]
    NoAnchor(String),
    /// The file is behind its anchor.
    #[error("{0}")]
    Behind(Box<audit::anchor::Behind>),
    /// The store or the file could not be read.
    #[error(transparent)]
    Anchor(#[from] audit::anchor::AnchorError),
}

impl Anchors {
    /// Reads the configuration (root key, store URL).
    ///
    /// # Errors
    /// An invalid configuration or root key.
    pub fn open(config: &Path, replica: Option<String>) -> Result<Anchors, CliError> {
        let config = Config::load(Some(config))?;
        let root = app::load_root_key(&config)?;
        Ok(Anchors {
            key: app::audit_key(&root)?,
            store: config.store,
            replica,
            configured: config.audit.replica,
        })
    }

    /// Checks a verified file against its replica's anchor; says which anchor it reaches.
    ///
    /// # Errors
    /// No anchor for the replica, a file behind it, or the store or the file unreadable.
    pub async fn check(
        &self,
        file: &Path,
        report: &VerifyReport,
    ) -> Result<String, AnchorCheckError> {
        let replica = self
            .replica
            .clone()
            .or_else(|| report.replica.clone())
            .or_else(|| {
                // An empty file names no replica: the configuration's.
                (report.lines == 0)
                    .then(|| self.configured.clone())
                    .flatten()
            });
        let shown = replica
            .as_deref()
            .map_or_else(|| "(unnamed)".to_owned(), |r| format!("\"{r}\""));
        let row = Store::read_audit_anchor(&self.store, replica.as_deref().unwrap_or_default())
            .await
            .map_err(audit::anchor::AnchorError::from)?
            .ok_or_else(|| AnchorCheckError::NoAnchor(shown.clone()))?;
        let head = audit::AuditHead {
            seq: report.lines,
            mac: report.head.clone(),
        };
        match audit::anchor::compare(file, &self.key, &head, replica.as_deref(), &row)? {
            Some(behind) => Err(AnchorCheckError::Behind(Box::new(behind))),
            None => Ok(format!(
                "reaches its anchor (replica {shown}, line {})",
                row.seq
            )),
        }
    }
}

/// The file searched and its matching records (line number, text).
pub type AuditMatches<'a> = (&'a Path, Vec<(u64, String)>);

/// The value `audit find` looks for, from the file `path` or standard input (`-`); one
/// trailing newline is dropped.
///
/// # Errors
/// The file or standard input cannot be read, or holds nothing.
pub fn read_value(path: &Path) -> Result<Zeroizing<String>, CliError> {
    use std::io::Read;
    let mut text = Zeroizing::new(String::new());
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(CliError::Stdin)?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|source| CliError::Read {
                path: path.to_path_buf(),
                source,
            })?;
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(CliError::EmptyValue);
    }
    Ok(text)
}

/// The records (line number, text) of each audit file whose credential fingerprints match
/// `value`, with the key of the server configured by `config`; file by file.
///
/// # Errors
/// An invalid configuration or root key (before any file is read); then, in the iterator, an
/// unreadable file.
pub fn find_in_audit<'a>(
    config: &Path,
    value: &'a str,
    files: &'a [PathBuf],
) -> Result<impl Iterator<Item = Result<AuditMatches<'a>, CliError>> + 'a, CliError> {
    let key = audit_key(config)?;
    Ok(files.iter().map(move |f| {
        let records = audit::find(f, &key, value)?;
        Ok((f.as_path(), records))
    }))
}

/// Writes a new root key to `out` (mode 0600; never overwrites).
///
/// # Errors
/// The file exists or cannot be written.
pub fn generate_root_key(out: &Path) -> Result<(), CliError> {
    Ok(RootKey::generate_file(out)?)
}

/// Writes a development PKI (CA, server certificate, one client certificate per admin role) to
/// `dir`; returns the files written.
///
/// # Errors
/// A file exists (without `force`), cannot be written, or a SAN is invalid.
pub fn init_certs(dir: &Path, sans: &[String], force: bool) -> Result<Vec<PathBuf>, CliError> {
    Ok(crate::tls::certs_init(dir, sans, force, &SystemClock)?)
}

/// A token of the dev issuer of the `serve --dev` server whose data directory is `data_dir`,
/// for environment `env` of the policy directory `policies`: the claims of [`dev_claims`],
/// valid for `ttl`.
///
/// # Errors
/// No dev server data, no policy for `env`, an unknown role, no dev issuer key.
pub fn dev_token(
    data_dir: &Path,
    policies: &Path,
    env: &str,
    role: Option<&str>,
    extra: Map<String, Value>,
    ttl: Duration,
) -> Result<Zeroizing<String>, CliError> {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(300);
    let token = crate::dev::token(data_dir, policies, env, role, extra, ttl, &SystemClock)?;
    Ok(Zeroizing::new(token))
}

/// The claims a dev token for `env` (shaped for `role`, else the default role) carries, less
/// its times and `jti`; `extra` over them.
///
/// # Errors
/// An invalid policy directory, no policy for `env`, an unknown role.
pub fn dev_claims(
    data_dir: &Path,
    policies: &Path,
    env: &str,
    role: Option<&str>,
    extra: Map<String, Value>,
) -> Result<crate::dev::DevClaims, CliError> {
    Ok(crate::dev::claims(data_dir, policies, env, role, extra)?)
}
