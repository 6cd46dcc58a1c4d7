//! Token verification against a real issuer on loopback (discovery + JWKS over HTTP).

use std::sync::Arc;
use std::time::Duration;

use crate::support::issuer::{Alg, Kid, SignOptions, TestIssuer};
use axum::http::StatusCode;
use jobpass::clock::{FixedClock, SharedClock};
use jobpass::oidc::{IssuerConfig, OidcError, VerifiedToken, Verifier, VerifierOptions};
use serde_json::{Value, json};

const AUD: &str = "https://jobpass.example.com";
const NOW: i64 = 1_800_000_000;

struct Fixture {
    issuer: TestIssuer,
    clock: Arc<FixedClock>,
    verifier: Arc<Verifier>,
    trusted: Vec<String>,
}

impl Fixture {
    async fn new() -> Fixture {
        let issuer = TestIssuer::start().await;
        let clock = Arc::new(FixedClock::at(NOW));
        let verifier = verifier_for(&issuer, &clock);
        let trusted = vec![issuer.issuer_url()];
        Fixture {
            issuer,
            clock,
            verifier: Arc::new(verifier),
            trusted,
        }
    }

    async fn verify(&self, token: &str) -> Result<VerifiedToken, OidcError> {
        self.verifier.verify(token, &self.trusted, AUD).await
    }

    fn github(&self) -> Value {
        self.issuer.github_claims(AUD, NOW)
    }

    /// Moves time past the refetch rate limit (tokens stay valid: they live 5 minutes).
    fn pass_refresh_window(&self) {
        self.clock.advance(Duration::from_secs(31));
    }
}

fn http_config(url: &str) -> IssuerConfig {
    IssuerConfig {
        url: url.to_owned(),
        ca_file: None,
        jwks_file: None,
        allow_http: true,
    }
}

fn verifier_for(issuer: &TestIssuer, clock: &Arc<FixedClock>) -> Verifier {
    let shared: SharedClock = clock.clone();
    Verifier::new(
        &[http_config(&issuer.issuer_url())],
        shared,
        VerifierOptions::default(),
    )
    .unwrap()
}

fn sha256(text: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().try_into().unwrap()
}

// ---- accepted tokens ---------------------------------------------------------------------

async fn github_shaped_token_verifies_and_keeps_every_claim() {
    let f = Fixture::new().await;
    let claims = f.github();
    let token = f.issuer.sign(claims.clone());
    let v = f.verify(&token).await.unwrap();
    assert_eq!(v.issuer, f.issuer.issuer_url());
    assert_eq!(v.subject, "repo:octo-org/octo-repo:environment:prod");
    assert_eq!(v.jti.as_deref(), claims["jti"].as_str());
    assert_eq!(v.expires_at, NOW + 300);
    assert_eq!(v.issued_at, Some(NOW));
    assert_eq!(v.token_sha256, sha256(&token));
    assert_eq!(Value::Object(v.claims.clone()), claims);
    assert_eq!(v.claims["run_id"], "19677834613");
    assert_eq!(v.claims["ref_protected"], "false");
    assert_eq!(f.issuer.discovery_fetch_count(), 1);
    assert_eq!(f.issuer.jwks_fetch_count(), 1);
}

async fn gitlab_shaped_token_verifies() {
    let f = Fixture::new().await;
    let claims = f.issuer.gitlab_claims(AUD, NOW);
    let v = f.verify(&f.issuer.sign(claims.clone())).await.unwrap();
    assert_eq!(
        v.subject,
        "project_path:my-group/my-project:ref_type:branch:ref:main"
    );
    assert_eq!(v.claims["ref"], "main");
    assert_eq!(v.claims["ref_path"], "refs/heads/main");
    assert_eq!(v.claims["runner_id"], 1);
    assert_eq!(Value::Object(v.claims), claims);
}

async fn every_allowed_asymmetric_algorithm_verifies() {
    let f = Fixture::new().await;
    for alg in [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::EdDSA,
    ] {
        let token = f.issuer.sign_with(f.github(), SignOptions::alg(alg));
        let r = f.verify(&token).await;
        assert!(r.is_ok(), "{alg:?}: {r:?}");
    }
    assert_eq!(f.issuer.jwks_fetch_count(), 1);
}

