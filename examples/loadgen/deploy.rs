//! The temporary deployment: certificates, root key, policy and configuration written with
//! the `jobpass` binary, the broker child process, and the optional PostgreSQL database.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::client::{Call, Target, once};
use crate::issuer::{hex, random};
use crate::{AUDIENCE, ENV, Res, VAULT_ROLE};

/// `--broker`, or `target/release/jobpass`, built when missing or when `build` is set.
pub fn broker_binary(broker: Option<&Path>, build: bool) -> Res<PathBuf> {
    if let Some(p) = broker {
        return Ok(p.to_path_buf());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    let bin = target.join("release").join("jobpass");
    if build || !bin.exists() {
        eprintln!("building {} …", bin.display());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "jobpass"])
            .current_dir(root)
            .status()?;
        if !status.success() {
            return Err("cargo build --release --bin jobpass failed".into());
        }
    } else if let (Ok(built), Some(src)) = (
        std::fs::metadata(&bin).and_then(|m| m.modified()),
        newest(&root.join("src"), 8),
    ) && src > built
    {
        eprintln!(
            "note: {} is older than src/; pass --build to rebuild it",
            bin.display()
        );
    }
    Ok(bin)
}

/// The newest modification time of the files under `dir` (`depth` levels at most).
fn newest(dir: &Path, depth: usize) -> Option<SystemTime> {
    let mut best = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let t = if meta.is_dir() && depth > 0 {
            newest(&e.path(), depth - 1)
        } else {
            meta.modified().ok()
        };
        best = best.max(t);
    }
    best
}

pub fn write_deployment(
    bin: &Path,
    d: &Path,
    data: &Path,
    store: &str,
    issuer: &str,
    api: SocketAddr,
    vault: SocketAddr,
) -> Res<()> {
    let (certs, key) = (d.join("certs"), d.join("root.key"));
    jobpass(
        bin,
        &["certs", "init", "--dir", &certs.display().to_string()],
    )?;
    jobpass(
        bin,
        &["keys", "generate", "--out", &key.display().to_string()],
    )?;
    std::fs::create_dir_all(d.join("policies"))?;
    let policy = format!(
        r#"[environment]
name = "{ENV}"
issuers = [{issuer}]
audience = "{AUDIENCE}"
max_ttl = "1h"
default_role = "ci"

[[role]]
name = "ci"
ttl = "15m"
[role.match]
repository_owner = "octo-org"
repository = "octo-org/*"

[[role.grant]]
name = "app"
kind = "token"
secrets = ["app/*"]

[[role.grant]]
name = "deploy"
kind = "jwt"
audience = "https://deploy.load.test"
claims = {{ scope = "deploy" }}

# What a Vault JWT login gives: one token (the `vault` scenario, like OpenBao's login).
[[role]]
name = "{VAULT_ROLE}"
ttl = "15m"
[role.match]
repository_owner = "octo-org"
repository = "octo-org/*"

[[role.grant]]
name = "app"
kind = "token"
secrets = ["app/*"]
"#,
        issuer = q(issuer)
    );
    std::fs::write(d.join("policies").join(format!("{ENV}.toml")), policy)?;
    let p = |p: PathBuf| q(&p.display().to_string());
    let config = format!(
        r#"listen = "{api}"
vault_compat_listen = "{vault}"
store = {store}
policies = {policies}

[tls]
cert = {cert}
key = {key}
admin_client_ca = {ca}

[keys]
root_key_file = {root}

[audit]
file = {audit}

[limits]
# Capacity is measured here, not the limits: every rate limit is off.
exchange_per_ip = {{ per_second = 0 }}
exchange_per_subject = {{ per_second = 0 }}
exchange_global = {{ per_second = 0 }}
read_per_ip = {{ per_second = 0 }}
read_per_subject = {{ per_second = 0 }}
read_global = {{ per_second = 0 }}

[[issuer]]
url = {issuer}
allow_http = true
"#,
        store = q(store),
        policies = p(d.join("policies")),
        cert = p(certs.join("server.pem")),
        key = p(certs.join("server-key.pem")),
        ca = p(certs.join("ca.pem")),
        root = p(key),
        audit = p(data.join("audit.log")),
        issuer = q(issuer),
    );
    std::fs::write(d.join("jobpass.toml"), config)?;
    Ok(())
}

/// A TOML (basic) string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn jobpass(bin: &Path, args: &[&str]) -> Res<()> {
    let out = Command::new(bin).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "jobpass {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// The broker child process; killed when dropped (end, error, Ctrl-C, panic).
pub struct Broker {
    child: Child,
    pub pid: u32,
    stderr: PathBuf,
}

impl Broker {
    pub fn spawn(bin: &Path, d: &Path, log: &str) -> Res<Self> {
        let stderr = d.join("broker.stderr");
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--config"])
            .arg(d.join("jobpass.toml"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("broker.stdout"))?)
            .stderr(std::fs::File::create(&stderr)?)
            .env("JOBPASS_LOG", log);
        // Configuration keys set in our environment would leak into the deployment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("JOBPASS_") && k != "JOBPASS_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn()?;
        Ok(Self {
            pid: child.id(),
            child,
            stderr,
        })
    }

    pub async fn wait_ready(&mut self, t: &Target) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = Call::get("/readyz", None);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if let Ok((200, _)) = once(t, &ready).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "the broker did not become ready; its stderr ends:\n{}",
            tail.join("\n")
        )
        .into())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a directory when dropped, unless told to keep it.
pub struct RemoveDir(pub PathBuf, pub bool);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn free_port() -> Res<SocketAddr> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// A database created for this run: its name and the URL of it.
pub struct FreshDb {
    pub name: String,
    pub url: String,
}

/// Creates `jobpass_load_<random>` on the server of `url`.
pub async fn fresh_database(url: &str) -> Res<FreshDb> {
    use sqlx::Connection;
    let name = format!("jobpass_load_{}", hex(&random::<6>()?));
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").ok_or("not a URL")? + 3;
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let url = format!(
        "{}/{name}{}",
        &base[..path],
        query.map(|q| format!("?{q}")).unwrap_or_default()
    );
    Ok(FreshDb { name, url })
}

pub async fn drop_database(url: &str, name: &str) -> Res<()> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await?;
    Ok(())
}
