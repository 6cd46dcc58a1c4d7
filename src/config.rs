//! Server configuration (SPEC §8): a TOML file plus `JOBPASS_*` environment variables, read
//! with the `config` crate. Unknown keys and bad values are startup errors that name the key.
//! Relative paths are resolved against the directory of the config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::oidc::IssuerConfig;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or a variable could not be read or has a bad value.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole server configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL of this broker (issuer URLs of minted JWTs derive from it).
    #[serde(default)]
    pub public_url: Option<String>,
    /// `sqlite://…` or `postgres://…`.
    #[serde(default = "default_store")]
    pub store: String,
    /// Directory of policy files.
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde_compat")]
    pub leeway: Duration,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Serve plain HTTP instead of HTTPS (development only).
    #[serde(default)]
    pub insecure_http: bool,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Root key source.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Audit log settings.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Issuers environments may trust.
    #[serde(default)]
    pub issuer: Vec<IssuerConfig>,
    /// Targets for `postgres` grants.
    #[serde(default)]
    pub postgres: BTreeMap<String, PostgresTarget>,
    /// Address of the Vault-compatible listener (off when unset).
    #[serde(default)]
    pub vault_compat_listen: Option<SocketAddr>,
    /// How long expired leases stay listed before the sweeper deletes them.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub lease_retention: Duration,
    /// How often the sweeper runs.
    #[serde(default = "default_sweep", with = "humantime_serde_compat")]
    pub sweep_interval: Duration,
    /// Rate limits, connection caps and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Names of the `JOBPASS_*` variables that were not read as configuration (the serve
    /// command logs them, names only).
    #[serde(skip)]
    pub ignored_env_vars: Vec<String>,
}

/// A token-bucket rate: `per_second` sustained, `burst` at once (`per_second` when unset).
/// `per_second = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, sustained (0: no limit).
    pub per_second: u32,
    /// Requests allowed at once before the rate applies.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rate {
    const fn new(per_second: u32, burst: u32) -> Rate {
        Rate {
            per_second,
            burst: Some(burst),
        }
    }
}

/// `[limits]`: what one source, one token subject and everyone together may ask for, how many
/// connections may be open, and how long a connection may stay silent. The defaults suit a
/// CI fleet behind one NAT address on a small host; raise the global rates on a larger one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Exchanges per source address (IPv6: per /64).
    pub exchange_per_ip: Rate,
    /// Exchanges per verified token subject (issuer and `sub`).
    pub exchange_per_subject: Rate,
    /// Exchanges of all callers together.
    pub exchange_global: Rate,
    /// Secret reads per source address.
    pub read_per_ip: Rate,
    /// Secret reads per broker token subject.
    pub read_per_subject: Rate,
    /// Secret reads of all callers together.
    pub read_global: Rate,
    /// Admin calls per source address.
    pub admin_per_ip: Rate,
    /// Admin calls per client certificate.
    pub admin_per_subject: Rate,
    /// Admin calls of all callers together.
    pub admin_global: Rate,
    /// Open connections, all listeners together; further ones wait in the kernel's queue.
    pub max_connections: usize,
    /// Open connections per source address (IPv6: per /64); further ones are closed at once.
    pub max_connections_per_ip: usize,
    /// Time allowed for the TLS handshake.
    #[serde(with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// Time allowed between the handshake and a request's first byte.
    #[serde(with = "humantime_serde_compat")]
    pub first_byte_timeout: Duration,
    /// Time allowed to send a request's headers (HTTP/1.1).
    #[serde(with = "humantime_serde_compat")]
    pub header_timeout: Duration,
    /// A connection with no request in flight and no bytes received for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Time allowed for one request, body included.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Interval of HTTP/2 keep-alive pings.
    #[serde(with = "humantime_serde_compat")]
    pub http2_keep_alive_interval: Duration,
    /// An HTTP/2 connection whose ping is not answered within this is closed.
    #[serde(with = "humantime_serde_compat")]
    pub http2_keep_alive_timeout: Duration,
    /// Refusals of callers who proved no identity are audited as one record per source,
    /// call and reason per interval, with a count.
    #[serde(with = "humantime_serde_compat")]
    pub refusal_audit_interval: Duration,
}

