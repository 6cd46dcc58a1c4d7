//! Claim conditions: the `[role.match]` and `[environment.require]` tables.
//!
//! Guarantees (SPEC §1):
//! - a key is a claim name taken literally (dots and slashes included), unless it starts with
//!   `/`, in which case it is an RFC 6901 JSON pointer into nested claims;
//! - a missing claim, or a JSON `null`, never matches, whatever the operator (`not` included);
//! - string, number and boolean claims are compared as text (`"42"`, `"true"`);
//! - an array or object claim matches only through `in` (arrays) or a pointer to a scalar
//!   inside it; globs, lists, `regex` and `not` never match one;
//! - `regex` is anchored at both ends;
//! - conditions are evaluated in the order they are written; the first failure is reported.

use std::borrow::Cow;
use std::fmt::Write as _;

use regex::Regex;
use serde_json::{Map, Value};

use super::glob::glob_match;

/// How one claim is tested.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A glob, or a list of globs of which any may match.
    Globs(Vec<String>),
    /// A regular expression anchored at both ends (`source` as written in the policy).
    Regex {
        /// The pattern as written.
        source: String,
        /// `^(?:source)$`.
        regex: Regex,
    },
    /// The claim is present and matches none of these globs.
    Not(Vec<String>),
    /// The claim is an array with at least one scalar element matching one of these globs.
    In(Vec<String>),
}

/// Why a condition in a policy is invalid; each message names the condition's key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// An empty key.
    #[error("a condition key must not be empty")]
    EmptyKey,
    /// A pointer key with a bad `~` escape.
    #[error("condition key `{0}` is not a valid JSON pointer (`~` must be followed by 0 or 1)")]
    BadPointer(String),
    /// A table with no operator or several.
    #[error(
        "condition `{key}`: a table needs exactly one operator (`regex`, `not` or `in`), found {found}"
    )]
    OperatorCount {
        /// The condition.
        key: String,
        /// How many entries the table has.
        found: usize,
    },
    /// `regex` with a value that is not a string.
    #[error("condition `{0}`: `regex` must be a string")]
    RegexNotString(String),
    /// A regex that does not compile.
    #[error("condition `{key}`: invalid regex: {reason}")]
    Regex {
        /// The condition.
        key: String,
        /// The meaningful line of the regex error.
        reason: String,
    },
    /// `in` with something else than a list.
    #[error("condition `{0}`: `in` must be a list of globs")]
    InNotList(String),
    /// An operator other than `regex`, `not` and `in`.
    #[error("condition `{key}`: unknown operator `{op}` (expected `regex`, `not` or `in`)")]
    UnknownOperator {
        /// The condition.
        key: String,
        /// The operator written.
        op: String,
    },
    /// A value that is neither a glob, a list nor a table.
    #[error(
        "condition `{key}`: expected a glob string, a list of globs or an operator table, found {found}"
    )]
    NotAGlob {
        /// The condition.
        key: String,
        /// The TOML type found.
        found: &'static str,
    },
    /// An empty list.
    #[error("condition `{0}`: an empty list never matches")]
    EmptyList(String),
}

impl Matcher {
    /// Parses a condition value as written in TOML (a glob, a list of globs, or a table
    /// with exactly one operator).
    pub(super) fn from_toml(key: &str, value: &toml::Value) -> Result<Self, ConditionError> {
        match value {
            toml::Value::Array(items) => Ok(Self::Globs(glob_list(key, items)?)),
            toml::Value::Table(table) => {
                let mut operators = table.iter();
                let (Some((op, arg)), None) = (operators.next(), operators.next()) else {
                    return Err(ConditionError::OperatorCount {
                        key: key.to_owned(),
                        found: table.len(),
                    });
                };
                match op.as_str() {
                    "regex" => {
                        let toml::Value::String(source) = arg else {
                            return Err(ConditionError::RegexNotString(key.to_owned()));
                        };
                        let invalid = |e: regex::Error| ConditionError::Regex {
                            key: key.to_owned(),
                            reason: regex_reason(&e),
                        };
                        // The pattern must stand on its own: `a)|(.*` would otherwise close the
                        // anchoring group and match anything.
                        Regex::new(source).map_err(invalid)?;
                        let regex = Regex::new(&format!("^(?:{source})$")).map_err(invalid)?;
                        Ok(Self::Regex {
                            source: source.clone(),
                            regex,
                        })
                    }
                    "not" => match arg {
                        toml::Value::Array(items) => Ok(Self::Not(glob_list(key, items)?)),
                        single => Ok(Self::Not(vec![scalar_glob(key, single)?])),
                    },
                    "in" => match arg {
                        toml::Value::Array(items) => Ok(Self::In(glob_list(key, items)?)),
                        _ => Err(ConditionError::InNotList(key.to_owned())),
                    },
                    other => Err(ConditionError::UnknownOperator {
                        key: key.to_owned(),
                        op: other.to_owned(),
                    }),
                }
            }
            scalar => Ok(Self::Globs(vec![scalar_glob(key, scalar)?])),
        }
    }

