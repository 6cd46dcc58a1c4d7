//! The audit anchor (issue 11 item 4): each replica's audit head is kept in the store, so a
//! file cut at its end, or deleted, refuses the start with a message saying what and how to
//! recover; an explicit override starts, records both heads and re-anchors; `audit verify
//! --anchor` reports a file behind its anchor.

use std::path::Path;

use jobpass::store::{AuditAnchorRow, Store};
use serde_json::{Value, json};

use crate::support::{Broker, Stopped, release};

const OVERRIDE: &str = "JOBPASS_AUDIT__ACCEPT_BEHIND_ANCHOR";

fn verify_anchor(config: &Path, file: &Path) -> (bool, String) {
    crate::support::audit_verify(config, file, &["--anchor"])
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn anchor_of(stopped: &Stopped) -> AuditAnchorRow {
    let config = jobpass::config::Config::load(Some(&stopped.config_path)).unwrap();
    Store::read_audit_anchor(&config.store, "")
        .await
        .unwrap()
        .expect("an anchor")
}

/// Exchanges and secret reads, then a shutdown: the anchor covers every line.
async fn used_and_stopped() -> (Stopped, std::path::PathBuf) {
    let b = Broker::start().await;
    b.put_secret("prod", "deploy/web/api", json!({"key": "v"}))
        .await;
    for _ in 0..2 {
        let (s, v) = b
            .exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await;
        assert_eq!(s, 200, "{v}");
        let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
        let (s, _) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
        assert_eq!(s, 200);
    }
    let audit = b.audit_path();
    let stopped = b.shut_down().await;
    let written = lines(&audit).len();
    assert!(written >= 5, "{written} lines");
    // The last lines are secret reads (no store transaction): anchored at shutdown.
    assert_eq!(
        usize::try_from(anchor_of(&stopped).await.seq).unwrap(),
        written
    );
    (stopped, audit)
}

/// Starting with the override works once; the record is there; the next start is plain.
async fn override_then_plain_restart(
    stopped: &Stopped,
    audit: &Path,
    file_seq: u64,
    anchor_seq: u64,
) {
    let app = stopped
        .build(&[(OVERRIDE, "INC-77 audit disk restored from an old backup")])
        .await
        .unwrap();
    let all = lines(audit);
    let last: Value = serde_json::from_str(all.last().unwrap()).unwrap();
    assert_eq!(last["event"], "audit_anchor_override");
    assert_eq!(
        last["reason"],
        "INC-77 audit disk restored from an old backup"
    );
    assert_eq!(last["seq"], file_seq + 1);
    assert_eq!(last["details"]["file_seq"], file_seq);
    assert_eq!(last["details"]["anchor_seq"], anchor_seq);
    assert!(last["details"]["anchor_head"].is_string());
    release(app).await;
    // Re-anchored at the override record: the next start needs nothing.
    assert_eq!(
        u64::try_from(anchor_of(stopped).await.seq).unwrap(),
        file_seq + 1
    );
    let app = stopped.build(&[]).await.unwrap();
    release(app).await;
    let (ok, out) = verify_anchor(&stopped.config_path, audit);
    assert!(ok, "{out}");
    assert!(out.contains("reaches its anchor"), "{out}");
}

async fn a_broker_refuses_to_start_on_an_audit_file_cut_behind_its_anchor() {
    let (stopped, audit) = used_and_stopped().await;
    let all = lines(&audit);
    let anchor_seq = all.len() as u64;
    let (ok, out) = verify_anchor(&stopped.config_path, &audit);
    assert!(ok, "{out}");

    // Cut the last two lines: the chain that is left is valid on its own.
    let kept: String = all[..all.len() - 2]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&audit, kept).unwrap();
    let file_seq = anchor_seq - 2;
    let (ok, out) = verify_anchor(&stopped.config_path, &audit);
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("behind its anchor"), "{out}");
    assert!(out.contains(&format!("line {anchor_seq}")), "{out}");
    assert!(out.contains(&format!("ends at line {file_seq}")), "{out}");

    let err = stopped.build(&[]).await.unwrap_err().to_string();
    for part in [
        audit.display().to_string(),
        format!("line {anchor_seq}"),
        format!("ends at line {file_seq}"),
        "2 line(s) missing".to_string(),
        "accept_behind_anchor".to_string(),
    ] {
        assert!(err.contains(&part), "{part} missing from: {err}");
    }
    // Refused: nothing was written, the anchor did not move.
    assert_eq!(lines(&audit).len() as u64, file_seq);
    assert_eq!(
        u64::try_from(anchor_of(&stopped).await.seq).unwrap(),
        anchor_seq
    );
    // An empty reason is no override.
    assert!(stopped.build(&[(OVERRIDE, " ")]).await.is_err());
    assert_eq!(lines(&audit).len() as u64, file_seq);

    override_then_plain_restart(&stopped, &audit, file_seq, anchor_seq).await;
}

