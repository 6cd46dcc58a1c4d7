//! Measurement: memory and CPU of a process from /proc, the crypto floors, the report.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use serde_json::{Value, json};

use crate::Res;
use crate::client::Tally;

/// Names of the rows the report compares.
pub const FLOOR: &str = "/healthz fresh TLS (floor)";
pub const FRESH: &str = "exchange fresh TLS";

/// One scenario's figures.
pub struct Row {
    name: String,
    offered: Option<f64>,
    tally: Tally,
    /// The server's VmRSS before the scenario, KiB.
    rss_before: Option<u64>,
    /// The server's (VmRSS, VmHWM) at the end of the scenario, KiB.
    mem: Option<(u64, u64)>,
    server_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
}

/// Runs `load` and measures the server `pid` around it (peak RSS reset first, CPU time).
pub async fn measure(
    name: &str,
    pid: Option<u32>,
    offered: Option<f64>,
    load: impl Future<Output = Tally>,
) -> Row {
    eprintln!("{name} …");
    let _ = pid.map(reset_hwm);
    let rss_before = pid.and_then(proc_mem).map(|m| m.0);
    let cpu0 = pid.and_then(proc_cpu_s);
    let me0 = proc_cpu_s(std::process::id());
    let mut tally = load.await;
    tally.lat_us.sort_unstable();
    let cpu1 = pid.and_then(proc_cpu_s);
    let me1 = proc_cpu_s(std::process::id());
    let row = Row {
        name: name.to_string(),
        offered,
        rss_before,
        mem: pid.and_then(proc_mem),
        server_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
        client_cpu_s: me0.zip(me1).map(|(a, b)| b - a),
        tally,
    };
    // Let the server settle (closing connections, background flushes) before the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    row
}

