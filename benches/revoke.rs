//! Time to revoke by claim selector with many active leases in the SQLite store.
//!
//! `cargo bench --bench revoke` (env: JOBPASS_BENCH_LEASES, comma-separated sizes; default
//! "10000,100000"). Leases are inserted directly through the store by the shared fixture
//! generator (`benches/support/fixtures.rs`: 100 repositories, one run id each), then a claim
//! selector hitting 1% of them, a glob selector hitting 10%, a single-run selector and a role +
//! claim selector are timed on the store (no HTTP; `benches/scale.rs` times the admin API).
//! Each size runs on a fresh store.
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

use std::time::Instant;

use jobpass::clock::{Clock, SystemClock};
use jobpass::store::{Selector, Store};

async fn time(store: &Store, label: &str, sel: Selector) {
    let t = Instant::now();
    let ids = store
        .revoke(&sel, SystemClock.unix(), "bench")
        .await
        .unwrap();
    println!("  {label}: revoked {} in {:.1?}", ids.len(), t.elapsed());
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("JOBPASS_BENCH_LEASES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        ))
        .await
        .unwrap();
        let mut spec = fixtures::Spec::new(n, "prod", SystemClock.unix_millis());
        spec.repos = 100;
        let t = Instant::now();
        fixtures::fill(&store, &spec, |_| {}).await.unwrap();
        println!("{n} active leases (inserted in {:.1?}):", t.elapsed());
        let claim = |k: &str, v: &str| Selector {
            claims: vec![(k.to_string(), v.to_string())],
            ..Selector::default()
        };
        time(
            &store,
            "claims {run_id = one run}",
            claim("run_id", &spec.run_id(n / 2)),
        )
        .await;
        time(
            &store,
            &format!("claims {{repository = {}}} (1%)", spec.repository(7)),
            claim("repository", &spec.repository(7)),
        )
        .await;
        let glob = format!("{}/service-01*", fixtures::OWNER);
        time(
            &store,
            &format!("claims {{repository = {glob}}} (10%, glob)"),
            claim("repository", &glob),
        )
        .await;
        let both = Selector {
            role: Some("deploy-web".into()),
            claims: vec![("actor".into(), "dev-005".into())],
            ..Selector::default()
        };
        time(&store, "role + claims {actor = dev-005}", both).await;
    }
}