async fn a_broker_refuses_to_start_when_its_audit_file_was_deleted() {
    let (stopped, audit) = used_and_stopped().await;
    let anchor_seq = lines(&audit).len() as u64;
    std::fs::remove_file(&audit).unwrap();
    let err = stopped.build(&[]).await.unwrap_err().to_string();
    assert!(err.contains(&audit.display().to_string()), "{err}");
    assert!(err.contains(&format!("line {anchor_seq}")), "{err}");
    assert!(err.contains("the file is empty"), "{err}");
    assert!(err.contains("accept_behind_anchor"), "{err}");
    // The refused start created an empty file; `audit verify --anchor` fails it too.
    let (ok, out) = verify_anchor(&stopped.config_path, &audit);
    assert!(!ok && out.contains("behind its anchor"), "{out}");

    override_then_plain_restart(&stopped, &audit, 0, anchor_seq).await;
}

async fn the_audit_head_and_the_anchored_line_are_metrics() {
    let b = Broker::start().await;
    let (s, _) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200);
    // The exchange's batch moved the anchor in its own transaction: nothing lags.
    let n = b.audit_records().len();
    let (_, m) = b.get("/metrics", None).await;
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains(&format!("jobpass_audit_head_seq{{replica=\"\"}} {n}\n")),
        "{m}"
    );
    assert!(
        m.contains(&format!("jobpass_audit_anchored_seq{{replica=\"\"}} {n}\n")),
        "{m}"
    );
    assert_eq!(
        usize::try_from(b.app.store().audit_anchor("").await.unwrap().unwrap().seq).unwrap(),
        n
    );
}

crate::support::harness::cases! {
    EachStore: [
        a_broker_refuses_to_start_on_an_audit_file_cut_behind_its_anchor,
        a_broker_refuses_to_start_when_its_audit_file_was_deleted,
        the_audit_head_and_the_anchored_line_are_metrics,
        a_broker_refuses_to_start_when_lines_before_the_last_were_removed,
        a_broker_refuses_to_start_when_its_audit_file_became_a_link_to_dev_null,
    ],
}

/// Lines removed before the last line leave the anchored (last) line in place: the chain of
/// the file's recent part is verified at start too.
async fn a_broker_refuses_to_start_when_lines_before_the_last_were_removed() {
    let (stopped, audit) = used_and_stopped().await;
    let all = lines(&audit);
    let n = all.len();
    let kept: String = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !(1..n - 1).contains(i) || *i == 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&audit, kept).unwrap();
    assert_eq!(lines(&audit).len(), 3, "lines 3 .. n-1 removed");
    let err = stopped.build(&[]).await.unwrap_err().to_string();
    assert!(err.contains("fails verification"), "{err}");
    assert!(err.contains("accept_behind_anchor"), "{err}");
    assert_eq!(lines(&audit).len(), 3, "a refused start writes nothing");
    // With the override it starts, and the problem is on record.
    let app = stopped
        .build(&[(OVERRIDE, "INC-78 audit file damaged")])
        .await
        .unwrap();
    let last: Value = serde_json::from_str(lines(&audit).last().unwrap()).unwrap();
    assert_eq!(last["event"], "audit_anchor_override");
    assert!(
        last["details"]["problem"]
            .as_str()
            .unwrap()
            .contains("fails verification")
    );
    release(app).await;
}

async fn a_broker_refuses_to_start_when_its_audit_file_became_a_link_to_dev_null() {
    let (stopped, audit) = used_and_stopped().await;
    std::fs::remove_file(&audit).unwrap();
    std::os::unix::fs::symlink("/dev/null", &audit).unwrap();
    let err = stopped.build(&[]).await.unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(err.contains("accept_behind_anchor"), "{err}");
}
