//! Policy lints: valid policies that are probably not what their author meant. They warn;
//! they never make a policy set invalid. Two lints:
//!
//! **A condition names a claim the issuer's tokens do not carry.** When every issuer of an
//! environment is a CI platform known here (GitHub Actions, GitLab.com, Buildkite, CircleCI:
//! see [`CLAIMS`]), a condition of `[environment.require]` or `[role.match]` on a claim none of
//! them sends can never hold (a missing claim never matches): it is almost always a typo, and
//! the warning suggests the nearest known claim by edit distance. An environment that also
//! trusts any other issuer is not checked (that issuer may send anything).
//!
//! **A role trusting a multi-tenant issuer pins no tenant.** GitHub
//! Actions (`https://token.actions.githubusercontent.com`), GitLab.com (`https://gitlab.com`)
//! and Buildkite (`https://agent.buildkite.com`) sign the tokens of every organization on the
//! platform with one issuer; a role whose conditions would accept any of them is open to every
//! repository on the platform, an attacker's included. A role is fine for such an issuer when
//! its conditions (its `[role.match]` together with the environment's `[environment.require]`)
//! either
//! - **pin a tenant**: a condition on a claim naming the tenant that cannot match every
//!   tenant — GitHub `repository_owner`, `repository_owner_id`, `repository_id`; GitLab
//!   `namespace_id`, `project_id`; Buildkite `organization_slug`, `organization_id`: an exact
//!   value (a glob without `*`, or a regex that only matches fixed strings); GitHub
//!   `repository`, `workflow_ref` and `sub` (`repo:<owner>/…`), GitLab `namespace_path`,
//!   `project_path` and `sub` (`project_path:<group>/…`), Buildkite `sub`
//!   (`organization:<slug>:…`): also a glob or regex whose fixed beginning names the whole
//!   tenant up to its separator (`repository = "acme/*"` pins, `"acme*"` and `"*/web"` do not).
//!   A list pins when each of its globs does; `not` never pins; `*` never does. A regex pins
//!   when every match must begin with such a fixed text (its literal prefixes, worked out by
//!   `regex-syntax` on the anchored pattern the policy compiles);
//! - or **cannot match that platform's tokens at all**: it has a condition on a claim only
//!   another of these platforms sends (`repository` on GitLab.com, `project_path` on GitHub, …);
//!   a missing claim never matches.
//!
//! GitHub's `job_workflow_ref` does not pin: it names the reusable workflow that runs, which
//! any repository on GitHub may call. CircleCI is not linted: its issuer is per organization
//! (`https://oidc.circleci.com/org/<org id>`) and the broker compares `iss` exactly, so a
//! token of another organization is refused before any policy is read — the issuer itself is
//! the pin. A self-hosted GitLab or GitHub Enterprise issuer is the owner's own.

use std::fmt;

use regex_syntax::hir::literal::{ExtractKind, Extractor};

use super::{Condition, Environment, GrantKind, Matcher, PolicySet, Role};

/// Where the tenant sits in a claim's value.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The whole value is the tenant: only fixed values pin.
    Whole,
    /// `<before><tenant><sep>…`: a fixed beginning through the separator pins too.
    Prefixed {
        /// Fixed text before the tenant.
        before: &'static str,
        /// What ends the tenant.
        sep: u8,
    },
}

/// A multi-tenant CI platform: one issuer for every tenant.
#[derive(Debug)]
struct Platform {
    /// Its name in messages.
    name: &'static str,
    /// Its issuer URL.
    issuer: &'static str,
    /// What a tenant is, in messages.
    tenant: &'static str,
    /// Every tenant, in messages.
    tenants: &'static str,
    /// The claims that can pin a tenant, and where the tenant sits in them.
    pins: &'static [(&'static str, Shape)],
    /// Claims that only this platform sends (`sub` is everyone's).
    own_claims: &'static [&'static str],
    /// The claim to add, first in messages.
    claim: &'static str,
    /// What to add, in messages.
    advice: &'static str,
}

const WHOLE: Shape = Shape::Whole;
const OWNER_PATH: Shape = Shape::Prefixed {
    before: "",
    sep: b'/',
};

