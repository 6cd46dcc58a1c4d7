//! From TOML text to a validated [`Environment`]: every error found is collected with its
//! line, none stops the others (except a file that does not parse at all).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::conditions::{self, Condition, Conditions, Matcher};
use super::{Environment, Grant, GrantKind, PolicyError, Role, ServerCapabilities};

/// Claims a `jwt` grant may not set: the broker writes them.
const RESERVED_JWT_CLAIMS: [&str; 10] = [
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "env", "role", "src",
];

type RawConditions = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    environment: RawEnvironment,
    #[serde(default)]
    role: Vec<RawRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    name: Spanned<String>,
    issuers: Spanned<Vec<Spanned<String>>>,
    audience: Spanned<String>,
    max_ttl: Spanned<String>,
    default_role: Option<Spanned<String>>,
    #[serde(default)]
    require: RawConditions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: Spanned<String>,
    ttl: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    conditions: RawConditions,
    #[serde(default)]
    grant: Vec<RawGrant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    name: Spanned<String>,
    kind: Spanned<String>,
    secrets: Option<Spanned<Vec<Spanned<String>>>>,
    audience: Option<Spanned<String>>,
    claims: Option<Spanned<toml::Table>>,
    database: Option<Spanned<String>>,
    member_of: Option<Spanned<Vec<Spanned<String>>>>,
    common_name: Option<Spanned<String>>,
}

/// Errors of one file, with byte offsets turned into 1-based lines.
struct Ctx<'a> {
    file: &'a str,
    line_starts: Vec<usize>,
    errors: &'a mut Vec<PolicyError>,
    failed: bool,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn error(&mut self, span: Option<Range<usize>>, reason: impl AsRef<str>) {
        let line = span.map(|s| self.line(s.start));
        self.errors.push(PolicyError::new(self.file, line, reason));
        self.failed = true;
    }

    fn at<T>(&mut self, spanned: &Spanned<T>, reason: impl AsRef<str>) {
        self.error(Some(spanned.span()), reason);
    }
}

/// Parses and validates one file; `None` (with errors pushed) when it is invalid.
pub(super) fn parse_file(
    file: &str,
    contents: &str,
    check: &dyn ServerCapabilities,
    errors: &mut Vec<PolicyError>,
) -> Option<Environment> {
    let first_error = errors.len();
    let valid = parse_valid(file, contents, check, errors);
    // Report a file's errors in line order (file-level ones, without a line, first).
    errors[first_error..].sort_by_key(|e| e.line);
    valid
}

/// Is this TOML text without an `[environment]` table — another tool's file (`Cargo.toml`, a
/// server configuration), not a policy? Text that does not parse is not judged here: its
/// parse error is the better message.
pub(super) fn lacks_environment(contents: &str) -> bool {
    toml::from_str::<toml::Table>(contents).is_ok_and(|t| !t.contains_key("environment"))
}

fn parse_valid(
    file: &str,
    contents: &str,
    check: &dyn ServerCapabilities,
    errors: &mut Vec<PolicyError>,
) -> Option<Environment> {
    let line_starts = std::iter::once(0)
        .chain(contents.match_indices('\n').map(|(at, _)| at + 1))
        .collect();
    let mut ctx = Ctx {
        file,
        line_starts,
        errors,
        failed: false,
    };
    let Some(stem) = file.strip_suffix(".toml").filter(|s| !s.is_empty()) else {
        ctx.error(None, "a policy file name must be `<environment>.toml`");
        return None;
    };
    if lacks_environment(contents) {
        ctx.error(
            None,
            "not a policy file: it has no [environment] table (the policies directory holds \
             only <environment>.toml policy files: move it elsewhere)",
        );
        return None;
    }
    let raw: RawFile = match toml::from_str(contents) {
        Ok(raw) => raw,
        Err(e) => {
            ctx.error(e.span(), e.message());
            return None;
        }
    };
    let env = environment(&mut ctx, stem, raw, check);
    if ctx.failed { None } else { Some(env) }
}

