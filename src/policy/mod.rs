//! Per-environment policies (SPEC §1): parsing, validation and evaluation.
//!
//! A policy set is every `*.toml` file of the policies directory, one environment per file.
//! This module guarantees that:
//! - a [`PolicySet`] exists only if every file parsed and validated: unknown keys, bad
//!   durations, a role TTL above the environment's `max_ttl`, an issuer or a grant the server
//!   cannot serve are all rejected, each as a [`PolicyError`] with file, line and reason
//!   (every error found is reported, not just the first);
//! - every role's TTL is non-zero and at most its environment's `max_ttl`;
//! - the set has a [`PolicySet::version`], a SHA-256 over its files' names and contents that
//!   changes whenever any file does;
//! - [`Environment::evaluate`] checks the environment's guardrails (`[environment.require]`)
//!   before the role's own `[role.match]`, and reports the first failing condition as a
//!   [`Denial`] whose [`public_message`](Denial::public_message) names the claim but never
//!   the expected pattern.
//!
//! Claim matching rules live in [`conditions`], the glob dialect in [`glob`]; warnings about
//! valid but risky policies (a multi-tenant issuer without a tenant pinned) in [`lint`].

pub mod conditions;
pub mod glob;
pub mod lint;
mod parse;
pub mod reload;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

pub use conditions::{Condition, Conditions, Matcher};
pub use glob::glob_match;

/// What the server can do, as far as policy validation is concerned.
pub trait ServerCapabilities {
    /// Is this issuer URL configured in the server's `[[issuer]]` list?
    fn knows_issuer(&self, url: &str) -> bool;
    /// Can the server mint this grant?
    ///
    /// # Errors
    /// Why the grant cannot be served.
    fn supports_grant(&self, grant: &Grant) -> Result<(), UnsupportedGrant>;
}

/// Why a server cannot serve a grant its policy asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedGrant {
    /// A `postgres` grant names a database without a `[postgres.<name>]` target.
    #[error(
        "postgres database `{0}` is not configured ([postgres.{0}] in the server configuration)"
    )]
    PostgresTarget(String),
}

/// Accepts every issuer and grant (for `jobpass policy check` without a server config).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyCapabilities;

impl ServerCapabilities for AnyCapabilities {
    fn knows_issuer(&self, _url: &str) -> bool {
        true
    }

    fn supports_grant(&self, _grant: &Grant) -> Result<(), UnsupportedGrant> {
        Ok(())
    }
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// File name (`prod.toml`), or the directory when it could not be read.
    pub file: String,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong, on one line.
    pub reason: String,
}