    /// Human text of what the matcher expects. For offline tools only: the HTTP API never
    /// shows it.
    #[must_use]
    pub fn expected(&self) -> String {
        match self {
            Self::Globs(globs) if globs.len() == 1 => quoted(&globs[0]),
            Self::Globs(globs) => format!("one of {}", quoted_list(globs)),
            Self::Regex { source, .. } => format!("a match for regex {}", quoted(source)),
            Self::Not(globs) if globs.len() == 1 => format!("anything but {}", quoted(&globs[0])),
            Self::Not(globs) => format!("none of {}", quoted_list(globs)),
            Self::In(globs) => format!("an array containing one of {}", quoted_list(globs)),
        }
    }

    /// Does the (present, non-null) claim value satisfy this matcher?
    fn matches(&self, claim: &Value) -> bool {
        match self {
            Self::In(globs) => match claim {
                Value::Array(items) => items
                    .iter()
                    .filter_map(scalar_text)
                    .any(|text| any_glob(globs, &text)),
                _ => false,
            },
            other => {
                let Some(text) = scalar_text(claim) else {
                    return false;
                };
                match other {
                    Self::Globs(globs) => any_glob(globs, &text),
                    // Anchored, and checked again: the match spans the whole value.
                    Self::Regex { regex, .. } => regex
                        .find(&text)
                        .is_some_and(|m| m.start() == 0 && m.end() == text.len()),
                    Self::Not(globs) => !any_glob(globs, &text),
                    Self::In(_) => false,
                }
            }
        }
    }
}

/// One condition: a claim key as written in the policy, and its matcher.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The key as written (`repository`, `oidc.circleci.com/vcs-origin`, `/a/b`).
    pub key: String,
    /// Line of the key in its policy file.
    pub line: usize,
    /// How the claim is tested.
    pub matcher: Matcher,
}

/// An ordered list of conditions, all of which must hold.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    entries: Vec<Condition>,
}

impl Conditions {
    pub(super) fn new(entries: Vec<Condition>) -> Self {
        Self { entries }
    }

    /// True when there is no condition (everything matches).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of conditions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The conditions in policy order.
    pub fn iter(&self) -> impl Iterator<Item = &Condition> {
        self.entries.iter()
    }