/// (VmRSS, VmHWM) of a process, KiB.
pub fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets VmHWM to the current RSS (`clear_refs` 5, Linux 4.0+) so each peak is per scenario.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU time of a process (all its threads), seconds (USER_HZ is 100 on Linux).
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Mean time of one RS256 verification of `token` (ring), µs.
pub fn rs256_verify_us(public_der: &[u8], token: &str, n: usize) -> Res<f64> {
    let (msg, sig) = token.rsplit_once('.').ok_or("not a JWT")?;
    let sig = B64.decode(sig)?;
    let key = signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_der);
    let t = std::time::Instant::now();
    for _ in 0..n {
        key.verify(msg.as_bytes(), &sig)
            .map_err(|_| "RS256 verify failed")?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// Mean time of one ES256 signature (ring, fixed r‖s as in JWS), µs.
pub fn es256_sign_us(n: usize) -> Res<f64> {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| "ES256 key")?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| "ES256 key")?;
    let claims = json!({"iss": "https://127.0.0.1/v1/envs/load", "sub": "repo:x", "exp": 1});
    let msg = B64.encode(claims.to_string());
    let t = std::time::Instant::now();
    for _ in 0..n {
        key.sign(&rng, msg.as_bytes())
            .map_err(|_| "ES256 sign failed")?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// The `p` quantile of sorted microseconds, in ms.
fn pct(sorted: &[u64], p: f64) -> Option<f64> {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map(|us| *us as f64 / 1000.0)
}

impl Row {
    fn ok(&self) -> usize {
        self.tally.lat_us.len()
    }

    fn rate(&self) -> f64 {
        self.ok() as f64 / self.tally.secs.max(1e-9)
    }

    fn per_ok_ms(&self, cpu_s: Option<f64>) -> Option<f64> {
        cpu_s.map(|c| c * 1000.0 / self.ok().max(1) as f64)
    }

    fn json(&self) -> Value {
        let l = &self.tally.lat_us;
        json!({
            "name": self.name, "offered_per_s": self.offered, "sent": self.tally.sent,
            "ok": self.ok(), "errors": self.tally.errors, "seconds": self.tally.secs,
            "throughput_per_s": self.rate(),
            "latency_ms": {"p50": pct(l, 0.5), "p90": pct(l, 0.9), "p99": pct(l, 0.99),
                "max": pct(l, 1.0)},
            "server_rss_before_kib": self.rss_before, "server_rss_kib": self.mem.map(|m| m.0),
            "server_peak_rss_kib": self.mem.map(|m| m.1),
            "server_cpu_s": self.server_cpu_s, "client_cpu_s": self.client_cpu_s,
            "server_cpu_ms_per_ok": self.per_ok_ms(self.server_cpu_s),
            "client_cpu_ms_per_ok": self.per_ok_ms(self.client_cpu_s),
        })
    }

    fn line(&self) -> String {
        let l = &self.tally.lat_us;
        let f1 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let f2 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let mib = |k: Option<u64>| k.map_or("-".into(), |k| (k / 1024).to_string());
        let mem = format!(
            "{}/{}/{}",
            mib(self.rss_before),
            mib(self.mem.map(|m| m.0)),
            mib(self.mem.map(|m| m.1))
        );
        format!(
            "{:<36} {:>5} {:>5} {:>4} {:>6.0} {:>6} {:>6} {:>6} {:>6} {:>11} {:>6} {:>6}",
            self.name,
            self.tally.sent,
            self.ok(),
            self.tally.sent - self.ok(),
            self.rate(),
            f1(pct(l, 0.5)),
            f1(pct(l, 0.9)),
            f1(pct(l, 0.99)),
            f1(pct(l, 1.0)),
            mem,
            f2(self.per_ok_ms(self.server_cpu_s)),
            f2(self.per_ok_ms(self.client_cpu_s)),
        )
    }
}

/// Everything one run measured.
pub struct Report {
    pub broker: String,
    pub store: String,
    pub cores: usize,
    pub concurrency: usize,
    /// The broker's (VmRSS, VmHWM) after start-up and warm-up, before any load.
    pub idle: Option<(u64, u64)>,
    pub hwm_resettable: bool,
    pub floor: Row,
    pub rs256_us: f64,
    pub es256_us: f64,
    pub rows: Vec<Row>,
}

impl Report {
    fn fresh_vs_floor(&self) -> Option<f64> {
        let fresh = self.rows.iter().find(|r| r.name == FRESH)?;
        Some(100.0 * fresh.rate() / self.floor.rate().max(1e-9))
    }

    pub fn print(&self) {
        println!();
        println!("broker {}; store: {}", self.broker, self.store);
        print!("{} cores, concurrency {}", self.cores, self.concurrency);
        if let Some((rss, _)) = self.idle {
            print!(
                "; broker idle RSS before load {:.1} MiB",
                rss as f64 / 1024.0
            );
        }
        println!("\n");
        println!(
            "{:<36} {:>5} {:>5} {:>4} {:>6} {:>6} {:>6} {:>6} {:>6} {:>11} {:>6} {:>6}",
            "scenario",
            "sent",
            "ok",
            "err",
            "ok/s",
            "p50",
            "p90",
            "p99",
            "max",
            "RSS MiB",
            "srvCPU",
            "cliCPU"
        );
        for r in [&self.floor].into_iter().chain(&self.rows) {
            println!("{}", r.line());
        }
        println!();
        println!(
            "floor: RS256 verify {:.1} µs, ES256 sign {:.1} µs (ring, in-process, one core)",
            self.rs256_us, self.es256_us
        );
        if let Some(p) = self.fresh_vs_floor() {
            println!("{FRESH}: {p:.1}% of the /healthz fresh-TLS floor");
        }
        for r in [&self.floor].into_iter().chain(&self.rows) {
            if let Some(o) = r.offered {
                println!("{}: offered {o:.0}/s, completed {:.0}/s", r.name, r.rate());
            }
            if !r.tally.errors.is_empty() {
                let e: Vec<String> = r
                    .tally
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect();
                println!("errors in {}: {}", r.name, e.join(", "));
            }
        }
        println!(
            "latencies in ms over successful requests (open loop: from the scheduled send time); \
             RSS = server's before / at end / peak during the scenario{}; CPU = ms of CPU per successful \
             request, server and load generator",
            if self.hwm_resettable {
                ""
            } else {
                " (peak since start: VmHWM not resettable)"
            }
        );
    }

    pub fn json(&self) -> Value {
        json!({
            "broker": self.broker, "store": self.store, "cores": self.cores,
            "concurrency": self.concurrency, "idle_rss_kib": self.idle.map(|m| m.0),
            "peak_rss_is_per_scenario": self.hwm_resettable,
            "floor": {"healthz_fresh_tls": self.floor.json(), "rs256_verify_us": self.rs256_us,
                "es256_sign_us": self.es256_us},
            "fresh_exchange_pct_of_healthz_floor": self.fresh_vs_floor(),
            "scenarios": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
        })
    }
}
