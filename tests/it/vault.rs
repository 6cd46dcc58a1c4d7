//! The Vault-compatible listener: a Vault client library logs in with a CI token and reads KV
//! secrets, and the requests real clients send (hvac, vault-action, the Vault Go client used by
//! GitLab's runner) get Vault-shaped answers.

use std::collections::HashMap;

use openidconnect::reqwest;
use serde_json::{Value, json};
use vaultrs::client::Client as _;

use crate::support::{Broker, Options, gitlab_claims};

async fn vault_broker() -> Broker {
    Broker::start_with(Options {
        vault: true,
        ..Options::default()
    })
    .await
}

fn vault_url(b: &Broker) -> String {
    b.vault_url.clone().unwrap()
}

fn gitlab_token(b: &Broker) -> String {
    b.gl.sign(gitlab_claims(&b.gl.issuer_url()))
}

/// A raw answer: status, Content-Type, Cache-Control and body.
struct Answer {
    status: u16,
    content_type: String,
    cache_control: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    /// A Vault error: JSON, `{"errors": [...]}`.
    fn errors(&self) -> Vec<String> {
        assert!(
            self.content_type.starts_with("application/json"),
            "errors are JSON: {} {}",
            self.content_type,
            self.text
        );
        let v = self.json();
        assert_eq!(v.as_object().unwrap().len(), 1, "only `errors`: {v}");
        serde_json::from_value(v["errors"].clone()).unwrap()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, cache_control) = (h("content-type"), h("cache-control"));
    let status = resp.status().as_u16();
    Answer {
        status,
        content_type,
        cache_control,
        text: resp.text().await.unwrap(),
    }
}

/// A login the way the Vault Go client (GitLab's runner) sends it: PUT, a JSON body with no
/// Content-Type, `X-Vault-Request: true`.
async fn go_client_login(b: &Broker, env: &str, body: Value) -> Answer {
    send(
        b.client()
            .put(format!("{}/v1/auth/{env}/login", vault_url(b)))
            .header("x-vault-request", "true")
            .body(body.to_string()),
    )
    .await
}

/// A login the way vault-action and hvac send it: POST with a JSON Content-Type.
async fn post_login(b: &Broker, env: &str, body: Value) -> Answer {
    send(
        b.client()
            .post(format!("{}/v1/auth/{env}/login", vault_url(b)))
            .header("content-type", "application/json")
            .header("x-vault-request", "true")
            .body(body.to_string()),
    )
    .await
}

async fn vault_get(b: &Broker, path: &str, token: Option<&str>) -> Answer {
    let mut req = b
        .client()
        .get(format!("{}{path}", vault_url(b)))
        .header("x-vault-request", "true");
    if let Some(t) = token {
        req = req.header("x-vault-token", t);
    }
    send(req).await
}

/// Logs in to staging (default role) and returns the client token and the whole answer.
async fn staging_login(b: &Broker) -> (String, Value) {
    let a = go_client_login(b, "staging", json!({"role": "", "jwt": gitlab_token(b)})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    (v["auth"]["client_token"].as_str().unwrap().to_string(), v)
}

async fn vault_client_library_logs_in_and_reads_a_kv2_secret() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let b = vault_broker().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "s3cr3t-api-key-value", "user": "web"}),
    )
    .await;
    let ca = b.dir.path().join("certs").join("ca.pem");
    let mut client = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(vault_url(&b))
            .ca_certs(vec![ca.display().to_string()])
            .token("")
            .build()
            .unwrap(),
    )
    .unwrap();

    let health = vaultrs::sys::health(&client).await.unwrap();
    assert!(health.initialized && !health.sealed);

    let auth = vaultrs::auth::oidc::login(
        &client,
        "prod",
        &b.github_token(),
        Some("deploy-web".into()),
    )
    .await
    .unwrap();
    assert!(auth.client_token.starts_with("jpt_"));
    assert!(auth.accessor.starts_with("lse_"));
    assert_eq!(auth.policies, vec!["deploy-web".to_string()]);
    assert!(!auth.renewable);
    assert!(
        auth.lease_duration > 0 && auth.lease_duration <= 60,
        "{}",
        auth.lease_duration
    );
    let meta = auth.metadata.clone().unwrap();
    assert_eq!(meta["role"], "deploy-web");
    assert_eq!(meta["environment"], "prod");
    client.set_token(&auth.client_token);

    let secret: HashMap<String, String> = vaultrs::kv2::read(&client, "prod", "deploy/web/api")
        .await
        .unwrap();
    assert_eq!(secret["key"], "s3cr3t-api-key-value");
    assert_eq!(secret["user"], "web");

    // The same token and data through the native API.
    let (s, v) = b
        .get("/v1/secrets/prod/deploy/web/api", Some(&auth.client_token))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"key": "s3cr3t-api-key-value", "user": "web"})
    );

    let me = vaultrs::token::lookup_self(&client).await.unwrap();
    assert_eq!(me.accessor, auth.accessor);
    assert_eq!(me.policies, vec!["deploy-web".to_string()]);
    assert!(me.ttl > 0 && me.ttl <= 60);

    // Outside the token's globs: Vault's "permission denied".
    let err = vaultrs::kv2::read::<HashMap<String, String>>(&client, "prod", "deploy/other/api")
        .await
        .unwrap_err();
    match err {
        vaultrs::error::ClientError::APIError { code, errors } => {
            assert_eq!(code, 403);
            assert_eq!(errors[0], "permission denied");
        }
        other => panic!("unexpected error {other:?}"),
    }

    vaultrs::token::revoke_self(&client).await.unwrap();
    let err = vaultrs::kv2::read::<HashMap<String, String>>(&client, "prod", "deploy/web/api")
        .await
        .unwrap_err();
    assert!(
        matches!(err, vaultrs::error::ClientError::APIError { code: 403, .. }),
        "{err:?}"
    );
    let (s, _) = b
        .get("/v1/secrets/prod/deploy/web/api", Some(&auth.client_token))
        .await;
    assert_eq!(s, 401, "revoked for the native API too");

    // The login went through the exchange: audited like any other.
    let recs = b.audit_records();
    assert!(recs.iter().any(|r| r["event"] == "exchange"
        && r["outcome"] == "success"
        && r["lease_id"] == auth.accessor.as_str()));
}

