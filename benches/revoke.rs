//! Time to revoke by claim selector with many active leases in the SQLite store.
//!
//! `cargo bench --bench revoke` (env: JOBPASS_BENCH_LEASES, comma-separated sizes; default
//! "10000,100000"). Leases are inserted directly through the store (100 repositories, one
//! run id each), then a claim selector hitting 1% of them, a glob selector and a single-run
//! selector are timed. Each size runs on a fresh store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use jobpass::store::{LeaseRow, Selector, Store};

async fn fill(store: &Store, n: usize, now: i64) {
    let mut done = 0;
    while done < n {
        let mut tx = store.begin().await.unwrap();
        for i in done..(done + 2000).min(n) {
            let lease = LeaseRow {
                id: format!("lse_{i:012}"),
                env: "prod".into(),
                role: if i % 2 == 0 {
                    "deploy-web".into()
                } else {
                    "read-config".into()
                },
                issuer: "https://token.actions.githubusercontent.com".into(),
                subject: format!("repo:acme/repo-{}:ref:refs/heads/main", i % 100),
                policy_version: "sha256:bench".into(),
                issued_at: now,
                expires_at: now + 3600,
                revoked_at: None,
                revoke_reason: None,
                key_version: 1,
                sealed: vec![0u8; 200],
                revocation: None,
                revocation_attempts: 0,
            };
            let claims = vec![
                ("repository".to_string(), format!("acme/repo-{}", i % 100)),
                ("run_id".to_string(), format!("{}", 1_000_000 + i)),
                ("ref".to_string(), "refs/heads/main".to_string()),
                ("actor".to_string(), format!("user-{}", i % 37)),
            ];
            tx.insert_lease(&lease, &claims).await.unwrap();
        }
        tx.commit().await.unwrap();
        done = (done + 2000).min(n);
    }
}

async fn time(store: &Store, label: &str, sel: Selector, now: i64) {
    let t = Instant::now();
    let ids = store.revoke(&sel, now, "bench").await.unwrap();
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
    let now = 1_800_000_000;
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        ))
        .await
        .unwrap();
        let t = Instant::now();
        fill(&store, n, now).await;
        println!("{n} active leases (inserted in {:.1?}):", t.elapsed());
        let claim = |k: &str, v: &str| Selector {
            claims: vec![(k.to_string(), v.to_string())],
            ..Selector::default()
        };
        time(
            &store,
            "claims {run_id = one run}",
            claim("run_id", &format!("{}", 1_000_000 + n / 2)),
            now,
        )
        .await;
        time(
            &store,
            "claims {repository = acme/repo-7} (1%)",
            claim("repository", "acme/repo-7"),
            now,
        )
        .await;
        time(
            &store,
            "claims {repository = acme/repo-1*} (10%, glob)",
            claim("repository", "acme/repo-1*"),
            now,
        )
        .await;
        let both = Selector {
            role: Some("deploy-web".into()),
            claims: vec![("actor".into(), "user-5".into())],
            ..Selector::default()
        };
        time(&store, "role + claims {actor = user-5}", both, now).await;
    }
}
