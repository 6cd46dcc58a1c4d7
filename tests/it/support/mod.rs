//! Test harness: a real loopback OIDC issuer (discovery + JWKS over HTTP), the broker's real
//! router over real TLS on port 0 with a generated PKI, a temporary SQLite store and audit log.

#![allow(dead_code)]

pub mod child;
pub mod harness;
pub mod issuer;
pub mod logs;
pub mod pg;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jobpass::app::App;
use jobpass::clock::{Clock, SystemClock};
use jobpass::config::Config;
use jobpass::crypto::RootKey;
use jobpass::http::server::{Running, serve, serve_router};
use jobpass::store::LeaseFilter;
use jobpass::tls::{AdminRole, DevPki, generate_pki};
use openidconnect::reqwest;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

pub use issuer::TestIssuer;

/// The audience every test environment expects.
pub const AUDIENCE: &str = "https://jobpass.test";

/// The real time plus an offset the test moves forward (e.g. past the JWKS refetch limit).
#[derive(Default)]
pub struct OffsetClock {
    offset: std::sync::atomic::AtomicU64,
}

impl OffsetClock {
    pub fn advance(&self, secs: u64) {
        self.offset
            .fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> std::time::SystemTime {
        SystemClock.now()
            + std::time::Duration::from_secs(self.offset.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Stops listeners and background tasks (a broker going down).
async fn stop_all(
    running: Option<Running>,
    vault_running: Option<Running>,
    background: Vec<tokio::task::JoinHandle<()>>,
) {
    for r in [running, vault_running].into_iter().flatten() {
        r.shutdown().await;
    }
    for task in background {
        task.abort();
        let _ = task.await;
    }
}

/// Another replica sharing a broker's store.
pub struct Replica {
    pub app: Arc<App>,
    pub url: String,
    running: Option<Running>,
}

impl Replica {
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// The replica dies: its server stops and its state (store connections included) is gone.
    pub async fn kill(self) {
        let Replica { app, running, .. } = self;
        if let Some(r) = running {
            r.shutdown().await;
        }
        app.ledger().stop().await;
        assert_eq!(Arc::strong_count(&app), 1);
        drop(app);
    }
}

/// A broker's files after [`Broker::shut_down`].
pub struct Stopped {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    clock: Arc<OffsetClock>,
}

impl Stopped {
    /// Builds the broker's state again from its configuration plus `env` (`JOBPASS_*`).
    pub async fn build(&self, env: &[(&str, &str)]) -> Result<Arc<App>, jobpass::app::StartError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let config = Config::load_with_env(Some(&self.config_path), env).unwrap();
        App::build(config, self.clock.clone(), None).await
    }
}

/// Stops a broker's state that nothing else holds (its ledger anchors the audit head and
/// releases the audit file).
pub async fn release(app: Arc<App>) {
    app.ledger().stop().await;
    assert_eq!(Arc::strong_count(&app), 1, "nothing else holds the broker");
    drop(app);
}

/// Options of a test broker.
#[derive(Default, Clone)]
pub struct Options {
    /// Audit file instead of `<dir>/audit.log` (e.g. `/dev/full`).
    pub audit_file: Option<PathBuf>,
    /// `[postgres.main]` admin URL; adds the `data` environment with postgres grants.
    pub postgres_url: Option<String>,
    /// Store URL (default: the running test's backend: a fresh PostgreSQL database, or a
    /// SQLite file in the broker's directory).
    pub store: Option<String>,
    /// Do not start the background worker (tests that choose which replica leads).
    pub no_background: bool,
    /// Also serve the Vault-compatible router on its own TLS listener (`Broker.vault_url`).
    pub vault: bool,
    /// More configuration, appended to the file (e.g. a `[limits]` table).
    pub extra_config: String,
    /// An admin client CA of the test's own (PEM) instead of the broker's PKI CA, written to
    /// `certs/admin-ca.pem`.
    pub admin_ca_pem: Option<String>,
    /// `tls.crl`: these CRLs (PEM), written to `certs/admin-crl.pem`.
    pub admin_crl_pem: Option<String>,
}

/// A fresh, empty PostgreSQL database for one broker when the running test runs on the
/// PostgreSQL store; None on the SQLite store.
pub async fn fresh_postgres_store() -> Option<String> {
    match harness::backend() {
        harness::Backend::Sqlite => return None,
        harness::Backend::Postgres => {}
        harness::Backend::None => {
            panic!("a test declared Once starts a broker: declare it EachStore")
        }
    }
    let url = pg::admin_url();
    // jp_t_<pid>_<random>: this run's databases carry its process id.
    let name = format!(
        "jp_t_{}_{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 6]>())
    );
    // Once per test binary: drop what runs that are gone left behind (their process no longer
    // exists); a run still going on against the same server keeps its databases.
    static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CLEANED
        .get_or_init(|| async {
            let mut admin = pg::admin(&url).await;
            let old: Vec<(String,)> = sqlx::query_as(
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'jp\\_t\\_%'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            for (db,) in old {
                let pid = db.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
                // Names without a process id predate this scheme: leftovers too.
                let gone = pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists());
                if !gone {
                    continue;
                }
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        })
        .await;
    let mut admin = pg::admin(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    // Replace the database part of the URL.
    let (base, query) = url
        .split_once('?')
        .map_or((url.as_str(), ""), |(b, q)| (b, q));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    let mut out = format!("{base}/{name}");
    let q = if query.is_empty() {
        "sslmode=disable".to_string()
    } else if query.contains("sslmode") {
        query.to_string()
    } else {
        format!("{query}&sslmode=disable")
    };
    out.push('?');
    out.push_str(&q);
    Some(out)
}

/// A running broker with its issuers and files.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub app: Arc<App>,
    pub url: String,
    pub gh: TestIssuer,
    pub gl: TestIssuer,
    pub pki: DevPki,
    pub config_path: PathBuf,
    pub clock: Arc<OffsetClock>,
    /// URL of the Vault-compatible listener (with `Options.vault`).
    pub vault_url: Option<String>,
    running: Option<Running>,
    vault_running: Option<Running>,
    background: Vec<tokio::task::JoinHandle<()>>,
    no_background: bool,
    vault: bool,
}

pub fn policies(gh: &str, gl: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "prod.toml",
            format!(
                r#"
[environment]
name = "prod"
issuers = ["{gh}"]
audience = "{AUDIENCE}"
max_ttl = "30m"

[environment.require]
ref = "refs/heads/main"

[[role]]
name = "deploy-web"
ttl = "1m"
[role.match]
repository = "acme/web"
event_name = ["push", "workflow_dispatch"]

[[role.grant]]
name = "api"
kind = "token"
secrets = ["deploy/web/*"]

[[role.grant]]
name = "deploy"
kind = "jwt"
audience = "https://deploy.internal"
claims = {{ scope = "deploy:web" }}

[[role]]
name = "any-branch"
ttl = "10m"
[role.match]
repository = "acme/*"

[[role.grant]]
name = "api"
kind = "token"
secrets = ["shared/*"]
"#
            ),
        ),
        (
            "staging.toml",
            format!(
                r#"
[environment]
name = "staging"
issuers = ["{gh}", "{gl}"]
audience = "{AUDIENCE}"
max_ttl = "20m"
default_role = "gitlab-deploy"

[environment.require]
ref_type = "branch"

[[role]]
name = "gitlab-deploy"
ttl = "5m"
[role.match]
project_path = "my-group/my-project"
ref_path = ["refs/heads/main", "refs/heads/release/*"]
ref_protected = "true"
runner_id = "1"

[[role.grant]]
name = "api"
kind = "token"
secrets = ["staging/*"]
"#
            ),
        ),
        (
            "pki.toml",
            format!(
                r#"
[environment]
name = "pki"
issuers = ["{gh}"]
audience = "{AUDIENCE}"
max_ttl = "30m"

[[role]]
name = "mtls"
ttl = "10m"
[role.match]
repository = "acme/*"

[[role.grant]]
name = "mtls"
kind = "x509"
common_name = "web-deployer"
"#
            ),
        ),
    ]
}

/// The `data` environment: PostgreSQL grants on `[postgres.main]`.
pub fn data_policy(gh: &str) -> String {
    format!(
        r#"
[environment]
name = "data"
issuers = ["{gh}"]
audience = "{AUDIENCE}"
max_ttl = "30m"

[[role]]
name = "db-reader"
ttl = "10m"
[role.match]
repository = "acme/*"

[[role.grant]]
name = "db"
kind = "postgres"
database = "main"
member_of = ["{group}"]

[[role]]
name = "token-only"
ttl = "10m"
[role.match]
repository = "acme/*"

[[role.grant]]
name = "api"
kind = "token"
secrets = ["data/*"]

[[role]]
name = "every-kind"
ttl = "10m"
[role.match]
repository = "acme/*"

[[role.grant]]
name = "api"
kind = "token"
secrets = ["data/*"]

[[role.grant]]
name = "deploy"
kind = "jwt"
audience = "https://deploy.internal"

[[role.grant]]
name = "db"
kind = "postgres"
database = "main"
member_of = ["{group}"]

[[role.grant]]
name = "mtls"
kind = "x509"
common_name = "data-client"
"#,
        group = pg::READER_GROUP
    )
}

/// GitHub Actions claims (shape of the fixture) allowed by prod/deploy-web.
pub fn github_claims(iss: &str) -> Value {
    let now = now();
    json!({
        "jti": uuid_like(), "sub": "repo:acme/web:ref:refs/heads/main", "environment": "prod",
        "aud": AUDIENCE, "ref": "refs/heads/main", "sha": "15a5ebfa3fb5ddf10c4b4250e14496bec7f03a56",
        "repository": "acme/web", "repository_owner": "acme", "repository_owner_id": "46576199",
        "repository_id": "1104004353", "repository_visibility": "private", "actor": "octocat",
        "actor_id": "1492007", "run_id": "19677834613", "run_number": "4", "run_attempt": "1",
        "runner_environment": "github-hosted", "workflow": "CI",
        "workflow_ref": "acme/web/.github/workflows/ci.yml@refs/heads/main",
        "job_workflow_ref": "acme/web/.github/workflows/ci.yml@refs/heads/main",
        "head_ref": "", "base_ref": "", "event_name": "push", "ref_type": "branch",
        "ref_protected": "false", "check_run_id": "56363837828", "iss": iss,
        "nbf": now - 300, "iat": now, "exp": now + 300
    })
}

/// GitLab CI claims (shape of the fixture) allowed by staging/gitlab-deploy.
pub fn gitlab_claims(iss: &str) -> Value {
    let now = now();
    json!({
        "namespace_id": "72", "namespace_path": "my-group", "project_id": "20",
        "project_path": "my-group/my-project", "user_id": "1", "user_login": "sample-user",
        "user_email": "sample-user@example.com", "user_access_level": "owner",
        "pipeline_id": "574", "pipeline_source": "push", "job_id": "302", "ref": "main",
        "ref_type": "branch", "ref_path": "refs/heads/main", "ref_protected": "true",
        "environment": "production", "environment_protected": "true",
        "deployment_tier": "production", "environment_action": "start", "runner_id": 1,
        "runner_environment": "self-hosted", "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "private", "jti": uuid_like(), "iss": iss, "iat": now,
        "nbf": now - 5, "exp": now + 3600,
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:main", "aud": AUDIENCE
    })
}

pub fn now() -> i64 {
    jobpass::clock::unix_seconds(std::time::SystemTime::now())
}

pub fn uuid_like() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn write_config(dir: &Path, gh: &TestIssuer, gl: &TestIssuer, opts: &Options) -> PathBuf {
    let audit = opts
        .audit_file
        .clone()
        .unwrap_or_else(|| dir.join("audit.log"));
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut admin_tls = String::from("admin_client_ca = \"certs/ca.pem\"\n");
    if let Some(pem) = &opts.admin_ca_pem {
        std::fs::write(certs.join("admin-ca.pem"), pem).unwrap();
        admin_tls = "admin_client_ca = \"certs/admin-ca.pem\"\n".into();
    }
    if let Some(pem) = &opts.admin_crl_pem {
        std::fs::write(certs.join("admin-crl.pem"), pem).unwrap();
        admin_tls.push_str("crl = \"certs/admin-crl.pem\"\n");
    }
    let text = format!(
        r#"
listen = "127.0.0.1:0"
public_url = "https://127.0.0.1:1"
store = "{store}"
policies = "policies"
leeway = "30s"

[tls]
cert = "certs/server.pem"
key = "certs/server-key.pem"
{admin_tls}
[keys]
root_key_file = "root.key"

[audit]
file = "{audit}"

[[issuer]]
url = "{gh}"
allow_http = true

[[issuer]]
url = "{gl}"
allow_http = true

# Never asked (no token of it is ever presented): lets a policy trust GitHub's real,
# multi-tenant issuer, which the policy lint warns about.
[[issuer]]
url = "https://token.actions.githubusercontent.com"
{postgres}
{extra}
"#,
        extra = opts.extra_config,
        store = opts
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("jobpass.db").display())),
        audit = audit.display(),
        gh = gh.issuer_url(),
        gl = gl.issuer_url(),
        postgres = opts
            .postgres_url
            .as_ref()
            .map(|u| format!("\n[postgres.main]\nurl = \"{u}\"\n"))
            .unwrap_or_default(),
    );
    let p = dir.join("jobpass.toml");
    std::fs::write(&p, text).unwrap();
    p
}

