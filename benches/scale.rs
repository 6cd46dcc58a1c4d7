//! Scale: exchange latency and revocation by claim with many active leases in the store.
//!
//! For each size (env `JOBPASS_BENCH_SCALES`, default `1000,1000000`), on a fresh store:
//! 1. fill it with that many active GitHub-Actions-shaped leases (the shared generator,
//!    `benches/support/fixtures.rs`, also `cargo run --example fixtures`), 10 repositories
//!    (`JOBPASS_BENCH_REPOS`), environment `dev`;
//! 2. start an in-process broker on that store (dev mode: built-in issuer, generated PKI,
//!    audit log with fsync) on loopback TLS;
//! 3. measure sequential exchange latency (`JOBPASS_BENCH_SEQUENTIAL`, default 500, one at a
//!    time over a keep-alive HTTPS connection), then concurrent throughput
//!    (`JOBPASS_BENCH_N`, default 2000, `JOBPASS_BENCH_CONCURRENCY`, default 32);
//! 4. revoke through the real admin API (`POST /v1/admin/revoke`, `security` client
//!    certificate), timing the whole HTTP call: one run (`{"claims": {"run_id": …}}`), then one
//!    repository (`{"claims": {"repository": …}}`, size / repos leases: 10^5 at 10^6). Then,
//!    for comparison, the store's `revoke` alone (no HTTP, JSON or audit) on another
//!    repository.
//!
//! `JOBPASS_BENCH_STORE=postgres://…` runs each size on a fresh PostgreSQL database instead of
//! SQLite (dropped afterwards). `JOBPASS_BENCH_SQLITE_CACHE_MIB=N` (experiment) sets
//! `PRAGMA cache_size` to N MiB on the broker's SQLite writer connection (default: the
//! broker's 16 MiB). Targets (reported, not asserted): exchange p50 at the largest
//! size within 1.25× of the smallest; revoking 10^5 leases by claim within 2 s.
//!
//! `cargo bench --bench scale`
#![allow(
    unreachable_pub,
    missing_docs,
    let_underscore_drop,
    clippy::print_stdout,
    reason = "a test or benchmark harness: its items are its own, and it reports on standard output"
)]
#![allow(clippy::disallowed_types)] // a benchmark measures wall-clock time
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/fixtures.rs"]
mod fixtures;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobpass::app::App;
use jobpass::clock::{Clock, SystemClock};
use jobpass::http::server::serve;
use jobpass::store::{Selector, Store};
use openidconnect::reqwest;
use serde_json::{Map, Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Knobs {
    repos: usize,
    sequential: usize,
    n: usize,
    concurrency: usize,
    pg: Option<String>,
    sqlite_cache_mib: Option<usize>,
}

/// One size's results.
struct Row {
    size: usize,
    backend: &'static str,
    fill: Duration,
    db_bytes: Option<u64>,
    seq: [Duration; 3],
    throughput: f64,
    conc: [Duration; 2],
    run: (usize, Duration),
    repo: (usize, usize, Duration),
    repo_sql: (usize, Duration),
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("JOBPASS_BENCH_SCALES")
        .unwrap_or_else(|_| "1000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let knobs = Knobs {
        repos: env_usize("JOBPASS_BENCH_REPOS", 10).max(3),
        sequential: env_usize("JOBPASS_BENCH_SEQUENTIAL", 500).max(1),
        n: env_usize("JOBPASS_BENCH_N", 2000).max(1),
        concurrency: env_usize("JOBPASS_BENCH_CONCURRENCY", 32).max(1),
        pg: std::env::var("JOBPASS_BENCH_STORE")
            .ok()
            .filter(|s| s.starts_with("postgres")),
        sqlite_cache_mib: std::env::var("JOBPASS_BENCH_SQLITE_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let mut rows = Vec::new();
    for size in sizes {
        let row = run_size(size, &knobs).await;
        print_table(std::slice::from_ref(&row));
        rows.push(row);
    }
    println!();
    println!(
        "scale bench: {} sequential exchanges, {} concurrent ({} workers), {} repositories",
        knobs.sequential, knobs.n, knobs.concurrency, knobs.repos
    );
    print_table(&rows);
    if let (Some(small), Some(large)) = (rows.first(), rows.last())
        && rows.len() > 1
    {
        let ratio = large.seq[0].as_secs_f64() / small.seq[0].as_secs_f64().max(1e-9);
        println!(
            "exchange p50 at {} / at {}: {ratio:.2}× (target ≤ 1.25×: {})",
            fixtures::thousands(large.size),
            fixtures::thousands(small.size),
            if ratio <= 1.25 { "met" } else { "NOT met" }
        );
    }
    for r in rows.iter().filter(|r| r.repo.1 >= 100_000) {
        println!(
            "revoke by claim of {} leases at {}: {:.2?} (target ≤ 2 s: {})",
            fixtures::thousands(r.repo.1),
            fixtures::thousands(r.size),
            r.repo.2,
            if r.repo.2 <= Duration::from_secs(2) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:>10} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>8} | {:>7} {:>8} {:>8} | {:>14} | {:>20} | {:>16}",
        "leases",
        "store",
        "fill",
        "db",
        "seq p50",
        "p90",
        "p99",
        "exch/s",
        "conc p50",
        "p99",
        "revoke run",
        "revoke repo (HTTP)",
        "store.revoke"
    );
    for r in rows {
        println!(
            "{:>10} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>8} | {:>7.0} {:>8} {:>8} | {:>14} | {:>20} | {:>16}",
            fixtures::thousands(r.size),
            r.backend,
            format!("{:.1?}", r.fill),
            r.db_bytes
                .map(|b| format!("{:.0}MB", b as f64 / 1e6))
                .unwrap_or_else(|| "-".into()),
            format!("{:.2?}", r.seq[0]),
            format!("{:.2?}", r.seq[1]),
            format!("{:.2?}", r.seq[2]),
            r.throughput,
            format!("{:.2?}", r.conc[0]),
            format!("{:.2?}", r.conc[1]),
            format!("{} in {:.1?}", r.run.0, r.run.1),
            format!("{}/{} in {:.2?}", r.repo.0, r.repo.1, r.repo.2),
            format!("{} in {:.2?}", r.repo_sql.0, r.repo_sql.1),
        );
    }
}

fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

async fn run_size(size: usize, k: &Knobs) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_policies(&policies);
    let data = dir.path().join("data");
    let dev = jobpass::dev::prepare(
        &data,
        &policies,
        "127.0.0.1:0".parse().unwrap(),
        &SystemClock,
    )
    .unwrap();
    let mut config = dev.config.clone();
    let pg_name = format!("jp_scale_{}_{size}", std::process::id());
    if let Some(url) = &k.pg {
        config.store = fixtures::fresh_database(url, &pg_name).await.unwrap();
    }

    // 1. Fill.
    let store = Store::open(&config.store).await.unwrap();
    let backend = store.backend();
    let mut spec = fixtures::Spec::new(size, "dev", SystemClock.unix_millis());
    spec.repos = k.repos;
    eprintln!(
        "[{}] filling {backend} with {} leases…",
        fixtures::thousands(size),
        fixtures::thousands(size)
    );
    let mut last = Instant::now();
    let filled = fixtures::fill(&store, &spec, |p| {
        if last.elapsed() >= Duration::from_secs(15) {
            last = Instant::now();
            eprintln!(
                "  {:>11} / {} leases, {:.0?}, {:.0} leases/s",
                fixtures::thousands(p.done),
                fixtures::thousands(p.total),
                p.elapsed,
                p.rate()
            );
        }
    })
    .await
    .unwrap();
    fixtures::close(store).await;
    let db_bytes = if backend == "sqlite" {
        std::fs::metadata(data.join("jobpass.db"))
            .ok()
            .map(|m| m.len())
    } else {
        None
    };
    let fill_rate = filled.leases as f64 / filled.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "[{}] filled in {:.1?} ({fill_rate:.0} leases/s, {} claim rows, {} credential rows)",
        fixtures::thousands(size),
        filled.elapsed,
        fixtures::thousands(filled.claims),
        fixtures::thousands(filled.credentials),
    );

    // 2. Broker on that store.
    let tls = jobpass::tls::server_config(
        config.tls.cert.as_ref().unwrap(),
        config.tls.key.as_ref().unwrap(),
        jobpass::tls::AdminClientAuth::from_config(&config.tls, &SystemClock).unwrap(),
    )
    .unwrap();
    config.limits = jobpass::config::LimitsConfig::without_rates();
    let app = App::build(config, Arc::new(SystemClock), Some(dev.issuer.clone()))
        .await
        .unwrap();
    if let (Some(mib), Store::Sqlite { writer, .. }) = (k.sqlite_cache_mib, app.store()) {
        // Experiment: a bigger page cache on the broker's single writer connection.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA cache_size = -{}",
            mib * 1024
        )))
        .execute(writer)
        .await
        .unwrap();
        eprintln!("writer connection: PRAGMA cache_size = {mib} MiB");
    }
    let running = serve(app.clone(), "127.0.0.1:0".parse().unwrap(), Some(tls))
        .await
        .unwrap();
    let base = format!("https://{}", running.addr);
    let certs = data.join("certs");
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(
            (*jobpass::tls::client_config(Some(&ca), None, None).unwrap()).clone(),
        )
        .pool_max_idle_per_host(k.concurrency)
        .build()
        .unwrap();
    let sec_cert = std::fs::read_to_string(certs.join("security.pem")).unwrap();
    let sec_key = std::fs::read_to_string(certs.join("security-key.pem")).unwrap();
    let admin = reqwest::Client::builder()
        .use_preconfigured_tls(
            (*jobpass::tls::client_config(Some(&ca), Some(&sec_cert), Some(&sec_key)).unwrap())
                .clone(),
        )
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();

    // 3. Exchanges. Tokens are signed before anything is measured.
    let warmup = k.concurrency;
    let tokens: Vec<String> = (0..warmup + k.sequential + k.n)
        .map(|_| {
            jobpass::dev::token(&data, &policies, "dev", None, Map::new(), 900, &SystemClock)
                .unwrap()
        })
        .collect();
    let tokens = Arc::new(tokens);
    let url = Arc::new(format!("{base}/v1/exchange"));
    let next = Arc::new(AtomicUsize::new(0));
    let run = |limit: usize| {
        (0..k.concurrency)
            .map(|_| {
                let (client, url, tokens, next) =
                    (client.clone(), url.clone(), tokens.clone(), next.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= limit {
                            break;
                        }
                        lat.push(exchange(&client, &url, &tokens[i]).await);
                    }
                    lat
                })
            })
            .collect::<Vec<_>>()
    };
    // Warm-up: one exchange per worker (connections, JWKS, keys, caches).
    for h in run(warmup) {
        h.await.unwrap();
    }
    let mut seq = Vec::with_capacity(k.sequential);
    for i in warmup..warmup + k.sequential {
        seq.push(exchange(&client, &url, &tokens[i]).await);
    }
    seq.sort();
    next.store(warmup + k.sequential, Ordering::SeqCst);
    let start = Instant::now();
    let mut conc = Vec::with_capacity(k.n);
    for h in run(warmup + k.sequential + k.n) {
        conc.extend(h.await.unwrap());
    }
    let elapsed = start.elapsed();
    conc.sort();
    let throughput = conc.len() as f64 / elapsed.as_secs_f64();

    real_lease_shape(app.store()).await;

    // 4. Revocations through the admin API, then the store alone.
    let mut run_lease = size / 2 + 1;
    while spec.repo_of(run_lease) == 0 || spec.repo_of(run_lease) == 1 {
        run_lease += 1;
    }
    let run_lease = run_lease.min(size - 1);
    let run = revoke(
        &admin,
        &base,
        json!({"claims": {"run_id": spec.run_id(run_lease)}}),
    )
    .await;
    let repo_expected = spec.leases_in_repo(0);
    let repo = revoke(
        &admin,
        &base,
        json!({"claims": {"repository": spec.repository(0)}}),
    )
    .await;
    if repo.0 != repo_expected {
        eprintln!(
            "warning: revoked {} leases of {}, expected {repo_expected}",
            repo.0,
            spec.repository(0)
        );
    }
    let sel = Selector {
        claims: vec![("repository".into(), spec.repository(1))],
        ..Selector::default()
    };
    let t = Instant::now();
    let ids = app
        .store()
        .revoke(&sel, app.clock().unix(), "bench (store only)")
        .await
        .unwrap();
    let repo_sql = (ids.len(), t.elapsed());

    running.shutdown().await;
    drop(app);
    if let Some(url) = &k.pg {
        // Let the pool's connections go; WITH (FORCE) ends any left.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = fixtures::drop_database(url, &pg_name).await {
            eprintln!("warning: could not drop database {pg_name}: {e}");
        }
    }
    Row {
        size,
        backend,
        fill: filled.elapsed,
        db_bytes,
        seq: [
            percentile(&seq, 0.50),
            percentile(&seq, 0.90),
            percentile(&seq, 0.99),
        ],
        throughput,
        conc: [percentile(&conc, 0.50), percentile(&conc, 0.99)],
        run,
        repo: (repo.0, repo_expected, repo.1),
        repo_sql,
    }
}

