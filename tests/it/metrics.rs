//! `GET /metrics` as Prometheus reads it: the 0.0.4 text format by default, linted by the real
//! `promtool check metrics`, and OpenMetrics when the scraper's `Accept` asks for it; each
//! body served with the content type of its format, so no metric loses its type.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use jobpass::policy::reload::{Reload, reload};
use jobpass::tls::AdminRole;
use serde_json::json;

use crate::support::Broker;
use crate::support::harness;

/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// (content type, body) of `/metrics`, with `accept` if given.
async fn scrape(b: &Broker, accept: Option<&str>) -> (String, String) {
    let mut req = b.client().get(format!("{}/metrics", b.url));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, resp.text().await.unwrap())
}

/// `promtool check metrics` on `body`: (exit success, what it said).
fn promtool(promtool: &std::path::Path, body: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `# TYPE` of every family of a 0.0.4 body, after checking that each sample belongs to
/// a family with one (a histogram's `_bucket`, `_sum`, `_count` to the histogram's).
fn types_of_text(body: &str) -> BTreeMap<String, String> {
    let types: BTreeMap<String, String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, ty) = l.split_once(' ').unwrap();
            (name.to_owned(), ty.to_owned())
        })
        .collect();
    for sample in body.lines().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        let typed = types.get(name).is_some_and(|t| t != "histogram")
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .and_then(|f| types.get(f))
                    .is_some_and(|t| t == "histogram")
            });
        assert!(
            typed,
            "sample `{sample}` belongs to no typed family:\n{body}"
        );
    }
    types
}

/// The value of the sample written exactly `series` (name and labels).
fn value(body: &str, series: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

async fn metrics_pass_promtool_and_keep_their_types_in_both_formats() {
    let Some(promtool_path) = harness::tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let b = Broker::start().await;
    b.put_secret("prod", "deploy/web/api", json!({"key": "metrics-test"}))
        .await;
    let mut leases = Vec::new();
    let mut token = String::new();
    for _ in 0..2 {
        let (s, v) = b
            .exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await;
        assert_eq!(s, 200, "{v}");
        leases.push(v["lease_id"].as_str().unwrap().to_owned());
        token = v["credentials"][0]["token"].as_str().unwrap().to_owned();
    }
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some(&token))
            .await
            .0,
        200
    );
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some("not-a-token"))
            .await
            .0,
        401
    );
    // A refused reload: the last good set stays.
    let prod = b.policy_dir().join("prod.toml");
    let good = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(&prod, format!("{good}\nbogus_key = 1\n")).unwrap();
    assert!(matches!(reload(&b.app, "test").await, Reload::Rejected(_)));
    // A revocation of one of the two leases.
    let r = b
        .admin(AdminRole::Security)
        .post(format!("{}/v1/admin/revoke", b.url))
        .header("content-type", "application/json")
        .body(json!({"selector": {"lease_id": leases[0]}, "reason": "INC-7"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // No Accept (curl, promtool): the 0.0.4 text format, said so.
    let (content_type, text) = scrape(&b, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    let (ok, said) = promtool(&promtool_path, &text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    let types = types_of_text(&text);
    for (family, ty) in [
        ("jobpass_exchanges_total", "counter"),
        ("jobpass_secret_reads_total", "counter"),
        ("jobpass_exchange_duration_seconds", "histogram"),
        ("jobpass_policy_reloads_total", "counter"),
        ("jobpass_policy_reload_refused", "gauge"),
        ("jobpass_active_leases", "gauge"),
        ("jobpass_revocations_pending", "gauge"),
        ("jobpass_revocation_failures_total", "counter"),
        ("jobpass_audit_head_seq", "gauge"),
        ("jobpass_audit_anchored_seq", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(ty),
            "{family}:\n{text}"
        );
    }
    for (series, expected) in [
        ("jobpass_exchanges_total{outcome=\"success\"}", "2"),
        ("jobpass_secret_reads_total{outcome=\"success\"}", "1"),
        ("jobpass_policy_reloads_total{outcome=\"refused\"}", "1"),
        ("jobpass_policy_reload_refused", "1"),
        ("jobpass_active_leases{environment=\"prod\"}", "1"),
        ("jobpass_active_leases{environment=\"staging\"}", "0"),
        ("jobpass_revocations_pending{state=\"pending\"}", "0"),
        ("jobpass_revocation_failures_total", "0"),
    ] {
        assert_eq!(
            value(&text, series).as_deref(),
            Some(expected),
            "{series}:\n{text}"
        );
    }
    assert!(
        value(&text, "jobpass_audit_head_seq{replica=\"\"}").is_some(),
        "{text}"
    );

    // Prometheus asks for OpenMetrics: OpenMetrics, said so (counters' families without
    // `_total`, `# EOF` at the end). The same series (values may move: the audit head is
    // sampled every second).
    let (content_type, openmetrics) = scrape(&b, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(
        openmetrics.contains("# TYPE jobpass_exchanges counter\n")
            && openmetrics.contains("# TYPE jobpass_active_leases gauge\n"),
        "{openmetrics}"
    );
    let samples = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| Some(l.rsplit_once(' ')?.0.to_owned()))
            .collect()
    };
    assert_eq!(samples(&openmetrics), samples(&text));
}

crate::support::harness::cases! {
    EachStore: [metrics_pass_promtool_and_keep_their_types_in_both_formats],
}