impl Broker {
    pub async fn start() -> Broker {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Broker {
        logs::init();
        let gh = TestIssuer::start().await;
        let gl = TestIssuer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&pdir).unwrap();
        for (name, text) in policies(&gh.issuer_url(), &gl.issuer_url()) {
            std::fs::write(pdir.join(name), text).unwrap();
        }
        if opts.postgres_url.is_some() {
            std::fs::write(pdir.join("data.toml"), data_policy(&gh.issuer_url())).unwrap();
        }
        let pki = generate_pki(&[], &SystemClock).unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(certs.join("server.pem"), &pki.server_pem).unwrap();
        std::fs::write(
            certs.join("server-key.pem"),
            pki.server_key_pem.expose_secret(),
        )
        .unwrap();
        RootKey::generate_file(&dir.path().join("root.key")).unwrap();
        let mut opts = opts;
        if opts.store.is_none() {
            opts.store = fresh_postgres_store().await;
        }
        let config_path = write_config(dir.path(), &gh, &gl, &opts);
        let clock = Arc::new(OffsetClock::default());
        let mut broker = Broker {
            app: Self::build_app(&config_path, clock.clone()).await,
            clock,
            dir,
            url: String::new(),
            gh,
            gl,
            pki,
            config_path,
            vault_url: None,
            running: None,
            vault_running: None,
            background: Vec::new(),
            no_background: opts.no_background,
            vault: opts.vault,
        };
        broker.listen().await;
        broker
    }