async fn token_without_jti_verifies_and_is_identified_by_its_hash() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims.as_object_mut().unwrap().remove("jti");
    let token = f.issuer.sign(claims);
    let v = f.verify(&token).await.unwrap();
    assert_eq!(v.jti, None);
    assert_eq!(v.token_sha256, sha256(&token));
}

async fn issuer_with_a_path_verifies() {
    let issuer = TestIssuer::start_with_path("/org/0123").await;
    let clock = Arc::new(FixedClock::at(NOW));
    let verifier = verifier_for(&issuer, &clock);
    let token = issuer.sign(issuer.github_claims(AUD, NOW));
    let v = verifier
        .verify(&token, &[issuer.issuer_url()], AUD)
        .await
        .unwrap();
    assert!(v.issuer.ends_with("/org/0123"));
}

// ---- issuer and audience -----------------------------------------------------------------

async fn token_from_an_unconfigured_issuer_is_refused() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["iss"] = json!("https://evil.example");
    let token = f.issuer.sign(claims);
    let trusted = vec![f.issuer.issuer_url(), "https://evil.example".to_owned()];
    let err = f.verifier.verify(&token, &trusted, AUD).await.unwrap_err();
    assert!(matches!(err, OidcError::UntrustedIssuer), "{err:?}");
    assert_eq!(f.issuer.jwks_fetch_count(), 0);
}

async fn issuer_not_trusted_by_this_environment_is_refused() {
    let f = Fixture::new().await;
    let token = f.issuer.sign(f.github());
    let other_env = vec!["https://token.actions.githubusercontent.com".to_owned()];
    let err = f
        .verifier
        .verify(&token, &other_env, AUD)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::UntrustedIssuer), "{err:?}");
    let err = f.verifier.verify(&token, &[], AUD).await.unwrap_err();
    assert!(matches!(err, OidcError::UntrustedIssuer), "{err:?}");
}

async fn issuer_must_match_exactly() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["iss"] = json!(format!("{}/", f.issuer.issuer_url()));
    let err = f.verify(&f.issuer.sign(claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::UntrustedIssuer), "{err:?}");
}

async fn wrong_audience_is_refused() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["aud"] = json!("https://github.com/octo-org");
    let err = f.verify(&f.issuer.sign(claims.clone())).await.unwrap_err();
    assert!(matches!(err, OidcError::WrongAudience), "{err:?}");

    claims["aud"] = json!(["https://a.example", "https://b.example"]);
    let err = f.verify(&f.issuer.sign(claims.clone())).await.unwrap_err();
    assert!(matches!(err, OidcError::WrongAudience), "{err:?}");

    claims.as_object_mut().unwrap().remove("aud");
    let err = f.verify(&f.issuer.sign(claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::WrongAudience), "{err:?}");
}

async fn audience_among_several_is_accepted() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["aud"] = json!(["https://other.example", AUD]);
    f.verify(&f.issuer.sign(claims)).await.unwrap();
}

// ---- time claims -------------------------------------------------------------------------

async fn expired_token_is_refused_beyond_leeway() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["iat"] = json!(NOW - 1000);
    claims["nbf"] = json!(NOW - 1000);
    claims["exp"] = json!(NOW - 61);
    let err = f.verify(&f.issuer.sign(claims.clone())).await.unwrap_err();
    assert!(matches!(err, OidcError::Expired), "{err:?}");
    claims["exp"] = json!(NOW - 60);
    let err = f.verify(&f.issuer.sign(claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::Expired), "{err:?}");
}

async fn token_expired_within_leeway_is_accepted() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["iat"] = json!(NOW - 1000);
    claims["exp"] = json!(NOW - 59);
    let v = f.verify(&f.issuer.sign(claims)).await.unwrap();
    assert_eq!(v.expires_at, NOW - 59);
}

async fn token_expires_as_the_clock_moves() {
    let f = Fixture::new().await;
    let token = f.issuer.sign(f.github());
    f.verify(&token).await.unwrap();
    f.clock.advance(Duration::from_secs(300 + 60));
    let err = f.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::Expired), "{err:?}");
}

