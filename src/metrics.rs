//! Prometheus metrics (`GET /metrics`): exchanges by outcome, denials by failing claim,
//! exchange latency, secret reads by outcome, admin CRL reloads by outcome and the admin CRL's
//! `nextUpdate`, and each replica's audit head and anchored sequence numbers. An explicit
//! registry, no global recorder.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::tls::CrlInfo;

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
        }
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

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = encode(&mut out, &r);
        }
        out
    }
}
