//! Command-line values that need more than clap: `NAME=VALUE` pairs, `--claims` (inline JSON
//! or `@FILE`) and the data of a secret.
//!
//! A secret's values never come from the command line, which other users see in `ps` and the
//! shell keeps in its history: `secrets put` reads them from files or standard input
//! ([`secret_data`]) and refuses a `FIELD=VALUE` without echoing the value.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::CliError;

/// Splits each `NAME=VALUE` at its first `=`; `malformed` is the error for an item without one.
pub(super) fn pairs(
    items: Vec<String>,
    malformed: fn() -> CliError,
) -> Result<Vec<(String, String)>, CliError> {
    items
        .into_iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(malformed)
        })
        .collect()
}

/// The claims of a `--claims` argument: inline JSON (`{…}`), `@FILE`, or `@-` (standard
/// input); with `bare_path` (the older form of `policy test`), any other argument is a file.
pub(super) fn claims(
    arg: &str,
    bare_path: bool,
    stdin: &mut dyn Read,
) -> Result<Map<String, Value>, CliError> {
    let from_file = |path: &Path, text: Zeroizing<String>| {
        serde_json::from_str(&text).map_err(|source| CliError::ClaimsFile {
            path: path.to_path_buf(),
            source,
        })
    };
    if arg.trim_start().starts_with('{') {
        return serde_json::from_str(arg).map_err(CliError::ClaimsInline);
    }
    match arg.strip_prefix('@') {
        Some("-") => from_file(Path::new("standard input"), read_stdin(stdin)?),
        Some(path) => from_file(Path::new(path), read_file(Path::new(path))?),
        None if bare_path => from_file(Path::new(arg), read_file(Path::new(arg))?),
        None => Err(CliError::ClaimsSyntax),
    }
}

/// The `FIELD=@-` items of `fields`: those that read standard input.
pub(super) fn reads_stdin(fields: &[String]) -> impl Iterator<Item = &str> {
    fields
        .iter()
        .filter_map(|f| f.split_once('=').filter(|(_, v)| *v == "@-"))
        .map(|(k, _)| k)
}

/// The fields of a secret: the JSON object of `data_file` (`-` = `stdin`), then each item of
/// `fields` over it. An item is `FIELD=@FILE` (the file's text) or `FIELD=@-` (all of `stdin`);
/// one trailing newline (`\n` or `\r\n`) of such a value is dropped, as `echo` and editors add
/// one. `stdin` is read at most once. A `FIELD=VALUE` is refused, naming the field only.
pub(super) fn secret_data(
    data_file: Option<&Path>,
    fields: Vec<String>,
    stdin: &mut dyn Read,
) -> Result<Map<String, Value>, CliError> {
    let from_stdin =
        usize::from(data_file.is_some_and(|f| f.as_os_str() == "-")) + reads_stdin(&fields).count();
    if from_stdin > 1 {
        return Err(CliError::StdinTwice);
    }
    let mut data = Map::new();
    if let Some(f) = data_file {
        let text = if f.as_os_str() == "-" {
            read_stdin(stdin)?
        } else {
            read_file(f)?
        };
        let v: Map<String, Value> = serde_json::from_str(&text).map_err(|_| CliError::DataFile)?;
        data.extend(v);
    }
    for f in fields {
        let f = Zeroizing::new(f);
        let (k, v) = f.split_once('=').ok_or(CliError::FieldSyntax)?;
        let Some(source) = v.strip_prefix('@') else {
            return Err(CliError::SecretOnCommandLine(k.to_string()));
        };
        let mut text = if source == "-" {
            read_stdin(stdin)?
        } else {
            std::fs::read_to_string(source)
                .map(Zeroizing::new)
                .map_err(|e| CliError::FieldFile {
                    field: k.to_string(),
                    source: e,
                })?
        };
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        data.insert(k.to_string(), Value::String(text.as_str().to_owned()));
    }
    Ok(data)
}

fn read_stdin(stdin: &mut dyn Read) -> Result<Zeroizing<String>, CliError> {
    let mut text = Zeroizing::new(String::new());
    stdin.read_to_string(&mut text).map_err(CliError::Stdin)?;
    Ok(text)
}