async fn not_yet_valid_token_is_refused() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["nbf"] = json!(NOW + 120);
    let err = f.verify(&f.issuer.sign(claims.clone())).await.unwrap_err();
    assert!(matches!(err, OidcError::NotYetValid), "{err:?}");
    claims["nbf"] = json!(NOW + 30);
    f.verify(&f.issuer.sign(claims.clone())).await.unwrap();
    claims["nbf"] = json!("soon");
    let err = f.verify(&f.issuer.sign(claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::Malformed(_)), "{err:?}");
}

async fn token_issued_in_the_future_is_refused() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["iat"] = json!(NOW + 120);
    claims["nbf"] = json!(NOW);
    let err = f.verify(&f.issuer.sign(claims.clone())).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuedInFuture), "{err:?}");
    claims["iat"] = json!(NOW + 30);
    f.verify(&f.issuer.sign(claims)).await.unwrap();
}

async fn token_without_exp_or_sub_is_malformed() {
    let f = Fixture::new().await;
    for missing in ["exp", "sub", "iat"] {
        let mut claims = f.github();
        claims.as_object_mut().unwrap().remove(missing);
        let err = f.verify(&f.issuer.sign(claims)).await.unwrap_err();
        assert!(matches!(err, OidcError::Malformed(_)), "{missing}: {err:?}");
    }
}

// ---- signatures and algorithms -----------------------------------------------------------

async fn token_signed_by_a_key_not_in_the_jwks_is_refused() {
    let f = Fixture::new().await;
    let err = f
        .verify(&f.issuer.token_signed_by_unknown_key(f.github()))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::BadSignature), "{err:?}");
    let es = SignOptions {
        foreign_key: true,
        ..SignOptions::alg(Alg::ES256)
    };
    let err = f
        .verify(&f.issuer.sign_with(f.github(), es))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::BadSignature), "{err:?}");
}

async fn tampered_payload_is_refused() {
    let f = Fixture::new().await;
    let token = f.issuer.sign(f.github());
    let parts: Vec<&str> = token.split('.').collect();
    let mut evil = f.github();
    evil["repository"] = json!("evil/repo");
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(evil.to_string());
    let forged = format!("{}.{}.{}", parts[0], payload, parts[2]);
    let err = f.verify(&forged).await.unwrap_err();
    assert!(matches!(err, OidcError::BadSignature), "{err:?}");
}

async fn alg_none_is_refused_before_any_key_lookup() {
    let f = Fixture::new().await;
    let err = f
        .verify(&f.issuer.token_alg_none(f.github()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OidcError::UnsupportedAlgorithm(ref a) if a == "none"),
        "{err:?}"
    );
    assert!(err.is_client_error());
    assert_eq!(f.issuer.jwks_fetch_count(), 0);
}

async fn hs256_signed_with_the_public_key_is_refused() {
    let f = Fixture::new().await;
    let token = f.issuer.token_hs256_with_public_key(f.github());
    let err = f.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, OidcError::UnsupportedAlgorithm(ref a) if a == "HS256"),
        "{err:?}"
    );
    assert_eq!(f.issuer.jwks_fetch_count(), 0);
}

async fn critical_header_is_refused() {
    let f = Fixture::new().await;
    let mut opts = SignOptions::default();
    opts.extra_header.insert("crit".into(), json!(["x-custom"]));
    opts.extra_header.insert("x-custom".into(), json!(true));
    let err = f
        .verify(&f.issuer.sign_with(f.github(), opts))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::Malformed(_)), "{err:?}");
}

async fn oversized_token_is_refused_before_any_key_lookup() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["padding"] = json!("x".repeat(16 * 1024));
    let err = f.verify(&f.issuer.sign(claims)).await.unwrap_err();
    assert!(matches!(err, OidcError::TooLarge), "{err:?}");
    assert_eq!(f.issuer.jwks_fetch_count(), 0);
}

