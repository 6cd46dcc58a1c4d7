//! Emergency controls racing exchanges in flight (issue 11 item 5). On PostgreSQL an exchange
//! batch, a freeze and a revocation run in separate read-committed transactions, possibly on
//! different replicas: a freeze must not let a batch that read "not frozen" commit after it,
//! and a revocation must count every matching lease committed before it.
//!
//! The races are made deterministic by holding a real batch transaction open (the store's
//! own `checks` and `write_batch`, as the ledger runs them) at the point where the ledger
//! writes its audit records, then starting the freeze or revocation: it either finishes at
//! once (and misses the lease) or is seen waiting on a lock in `pg_locks`, after which the
//! batch commits.

use std::sync::atomic::{AtomicUsize, Ordering};

use jobpass::app::App;
use jobpass::audit::{Actor, AuditEvent, Outcome};
use jobpass::mint::Kind;
use jobpass::store::{
    BatchItem, CredentialRow, LeaseFilter, LeaseRow, NewLease, ReplaySlot, Selector, Store, WriteTx,
};
use jobpass::tls::AdminRole;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::harness::{Backend, backend};
use crate::support::{Broker, now};

/// A lease of `env` as an exchange batch writes it, with claim `run_id` = `run`.
fn new_lease(id: &str, env: &str, run: &str) -> NewLease {
    let t = now();
    NewLease {
        lease: LeaseRow {
            id: id.into(),
            env: env.into(),
            role: "deploy-web".into(),
            issuer: "https://issuer.test".into(),
            subject: format!("repo:acme/web:run:{run}"),
            policy_version: "v1".into(),
            issued_at: t,
            expires_at: t + 600,
            revoked_at: None,
            revoke_reason: None,
            key_version: 1,
            sealed: vec![1, 2, 3],
            revocation: None,
            revocation_attempts: 0,
        },
        claims: vec![("run_id".into(), run.into())],
        credentials: vec![CredentialRow {
            id: format!("crd_{id}"),
            lease_id: id.into(),
            env: env.into(),
            name: "api".into(),
            kind: Kind::Jwt,
            token_hash: None,
            scope: "[]".into(),
            expires_at: t + 600,
        }],
    }
}

/// A batch in flight: it has read its checks (not frozen) and written its lease, and waits to
/// commit (where the ledger writes and fsyncs the batch's audit records).
async fn batch_in_flight(store: &Store, lease: &NewLease, token: u8) -> WriteTx {
    let slot = ReplaySlot {
        key: [token; 32],
        issuer: "https://issuer.test".into(),
        expires_at: now() + 600,
    };
    let mut tx = store.begin().await.unwrap();
    let checks = tx
        .checks(&[slot.key], &[lease.lease.env.as_str()], &[])
        .await
        .unwrap();
    assert!(checks.frozen.is_empty(), "the batch read `not frozen`");
    let item = BatchItem {
        slot: &slot,
        intents: &[],
        lease,
    };
    let claimed = tx.write_batch(&[item], now()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    tx
}

/// Returns once a session of this test's database waits for an advisory lock of the two-int
/// form (the environment locks; the leader lock is a single bigint).
async fn lock_waiter(store: &Store) {
    let Store::Postgres { pool } = store else {
        panic!("a PostgreSQL store")
    };
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND NOT granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Runs `op` while `held` is open. Once `op` either finishes or is seen waiting for a lock,
/// `held` commits; then `op`'s outcome.
async fn while_in_flight<T: Send + 'static>(
    store: &Store,
    held: WriteTx,
    op: impl Future<Output = T> + Send + 'static,
) -> T {
    let mut op = tokio::spawn(op);
    let finished = tokio::select! {
        r = &mut op => Some(r.unwrap()),
        () = lock_waiter(store) => None,
    };
    held.commit().await.unwrap();
    match finished {
        Some(out) => out,
        None => op.await.unwrap(),
    }
}

/// An admin call on the broker as the security role: (status, body).
async fn security_post(
    b: &Broker,
    path: &str,
    body: Value,
) -> impl Future<Output = (u16, Value)> + Send + 'static {
    let client = b.admin(AdminRole::Security);
    let url = format!("{}{path}", b.url);
    async move {
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().await.unwrap()).unwrap(),
        )
    }
}