const PLATFORMS: [Platform; 3] = [
    Platform {
        name: "GitHub Actions",
        issuer: "https://token.actions.githubusercontent.com",
        tenant: "owner",
        tenants: "organization and user",
        pins: &[
            ("repository_owner_id", WHOLE),
            ("repository_owner", WHOLE),
            ("repository_id", WHOLE),
            ("repository", OWNER_PATH),
            ("workflow_ref", OWNER_PATH),
            (
                "sub",
                Shape::Prefixed {
                    before: "repo:",
                    sep: b'/',
                },
            ),
        ],
        own_claims: &[
            "repository_owner_id",
            "repository_owner",
            "repository_id",
            "repository",
            "workflow_ref",
            "job_workflow_ref",
        ],
        claim: "repository_owner_id",
        advice: "`repository_owner_id = \"<id>\"` (or `repository_owner = \"<owner>\"`, or `repository = \"<owner>/…\"`)",
    },
    Platform {
        name: "GitLab.com",
        issuer: "https://gitlab.com",
        tenant: "group",
        tenants: "group and user",
        pins: &[
            ("namespace_id", WHOLE),
            ("namespace_path", OWNER_PATH),
            ("project_id", WHOLE),
            ("project_path", OWNER_PATH),
            (
                "sub",
                Shape::Prefixed {
                    before: "project_path:",
                    sep: b'/',
                },
            ),
        ],
        own_claims: &[
            "namespace_id",
            "namespace_path",
            "project_id",
            "project_path",
        ],
        claim: "namespace_id",
        advice: "`namespace_id = \"<id>\"` (or `namespace_path = \"<group>\"`, or `project_path = \"<group>/…\"`)",
    },
    Platform {
        name: "Buildkite",
        issuer: "https://agent.buildkite.com",
        tenant: "organization",
        tenants: "organization",
        pins: &[
            ("organization_slug", WHOLE),
            ("organization_id", WHOLE),
            (
                "sub",
                Shape::Prefixed {
                    before: "organization:",
                    sep: b':',
                },
            ),
        ],
        own_claims: &["organization_slug", "organization_id", "pipeline_slug"],
        claim: "organization_slug",
        advice: "`organization_slug = \"<slug>\"` (or `organization_id = \"<id>\"`)",
    },
];

/// Claims only CircleCI sends start with this.
const CIRCLECI_CLAIMS: &str = "oidc.circleci.com/";

/// The claims one CI platform's tokens carry.
#[derive(Debug)]
pub struct PlatformClaims {
    /// The platform, in messages.
    pub name: &'static str,
    /// Its issuer URL, or the beginning of it (`…/org/` for CircleCI's per-organization one).
    issuer: &'static str,
    /// Whether `issuer` is a prefix followed by a tenant.
    per_tenant: bool,
    /// Every claim name its tokens may carry (optional ones included).
    pub claims: &'static [&'static str],
    /// Families of claim names (`agent_tag:<name>`).
    pub prefixes: &'static [&'static str],
}

