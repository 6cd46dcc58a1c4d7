//! The one glob dialect of policies: `*` matches any run of characters (the empty run and
//! `/` included); every other character, `?` and `[` among them, matches only itself. A
//! pattern without `*` is an exact comparison.
//!
//! Written by hand rather than with `wildmatch`, whose `?` is a single-character wildcard
//! that the SPEC does not define: a policy author writing `?` must get a literal `?`.

/// Does `value` match `pattern`? (`*` = any run of characters including `/`; nothing else
/// is special; no `*` means exact equality.)
///
/// Runs in O(|pattern| × |value|) at worst, never backtracks exponentially.
#[must_use]
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields at least one item.
    let first = parts.next().unwrap_or_default();
    let Some(rest) = value.strip_prefix(first) else {
        return false;
    };
    let middle_and_last: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle_and_last.split_last() else {
        // No `*` at all: exact match.
        return rest.is_empty();
    };
    // The last literal must end the value, without overlapping the first one.
    let Some(mut inner) = rest.strip_suffix(last) else {
        return false;
    };
    // Every literal between two stars must appear in order; taking the leftmost occurrence
    // of each is optimal, because a star can absorb whatever it skips.
    for part in middle {
        match inner.find(part) {
            Some(at) => inner = &inner[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn pattern_without_star_is_exact() {
        assert!(glob_match("acme/web", "acme/web"));
        assert!(!glob_match("acme/web", "acme/web2"));
        assert!(!glob_match("acme/web", "acme/we"));
        assert!(!glob_match("acme/web", "Acme/web"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn star_crosses_slashes() {
        assert!(glob_match("refs/heads/*", "refs/heads/release/v1"));
        assert!(glob_match("acme/*", "acme/web"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "any/thing"));
        assert!(glob_match("deploy/*/db", "deploy/web/eu/db"));
        assert!(!glob_match("deploy/*/db", "deploy/web/eu/dbx"));
        assert!(!glob_match("refs/heads/*", "refs/tags/v1"));
    }

    #[test]
    fn question_mark_and_brackets_are_literal() {
        assert!(!glob_match("v?", "v1"));
        assert!(glob_match("v?", "v?"));
        assert!(!glob_match("[ab]", "a"));
        assert!(glob_match("[ab]*", "[ab]x"));
    }

    #[test]
    fn prefix_and_suffix_do_not_overlap() {
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("ab*ba", "abba"));
        assert!(glob_match("a*a*a", "aaa"));
        assert!(!glob_match("a*a*a", "aa"));
    }

    #[test]
    fn middle_literals_must_appear_in_order() {
        assert!(glob_match("*a*b*", "xaxbx"));
        assert!(!glob_match("*b*a*", "xaxbx"));
        assert!(glob_match("a**b", "ab"));
        assert!(glob_match("*ab*abc", "abababc"));
    }

    #[test]
    fn non_ascii_is_compared_by_characters() {
        assert!(glob_match("é*ü", "éxyü"));
        assert!(!glob_match("é*ü", "éxy"));
    }
}
