//! Several replicas on one PostgreSQL store (SPEC §5): what one replica revokes is dead on the
//! others at once, a source token is accepted by exactly one of them, and background work
//! moves to a surviving replica. Runs on the PostgreSQL store only (the harness lists it as
//! ignored when no PostgreSQL server was found).

use jobpass::tls::AdminRole;
use serde_json::json;

use crate::support::{Broker, Options};

async fn a_lease_minted_on_one_replica_and_revoked_on_another_dies_everywhere_at_once() {
    let a = Broker::start().await;
    assert_eq!(a.app.store().backend(), "postgres");
    let b = a.replica("b").await;
    a.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "shared-by-replicas"}),
    )
    .await;
    let (s, v) = a
        .exchange(&a.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let lease = v["lease_id"].as_str().unwrap().to_string();
    assert_eq!(
        a.get_at(&b.url, "/v1/secrets/prod/deploy/web/api", &token)
            .await,
        200,
        "B serves A's lease"
    );
    // Revoke on B.
    let r = a
        .admin(AdminRole::Security)
        .post(format!("{}/v1/admin/revoke", b.url))
        .header("content-type", "application/json")
        .body(json!({"selector": {"lease_id": lease}, "reason": "INC-5"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        a.get_at(&a.url, "/v1/secrets/prod/deploy/web/api", &token)
            .await,
        401,
        "refused on A at once"
    );
    // Freeze on B: A mints nothing. Key rotation on B: A seals under the new version.
    let r = a
        .admin(AdminRole::Security)
        .post(format!("{}/v1/admin/environments/prod/freeze", b.url))
        .header("content-type", "application/json")
        .body(json!({"reason": "INC-5"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (s, v) = a
        .exchange(&a.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("environment_frozen")));
    let r = a
        .admin(AdminRole::Admin)
        .post(format!("{}/v1/admin/keys/staging/rotate", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    a.put_secret("staging", "staging/x", json!({"k": "after-rotation-on-b"}))
        .await;
    assert_eq!(
        a.app
            .store()
            .count_sealed_below("staging", 2)
            .await
            .unwrap(),
        0,
        "A used B's new key version"
    );
    // Each replica's audit file carries its name and verifies on its own.
    let b_audit = a.dir.path().join("audit-b.log");
    let text = std::fs::read_to_string(&b_audit).unwrap();
    assert!(text.lines().count() >= 3);
    assert!(
        text.lines().all(|l| l.contains("\"replica\":\"b\"")),
        "{text}"
    );
    let key =
        jobpass::app::audit_key(&jobpass::app::load_root_key(a.app.config()).unwrap()).unwrap();
    assert!(jobpass::audit::verify(&b_audit, &key).is_ok());
    assert!(jobpass::audit::verify(&a.audit_path(), &key).is_ok());
    b.stop().await;
}

async fn the_same_source_token_sent_to_two_replicas_is_accepted_exactly_once() {
    let a = Broker::start().await;
    let b = a.replica("b").await;
    for _ in 0..5 {
        let token = a.github_token();
        let (ra, rb) = tokio::join!(
            a.exchange_at(&a.url, &token, "prod", Some("deploy-web")),
            a.exchange_at(&b.url, &token, "prod", Some("deploy-web")),
        );
        let mut codes = [ra.0, rb.0];
        codes.sort_unstable();
        assert_eq!(codes, [200, 409], "{ra:?} {rb:?}");
    }
    b.stop().await;
}

async fn background_work_runs_on_one_replica_and_moves_when_it_dies() {
    let base = Broker::start_with(Options {
        no_background: true,
        ..Options::default()
    })
    .await;
    let a = base.replica("a").await;
    let c = base.replica("c").await;
    assert!(a.app.lead().await, "the first replica to ask leads");
    assert!(!c.app.lead().await, "only one replica leads");
    // A standby's wait is bounded: it answers "not yet" while A holds the lock.
    assert!(
        !c.app
            .wait_lead(std::time::Duration::from_millis(300))
            .await
            .unwrap()
    );
    // A dies mid-flight; C keeps serving and takes over the background work.
    let token = base.github_token();
    a.kill().await;
    let (s, v) = base
        .exchange_at(&c.url, &token, "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    // C waits on the lock A's session held: it is released when that session ends.
    let led = c.app.wait_lead(std::time::Duration::from_secs(60)).await;
    assert!(matches!(led, Ok(true)), "C took over when A died");
    assert!(c.app.lead().await);
    c.stop().await;
}

async fn more_concurrent_exchanges_than_pool_connections_all_succeed() {
    // The PostgreSQL pool has 16 connections; an exchange must never hold one while waiting
    // for another (which deadlocked the pool under load once).
    let b = Broker::start().await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (client, url, token) = (b.client(), b.url.clone(), b.github_token());
        tasks.push(tokio::spawn(async move {
            let body = json!({"token": token, "environment": "prod", "role": "deploy-web"});
            let r = client
                .post(format!("{url}/v1/exchange"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (s, text) = t.await.unwrap();
        assert_eq!(s, 200, "{text}");
    }
}

crate::support::harness::cases! {
    PostgresStore: [
        a_lease_minted_on_one_replica_and_revoked_on_another_dies_everywhere_at_once,
        the_same_source_token_sent_to_two_replicas_is_accepted_exactly_once,
        background_work_runs_on_one_replica_and_moves_when_it_dies,
        more_concurrent_exchanges_than_pool_connections_all_succeed,
    ],
}