/// Claims of every JWT these platforms issue.
const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// Known claims per platform, from the platforms' documentation and real tokens (the
/// fixtures of the tests).
pub const CLAIMS: [PlatformClaims; 4] = [
    PlatformClaims {
        name: "GitHub Actions",
        issuer: "https://token.actions.githubusercontent.com",
        per_tenant: false,
        claims: &[
            "actor",
            "actor_id",
            "base_ref",
            "check_run_id",
            "enterprise",
            "enterprise_id",
            "environment",
            "event_name",
            "head_ref",
            "job_workflow_ref",
            "job_workflow_sha",
            "ref",
            "ref_protected",
            "ref_type",
            "repository",
            "repository_id",
            "repository_owner",
            "repository_owner_id",
            "repository_visibility",
            "run_attempt",
            "run_id",
            "run_number",
            "runner_environment",
            "sha",
            "workflow",
            "workflow_ref",
            "workflow_sha",
        ],
        prefixes: &[],
    },
    PlatformClaims {
        name: "GitLab.com",
        issuer: "https://gitlab.com",
        per_tenant: false,
        claims: &[
            "ci_config_ref_uri",
            "ci_config_sha",
            "deployment_tier",
            "environment",
            "environment_action",
            "environment_protected",
            "groups_direct",
            "job_id",
            "namespace_id",
            "namespace_path",
            "pipeline_id",
            "pipeline_source",
            "project_id",
            "project_path",
            "project_visibility",
            "ref",
            "ref_path",
            "ref_protected",
            "ref_type",
            "runner_environment",
            "runner_id",
            "sha",
            "user_access_level",
            "user_email",
            "user_id",
            "user_identities",
            "user_login",
        ],
        prefixes: &[],
    },
    PlatformClaims {
        name: "Buildkite",
        issuer: "https://agent.buildkite.com",
        per_tenant: false,
        claims: &[
            "agent_id",
            "build_branch",
            "build_commit",
            "build_number",
            "build_source",
            "build_tag",
            "cluster_id",
            "cluster_name",
            "job_id",
            "organization_id",
            "organization_slug",
            "pipeline_id",
            "pipeline_slug",
            "queue_id",
            "queue_key",
            "runner_environment",
            "step_key",
        ],
        prefixes: &["agent_tag:"],
    },
    PlatformClaims {
        name: "CircleCI",
        issuer: "https://oidc.circleci.com/org/",
        per_tenant: true,
        claims: &[
            "oidc.circleci.com/context-ids",
            "oidc.circleci.com/project-id",
            "oidc.circleci.com/ssh-rerun",
            "oidc.circleci.com/vcs-origin",
            "oidc.circleci.com/vcs-ref",
        ],
        prefixes: &[],
    },
];

impl PlatformClaims {
    /// The platform whose issuer `issuer` is, if known.
    #[must_use]
    pub fn of_issuer(issuer: &str) -> Option<&'static PlatformClaims> {
        let issuer = issuer.trim_end_matches('/');
        CLAIMS.iter().find(|p| {
            if p.per_tenant {
                issuer
                    .strip_prefix(p.issuer)
                    .is_some_and(|tenant| !tenant.is_empty() && !tenant.contains('/'))
            } else {
                issuer == p.issuer
            }
        })
    }

    /// Do this platform's tokens carry `claim`?
    #[must_use]
    pub fn carries(&self, claim: &str) -> bool {
        REGISTERED.contains(&claim)
            || self.claims.contains(&claim)
            || self.prefixes.iter().any(|p| claim.starts_with(p))
    }
}

/// Which lint warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LintKind {
    /// A role trusting a multi-tenant issuer pins no tenant.
    OpenToEveryTenant,
    /// A condition names a claim the environment's issuers do not send.
    UnknownClaim,
    /// A grant's name would be exported in a variable jobpass itself reads.
    ExportedVariable,
}

/// A valid policy that is probably not what its author meant: a role open to every tenant of
/// a multi-tenant issuer, or a condition on a claim the issuer's tokens do not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// Which lint.
    pub kind: LintKind,
    /// The policy file (`prod.toml`).
    pub file: String,
    /// Line of the role's `name`, or of the condition on an unknown claim.
    pub line: usize,
    /// Environment.
    pub environment: String,
    /// Role (empty for a condition of `[environment.require]`).
    pub role: String,
    /// The multi-tenant issuer, or the environment's issuers (comma-separated); empty for a
    /// grant's variable.
    pub issuer: String,
    /// The claim to add (the platform's preferred tenant claim), or the unknown claim; empty
    /// for a grant's variable.
    pub claim: String,
    /// The whole explanation, on one line.
    pub message: String,
}

impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: warning: {}", self.file, self.line, self.message)
    }
}

