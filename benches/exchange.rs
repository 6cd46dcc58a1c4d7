//! Load generator for the exchange path: starts a broker in-process (dev mode: built-in issuer,
//! generated PKI, SQLite store, audit log with fsync) on loopback TLS, then fires exchanges from
//! many concurrent HTTPS clients and reports throughput and latency percentiles.
//!
//! `cargo bench --bench exchange` (env: JOBPASS_BENCH_N, JOBPASS_BENCH_CONCURRENCY).

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
    let dir = tempfile::tempdir().unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let data = dir.path().join("data");
    let dev = jobpass::dev::prepare(
        &data,
        &policies,
        "127.0.0.1:0".parse().unwrap(),
        &SystemClock,
    )
    .unwrap();
    let config = dev.config.clone();
    let tls = jobpass::tls::server_config(
        config.tls.cert.as_ref().unwrap(),
        config.tls.key.as_ref().unwrap(),
        config.tls.admin_client_ca.as_deref(),
    )
    .unwrap();
    let app = App::build(config, Arc::new(SystemClock), Some(dev.issuer))
        .await
        .unwrap();
    let running = serve(app.clone(), "127.0.0.1:0".parse().unwrap(), Some(tls))
        .await
        .unwrap();
    let url = format!("https://{}/v1/exchange", running.addr);

    let tokens: Vec<String> = (0..n + concurrency)
        .map(|_| {
            jobpass::dev::token(&data, &policies, "dev", Map::new(), 600, &SystemClock).unwrap()
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
            let (client, url, tokens, next) =
                (client.clone(), url.clone(), tokens.clone(), next.clone());
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
                        .post(&url)
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
        "exchange: {} requests, concurrency {concurrency}, {:.2?} total: {:.0} exchanges/s; latency p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
        lat.len(),
        elapsed,
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );
    running.shutdown().await;
}