async fn garbage_is_malformed() {
    let f = Fixture::new().await;
    let not_json = "bm90IGpzb24.bm90IGpzb24.c2ln";
    for token in [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        not_json,
        "eyJhbGciOiJSUzI1NiJ9.W10.c2ln",
    ] {
        let err = f.verify(token).await.unwrap_err();
        assert!(matches!(err, OidcError::Malformed(_)), "{token}: {err:?}");
        assert!(err.is_client_error());
    }
    assert_eq!(f.issuer.jwks_fetch_count(), 0);
}

// ---- key rotation and refetch limits -----------------------------------------------------

async fn unknown_kid_is_refused_after_exactly_one_refetch() {
    let f = Fixture::new().await;
    f.verify(&f.issuer.sign(f.github())).await.unwrap();
    assert_eq!(f.issuer.jwks_fetch_count(), 1);
    f.pass_refresh_window();
    let err = f
        .verify(&f.issuer.token_with_unknown_kid(f.github()))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    assert!(err.is_client_error());
    assert_eq!(f.issuer.jwks_fetch_count(), 2);
}

async fn rotated_key_is_picked_up_without_restart() {
    let f = Fixture::new().await;
    let old = f.issuer.sign(f.github());
    f.verify(&old).await.unwrap();
    assert_eq!(f.issuer.jwks_fetch_count(), 1);

    let new_kid = f.issuer.rotate();
    f.pass_refresh_window();
    let new = f.issuer.sign(f.github());
    assert!(new_kid != "rsa-1");
    f.verify(&new).await.unwrap();
    assert_eq!(f.issuer.jwks_fetch_count(), 2);
    // The old key left the JWKS: its tokens now fail, and asking again does not refetch.
    let err = f.verify(&old).await.unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    assert_eq!(f.issuer.jwks_fetch_count(), 2);
    f.verify(&new).await.unwrap();
    assert_eq!(f.issuer.jwks_fetch_count(), 2);
}

async fn rotation_keeping_the_old_key_accepts_both() {
    let f = Fixture::new().await;
    let old = f.issuer.sign(f.github());
    f.verify(&old).await.unwrap();
    f.issuer.rotate_keep_old(true);
    f.pass_refresh_window();
    f.verify(&f.issuer.sign(f.github())).await.unwrap();
    f.verify(&old).await.unwrap();
    assert_eq!(f.issuer.jwks_fetch_count(), 2);
}

async fn burst_of_unknown_kids_fetches_at_most_once_per_window() {
    let f = Fixture::new().await;
    f.verify(&f.issuer.sign(f.github())).await.unwrap();
    f.pass_refresh_window();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..25 {
        let verifier = Arc::clone(&f.verifier);
        let trusted = f.trusted.clone();
        let opts = SignOptions {
            kid: Kid::Custom(format!("attacker-{i}")),
            ..SignOptions::default()
        };
        let token = f.issuer.sign_with(f.github(), opts);
        tasks.spawn(async move { verifier.verify(&token, &trusted, AUD).await });
    }
    while let Some(r) = tasks.join_next().await {
        let err = r.unwrap().unwrap_err();
        assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    }
    assert_eq!(f.issuer.jwks_fetch_count(), 2);

    // Sequential unknown kids within the window: still no fetch.
    for _ in 0..5 {
        let _ = f.verify(&f.issuer.token_with_unknown_kid(f.github())).await;
    }
    assert_eq!(f.issuer.jwks_fetch_count(), 2);

    // Next window: one more.
    f.pass_refresh_window();
    let _ = f.verify(&f.issuer.token_with_unknown_kid(f.github())).await;
    let _ = f.verify(&f.issuer.token_with_unknown_kid(f.github())).await;
    assert_eq!(f.issuer.jwks_fetch_count(), 3);
}