fn environment(
    ctx: &mut Ctx<'_>,
    stem: &str,
    raw: RawFile,
    check: &dyn ServerCapabilities,
) -> Environment {
    let RawFile {
        environment: env,
        role: raw_roles,
    } = raw;

    let name = env.name.get_ref();
    if !valid_name(name) {
        ctx.at(
            &env.name,
            format!(
                "environment name `{name}` must be {}",
                crate::names::NAME_RULE
            ),
        );
    } else if name != stem {
        ctx.at(
            &env.name,
            format!("environment name `{name}` must match the file name (`{name}.toml`)"),
        );
    }

    if env.issuers.get_ref().is_empty() {
        ctx.at(&env.issuers, "`issuers` must list at least one issuer");
    }
    let mut issuers = Vec::new();
    for issuer in env.issuers.get_ref() {
        let url = issuer.get_ref();
        if issuers.contains(url) {
            ctx.at(issuer, format!("issuer `{url}` is listed twice"));
        } else if !check.knows_issuer(url) {
            ctx.at(
                issuer,
                format!("issuer `{url}` is not configured in the server's [[issuer]] list"),
            );
        }
        issuers.push(url.clone());
    }

    if env.audience.get_ref().trim().is_empty() {
        ctx.at(&env.audience, "`audience` must not be empty");
    }

    let max_ttl = duration(ctx, "max_ttl", &env.max_ttl);
    let require = conditions(ctx, env.require);

    let mut roles: Vec<Role> = Vec::new();
    let mut role_names = HashSet::new();
    for raw_role in raw_roles {
        let name = raw_role.name.get_ref().clone();
        if !role_names.insert(name.clone()) {
            ctx.at(&raw_role.name, format!("role `{name}` is defined twice"));
        }
        roles.push(role(ctx, raw_role, max_ttl, check));
    }

    if let Some(default) = &env.default_role
        && !role_names.contains(default.get_ref())
    {
        ctx.at(
            default,
            format!(
                "default_role `{}` is not a role of this environment",
                default.get_ref()
            ),
        );
    }

    Environment {
        name: name.clone(),
        issuers,
        audience: env.audience.into_inner(),
        max_ttl: max_ttl.unwrap_or_default(),
        default_role: env.default_role.map(Spanned::into_inner),
        require,
        roles,
        file: ctx.file.to_owned(),
    }
}

fn role(
    ctx: &mut Ctx<'_>,
    raw: RawRole,
    max_ttl: Option<Duration>,
    check: &dyn ServerCapabilities,
) -> Role {
    let name = raw.name.get_ref().clone();
    if !valid_name(&name) {
        ctx.at(
            &raw.name,
            format!("role name `{name}` must be {}", crate::names::NAME_RULE),
        );
    }

    let ttl = match &raw.ttl {
        Some(spanned) => match (duration(ctx, "ttl", spanned), max_ttl) {
            (Some(ttl), Some(max)) if ttl > max => {
                ctx.at(
                    spanned,
                    format!(
                        "role `{name}`: ttl {} is above the environment's max_ttl {}",
                        humantime::format_duration(ttl),
                        humantime::format_duration(max)
                    ),
                );
                max
            }
            (Some(ttl), _) => ttl,
            (None, _) => Duration::ZERO,
        },
        None => max_ttl.unwrap_or_default(),
    };

    let conditions = conditions(ctx, raw.conditions);

    if raw.grant.is_empty() {
        ctx.at(&raw.name, format!("role `{name}` has no [[role.grant]]"));
    }
    let mut grants: Vec<Grant> = Vec::new();
    let mut grant_names = HashSet::new();
    for raw_grant in raw.grant {
        let grant_name = raw_grant.name.get_ref().clone();
        if !grant_names.insert(grant_name.clone()) {
            ctx.at(
                &raw_grant.name,
                format!("role `{name}`: grant `{grant_name}` is defined twice"),
            );
        }
        if let Some(grant) = grant(ctx, &raw_grant, check) {
            grants.push(grant);
        }
    }

    Role {
        line: ctx.line(raw.name.span().start),
        name,
        ttl,
        conditions,
        grants,
    }
}

