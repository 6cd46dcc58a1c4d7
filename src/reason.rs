//! The reason an operator gives for a security action — revocation, freeze, unfreeze, key
//! destruction — recorded with it in the audit log.
//!
//! Guarantees:
//! - a [`Reason`] is trimmed and never blank: an action without one is refused before it
//!   changes anything.

use std::fmt;

/// A reason with something in it besides blanks, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

/// No reason was given, or only blanks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a non-empty `reason` is required")]
pub struct NoReason;

impl Reason {
    /// `reason`, trimmed, if anything is left of it.
    pub fn required(reason: Option<String>) -> Result<Reason, NoReason> {
        reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .map(Reason)
            .ok_or(NoReason)
    }

    /// The reason's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_and_must_not_be_blank() {
        assert_eq!(
            Reason::required(Some("  incident 42 ".into()))
                .expect("reason")
                .as_str(),
            "incident 42"
        );
        for r in [None, Some(String::new()), Some(" \t".into())] {
            assert_eq!(
                Reason::required(r).expect_err("refused").to_string(),
                "a non-empty `reason` is required"
            );
        }
    }
}