async fn concurrent_first_use_shares_one_fetch() {
    let f = Fixture::new().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let verifier = Arc::clone(&f.verifier);
        let trusted = f.trusted.clone();
        let token = f.issuer.sign(f.github());
        tasks.spawn(async move { verifier.verify(&token, &trusted, AUD).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(f.issuer.jwks_fetch_count(), 1);
    assert_eq!(f.issuer.discovery_fetch_count(), 1);
}

async fn keys_are_refreshed_after_max_age() {
    let f = Fixture::new().await;
    f.verify(&f.issuer.sign(f.github())).await.unwrap();
    f.clock.advance(Duration::from_secs(15 * 60 + 1));
    let claims = f.issuer.github_claims(AUD, NOW + 15 * 60 + 1);
    f.verify(&f.issuer.sign(claims)).await.unwrap();
    assert_eq!(f.issuer.jwks_fetch_count(), 2);
}

async fn failed_refresh_keeps_the_last_good_keys() {
    let f = Fixture::new().await;
    f.verify(&f.issuer.sign(f.github())).await.unwrap();
    f.issuer.set_failure(Some(StatusCode::SERVICE_UNAVAILABLE));
    let later = NOW + 15 * 60 + 1;
    f.clock.set(later);
    let token = f.issuer.sign(f.issuer.github_claims(AUD, later));
    f.verify(&token).await.unwrap();
    assert_eq!(f.issuer.discovery_fetch_count(), 2);
    // Within the window no new attempt is made.
    f.verify(&token).await.unwrap();
    assert_eq!(f.issuer.discovery_fetch_count(), 2);
}

// ---- availability and discovery ----------------------------------------------------------

async fn unreachable_issuer_does_not_prevent_start_and_answers_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let clock: SharedClock = Arc::new(FixedClock::at(NOW));
    let verifier = Verifier::new(&[http_config(&url)], clock, VerifierOptions::default()).unwrap();

    // A token claiming that issuer (signed by anyone: the keys cannot be fetched).
    let other = TestIssuer::start().await;
    let mut claims = other.github_claims(AUD, NOW);
    claims["iss"] = json!(url);
    let err = verifier
        .verify(&other.sign(claims), std::slice::from_ref(&url), AUD)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
    assert!(!err.is_client_error());
}

async fn issuer_answering_errors_is_unavailable_then_recovers() {
    let f = Fixture::new().await;
    f.issuer
        .set_failure(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let token = f.issuer.sign(f.github());
    let err = f.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
    assert!(!err.is_client_error());
    // Rate limited: no new attempt inside the window.
    f.issuer.set_failure(None);
    let err = f.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
    assert_eq!(f.issuer.discovery_fetch_count(), 1);
    f.pass_refresh_window();
    f.verify(&token).await.unwrap();
}

async fn discovery_naming_another_issuer_is_refused() {
    let f = Fixture::new().await;
    f.issuer
        .set_discovery_issuer(Some(format!("{}/", f.issuer.issuer_url())));
    let err = f.verify(&f.issuer.sign(f.github())).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
    assert_eq!(f.issuer.jwks_fetch_count(), 0);
}

async fn redirects_are_not_followed() {
    let f = Fixture::new().await;
    let elsewhere = TestIssuer::start().await;
    f.issuer
        .set_discovery_redirect(Some(elsewhere.discovery_url()));
    let err = f.verify(&f.issuer.sign(f.github())).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
    assert_eq!(f.issuer.discovery_fetch_count(), 1);
    assert_eq!(elsewhere.discovery_fetch_count(), 0);
}

async fn plain_http_jwks_uri_off_loopback_is_refused() {
    let f = Fixture::new().await;
    f.issuer
        .set_jwks_uri(Some("http://jwks.example.com/keys".to_owned()));
    let err = f.verify(&f.issuer.sign(f.github())).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
}

async fn https_issuer_is_trusted_through_its_ca_file_only() {
    let issuer = TestIssuer::start_tls().await;
    let url = issuer.issuer_url();
    assert!(url.starts_with("https://127.0.0.1:"));
    let token = issuer.sign(issuer.github_claims(AUD, NOW));
    let trusted = vec![url.clone()];

    // Without the CA the certificate does not verify: the issuer is unavailable.
    let mut cfg = IssuerConfig {
        url: url.clone(),
        ca_file: None,
        jwks_file: None,
        allow_http: false,
    };
    let err = new_verifier(std::slice::from_ref(&cfg))
        .unwrap()
        .verify(&token, &trusted, AUD)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::IssuerUnavailable(_)), "{err:?}");
    assert_eq!(issuer.discovery_fetch_count(), 0);

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, issuer.ca_pem().unwrap()).unwrap();
    cfg.ca_file = Some(ca);
    let v = new_verifier(&[cfg])
        .unwrap()
        .verify(&token, &trusted, AUD)
        .await
        .unwrap();
    assert_eq!(v.issuer, url);
    assert_eq!(issuer.jwks_fetch_count(), 1);
}