/// Validates one grant; `None` when it is invalid (errors pushed).
fn grant(ctx: &mut Ctx<'_>, raw: &RawGrant, check: &dyn ServerCapabilities) -> Option<Grant> {
    let errors_before = ctx.errors.len();
    let name = raw.name.get_ref().clone();
    if !valid_name(&name) {
        ctx.at(
            &raw.name,
            format!("grant name `{name}` must be {}", crate::names::NAME_RULE),
        );
    }

    let kind_name = raw.kind.get_ref().as_str();
    let allowed: &[&str] = match kind_name {
        "token" => &["secrets"],
        "jwt" => &["audience", "claims"],
        "postgres" => &["database", "member_of"],
        "x509" => &["common_name"],
        other => {
            ctx.at(
                &raw.kind,
                format!(
                    "grant `{name}`: unknown kind `{other}` (expected token, jwt, postgres or x509)"
                ),
            );
            return None;
        }
    };
    let present = [
        ("secrets", raw.secrets.as_ref().map(Spanned::span)),
        ("audience", raw.audience.as_ref().map(Spanned::span)),
        ("claims", raw.claims.as_ref().map(Spanned::span)),
        ("database", raw.database.as_ref().map(Spanned::span)),
        ("member_of", raw.member_of.as_ref().map(Spanned::span)),
        ("common_name", raw.common_name.as_ref().map(Spanned::span)),
    ];
    for (field, span) in present {
        if let Some(span) = span
            && !allowed.contains(&field)
        {
            ctx.error(
                Some(span),
                format!("grant `{name}`: `{field}` does not apply to kind = \"{kind_name}\""),
            );
        }
    }

    let kind = match kind_name {
        "token" => {
            let secrets = required_list(ctx, &name, "secrets", &raw.kind, raw.secrets.as_ref());
            for secret in raw.secrets.iter().flat_map(Spanned::get_ref) {
                if secret.get_ref().starts_with('/') {
                    ctx.at(
                        secret,
                        format!(
                            "grant `{name}`: secret path `{}` must not start with `/`",
                            secret.get_ref()
                        ),
                    );
                }
            }
            GrantKind::Token { secrets }
        }
        "jwt" => GrantKind::Jwt {
            audience: required_string(ctx, &name, "audience", &raw.kind, raw.audience.as_ref()),
            claims: raw
                .claims
                .as_ref()
                .map(|table| jwt_claims(ctx, &name, table))
                .unwrap_or_default(),
        },
        "postgres" => GrantKind::Postgres {
            database: required_string(ctx, &name, "database", &raw.kind, raw.database.as_ref()),
            member_of: {
                let groups =
                    required_list(ctx, &name, "member_of", &raw.kind, raw.member_of.as_ref());
                refuse_builtin_roles(ctx, &name, raw.member_of.as_ref());
                groups
            },
        },
        _ => GrantKind::X509 {
            common_name: required_string(
                ctx,
                &name,
                "common_name",
                &raw.kind,
                raw.common_name.as_ref(),
            ),
        },
    };

    if ctx.errors.len() > errors_before {
        return None;
    }
    let grant = Grant { name, kind };
    if let Err(reason) = check.supports_grant(&grant) {
        ctx.at(&raw.kind, format!("grant `{}`: {reason}", grant.name));
        return None;
    }
    Some(grant)
}

fn required_string(
    ctx: &mut Ctx<'_>,
    grant: &str,
    field: &str,
    kind: &Spanned<String>,
    value: Option<&Spanned<String>>,
) -> String {
    match value {
        None => {
            ctx.at(
                kind,
                format!(
                    "grant `{grant}`: kind = \"{}\" requires `{field}`",
                    kind.get_ref()
                ),
            );
            String::new()
        }
        Some(v) if v.get_ref().trim().is_empty() => {
            ctx.at(v, format!("grant `{grant}`: `{field}` must not be empty"));
            String::new()
        }
        Some(v) => v.get_ref().clone(),
    }
}