    async fn build_app(config_path: &Path, clock: Arc<OffsetClock>) -> Arc<App> {
        let config = Config::load_with_env(Some(config_path), Vec::new()).unwrap();
        App::build(config, clock, None).await.unwrap()
    }

    async fn listen(&mut self) {
        let c = self.app.config();
        let tls = jobpass::tls::server_config(
            c.tls.cert.as_ref().unwrap(),
            c.tls.key.as_ref().unwrap(),
            self.app.admin_client_auth(),
        )
        .unwrap();
        if self.vault {
            let vault = serve_router(
                jobpass::http::vault::router(self.app.clone()),
                "127.0.0.1:0".parse().unwrap(),
                Some(tls.clone()),
                self.app.limits(),
            )
            .await
            .unwrap();
            self.vault_url = Some(format!("https://{}", vault.addr));
            self.vault_running = Some(vault);
        }
        let running = serve(self.app.clone(), "127.0.0.1:0".parse().unwrap(), Some(tls))
            .await
            .unwrap();
        self.url = format!("https://{}", running.addr);
        self.running = Some(running);
        if !self.no_background {
            self.background
                .push(jobpass::leases::teardown::spawn(self.app.clone()));
        }
    }

    /// A second replica of this broker: same configuration and store, its own audit file and
    /// listener (meaningful on the PostgreSQL store).
    pub async fn replica(&self, name: &str) -> Replica {
        let audit = self.dir.path().join(format!("audit-{name}.log"));
        let config = Config::load_with_env(
            Some(&self.config_path),
            vec![
                ("JOBPASS_AUDIT__FILE".into(), audit.display().to_string()),
                ("JOBPASS_AUDIT__REPLICA".into(), name.to_string()),
            ],
        )
        .unwrap();
        let app = App::build(config, self.clock.clone(), None).await.unwrap();
        let c = app.config();
        let tls = jobpass::tls::server_config(
            c.tls.cert.as_ref().unwrap(),
            c.tls.key.as_ref().unwrap(),
            app.admin_client_auth(),
        )
        .unwrap();
        let running = serve(app.clone(), "127.0.0.1:0".parse().unwrap(), Some(tls))
            .await
            .unwrap();
        Replica {
            url: format!("https://{}", running.addr),
            app,
            running: Some(running),
        }
    }