/// One exchange; its latency. Panics unless it succeeds.
async fn exchange(client: &reqwest::Client, url: &str, token: &str) -> Duration {
    let body = json!({"token": token, "environment": "dev"}).to_string();
    let t = Instant::now();
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.bytes().await.unwrap();
    let took = t.elapsed();
    assert!(
        status.is_success(),
        "exchange failed: {status} {}",
        String::from_utf8_lossy(&text)
    );
    took
}

/// `POST /v1/admin/revoke`; the number revoked and the time of the whole call (body read).
async fn revoke(admin: &reqwest::Client, base: &str, selector: Value) -> (usize, Duration) {
    let body = json!({"selector": selector, "reason": "bench"}).to_string();
    let t = Instant::now();
    let r = admin
        .post(format!("{base}/v1/admin/revoke"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.bytes().await.unwrap();
    let took = t.elapsed();
    assert!(
        status.is_success(),
        "revoke failed: {status} {}",
        String::from_utf8_lossy(&text)
    );
    let v: Value = serde_json::from_slice(&text).unwrap();
    let n = v["revoked"].as_u64().unwrap_or(0) as usize;
    (n, took)
}

/// Prints the average sealed size and indexed-claim count of the leases the exchanges of this
/// run made, beside the fixtures' (how realistic the fixtures are).
async fn real_lease_shape(store: &Store) {
    const SQL: &str =
        "SELECT COUNT(*) AS n, CAST(AVG(LENGTH(sealed)) AS DOUBLE PRECISION) AS sealed,
        CAST(AVG((SELECT COUNT(*) FROM lease_claims c WHERE c.lease_id = l.id)) AS DOUBLE PRECISION)
            AS claims
        FROM leases l WHERE issuer <> $1";
    // SQLite keeps a lease's claims on its row (the claim index has no per-lease key).
    const SQL_SQLITE: &str =
        "SELECT COUNT(*) AS n, CAST(AVG(LENGTH(sealed)) AS DOUBLE PRECISION) AS sealed,
        CAST(AVG((SELECT COUNT(*) FROM json_each(l.claims))) AS DOUBLE PRECISION) AS claims
        FROM leases l WHERE issuer <> $1";
    let row = match store {
        Store::Sqlite { reader, .. } => sqlx::query(SQL_SQLITE)
            .bind(fixtures::ISSUER)
            .fetch_one(reader)
            .await
            .map(|r| shape(&r)),
        Store::Postgres { pool } => sqlx::query(SQL)
            .bind(fixtures::ISSUER)
            .fetch_one(pool)
            .await
            .map(|r| shape(&r)),
    };
    if let Ok((n, sealed, claims)) = row {
        eprintln!(
            "leases made by this run's exchanges: {n}, sealed {sealed:.0} bytes and {claims:.1} indexed claims on average (fixtures: {} bytes, 16 claims)",
            fixtures::SEALED_BYTES
        );
    }
}

fn shape<R: sqlx::Row>(r: &R) -> (i64, f64, f64)
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> f64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    (
        r.try_get("n").unwrap_or(0),
        r.try_get("sealed").unwrap_or(0.0),
        r.try_get("claims").unwrap_or(0.0),
    )
}