async fn go_client_login_by_put_with_empty_role_uses_the_default_role() {
    let b = vault_broker().await;
    // A stale token and an empty namespace, as clients send them on a login: both ignored.
    let a = send(
        b.client()
            .put(format!("{}/v1/auth/staging/login", vault_url(&b)))
            .header("x-vault-request", "true")
            .header("x-vault-token", "jpt_stale-token-from-an-earlier-job")
            .header("x-vault-namespace", "")
            .body(json!({"role": "", "jwt": gitlab_token(&b)}).to_string()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type.starts_with("application/json"));
    assert_eq!(a.cache_control, "no-store");
    let v = a.json();
    let auth = &v["auth"];
    assert!(auth["client_token"].as_str().unwrap().starts_with("jpt_"));
    assert!(auth["accessor"].as_str().unwrap().starts_with("lse_"));
    assert_eq!(auth["policies"], json!(["gitlab-deploy"]));
    assert_eq!(auth["token_policies"], json!(["gitlab-deploy"]));
    assert_eq!(auth["renewable"], false);
    assert_eq!(
        auth["metadata"],
        json!({"role": "gitlab-deploy", "environment": "staging"})
    );
    let ttl = auth["lease_duration"].as_i64().unwrap();
    assert!(ttl > 0 && ttl <= 300, "{ttl}");
    // The Vault envelope every client library expects.
    for key in ["request_id", "lease_id", "renewable", "lease_duration"] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    assert_eq!(b.lease_count().await, 1);

    // POST with a named role (vault-action, hvac) and no role at all work too.
    let a = post_login(
        &b,
        "staging",
        json!({"role": "gitlab-deploy", "jwt": gitlab_token(&b)}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = post_login(&b, "staging", json!({"jwt": gitlab_token(&b)})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["auth"]["policies"], json!(["gitlab-deploy"]));
}

async fn login_refusals_are_vault_shaped_errors() {
    let b = vault_broker().await;
    // An empty role where the environment names no default role.
    let a = post_login(&b, "prod", json!({"role": "", "jwt": b.github_token()})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.errors()[0].contains("default role"), "{}", a.text);
    // Unknown role, unknown environment.
    let a = post_login(&b, "prod", json!({"role": "nope", "jwt": b.github_token()})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.errors()[0].contains("unknown role"), "{}", a.text);
    let a = post_login(&b, "nowhere", json!({"role": "x", "jwt": b.github_token()})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    a.errors();
    // No jwt; a body that is not JSON.
    let a = post_login(&b, "prod", json!({"role": "deploy-web"})).await;
    assert_eq!(
        (a.status, a.errors()),
        (400, vec!["missing jwt".to_string()])
    );
    let a = send(
        b.client()
            .post(format!("{}/v1/auth/prod/login", vault_url(&b)))
            .body("{not json"),
    )
    .await;
    assert_eq!(a.status, 400);
    a.errors();
    // A token that does not verify: 400, as Vault's JWT method answers.
    let a = post_login(
        &b,
        "prod",
        json!({"role": "deploy-web", "jwt": "eyJhbGciOiJub25lIn0.e30."}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.errors()[0].starts_with("error validating token"));
    // Policy denial: 403.
    let mut claims = crate::support::github_claims(&b.gh.issuer_url());
    claims["repository"] = json!("evil/web");
    let a = post_login(
        &b,
        "prod",
        json!({"role": "deploy-web", "jwt": b.gh.sign(claims)}),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text);
    a.errors();
    // A replayed token: 409, as natively.
    let token = b.github_token();
    let a = post_login(&b, "prod", json!({"role": "deploy-web", "jwt": token})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = post_login(&b, "prod", json!({"role": "deploy-web", "jwt": token})).await;
    assert_eq!(a.status, 409, "{}", a.text);
    a.errors();
    assert_eq!(b.lease_count().await, 1);

    // A role without a `token` grant is refused before anything is minted or the source token
    // is spent; its caller has proved nothing yet, so the refusal is counted.
    let token = b.github_token();
    let a = post_login(&b, "pki", json!({"role": "mtls", "jwt": token})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(a.errors()[0].contains("grants no `token` credential"));
    assert_eq!(b.lease_count().await, 1);
    let (s, v) = b.exchange(&token, "pki", Some("mtls")).await;
    assert_eq!(s, 200, "the source token was not spent: {v}");
    b.app.flush_refusals().await.unwrap();
    let recs = b.audit_records();
    assert!(
        recs.iter().any(|r| r["event"] == "refusals"
            && r["details"]["call"] == "exchange"
            && r["details"]["answer"] == "invalid_request"),
        "{recs:?}"
    );
}

async fn kv_reads_v2_and_v1_are_checked_and_audited_like_native_reads() {
    let b = vault_broker().await;
    b.put_secret(
        "staging",
        "staging/app",
        json!({"password": "first-pw-1234"}),
    )
    .await;
    b.put_secret(
        "staging",
        "staging/app",
        json!({"password": "second-pw-5678"}),
    )
    .await;
    b.put_secret(
        "staging",
        "other/app",
        json!({"password": "not-yours-1234"}),
    )
    .await;
    b.put_secret("prod", "staging/app", json!({"password": "prod-pw-123456"}))
        .await;
    let (token, _) = staging_login(&b).await;

    // KV v2: `{"data": {"data": {…}, "metadata": {…}}}`.
    let a = vault_get(&b, "/v1/staging/data/staging/app", Some(&token)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type.starts_with("application/json"));
    assert_eq!(a.cache_control, "no-store");
    let v = a.json();
    assert_eq!(v["data"]["data"], json!({"password": "second-pw-5678"}));
    let meta = &v["data"]["metadata"];
    assert_eq!(meta["version"], 2);
    assert_eq!(meta["deletion_time"], "");
    assert_eq!(meta["destroyed"], false);
    let created = meta["created_time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");
    // An older version, as `?version=N`.
    let v = vault_get(&b, "/v1/staging/data/staging/app?version=1", Some(&token))
        .await
        .json();
    assert_eq!(v["data"]["data"], json!({"password": "first-pw-1234"}));
    assert_eq!(v["data"]["metadata"]["version"], 1);
    let a = vault_get(&b, "/v1/staging/data/staging/app?version=9", Some(&token)).await;
    assert_eq!(a.status, 404, "{}", a.text);

    // KV v1: `{"data": {…}}`.
    let a = vault_get(&b, "/v1/staging/staging/app", Some(&token)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["data"], json!({"password": "second-pw-5678"}));

    // `Authorization: Bearer` works as in Vault.
    let a = send(
        b.client()
            .get(format!("{}/v1/staging/data/staging/app", vault_url(&b)))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);

    // Outside the globs, another environment's mount, no token, a forged token: 403.
    for (path, tok) in [
        ("/v1/staging/data/other/app", Some(token.as_str())),
        ("/v1/staging/other/app", Some(token.as_str())),
        ("/v1/prod/data/staging/app", Some(token.as_str())),
        ("/v1/staging/data/staging/app", None),
        ("/v1/staging/data/staging/app", Some("jpt_forged")),
    ] {
        let a = vault_get(&b, path, tok).await;
        assert_eq!(a.status, 403, "{path}: {}", a.text);
        assert_eq!(a.errors()[0], "permission denied", "{path}");
        assert!(!a.text.contains("not-yours") && !a.text.contains("prod-pw"));
    }
    // Covered but absent: 404, Vault-shaped.
    let a = vault_get(&b, "/v1/staging/data/staging/missing", Some(&token)).await;
    assert_eq!(a.status, 404, "{}", a.text);
    a.errors();

    // The same audit event as the native route, for allowed and denied reads.
    let recs = b.audit_records();
    let reads: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "secret_read")
        .collect();
    assert!(reads.iter().any(|r| r["outcome"] == "success"
        && r["environment"] == "staging"
        && r["details"]["path"] == "staging/app"
        && r["details"]["version"] == 1));
    assert!(reads.iter().any(|r| r["outcome"] == "denied"
        && r["details"]["path"] == "other/app"
        && r["role"] == "gitlab-deploy"));
    assert!(!b.audit_text().contains("second-pw-5678"));
    assert!(!b.audit_text().contains(&token));
}

async fn lookup_self_then_revoke_self_ends_the_token() {
    let b = vault_broker().await;
    b.put_secret("staging", "staging/app", json!({"password": "pw-1234567"}))
        .await;
    let (token, login) = staging_login(&b).await;
    let lease = login["auth"]["accessor"].as_str().unwrap().to_string();

    let a = vault_get(&b, "/v1/auth/token/lookup-self", Some(&token)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let d = &a.json()["data"];
    assert_eq!(d["accessor"], lease.as_str());
    assert_eq!(d["policies"], json!(["gitlab-deploy"]));
    assert_eq!(
        d["meta"],
        json!({"role": "gitlab-deploy", "environment": "staging"})
    );
    assert_eq!(d["renewable"], false);
    assert_eq!(d["path"], "auth/staging/login");
    let ttl = d["ttl"].as_i64().unwrap();
    assert!(ttl > 0 && ttl <= 300, "{ttl}");
    assert!(
        !a.text.contains(&token),
        "the token itself is not echoed back"
    );

    // Without a token, or with a forged one.
    let a = vault_get(&b, "/v1/auth/token/lookup-self", None).await;
    assert_eq!(
        (a.status, a.errors()[0].as_str()),
        (403, "permission denied")
    );
    let a = vault_get(&b, "/v1/auth/token/lookup-self", Some("jpt_forged")).await;
    assert_eq!(a.status, 403);

    let a = send(
        b.client()
            .post(format!("{}/v1/auth/token/revoke-self", vault_url(&b)))
            .header("x-vault-token", &token),
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert!(a.text.is_empty());

    // The token is refused everywhere now.
    let a = vault_get(&b, "/v1/auth/token/lookup-self", Some(&token)).await;
    assert_eq!(
        (a.status, a.errors()[0].as_str()),
        (403, "permission denied")
    );
    let a = vault_get(&b, "/v1/staging/data/staging/app", Some(&token)).await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert_eq!(
        b.get("/v1/secrets/staging/staging/app", Some(&token))
            .await
            .0,
        401
    );
    let a = send(
        b.client()
            .put(format!("{}/v1/auth/token/revoke-self", vault_url(&b)))
            .header("x-vault-token", &token),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text);
    let recs = b.audit_records();
    assert!(
        recs.iter()
            .any(|r| r["event"] == "revoke" && r["lease_id"] == lease.as_str())
    );
}

async fn health_answers_and_other_routes_are_vault_shaped_errors() {
    let b = vault_broker().await;
    let a = vault_get(&b, "/v1/sys/health", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(v["initialized"], true);
    assert_eq!(v["sealed"], false);
    assert_eq!(v["standby"], false);

    let a = vault_get(&b, "/v1/sys/mounts/x/y/z", None).await;
    assert_eq!(a.status, 404, "{}", a.text);
    a.errors();
    let a = vault_get(&b, "/nothing", None).await;
    assert_eq!(a.status, 404, "{}", a.text);
    a.errors();
    // Writes are not served.
    let a = send(
        b.client()
            .post(format!("{}/v1/staging/data/staging/app", vault_url(&b)))
            .body(json!({"data": {"a": "b"}}).to_string()),
    )
    .await;
    assert_eq!(a.status, 405, "{}", a.text);
    assert_eq!(a.errors(), vec!["unsupported operation".to_string()]);
    let a = vault_get(&b, "/v1/auth/staging/login", None).await;
    assert_eq!(a.status, 405, "{}", a.text);
    a.errors();
    // The native API is not on this listener.
    let a = vault_get(&b, "/v1/exchange", None).await;
    assert_ne!(a.status, 200);
}

crate::support::harness::cases! {
    EachStore: [
        vault_client_library_logs_in_and_reads_a_kv2_secret,
        go_client_login_by_put_with_empty_role_uses_the_default_role,
        login_refusals_are_vault_shaped_errors,
        kv_reads_v2_and_v1_are_checked_and_audited_like_native_reads,
        lookup_self_then_revoke_self_ends_the_token,
        health_answers_and_other_routes_are_vault_shaped_errors,
    ],
}