// ---- configuration -----------------------------------------------------------------------

async fn jwks_file_issuer_works_without_network() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, issuer.jwks_json()).unwrap();
    let url = "https://airgapped.example.com".to_owned();
    let cfg = IssuerConfig {
        url: url.clone(),
        ca_file: None,
        jwks_file: Some(path),
        allow_http: false,
    };
    let clock: SharedClock = Arc::new(FixedClock::at(NOW));
    let verifier = Verifier::new(&[cfg], clock, VerifierOptions::default()).unwrap();
    let mut claims = issuer.github_claims(AUD, NOW);
    claims["iss"] = json!(url);
    let v = verifier
        .verify(
            &issuer.sign(claims.clone()),
            std::slice::from_ref(&url),
            AUD,
        )
        .await
        .unwrap();
    assert_eq!(v.issuer, url);
    let err = verifier
        .verify(&issuer.token_with_unknown_kid(claims), &[url], AUD)
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    assert_eq!(issuer.jwks_fetch_count(), 0);
    assert_eq!(issuer.discovery_fetch_count(), 0);
}

async fn static_issuer_added_at_runtime_verifies() {
    let issuer = TestIssuer::start().await;
    let clock: SharedClock = Arc::new(FixedClock::at(NOW));
    let verifier = Verifier::new(&[], clock, VerifierOptions::default()).unwrap();
    let url = "https://127.0.0.1:8443/dev".to_owned();
    verifier
        .add_static_issuer(&url, &issuer.jwks_json())
        .unwrap();
    assert!(verifier.knows_issuer(&url));
    let err = verifier
        .add_static_issuer(&url, &issuer.jwks_json())
        .unwrap_err();
    assert!(matches!(err, OidcError::Config(_)));
    let mut claims = issuer.github_claims(AUD, NOW);
    claims["iss"] = json!(url);
    let token = issuer.sign_with(claims, SignOptions::alg(Alg::ES256));
    verifier.verify(&token, &[url], AUD).await.unwrap();
    assert_eq!(issuer.jwks_fetch_count(), 0);
}

fn new_verifier(cfgs: &[IssuerConfig]) -> Result<Verifier, OidcError> {
    let clock: SharedClock = Arc::new(FixedClock::at(NOW));
    Verifier::new(cfgs, clock, VerifierOptions::default())
}

async fn http_issuer_off_loopback_is_a_config_error() {
    for url in [
        "http://example.com",
        "http://10.1.2.3:8080",
        "http://localhost.evil.com",
    ] {
        let err = new_verifier(&[http_config(url)]).unwrap_err();
        assert!(matches!(err, OidcError::Config(_)), "{url}: {err:?}");
        assert!(!err.is_client_error());
    }
    let mut no_flag = http_config("http://127.0.0.1:9");
    no_flag.allow_http = false;
    assert!(matches!(
        new_verifier(&[no_flag]),
        Err(OidcError::Config(_))
    ));
    assert!(new_verifier(&[http_config("http://localhost:9")]).is_ok());
    assert!(new_verifier(&[http_config("https://gitlab.example.com")]).is_ok());
}

async fn unreadable_or_invalid_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let mut cfg = http_config("https://gitlab.example.com");
    cfg.ca_file = Some(garbage.clone());
    assert!(matches!(
        new_verifier(&[cfg.clone()]),
        Err(OidcError::Config(_))
    ));
    cfg.ca_file = Some(dir.path().join("missing.pem"));
    assert!(matches!(
        new_verifier(&[cfg.clone()]),
        Err(OidcError::Config(_))
    ));
    cfg.ca_file = None;
    cfg.jwks_file = Some(garbage);
    assert!(matches!(
        new_verifier(&[cfg.clone()]),
        Err(OidcError::Config(_))
    ));
    cfg.jwks_file = Some(dir.path().join("missing.json"));
    assert!(matches!(new_verifier(&[cfg]), Err(OidcError::Config(_))));
}

