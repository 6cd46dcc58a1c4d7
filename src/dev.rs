//! `serve --dev`, `jobpass dev token` and `jobpass dev claims`: one command, no setup. A data directory with a dev
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
use crate::policy::{AnyCapabilities, PolicyErrors, PolicySet};

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
    // The data directory holds the root key, the store and the audit log: its user's only
    // (the CLI trusts the dev certificates in it only when nobody else can write there).
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(data_dir)?;
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
        ignored_env_vars: Vec::new(),
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

/// Why dev claims or a dev token cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DevTokenError {
    /// No dev server has run with this data directory.
    #[error("{0} has no dev server data; start `jobpass serve --dev` first")]
    NoDevServer(String),
    /// The policy directory is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    /// The environment has no policy file.
    #[error("no environment `{env}` in {dir} (its environments: {known})")]
    NoPolicy {
        /// The environment.
        env: String,
        /// The policy directory.
        dir: String,
        /// The environments it has, comma-separated.
        known: String,
    },
    /// The role is not one of the environment's.
    #[error("environment `{env}` has no role `{role}` (its roles: {known})")]
    UnknownRole {
        /// The environment.
        env: String,
        /// The role asked for.
        role: String,
        /// The roles it has, comma-separated.
        known: String,
    },
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

/// The claims of a dev token, and what the policy says of them.
#[derive(Debug, Clone)]
pub struct DevClaims {
    /// GitHub-shaped claims (no times, no `jti`).
    pub claims: Map<String, Value>,
    /// The role they were shaped for (the one named, else the environment's default role).
    pub role: Option<String>,
    /// Why the policy still refuses them that role, with the expected pattern (the claims
    /// given override what matching needs, or no example could be made up); `None` when they
    /// get it, or when no role was named and the environment has no default one.
    pub denial: Option<String>,
}

/// The issuer URL of the dev server whose data directory is `data_dir`, if one ran there.
fn dev_issuer(data_dir: &Path) -> Option<String> {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join(DEV_INFO)).ok()?).ok()?;
    info["issuer"].as_str().map(str::to_owned)
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<&str> = items.collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// The claims a dev token for `env` of the policy directory `policies` carries, less the times
/// and `jti`: GitHub-shaped defaults, changed where the guardrails and the conditions of
/// `role` (else the environment's default role) need it, then `extra` over them (they win,
/// `aud` and `iss` included); `sub` from `repository` and `ref` unless given; `aud` the
/// environment's audience and `iss` the dev issuer of `data_dir` (when a dev server ran there)
/// unless given.
///
/// # Errors
/// An invalid policy directory, an unknown environment or role.
pub fn claims(
    data_dir: &Path,
    policies: &Path,
    env: &str,
    role: Option<&str>,
    extra: Map<String, Value>,
) -> Result<DevClaims, DevTokenError> {
    let set = PolicySet::load_dir(policies, &AnyCapabilities)?;
    let environment = set
        .environment(env)
        .ok_or_else(|| DevTokenError::NoPolicy {
            env: env.to_owned(),
            dir: policies.display().to_string(),
            known: names(set.environments().map(|e| e.name.as_str())),
        })?;
    let role = match role.filter(|r| !r.is_empty()) {
        Some(name) => Some(
            environment
                .role(name)
                .ok_or_else(|| DevTokenError::UnknownRole {
                    env: env.to_owned(),
                    role: name.to_owned(),
                    known: names(environment.roles.iter().map(|r| r.name.as_str())),
                })?,
        ),
        None => environment
            .default_role
            .as_deref()
            .and_then(|name| environment.role(name)),
    };
    let mut claims = default_claims();
    if let Some(role) = role {
        environment.require.satisfy(&mut claims);
        role.conditions.satisfy(&mut claims);
    }
    claims.extend(extra);
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
    claims
        .entry("aud")
        .or_insert_with(|| Value::String(environment.audience.clone()));
    if let Some(issuer) = dev_issuer(data_dir) {
        claims.entry("iss").or_insert(Value::String(issuer));
    }
    let denial = role.and_then(|r| {
        environment
            .evaluate(Some(&r.name), &claims)
            .err()
            .map(|d| d.detail())
    });
    Ok(DevClaims {
        claims,
        role: role.map(|r| r.name.clone()),
        denial,
    })
}

