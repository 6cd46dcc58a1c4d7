//! Refusals (SPEC §2): each bad request gets the right JSON error, nothing is minted or
//! stored, and the denial is audited.

use serde_json::{Value, json};

use crate::support::{Broker, github_claims, now};

/// Asserts the answer, that no lease exists, and that the last audit record is a denial.
async fn refused(b: &Broker, got: (u16, Value), status: u16, code: &str) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(b.lease_count().await, 0, "nothing stored");
    // Refusals of callers without a verified token are counted, then written in aggregate.
    b.app.flush_refusals().await.unwrap();
    let last = b.audit_records().pop().expect("an audit record");
    assert_eq!(last["outcome"], "denied", "{last}");
}

fn claims(b: &Broker) -> Value {
    github_claims(&b.gh.issuer_url())
}

async fn wrong_issuer_is_refused() {
    let b = Broker::start().await;
    // Signed by the GitLab test issuer, which prod does not trust.
    let mut c = claims(&b);
    c["iss"] = json!(b.gl.issuer_url());
    let got = b
        .exchange(&b.gl.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
    // An issuer nobody configured.
    let mut c = claims(&b);
    c["iss"] = json!("https://evil.example.com");
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn wrong_audience_is_refused() {
    let b = Broker::start().await;
    let mut c = claims(&b);
    c["aud"] = json!("https://someone-else.example.com");
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn expired_token_is_refused() {
    let b = Broker::start().await;
    let mut c = claims(&b);
    c["iat"] = json!(now() - 900);
    c["nbf"] = json!(now() - 900);
    c["exp"] = json!(now() - 120);
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn token_not_yet_valid_is_refused() {
    let b = Broker::start().await;
    let mut c = claims(&b);
    c["nbf"] = json!(now() + 600);
    c["exp"] = json!(now() + 900);
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn bad_signature_is_refused() {
    let b = Broker::start().await;
    let t = b.gh.sign(claims(&b));
    // Flip one character of the signature.
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    let sig = parts[2].clone();
    let first = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{first}{}", &sig[1..]);
    let got = b
        .exchange(&parts.join("."), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
    // Claims changed after signing.
    let mut c = claims(&b);
    let t = b.gh.sign(c.clone());
    c["repository"] = json!("acme/other");
    let forged_payload = base64url(&c.to_string());
    let p: Vec<&str> = t.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", p[0], p[2]);
    let got = b.exchange(&forged, "prod", Some("deploy-web")).await;
    refused(&b, got, 401, "invalid_token").await;
    // Signed by a key the issuer never published, under the published kid.
    let got = b
        .exchange(
            &b.gh.token_signed_by_unknown_key(claims(&b)),
            "prod",
            Some("deploy-web"),
        )
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

fn base64url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

async fn alg_none_is_refused() {
    let b = Broker::start().await;
    let got = b
        .exchange(&b.gh.token_alg_none(claims(&b)), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn hs256_signed_with_the_public_key_is_refused() {
    let b = Broker::start().await;
    let got = b
        .exchange(
            &b.gh.token_hs256_with_public_key(claims(&b)),
            "prod",
            Some("deploy-web"),
        )
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn unknown_kid_is_refused_after_one_refetch() {
    let b = Broker::start().await;
    // Warm the cache.
    assert_eq!(
        b.exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await
            .0,
        200
    );
    let before = b.gh.jwks_fetch_count();
    // Key fetches are rate-limited (one per 30 s per issuer): let that window pass.
    b.clock.advance(31);
    let t = b.gh.token_with_unknown_kid(claims(&b));
    let (s, v) = b.exchange(&t, "prod", Some("deploy-web")).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_token")),
        "{v}"
    );
    assert_eq!(b.gh.jwks_fetch_count(), before + 1, "refetched once");
    // A burst of unknown kids does not hammer the issuer.
    for _ in 0..5 {
        let t = b.gh.token_with_unknown_kid(claims(&b));
        assert_eq!(b.exchange(&t, "prod", Some("deploy-web")).await.0, 401);
    }
    assert_eq!(b.gh.jwks_fetch_count(), before + 1, "rate-limited refetch");
    assert_eq!(b.lease_count().await, 1);
}

async fn oversized_token_is_refused() {
    let b = Broker::start().await;
    let mut c = claims(&b);
    c["padding"] = json!("x".repeat(17 * 1024));
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    refused(&b, got, 401, "invalid_token").await;
}

async fn oversized_body_is_refused_with_json() {
    let b = Broker::start().await;
    let body = json!({"token": "x".repeat(200 * 1024), "environment": "prod"});
    let (s, v) = b.post("/v1/exchange", body).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(b.lease_count().await, 0);
}

async fn replayed_token_is_refused_and_audited() {
    let b = Broker::start().await;
    let t = b.github_token();
    assert_eq!(b.exchange(&t, "prod", Some("deploy-web")).await.0, 200);
    let (s, v) = b.exchange(&t, "prod", Some("deploy-web")).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "token_replayed");
    assert_eq!(b.lease_count().await, 1, "the replay minted nothing");
    let last = b.audit_records().pop().unwrap();
    assert_eq!(last["event"], "replay");
    assert!(last["reason"].as_str().unwrap().contains("theft"));
    // A token without jti is single-use too (keyed by its hash).
    let mut c = claims(&b);
    c.as_object_mut().unwrap().remove("jti");
    let t = b.gh.sign(c.clone());
    assert_eq!(b.exchange(&t, "prod", Some("deploy-web")).await.0, 200);
    assert_eq!(b.exchange(&t, "prod", Some("deploy-web")).await.0, 409);
}

async fn claim_mismatch_is_refused_naming_the_claim_not_the_pattern() {
    let b = Broker::start().await;
    let mut c = claims(&b);
    c["repository"] = json!("acme/payments");
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    let msg = got.1["message"].as_str().unwrap_or_default().to_string();
    refused(&b, got, 403, "access_denied").await;
    assert!(msg.contains("repository"), "{msg}");
    assert!(
        !msg.contains("acme/web"),
        "the expected pattern stays secret: {msg}"
    );
}

async fn guardrail_mismatch_is_refused_even_when_the_role_allows() {
    let b = Broker::start().await;
    // Role any-branch allows any ref, but prod requires refs/heads/main.
    let mut c = claims(&b);
    c["ref"] = json!("refs/heads/feature");
    let got = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("any-branch"))
        .await;
    let msg = got.1["message"].as_str().unwrap_or_default().to_string();
    refused(&b, got, 403, "access_denied").await;
    assert!(
        msg.contains("`ref`") && msg.contains("environment"),
        "{msg}"
    );
    // When both the guardrail and the role fail, the guardrail is reported (checked first).
    c["repository"] = json!("acme/payments");
    let got = b.exchange(&b.gh.sign(c), "prod", Some("deploy-web")).await;
    let msg = got.1["message"].as_str().unwrap_or_default().to_string();
    refused(&b, got, 403, "access_denied").await;
    assert!(
        msg.contains("`ref`") && msg.contains("environment's requirements"),
        "{msg}"
    );
}

async fn unknown_environment_and_role_are_refused() {
    let b = Broker::start().await;
    let got = b
        .exchange(&b.github_token(), "nope", Some("deploy-web"))
        .await;
    refused(&b, got, 400, "invalid_request").await;
    let got = b.exchange(&b.github_token(), "prod", Some("nope")).await;
    refused(&b, got, 400, "invalid_request").await;
}

async fn malformed_json_is_refused_without_echoing_it() {
    let b = Broker::start().await;
    let (s, v) = b
        .request(
            &b.client(),
            "POST",
            "/v1/exchange",
            None,
            Some("{\"token\": \"SECRET-ish".into()),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_request");
    assert!(!v["message"].as_str().unwrap().contains("SECRET"));
    let (s, v) = b
        .request(
            &b.client(),
            "POST",
            "/v1/exchange",
            None,
            Some(r#"{"token": "t", "environment": "prod", "extra": 1}"#.into()),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("extra"), "{v}");
    assert_eq!(b.lease_count().await, 0);
}

async fn an_oversized_or_nul_subject_is_refused_and_nul_claims_are_not_indexed() {
    let b = Broker::start().await;
    for sub in ["x".repeat(1025), "repo:acme/web\u{0}evil".to_string()] {
        let mut c = claims(&b);
        c["sub"] = json!(sub);
        let (s, v) = b
            .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
            .await;
        assert_eq!(s, 401, "{v}");
        assert_eq!(v["error"], "invalid_token");
    }
    // A claim holding a NUL byte still exchanges (on either store); it is just not indexed.
    let mut c = claims(&b);
    c["workflow"] = json!("deploy\u{0}");
    let (s, v) = b
        .exchange(&b.gh.sign(c.clone()), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(b.lease_count().await, 1);
}

crate::support::harness::cases! {
    EachStore: [
        wrong_issuer_is_refused,
        wrong_audience_is_refused,
        expired_token_is_refused,
        token_not_yet_valid_is_refused,
        bad_signature_is_refused,
        alg_none_is_refused,
        hs256_signed_with_the_public_key_is_refused,
        unknown_kid_is_refused_after_one_refetch,
        oversized_token_is_refused,
        oversized_body_is_refused_with_json,
        replayed_token_is_refused_and_audited,
        claim_mismatch_is_refused_naming_the_claim_not_the_pattern,
        guardrail_mismatch_is_refused_even_when_the_role_allows,
        unknown_environment_and_role_are_refused,
        malformed_json_is_refused_without_echoing_it,
        an_oversized_or_nul_subject_is_refused_and_nul_claims_are_not_indexed,
    ],
}