/// Every warning of a policy set, by file and line.
#[must_use]
pub fn warnings(set: &PolicySet) -> Vec<LintWarning> {
    let mut out = Vec::new();
    for env in set.environments() {
        out.extend(unknown_claims(env));
        out.extend(exported_variables(env));
        for issuer in &env.issuers {
            let Some(platform) = PLATFORMS
                .iter()
                .find(|p| issuer.trim_end_matches('/') == p.issuer)
            else {
                continue;
            };
            for role in &env.roles {
                if let Some(w) = unpinned(env, role, issuer, platform) {
                    out.push(w);
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

/// Logs every warning of `set` (service log, level warn) and returns them, one line each.
pub fn log_warnings(set: &PolicySet) -> Vec<String> {
    warnings(set)
        .into_iter()
        .map(|w| {
            tracing::warn!(
                file = %w.file,
                line = w.line,
                environment = %w.environment,
                role = %w.role,
                issuer = %w.issuer,
                claim = %w.claim,
                "{}",
                w.message
            );
            w.to_string()
        })
        .collect()
}

/// The warning for `role` of `env` under `platform`'s issuer, unless it pins a tenant or
/// cannot match the platform's tokens.
fn unpinned(
    env: &Environment,
    role: &Role,
    issuer: &str,
    platform: &Platform,
) -> Option<LintWarning> {
    let conditions: Vec<&Condition> = env.require.iter().chain(role.conditions.iter()).collect();
    let mut loose = Vec::new();
    for c in &conditions {
        let claim = claim_name(&c.key);
        if is_other_platforms(platform, &claim) {
            return None; // this platform's tokens never carry it: the role cannot match them
        }
        if c.key.starts_with('/') && c.key[1..].contains('/') {
            continue; // a nested value is no tenant claim
        }
        if let Some(&(_, shape)) = platform.pins.iter().find(|(name, _)| *name == claim) {
            if pins(&c.matcher, shape) {
                return None;
            }
            loose.push(format!("`{}` does not fix the {}", c.key, platform.tenant));
        }
    }
    let mut message = format!(
        "environment `{}`, role `{}`: issuer `{issuer}` ({}) signs the tokens of every {} on the \
         platform, and no condition of the role or of [environment.require] pins one; add {} to \
         [role.match] or [environment.require]",
        env.name, role.name, platform.name, platform.tenants, platform.advice
    );
    if !loose.is_empty() {
        message.push_str(&format!(" ({})", loose.join("; ")));
    }
    Some(LintWarning {
        kind: LintKind::OpenToEveryTenant,
        file: env.file.clone(),
        line: role.line,
        environment: env.name.clone(),
        role: role.name.clone(),
        issuer: issuer.to_owned(),
        claim: platform.claim.to_owned(),
        message,
    })
}

/// A warning for each grant of `env` whose credential `jobpass exchange` would export in a
/// variable jobpass itself reads (`JOBPASS_SERVER` for a grant `server`, a configuration key):
/// the exchange refuses to hand such a credential over, so every job asking for the role
/// would fail.
fn exported_variables(env: &Environment) -> Vec<LintWarning> {
    let mut out = Vec::new();
    for role in &env.roles {
        for grant in &role.grants {
            let fields: Vec<Option<&str>> = match grant.kind {
                GrantKind::Token { .. } | GrantKind::Jwt { .. } => vec![None],
                GrantKind::Postgres { .. } => crate::names::DATABASE_FIELDS
                    .iter()
                    .map(|(_, suffix)| Some(*suffix))
                    .collect(),
                GrantKind::X509 { .. } => crate::names::CERTIFICATE_FIELDS
                    .iter()
                    .map(|(_, suffix)| Some(*suffix))
                    .collect(),
            };
            let conflict = fields.into_iter().find_map(|field| {
                let variable = crate::names::credential_variable(&grant.name, field);
                crate::config::credential_variable_conflict(&variable).map(|why| (variable, why))
            });
            if let Some((variable, why)) = conflict {
                out.push(LintWarning {
                    kind: LintKind::ExportedVariable,
                    file: env.file.clone(),
                    line: role.line,
                    environment: env.name.clone(),
                    role: role.name.clone(),
                    issuer: String::new(),
                    claim: String::new(),
                    message: format!(
                        "environment `{}`, role `{}`: grant `{}` would be exported as {variable}, \
                         {why}, so `jobpass exchange` refuses to hand it over; rename the grant",
                        env.name, role.name, grant.name
                    ),
                });
            }
        }
    }
    out
}

/// A warning for each condition of `env` on a claim that none of its issuers' platforms
/// sends; nothing when one of its issuers is not a known platform.
fn unknown_claims(env: &Environment) -> Vec<LintWarning> {
    let Some(platforms) = env
        .issuers
        .iter()
        .map(|i| PlatformClaims::of_issuer(i))
        .collect::<Option<Vec<_>>>()
    else {
        return Vec::new();
    };
    if platforms.is_empty() {
        return Vec::new();
    }
    let mut names: Vec<&str> = Vec::new();
    for p in &platforms {
        if !names.contains(&p.name) {
            names.push(p.name);
        }
    }
    let tokens = names.join(" or ");
    let conditions = env.require.iter().map(|c| (None, c)).chain(
        env.roles
            .iter()
            .flat_map(|r| r.conditions.iter().map(move |c| (Some(r), c))),
    );
    let mut out = Vec::new();
    for (role, c) in conditions {
        let claim = claim_name(&c.key);
        if platforms.iter().any(|p| p.carries(&claim)) {
            continue;
        }
        let place = match role {
            Some(r) => format!("role \"{}\"", r.name),
            None => "[environment.require]".to_owned(),
        };
        let mut message =
            format!("{place}: claim \"{claim}\" is not a claim {tokens} tokens carry");
        if let Some(near) = nearest(&claim, &platforms) {
            message.push_str(&format!(" (did you mean \"{near}\"?)"));
        }
        message.push_str("; a condition on it never holds");
        out.push(LintWarning {
            kind: LintKind::UnknownClaim,
            file: env.file.clone(),
            line: c.line,
            environment: env.name.clone(),
            role: role.map(|r| r.name.clone()).unwrap_or_default(),
            issuer: env.issuers.join(", "),
            claim,
            message,
        });
    }
    out
}

/// The known claim of `platforms` nearest to `claim` by edit distance, when near enough to be
/// a typo of it (at most a quarter of its length, between 1 and 3 edits).
fn nearest(claim: &str, platforms: &[&PlatformClaims]) -> Option<&'static str> {
    let most = (claim.chars().count() / 4).clamp(1, 3);
    platforms
        .iter()
        .flat_map(|p| p.claims.iter().chain(REGISTERED.iter()))
        .map(|known| (strsim::levenshtein(claim, known), *known))
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, known)| known)
}

/// The claim a condition key tests: the key itself, or the first segment of a pointer.
fn claim_name(key: &str) -> String {
    match key.strip_prefix('/') {
        Some(pointer) => pointer
            .split('/')
            .next()
            .unwrap_or_default()
            .replace("~1", "/")
            .replace("~0", "~"),
        None => key.to_owned(),
    }
}

/// Is `claim` sent only by another platform than `platform`?
fn is_other_platforms(platform: &Platform, claim: &str) -> bool {
    claim.starts_with(CIRCLECI_CLAIMS)
        || PLATFORMS
            .iter()
            .filter(|p| p.issuer != platform.issuer)
            .any(|p| p.own_claims.contains(&claim))
}

/// Can this matcher match only a bounded set of tenants?
fn pins(matcher: &Matcher, shape: Shape) -> bool {
    match matcher {
        Matcher::Globs(globs) | Matcher::In(globs) => globs.iter().all(|g| glob_pins(g, shape)),
        Matcher::Regex { source, .. } => regex_pins(source, shape),
        Matcher::Not(_) => false,
    }
}

/// A glob pins when it is exact, or when its text before the first `*` fixes the tenant.
fn glob_pins(glob: &str, shape: Shape) -> bool {
    match glob.split_once('*') {
        None => true,
        Some((prefix, _)) => prefix_pins(prefix.as_bytes(), shape),
    }
}

/// A regex pins when it matches only fixed strings, or when every match begins with a fixed
/// text that fixes the tenant. Read on the anchored pattern the policy compiles.
fn regex_pins(source: &str, shape: Shape) -> bool {
    let Ok(hir) = regex_syntax::parse(&format!("^(?:{source})$")) else {
        return false;
    };
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    // None: the matches begin with anything at all.
    let Some(literals) = seq.literals() else {
        return false;
    };
    literals
        .iter()
        .all(|l| l.is_exact() || prefix_pins(l.as_bytes(), shape))
}

/// Does a fixed beginning name the whole tenant, through its separator?
fn prefix_pins(prefix: &[u8], shape: Shape) -> bool {
    match shape {
        Shape::Whole => false,
        Shape::Prefixed { before, sep } => prefix
            .strip_prefix(before.as_bytes())
            .and_then(|rest| rest.iter().position(|&b| b == sep))
            .is_some_and(|at| at > 0),
    }
}

#[cfg(test)]
mod tests;