impl PolicyError {
    /// A new error; the reason is folded onto one line.
    pub fn new(file: impl Into<String>, line: Option<usize>, reason: impl AsRef<str>) -> Self {
        Self {
            file: file.into(),
            line,
            reason: one_line(reason.as_ref()),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// Every problem found while loading a policy set (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A validated set of environments, one per policy file.
#[derive(Debug, Clone)]
pub struct PolicySet {
    envs: BTreeMap<String, Environment>,
    version: String,
}

impl PolicySet {
    /// Loads every `*.toml` file directly in `dir` (not recursive, sorted by name). Dotfiles
    /// (`.prod.toml.swp`, Kubernetes' `..data`), `#…#` and `…~` editor files and anything that
    /// is not a regular file (after following symlinks) are ignored. `check` validates what
    /// depends on the server configuration.
    ///
    /// A `*.toml` file without an `[environment]` table is refused as "not a policy file",
    /// never skipped: a policy whose header was mistyped must not silently drop its
    /// environment from the set (a reload would then refuse that environment's jobs). A
    /// directory where no `*.toml` file is a policy is refused with one error that says so.
    ///
    /// # Errors
    /// Every unreadable or invalid file, each with file, line and reason.
    pub fn load_dir(dir: &Path, check: &dyn ServerCapabilities) -> Result<Self, PolicyErrors> {
        let dir_name = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            PolicyErrors(vec![PolicyError::new(
                dir_name.clone(),
                None,
                format!("cannot read the policies directory: {e}"),
            )])
        })?;
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    errors.push(PolicyError::new(
                        dir_name.clone(),
                        None,
                        format!("cannot list the policies directory: {e}"),
                    ));
                    continue;
                }
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8, so it cannot be `<env>.toml` for a valid env name
            };
            if !is_policy_file_name(&name) {
                continue;
            }
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => continue,
                Err(e) => {
                    errors.push(PolicyError::new(name, None, format!("cannot read: {e}")));
                    continue;
                }
            }
            match std::fs::read(&path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => files.push((name, text)),
                    Err(_) => errors.push(PolicyError::new(name, None, "not valid UTF-8")),
                },
                Err(e) => errors.push(PolicyError::new(name, None, format!("cannot read: {e}"))),
            }
        }
        // A directory of TOML files none of which is a policy (`.` of a Rust repository:
        // `Cargo.toml`, `clippy.toml`) is not a policies directory: one error says so, rather
        // than one "unknown field" per file.
        if !files.is_empty() && files.iter().all(|(_, text)| parse::lacks_environment(text)) {
            let mut names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
            names.sort_unstable();
            errors.push(PolicyError::new(
                dir_name,
                None,
                format!(
                    "holds no policy: its TOML files ({}) have no [environment] table; give the \
                     policies directory (one <environment>.toml file per environment)",
                    names.join(", ")
                ),
            ));
            return Err(PolicyErrors(errors));
        }
        match Self::from_files(&files, check) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(PolicyErrors(errors)),
            Err(PolicyErrors(more)) => {
                errors.extend(more);
                errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
                Err(PolicyErrors(errors))
            }
        }
    }

    /// Builds a set from `(file name, contents)` pairs, as if they were the files of a
    /// policies directory. Every file name must end in `.toml`.
    ///
    /// # Errors
    /// Every problem of every file, each with file, line and reason.
    pub fn from_files(
        files: &[(String, String)],
        check: &dyn ServerCapabilities,
    ) -> Result<Self, PolicyErrors> {
        let mut sorted: Vec<&(String, String)> = files.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));

        let mut errors = Vec::new();
        let mut envs: BTreeMap<String, Environment> = BTreeMap::new();
        for (name, contents) in &sorted {
            let Some(env) = parse::parse_file(name, contents, check, &mut errors) else {
                continue;
            };
            if let Some(first) = envs.get(&env.name) {
                errors.push(PolicyError::new(
                    name.clone(),
                    None,
                    format!(
                        "environment `{}` is already defined by {}",
                        env.name, first.file
                    ),
                ));
                continue;
            }
            envs.insert(env.name.clone(), env);
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Ok(Self {
            envs,
            version: version_of(&sorted),
        })
    }

    /// Version of the whole set: `sha256:<hex>` over the sorted, length-prefixed
    /// (file name, contents) pairs. Changes when any file changes, appears or disappears.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The environment with this name.
    #[must_use]
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.envs.get(name)
    }

    /// Every environment, sorted by name.
    pub fn environments(&self) -> impl Iterator<Item = &Environment> {
        self.envs.values()
    }
}

/// One environment: a trust zone with its own issuers, audience, TTL cap and roles.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Name, equal to the file's stem.
    pub name: String,
    /// Trusted issuer URLs (non-empty, each configured on the server).
    pub issuers: Vec<String>,
    /// Audience the source token's `aud` must contain.
    pub audience: String,
    /// No credential of this environment outlives this.
    pub max_ttl: Duration,
    /// Role used when a request names none.
    pub default_role: Option<String>,
    /// Guardrails every role must also satisfy (`[environment.require]`).
    pub require: Conditions,
    /// Roles, in file order.
    pub roles: Vec<Role>,
    /// The policy file it came from (`prod.toml`).
    pub file: String,
}

impl Environment {
    /// The role with this name.
    #[must_use]
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Picks the role named (or `default_role` when `role` is `None` or empty), then checks
    /// the guardrails and the role's own conditions against `claims`, guardrails first. The
    /// first failing condition is the denial.
    ///
    /// # Errors
    /// A [`Denial`] saying why the claims do not get this role.
    pub fn evaluate<'a>(
        &'a self,
        role: Option<&str>,
        claims: &Map<String, Value>,
    ) -> Result<&'a Role, Denial> {
        let name = match role.filter(|r| !r.is_empty()) {
            Some(name) => name,
            None => self.default_role.as_deref().ok_or(Denial::NoRole)?,
        };
        let role = self
            .role(name)
            .ok_or_else(|| Denial::UnknownRole(name.to_owned()))?;
        self.require
            .evaluate(claims)
            .map_err(|failure| Denial::condition(failure, true))?;
        role.conditions
            .evaluate(claims)
            .map_err(|failure| Denial::condition(failure, false))?;
        Ok(role)
    }
}