async fn a_freeze_waits_for_a_batch_in_flight_so_no_lease_commits_after_it() {
    let b = Broker::start().await;
    let store = b.app.store().clone();
    let lease = new_lease("lse_inflight", "prod", "1");
    let held = batch_in_flight(&store, &lease, 1).await;
    let freeze = security_post(
        &b,
        "/v1/admin/environments/prod/freeze",
        json!({"reason": "INC-11"}),
    )
    .await;
    let after = store.clone();
    // What the store holds the moment the freeze has answered.
    let (status, seen) = while_in_flight(&store, held, async move {
        let answer = freeze.await;
        (answer, after.lease("lse_inflight").await.unwrap().is_some())
    })
    .await;
    assert_eq!(status.0, 200, "{}", status.1);
    assert!(
        seen,
        "the freeze answered before a batch that had read `not frozen` committed: that lease \
         committed after the freeze"
    );
    // A batch after the freeze reads it.
    let mut tx = store.begin().await.unwrap();
    let checks = tx.checks(&[], &["prod"], &[]).await.unwrap();
    assert!(checks.frozen.contains("prod"));
    tx.rollback().await.unwrap();
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("environment_frozen")));
}

async fn a_revocation_of_an_environment_waits_for_a_batch_in_flight_and_counts_its_lease() {
    let b = Broker::start().await;
    let store = b.app.store().clone();
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let committed = v["lease_id"].as_str().unwrap().to_string();
    let lease = new_lease("lse_inflight", "prod", "2");
    let held = batch_in_flight(&store, &lease, 2).await;
    let revoke = security_post(
        &b,
        "/v1/admin/revoke",
        json!({"selector": {"environment": "prod"}, "reason": "INC-11"}),
    )
    .await;
    let (status, answer) = while_in_flight(&store, held, revoke).await;
    assert_eq!(status, 200, "{answer}");
    let mut ids: Vec<&str> = answer["lease_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![committed.as_str(), "lse_inflight"];
    want.sort_unstable();
    assert_eq!(
        ids, want,
        "the revocation waited for the batch in flight and revoked its lease"
    );
    assert_eq!(answer["revoked"], 2);
    let live = store
        .leases(&LeaseFilter {
            env: Some("prod".into()),
            active_at: Some(now()),
            limit: 100,
            ..LeaseFilter::default()
        })
        .await
        .unwrap();
    assert!(live.is_empty(), "{live:?}");
}

async fn a_revocation_by_claim_or_by_a_lease_id_not_yet_committed_waits_for_batches_in_flight() {
    let b = Broker::start().await;
    let store = b.app.store().clone();
    // By claim: the lease in flight may be in any environment.
    let lease = new_lease("lse_by_claim", "staging", "77");
    let held = batch_in_flight(&store, &lease, 3).await;
    let revoke = security_post(
        &b,
        "/v1/admin/revoke",
        json!({"selector": {"claims": {"run_id": "77"}}, "reason": "INC-11"}),
    )
    .await;
    let (status, answer) = while_in_flight(&store, held, revoke).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["lease_ids"], json!(["lse_by_claim"]), "{answer}");

    // By lease id, read from the exchange's audit record before its batch committed.
    let lease = new_lease("lse_by_id", "prod", "78");
    let held = batch_in_flight(&store, &lease, 4).await;
    let revoke = security_post(
        &b,
        "/v1/admin/revoke",
        json!({"selector": {"lease_id": "lse_by_id"}, "reason": "INC-11"}),
    )
    .await;
    let (status, answer) = while_in_flight(&store, held, revoke).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["lease_ids"], json!(["lse_by_id"]), "{answer}");
    assert!(
        store
            .lease("lse_by_id")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
}

/// Leases issued in a round before the freeze is asked.
const ISSUED_BEFORE_FREEZE: usize = 16;

