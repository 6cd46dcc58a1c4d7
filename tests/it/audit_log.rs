//! The audit log (SPEC §6): no issued value anywhere it must not be, a verifiable chain that
//! reports the first altered, removed or reordered line, fingerprints that find a leaked
//! value, and fail-closed exchanges when the log cannot be written.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::{Broker, Options, binary, logs};

fn verify(config: &Path, file: &Path) -> (bool, String) {
    crate::support::audit_verify(config, file, &[])
}

fn read_all_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            all.extend(std::fs::read(e.path()).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn issued_values_never_reach_the_audit_log_the_service_log_or_the_store() {
    let b = Broker::start().await;
    let secret_value = format!("secret-{}", crate::support::uuid_like());
    b.put_secret("prod", "deploy/web/api", json!({"key": secret_value}))
        .await;
    let source = b.github_token();
    let (s, v) = b.exchange(&source, "prod", Some("deploy-web")).await;
    assert_eq!(s, 200);
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let jwt = v["credentials"][1]["token"].as_str().unwrap().to_string();
    let (s, r) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!(
        (s, r["data"]["key"].as_str()),
        (200, Some(secret_value.as_str()))
    );
    // Error paths see the values too: a replay, a policy denial, a denied read, a revocation.
    assert_eq!(b.exchange(&source, "prod", Some("deploy-web")).await.0, 409);
    let mut other = crate::support::github_claims(&b.gh.issuer_url());
    other["repository"] = json!("acme/elsewhere");
    let denied_source = b.gh.sign(other);
    assert_eq!(
        b.exchange(&denied_source, "prod", Some("deploy-web"))
            .await
            .0,
        403
    );
    assert_eq!(
        b.get("/v1/secrets/prod/other/path", Some(&token)).await.0,
        403
    );
    let (s, _) = b
        .request(&b.client(), "POST", "/v1/revoke/self", Some(&token), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some(&token))
            .await
            .0,
        401
    );

    let mut store_and_audit = read_all_bytes(b.dir.path());
    store_and_audit.extend(b.store_dump().await);
    let service_log = logs::text();
    for value in [&token, &jwt, &secret_value, &source, &denied_source] {
        // The JWT's signature part is its unique, secret-bearing piece.
        let needle = value.rsplit('.').next().unwrap();
        assert!(
            !contains(&store_and_audit, needle),
            "found an issued value in the data dir"
        );
        assert!(
            !service_log.contains(needle),
            "found an issued value in the service log"
        );
    }
    // The audit record shows the token masked, and `audit find` matches the leaked value.
    let issued = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "exchange" && r["outcome"] == "success")
        .unwrap();
    let masked = issued["credentials"][0]["masked"].as_str().unwrap();
    assert_eq!(masked, format!("{}…", &token[..4]));
    let out = Command::new(binary())
        .args(["audit", "find", "--config"])
        .arg(&b.config_path)
        .args(["--value", &token])
        .arg(b.audit_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(v["lease_id"].as_str().unwrap()), "{text}");
    let out = Command::new(binary())
        .args(["audit", "find", "--config"])
        .arg(&b.config_path)
        .args(["--value", "jpt_not-a-real-token"])
        .arg(b.audit_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The leaked value can stay off the command line: read from standard input or a file.
    let mut child = Command::new(binary())
        .args(["audit", "find", "--config"])
        .arg(&b.config_path)
        .args(["--value-file", "-"])
        .arg(b.audit_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{token}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(v["lease_id"].as_str().unwrap()), "{text}");
    let leaked = b.dir.path().join("leaked.txt");
    std::fs::write(&leaked, format!("{token}\n")).unwrap();
    let out = Command::new(binary())
        .args(["audit", "find", "--config"])
        .arg(&b.config_path)
        .arg("--value-file")
        .arg(&leaked)
        .arg(b.audit_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(v["lease_id"].as_str().unwrap()));
}

async fn audit_verify_passes_then_names_the_tampered_line() {
    let b = Broker::start().await;
    for _ in 0..3 {
        assert_eq!(
            b.exchange(&b.github_token(), "prod", Some("deploy-web"))
                .await
                .0,
            200
        );
        assert_eq!(
            b.exchange("garbage", "prod", Some("deploy-web")).await.0,
            401
        );
    }
    // The three garbage tokens are counted into one aggregate record.
    b.app.flush_refusals().await.unwrap();
    let original = b.audit_text();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 4);
    let (ok, out) = verify(&b.config_path, &b.audit_path());
    assert!(ok, "{out}");
    assert!(out.contains("OK") && out.contains("4 records"), "{out}");

    let tampered = b.dir.path().join("tampered.log");
    // One byte of line 3 changed.
    let mut bytes = original.clone().into_bytes();
    let offset = lines[0].len() + lines[1].len() + 2 + 20;
    bytes[offset] = if bytes[offset] == b'0' { b'1' } else { b'0' };
    std::fs::write(&tampered, &bytes).unwrap();
    let (ok, out) = verify(&b.config_path, &tampered);
    assert!(!ok);
    assert!(out.contains("line 3"), "{out}");
    // Line 3 deleted (the gap is found at the line after it, now line 3).
    let mut l: Vec<&str> = lines.clone();
    l.remove(2);
    std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
    let (ok, out) = verify(&b.config_path, &tampered);
    assert!(!ok);
    assert!(out.contains("line 3"), "{out}");
    // Lines 2 and 3 swapped.
    let mut l: Vec<&str> = lines.clone();
    l.swap(1, 2);
    std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
    let (ok, out) = verify(&b.config_path, &tampered);
    assert!(!ok);
    assert!(out.contains("line 2"), "{out}");
}

async fn exchange_fails_closed_when_the_audit_log_cannot_be_written() {
    let b = Broker::start_with(Options {
        audit_file: Some("/dev/full".into()),
        ..Options::default()
    })
    .await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "unavailable");
    assert!(v.get("credentials").is_none());
    assert_eq!(b.lease_count().await, 0, "nothing stored");
    // Reads through the admin API are refused too: nothing happens unaudited.
    let (s, _) = b
        .request(
            &b.admin(jobpass::tls::AdminRole::Admin),
            "GET",
            "/v1/admin/leases",
            None,
            None,
        )
        .await;
    assert_eq!(s, 503);
    // A key operation whose intent cannot be recorded does nothing.
    for op in ["rotate", "rewrap"] {
        let (s, v) = b
            .request(
                &b.admin(jobpass::tls::AdminRole::Admin),
                "POST",
                &format!("/v1/admin/keys/prod/{op}"),
                None,
                None,
            )
            .await;
        assert_eq!(s, 503, "{op} {v}");
    }
    assert_eq!(
        b.app.keyring().current_version("prod").await.unwrap(),
        1,
        "nothing rotated"
    );
}

crate::support::harness::cases! {
    EachStore: [
        issued_values_never_reach_the_audit_log_the_service_log_or_the_store,
        audit_verify_passes_then_names_the_tampered_line,
        exchange_fails_closed_when_the_audit_log_cannot_be_written,
    ],
}