impl LimitsConfig {
    /// Refuses values that would make the broker unusable or spin: a zero or huge timeout, a
    /// burst below its rate, no connection or stream at all. The message names the key.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("limits.{key}: {why}")));
        let rates = [
            ("exchange_per_ip", self.exchange_per_ip),
            ("exchange_per_subject", self.exchange_per_subject),
            ("exchange_global", self.exchange_global),
            ("read_per_ip", self.read_per_ip),
            ("read_per_subject", self.read_per_subject),
            ("read_global", self.read_global),
            ("admin_per_ip", self.admin_per_ip),
            ("admin_per_subject", self.admin_per_subject),
            ("admin_global", self.admin_global),
        ];
        for (key, rate) in rates {
            if rate.per_second > 0
                && let Some(burst) = rate.burst
                && burst < rate.per_second
            {
                return bad(key, "burst must be at least per_second");
            }
        }
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
            ("http2_keep_alive_interval", self.http2_keep_alive_interval),
            ("http2_keep_alive_timeout", self.http2_keep_alive_timeout),
            ("refusal_audit_interval", self.refusal_audit_interval),
        ];
        for (key, d) in durations {
            if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
                return bad(key, "must be between 100ms and 24h");
            }
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.http2_max_concurrent_streams == 0 {
            return bad("http2_max_concurrent_streams", "must be at least 1");
        }
        Ok(())
    }

    /// The defaults with every rate limit off (benchmarks measure capacity, not limits).
    #[must_use]
    pub fn without_rates() -> LimitsConfig {
        const OFF: Rate = Rate::new(0, 0);
        LimitsConfig {
            exchange_per_ip: OFF,
            exchange_per_subject: OFF,
            exchange_global: OFF,
            read_per_ip: OFF,
            read_per_subject: OFF,
            read_global: OFF,
            admin_per_ip: OFF,
            admin_per_subject: OFF,
            admin_global: OFF,
            ..LimitsConfig::default()
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            exchange_per_ip: Rate::new(200, 1_000),
            exchange_per_subject: Rate::new(50, 500),
            exchange_global: Rate::new(3_000, 6_000),
            read_per_ip: Rate::new(1_000, 4_000),
            read_per_subject: Rate::new(200, 1_000),
            read_global: Rate::new(30_000, 60_000),
            admin_per_ip: Rate::new(20, 100),
            admin_per_subject: Rate::new(20, 100),
            admin_global: Rate::new(100, 200),
            max_connections: 4_096,
            max_connections_per_ip: 512,
            handshake_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            http2_max_concurrent_streams: 128,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(10),
            refusal_audit_interval: Duration::from_secs(60),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA whose client certificates may use `/v1/admin/`.
    pub admin_client_ca: Option<PathBuf>,
    /// CRLs (PEM) of `admin_client_ca`: revoked admin client certificates fail the handshake.
    pub crl: Option<PathBuf>,
}

/// `[keys]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// File holding the base64 root key (mode 0600).
    pub root_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the base64 root key.
    pub root_key_env: Option<String>,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit log file (JSON lines).
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
    /// Also print every record on standard output.
    #[serde(default)]
    pub stdout: bool,
    /// Replica name written into every record.
    #[serde(default)]
    pub replica: Option<String>,
    /// Start even though the audit file is behind its anchor in the store (cut, replaced or
    /// emptied): the operator's reason, recorded in the audit log with both heads before the
    /// broker re-anchors. For disaster recovery only; remove it after that start.
    #[serde(default)]
    pub accept_behind_anchor: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: default_audit_file(),
            stdout: false,
            replica: None,
            accept_behind_anchor: None,
        }
    }
}

/// `[postgres.<name>]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// Connection URL of the administrative connection.
    pub url: String,
}

/// A connection URL with any password replaced by `***` (for Debug output and logs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let pw = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{pw}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("store", &redact_url(&self.store))
            .field("policies", &self.policies)
            .field("tls", &self.tls)
            .field("keys", &self.keys)
            .field("audit", &self.audit)
            .field("issuer", &self.issuer)
            .field("postgres", &self.postgres)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_store() -> String {
    "sqlite://data/jobpass.db".into()
}
fn default_policies() -> PathBuf {
    PathBuf::from("policies")
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_audit_file() -> PathBuf {
    PathBuf::from("data/audit.log")
}
fn default_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_sweep() -> Duration {
    Duration::from_secs(60)
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
    }
}