    /// Exchanges at another replica's address.
    pub async fn exchange_at(
        &self,
        url: &str,
        token: &str,
        env: &str,
        role: Option<&str>,
    ) -> (u16, Value) {
        let mut body = json!({"token": token, "environment": env});
        if let Some(r) = role {
            body["role"] = Value::String(r.into());
        }
        let resp = self
            .client()
            .post(format!("{url}/v1/exchange"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
        )
    }

    /// GET at another replica's address with a bearer token.
    pub async fn get_at(&self, url: &str, path: &str, bearer: &str) -> u16 {
        self.client()
            .get(format!("{url}{path}"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Stops the server and starts a new one on the same files (a restart).
    pub async fn restart(self) -> Broker {
        let Broker {
            dir,
            app,
            gh,
            gl,
            pki,
            config_path,
            clock,
            running,
            vault_running,
            background,
            no_background,
            vault,
            ..
        } = self;
        stop_all(running, vault_running, background).await;
        // The audit log is locked while open: the old state (its ledger writer included, as
        // `serve` stops it on shutdown) must be gone first.
        app.ledger().stop().await;
        assert_eq!(
            Arc::strong_count(&app),
            1,
            "nothing else holds the old broker"
        );
        drop(app);
        let mut b = Broker {
            app: Self::build_app(&config_path, clock.clone()).await,
            dir,
            url: String::new(),
            gh,
            gl,
            pki,
            config_path,
            clock,
            vault_url: None,
            running: None,
            vault_running: None,
            background: Vec::new(),
            no_background,
            vault,
        };
        b.listen().await;
        b
    }

    /// Stops the broker as `serve` does on shutdown (its ledger anchors the audit head) and
    /// keeps its files, so a test can change them and start it again.
    pub async fn shut_down(self) -> Stopped {
        let Broker {
            dir,
            app,
            config_path,
            clock,
            running,
            vault_running,
            background,
            ..
        } = self;
        stop_all(running, vault_running, background).await;
        release(app).await;
        Stopped {
            dir,
            config_path,
            clock,
        }
    }

    pub fn client(&self) -> reqwest::Client {
        client_with(Some(&self.pki.ca_pem), None)
    }

    pub fn admin(&self, role: AdminRole) -> reqwest::Client {
        let (cert, key) = self.pki.client(role).unwrap();
        client_with(Some(&self.pki.ca_pem), Some((cert, key.expose_secret())))
    }

    pub async fn request(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let method = openidconnect::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client.request(method, format!("{}{path}", self.url));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        self.request(&self.client(), "GET", path, bearer, None)
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(&self.client(), "POST", path, None, Some(body.to_string()))
            .await
    }

    pub async fn exchange(&self, token: &str, env: &str, role: Option<&str>) -> (u16, Value) {
        let mut body = json!({"token": token, "environment": env});
        if let Some(r) = role {
            body["role"] = Value::String(r.into());
        }
        self.post("/v1/exchange", body).await
    }

    /// RFC 7009 `POST /v1/oauth/revoke` of `token`, as any holder (no client certificate):
    /// the status.
    pub async fn oauth_revoke(&self, token: &str) -> u16 {
        let form = serde_urlencoded::to_string([("token", token)]).unwrap();
        self.client()
            .post(format!("{}/v1/oauth/revoke", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A fresh GitHub-shaped token (for any environment: all share the audience).
    pub fn github_token_for(&self, _env: &str) -> String {
        self.github_token()
    }

    /// A fresh GitHub-shaped token for prod/deploy-web.
    pub fn github_token(&self) -> String {
        self.gh.sign(github_claims(&self.gh.issuer_url()))
    }

    pub async fn put_secret(&self, env: &str, path: &str, data: Value) {
        let (s, v) = self
            .request(
                &self.admin(AdminRole::Admin),
                "PUT",
                &format!("/v1/admin/secrets/{env}/{path}"),
                None,
                Some(json!({"data": data}).to_string()),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    pub async fn lease_count(&self) -> usize {
        self.app
            .store()
            .leases(&LeaseFilter {
                limit: 10_000,
                ..LeaseFilter::default()
            })
            .await
            .unwrap()
            .len()
    }

    /// Everything the store holds, as bytes: the SQLite files, or every PostgreSQL row as text.
    pub async fn store_dump(&self) -> Vec<u8> {
        let mut all = Vec::new();
        match self.app.store() {
            jobpass::store::Store::Sqlite { .. } => {
                for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with("jobpass.db") {
                        all.extend(std::fs::read(e.path()).unwrap());
                    }
                }
            }
            jobpass::store::Store::Postgres { pool } => {
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(pool)
                .await
                .unwrap();
                for (t,) in tables {
                    let rows: Vec<(String,)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {t} t")))
                            .fetch_all(pool)
                            .await
                            .unwrap();
                    for (r,) in rows {
                        all.extend(r.into_bytes());
                    }
                }
            }
        }
        assert!(!all.is_empty(), "the store holds something");
        all
    }

    pub fn audit_path(&self) -> PathBuf {
        self.app.config().audit.file.clone()
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.audit_path()).unwrap_or_default()
    }

    pub fn audit_records(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }
}

pub fn client_with(ca: Option<&str>, identity: Option<(&str, &str)>) -> reqwest::Client {
    let tls =
        jobpass::tls::client_config(ca, identity.map(|i| i.0), identity.map(|i| i.1)).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Path of the built `jobpass` binary.
/// Runs `jobpass audit verify [extra…] --config CONFIG FILE`: whether it passed, and its
/// standard output and error together.
pub fn audit_verify(config: &Path, file: &Path, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary())
        .args(["audit", "verify"])
        .args(extra)
        .arg("--config")
        .arg(config)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobpass"))
}
