//! Fixture generator: fills a jobpass store with N active leases shaped like real GitHub
//! Actions exchanges (16 indexed claims, a `token` and a `jwt` credential each), for scale
//! tests of exchange and revocation.
//!
//! ```sh
//! cargo run --release --example fixtures -- --store sqlite://PATH --leases 1000000
//! cargo run --release --example fixtures -- --store postgres://USER@HOST/DB --leases 100000 \
//!     --env prod --repos 10
//! ```
//!
//! The store is opened with `Store::open` (which runs migrations) and filled in transactions of
//! `--batch` leases with the batch insert the exchange itself uses. Repository `r` is
//! `fixture-org/service-<r>` (three digits); lease `i` belongs to repository `i % repos` and
//! has `run_id` 9000000000 + i, so `{"claims": {"repository": "fixture-org/service-000"}}`
//! selects `leases / repos` leases and `{"claims": {"run_id": "9000000000"}}` one. The leases
//! are issued in the hour before the fill and expire 25 h after their issue. The generator
//! itself is `benches/support/fixtures.rs` (shared with `benches/scale.rs`).
#![allow(
    unreachable_pub,
    missing_docs,
    let_underscore_drop,
    clippy::print_stdout,
    reason = "a test or benchmark harness: its items are its own, and it reports on standard output"
)]
#![allow(clippy::disallowed_types)] // a benchmark measures wall-clock time
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../benches/support/fixtures.rs"]
mod fixtures;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use jobpass::clock::{Clock, SystemClock};
use jobpass::store::Store;

/// Fill a jobpass store with active leases.
#[derive(Parser, Debug)]
#[command(name = "fixtures")]
struct Args {
    /// Store URL: sqlite://PATH or postgres://…
    #[arg(long)]
    store: String,
    /// Number of active leases to add.
    #[arg(long)]
    leases: usize,
    /// Environment of the leases.
    #[arg(long, default_value = "prod")]
    env: String,
    /// Number of distinct `repository` claim values (one repository = leases / repos).
    #[arg(long, default_value_t = 10)]
    repos: usize,
    /// Roles, comma-separated, assigned round-robin (default: the roles of the example
    /// policy of `--env`).
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Leases per write transaction.
    #[arg(long, default_value_t = fixtures::DEFAULT_BATCH)]
    batch: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.repos == 0 || args.batch == 0 {
        eprintln!("--repos and --batch must be at least 1");
        return ExitCode::FAILURE;
    }
    let mut spec = fixtures::Spec::new(args.leases, &args.env, SystemClock.unix_millis());
    spec.repos = args.repos;
    spec.batch = args.batch;
    if !args.roles.is_empty() {
        spec.roles = args.roles.clone();
    }
    let store = match Store::open(&args.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "filling {} ({}) with {} leases in `{}`, roles {:?}, {} repositories, {} per transaction",
        store.backend(),
        redact(&args.store),
        fixtures::thousands(spec.leases),
        spec.env,
        spec.roles,
        spec.repos,
        spec.batch
    );
    let mut last = Instant::now();
    let result = fixtures::fill(&store, &spec, |p| {
        if p.done == p.total || last.elapsed() >= Duration::from_secs(5) {
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
    .await;
    fixtures::close(store).await;
    match result {
        Ok(s) => {
            println!(
                "{} leases ({} claim rows, {} credential rows) written in {:.1?}: {:.0} leases/s",
                fixtures::thousands(s.leases),
                fixtures::thousands(s.claims),
                fixtures::thousands(s.credentials),
                s.elapsed,
                s.leases as f64 / s.elapsed.as_secs_f64().max(1e-9)
            );
            println!(
                "selectors: {{\"claims\": {{\"repository\": \"{}\"}}}} = {} leases; {{\"claims\": {{\"run_id\": \"{}\"}}}} = 1",
                spec.repository(0),
                fixtures::thousands(spec.leases_in_repo(0)),
                spec.run_id(0)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fill failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The store URL without a password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}
