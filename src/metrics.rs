//! Prometheus metrics (`GET /metrics`): exchanges by outcome, denials by failing claim,
//! exchange latency, secret reads by outcome, policy reloads by outcome, admin CRL reloads by
//! outcome and the admin CRL's `nextUpdate`, each replica's audit head and anchored sequence
//! numbers, and, read from the store, active leases per environment and the leases whose
//! database roles wait to be dropped. An explicit registry, no global recorder.
//!
//! Two exposition formats of the one registry (`prometheus-client` writes the samples):
//! OpenMetrics 1.0.0 to a scraper whose `Accept` asks for it (Prometheus does), and the
//! Prometheus text format 0.0.4 otherwise (`curl`, `promtool check metrics`). The 0.0.4 body
//! is the OpenMetrics one with the two differences that matter to a 0.0.4 reader: a counter's
//! `# HELP`/`# TYPE` lines name its samples (`<name>_total`), and there is no `# EOF` line.
//! Each body is served with the content type of its format, so no metric loses its type.
//!
//! The store-wide gauges are counted at scrape time, at most once per
//! [`STORE_SAMPLE_EVERY_SECS`] (later scrapes in that window answer the last count), each
//! count an index range scan (`leases (env, expires_at)`, `leases (revocation, …)`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::{Store, StoreError};
use crate::tls::CrlInfo;

/// Seconds during which a scrape answers the last count of the store-wide gauges.
pub const STORE_SAMPLE_EVERY_SECS: i64 = 15;

/// The exposition format of a `/metrics` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0 (`# EOF`; a counter's family named without `_total`).
    OpenMetrics,
    /// Prometheus text 0.0.4.
    Text,
}

impl Format {
    /// The format a scraper's `Accept` header asks for: OpenMetrics when it lists
    /// `application/openmetrics-text` with a weight at least that of `text/plain` (Prometheus
    /// sends `application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,…`),
    /// else the 0.0.4 text format (no header, `*/*`, `text/plain`).
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of a body in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

type Labels = Vec<(String, String)>;

/// Connections closed by the broker on its own, by reason (a handle to the registered metric).
#[derive(Clone, Debug, Default)]
pub struct ConnectionCounter(Family<Labels, Counter>);

impl ConnectionCounter {
    /// Counts one (`per_ip_cap`, `handshake`, `silent`).
    pub fn inc(&self, reason: &str) {
        self.0
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }
}

/// A replica's audit gauges: the head `seq` of its audit file and the `seq` anchored in the
/// store (handles to the registered metrics).
#[derive(Clone, Debug, Default)]
pub struct AuditGauges {
    head: Gauge,
    anchored: Gauge,
}

impl AuditGauges {
    /// The file's last durable line.
    pub fn head(&self, seq: u64) {
        self.head.set(i64::try_from(seq).unwrap_or(i64::MAX));
    }