async fn duplicate_issuer_is_a_config_error() {
    let cfg = http_config("https://gitlab.example.com");
    assert!(matches!(
        new_verifier(&[cfg.clone(), cfg]),
        Err(OidcError::Config(_))
    ));
}

async fn issuer_config_refuses_unknown_keys() {
    let ok: IssuerConfig =
        toml_like(r#"{"url": "https://a.example", "allow_http": false}"#).unwrap();
    assert!(!ok.allow_http);
    assert!(toml_like(r#"{"url": "https://a.example", "jwks_url": "x"}"#).is_err());
}

fn toml_like(json: &str) -> Result<IssuerConfig, serde_json::Error> {
    serde_json::from_str(json)
}

// ---- no leaks ----------------------------------------------------------------------------

async fn error_messages_never_quote_the_token_or_its_claims() {
    let f = Fixture::new().await;
    let mut claims = f.github();
    claims["sub"] = json!("SECRET-SUBJECT-MARKER");
    claims["aud"] = json!("SECRET-AUD-MARKER");
    let mut expired = claims.clone();
    expired["exp"] = json!(NOW - 1000);
    expired["aud"] = json!(AUD);
    let tokens = [
        f.issuer.sign(claims.clone()),
        f.issuer.sign(expired),
        f.issuer.token_alg_none(claims.clone()),
        f.issuer.token_signed_by_unknown_key(claims.clone()),
        f.issuer.token_with_unknown_kid(claims),
    ];
    for token in tokens {
        let err = f.verify(&token).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains(&token), "{text}");
    }
}

crate::support::harness::cases! {
    Once: [
        github_shaped_token_verifies_and_keeps_every_claim,
        gitlab_shaped_token_verifies,
        every_allowed_asymmetric_algorithm_verifies,
        token_without_jti_verifies_and_is_identified_by_its_hash,
        issuer_with_a_path_verifies,
        token_from_an_unconfigured_issuer_is_refused,
        issuer_not_trusted_by_this_environment_is_refused,
        issuer_must_match_exactly,
        wrong_audience_is_refused,
        audience_among_several_is_accepted,
        expired_token_is_refused_beyond_leeway,
        token_expired_within_leeway_is_accepted,
        token_expires_as_the_clock_moves,
        not_yet_valid_token_is_refused,
        token_issued_in_the_future_is_refused,
        token_without_exp_or_sub_is_malformed,
        token_signed_by_a_key_not_in_the_jwks_is_refused,
        tampered_payload_is_refused,
        alg_none_is_refused_before_any_key_lookup,
        hs256_signed_with_the_public_key_is_refused,
        critical_header_is_refused,
        oversized_token_is_refused_before_any_key_lookup,
        garbage_is_malformed,
        unknown_kid_is_refused_after_exactly_one_refetch,
        rotated_key_is_picked_up_without_restart,
        rotation_keeping_the_old_key_accepts_both,
        burst_of_unknown_kids_fetches_at_most_once_per_window,
        concurrent_first_use_shares_one_fetch,
        keys_are_refreshed_after_max_age,
        failed_refresh_keeps_the_last_good_keys,
        unreachable_issuer_does_not_prevent_start_and_answers_unavailable,
        issuer_answering_errors_is_unavailable_then_recovers,
        discovery_naming_another_issuer_is_refused,
        redirects_are_not_followed,
        plain_http_jwks_uri_off_loopback_is_refused,
        https_issuer_is_trusted_through_its_ca_file_only,
        jwks_file_issuer_works_without_network,
        static_issuer_added_at_runtime_verifies,
        http_issuer_off_loopback_is_a_config_error,
        unreadable_or_invalid_files_are_config_errors,
        duplicate_issuer_is_a_config_error,
        issuer_config_refuses_unknown_keys,
        error_messages_never_quote_the_token_or_its_claims,
    ],
}
