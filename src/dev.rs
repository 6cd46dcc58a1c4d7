//! `serve --dev` and `jobpass dev token`: one command, no setup. A data directory with a dev
//! root key, a dev PKI, a SQLite store and an audit log; the repo's `policies/`; and a built-in
//! dev OIDC issuer that every environment trusts **in dev mode only** (nothing of it exists
//! unless the server runs with `--dev`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::app::{DevIssuer, StartError};
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::{RootKey, random};
use crate::mint::jwt::JwtSigner;
use crate::oidc::IssuerConfig;

const DEV_KEY: &str = "dev-issuer.key";
const DEV_INFO: &str = "dev.json";

/// What `serve --dev` runs with.
pub struct Dev {
    /// Generated configuration.
    pub config: Config,
    /// The dev issuer.
    pub issuer: DevIssuer,
}

fn write_private(path: &Path, text: &str) -> Result<(), StartError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Issuer URLs named by any policy file in `dir` (dev mode configures all of them).
fn policy_issuers(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(v) = text.parse::<toml::Table>() else {
            continue;
        };
        if let Some(list) = v
            .get("environment")
            .and_then(|e| e.get("issuers"))
            .and_then(toml::Value::as_array)
        {
            for i in list.iter().filter_map(toml::Value::as_str) {
                if !out.iter().any(|o| o == i) {
                    out.push(i.to_string());
                }
            }
        }
    }
    out
}

fn load_dev_signer(data_dir: &Path) -> Result<JwtSigner, StartError> {
    let path = data_dir.join(DEV_KEY);
    if !path.exists() {
        let (_, pkcs8) = JwtSigner::generate().map_err(|e| StartError::Config(e.to_string()))?;
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&pkcs8[..]));
        write_private(&path, &text)?;
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path)?);
    let der = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| StartError::Config(format!("{} is corrupt", path.display())))?,
    );
    JwtSigner::from_pkcs8(&der).map_err(|e| StartError::Config(e.to_string()))
}