    /// The line anchored in the store.
    pub fn anchored(&self, seq: u64) {
        self.anchored.set(i64::try_from(seq).unwrap_or(i64::MAX));
    }
}

/// The broker's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    exchanges: Family<Labels, Counter>,
    denials: Family<Labels, Counter>,
    secret_reads: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    connections_refused: Family<Labels, Counter>,
    latency: Histogram,
    admin_crl_reloads: Family<Labels, Counter>,
    admin_crl_next_update: Gauge,
    audit_head: Family<Labels, Gauge>,
    audit_anchored: Family<Labels, Gauge>,
    policy_reloads: Family<Labels, Counter>,
    policy_reload_refused: Gauge,
    active_leases: Family<Labels, Gauge>,
    revocations_pending: Family<Labels, Gauge>,
    revocation_failures: Counter,
    /// The broker's Unix second of the last count of the store-wide gauges; held while one
    /// is counted, so concurrent scrapes count once.
    store_sampled: tokio::sync::Mutex<Option<i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jobpass");
        let exchanges = Family::<Labels, Counter>::default();
        let denials = Family::<Labels, Counter>::default();
        let secret_reads = Family::<Labels, Counter>::default();
        let rate_limited = Family::<Labels, Counter>::default();
        let connections_refused = Family::<Labels, Counter>::default();
        let latency = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register("exchanges", "Token exchanges by outcome", exchanges.clone());
        registry.register(
            "denials",
            "Exchanges denied by policy, by the first claim that did not match",
            denials.clone(),
        );
        registry.register(
            "secret_reads",
            "Secret reads by outcome",
            secret_reads.clone(),
        );
        registry.register(
            "rate_limited",
            "Calls refused with 429, by class of call and the limit that refused them",
            rate_limited.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the broker closed on its own, by reason",
            connections_refused.clone(),
        );
        registry.register(
            "exchange_duration_seconds",
            "Time to answer an exchange",
            latency.clone(),
        );
        let admin_crl_reloads = Family::<Labels, Counter>::default();
        let admin_crl_next_update = Gauge::default();
        registry.register(
            "admin_crl_reloads",
            "Reloads of the admin client CRL (tls.crl) by outcome; a failure keeps the last good CRL",
            admin_crl_reloads.clone(),
        );
        registry.register(
            "admin_crl_next_update_seconds",
            "Earliest nextUpdate (Unix seconds) of the admin client CRLs in force; 0 without tls.crl",
            admin_crl_next_update.clone(),
        );
        let audit_head = Family::<Labels, Gauge>::default();
        let audit_anchored = Family::<Labels, Gauge>::default();
        registry.register(
            "audit_head_seq",
            "Sequence number of the last durable line of this replica's audit file (sampled every second)",
            audit_head.clone(),
        );
        registry.register(
            "audit_anchored_seq",
            "Sequence number of this replica's audit line anchored in the store; a file found behind it refuses the start",
            audit_anchored.clone(),
        );
        let policy_reloads = Family::<Labels, Counter>::default();
        let policy_reload_refused = Gauge::default();
        registry.register(
            "policy_reloads",
            "Policy reloads (file change or SIGHUP) by outcome: changed, unchanged, refused (invalid; the last good set stays)",
            policy_reloads.clone(),
        );
        registry.register(
            "policy_reload_refused",
            "1 while the policy files on disk are refused (the last reload found them invalid and the last good set serves), else 0",
            policy_reload_refused.clone(),
        );
        let active_leases = Family::<Labels, Gauge>::default();
        let revocations_pending = Family::<Labels, Gauge>::default();
        let revocation_failures = Counter::default();
        registry.register(
            "active_leases",
            "Leases neither expired nor revoked, per environment of the policies in force (whole store, counted at most every 15 s)",
            active_leases.clone(),
        );
        registry.register(
            "revocations_pending",
            "Leases whose database roles are not dropped yet, by state: pending (being retried), failed (12 attempts failed; still retried every 5 minutes) (whole store, counted at most every 15 s)",
            revocations_pending.clone(),
        );
        registry.register(
            "revocation_failures",
            "Attempts of this replica to drop a lease's database roles that failed (each is retried)",
            revocation_failures.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            exchanges,
            denials,
            secret_reads,
            rate_limited,
            connections_refused,
            latency,
            admin_crl_reloads,
            admin_crl_next_update,
            audit_head,
            audit_anchored,
            policy_reloads,
            policy_reload_refused,
            active_leases,
            revocations_pending,
            revocation_failures,
            store_sampled: tokio::sync::Mutex::new(None),
        }
    }

    /// Counts a policy reload (`changed`, `unchanged` or `refused`); a refused one sets
    /// `policy_reload_refused` until a reload succeeds or finds the files unchanged.
    pub fn policy_reload(&self, outcome: &str) {
        self.policy_reloads
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
        self.policy_reload_refused
            .set(i64::from(outcome == "refused"));
    }

    /// Counts a failed attempt to drop a lease's database roles.
    pub fn revocation_failed(&self) {
        self.revocation_failures.inc();
    }

    /// Counts the store-wide gauges again unless a count started less than
    /// [`STORE_SAMPLE_EVERY_SECS`] ago (`now`: the broker's Unix second): active leases of each
    /// of `environments`, and unsettled database-role revocations. A count that fails or is
    /// cancelled still waits out the interval.
    ///
    /// # Errors
    /// The store could not be read; the gauges keep their last values.
    pub async fn sample_store(
        &self,
        store: &Store,
        environments: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut sampled = self.store_sampled.lock().await;
        if sampled.is_some_and(|at| (0..STORE_SAMPLE_EVERY_SECS).contains(&(now - at))) {
            return Ok(());
        }
        // The attempt counts, not its success: a scrape that is cancelled (a reset stream, a
        // closed connection) or a store that fails does not let the next scrape count again.
        *sampled = Some(now);
        let mut active = Vec::with_capacity(environments.len());
        for env in environments {
            active.push((env, store.active_leases(env, now).await?));
        }
        let (pending, failed) = store.unsettled_revocation_counts().await?;
        // Under the registry's lock: a scrape never sees the family half rewritten.
        let _registry = self.registry.lock();
        self.active_leases.clear();
        for (env, n) in active {
            self.active_leases
                .get_or_create(&vec![("environment".to_owned(), env.clone())])
                .set(n);
        }
        for (state, n) in [("pending", pending), ("failed", failed)] {
            self.revocations_pending
                .get_or_create(&vec![("state".to_owned(), state.to_owned())])
                .set(n);
        }
        Ok(())
    }

    /// The audit gauges of `replica` (`""` when unnamed).
    #[must_use]
    pub fn audit_gauges(&self, replica: &str) -> AuditGauges {
        let labels = vec![("replica".to_owned(), replica.to_owned())];
        AuditGauges {
            head: self.audit_head.get_or_create(&labels).clone(),
            anchored: self.audit_anchored.get_or_create(&labels).clone(),
        }
    }

    /// The same, with the admin CRL read at start.
    #[must_use]
    pub fn with_admin_crl(self, crl: Option<CrlInfo>) -> Self {
        self.admin_crl_loaded(crl);
        self
    }

    /// Records the admin CRLs now in force.
    pub fn admin_crl_loaded(&self, crl: Option<CrlInfo>) {
        self.admin_crl_next_update
            .set(crl.and_then(|c| c.next_update).unwrap_or(0));
    }

    /// Counts an admin CRL reload (`success` or `failure`).
    pub fn admin_crl_reload(&self, outcome: &str) {
        self.admin_crl_reloads
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Counts an exchange outcome (`success` or an error code).
    pub fn exchange(&self, outcome: &str) {
        self.exchanges
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Counts a call refused by a rate limit.
    pub fn rate_limited(&self, limited: &crate::limits::Limited) {
        self.rate_limited
            .get_or_create(&vec![
                ("class".into(), limited.class.name().into()),
                ("scope".into(), limited.scope.name().into()),
            ])
            .inc();
    }

    /// The counter of connections the accept loop closes on its own, for the listeners.
    #[must_use]
    pub fn connection_counter(&self) -> ConnectionCounter {
        ConnectionCounter(self.connections_refused.clone())
    }

    /// Counts a policy denial by claim name.
    pub fn denial(&self, claim: &str) {
        let claim: String = claim.chars().take(64).collect();
        self.denials
            .get_or_create(&vec![("claim".into(), claim)])
            .inc();
    }

    /// Counts a secret read outcome.
    pub fn secret_read(&self, outcome: &str) {
        self.secret_reads
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Records an exchange's duration.
    pub fn observe_exchange(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    /// The exposition of every metric in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = encode(&mut out, &r);
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text => openmetrics_to_text(&out),
        }
    }
}

/// The 0.0.4 text form of an OpenMetrics body written by `prometheus-client`: the `# HELP`
/// and `# TYPE` lines of a counter name its samples (`<name>_total`); `# UNIT` and `# EOF`
/// lines go (0.0.4 has neither); an `unknown` type is 0.0.4's `untyped`. Samples, labels and
/// the other types (gauge, histogram) are written the same way in both formats.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match descriptor {
            Some((tag, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let text = if tag == "# TYPE " && text == "unknown" {
                    "untyped"
                } else {
                    text
                };
                out.push_str(tag);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(text);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_others_get_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("text/plain, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0, */*"),
            Some("application/json"),
        ] {
            assert_eq!(Format::negotiate(accept), Format::Text, "{accept:?}");
        }
    }

    #[test]
    fn the_text_format_names_counter_samples_in_their_type_lines_and_has_no_eof() {
        let m = Metrics::new();
        m.exchange("success");
        m.policy_reload("refused");
        m.observe_exchange(Duration::from_millis(3));
        let om = m.render(Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE jobpass_exchanges counter\n"), "{om}");
        let text = m.render(Format::Text);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE jobpass_exchanges_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP jobpass_exchanges_total "), "{text}");
        assert!(
            text.contains("jobpass_exchanges_total{outcome=\"success\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE jobpass_policy_reload_refused gauge\n"),
            "{text}"
        );
        assert!(text.contains("jobpass_policy_reload_refused 1\n"), "{text}");
        assert!(
            text.contains("# TYPE jobpass_exchange_duration_seconds histogram\n"),
            "{text}"
        );
        // Every sample belongs to a family with a type line.
        let typed: HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{sample} has no TYPE line:\n{text}");
        }
    }
}