/// Why a request was not granted a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No role named and the environment has no `default_role`.
    NoRole,
    /// The named role does not exist in the environment.
    UnknownRole(String),
    /// A condition failed.
    Condition {
        /// The condition's key as written in the policy (`repository`, `/a/b`).
        claim: String,
        /// The condition came from `[environment.require]`.
        guardrail: bool,
        /// Human text of the expected pattern. Only for the offline `policy test` tool: the
        /// HTTP API never shows it.
        expected: String,
        /// The claim was absent (or null).
        missing: bool,
    },
}

impl Denial {
    fn condition((claim, expected, missing): (String, String, bool), guardrail: bool) -> Self {
        Self::Condition {
            claim,
            guardrail,
            expected,
            missing,
        }
    }

    /// The message a client may see: names the failing claim, never the expected pattern.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::NoRole => {
                "no role was requested and the environment has no default role".to_owned()
            }
            Self::UnknownRole(name) => {
                format!(
                    "role {:?} is not defined in this environment",
                    truncate(name)
                )
            }
            Self::Condition {
                claim,
                guardrail,
                missing,
                ..
            } => {
                let scope = if *guardrail {
                    "the environment's requirements"
                } else {
                    "the role's conditions"
                };
                if *missing {
                    format!("claim `{claim}` is missing but required by {scope}")
                } else {
                    format!("claim `{claim}` does not match {scope}")
                }
            }
        }
    }

    /// The full explanation, expected pattern included, for the offline `policy test` tool.
    #[must_use]
    pub fn detail(&self) -> String {
        match self {
            Self::Condition {
                expected,
                guardrail,
                claim,
                missing,
            } => {
                let origin = if *guardrail {
                    "[environment.require]"
                } else {
                    "[role.match]"
                };
                let found = if *missing {
                    "missing"
                } else {
                    "something else"
                };
                format!("{origin} `{claim}`: expected {expected}, claim is {found}")
            }
            other => other.public_message(),
        }
    }
}

/// Displays the public message (never the expected pattern).
impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.public_message())
    }
}

/// A role: who may get it (`conditions`) and what it mints (`grants`).
#[derive(Debug, Clone)]
pub struct Role {
    /// Name, unique in the environment, `[A-Za-z0-9._-]+`.
    pub name: String,
    /// Line of its `name` in the policy file.
    pub line: usize,
    /// Lifetime of the credentials: non-zero and at most the environment's `max_ttl`
    /// (defaults to `max_ttl` when the role names none).
    pub ttl: Duration,
    /// `[role.match]`.
    pub conditions: Conditions,
    /// At least one grant, names unique in the role.
    pub grants: Vec<Grant>,
}

/// One credential a role mints.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Name, unique in the role.
    pub name: String,
    /// Kind and its parameters.
    pub kind: GrantKind,
}

/// The kinds of credential and their parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum GrantKind {
    /// Opaque broker token reading the secrets whose paths match these globs.
    Token {
        /// Secret path globs (non-empty, no leading `/`).
        secrets: Vec<String>,
    },
    /// JWT signed by the environment's key.
    Jwt {
        /// `aud` of the minted JWT.
        audience: String,
        /// Extra claims (never a reserved name).
        claims: Map<String, Value>,
    },
    /// A `PostgreSQL` login role.
    Postgres {
        /// Name of a `[postgres.<name>]` target of the server config.
        database: String,
        /// Roles it is a member of (non-empty).
        member_of: Vec<String>,
    },
    /// A client certificate from the environment's CA.
    X509 {
        /// Subject common name.
        common_name: String,
    },
}

impl GrantKind {
    /// `"token"`, `"jwt"`, `"postgres"` or `"x509"`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Token { .. } => "token",
            Self::Jwt { .. } => "jwt",
            Self::Postgres { .. } => "postgres",
            Self::X509 { .. } => "x509",
        }
    }
}

/// Policy file names: `*.toml`, not hidden, not an editor's lock or backup file.
fn is_policy_file_name(name: &str) -> bool {
    name.len() > ".toml".len()
        && name.ends_with(".toml")
        && !name.starts_with('.')
        && !name.starts_with('#')
        && !name.starts_with('~')
}

/// `sha256:<hex>` over `count ‖ (len name ‖ name ‖ len contents ‖ contents)*`, lengths as
/// 8-byte big-endian integers, so no two different sets share an encoding.
fn version_of(sorted: &[&(String, String)]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(sorted.len() as u64).to_be_bytes());
    for (name, contents) in sorted {
        for part in [name.as_bytes(), contents.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
    }
    format!("sha256:{}", hex::encode(ctx.finish()))
}

fn one_line(text: &str) -> String {
    if text.contains(['\n', '\r']) {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        text.to_owned()
    }
}

/// Requester-supplied text echoed in a message, bounded.
fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
