//! Secrets of an environment: validated paths, versions sealed under the environment's data
//! key, admin writes, and the read with a broker token.
//!
//! Guarantees:
//! - every path is a [`SecretPath`] before anything is stored or read;
//! - a version is sealed with its path and number as associated data, so a ciphertext moved
//!   to another path or version does not open;
//! - every read with a broker token, allowed or denied, is one `secret_read` audit record, and
//!   a read or write whose record cannot be written is refused (fail closed);
//! - a write's audit record is written before its transaction commits;
//! - a decrypted version is held as [`SecretFields`]: each value a [`SecretString`], zeroized
//!   on drop, `Debug` printing field names only; the values leave it only through
//!   [`SecretFields::exposed`], when the HTTP answer is serialised.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::audit::{AuditError, AuditEvent, MaskedCredential, Outcome};
use crate::crypto::{CryptoError, token_digest};
use crate::error::ApiError;
use crate::grants::{GrantError, grant_actor};
use crate::policy::glob_match;
use crate::store::{SecretRow, StoreError};

/// Longest secret path, bytes.
const MAX_PATH: usize = 512;

/// A secret path: segments of letters, digits and `-_.@+=` separated by single slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPath(String);

impl SecretPath {
    /// `path` if it is a valid secret path.
    pub fn parse(path: &str) -> Result<SecretPath, SecretError> {
        let ok = !path.is_empty()
            && path.len() <= MAX_PATH
            && !path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./@+=".contains(c));
        if ok {
            Ok(SecretPath(path.to_string()))
        } else {
            Err(SecretError::InvalidPath)
        }
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Record identity of one version (associated data of its ciphertext).
    pub fn record_id(&self, version: i64) -> String {
        format!("{}#{version}", self.0)
    }
}

/// Why a secret operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The path is not a [`SecretPath`].
    #[error("a secret path is segments of letters, digits and -_.@+= separated by single slashes")]
    InvalidPath,
    /// The environment asked for is not a name (never echoed).
    #[error("an environment name is {rule}", rule = crate::names::NAME_RULE)]
    InvalidEnvironmentName,
    /// The caller is over a rate limit.
    #[error("{0}")]
    RateLimited(crate::limits::Limited),
    /// A write's data is not a non-empty object of string fields.
    #[error("`data` must be a non-empty object of string fields")]
    InvalidData,
    /// No environment of that name in the policies.
    #[error("{}", crate::names::unknown_environment(.0))]
    UnknownEnvironment(String),
    /// Nothing at that path.
    #[error("no secret at `{0}`")]
    NotFound(String),
    /// No such version at that path.
    #[error("no version {version} of the secret at `{path}`")]
    NoVersion {
        /// Path.
        path: String,
        /// Version asked for.
        version: i64,
    },
    /// The token's grant does not cover the path in that environment.
    #[error("this token may not read `{path}` in environment `{env}`")]
    OutOfScope {
        /// Environment.
        env: String,
        /// Path.
        path: String,
    },
    /// The broker token does not stand.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or opening failed (or the keys were destroyed).
    #[error(transparent)]
    Keys(#[from] CryptoError),
    /// The audit log could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A decrypted version is not the JSON it was written as.
    #[error("a stored secret does not decode: {0}")]
    Decode(#[source] FieldsDecodeError),
}

/// A decrypted version is not a JSON object of string fields. Only the position is kept:
/// the parser's own message can quote the value it stumbled on.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON object of string fields (line {line}, column {column})")]
pub struct FieldsDecodeError {
    /// Line of the error in the decrypted text.
    pub line: usize,
    /// Column of the error.
    pub column: usize,
}

/// The fields of a decrypted secret version: names in the clear (they are stored in the clear
/// too), values as [`SecretString`]s, zeroized when this is dropped. `Debug` prints the field
/// names only. The values leave this type only through [`SecretFields::exposed`], which the
/// routes serialise into their answer.
///
/// Decoding parses the decrypted text straight into the secret values; the parser copies a
/// value containing JSON escapes through a scratch buffer of its own, which it does not zero.
pub struct SecretFields(BTreeMap<String, SecretString>);

impl SecretFields {
    /// Decodes a decrypted version: a JSON object of string fields.
    pub fn from_json(plain: &[u8]) -> Result<SecretFields, FieldsDecodeError> {
        serde_json::from_slice(plain)
            .map(SecretFields)
            .map_err(|e| FieldsDecodeError {
                line: e.line(),
                column: e.column(),
            })
    }

    /// The field names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// One field's value.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// The fields with their values, to serialise into an answer (a JSON object of strings).
    /// It has no `Debug`: it is for a serializer only.
    pub fn exposed(&self) -> ExposedFields<'_> {
        ExposedFields(self)
    }
}

impl std::fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SecretFields")
            .field(&self.names().collect::<Vec<_>>())
            .finish()
    }
}

