//! The admin API client: secrets, leases, revocation, freezes and keys over HTTPS with a client
//! certificate from the admin CA, plus the unauthenticated health check.
//!
//! Every operation returns the broker's [`Answer`]; what to print of it is the caller's choice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openidconnect::http::Method;
use serde_json::{Map, Value, json};

use super::error::CliError;
use super::https::{Answer, Https};

/// Where the admin API is and how to reach it.
#[derive(Debug, Clone)]
pub struct AdminEndpoint {
    /// Broker URL.
    pub server: String,
    /// CA certificate (PEM) to trust for the broker (default: the public roots).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) from the admin CA.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// Filters of a lease listing; every one optional.
#[derive(Debug, Clone, Default)]
pub struct LeaseQuery {
    /// Environment.
    pub environment: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Only live leases.
    pub active: bool,
    /// Source claims (name, exact value).
    pub claims: Vec<(String, String)>,
    /// Page size.
    pub limit: Option<u32>,
    /// Last lease id of the previous page.
    pub after: Option<String>,
}

/// Which live leases a revocation ends: those matching every field given.
#[derive(Debug, Clone, Default)]
pub struct RevokeSelector {
    /// One lease.
    pub lease_id: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Issuer of the source token.
    pub issuer: Option<String>,
    /// Subject of the source token.
    pub subject: Option<String>,
    /// Source claims (name, glob where `*` matches any run of characters).
    pub claims: Vec<(String, String)>,
    /// Policy version that allowed the leases.
    pub policy_version: Option<String>,
    /// Issued at or after (RFC 3339).
    pub issued_after: Option<String>,
    /// Issued at or before (RFC 3339).
    pub issued_before: Option<String>,
    /// Every live lease.
    pub all: bool,
}

impl RevokeSelector {
    /// The selector as the admin API takes it.
    fn to_json(&self) -> Map<String, Value> {
        let mut sel = Map::new();
        for (k, v) in [
            ("lease_id", &self.lease_id),
            ("environment", &self.environment),
            ("role", &self.role),
            ("issuer", &self.issuer),
            ("subject", &self.subject),
            ("policy_version", &self.policy_version),
            ("issued_after", &self.issued_after),
            ("issued_before", &self.issued_before),
        ] {
            if let Some(v) = v {
                sel.insert(k.into(), Value::String(v.clone()));
            }
        }
        if !self.claims.is_empty() {
            let claims: Map<String, Value> = self
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            sel.insert("claims".into(), Value::Object(claims));
        }
        if self.all {
            sel.insert("all".into(), Value::Bool(true));
        }
        sel
    }
}

/// A client of one broker's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    server: String,
    https: Https,
}

/// Percent-encodes each `/`-separated segment of a path.
fn enc(s: &str) -> String {
    s.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~@+=".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl AdminClient {
    /// A client of the broker at `endpoint`, presenting its client certificate.
    ///
    /// # Errors
    /// [`CliError::NoClientCertificate`] without a certificate and key; unreadable or invalid
    /// PEM files, a key that is not the certificate's.
    pub fn new(endpoint: &AdminEndpoint) -> Result<Self, CliError> {
        let (Some(cert), Some(key)) = (&endpoint.cert, &endpoint.key) else {
            return Err(CliError::NoClientCertificate);
        };
        let https = Https::new(endpoint.ca.as_deref(), Some(cert), Some(key))?;
        Ok(Self {
            server: endpoint.server.trim_end_matches('/').to_owned(),
            https,
        })
    }

    /// The text of an error answer, with the broker's environments when it says that `env`
    /// is unknown.
    pub async fn explain(&self, env: Option<&str>, answer: &Answer) -> String {
        self.https.explain(&self.server, env, answer).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, CliError> {
        let url = format!("{}/v1/admin/{path}", self.server);
        self.https.send(method, &url, body).await
    }

    /// Stores a new version of the secret at `path` with these fields.
    pub async fn put_secret(
        &self,
        env: &str,
        path: &str,
        data: Map<String, Value>,
    ) -> Result<Answer, CliError> {
        self.call(
            Method::PUT,
            &format!("secrets/{}/{}", enc(env), enc(path)),
            Some(json!({"data": data})),
        )
        .await
    }

    /// A secret's metadata (versions, field names); never its values.
    pub async fn secret_meta(&self, env: &str, path: &str) -> Result<Answer, CliError> {
        self.call(
            Method::GET,
            &format!("secrets/{}/{}", enc(env), enc(path)),
            None,
        )
        .await
    }

    /// The secret paths of `env` starting with `prefix`.
    pub async fn list_secrets(&self, env: &str, prefix: &str) -> Result<Answer, CliError> {
        self.call(
            Method::GET,
            &format!("secrets/{}?prefix={}", enc(env), enc(prefix)),
            None,
        )
        .await
    }

    /// Deletes every version of a secret.
    pub async fn delete_secret(&self, env: &str, path: &str) -> Result<Answer, CliError> {
        self.call(
            Method::DELETE,
            &format!("secrets/{}/{}", enc(env), enc(path)),
            None,
        )
        .await
    }

    /// One page of leases, newest first.
    pub async fn list_leases(&self, query: &LeaseQuery) -> Result<Answer, CliError> {
        let mut q: Vec<(String, String)> = Vec::new();
        if let Some(e) = &query.environment {
            q.push(("environment".into(), e.clone()));
        }
        if let Some(r) = &query.role {
            q.push(("role".into(), r.clone()));
        }
        if query.active {
            q.push(("active".into(), "true".into()));
        }
        for (k, v) in &query.claims {
            q.push((format!("claim.{k}"), v.clone()));
        }
        if let Some(l) = query.limit {
            q.push(("limit".into(), l.to_string()));
        }
        if let Some(x) = &query.after {
            q.push(("after".into(), x.clone()));
        }
        let qs = serde_urlencoded::to_string(&q)?;
        self.call(Method::GET, &format!("leases?{qs}"), None).await
    }

    /// Revokes every live lease matching `selector`.
    ///
    /// # Errors
    /// [`CliError::EmptySelector`] (said in the command line's terms, before anything is
    /// sent), or the broker's refusal.
    pub async fn revoke(
        &self,
        selector: &RevokeSelector,
        reason: &str,
    ) -> Result<Answer, CliError> {
        let sel = selector.to_json();
        if sel.is_empty() {
            return Err(CliError::EmptySelector);
        }
        self.call(
            Method::POST,
            "revoke",
            Some(json!({"selector": sel, "reason": reason})),
        )
        .await
    }

    /// Freezes (`frozen`) or unfreezes an environment.
    pub async fn set_frozen(
        &self,
        env: &str,
        frozen: bool,
        reason: &str,
    ) -> Result<Answer, CliError> {
        let op = if frozen { "freeze" } else { "unfreeze" };
        self.call(
            Method::POST,
            &format!("environments/{}/{op}", enc(env)),
            Some(json!({"reason": reason})),
        )
        .await
    }

    /// A new data-key version for `env`.
    pub async fn rotate_key(&self, env: &str) -> Result<Answer, CliError> {
        self.call(Method::POST, &format!("keys/{}/rotate", enc(env)), None)
            .await
    }

    /// Re-encrypts `env`'s older records under its current key version.
    pub async fn rewrap(&self, env: &str) -> Result<Answer, CliError> {
        self.call(Method::POST, &format!("keys/{}/rewrap", enc(env)), None)
            .await
    }

    /// Destroys every key version of `env` (`confirm` repeats its name). Irreversible.
    pub async fn destroy_keys(
        &self,
        env: &str,
        reason: &str,
        confirm: &str,
    ) -> Result<Answer, CliError> {
        self.call(
            Method::POST,
            &format!("keys/{}/destroy", enc(env)),
            Some(json!({"reason": reason, "confirm": confirm})),
        )
        .await
    }
}

/// What `GET /healthz` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A success status within the time limit.
    Healthy,
    /// Anything else, and why (a status, an error, or no answer in time).
    Unhealthy(String),
}