    /// Checks every condition in order against `claims`. On the first failure returns
    /// `(key as written, expected text, claim was missing or null)`.
    ///
    /// # Errors
    /// The first condition that does not hold.
    pub fn evaluate(&self, claims: &Map<String, Value>) -> Result<(), (String, String, bool)> {
        for condition in &self.entries {
            match lookup(claims, &condition.key) {
                None | Some(Value::Null) => {
                    return Err((condition.key.clone(), condition.matcher.expected(), true));
                }
                Some(value) if !condition.matcher.matches(value) => {
                    return Err((condition.key.clone(), condition.matcher.expected(), false));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl Conditions {
    /// Changes `claims` so that they satisfy these conditions where a value can be made up:
    /// a claim that fails its condition is set to an example of what it expects (a glob with
    /// each `*` read as `example`, the first of a list, a string the regex matches, an array
    /// for `in`). Top-level keys only. Returns the keys of the conditions still failing (a
    /// pointer key, a regex no example could be made for).
    ///
    /// For the dev tools: claims shaped to a role, to be tried with `policy test`.
    pub fn satisfy(&self, claims: &mut Map<String, Value>) -> Vec<String> {
        let mut failing = Vec::new();
        for condition in &self.entries {
            let holds = |claims: &Map<String, Value>| {
                lookup(claims, &condition.key)
                    .is_some_and(|v| !v.is_null() && condition.matcher.matches(v))
            };
            if holds(claims) {
                continue;
            }
            if !condition.key.starts_with('/')
                && let Some(example) = condition.matcher.example()
            {
                claims.insert(condition.key.clone(), example);
            }
            if !holds(claims) {
                failing.push(condition.key.clone());
            }
        }
        failing
    }
}

impl Matcher {
    /// A claim value this matcher accepts, when one can be made up.
    fn example(&self) -> Option<Value> {
        let from_glob = |g: &String| g.replace('*', "example");
        let value = match self {
            Self::Globs(globs) => Value::String(from_glob(globs.first()?)),
            Self::In(globs) => Value::Array(vec![Value::String(from_glob(globs.first()?))]),
            Self::Not(_) => Value::String("example".to_owned()),
            Self::Regex { source, .. } => Value::String(regex_example(source)?),
        };
        self.matches(&value).then_some(value)
    }
}

/// A string the regular expression `source` matches: literals as written, the first branch of
/// each alternation, each repetition its minimum number of times, a readable character of
/// each class. `None` when the pattern does not parse or asks for a very long string.
fn regex_example(source: &str) -> Option<String> {
    use regex_syntax::hir::{Class, Hir, HirKind};
    fn pick(chars: impl Iterator<Item = (char, char)> + Clone) -> Option<char> {
        let preferred = ['a', 'x', '0', '-', '_', '.', '/'];
        preferred
            .into_iter()
            .find(|c| chars.clone().any(|(lo, hi)| (lo..=hi).contains(c)))
            .or_else(|| chars.clone().map(|(lo, _)| lo).find(|c| !c.is_control()))
    }
    fn walk(hir: &Hir, out: &mut String) -> Option<()> {
        if out.len() > 4096 {
            return None;
        }
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => {}
            HirKind::Literal(lit) => out.push_str(std::str::from_utf8(&lit.0).ok()?),
            HirKind::Class(Class::Unicode(c)) => {
                out.push(pick(c.ranges().iter().map(|r| (r.start(), r.end())))?);
            }
            HirKind::Class(Class::Bytes(c)) => out.push(pick(
                c.ranges()
                    .iter()
                    .filter(|r| r.start().is_ascii())
                    .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f)))),
            )?),
            HirKind::Repetition(rep) => {
                for _ in 0..rep.min.min(256) {
                    walk(&rep.sub, out)?;
                }
            }
            HirKind::Capture(cap) => walk(&cap.sub, out)?,
            HirKind::Concat(parts) => {
                for part in parts {
                    walk(part, out)?;
                }
            }
            HirKind::Alternation(branches) => walk(branches.first()?, out)?,
        }
        Some(())
    }
    let hir = regex_syntax::Parser::new().parse(source).ok()?;
    let mut out = String::new();
    walk(&hir, &mut out)?;
    Some(out)
}

/// Checks a condition key: non-empty; a pointer (leading `/`) must use only `~0`/`~1`
/// escapes.
pub(super) fn validate_key(key: &str) -> Result<(), ConditionError> {
    if key.is_empty() {
        return Err(ConditionError::EmptyKey);
    }
    if key.starts_with('/') {
        let mut chars = key.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(ConditionError::BadPointer(key.to_owned()));
            }
        }
    }
    Ok(())
}

/// Finds the claim a key designates: a literal top-level claim, or an RFC 6901 pointer.
fn lookup<'c>(claims: &'c Map<String, Value>, key: &str) -> Option<&'c Value> {
    let Some(pointer) = key.strip_prefix('/') else {
        return claims.get(key);
    };
    let (first, rest) = match pointer.find('/') {
        Some(at) => (&pointer[..at], &pointer[at..]),
        None => (pointer, ""),
    };
    let first = first.replace("~1", "/").replace("~0", "~");
    let top = claims.get(&first)?;
    if rest.is_empty() {
        Some(top)
    } else {
        top.pointer(rest)
    }
}

/// Text of a scalar claim (string, number, boolean); `None` for null, arrays and objects.
fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn any_glob(globs: &[String], text: &str) -> bool {
    globs.iter().any(|g| glob_match(g, text))
}

/// A glob written as a TOML string; integers and booleans are accepted as their text
/// (`ref_protected = true` means `"true"`).
fn scalar_glob(key: &str, value: &toml::Value) -> Result<String, ConditionError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(ConditionError::NotAGlob {
            key: key.to_owned(),
            found: other.type_str(),
        }),
    }
}

fn glob_list(key: &str, items: &[toml::Value]) -> Result<Vec<String>, ConditionError> {
    if items.is_empty() {
        return Err(ConditionError::EmptyList(key.to_owned()));
    }
    items.iter().map(|item| scalar_glob(key, item)).collect()
}

/// The meaningful line of a regex error (the crate's message spans several lines).
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn quoted_list(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item:?}");
    }
    out.push(']');
    out
}