impl Config {
    /// Reads `file` (if given) and the `JOBPASS_*` variables of the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(file, vars)
    }

    /// Like [`Config::load`] with an explicit set of environment variables (testable).
    pub fn load_with_env(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "file {} does not exist",
                    f.display()
                )));
            }
            builder = builder.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        let mut env = std::collections::HashMap::new();
        let mut ignored = Vec::new();
        for (name, value) in vars {
            if config_env_var(&name)? {
                env.insert(name, value);
            } else if name.starts_with("JOBPASS_") && !is_reserved_env(&name) {
                ignored.push(name);
            }
        }
        ignored.sort_unstable();
        builder = builder.add_source(
            config::Environment::with_prefix("JOBPASS")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut cfg: Config = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let base = file
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        cfg.ignored_env_vars = ignored;
        cfg.resolve_paths(&base);
        cfg.limits.check()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.policies);
        fix(&mut self.audit.file);
        for p in [
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.tls.admin_client_ca,
            &mut self.tls.crl,
            &mut self.keys.root_key_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for i in &mut self.issuer {
            for p in [&mut i.ca_file, &mut i.jwks_file].into_iter().flatten() {
                fix(p);
            }
        }
        if let Some(rest) = self.store.strip_prefix("sqlite://") {
            let p = Path::new(rest);
            if p.is_relative() && !base.as_os_str().is_empty() && !rest.starts_with(':') {
                self.store = format!("sqlite://{}", base.join(p).display());
            }
        }
    }

    /// The broker's public base URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.insecure_http { "http" } else { "https" };
                format!("{scheme}://{}", self.listen)
            }
        }
    }
}

/// Variables with the JOBPASS_ prefix that are not configuration keys: the CLI's own
/// (`JOBPASS_SERVER`, …), the log filter, a root key held in a variable, and test or benchmark
/// settings. Any other `JOBPASS_*` variable must name a configuration key.
/// The top-level keys of [`Config`] (a test checks this list against the struct).
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "store",
    "policies",
    "leeway",
    "max_body_bytes",
    "insecure_http",
    "tls",
    "keys",
    "audit",
    "issuer",
    "postgres",
    "vault_compat_listen",
    "lease_retention",
    "sweep_interval",
    "limits",
];

/// Whether the variable `name` is configuration. `JOBPASS_<KEY>` and `JOBPASS_<KEY>__<…>` are,
/// for a top-level key; the CLI's own variables are not. Others are not configuration either
/// — `jobpass exchange --format env` exports a job's credentials as `JOBPASS_<GRANT>` and
/// `JOBPASS_LEASE_ID`, and a shell that did so must still run every command — unless the
/// name looks like a misspelt key (nested with `__`, or within two edits of a key): that is
/// refused, naming the key it resembles, so a typo cannot silently leave a setting at its
/// default.
pub(crate) fn config_env_var(name: &str) -> Result<bool, ConfigError> {
    let Some(rest) = name.strip_prefix("JOBPASS_") else {
        return Ok(false);
    };
    if is_reserved_env(name) {
        return Ok(false);
    }
    let (head, nested) = match rest.split_once("__") {
        Some((head, _)) => (head, true),
        None => (rest, false),
    };
    let head = head.to_ascii_lowercase();
    if TOP_LEVEL_KEYS.contains(&head.as_str()) {
        return Ok(true);
    }
    // `JOBPASS_TLS_CRL` for `JOBPASS_TLS__CRL`: a nested key with one underscore.
    if let Some(key) = TOP_LEVEL_KEYS
        .iter()
        .find(|k| head.strip_prefix(**k).is_some_and(|r| r.starts_with('_')))
    {
        let nested = rest.get(key.len() + 1..).unwrap_or_default();
        return Err(ConfigError::Invalid(format!(
            "environment variable {name} is not a configuration key: did you mean JOBPASS_{}__{nested}? (two underscores between nested keys)",
            key.to_ascii_uppercase()
        )));
    }
    // A typo: one edit (a swap of neighbours counts as one) from a short key, two from a
    // longer one; a short unrelated name (`JOBPASS_S` of a grant `s`) is not one.
    let closest = TOP_LEVEL_KEYS
        .iter()
        .map(|k| (strsim::osa_distance(k, &head), *k))
        .filter(|(d, k)| *d <= if k.len() <= 4 { 1 } else { 2 })
        .min();
    match closest {
        Some((_, key)) => Err(ConfigError::Invalid(format!(
            "environment variable {name} is not a configuration key (`{head}`): did you mean JOBPASS_{}?",
            key.to_ascii_uppercase()
        ))),
        _ if nested => Err(ConfigError::Invalid(format!(
            "environment variable {name} is not a configuration key (`{head}`)"
        ))),
        _ => Ok(false),
    }
}

