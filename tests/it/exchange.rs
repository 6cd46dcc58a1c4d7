//! Successful exchanges (SPEC §2, §3): GitHub- and GitLab-shaped tokens, minted JWTs, issuer
//! key rotation.

use serde_json::{Value, json};

use crate::support::{AUDIENCE, Broker, gitlab_claims};

async fn github_token_is_exchanged_for_every_grant_of_the_role() {
    let b = Broker::start().await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["lease_id"].as_str().unwrap().starts_with("lse_"));
    assert_eq!(v["environment"], "prod");
    assert_eq!(v["role"], "deploy-web");
    let creds = v["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2);
    assert_eq!(creds[0]["name"], "api");
    assert_eq!(creds[0]["kind"], "token");
    assert!(creds[0]["token"].as_str().unwrap().starts_with("jpt_"));
    assert_eq!(creds[1]["kind"], "jwt");
    assert!(creds[1]["token"].as_str().unwrap().starts_with("eyJ"));
    // The role's ttl is 1 minute: expiry is about a minute away.
    let exp = humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let left = exp
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((50..=61).contains(&left), "{left}");
    assert_eq!(b.lease_count().await, 1);
}

async fn gitlab_token_is_exchanged_with_the_default_role() {
    let b = Broker::start().await;
    let token = b.gl.sign(gitlab_claims(&b.gl.issuer_url()));
    let (s, v) = b.exchange(&token, "staging", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["role"], "gitlab-deploy");
    // The same GitLab shape with an unprotected ref is refused, naming the claim.
    let mut claims = gitlab_claims(&b.gl.issuer_url());
    claims["ref_protected"] = json!("false");
    let (s, v) = b
        .exchange(&b.gl.sign(claims.clone()), "staging", None)
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "access_denied");
    assert!(
        v["message"].as_str().unwrap().contains("ref_protected"),
        "{v}"
    );
}

async fn minted_jwt_verifies_with_a_generic_library_from_the_discovery_document() {
    let b = Broker::start().await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let jwt = v["credentials"][1]["token"].as_str().unwrap().to_string();

    let (s, disc) = b
        .get("/v1/envs/prod/.well-known/openid-configuration", None)
        .await;
    assert_eq!(s, 200);
    let issuer = disc["issuer"].as_str().unwrap();
    assert_eq!(issuer, format!("{}/v1/envs/prod", b.app.public_url()));
    // Fetch the JWKS the document names (rewritten onto the test listener's address).
    let jwks_path = disc["jwks_uri"]
        .as_str()
        .unwrap()
        .replace(b.app.public_url(), "");
    let (s, jwks) = b.get(&jwks_path, None).await;
    assert_eq!(s, 200);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://deploy.internal"]);
    validation.set_issuer(&[issuer]);
    let data = jsonwebtoken::decode::<Value>(&jwt, &key, &validation).unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "repo:acme/web:ref:refs/heads/main");
    assert_eq!(c["env"], "prod");
    assert_eq!(c["role"], "deploy-web");
    assert_eq!(c["scope"], "deploy:web");
    assert_eq!(c["src"]["repository"], "acme/web");
    assert_eq!(c["src"]["run_id"], "19677834613");
    assert!(c["jti"].as_str().unwrap().starts_with("crd_"));
    // A different audience is refused by the same library.
    validation.set_audience(&[AUDIENCE]);
    assert!(jsonwebtoken::decode::<Value>(&jwt, &key, &validation).is_err());
}

async fn issuer_key_rotation_is_picked_up_without_restart() {
    let b = Broker::start().await;
    let (s, _) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200);
    let fetches = b.gh.jwks_fetch_count();
    b.gh.rotate();
    // Key fetches are rate-limited (one per 30 s per issuer): let that window pass.
    b.clock.advance(31);
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "a token under the new kid is accepted: {v}");
    assert_eq!(b.gh.jwks_fetch_count(), fetches + 1, "exactly one refetch");
}

async fn oauth_token_exchange_returns_the_broker_token() {
    let b = Broker::start().await;
    let form = serde_urlencoded::to_string([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", &b.github_token()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        ),
        ("audience", "prod"),
        ("scope", "deploy-web"),
    ])
    .unwrap();
    let resp = b
        .client()
        .post(format!("{}/v1/oauth/token", b.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(v["access_token"].as_str().unwrap().starts_with("jpt_"));
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(
        v["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let e = v["expires_in"].as_i64().unwrap();
    assert!((50..=60).contains(&e), "{e}");
}

async fn health_readiness_and_metrics_answer() {
    let b = Broker::start().await;
    assert_eq!(b.get("/healthz", None).await.0, 200);
    assert_eq!(b.get("/readyz", None).await.0, 200);
    b.exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    b.exchange("garbage", "prod", Some("deploy-web")).await;
    let (s, m) = b.get("/metrics", None).await;
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains("jobpass_exchanges_total{outcome=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("jobpass_exchanges_total{outcome=\"invalid_token\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("jobpass_exchange_duration_seconds_bucket"),
        "{m}"
    );
}

crate::support::harness::cases! {
    EachStore: [
        github_token_is_exchanged_for_every_grant_of_the_role,
        gitlab_token_is_exchanged_with_the_default_role,
        minted_jwt_verifies_with_a_generic_library_from_the_discovery_document,
        issuer_key_rotation_is_picked_up_without_restart,
        oauth_token_exchange_returns_the_broker_token,
        health_readiness_and_metrics_answer,
    ],
}
