//! Fixture generator: fills a jobpass store with many ACTIVE leases shaped like the ones real
//! GitHub Actions exchanges leave behind, through the same batch API the exchange's ledger uses
//! (`Store::begin` → `WriteTx::insert_leases` → `commit`).
//!
//! Shared by `examples/fixtures.rs`, `benches/scale.rs` and `benches/revoke.rs` (each includes
//! this file with `#[path = …] mod fixtures;`), so there is one generator.
//!
//! Each lease gets:
//! - a time-ordered id (`lse_` + the issue time in milliseconds, as the exchange makes them),
//!   issued in the hour before the fill started, so every real lease made afterwards sorts
//!   after the fixtures; it expires 25 h after its issue (so ~24 h after the fill);
//! - 16 indexed claims of a GitHub Actions ID token (`repository`, `repository_owner`, `ref`,
//!   `sha`, `run_id` (unique), …); lease `i` belongs to repository `i % repos`, so one
//!   repository holds `leases / repos` leases spread over the whole id range;
//! - two credentials: a `token` (random 32-byte `token_hash`, scope `["app/*"]`) and a `jwt`;
//! - `sealed`: 900 random bytes under key version 1. They are never decrypted by the exchange
//!   or revocation paths; the lease listing (`GET /v1/admin/leases`) tries to and shows no
//!   details for them.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use jobpass::store::{CredentialRow, LeaseRow, NewLease, Store};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Error type of the generator.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Issuer of every fixture lease.
pub const ISSUER: &str = "https://token.actions.githubusercontent.com";
/// GitHub organisation owning every fixture repository.
pub const OWNER: &str = "fixture-org";
/// Leases per write transaction.
pub const DEFAULT_BATCH: usize = 5000;
/// Size of the random `sealed` blob of a lease (a dev-token exchange seals ~910 bytes).
pub const SEALED_BYTES: usize = 900;
/// Fixture leases are issued over this span, ending a minute before the fill starts.
const SPAN_MS: u64 = 3_600_000;
/// Lifetime of a fixture lease.
const TTL_SECS: i64 = 25 * 3600;
/// Leases folded per claim-index fold while generating.
const FOLD_CHUNK: u32 = 5000;
/// `run_id` of lease `i` is `RUN_ID_BASE + i` (far from the dev token's `1000`).
const RUN_ID_BASE: u64 = 9_000_000_000;
const WORKFLOWS: [(&str, &str); 3] = [("CI", "ci"), ("Deploy", "deploy"), ("Release", "release")];
const POLICY_VERSION: &str =
    "sha256:f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1";

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of leases.
    pub leases: usize,
    /// Environment of every lease.
    pub env: String,
    /// Roles, assigned round-robin.
    pub roles: Vec<String>,
    /// Number of distinct `repository` values.
    pub repos: usize,
    /// Leases per write transaction.
    pub batch: usize,
    /// Unix milliseconds of "now": leases are issued before it.
    pub now_millis: u64,
}

impl Spec {
    /// `leases` leases in `env` (roles of that environment's policy), 10 repositories.
    pub fn new(leases: usize, env: &str, now_millis: u64) -> Self {
        Spec {
            leases,
            env: env.to_string(),
            roles: default_roles(env),
            repos: 10,
            batch: DEFAULT_BATCH,
            now_millis,
        }
    }

    /// The `repository` claim of repository number `r`.
    pub fn repository(&self, r: usize) -> String {
        format!("{OWNER}/service-{r:03}")
    }

    /// Repository number of lease `i`.
    pub fn repo_of(&self, i: usize) -> usize {
        i % self.repos.max(1)
    }

    /// The (unique) `run_id` claim of lease `i`.
    pub fn run_id(&self, i: usize) -> String {
        (RUN_ID_BASE + i as u64).to_string()
    }

    /// How many leases repository `r` holds.
    pub fn leases_in_repo(&self, r: usize) -> usize {
        let repos = self.repos.max(1);
        self.leases / repos + usize::from(r < self.leases % repos)
    }

