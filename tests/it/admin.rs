//! Admin API basics (SPEC §4): client certificates from the admin CA, roles, secrets and
//! leases, every call audited.

use jobpass::tls::{AdminRole, generate_pki};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{Broker, client_with};

async fn admin_stores_secrets_and_sees_metadata_never_values() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "value-never-shown-1", "other": "v2-never-shown"}),
    )
    .await;
    let admin = b.admin(AdminRole::Admin);
    let (s, v) = b
        .request(
            &admin,
            "GET",
            "/v1/admin/secrets/prod/deploy/web/api",
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["current_version"], 1);
    assert_eq!(v["versions"][0]["fields"], json!(["key", "other"]));
    assert!(!v.to_string().contains("never-shown"));
    let (s, v) = b
        .request(&admin, "GET", "/v1/admin/secrets/prod", None, None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["paths"], json!(["deploy/web/api"]));
    let (s, v) = b
        .request(
            &admin,
            "DELETE",
            "/v1/admin/secrets/prod/deploy/web/api",
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deleted_versions"], 1);
    let (s, _) = b
        .request(
            &admin,
            "GET",
            "/v1/admin/secrets/prod/deploy/web/api",
            None,
            None,
        )
        .await;
    assert_eq!(s, 404);
}

async fn roles_are_enforced_and_refusals_audited() {
    let b = Broker::start().await;
    let body = Some(json!({"data": {"k": "value-from-auditor"}}).to_string());
    for role in [AdminRole::Auditor, AdminRole::Security] {
        let (s, v) = b
            .request(
                &b.admin(role),
                "PUT",
                "/v1/admin/secrets/prod/x",
                None,
                body.clone(),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (403, Some("access_denied")),
            "{v}"
        );
    }
    assert!(
        b.app
            .store()
            .latest_secret("prod", "x")
            .await
            .unwrap()
            .is_none(),
        "nothing stored"
    );
    // No client certificate at all.
    let (s, v) = b
        .request(
            &b.client(),
            "PUT",
            "/v1/admin/secrets/prod/x",
            None,
            body.clone(),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // Certificate holders are refused on their own records; a caller without a certificate
    // proved no identity and is counted into an aggregate record.
    let refusals: Vec<Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "admin_call" && r["outcome"] == "denied")
        .collect();
    assert_eq!(refusals.len(), 2);
    b.app.flush_refusals().await.unwrap();
    let counted = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "refusals")
        .expect("the refusal without a certificate, counted");
    assert_eq!(counted["details"]["call"], "secrets.put", "{counted}");
    assert_eq!(counted["details"]["answer"], "access_denied", "{counted}");
    assert_eq!(counted["details"]["count"], 1, "{counted}");
    assert_eq!(refusals[0]["actor"]["role"], "auditor");
    assert!(refusals[0]["actor"]["subject"].as_str().is_some());
    assert_eq!(refusals[0]["environment"], "prod");
    assert_eq!(refusals[0]["details"]["call"], "secrets.put");
    // The role is checked before the body is read: a caller without the role gets 403 on
    // record even for a body that would not parse, and learns nothing about its parsing.
    for (method, path, body) in [
        ("POST", "/v1/admin/revoke", "{not json"),
        ("POST", "/v1/admin/keys/prod/destroy", r#"{"unknown": 1}"#),
    ] {
        let (s, v) = b
            .request(
                &b.admin(AdminRole::Auditor),
                method,
                path,
                None,
                Some(body.to_string()),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (403, Some("access_denied")),
            "{path} {v}"
        );
    }
    let refusals: Vec<Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "admin_call" && r["outcome"] == "denied")
        .collect();
    assert_eq!(refusals.len(), 4);
    assert_eq!(refusals[2]["details"]["call"], "revoke");
    assert_eq!(refusals[3]["details"]["call"], "keys.destroy");
    assert_eq!(refusals[3]["environment"], "prod");
    // The auditor may read leases.
    let (s, v) = b
        .request(
            &b.admin(AdminRole::Auditor),
            "GET",
            "/v1/admin/leases",
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

async fn certificate_from_another_ca_cannot_connect() {
    let b = Broker::start().await;
    let other = generate_pki(&[], &jobpass::clock::SystemClock).unwrap();
    let (cert, key) = other.client(AdminRole::Admin).unwrap();
    let c = client_with(Some(&b.pki.ca_pem), Some((cert, key.expose_secret())));
    let r = c.get(format!("{}/v1/admin/leases", b.url)).send().await;
    assert!(r.is_err(), "handshake must fail: {r:?}");
}

async fn leases_are_listed_newest_first_filtered_and_paged_with_values_masked() {
    let b = Broker::start().await;
    let mut tokens = Vec::new();
    for run in ["1", "2", "3"] {
        let mut c = crate::support::github_claims(&b.gh.issuer_url());
        c["run_id"] = json!(run);
        let (s, v) = b
            .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
            .await;
        assert_eq!(s, 200);
        tokens.push(v["credentials"][0]["token"].as_str().unwrap().to_string());
    }
    let sec = b.admin(AdminRole::Security);
    let (s, v) = b
        .request(
            &sec,
            "GET",
            "/v1/admin/leases?environment=prod&limit=2",
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let page = v["leases"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["claims"]["run_id"], "3");
    assert_eq!(page[0]["status"], "active");
    let cred = &page[0]["credentials"][0];
    assert!(cred["masked"].as_str().unwrap().ends_with('…'));
    assert!(
        cred["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    let after = v["next_after"].as_str().unwrap();
    let (_, v2) = b
        .request(
            &sec,
            "GET",
            &format!("/v1/admin/leases?environment=prod&limit=2&after={after}"),
            None,
            None,
        )
        .await;
    assert_eq!(v2["leases"].as_array().unwrap().len(), 1);
    assert_eq!(v2["leases"][0]["claims"]["run_id"], "1");
    let (_, v3) = b
        .request(&sec, "GET", "/v1/admin/leases?claim.run_id=2", None, None)
        .await;
    assert_eq!(v3["leases"].as_array().unwrap().len(), 1);
    let all = format!("{v}{v2}{v3}");
    for t in &tokens {
        assert!(!all.contains(t.as_str()));
    }
    for (query, why) in [
        ("bogus=1", "unknown query parameter `bogus`"),
        ("limit=0", "limit must be"),
        ("active=%ZZ", "active must be true or false"),
    ] {
        let (s, v) = b
            .request(
                &sec,
                "GET",
                &format!("/v1/admin/leases?{query}"),
                None,
                None,
            )
            .await;
        assert_eq!(s, 400, "{query} {v}");
        // Refused on record, with the reason the caller was given.
        assert!(
            b.audit_records().iter().any(|r| r["outcome"] == "denied"
                && r["reason"].as_str().is_some_and(|m| m.contains(why))),
            "{query}"
        );
    }
}

crate::support::harness::cases! {
    EachStore: [
        admin_stores_secrets_and_sees_metadata_never_values,
        roles_are_enforced_and_refusals_audited,
        certificate_from_another_ca_cannot_connect,
        leases_are_listed_newest_first_filtered_and_paged_with_values_masked,
    ],
}