/// Signs a dev token with the dev issuer key in `data_dir`: the [`claims`] and `iat`, `nbf`,
/// `exp` (now + `ttl_secs`) and a fresh `jti`, each unless `extra` gives it.
///
/// # Errors
/// No dev server data, an invalid policy directory, an unknown environment or role, no dev
/// issuer key.
pub fn token(
    data_dir: &Path,
    policies: &Path,
    env: &str,
    role: Option<&str>,
    extra: Map<String, Value>,
    ttl_secs: i64,
    clock: &dyn Clock,
) -> Result<String, DevTokenError> {
    if dev_issuer(data_dir).is_none() {
        return Err(DevTokenError::NoDevServer(data_dir.display().to_string()));
    }
    let mut claims = claims(data_dir, policies, env, role, extra)?.claims;
    let signer = load_dev_signer(data_dir)?;
    let now = clock.unix();
    let jti = random::time_ordered_id("dev_", u64::try_from(now).unwrap_or(0) * 1000)?;
    for (k, v) in [
        ("iat", json!(now)),
        ("nbf", json!(now)),
        ("exp", json!(now + ttl_secs)),
        ("jti", Value::String(jti)),
    ] {
        claims.entry(k).or_insert(v);
    }
    Ok(signer.sign(&Value::Object(claims))?)
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;
    use crate::clock::SystemClock;

    fn repo_policies() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    #[test]
    fn dev_claims_get_every_shipped_role() {
        let set = PolicySet::load_dir(&repo_policies(), &AnyCapabilities).unwrap();
        let no_data = Path::new("/nonexistent-jobpass-dev");
        let mut tried = 0;
        for env in set.environments() {
            for role in &env.roles {
                let made = claims(
                    no_data,
                    &repo_policies(),
                    &env.name,
                    Some(&role.name),
                    Map::new(),
                )
                .unwrap();
                assert_eq!(made.denial, None, "{}/{}: {:?}", env.name, role.name, made);
                assert_eq!(made.role.as_deref(), Some(role.name.as_str()));
                assert!(
                    env.evaluate(Some(&role.name), &made.claims).is_ok(),
                    "{}/{}",
                    env.name,
                    role.name
                );
                assert_eq!(made.claims["aud"], env.audience.as_str());
                tried += 1;
            }
        }
        assert!(tried >= 6, "{tried}");
    }

    #[test]
    fn claims_given_win_and_unknown_names_list_the_known_ones() {
        let no_data = Path::new("/nonexistent-jobpass-dev");
        let extra: Map<String, Value> =
            serde_json::from_str(r#"{"ref": "refs/heads/feature", "aud": "https://elsewhere"}"#)
                .unwrap();
        let made = claims(no_data, &repo_policies(), "prod", Some("deploy-web"), extra).unwrap();
        assert_eq!(made.claims["ref"], "refs/heads/feature");
        assert_eq!(made.claims["aud"], "https://elsewhere");
        assert_eq!(
            made.claims["sub"],
            "repo:octo-org/octo-repo:ref:refs/heads/feature"
        );
        let why = made.denial.unwrap();
        assert!(why.contains("[environment.require] `ref`"), "{why}");

        let e = claims(no_data, &repo_policies(), "nope", None, Map::new()).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("(its environments: dev, prod, staging)"),
            "{e}"
        );
        let e = claims(no_data, &repo_policies(), "dev", Some("nope"), Map::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment `dev` has no role `nope` (its roles: ci, integration-tests)"
        );
    }

    #[test]
    fn a_dev_token_carries_the_aud_and_iss_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join(".jobpass-dev");
        prepare(
            &data,
            &repo_policies(),
            "127.0.0.1:8443".parse().unwrap(),
            &SystemClock,
        )
        .unwrap();
        let payload = |token: &str| -> Value {
            let part = token.split('.').nth(1).unwrap();
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let plain = token(
            &data,
            &repo_policies(),
            "dev",
            None,
            Map::new(),
            60,
            &SystemClock,
        )
        .unwrap();
        let p = payload(&plain);
        assert_eq!(p["aud"], "https://jobpass.example.com");
        assert_eq!(p["iss"], "https://127.0.0.1:8443/dev/oidc");
        assert_eq!(p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap(), 60);

        let extra: Map<String, Value> = serde_json::from_str(
            r#"{"aud": "https://wrong.example", "iss": "https://issuer.example"}"#,
        )
        .unwrap();
        let p = payload(
            &token(
                &data,
                &repo_policies(),
                "dev",
                None,
                extra,
                60,
                &SystemClock,
            )
            .unwrap(),
        );
        assert_eq!(p["aud"], "https://wrong.example");
        assert_eq!(p["iss"], "https://issuer.example");
    }
}