/// [`SecretFields`] exposed for serialisation: serialises as `{"field": "value", …}`.
pub struct ExposedFields<'a>(&'a SecretFields);

impl Serialize for ExposedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.0.len()))?;
        for (name, value) in &self.0.0 {
            map.serialize_entry(name, value.expose_secret())?;
        }
        map.end()
    }
}

/// A secret version read with a broker token.
#[derive(Debug)]
pub struct SecretRead {
    /// Path in the environment.
    pub path: String,
    /// Version number.
    pub version: i64,
    /// Unix seconds when this version was written.
    pub created_at: i64,
    /// The secret's fields.
    pub data: SecretFields,
}

/// A version written.
#[derive(Debug)]
pub struct SecretWritten {
    /// Its number.
    pub version: i64,
    /// Its field names (never values).
    pub fields: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl App {
    /// Reads a secret with a broker token — the native route and the Vault-compatible KV reads
    /// both come here: the token must be live, of environment `env`, and one of its grant's
    /// globs must cover `path`. `version` None means the latest. `token_header` names where
    /// the token is expected (for the error message). The answer is computed here because it
    /// is what the audit record says.
    pub async fn read_secret(
        &self,
        env: &str,
        path: &str,
        version: Option<i64>,
        token: Option<SecretString>,
        token_header: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<SecretRead, ApiError> {
        // Names first: nothing longer than a short identifier or a bounded path is recorded.
        let path = match (crate::names::is_name(env), SecretPath::parse(path)) {
            (true, Ok(path)) => path,
            (false, _) => {
                return Err(self.refused_read(source, &SecretError::InvalidEnvironmentName));
            }
            (true, Err(e)) => return Err(self.refused_read(source, &e)),
        };
        let mut ev = AuditEvent::new("secret_read", Outcome::Denied);
        ev.environment = Some(env.to_string());
        ev.details
            .insert("path".into(), Value::String(path.as_str().to_string()));
        let result = self
            .read_secret_with(env, &path, version, token, token_header, &mut ev)
            .await;
        // A refusal is its own line when the token is known (live, or revoked or expired:
        // a stolen token used after an incident is worth a line) and within its lease's
        // record budget; otherwise, or over a rate, it is counted.
        if let Err(e) = &result {
            let own_line = !matches!(e, SecretError::RateLimited(_))
                && ev
                    .lease_id
                    .as_deref()
                    .is_some_and(|lease| self.limits.rates.own_record(lease));
            if !own_line {
                return Err(self.refused_read(source, e));
            }
        }
        let result = result.map_err(|e| ApiError::from(&e));
        match &result {
            Ok(_) => {
                ev.outcome = Outcome::Success;
                self.metrics.secret_read("success");
            }
            Err(e) => {
                ev.reason = Some(e.to_string());
                self.metrics.secret_read(e.code());
            }
        }
        self.audit.append(ev).await?;
        result
    }

    /// The answer to a read refused before (or without) a live token: counted into the
    /// aggregate refusal records.
    fn refused_read(&self, source: Option<std::net::IpAddr>, e: &SecretError) -> ApiError {
        let answer = ApiError::from(e);
        self.metrics.secret_read(answer.code());
        self.note_refusal(source, "secret_read", &answer);
        answer
    }

    async fn read_secret_with(
        &self,
        env: &str,
        path: &SecretPath,
        version: Option<i64>,
        token: Option<SecretString>,
        token_header: &str,
        ev: &mut AuditEvent,
    ) -> Result<SecretRead, SecretError> {
        let token = token.ok_or_else(|| GrantError::Missing(token_header.to_string()))?;
        ev.credentials.push(MaskedCredential::new(
            &self.audit_key,
            "bearer",
            "token",
            token.expose_secret(),
        ));
        let digest = token_digest(&self.token_key, token.expose_secret());
        let found = self
            .store
            .token_secret(&digest, env, path.as_str(), version)
            .await?;
        // A known token is on record with its lease, live or not.
        if let Some((grant, _)) = &found {
            ev.actor = grant_actor(grant);
            ev.role = Some(grant.role.clone());
            ev.lease_id = Some(grant.lease_id.clone());
        }
        let (grant, secret) = self.check_live(found)?;
        self.limits
            .rates
            .check_subject(
                crate::limits::Class::Read,
                (grant.issuer.as_str(), grant.subject.as_str()),
            )
            .map_err(SecretError::RateLimited)?;
        if grant.env != env || !grant.scope.iter().any(|g| glob_match(g, path.as_str())) {
            return Err(SecretError::OutOfScope {
                env: env.to_string(),
                path: path.as_str().to_string(),
            });
        }
        let (row, live) = secret.ok_or_else(|| match version {
            None => SecretError::NotFound(path.as_str().to_string()),
            Some(version) => SecretError::NoVersion {
                path: path.as_str().to_string(),
                version,
            },
        })?;
        let plain = self
            .keyring
            .open_checked(
                env,
                ("secrets", &path.record_id(row.version)),
                row.key_version,
                live,
                &row.sealed,
            )
            .await?;
        let data = SecretFields::from_json(&plain).map_err(SecretError::Decode)?;
        ev.details.insert("version".into(), json!(row.version));
        Ok(SecretRead {
            path: path.as_str().to_string(),
            version: row.version,
            created_at: row.created_at,
            data,
        })
    }

    /// Writes a new version of the secret at `path` (its fields must all be strings); `ev` is
    /// the admin action's audit record, written before the commit.
    pub async fn put_secret(
        &self,
        env: &str,
        path: &str,
        data: Map<String, Value>,
        mut ev: AuditEvent,
    ) -> Result<SecretWritten, SecretError> {
        self.known_env(env)?;
        let path = SecretPath::parse(path)?;
        if data.is_empty() || data.values().any(|v| !v.is_string()) {
            return Err(SecretError::InvalidData);
        }
        let fields: Vec<String> = data.keys().cloned().collect();
        let plain = zeroize::Zeroizing::new(Value::Object(data).to_string());
        let now = self.clock.unix();
        let sealer = self.keyring.sealer(env).await?;
        let mut tx = self.store.begin().await?;
        let version = tx.next_secret_version(env, path.as_str()).await?;
        let (key_version, sealed) =
            sealer.seal("secrets", &path.record_id(version), plain.as_bytes())?;
        tx.insert_secret(
            env,
            path.as_str(),
            &SecretRow {
                version,
                fields: fields.clone(),
                key_version,
                sealed,
                created_at: now,
            },
        )
        .await?;
        ev.event = "secret_put".into();
        ev.details
            .insert("path".into(), Value::String(path.as_str().to_string()));
        ev.details.insert("version".into(), json!(version));
        ev.details.insert("fields".into(), json!(fields));
        self.audit.append(ev).await?;
        tx.commit().await?;
        Ok(SecretWritten {
            version,
            fields,
            created_at: now,
        })
    }

    /// The versions of the secret at `path`, newest first (metadata only; never values).
    pub async fn secret_versions(
        &self,
        env: &str,
        path: &str,
        mut ev: AuditEvent,
    ) -> Result<Vec<SecretRow>, SecretError> {
        let rows = self.store.secret_versions(env, path).await?;
        ev.details
            .insert("path".into(), Value::String(path.to_string()));
        self.audit.append(ev).await?;
        if rows.is_empty() {
            return Err(SecretError::NotFound(path.to_string()));
        }
        Ok(rows)
    }

    /// Paths of the environment's secrets that start with `prefix`.
    pub async fn secret_paths(
        &self,
        env: &str,
        prefix: &str,
        ev: AuditEvent,
    ) -> Result<Vec<String>, SecretError> {
        let paths = self.store.secret_paths(env, prefix).await?;
        self.audit.append(ev).await?;
        Ok(paths)
    }

    /// Deletes every version of the secret at `path`; returns how many there were.
    pub async fn delete_secret(
        &self,
        env: &str,
        path: &str,
        mut ev: AuditEvent,
    ) -> Result<u64, SecretError> {
        ev.event = "secret_delete".into();
        ev.details
            .insert("path".into(), Value::String(path.to_string()));
        let mut tx = self.store.begin().await?;
        let n = tx.delete_secret(env, path).await?;
        if n == 0 {
            return Err(SecretError::NotFound(path.to_string()));
        }
        ev.details.insert("versions".into(), json!(n));
        self.audit.append(ev).await?;
        tx.commit().await?;
        Ok(n)
    }

    fn known_env(&self, env: &str) -> Result<(), SecretError> {
        if self.policies.load().environment(env).is_none() {
            return Err(SecretError::UnknownEnvironment(env.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::{SecretFields, SecretPath, SecretRead};

    #[test]
    fn paths_are_plain_segments() {
        for ok in ["app/db", "a", "team-1/svc_2/key.v1", "x@y+z=w"] {
            assert!(SecretPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/app", "app/", "a//b", "a/./b", "a/../b", "..", "a b", "a\u{0}b", "ä",
        ] {
            assert!(SecretPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SecretPath::parse(&"a".repeat(513)).is_err());
        let p = SecretPath::parse("app/db").unwrap();
        assert_eq!(p.record_id(3), "app/db#3");
    }

    #[test]
    fn decrypted_fields_print_their_names_only() {
        let plain = br#"{"password": "hunter2-\u0041", "user": "app-user-7"}"#;
        let fields = SecretFields::from_json(plain).unwrap();
        let read = SecretRead {
            path: "app/db".into(),
            version: 3,
            created_at: 0,
            data: fields,
        };
        let dbg = format!("{read:?} {read:#?}");
        for value in ["hunter2", "app-user-7"] {
            assert!(!dbg.contains(value), "{dbg}");
        }
        assert!(
            dbg.contains(r#"SecretFields(["password", "user"])"#),
            "{dbg}"
        );
        // What a read answers: the values, exposed only to the serializer.
        assert_eq!(
            serde_json::to_value(read.data.exposed()).unwrap(),
            serde_json::json!({"password": "hunter2-A", "user": "app-user-7"})
        );
        assert_eq!(
            read.data.get("user").map(ExposeSecret::expose_secret),
            Some("app-user-7")
        );
    }

    #[test]
    fn undecodable_fields_are_not_quoted() {
        for plain in [
            &br#"{"pin": 9876543210}"#[..],
            br#"["secret-in-array"]"#,
            br#"{"a": "unterminated-secret"#,
        ] {
            let e = SecretFields::from_json(plain).unwrap_err().to_string();
            assert!(e.starts_with("not a JSON object of string fields"), "{e}");
            for value in ["9876543210", "secret-in-array", "unterminated-secret"] {
                assert!(!e.contains(value), "{e}");
            }
        }
    }
}
