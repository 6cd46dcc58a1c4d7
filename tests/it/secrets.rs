//! Broker tokens read exactly the secrets their grant's globs allow (SPEC §3), until they
//! expire or their lease is revoked; every read is audited.

use serde_json::json;

use crate::support::Broker;

async fn broker_token_reads_exactly_what_its_globs_allow() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "s3cr3t-api-key-value"}),
    )
    .await;
    b.put_secret(
        "prod",
        "deploy/web/nested/db",
        json!({"user": "web", "password": "pw-123456789"}),
    )
    .await;
    b.put_secret(
        "prod",
        "deploy/other/api",
        json!({"key": "not-for-web-123"}),
    )
    .await;
    b.put_secret(
        "staging",
        "deploy/web/api",
        json!({"key": "staging-value-1234"}),
    )
    .await;

    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();

    let (s, v) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"path": "deploy/web/api", "version": 1, "data": {"key": "s3cr3t-api-key-value"}})
    );
    // `*` crosses `/`.
    let (s, v) = b
        .get("/v1/secrets/prod/deploy/web/nested/db", Some(&token))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["password"], "pw-123456789");
    // Outside the globs, or another environment: 403.
    let (s, v) = b
        .get("/v1/secrets/prod/deploy/other/api", Some(&token))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let (s, _) = b
        .get("/v1/secrets/staging/deploy/web/api", Some(&token))
        .await;
    assert_eq!(s, 403);
    // Covered but absent: 404.
    let (s, v) = b
        .get("/v1/secrets/prod/deploy/web/missing", Some(&token))
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "{v}");
    // No token or an unknown token: 401.
    assert_eq!(b.get("/v1/secrets/prod/deploy/web/api", None).await.0, 401);
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some("jpt_forged"))
            .await
            .0,
        401
    );

    let reads: Vec<_> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "secret_read")
        .collect();
    assert_eq!(
        reads.len(),
        5,
        "reads without a live token are counted, not written"
    );
    assert_eq!(reads[0]["outcome"], "success");
    assert_eq!(reads[2]["outcome"], "denied");
    b.app.flush_refusals().await.unwrap();
    let counted = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "refusals")
        .expect("the reads without a live token, counted");
    assert_eq!(counted["details"]["call"], "secret_read", "{counted}");
    assert_eq!(counted["details"]["answer"], "invalid_token", "{counted}");
    assert_eq!(counted["details"]["count"], 2, "{counted}");
}

async fn new_secret_version_is_read_and_old_values_stay_encrypted() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "first-version-value"}),
    )
    .await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "second-version-value"}),
    )
    .await;
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let (s, v) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!(s, 200);
    assert_eq!(v["version"], 2);
    assert_eq!(v["data"]["key"], "second-version-value");
}

async fn revoke_self_ends_the_lease_at_once() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "value-revoked-later"}),
    )
    .await;
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let lease = v["lease_id"].as_str().unwrap().to_string();
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some(&token))
            .await
            .0,
        200
    );
    let (s, v) = b
        .request(&b.client(), "POST", "/v1/revoke/self", Some(&token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lease_ids"][0], lease.as_str());
    let (s, v) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    let revoke = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "revoke")
        .unwrap();
    assert_eq!(revoke["lease_id"], lease.as_str());
}

crate::support::harness::cases! {
    EachStore: [
        broker_token_reads_exactly_what_its_globs_allow,
        new_secret_version_is_read_and_old_values_stay_encrypted,
        revoke_self_ends_the_lease_at_once,
    ],
}
