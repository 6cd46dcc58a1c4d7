//! The names callers send: environment, role and grant names are short identifiers
//! (`[A-Za-z0-9._-]`, 1 to [`MAX_NAME_LEN`] characters). Requests are checked against this
//! before anything is audited or echoed, so a name can never carry more than a short,
//! printable string into a record or an answer.

/// Longest environment, role or grant name.
pub const MAX_NAME_LEN: usize = 64;

/// What a name must look like, for error messages.
pub const NAME_RULE: &str = "1 to 64 characters of A-Z a-z 0-9 . _ -";

/// Whether `name` is a valid environment, role or grant name.
#[must_use]
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The message of every answer refusing an environment the policies do not define (the
/// exchange's `400 invalid_request`, the others' `404 not_found`): it names the environment and
/// where the known ones are listed.
#[must_use]
pub fn unknown_environment(env: &str) -> String {
    format!("unknown environment `{env}` (GET /v1/envs lists the environments)")
}

/// The variable `jobpass exchange` exports a grant's credential in: `JOBPASS_` and the grant's
/// name in capitals, every character other than a letter or digit as `_`; `field` (`USERNAME`,
/// `CERTIFICATE`, …) appended for the parts of database and certificate credentials.
#[must_use]
pub fn credential_variable(grant: &str, field: Option<&str>) -> String {
    let mut name: String = grant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if let Some(field) = field {
        name.push('_');
        name.push_str(field);
    }
    format!("JOBPASS_{name}")
}

/// The parts of a database credential: (field of the answer, suffix of its variable).
pub const DATABASE_FIELDS: &[(&str, &str)] = &[
    ("username", "USERNAME"),
    ("password", "PASSWORD"),
    ("host", "HOST"),
    ("port", "PORT"),
    ("database", "DATABASE"),
];

/// The parts of a certificate credential: (field of the answer, suffix of its variable).
pub const CERTIFICATE_FIELDS: &[(&str, &str)] = &[
    ("certificate_pem", "CERTIFICATE"),
    ("private_key_pem", "PRIVATE_KEY"),
    ("ca_pem", "CA"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_identifiers() {
        assert!(is_name("prod"));
        assert!(is_name("deploy-web_2.x"));
        assert!(is_name(&"a".repeat(MAX_NAME_LEN)));
        assert!(!is_name(&"a".repeat(MAX_NAME_LEN + 1)));
        assert!(!is_name(""));
        assert!(!is_name("prod\n"));
        assert!(!is_name("a b"));
        assert!(!is_name("ünï"));
        assert!(!is_name("a/b"));
    }
}
