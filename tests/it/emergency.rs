//! Emergency controls (SPEC §4, §5): revocation by any selector, effect at once, freeze, key
//! rotation, rewrap and crypto-shredding, expiry and the sweeper.

use std::collections::BTreeSet;

use jobpass::store::SealedTable;
use jobpass::tls::AdminRole;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::support::{Broker, github_claims, gitlab_claims};

struct Lease {
    id: String,
    env: &'static str,
    role: &'static str,
    repo: String,
    run_id: String,
    issuer: String,
    revoked: bool,
}

async fn revoke(b: &Broker, selector: Value) -> (u16, Value) {
    b.request(
        &b.admin(AdminRole::Security),
        "POST",
        "/v1/admin/revoke",
        None,
        Some(json!({"selector": selector, "reason": "INC-42"}).to_string()),
    )
    .await
}

async fn each_selector_alone_and_combined_revokes_exactly_the_matching_leases() {
    let b = Broker::start().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let repos = ["acme/web", "acme/api", "acme/ops"];
    let mut model: Vec<Lease> = Vec::new();
    for _ in 0..240 {
        let run_id = rng.gen_range(1..=8).to_string();
        let (env, role, claims, token) = if rng.gen_bool(0.2) {
            let mut c = gitlab_claims(&b.gl.issuer_url());
            c["pipeline_id"] = json!(run_id);
            ("staging", "gitlab-deploy", c.clone(), b.gl.sign(c))
        } else {
            let repo = repos[rng.gen_range(0..repos.len())];
            let role = if repo == "acme/web" && rng.gen_bool(0.5) {
                "deploy-web"
            } else {
                "any-branch"
            };
            let mut c = github_claims(&b.gh.issuer_url());
            c["repository"] = json!(repo);
            c["run_id"] = json!(run_id);
            ("prod", role, c.clone(), b.gh.sign(c))
        };
        let (s, v) = b.exchange(&token, env, Some(role)).await;
        assert_eq!(s, 200, "{v}");
        model.push(Lease {
            id: v["lease_id"].as_str().unwrap().into(),
            env,
            role,
            repo: claims["repository"].as_str().unwrap_or("").into(),
            run_id: claims
                .get("run_id")
                .or(claims.get("pipeline_id"))
                .and_then(Value::as_str)
                .unwrap()
                .into(),
            issuer: claims["iss"].as_str().unwrap().into(),
            revoked: false,
        });
    }
    type Pred = Box<dyn Fn(&Lease) -> bool>;
    let gl = b.gl.issuer_url();
    let one = model[17].id.clone();
    let version = b.app.policies().version().to_string();
    let cases: Vec<(Value, Pred)> = vec![
        (
            json!({"lease_id": one.clone()}),
            Box::new(move |l: &Lease| l.id == one),
        ),
        (
            json!({"claims": {"repository": "acme/api", "run_id": "3"}}),
            Box::new(|l: &Lease| l.repo == "acme/api" && l.run_id == "3"),
        ),
        (
            json!({"environment": "prod", "role": "deploy-web", "claims": {"run_id": "1"}}),
            Box::new(|l: &Lease| l.env == "prod" && l.role == "deploy-web" && l.run_id == "1"),
        ),
        (
            json!({"claims": {"repository": "acme/o*"}}),
            Box::new(|l: &Lease| l.repo.starts_with("acme/o")),
        ),
        (
            json!({"issuer": gl.clone(), "claims": {"pipeline_id": "2"}}),
            Box::new(move |l: &Lease| l.issuer == gl && l.run_id == "2"),
        ),
        (
            json!({"role": "any-branch", "claims": {"run_id": "*5"}}),
            Box::new(|l: &Lease| l.role == "any-branch" && l.run_id.ends_with('5')),
        ),
        (
            json!({"environment": "staging"}),
            Box::new(|l: &Lease| l.env == "staging"),
        ),
        (
            json!({"claims": {"repository": "ACME/WEB"}}),
            Box::new(|_: &Lease| false),
        ),
        // LIKE metacharacters in a selector are literal.
        (
            json!({"claims": {"repository": "acme_web"}}),
            Box::new(|_: &Lease| false),
        ),
        (
            json!({"claims": {"repository": "acme%"}}),
            Box::new(|_: &Lease| false),
        ),
        (
            json!({"subject": "repo:acme/web:ref:refs/heads/main", "claims": {"run_id": "4"}}),
            Box::new(|l: &Lease| l.env == "prod" && l.run_id == "4"),
        ),
        (
            json!({"policy_version": "sha256:not-this-one"}),
            Box::new(|_: &Lease| false),
        ),
        (
            json!({"policy_version": version, "claims": {"run_id": "6"}}),
            Box::new(|l: &Lease| l.run_id == "6"),
        ),
        (
            json!({"issued_before": "2000-01-01T00:00:00Z"}),
            Box::new(|_: &Lease| false),
        ),
        (
            json!({"environment": "prod", "issued_after": "2000-01-01T00:00:00Z", "claims": {"repository": "acme/web"}}),
            Box::new(|l: &Lease| l.env == "prod" && l.repo == "acme/web"),
        ),
    ];
    for (selector, pred) in cases {
        let expected: BTreeSet<String> = model
            .iter()
            .filter(|l| !l.revoked && pred(l))
            .map(|l| l.id.clone())
            .collect();
        let (s, v) = revoke(&b, selector.clone()).await;
        assert_eq!(s, 200, "{v}");
        let got: BTreeSet<String> = v["lease_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, expected, "selector {selector}");
        assert_eq!(v["revoked"], json!(expected.len()));
        for l in model.iter_mut().filter(|l| expected.contains(&l.id)) {
            l.revoked = true;
        }
    }
    // Everything the selectors did not hit is still live.
    let live = model.iter().filter(|l| !l.revoked).count();
    let (_, v) = b
        .request(
            &b.admin(AdminRole::Auditor),
            "GET",
            "/v1/admin/leases?active=true&limit=10000",
            None,
            None,
        )
        .await;
    assert_eq!(v["leases"].as_array().unwrap().len(), live);
    assert!(live > 0);
    let (s, v) = revoke(&b, json!({"all": true})).await;
    assert_eq!((s, v["revoked"].as_u64()), (200, Some(live as u64)));
}

async fn revocation_takes_effect_at_once_on_tokens_jwts_and_introspection() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "value-before-revocation"}),
    )
    .await;
    let mut c = github_claims(&b.gh.issuer_url());
    c["run_id"] = json!("777");
    let (_, v) = b.exchange(&b.gh.sign(c), "prod", Some("deploy-web")).await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let jwt = v["credentials"][1]["token"].as_str().unwrap().to_string();
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some(&token))
            .await
            .0,
        200
    );
    let introspect = |t: String| {
        let form = serde_urlencoded::to_string([("token", t)]).unwrap();
        let client = b.admin(AdminRole::Auditor);
        let url = format!("{}/v1/oauth/introspect", b.url);
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .unwrap();
            serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    let i = introspect(jwt.clone()).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["scope"], "deploy:web");
    let jti = i["jti"].as_str().unwrap().to_string();
    assert_eq!(introspect(token.clone()).await["active"], true);
    assert_eq!(
        b.get("/v1/envs/prod/revoked", None).await.1["revoked"],
        json!([])
    );

    let (s, v) = revoke(&b, json!({"claims": {"run_id": "777"}})).await;
    assert_eq!((s, v["revoked"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_token")));
    assert_eq!(introspect(jwt.clone()).await, json!({"active": false}));
    assert_eq!(introspect(token.clone()).await, json!({"active": false}));
    let (_, list) = b.get("/v1/envs/prod/revoked", None).await;
    assert_eq!(list["revoked"][0]["jti"], jti.as_str(), "{list}");
    // Idempotent.
    let (s, v) = revoke(&b, json!({"claims": {"run_id": "777"}})).await;
    assert_eq!((s, v["revoked"].as_u64()), (200, Some(0)));
    let rec = b
        .audit_records()
        .into_iter()
        .rfind(|r| r["event"] == "revoke")
        .unwrap();
    assert_eq!(rec["actor"]["role"], "security");
    assert_eq!(rec["reason"], "INC-42");
    assert_eq!(rec["details"]["selector"]["claims"]["run_id"], "777");
}

async fn rfc7009_revocation_ends_the_lease_of_the_presented_token() {
    let b = Broker::start().await;
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let form = serde_urlencoded::to_string([("token", token.as_str())]).unwrap();
    let r = b
        .client()
        .post(format!("{}/v1/oauth/revoke", b.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/x", Some(&token)).await.0,
        401
    );
    // Unknown tokens are answered 200 as the RFC requires.
    let r = b
        .client()
        .post(format!("{}/v1/oauth/revoke", b.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=jpt_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Introspection needs a caller credential.
    let r = b
        .client()
        .post(format!("{}/v1/oauth/introspect", b.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=jpt_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// `POST /v1/oauth/introspect` of `token`, the caller authenticated by the broker token
/// `caller` (as a downstream service holding one would).
async fn introspect_with(b: &Broker, caller: &str, token: &str) -> (u16, Value) {
    let form = serde_urlencoded::to_string([("token", token)]).unwrap();
    let r = b
        .client()
        .post(format!("{}/v1/oauth/introspect", b.url))
        .header("authorization", format!("Bearer {caller}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn rfc7009_revocation_of_a_jwt_ends_that_jwt_only_and_of_the_broker_token_the_lease() {
    let b = Broker::start().await;
    b.put_secret("prod", "deploy/web/api", json!({"key": "still-readable"}))
        .await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    assert_eq!(v["credentials"][1]["kind"], "jwt");
    let jwt = v["credentials"][1]["token"].as_str().unwrap().to_string();
    let (_, i) = introspect_with(&b, &token, &jwt).await;
    assert_eq!(i["active"], true, "{i}");
    let jti = i["jti"].as_str().unwrap().to_string();

    // The service the job sent its JWT to revokes it.
    assert_eq!(b.oauth_revoke(&jwt).await, 200);

    // The JWT is dead: inactive at introspection, listed for offline verifiers.
    assert_eq!(
        introspect_with(&b, &token, &jwt).await,
        (200, json!({"active": false}))
    );
    let (_, list) = b.get("/v1/envs/prod/revoked", None).await;
    let listed: Vec<&str> = list["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["jti"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [jti.as_str()], "{list}");
    // The job is not: its broker token still reads and introspects active, its lease is live.
    let (s, secret) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!((s, &secret["data"]["key"]), (200, &json!("still-readable")));
    let (_, i) = introspect_with(&b, &token, &token).await;
    assert_eq!(
        (i["active"].as_bool(), i["lease_id"].as_str()),
        (Some(true), Some(lease.as_str()))
    );
    let (_, page) = b
        .request(
            &b.admin(AdminRole::Auditor),
            "GET",
            "/v1/admin/leases?active=true",
            None,
            None,
        )
        .await;
    let listed = &page["leases"][0];
    assert_eq!(
        (listed["lease_id"].as_str(), listed["status"].as_str()),
        (Some(lease.as_str()), Some("active")),
        "{page}"
    );
    let creds = listed["credentials"].as_array().unwrap();
    let revoked_at: Vec<(&str, bool)> = creds
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c.get("revoked_at").is_some()))
        .collect();
    assert_eq!(revoked_at, [("api", false), ("deploy", true)], "{page}");

    // On record once: that one credential, masked, by the lease's subject; no lease revoked.
    assert_eq!(b.oauth_revoke(&jwt).await, 200, "again: a no-op");
    let records = b.audit_records();
    let revoked: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "credential_revoke")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let r = revoked[0];
    assert_eq!(r["lease_id"], lease.as_str());
    assert_eq!(
        (r["environment"].as_str(), r["role"].as_str()),
        (Some("prod"), Some("deploy-web"))
    );
    assert_eq!(r["actor"]["kind"], "token");
    assert_eq!(r["actor"]["subject"], "repo:acme/web:ref:refs/heads/main");
    assert_eq!(r["details"]["credential_id"], jti.as_str());
    let c = r["credentials"].as_array().unwrap();
    assert_eq!(c.len(), 1, "{r}");
    let masked = format!("{}…", &jwt[..4]);
    assert_eq!(
        (
            c[0]["name"].as_str(),
            c[0]["kind"].as_str(),
            c[0]["masked"].as_str()
        ),
        (Some("deploy"), Some("jwt"), Some(masked.as_str()))
    );
    let minted = records
        .iter()
        .find(|r| r["event"] == "exchange" && r["lease_id"] == lease.as_str())
        .unwrap();
    assert_eq!(
        c[0]["fingerprint"], minted["credentials"][1]["fingerprint"],
        "audit find matches both"
    );
    assert!(records.iter().all(|r| r["event"] != "revoke"));
    assert!(!b.audit_text().contains(&jwt));

    // The broker token is the job's own handle: presenting it still ends the whole lease.
    assert_eq!(b.oauth_revoke(&token).await, 200);
    let (s, v) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_token")));
    let (s, _) = introspect_with(&b, &token, &token).await;
    assert_eq!(s, 401, "a dead broker token cannot introspect");
    let (_, list) = b.get("/v1/envs/prod/revoked", None).await;
    assert_eq!(
        list["revoked"].as_array().unwrap().len(),
        1,
        "listed once: {list}"
    );
    let rec = b
        .audit_records()
        .into_iter()
        .rfind(|r| r["event"] == "revoke")
        .unwrap();
    assert_eq!(rec["lease_id"], lease.as_str());
    assert_eq!(rec["details"]["revoked"], 1);
}

async fn only_security_may_revoke_and_a_reason_and_selector_are_required() {
    let b = Broker::start().await;
    assert_eq!(
        b.exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await
            .0,
        200
    );
    for role in [AdminRole::Auditor, AdminRole::Admin] {
        let (s, v) = b
            .request(
                &b.admin(role),
                "POST",
                "/v1/admin/revoke",
                None,
                Some(json!({"selector": {"all": true}, "reason": "x"}).to_string()),
            )
            .await;
        assert_eq!(s, 403, "{v}");
    }
    let sec = b.admin(AdminRole::Security);
    for body in [
        json!({"selector": {"all": true}}),
        json!({"selector": {"all": true}, "reason": "  "}),
        json!({"selector": {}, "reason": "INC-1"}),
        json!({"selector": {"repository": "acme/web"}, "reason": "INC-1"}),
        json!({"selector": {"environment": "prod", "issued_after": "yesterday"}, "reason": "INC-1"}),
        json!({"selector": "all", "reason": "INC-1"}),
    ] {
        let (s, v) = b
            .request(
                &sec,
                "POST",
                "/v1/admin/revoke",
                None,
                Some(body.to_string()),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{body} {v}"
        );
    }
    assert_eq!(
        b.app
            .store()
            .leases(&jobpass::store::LeaseFilter {
                limit: 10,
                active_at: Some(crate::support::now()),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
    let refused = b
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["outcome"] == "denied" && (r["event"] == "admin_call" || r["event"] == "revoke")
        })
        .count();
    assert!(refused >= 4, "refused calls are audited");
    // A selector time that is not RFC 3339 is refused on record, like the other refusals.
    assert!(b.audit_records().iter().any(|r| {
        r["event"] == "revoke"
            && r["outcome"] == "denied"
            && r["reason"]
                .as_str()
                .is_some_and(|m| m.contains("`issued_after` must be an RFC 3339 time"))
    }));
    // A selector of the wrong type is described in the caller's terms.
    let (_, v) = b
        .request(
            &sec,
            "POST",
            "/v1/admin/revoke",
            None,
            Some(json!({"selector": "all", "reason": "INC-1"}).to_string()),
        )
        .await;
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("expected a selector object") && !m.contains("Spec"),
        "{m}"
    );
}

async fn a_freeze_or_key_operation_without_a_reason_environment_or_confirmation_is_refused_on_record()
 {
    let b = Broker::start().await;
    let sec = b.admin(AdminRole::Security);
    let admin = b.admin(AdminRole::Admin);
    let calls = [
        (&sec, "/v1/admin/environments/prod/freeze", json!({}), 400),
        (
            &sec,
            "/v1/admin/environments/prod/freeze",
            json!({"reason": " \t"}),
            400,
        ),
        (
            &sec,
            "/v1/admin/environments/nowhere/freeze",
            json!({"reason": "INC-8"}),
            404,
        ),
        (
            &sec,
            "/v1/admin/environments/prod/unfreeze",
            json!({"reason": ""}),
            400,
        ),
        (
            &admin,
            "/v1/admin/keys/prod/destroy",
            json!({"confirm": "prod"}),
            400,
        ),
        (
            &admin,
            "/v1/admin/keys/nowhere/destroy",
            json!({"reason": "x", "confirm": "nowhere"}),
            404,
        ),
        (
            &admin,
            "/v1/admin/keys/prod/destroy",
            json!({"reason": "INC-9"}),
            400,
        ),
        (
            &admin,
            "/v1/admin/keys/prod/destroy",
            json!({"reason": "INC-9", "confirm": "staging"}),
            400,
        ),
        (&admin, "/v1/admin/keys/nowhere/rotate", json!({}), 404),
        (&admin, "/v1/admin/keys/nowhere/rewrap", json!({}), 404),
    ];
    for (client, path, body, status) in &calls {
        let (s, v) = b
            .request(client, "POST", path, None, Some(body.to_string()))
            .await;
        assert_eq!(s, *status, "{path} {body} {v}");
    }
    // Nothing changed: prod is not frozen and its keys still mint.
    assert!(!b.app.store().is_frozen("prod").await.unwrap());
    assert_eq!(
        b.exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await
            .0,
        200
    );
    let refused: Vec<(String, String)> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .map(|r| {
            (
                r["event"].as_str().unwrap_or_default().to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let count = |event: &str, reason: &str| {
        refused
            .iter()
            .filter(|(e, r)| e == event && r.contains(reason))
            .count()
    };
    assert_eq!(count("freeze", "non-empty `reason`"), 2, "{refused:?}");
    assert_eq!(count("freeze", "unknown environment"), 1, "{refused:?}");
    assert_eq!(count("unfreeze", "non-empty `reason`"), 1, "{refused:?}");
    assert_eq!(count("key_destroy", "non-empty `reason`"), 1, "{refused:?}");
    assert_eq!(
        count("key_destroy", "unknown environment"),
        1,
        "{refused:?}"
    );
    assert_eq!(count("key_destroy", "repeat the environment name"), 2);
    assert_eq!(count("key_rotate", "unknown environment"), 1);
    assert_eq!(count("key_rewrap", "unknown environment"), 1);
    assert_eq!(
        refused.len(),
        10,
        "one record per refused call: {refused:?}"
    );
    // The keys were not destroyed: a second exchange still mints (done above), and the stated
    // reason of an unconfirmed destruction is on its record.
    assert!(
        b.audit_records()
            .iter()
            .any(|r| r["event"] == "key_destroy" && r["details"]["requested_reason"] == "INC-9"),
    );
}

async fn frozen_environment_mints_nothing_across_a_restart() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "readable-while-frozen"}),
    )
    .await;
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let sec = b.admin(AdminRole::Security);
    let (s, v) = b
        .request(
            &sec,
            "POST",
            "/v1/admin/environments/prod/freeze",
            None,
            Some(json!({"reason": "INC-7"}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("environment_frozen")),
        "{v}"
    );
    assert_eq!(b.lease_count().await, 1);
    // Existing tokens keep reading unless revoked; other environments are not frozen.
    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some(&token))
            .await
            .0,
        200
    );
    let gl = b.gl.sign(gitlab_claims(&b.gl.issuer_url()));
    assert_eq!(b.exchange(&gl, "staging", None).await.0, 200);

    let b = b.restart().await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("environment_frozen")),
        "still frozen after restart"
    );
    let sec = b.admin(AdminRole::Security);
    let (s, _) = b
        .request(
            &sec,
            "POST",
            "/v1/admin/environments/prod/unfreeze",
            None,
            Some(json!({"reason": "INC-7 closed"}).to_string()),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        b.exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await
            .0,
        200
    );
    let events: Vec<String> = b
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert!(events.contains(&"freeze".to_string()) && events.contains(&"unfreeze".to_string()));
}

async fn rotation_keeps_old_records_readable_and_rewrap_moves_them() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/old",
        json!({"key": "written-before-rotation"}),
    )
    .await;
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let admin = b.admin(AdminRole::Admin);
    let (s, v) = b
        .request(&admin, "POST", "/v1/admin/keys/prod/rotate", None, None)
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    b.put_secret(
        "prod",
        "deploy/web/new",
        json!({"key": "written-after-rotation"}),
    )
    .await;
    for (path, value) in [
        ("old", "written-before-rotation"),
        ("new", "written-after-rotation"),
    ] {
        let (s, v) = b
            .get(&format!("/v1/secrets/prod/deploy/web/{path}"), Some(&token))
            .await;
        assert_eq!((s, v["data"]["key"].as_str()), (200, Some(value)));
    }
    assert!(
        b.app.store().count_sealed_below("prod", 2).await.unwrap() >= 2,
        "old secret, lease and signing key"
    );
    let (s, v) = b
        .request(&admin, "POST", "/v1/admin/keys/prod/rewrap", None, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["rewrapped"].as_u64().unwrap() >= 2);
    assert_eq!(
        b.app.store().count_sealed_below("prod", 2).await.unwrap(),
        0,
        "no record uses the old version"
    );
    let (s, v) = b.get("/v1/secrets/prod/deploy/web/old", Some(&token)).await;
    assert_eq!(
        (s, v["data"]["key"].as_str()),
        (200, Some("written-before-rotation"))
    );
    // After a restart (no cached keys) the resealed signing key still signs and the resealed
    // lease records still open.
    let b = b.restart().await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, list) = b
        .request(
            &b.admin(AdminRole::Auditor),
            "GET",
            "/v1/admin/leases",
            None,
            None,
        )
        .await;
    for l in list["leases"].as_array().unwrap() {
        assert!(l["credentials"].is_array(), "lease record opens: {l}");
    }
    // Security may not rotate keys.
    let (s, _) = b
        .request(
            &b.admin(AdminRole::Security),
            "POST",
            "/v1/admin/keys/prod/rotate",
            None,
            None,
        )
        .await;
    assert_eq!(s, 403);
}

async fn shredding_prod_leaves_staging_readable_and_says_so_clearly() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "prod-value-shredded"}),
    )
    .await;
    b.put_secret(
        "staging",
        "staging/app/db",
        json!({"password": "staging-value-kept"}),
    )
    .await;
    let gl = b.gl.sign(gitlab_claims(&b.gl.issuer_url()));
    let (_, v) = b.exchange(&gl, "staging", None).await;
    let staging_token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let prod_token = v["credentials"][0]["token"].as_str().unwrap().to_string();

    let admin = b.admin(AdminRole::Admin);
    let (s, v) = b
        .request(
            &admin,
            "POST",
            "/v1/admin/keys/prod/destroy",
            None,
            Some(json!({"reason": "decommission"}).to_string()),
        )
        .await;
    assert_eq!(s, 400, "confirmation required: {v}");
    let (s, v) = b
        .request(
            &admin,
            "POST",
            "/v1/admin/keys/prod/destroy",
            None,
            Some(json!({"reason": "decommission", "confirm": "prod"}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked"], 1);

    assert_eq!(
        b.get("/v1/secrets/prod/deploy/web/api", Some(&prod_token))
            .await
            .0,
        401,
        "prod leases died with the keys"
    );
    let (s, v) = b
        .get("/v1/secrets/staging/staging/app/db", Some(&staging_token))
        .await;
    assert_eq!(
        (s, v["data"]["password"].as_str()),
        (200, Some("staging-value-kept"))
    );
    // Prod's ciphertexts are still in the store but can never be opened, and the error says why.
    let rec = b
        .app
        .store()
        .sealed_below(SealedTable::Secrets, "prod", i64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(rec.len(), 1);
    let e = b
        .app
        .keyring()
        .open(
            "prod",
            "secrets",
            &rec[0].id,
            rec[0].key_version,
            &rec[0].sealed,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("destroyed"), "{e}");
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(v["message"].as_str().unwrap().contains("destroyed"), "{v}");
    assert_eq!(b.lease_count().await, 2, "nothing new minted in prod");
}

async fn expired_credentials_are_refused_before_the_sweeper_and_swept_after() {
    let b = Broker::start().await;
    let (_, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    // The role's ttl is one minute.
    b.clock.advance(61);
    let (s, v) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    let form = serde_urlencoded::to_string([("token", token.as_str())]).unwrap();
    let r = b
        .admin(AdminRole::Auditor)
        .post(format!("{}/v1/oauth/introspect", b.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let i: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(i, json!({"active": false}), "expired, though never revoked");
    assert_eq!(b.lease_count().await, 1, "not swept yet");
    b.clock.advance(24 * 3600);
    let (leases, replay) = jobpass::leases::sweeper::sweep(&b.app).await.unwrap();
    assert_eq!((leases, replay), (1, 1));
    assert_eq!(b.lease_count().await, 0);
}

crate::support::harness::cases! {
    EachStore: [
        each_selector_alone_and_combined_revokes_exactly_the_matching_leases,
        revocation_takes_effect_at_once_on_tokens_jwts_and_introspection,
        rfc7009_revocation_ends_the_lease_of_the_presented_token,
        rfc7009_revocation_of_a_jwt_ends_that_jwt_only_and_of_the_broker_token_the_lease,
        only_security_may_revoke_and_a_reason_and_selector_are_required,
        a_freeze_or_key_operation_without_a_reason_environment_or_confirmation_is_refused_on_record,
        frozen_environment_mints_nothing_across_a_restart,
        rotation_keeps_old_records_readable_and_rewrap_moves_them,
        shredding_prod_leaves_staging_readable_and_says_so_clearly,
        expired_credentials_are_refused_before_the_sweeper_and_swept_after,
        long_claim_values_are_found_by_revocation_and_listing,
    ],
}

/// Issue 11 item 8: a claim value over 512 bytes is indexed like any other, so revocation
/// and listing by claim find its lease (they used to be silently short).
async fn long_claim_values_are_found_by_revocation_and_listing() {
    let b = Broker::start().await;
    let long = format!("refs/heads/{}", "l".repeat(3000));
    let mint = |value: &str| {
        let mut c = github_claims(&b.gh.issuer_url());
        c["custom_note"] = json!(value);
        b.gh.sign(c)
    };
    let (s, v) = b.exchange(&mint(&long), "prod", Some("deploy-web")).await;
    assert_eq!(s, 200, "{v}");
    let long_lease = v["lease_id"].as_str().unwrap().to_string();
    let (s, v) = b.exchange(&mint("short"), "prod", Some("deploy-web")).await;
    assert_eq!(s, 200, "{v}");
    // Listing by the exact long value finds that lease only.
    let (s, v) = b
        .request(
            &b.admin(AdminRole::Auditor),
            "GET",
            &format!("/v1/admin/leases?claim.custom_note={long}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["lease_id"].as_str())
        .collect();
    assert_eq!(ids, vec![long_lease.as_str()], "{v}");
    // A claim name longer than any indexed name is refused, not silently unmatched.
    let (s, v) = revoke(&b, json!({"claims": {"x".repeat(200): "*"}})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    // A glob over the long value revokes it, and only it.
    let (s, v) = revoke(&b, json!({"claims": {"custom_note": "refs/heads/l*"}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked"], 1, "{v}");
    assert_eq!(v["lease_ids"][0], long_lease.as_str());
    let (s, v) = revoke(&b, json!({"claims": {"custom_note": long}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked"], 0, "already revoked: {v}");
}