/// Why a credential cannot be exported as the variable `name`: jobpass itself reads it.
#[must_use]
pub fn credential_variable_conflict(name: &str) -> Option<&'static str> {
    if name == "JOBPASS_LEASE_ID" {
        Some("the variable of the lease's id")
    } else if is_reserved_env(name)
        && !name.starts_with("JOBPASS_TEST_")
        && !name.starts_with("JOBPASS_BENCH_")
    {
        Some("a variable the jobpass command line reads")
    } else if !matches!(config_env_var(name), Ok(false)) {
        Some("a variable the broker's configuration reads")
    } else {
        None
    }
}

pub(crate) fn is_reserved_env(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "JOBPASS_ROOT_KEY",
        "JOBPASS_LOG",
        "JOBPASS_TOKEN",
        "JOBPASS_CONFIG",
        "JOBPASS_SERVER",
        "JOBPASS_CERT",
        "JOBPASS_KEY",
        "JOBPASS_CA",
    ];
    EXACT.contains(&name) || name.starts_with("JOBPASS_TEST_") || name.starts_with("JOBPASS_BENCH_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("jobpass.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn debug_output_hides_database_passwords() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/x?sslmode=verify-full"),
            "postgres://app:***@db:5432/x?sslmode=verify-full"
        );
        assert_eq!(redact_url("sqlite://data/j.db"), "sqlite://data/j.db");
        let t = PostgresTarget {
            url: "postgres://u:pw-secret@h/db".into(),
        };
        assert!(!format!("{t:?}").contains("pw-secret"));
    }

    #[test]
    fn the_example_file_loads_and_shows_the_default_limits() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobpass.example.toml");
        let cfg = Config::load_with_env(Some(&example), vec![]).unwrap();
        let d = LimitsConfig::default();
        let l = &cfg.limits;
        assert_eq!(
            [l.exchange_per_ip, l.exchange_per_subject, l.exchange_global],
            [d.exchange_per_ip, d.exchange_per_subject, d.exchange_global]
        );
        assert_eq!(
            [l.read_per_ip, l.read_per_subject, l.read_global],
            [d.read_per_ip, d.read_per_subject, d.read_global]
        );
        assert_eq!(
            [l.admin_per_ip, l.admin_per_subject, l.admin_global],
            [d.admin_per_ip, d.admin_per_subject, d.admin_global]
        );
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (d.max_connections, d.max_connections_per_ip)
        );
        assert_eq!(
            [
                l.handshake_timeout,
                l.first_byte_timeout,
                l.header_timeout,
                l.idle_timeout,
                l.request_timeout,
                l.http2_keep_alive_interval,
                l.http2_keep_alive_timeout,
                l.refusal_audit_interval
            ],
            [
                d.handshake_timeout,
                d.first_byte_timeout,
                d.header_timeout,
                d.idle_timeout,
                d.request_timeout,
                d.http2_keep_alive_interval,
                d.http2_keep_alive_timeout,
                d.refusal_audit_interval
            ]
        );
        assert_eq!(
            l.http2_max_concurrent_streams,
            d.http2_max_concurrent_streams
        );
    }

    #[test]
    fn a_partial_limits_table_keeps_the_other_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[limits]\nexchange_per_ip = { per_second = 5 }\nidle_timeout = \"5s\"\n",
        );
        let cfg = Config::load_with_env(
            Some(&p),
            vec![("JOBPASS_LIMITS__READ_GLOBAL__PER_SECOND".into(), "0".into())],
        )
        .unwrap();
        assert_eq!(cfg.limits.exchange_per_ip.per_second, 5);
        assert_eq!(cfg.limits.exchange_per_ip.burst, None);
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(cfg.limits.read_global.per_second, 0);
        assert_eq!(
            cfg.limits.max_connections,
            LimitsConfig::default().max_connections
        );
    }

    #[test]
    fn limits_that_would_stop_or_spin_the_broker_are_refused_naming_the_key() {
        let d = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("idle_timeout = \"0s\"", "limits.idle_timeout"),
            (
                "http2_keep_alive_interval = \"0s\"",
                "limits.http2_keep_alive_interval",
            ),
            ("request_timeout = \"400days\"", "limits.request_timeout"),
            ("max_connections = 0", "limits.max_connections"),
            (
                "http2_max_concurrent_streams = 0",
                "limits.http2_max_concurrent_streams",
            ),
            (
                "read_global = { per_second = 10, burst = 2 }",
                "limits.read_global",
            ),
        ] {
            let p = write(d.path(), &format!("[limits]\n{text}\n"));
            let e = Config::load_with_env(Some(&p), vec![])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "listen = \"127.0.0.1:1\"\nlisen_typo = 1\n");
        let e = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen_typo"), "{e}");
    }

    #[test]
    fn a_misspelt_variable_is_an_error_naming_it_and_the_key() {
        for (var, key) in [
            ("JOBPASS_LISEN", "JOBPASS_LISTEN"),
            ("JOBPASS_AUDT__FILE", "JOBPASS_AUDIT"),
            ("JOBPASS_STOR", "JOBPASS_STORE"),
            ("JOBPASS_TSL", "JOBPASS_TLS"),
            ("JOBPASS_TLS_CRL", "JOBPASS_TLS__CRL"),
            ("JOBPASS_AUDIT_STDOUT", "JOBPASS_AUDIT__STDOUT"),
            (
                "JOBPASS_LIMITS_MAX_CONNECTIONS",
                "JOBPASS_LIMITS__MAX_CONNECTIONS",
            ),
        ] {
            let e = Config::load_with_env(None, vec![(var.into(), "x".into())])
                .unwrap_err()
                .to_string();
            assert!(e.contains(var) && e.contains(key), "{e}");
        }
        let e = Config::load_with_env(None, vec![("JOBPASS_WHATEVER__X".into(), "x".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("JOBPASS_WHATEVER__X"), "{e}");
    }

    #[test]
    fn the_credentials_exchange_exports_are_not_configuration() {
        // What `jobpass exchange --format env` leaves in a shell: later commands still run.
        let cfg = Config::load_with_env(
            None,
            vec![
                ("JOBPASS_LEASE_ID".into(), "lse_1".into()),
                ("JOBPASS_SECRETS".into(), "jpt_x".into()),
                ("JOBPASS_DEPLOY_DB_PASSWORD".into(), "p".into()),
                ("JOBPASS_SERVER".into(), "https://127.0.0.1:8443".into()),
                ("JOBPASS_LEEWAY".into(), "7s".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            cfg.leeway,
            Duration::from_secs(7),
            "a real key still applies"
        );
    }

    #[test]
    fn the_list_of_top_level_keys_is_the_config_struct() {
        // serde names every field it expects when it meets an unknown one.
        let e = toml::from_str::<Config>("zzz_unknown = 1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let mut expected: Vec<&str> = e.split('`').skip(3).step_by(2).collect();
        expected.sort_unstable();
        let mut ours = TOP_LEVEL_KEYS.to_vec();
        ours.sort_unstable();
        assert_eq!(expected, ours, "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "leeway = \"soon\"\n");
        let e = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("leeway") || e.contains("soon"), "{e}");
    }

    #[test]
    fn env_overrides_nested_keys_and_paths_are_relative_to_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[tls]\ncert = \"a.pem\"\n");
        let cfg = Config::load_with_env(
            Some(&p),
            vec![
                ("JOBPASS_TLS__KEY".into(), "k.pem".into()),
                ("JOBPASS_LEEWAY".into(), "5s".into()),
                ("JOBPASS_ROOT_KEY".into(), "ignored".into()),
                ("JOBPASS_TEST_POSTGRES_URL".into(), "ignored".into()),
                ("JOBPASS_SERVER".into(), "ignored".into()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.tls.cert.unwrap(), d.path().join("a.pem"));
        assert_eq!(cfg.tls.key.unwrap(), d.path().join("k.pem"));
        assert_eq!(cfg.leeway, Duration::from_secs(5));
        assert_eq!(cfg.policies, d.path().join("policies"));
    }
}