/// Exchanges on `url` until the environment answers frozen; returns the leases issued.
/// `going` is notified when the round's `issued` count reaches [`ISSUED_BEFORE_FREEZE`].
async fn exchange_until_frozen(
    b: &Broker,
    url: &str,
    issued: &AtomicUsize,
    going: &Notify,
) -> Vec<String> {
    let client = b.client();
    let mut leases = Vec::new();
    loop {
        let body = json!({"token": b.github_token(), "environment": "prod", "role": "deploy-web"});
        let r = client
            .post(format!("{url}/v1/exchange"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        match status {
            200 => {
                leases.push(v["lease_id"].as_str().unwrap().to_string());
                if issued.fetch_add(1, Ordering::SeqCst) + 1 == ISSUED_BEFORE_FREEZE {
                    going.notify_one();
                }
            }
            403 if v["error"] == "environment_frozen" => return leases,
            _ => panic!("{status} {v}"),
        }
    }
}

/// Once `going` is notified: freezes prod on `freezer` and right after revokes it on
/// `revoker` (on PostgreSQL two replicas). Returns the leases the revocation ended.
async fn freeze_then_revoke(
    freezer: &App,
    revoker: &App,
    going: &Notify,
    reason: &str,
) -> Vec<String> {
    going.notified().await;
    freezer
        .set_frozen(
            "prod",
            true,
            Some(reason.to_string()),
            "sec",
            AuditEvent::new("freeze", Outcome::Success),
        )
        .await
        .unwrap();
    let sel = Selector {
        env: Some("prod".into()),
        ..Selector::default()
    };
    revoker
        .revoke(&sel, reason, Actor::default())
        .await
        .unwrap()
        .lease_ids
}

async fn exchanges_racing_a_freeze_and_a_revocation_leave_no_live_lease_behind() {
    let a = Broker::start().await;
    // On PostgreSQL two replicas share the store; SQLite has one broker.
    let b = match backend() {
        Backend::Postgres => Some(a.replica("b").await),
        _ => None,
    };
    let (url_a, url_b) = (
        a.url.as_str(),
        b.as_ref().map_or(a.url.as_str(), |r| r.url.as_str()),
    );
    let app_b = b.as_ref().map_or(&a.app, |r| &r.app);
    let store = a.app.store().clone();
    let mut revoked_before = 0;
    for round in 0..6 {
        let issued = AtomicUsize::new(0);
        let going = Notify::new();
        let reason = format!("INC-race-{round}");
        let w = |url| exchange_until_frozen(&a, url, &issued, &going);
        // Exchanges on both replicas; once they are going, a freeze on one replica and right
        // after a revocation on the other, while batches are in flight on both.
        let (w1, w2, w3, w4, w5, w6, w7, w8, revoked) = tokio::join!(
            w(url_a),
            w(url_b),
            w(url_a),
            w(url_b),
            w(url_a),
            w(url_b),
            w(url_a),
            w(url_b),
            freeze_then_revoke(app_b, &a.app, &going, &reason),
        );
        let mut answered: Vec<String> = [w1, w2, w3, w4, w5, w6, w7, w8].concat();
        // Every lease of prod committed before the freeze did, and the revocation (after the
        // freeze) ended each of them: none is live, and its count is exactly what it ended.
        let live = store
            .leases(&LeaseFilter {
                env: Some("prod".into()),
                active_at: Some(now()),
                limit: 10_000,
                ..LeaseFilter::default()
            })
            .await
            .unwrap();
        assert!(
            live.is_empty(),
            "round {round}: {} lease(s) of prod committed after the freeze and live: {:?}",
            live.len(),
            live.iter().map(|l| &l.id).collect::<Vec<_>>()
        );
        let all = store
            .leases(&LeaseFilter {
                env: Some("prod".into()),
                limit: 10_000,
                ..LeaseFilter::default()
            })
            .await
            .unwrap();
        let ended = all
            .iter()
            .filter(|l| l.revoke_reason.as_deref() == Some(reason.as_str()))
            .count();
        assert_eq!(revoked.len(), ended, "round {round}");
        assert_eq!(revoked.len() + revoked_before, all.len(), "round {round}");
        answered.sort_unstable();
        let mut ids = revoked.clone();
        ids.sort_unstable();
        assert_eq!(
            ids, answered,
            "round {round}: exactly the answered leases were revoked"
        );
        revoked_before = all.len();
        app_b
            .set_frozen(
                "prod",
                false,
                Some(format!("{reason} over")),
                "sec",
                AuditEvent::new("unfreeze", Outcome::Success),
            )
            .await
            .unwrap();
    }
    if let Some(b) = b {
        b.stop().await;
    }
}

crate::support::harness::cases! {
    EachStore: [
        exchanges_racing_a_freeze_and_a_revocation_leave_no_live_lease_behind,
    ],
    PostgresStore: [
        a_freeze_waits_for_a_batch_in_flight_so_no_lease_commits_after_it,
        a_revocation_of_an_environment_waits_for_a_batch_in_flight_and_counts_its_lease,
        a_revocation_by_claim_or_by_a_lease_id_not_yet_committed_waits_for_batches_in_flight,
    ],
}