/// Prepares `data_dir` (idempotent) and the configuration of a dev server.
pub fn prepare(
    data_dir: &Path,
    policies: &Path,
    listen: SocketAddr,
    clock: &dyn Clock,
) -> Result<Dev, StartError> {
    std::fs::create_dir_all(data_dir)?;
    let root = data_dir.join("root.key");
    if !root.exists() {
        RootKey::generate_file(&root)?;
    }
    let certs = data_dir.join("certs");
    if !certs.join("ca.pem").exists() {
        crate::tls::certs_init(&certs, &[], true, clock)
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let public_url = format!("https://{listen}");
    let signer = load_dev_signer(data_dir)?;
    let issuer = DevIssuer {
        url: format!("{public_url}/dev/oidc"),
        jwks: json!({"keys": [signer.jwk()]}).to_string(),
    };
    let info = json!({"issuer": issuer.url, "public_url": public_url});
    std::fs::write(data_dir.join(DEV_INFO), info.to_string())?;
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let config = Config {
        listen,
        public_url: Some(public_url),
        store: format!("sqlite://{}", abs(data_dir.join("jobpass.db")).display()),
        policies: abs(policies.to_path_buf()),
        leeway: std::time::Duration::from_secs(60),
        max_body_bytes: 64 * 1024,
        insecure_http: false,
        tls: crate::config::TlsConfig {
            cert: Some(certs.join("server.pem")),
            key: Some(certs.join("server-key.pem")),
            admin_client_ca: Some(certs.join("ca.pem")),
            crl: None,
        },
        keys: crate::config::KeysConfig {
            root_key_file: Some(root),
            root_key_env: None,
        },
        audit: crate::config::AuditConfig {
            file: data_dir.join("audit.log"),
            stdout: false,
            replica: None,
            accept_behind_anchor: None,
        },
        issuer: policy_issuers(policies)
            .into_iter()
            .map(|url| IssuerConfig {
                url,
                ca_file: None,
                jwks_file: None,
                allow_http: false,
            })
            .collect(),
        postgres: Default::default(),
        vault_compat_listen: None,
        limits: crate::config::LimitsConfig::default(),
        lease_retention: std::time::Duration::from_secs(24 * 3600),
        sweep_interval: std::time::Duration::from_secs(60),
    };
    Ok(Dev { config, issuer })
}

/// GitHub-shaped default claims of a dev token.
fn default_claims() -> Map<String, Value> {
    let v = json!({
        "repository": "octo-org/octo-repo", "repository_owner": "octo-org", "repository_visibility": "private",
        "ref": "refs/heads/main", "ref_type": "branch", "ref_protected": "true",
        "event_name": "push", "workflow": "CI", "actor": "octocat",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "run_id": "1000", "run_number": "1", "run_attempt": "1",
        "runner_environment": "github-hosted", "sha": "0000000000000000000000000000000000000000",
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Why a dev token cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DevTokenError {
    /// No dev server has run with this data directory.
    #[error("{0} has no dev server data; start `jobpass serve --dev` first")]
    NoDevServer(String),
    /// The environment has no policy file.
    #[error("no policy file for environment `{env}` in {dir}")]
    NoPolicy {
        /// The environment.
        env: String,
        /// The policy directory.
        dir: String,
    },
    /// The policy file is not TOML.
    #[error("policy file of `{0}` does not parse")]
    PolicyParse(String),
    /// The policy names no audience.
    #[error("policy of `{0}` has no audience")]
    NoAudience(String),
    /// The dev issuer key cannot be loaded.
    #[error(transparent)]
    Signer(#[from] StartError),
    /// No randomness for the token id.
    #[error(transparent)]
    Random(#[from] crate::crypto::CryptoError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] crate::mint::MintError),
}

/// Signs a dev token for `env` with the dev issuer key in `data_dir`.
pub fn token(
    data_dir: &Path,
    policies: &Path,
    env: &str,
    extra: Map<String, Value>,
    ttl_secs: i64,
    clock: &dyn Clock,
) -> Result<String, DevTokenError> {
    let info: Value = std::fs::read_to_string(data_dir.join(DEV_INFO))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| DevTokenError::NoDevServer(data_dir.display().to_string()))?;
    let issuer = info["issuer"].as_str().unwrap_or_default().to_string();
    let text = std::fs::read_to_string(policies.join(format!("{env}.toml"))).map_err(|_| {
        DevTokenError::NoPolicy {
            env: env.to_owned(),
            dir: policies.display().to_string(),
        }
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|_| DevTokenError::PolicyParse(env.to_owned()))?;
    let audience = table
        .get("environment")
        .and_then(|e| e.get("audience"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| DevTokenError::NoAudience(env.to_owned()))?
        .to_string();
    let signer = load_dev_signer(data_dir)?;
    let mut claims = default_claims();
    for (k, v) in extra {
        claims.insert(k, v);
    }
    let now = clock.unix();
    let repo = claims
        .get("repository")
        .and_then(Value::as_str)
        .unwrap_or("octo-org/octo-repo")
        .to_string();
    let git_ref = claims
        .get("ref")
        .and_then(Value::as_str)
        .unwrap_or("refs/heads/main")
        .to_string();
    claims
        .entry("sub")
        .or_insert_with(|| Value::String(format!("repo:{repo}:ref:{git_ref}")));
    let jti = random::time_ordered_id("dev_", u64::try_from(now).unwrap_or(0) * 1000)?;
    for (k, v) in [
        ("iss", Value::String(issuer)),
        ("aud", Value::String(audience)),
        ("iat", json!(now)),
        ("nbf", json!(now)),
        ("exp", json!(now + ttl_secs)),
        ("jti", Value::String(jti)),
    ] {
        claims.insert(k.into(), v);
    }
    Ok(signer.sign(&Value::Object(claims))?)
}