/// PostgreSQL's built-in `pg_*` roles (`pg_execute_server_program`, `pg_write_server_files`,
/// `pg_read_server_files`, `pg_read_all_data`, …) reach the database server's files and
/// programs or every table: never a job's group. (Roles that belong to one are refused by the
/// broker when it creates the login role.)
fn refuse_builtin_roles(
    ctx: &mut Ctx<'_>,
    grant: &str,
    value: Option<&Spanned<Vec<Spanned<String>>>>,
) {
    for item in value.map(Spanned::get_ref).into_iter().flatten() {
        if item.get_ref().starts_with("pg_") {
            ctx.at(
                item,
                format!(
                    "grant `{grant}`: `member_of` names the built-in role `{}`; PostgreSQL's `pg_*` roles are refused",
                    item.get_ref()
                ),
            );
        }
    }
}

fn required_list(
    ctx: &mut Ctx<'_>,
    grant: &str,
    field: &str,
    kind: &Spanned<String>,
    value: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Vec<String> {
    let Some(list) = value else {
        ctx.at(
            kind,
            format!(
                "grant `{grant}`: kind = \"{}\" requires `{field}`",
                kind.get_ref()
            ),
        );
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        ctx.at(
            list,
            format!("grant `{grant}`: `{field}` must not be empty"),
        );
    }
    let mut out = Vec::new();
    for item in list.get_ref() {
        if item.get_ref().trim().is_empty() {
            ctx.at(
                item,
                format!("grant `{grant}`: `{field}` has an empty entry"),
            );
        }
        out.push(item.get_ref().clone());
    }
    out
}

fn jwt_claims(ctx: &mut Ctx<'_>, grant: &str, table: &Spanned<toml::Table>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in table.get_ref() {
        if RESERVED_JWT_CLAIMS.contains(&key.as_str()) {
            ctx.at(
                table,
                format!("grant `{grant}`: claim `{key}` is reserved (the broker sets it)"),
            );
            continue;
        }
        match json_value(value) {
            Some(json) => {
                out.insert(key.clone(), json);
            }
            None => ctx.at(
                table,
                format!("grant `{grant}`: claim `{key}` is not representable in JSON"),
            ),
        }
    }
    out
}

/// TOML to JSON; datetimes become their RFC 3339 text; `None` for NaN or infinite floats.
fn json_value(value: &toml::Value) -> Option<Value> {
    Some(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::Number(serde_json::Number::from_f64(*f)?),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(json_value).collect::<Option<_>>()?)
        }
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| Some((k.clone(), json_value(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// Builds conditions in the order they are written (the map is sorted by key; spans give
/// the document order back).
fn conditions(ctx: &mut Ctx<'_>, raw: RawConditions) -> Conditions {
    let mut entries: Vec<(Spanned<String>, Spanned<toml::Value>)> = raw.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut out = Vec::new();
    for (key, value) in entries {
        if let Err(reason) = conditions::validate_key(key.get_ref()) {
            ctx.at(&key, reason.to_string());
            continue;
        }
        match Matcher::from_toml(key.get_ref(), value.get_ref()) {
            Ok(matcher) => out.push(Condition {
                line: ctx.line(key.span().start),
                key: key.into_inner(),
                matcher,
            }),
            Err(reason) => ctx.at(&value, reason.to_string()),
        }
    }
    Conditions::new(out)
}

/// A duration like `15m`, `1h`, `90s`: non-zero, whole seconds. `None` (error pushed) when
/// invalid.
fn duration(ctx: &mut Ctx<'_>, field: &str, text: &Spanned<String>) -> Option<Duration> {
    match humantime::parse_duration(text.get_ref()) {
        Ok(d) if d.is_zero() => {
            ctx.at(text, format!("`{field}` must be longer than zero"));
            None
        }
        Ok(d) if d.subsec_nanos() != 0 => {
            ctx.at(text, format!("`{field}` must be a whole number of seconds"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            ctx.at(
                text,
                format!(
                    "`{field}` = {:?} is not a duration like \"15m\" or \"1h\": {e}",
                    text.get_ref()
                ),
            );
            None
        }
    }
}

/// Environment, role and grant names ([`crate::names`]).
fn valid_name(name: &str) -> bool {
    crate::names::is_name(name)
}
