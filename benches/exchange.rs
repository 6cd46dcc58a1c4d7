//! Load generator for the exchange path: starts a broker in-process (dev mode: built-in issuer,
//! generated PKI, SQLite store, audit log with fsync) on loopback TLS, then fires exchanges from
//! many concurrent HTTPS clients and reports throughput and latency percentiles.
//!
//! Then, one request at a time, the latency of a token-only role against a role with a real
//! PostgreSQL grant (when a server answers on JOBPASS_TEST_POSTGRES_URL or
//! postgres://postgres@127.0.0.1:5432/postgres).
//!
//! `cargo bench --bench exchange` (env: JOBPASS_BENCH_N, JOBPASS_BENCH_CONCURRENCY,
//! JOBPASS_BENCH_SEQUENTIAL).
#![allow(
    unreachable_pub,
    missing_docs,
    let_underscore_drop,
    clippy::print_stdout,
    reason = "a test or benchmark harness: its items are its own, and it reports on standard output"
)]
#![allow(clippy::disallowed_types)] // a benchmark measures wall-clock time
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobpass::app::App;
use jobpass::clock::SystemClock;
use jobpass::http::server::serve;
use openidconnect::reqwest;
use serde_json::{Map, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_usize("JOBPASS_BENCH_N", 3000);
    let concurrency = env_usize("JOBPASS_BENCH_CONCURRENCY", 32);
    let sequential = env_usize("JOBPASS_BENCH_SEQUENTIAL", 300);
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for e in std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .unwrap()
    {
        let e = e.unwrap();
        std::fs::copy(e.path(), policies.join(e.file_name())).unwrap();
    }
    let pg_url = postgres_url().await;
    std::fs::write(policies.join("bench.toml"), bench_policy(pg_url.is_some())).unwrap();
    let data = dir.path().join("data");
    let dev = jobpass::dev::prepare(
        &data,
        &policies,
        "127.0.0.1:0".parse().unwrap(),
        &SystemClock,
    )
    .unwrap();
    let mut config = dev.config.clone();
    config.limits = jobpass::config::LimitsConfig::without_rates();
    if let Some(url) = &pg_url {
        config.postgres.insert(
            "main".into(),
            serde_json::from_value(json!({"url": url})).unwrap(),
        );
    }
    let tls = jobpass::tls::server_config(
        config.tls.cert.as_ref().unwrap(),
        config.tls.key.as_ref().unwrap(),
        jobpass::tls::AdminClientAuth::from_config(&config.tls, &SystemClock).unwrap(),
    )
    .unwrap();
    // JOBPASS_BENCH_STORE=postgres://… runs on a fresh PostgreSQL database instead of SQLite;
    // JOBPASS_BENCH_REPLICAS=2 starts that many replicas on the store (clients alternate).
    let replicas = env_usize("JOBPASS_BENCH_REPLICAS", 1).max(1);
    if let Ok(store) = std::env::var("JOBPASS_BENCH_STORE") {
        config.store = fresh_database(&store).await;
    }
    let store_kind = if config.store.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for i in 0..replicas {
        let mut c = config.clone();
        c.audit.file = data.join(format!("audit-{i}.log"));
        let app = App::build(c, Arc::new(SystemClock), Some(dev.issuer.clone()))
            .await
            .unwrap();
        let running = serve(
            app.clone(),
            "127.0.0.1:0".parse().unwrap(),
            Some(tls.clone()),
        )
        .await
        .unwrap();
        urls.push(format!("https://{}/v1/exchange", running.addr));
        apps.push(app);
        servers.push(running);
    }
    let app = apps[0].clone();
    let url = urls[0].clone();
    let urls = Arc::new(urls);

    let tokens: Vec<String> = (0..n + concurrency)
        .map(|_| {
            jobpass::dev::token(&data, &policies, "dev", None, Map::new(), 600, &SystemClock)
                .unwrap()
        })
        .collect();
    let ca = std::fs::read_to_string(data.join("certs/ca.pem")).unwrap();
    let tlsc = jobpass::tls::client_config(Some(&ca), None, None).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tlsc).clone())
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();

    let tokens = Arc::new(tokens);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Warm-up: one exchange per worker (connections, keys, caches).
    let run = |limit: usize| {
        let mut handles = Vec::new();
        for _ in 0..concurrency {
            let (client, urls, tokens, next) =
                (client.clone(), urls.clone(), tokens.clone(), next.clone());
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= limit {
                        break;
                    }
                    let body = json!({"token": tokens[i], "environment": "dev"}).to_string();
                    let t = Instant::now();
                    let r = client
                        .post(&urls[i % urls.len()])
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let ok = r.status().is_success();
                    let _ = r.bytes().await;
                    assert!(ok, "exchange failed");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        handles
    };
    for h in run(concurrency) {
        h.await.unwrap();
    }
    let start = Instant::now();
    let mut lat: Vec<Duration> = Vec::new();
    for h in run(n + concurrency) {
        lat.extend(h.await.unwrap());
    }
    let elapsed = start.elapsed();
    lat.sort();
    println!(
        "exchange ({store_kind}, {replicas} replica(s)): {} requests, concurrency {concurrency}, {:.2?} total: {:.0} exchanges/s; latency p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
        lat.len(),
        elapsed,
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );

    // One request at a time: token-only vs a real PostgreSQL role.
    let mut roles = vec!["token-only"];
    if pg_url.is_some() {
        roles.push("db-reader");
    } else {
        println!("(no PostgreSQL reachable: the postgres-grant latency is not measured)");
    }
    for role in roles {
        let mut lat = Vec::new();
        for _ in 0..sequential {
            let token = jobpass::dev::token(
                &data,
                &policies,
                "bench",
                None,
                Map::new(),
                600,
                &SystemClock,
            )
            .unwrap();
            let body = json!({"token": token, "environment": "bench", "role": role}).to_string();
            let t = Instant::now();
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let ok = r.status().is_success();
            let text = r.text().await.unwrap();
            assert!(ok, "exchange failed: {text}");
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "sequential {role}: {} exchanges, median {:.2?}, p90 {:.2?}, p99 {:.2?}",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99)
        );
    }
    // Revoke everything so the database roles are dropped before the broker stops.
    let sel = jobpass::store::Selector {
        all: true,
        ..Default::default()
    };
    app.revoke(&sel, "benchmark done", jobpass::audit::Actor::default())
        .await
        .unwrap();
    for _ in 0..600 {
        if jobpass::leases::teardown::run_due(&app).await == 0 {
            break;
        }
    }
    for running in servers {
        running.shutdown().await;
    }
}

