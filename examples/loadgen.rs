//! Load generator for a real jobpass deployment, run as a separate process from the broker.
//!
//! One command (it builds `target/release/jobpass` first when that is missing):
//!
//! ```sh
//! cargo run --release --example loadgen     # every scenario, about a minute on 2 cores
//! cargo run --release --example loadgen -- --scenario fresh,reads --n 1000 --json out.json
//! ```
//!
//! It sets up a temporary deployment (`jobpass certs init`, `jobpass keys generate`, one
//! environment `load` whose issuer is this program's own OIDC issuer on plain loopback HTTP, a
//! SQLite store and audit log — or `--store postgres://…` on a fresh database, or `--data-dir
//! PATH` to put the store and audit log somewhere specific), pre-mints every GitHub-Actions-shaped
//! RS256 token it will use (in parallel, before anything is measured), starts `jobpass serve
//! --config …` as a child process and drives it over HTTPS on loopback:
//!
//! - `fresh`: exchanges, a new TLS connection (full handshake, no resumption) per request, C
//!   concurrent workers at maximum rate — CI jobs arriving one after another;
//! - `open`: exchanges at a fixed offered rate, each on its own task and connection, latency
//!   measured from the *scheduled* send time (no coordinated omission);
//! - `keepalive`: exchanges over persistent HTTP/1.1 connections;
//! - `reads`: `GET /v1/secrets/load/app/db` with one broker token over persistent connections;
//! - `vault`: fresh-TLS `POST /v1/auth/<path>/login` on jobpass's Vault-compatible listener (a
//!   role with one `token` grant) and, with `--vault-url`, the same requests on another Vault-API
//!   server (OpenBao: `benches/openbao/compare.sh`).
//!
//! Every scenario is bounded in count (`--n`, `--rate` × `--duration`) and time (`--max-time`).
//! Each reports count, errors by class, throughput, latency p50/p90/p99/max, the server's RSS at
//! the end and its peak during the scenario (VmRSS, VmHWM) and its CPU time per request. Beside
//! them, the floor measured in the same run: `GET /healthz` with a fresh TLS connection each
//! (same concurrency), one RS256 verify and one ES256 sign (ring, in-process, one core).
#![allow(
    unreachable_pub,
    missing_docs,
    let_underscore_drop,
    clippy::print_stdout,
    reason = "a test or benchmark harness: its items are its own, and it reports on standard output"
)]
#![allow(clippy::disallowed_types)] // a benchmark measures wall-clock time
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "loadgen/client.rs"]
mod client;
#[path = "loadgen/deploy.rs"]
mod deploy;
#[path = "loadgen/issuer.rs"]
mod issuer;
#[path = "loadgen/report.rs"]
mod report;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hyper::Method;
use serde_json::json;
use tokio::net::TcpListener;

use client::{Call, Ctx, Target, client_tls, exchange_call, expect_ok, login_call, once};
use report::{Report, measure, proc_mem, reset_hwm};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The environment, its audience and the secret the `reads` scenario reads.
const ENV: &str = "load";
const AUDIENCE: &str = "https://jobpass.load.test";
const SECRET_PATH: &str = "app/db";
/// The environment's role with one `token` grant, which the `vault` scenario logs in to (role
/// `ci`, of the other scenarios, also mints a JWT).
const VAULT_ROLE: &str = "ci-token";

