//! Command-line values that need more than clap: `NAME=VALUE` pairs and the data of a secret.

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

/// The fields of a secret: the JSON object of `data_file` (`-` = standard input), then the
/// `FIELD=VALUE` pairs of `fields` over it.
pub(super) fn secret_data(
    data_file: Option<&Path>,
    fields: Vec<String>,
) -> Result<Map<String, Value>, CliError> {
    let mut data = Map::new();
    if let Some(f) = data_file {
        let text = Zeroizing::new(if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(CliError::Stdin)?
        } else {
            std::fs::read_to_string(f).map_err(|source| CliError::Read {
                path: f.to_path_buf(),
                source,
            })?
        });
        let v: Map<String, Value> = serde_json::from_str(&text).map_err(|_| CliError::DataFile)?;
        data.extend(v);
    }
    for f in fields {
        let f = Zeroizing::new(f);
        let (k, v) = f.split_once('=').ok_or(CliError::FieldSyntax)?;
        data.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(data)
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
    fn fields_override_the_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(&file, r#"{"user": "u", "password": "old"}"#).unwrap();
        let data = secret_data(Some(&file), vec!["password=new=er".into()]).unwrap();
        assert_eq!(
            Value::Object(data),
            serde_json::json!({"user": "u", "password": "new=er"})
        );
    }

    #[test]
    fn bad_data_never_quotes_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(&file, r#"["hunter2"]"#).unwrap();
        let e = secret_data(Some(&file), Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--data-file must hold a JSON object of string fields"
        );
        let e = secret_data(None, vec!["hunter2".into()]).unwrap_err();
        assert_eq!(e.to_string(), "fields are FIELD=VALUE");
        let e = secret_data(Some(&dir.path().join("missing.json")), Vec::new()).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read {}: ",
                dir.path().join("missing.json").display()
            )),
            "{e}"
        );
    }
}