    /// Unix milliseconds at which lease `i` was issued.
    fn issued_millis(&self, i: usize) -> u64 {
        let start = self.now_millis.saturating_sub(SPAN_MS + 60_000);
        let step = SPAN_MS / self.leases.max(1) as u64;
        start + (i as u64) * step.max(1)
    }
}

/// Roles of the repository's example policy for `env`.
pub fn default_roles(env: &str) -> Vec<String> {
    let roles: &[&str] = match env {
        "prod" => &["deploy-web", "read-config"],
        "staging" => &["deploy-web", "deploy-gitlab"],
        _ => &["ci"],
    };
    roles.iter().map(|r| (*r).to_string()).collect()
}

/// Progress after a committed batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Leases committed so far.
    pub done: usize,
    /// Leases to write.
    pub total: usize,
    /// Time since the fill started.
    pub elapsed: Duration,
}

impl Progress {
    /// Leases per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What a fill wrote.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Leases.
    pub leases: usize,
    /// Indexed claim rows.
    pub claims: usize,
    /// Credential rows.
    pub credentials: usize,
    /// Wall time, including the final checkpoint (SQLite) or VACUUM (PostgreSQL).
    pub elapsed: Duration,
}

fn hex_bytes<const N: usize>(rng: &mut StdRng) -> String {
    let mut b = [0u8; N];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Lease number `i` of `spec`.
pub fn lease(spec: &Spec, i: usize, rng: &mut StdRng) -> Result<NewLease, Error> {
    let issued_ms = spec.issued_millis(i);
    let issued_at = i64::try_from(issued_ms / 1000)?;
    let expires_at = issued_at + TTL_SECS;
    let id = jobpass::crypto::random::time_ordered_id("lse_", issued_ms)?;
    let repo = spec.repository(spec.repo_of(i));
    let run_number = i / spec.repos.max(1) + 1;
    // Mostly pushes to main; some pull requests and manual runs.
    let (event, git_ref) = match i % 8 {
        6 => (
            "pull_request",
            format!("refs/pull/{}/merge", run_number % 500 + 1),
        ),
        7 => ("workflow_dispatch", "refs/heads/main".to_string()),
        _ => ("push", "refs/heads/main".to_string()),
    };
    let (workflow, file) = WORKFLOWS[i % WORKFLOWS.len()];
    let subject = format!("repo:{repo}:environment:{}", spec.env);
    let claims: Vec<(String, String)> = [
        ("repository", repo.clone()),
        ("repository_owner", OWNER.to_string()),
        ("repository_visibility", "private".to_string()),
        ("ref", git_ref.clone()),
        ("ref_type", "branch".to_string()),
        ("sha", hex_bytes::<20>(rng)),
        ("workflow", workflow.to_string()),
        (
            "job_workflow_ref",
            format!("{repo}/.github/workflows/{file}.yml@{git_ref}"),
        ),
        ("run_id", spec.run_id(i)),
        ("run_number", run_number.to_string()),
        (
            "run_attempt",
            (1 + usize::from(i.is_multiple_of(20))).to_string(),
        ),
        ("actor", format!("dev-{:03}", (i / 3) % 397)),
        ("event_name", event.to_string()),
        ("environment", spec.env.clone()),
        ("runner_environment", "github-hosted".to_string()),
        ("sub", subject.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut sealed = vec![0u8; SEALED_BYTES];
    rng.fill_bytes(&mut sealed);
    let mut token_hash = vec![0u8; 32];
    rng.fill_bytes(&mut token_hash);
    let credential =
        |name: &str, kind: jobpass::mint::Kind, token_hash: Option<Vec<u8>>, scope: &str| {
            Ok::<_, Error>(CredentialRow {
                id: jobpass::crypto::random::time_ordered_id("crd_", issued_ms)?,
                lease_id: id.clone(),
                env: spec.env.clone(),
                name: name.to_string(),
                kind,
                token_hash,
                scope: scope.to_string(),
                expires_at,
            })
        };
    let credentials = vec![
        credential(
            "api",
            jobpass::mint::Kind::Token,
            Some(token_hash),
            "[\"app/*\"]",
        )?,
        credential("deploy", jobpass::mint::Kind::Jwt, None, "[]")?,
    ];
    let role = spec
        .roles
        .get(i % spec.roles.len().max(1))
        .cloned()
        .unwrap_or_else(|| "ci".to_string());
    Ok(NewLease {
        lease: LeaseRow {
            id: id.clone(),
            env: spec.env.clone(),
            role,
            issuer: ISSUER.to_string(),
            subject,
            policy_version: POLICY_VERSION.to_string(),
            issued_at,
            expires_at,
            revoked_at: None,
            revoke_reason: None,
            key_version: 1,
            sealed,
            revocation: None,
            revocation_attempts: 0,
        },
        claims,
        credentials,
    })
}

/// Writes the leases of `spec` into `store`, `spec.batch` leases per transaction, calling
/// `progress` after each commit. Leases are generated on a blocking thread while the previous
/// batch is written. Ends with a WAL checkpoint (SQLite) or `VACUUM (ANALYZE)` (PostgreSQL:
/// hint bits, visibility map and statistics as autovacuum keeps them in a long-running
/// database), so the store is settled before anything is measured on it.
pub async fn fill<F: FnMut(&Progress)>(
    store: &Store,
    spec: &Spec,
    mut progress: F,
) -> Result<Summary, Error> {
    let start = Instant::now();
    let batch = spec.batch.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewLease>>(2);
    let gen_spec = spec.clone();
    let producer = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let mut rng = StdRng::from_entropy();
        let mut from = 0;
        while from < gen_spec.leases {
            let to = (from + batch).min(gen_spec.leases);
            let leases = (from..to)
                .map(|i| lease(&gen_spec, i, &mut rng))
                .collect::<Result<Vec<_>, _>>()?;
            if tx.blocking_send(leases).is_err() {
                break; // the writer stopped on an error
            }
            from = to;
        }
        Ok(())
    });
    let mut summary = Summary {
        leases: 0,
        claims: 0,
        credentials: 0,
        elapsed: Duration::ZERO,
    };
    let written: Result<(), Error> = async {
        while let Some(leases) = rx.recv().await {
            let refs: Vec<&NewLease> = leases.iter().collect();
            let mut wtx = store.begin().await?;
            wtx.insert_leases(&refs).await?;
            wtx.commit().await?;
            // Fixtures stand for leases issued long ago: their claims are in the index, as the
            // ledger leaves them (SQLite writes claims to a backlog first).
            while store.fold_claims(FOLD_CHUNK).await? == u64::from(FOLD_CHUNK) {}
            summary.leases += leases.len();
            summary.claims += leases.iter().map(|l| l.claims.len()).sum::<usize>();
            summary.credentials += leases.iter().map(|l| l.credentials.len()).sum::<usize>();
            progress(&Progress {
                done: summary.leases,
                total: spec.leases,
                elapsed: start.elapsed(),
            });
        }
        Ok(())
    }
    .await;
    drop(rx);
    let generated = producer.await?;
    written?;
    generated?;
    settle(store).await?;
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// Checkpoints and truncates the WAL (SQLite), or vacuums and gathers planner statistics
/// (PostgreSQL).
pub async fn settle(store: &Store) -> Result<(), Error> {
    match store {
        Store::Sqlite { writer, .. } => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(writer)
                .await?;
        }
        Store::Postgres { pool } => {
            sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;
        }
    }
    Ok(())
}

/// Closes the store's connections (before a broker opens the same store).
pub async fn close(store: Store) {
    match store {
        Store::Sqlite { writer, reader } => {
            reader.close().await;
            writer.close().await;
        }
        Store::Postgres { pool } => pool.close().await,
    }
}

/// `N` as `1,000,000`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fresh, empty database on the PostgreSQL server of `url` (benchmarks never reuse data);
/// returns its URL. Drop it with [`drop_database`].
pub async fn fresh_database(url: &str, name: &str) -> Result<String, Error> {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (base, _) = url.split_once('?').unwrap_or((url, ""));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Ok(format!("{base}/{name}?sslmode=disable"))
}

/// Drops a database made by [`fresh_database`].
pub async fn drop_database(url: &str, name: &str) -> Result<(), Error> {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
