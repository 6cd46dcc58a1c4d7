//! The group-committing ledger seen from outside: many exchanges at once share batches, a
//! token sent many times at once is exchanged once, and a broker killed right after
//! answering still has every lease it answered (nothing is answered before it is durable).

use std::collections::HashSet;
use std::process::Command;

use serde_json::Value;

use crate::support::child::DevServer;
use crate::support::{Broker, binary, client_with};

async fn the_same_token_sent_many_times_at_once_is_exchanged_exactly_once() {
    let b = Broker::start().await;
    let token = b.github_token();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (client, url, token) = (b.client(), b.url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/exchange"))
                .header("content-type", "application/json")
                .body(serde_json::json!({"token": token, "environment": "prod", "role": "deploy-web"}).to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        if s != 200 {
            assert_eq!(v["error"], "token_replayed", "{v}");
        }
        statuses.push(s);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        23,
        "{statuses:?}"
    );
    assert_eq!(b.lease_count().await, 1);
    let recs = b.audit_records();
    let exchanges: Vec<&Value> = recs.iter().filter(|r| r["event"] == "exchange").collect();
    let replays = recs.iter().filter(|r| r["event"] == "replay").count();
    assert_eq!(exchanges.len(), 1, "one success record");
    assert_eq!(exchanges[0]["outcome"], "success");
    assert_eq!(replays, 23, "every refusal is audited as a possible theft");
}

async fn many_concurrent_exchanges_are_each_stored_and_audited_once() {
    let b = Broker::start().await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, token) = (b.client(), b.url.clone(), b.github_token());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/exchange"))
                .header("content-type", "application/json")
                .body(serde_json::json!({"token": token, "environment": "prod", "role": "deploy-web"}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            v["lease_id"].as_str().unwrap().to_string()
        }));
    }
    let mut leases = HashSet::new();
    for t in tasks {
        assert!(leases.insert(t.await.unwrap()), "lease ids are unique");
    }
    assert_eq!(b.lease_count().await, 64);
    let recorded: Vec<String> = b
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "exchange" && r["outcome"] == "success")
        .map(|r| r["lease_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(recorded.len(), 64, "one record per exchange");
    assert_eq!(recorded.into_iter().collect::<HashSet<_>>(), leases);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `jobpass serve --dev` in `dir`; returns once it listens, with a client trusting it.
async fn dev_server(
    dir: &std::path::Path,
    listen: &str,
) -> (DevServer, openidconnect::reqwest::Client) {
    let server = DevServer::start(dir, listen).await;
    let ca = std::fs::read_to_string(dir.join(".jobpass-dev/certs/ca.pem")).unwrap();
    (server, client_with(Some(&ca), None))
}

async fn a_broker_killed_right_after_answering_still_has_every_lease_it_answered() {
    let dir = tempfile::tempdir().unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for e in std::fs::read_dir(&policies).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join("policies").join(e.file_name())).unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut server, client) = dev_server(dir.path(), &listen).await;

    let mut tokens = Vec::new();
    for _ in 0..40 {
        let out = Command::new(binary())
            .current_dir(dir.path())
            .args(["dev", "token", "--env", "dev"])
            .output()
            .unwrap();
        assert!(out.status.success());
        tokens.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    let mut tasks = Vec::new();
    for token in tokens {
        let (client, url) = (client.clone(), format!("https://{listen}/v1/exchange"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(serde_json::json!({"token": token, "environment": "dev"}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            v["lease_id"].as_str().unwrap().to_string()
        }));
    }
    let mut answered = HashSet::new();
    for t in tasks {
        answered.insert(t.await.unwrap());
    }
    // SIGKILL at once: no shutdown, no flush.
    server.kill();

    // Every answered lease has its success record in an intact chain…
    let audit = std::fs::read_to_string(dir.path().join(".jobpass-dev/audit.log")).unwrap();
    let recorded: HashSet<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["event"] == "exchange" && r["outcome"] == "success")
        .map(|r| r["lease_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        answered.is_subset(&recorded),
        "answered leases missing from the audit log"
    );
    let cfg = dir.path().join("verify.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keys]\nroot_key_file = \"{}\"\n",
            dir.path().join(".jobpass-dev/root.key").display()
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .current_dir(dir.path())
        .args([
            "audit",
            "verify",
            "--config",
            cfg.to_str().unwrap(),
            ".jobpass-dev/audit.log",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // …and, after a restart, in the store: each is listed and its token still reads.
    let (_server, _) = dev_server(dir.path(), &listen).await;
    let certs = dir.path().join(".jobpass-dev/certs");
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let cert = std::fs::read_to_string(certs.join("security.pem")).unwrap();
    let key = std::fs::read_to_string(certs.join("security-key.pem")).unwrap();
    let security = client_with(Some(&ca), Some((&cert, &key)));
    let r = security
        .get(format!(
            "https://{listen}/v1/admin/leases?environment=dev&limit=1000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let listed: HashSet<String> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lease_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        answered.is_subset(&listed),
        "answered leases missing after restart: {v}"
    );
}

crate::support::harness::cases! {
    EachStore: [
        the_same_token_sent_many_times_at_once_is_exchanged_exactly_once,
        many_concurrent_exchanges_are_each_stored_and_audited_once,
    ],
    Once: [
        a_broker_killed_right_after_answering_still_has_every_lease_it_answered,
    ],
}