/// A fresh database on the server of `url` (benchmarks never reuse data).
async fn fresh_database(url: &str) -> String {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let name = format!("jp_bench_{}", std::process::id());
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = url.split_once('?').unwrap_or((url, ""));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{name}?sslmode=disable")
}

async fn postgres_url() -> Option<String> {
    let url = std::env::var("JOBPASS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    };
    let pool = tokio::time::timeout(Duration::from_secs(2), sqlx::PgPool::connect(&url))
        .await
        .ok()?
        .ok()?;
    // A NOLOGIN group for the bench role; ignore "already exists".
    let _ = sqlx::query("CREATE ROLE jp_bench_reader NOLOGIN")
        .execute(&pool)
        .await;
    Some(url)
}

fn bench_policy(with_postgres: bool) -> String {
    let mut p = String::from(
        r#"[environment]
name = "bench"
issuers = ["https://token.actions.githubusercontent.com"]
audience = "https://jobpass.example.com"
max_ttl = "30m"

[[role]]
name = "token-only"
ttl = "10m"
[role.match]
repository = "octo-org/*"

[[role.grant]]
name = "api"
kind = "token"
secrets = ["bench/*"]
"#,
    );
    if with_postgres {
        p.push_str(
            r#"
[[role]]
name = "db-reader"
ttl = "10m"
[role.match]
repository = "octo-org/*"

[[role.grant]]
name = "db"
kind = "postgres"
database = "main"
member_of = ["jp_bench_reader"]
"#,
        );
    }
    p
}