/// Drive a temporary jobpass deployment (a child process) and report throughput, latency,
/// memory and CPU.
#[derive(Parser)]
struct Args {
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fresh,open,keepalive,reads,vault"
    )]
    scenario: Vec<Scenario>,
    /// Requests in each closed-loop scenario and in the /healthz floor.
    #[arg(long, default_value_t = 3000)]
    n: usize,
    /// Concurrent workers of the closed-loop scenarios.
    #[arg(short, long, default_value_t = 16)]
    concurrency: usize,
    /// Offered rate of the `open` scenario, requests per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Duration of the `open` scenario, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Time cap of each closed-loop scenario, seconds.
    #[arg(long, default_value_t = 30)]
    max_time: u64,
    /// Timeout of one request (connect, TLS, answer), seconds.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Requests in flight above which the `open` scenario skips (and counts) a send.
    #[arg(long, default_value_t = 2000)]
    max_inflight: usize,
    /// The jobpass binary (default: target/release/jobpass, built when missing).
    #[arg(long)]
    broker: Option<PathBuf>,
    /// Run `cargo build --release --bin jobpass` even when the binary exists.
    #[arg(long)]
    build: bool,
    /// A PostgreSQL server URL: the store is a fresh database on it, dropped at the end.
    #[arg(long)]
    store: Option<String>,
    /// Directory for the SQLite store and the audit log (e.g. a tmpfs) instead of the temp dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary deployment (its path is printed).
    #[arg(long)]
    keep: bool,
    /// The broker's log filter (JOBPASS_LOG).
    #[arg(long, default_value = "info")]
    log: String,
    /// RSA private key (PEM, PKCS#8 or PKCS#1) of the issuer instead of a generated one.
    #[arg(long)]
    issuer_key: Option<PathBuf>,
    /// Another Vault-API server (https on loopback) for the `vault` scenario, e.g. OpenBao.
    #[arg(long, requires = "vault_ca")]
    vault_url: Option<String>,
    /// CA certificate (PEM) of `--vault-url`.
    #[arg(long)]
    vault_ca: Option<PathBuf>,
    /// JWT auth mount at `--vault-url`.
    #[arg(long, default_value = "jwt")]
    vault_path: String,
    /// Role used at `--vault-url`.
    #[arg(long, default_value = "ci")]
    vault_role: String,
    /// Process id of the `--vault-url` server, to report its memory and CPU.
    #[arg(long)]
    vault_pid: Option<u32>,
    /// Name of the `--vault-url` server in the report.
    #[arg(long, default_value = "--vault-url")]
    vault_name: String,
    /// Iterations of the in-process RS256 verify and ES256 sign floors.
    #[arg(long, default_value_t = 3000)]
    crypto_n: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Fresh,
    Open,
    Keepalive,
    Reads,
    Vault,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The PostgreSQL database outlives `run` (and the broker in it) so it can be dropped last.
    let db = match &args.store {
        Some(url) => match deploy::fresh_database(url).await {
            Ok(db) => Some(db),
            Err(e) => {
                eprintln!("loadgen: cannot create the PostgreSQL database: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let outcome = tokio::select! {
        r = run(&args, db.as_ref()) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    // `run` has returned or been dropped: its guard has killed the broker.
    if let (Some(db), Some(url)) = (&db, &args.store)
        && let Err(e) = deploy::drop_database(url, &db.name).await
    {
        eprintln!("loadgen: could not drop database {}: {e}", db.name);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, db: Option<&deploy::FreshDb>) -> Res<()> {
    if args.n == 0 || args.concurrency == 0 || args.rate <= 0.0 || args.duration <= 0.0 {
        return Err("--n, --concurrency, --rate and --duration must be positive".into());
    }
    let has = |s| args.scenario.contains(&s);
    let bin = deploy::broker_binary(args.broker.as_deref(), args.build)?;
    let tmp = tempfile::Builder::new().prefix("jobpass-load-").tempdir()?;
    let d = tmp.path().to_path_buf();
    let data = match &args.data_dir {
        Some(p) => p.join(format!(
            "jobpass-load-{}",
            issuer::hex(&issuer::random::<4>()?)
        )),
        None => d.clone(),
    };
    std::fs::create_dir_all(&data)?;
    let _data = args
        .data_dir
        .is_some()
        .then(|| deploy::RemoveDir(data.clone(), args.keep));

    // The issuer, and every token the run will use, minted before anything is measured.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let issuer_url = format!("http://{}", listener.local_addr()?);
    let issuer = Arc::new(issuer::Issuer::new(
        args.issuer_key.as_deref(),
        &issuer_url,
    )?);
    let _server = deploy::AbortOnDrop(tokio::spawn(issuer::serve(listener, issuer.clone())));
    let open_n = (args.rate * args.duration).round() as usize;
    let external = if args.vault_url.is_some() {
        args.n + 1
    } else {
        0
    };
    let count = |s, k| if has(s) { k } else { 0 };
    let total = 2
        + count(Scenario::Fresh, args.n)
        + count(Scenario::Open, open_n)
        + count(Scenario::Keepalive, args.n)
        + count(Scenario::Vault, args.n + external);
    let t = std::time::Instant::now();
    let minter = issuer.clone();
    let tokens = tokio::task::spawn_blocking(move || minter.mint(total)).await??;
    eprintln!(
        "minted {total} RS256 tokens in {:.1?} (not measured)",
        t.elapsed()
    );
    let mut pool = tokens.into_iter();

    // The deployment and the broker.
    let (api, vault) = (deploy::free_port()?, deploy::free_port()?);
    let store = match db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", data.join("jobpass.db").display()),
    };
    deploy::write_deployment(&bin, &d, &data, &store, &issuer_url, api, vault)?;
    let mut broker = deploy::Broker::spawn(&bin, &d, &args.log)?;
    let ca = d.join("certs/ca.pem");
    let api_t = Target::new(api, client_tls(&ca, None)?);
    let vault_t = Target::new(vault, client_tls(&ca, None)?);
    broker.wait_ready(&api_t).await?;
    eprintln!(
        "broker {} (pid {}) ready on https://{api}, Vault-compatible listener on {vault}; \
         deployment in {}",
        bin.display(),
        broker.pid,
        d.display()
    );

    // Not measured: the secret (admin API), one exchange and one Vault login to warm up
    // discovery, JWKS and the environment's keys.
    let admin_tls = client_tls(
        &ca,
        Some((&d.join("certs/admin.pem"), &d.join("certs/admin-key.pem"))),
    )?;
    let put = Call::json(
        Method::PUT,
        &format!("/v1/admin/secrets/{ENV}/{SECRET_PATH}"),
        &json!({"data": {"password": "load-test-password"}}),
    );
    expect_ok("PUT secret", once(&Target::new(api, admin_tls), &put).await)?;
    let warm = exchange_call(&pool.next().ok_or("no token")?);
    let answer = expect_ok("warm-up exchange", once(&api_t, &warm).await)?;
    let bearer = client::broker_token(&answer)?;
    let warm = login_call(ENV, VAULT_ROLE, &pool.next().ok_or("no token")?);
    expect_ok("warm-up Vault login", once(&vault_t, &warm).await)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = proc_mem(broker.pid);
    let hwm_resettable = reset_hwm(broker.pid);

    let ctx = Ctx {
        concurrency: args.concurrency,
        max_time: Duration::from_secs(args.max_time),
        timeout: Duration::from_secs(args.timeout),
    };
    let pid = Some(broker.pid);
    let mut take = |n, f: &dyn Fn(&str) -> Call| client::take(&mut pool, n, f);

    // The floor.
    let calls = vec![Call::get("/healthz", None); args.n];
    let floor = measure(report::FLOOR, pid, None, ctx.closed(&api_t, calls, true)).await;
    let sample = issuer.mint(1)?.pop().ok_or("no token")?;
    let (key, n) = (issuer.public_der.clone(), args.crypto_n.max(1));
    let rs256_us =
        tokio::task::spawn_blocking(move || report::rs256_verify_us(&key, &sample, n)).await??;
    let es256_us = tokio::task::spawn_blocking(move || report::es256_sign_us(n)).await??;

    let mut rows = Vec::new();
    if has(Scenario::Fresh) {
        let calls = take(args.n, &exchange_call)?;
        let load = ctx.closed(&api_t, calls, true);
        rows.push(measure(report::FRESH, pid, None, load).await);
    }
    if has(Scenario::Open) {
        let calls = take(open_n, &exchange_call)?;
        let load = client::open_loop(&api_t, calls, args.rate, ctx.timeout, args.max_inflight);
        let name = format!("exchange open loop {}/s", args.rate);
        rows.push(measure(&name, pid, Some(args.rate), load).await);
    }
    if has(Scenario::Keepalive) {
        let calls = take(args.n, &exchange_call)?;
        let load = ctx.closed(&api_t, calls, false);
        rows.push(measure("exchange keep-alive", pid, None, load).await);
    }
    if has(Scenario::Reads) {
        let path = format!("/v1/secrets/{ENV}/{SECRET_PATH}");
        let calls = vec![Call::get(&path, Some(&bearer)); args.n];
        let load = ctx.closed(&api_t, calls, false);
        rows.push(measure("secret read keep-alive", pid, None, load).await);
    }
    if has(Scenario::Vault) {
        let calls = take(args.n, &|t| login_call(ENV, VAULT_ROLE, t))?;
        let load = ctx.closed(&vault_t, calls, true);
        rows.push(measure("vault login fresh TLS (jobpass)", pid, None, load).await);
        if let (Some(url), Some(ca)) = (&args.vault_url, &args.vault_ca) {
            let ext = Target::new(client::loopback_addr(url)?, client_tls(ca, None)?);
            let login = |t: &str| login_call(&args.vault_path, &args.vault_role, t);
            let mut calls = take(args.n + 1, &login)?;
            let warm = calls.pop().ok_or("no token")?;
            expect_ok("warm-up login at --vault-url", once(&ext, &warm).await)?;
            let load = ctx.closed(&ext, calls, true);
            let name = format!("vault login fresh TLS ({})", args.vault_name);
            rows.push(measure(&name, args.vault_pid, None, load).await);
        }
    }

    let report = Report {
        broker: bin.display().to_string(),
        store: match db {
            Some(db) => format!("postgres, database {}", db.name),
            None => format!("sqlite in {}", data.display()),
        },
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        concurrency: ctx.concurrency,
        idle,
        hwm_resettable,
        floor,
        rs256_us,
        es256_us,
        rows,
    };
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
        eprintln!("wrote {}", path.display());
    }
    drop(broker);
    if args.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    Ok(())
}