/// How long [`health`] waits for an answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `GET /healthz` of the broker at `server`, trusting `ca` (or the public roots).
///
/// # Errors
/// Only when the client cannot be built (unreadable or invalid CA file); an unreachable or
/// failing broker is [`Health::Unhealthy`].
pub async fn health(server: &str, ca: Option<&Path>) -> Result<Health, CliError> {
    let https = Https::new(ca, None, None)?;
    let url = format!("{}/healthz", server.trim_end_matches('/'));
    let answer = tokio::time::timeout(HEALTH_TIMEOUT, https.client.get(&url).send()).await;
    Ok(match answer {
        Ok(Ok(r)) if r.status().is_success() => Health::Healthy,
        Ok(Ok(r)) => Health::Unhealthy(r.status().to_string()),
        Ok(Err(e)) => Health::Unhealthy(https.failure(&url, e).to_string()),
        Err(_) => Health::Unhealthy("no answer within 3 s".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_and_slashes_kept() {
        assert_eq!(enc("deploy/web api/x?y"), "deploy/web%20api/x%3Fy");
        assert_eq!(enc("a-b_c.d~e@f+g=h"), "a-b_c.d~e@f+g=h");
    }

    #[test]
    fn a_selector_names_only_what_is_given() {
        let sel = RevokeSelector {
            environment: Some("prod".into()),
            claims: vec![
                ("repository".into(), "acme/*".into()),
                ("ref".into(), "refs/heads/main".into()),
            ],
            all: false,
            ..RevokeSelector::default()
        };
        assert_eq!(
            Value::Object(sel.to_json()),
            json!({
                "environment": "prod",
                "claims": {"repository": "acme/*", "ref": "refs/heads/main"}
            })
        );
        let all = RevokeSelector {
            all: true,
            ..RevokeSelector::default()
        };
        assert_eq!(Value::Object(all.to_json()), json!({"all": true}));
    }

    #[tokio::test]
    async fn an_empty_selector_is_refused_in_command_line_terms_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::tls::generate_pki(&[], &crate::clock::SystemClock).unwrap();
        let (cert, key) = pki.client(crate::tls::AdminRole::Security).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, secrecy::ExposeSecret::expose_secret(key)).unwrap();
        // Nothing listens on port 1: an attempt to send would fail differently.
        let client = AdminClient::new(&AdminEndpoint {
            server: "https://127.0.0.1:1".into(),
            ca: None,
            cert: Some(cert_path),
            key: Some(key_path),
        })
        .unwrap();
        let err = client
            .revoke(&RevokeSelector::default(), "INC-1")
            .await
            .unwrap_err();
        assert!(matches!(err, CliError::EmptySelector), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("--all") && text.contains("--claim"), "{text}");
        assert!(
            !text.contains('{'),
            "no JSON in a command line's answer: {text}"
        );
    }

    #[test]
    fn an_admin_client_needs_a_certificate_and_key() {
        let endpoint = AdminEndpoint {
            server: "https://127.0.0.1:8443".into(),
            ca: None,
            cert: Some("admin.pem".into()),
            key: None,
        };
        assert!(matches!(
            AdminClient::new(&endpoint),
            Err(CliError::NoClientCertificate)
        ));
    }
}