fn read_file(path: &Path) -> Result<Zeroizing<String>, CliError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| CliError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        let p = pairs(
            vec![
                "repository=acme/*".into(),
                "ref=a=b".into(),
                "empty=".into(),
            ],
            || CliError::ClaimGlobSyntax,
        )
        .unwrap();
        assert_eq!(
            p,
            [
                ("repository".to_string(), "acme/*".to_string()),
                ("ref".to_string(), "a=b".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        let e = pairs(vec!["repository".into()], || CliError::ClaimFilterSyntax).unwrap_err();
        assert_eq!(e.to_string(), "--claim is NAME=VALUE");
    }

    #[test]
    fn claims_are_inline_json_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("claims.json");
        std::fs::write(&file, r#"{"repository": "acme/web"}"#).unwrap();
        let expected = serde_json::json!({"repository": "acme/web"});
        let at_file = format!("@{}", file.display());
        let bare = file.display().to_string();
        for (arg, bare_path) in [
            (r#" {"repository":"acme/web"}"#, false),
            (at_file.as_str(), false),
            (at_file.as_str(), true),
            (bare.as_str(), true),
        ] {
            let got = claims(arg, bare_path, &mut NoStdin).unwrap();
            assert_eq!(Value::Object(got), expected, "{arg}");
        }
        let mut stdin = r#"{"repository": "acme/web"}"#.as_bytes();
        let got = claims("@-", false, &mut stdin).unwrap();
        assert_eq!(Value::Object(got), expected);

        let e = claims(&bare, false, &mut NoStdin).unwrap_err();
        assert!(matches!(e, CliError::ClaimsSyntax), "{e}");
        assert!(e.to_string().contains("@FILE"), "{e}");
        let e = claims("{repository", false, &mut NoStdin).unwrap_err();
        assert!(
            e.to_string().starts_with("--claims is not a JSON object"),
            "{e}"
        );
        let e = claims("@missing.json", false, &mut NoStdin).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read missing.json: "),
            "{e}"
        );
        std::fs::write(&file, "[1]").unwrap();
        let e = claims(&at_file, false, &mut NoStdin).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{} is not a JSON object", file.display())),
            "{e}"
        );
    }

    /// Standard input that must not be read.
    struct NoStdin;

    impl Read for NoStdin {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("standard input read")
        }
    }

    #[test]
    fn fields_read_files_and_override_the_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(&file, r#"{"user": "u", "password": "old"}"#).unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "new=er\n").unwrap();
        let crlf = dir.path().join("crlf");
        std::fs::write(&crlf, "two\nlines\r\n\n").unwrap();
        let data = secret_data(
            Some(&file),
            vec![
                format!("password=@{}", pw.display()),
                format!("note=@{}", crlf.display()),
            ],
            &mut NoStdin,
        )
        .unwrap();
        assert_eq!(
            Value::Object(data),
            serde_json::json!({"user": "u", "password": "new=er", "note": "two\nlines\r\n"}),
            "the file's text, less one trailing newline"
        );
    }

    #[test]
    fn a_field_or_the_data_file_reads_standard_input_once() {
        let mut stdin = "s3cret\r\n".as_bytes();
        let data = secret_data(None, vec!["password=@-".into()], &mut stdin).unwrap();
        assert_eq!(
            Value::Object(data),
            serde_json::json!({"password": "s3cret"})
        );
        let mut stdin = r#"{"a": "b"}"#.as_bytes();
        let data = secret_data(Some(Path::new("-")), Vec::new(), &mut stdin).unwrap();
        assert_eq!(Value::Object(data), serde_json::json!({"a": "b"}));
        for (file, fields) in [
            (None, vec!["a=@-".to_string(), "b=@-".to_string()]),
            (Some(Path::new("-")), vec!["a=@-".to_string()]),
        ] {
            let e = secret_data(file, fields, &mut NoStdin).unwrap_err();
            assert!(matches!(e, CliError::StdinTwice), "{e}");
        }
    }

    #[test]
    fn a_value_on_the_command_line_is_refused_without_echoing_it() {
        let e = secret_data(None, vec!["password=hunter2".into()], &mut NoStdin).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        for alternative in ["password=@FILE", "password=@-", "--data-file"] {
            assert!(msg.contains(alternative), "{msg}");
        }
        // Refused even after a valid field, before anything is sent.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "ok").unwrap();
        let e = secret_data(
            None,
            vec![format!("user=@{}", pw.display()), "password=".into()],
            &mut NoStdin,
        )
        .unwrap_err();
        assert!(
            matches!(e, CliError::SecretOnCommandLine(ref f) if f == "password"),
            "{e}"
        );
    }

    #[test]
    fn bad_data_never_quotes_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(&file, r#"["hunter2"]"#).unwrap();
        let e = secret_data(Some(&file), Vec::new(), &mut NoStdin).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--data-file must hold a JSON object of string fields"
        );
        let e = secret_data(None, vec!["hunter2".into()], &mut NoStdin).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fields are FIELD=@FILE or FIELD=@- (standard input)"
        );
        let missing = dir.path().join("missing.json");
        let e = secret_data(Some(missing.as_path()), Vec::new(), &mut NoStdin).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        // A value typed after `@` by mistake is not echoed as a file name.
        let e = secret_data(None, vec!["password=@hunter2".into()], &mut NoStdin).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("`password`"), "{e}");
    }
}
