//! Unit tests on a static (in-memory) issuer: no network. The loopback-issuer tests (discovery,
//! JWKS refetch, rotation) live with the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::*;
use crate::clock::FixedClock;

const ISS: &str = "https://dev.jobpass.invalid";
const AUD: &str = "https://jobpass.example.com";
const NOW: i64 = 1_800_000_000;

struct Es256 {
    pair: EcdsaKeyPair,
}

impl Es256 {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { pair }
    }

    fn jwks(&self) -> String {
        let p = self.pair.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])}]})
        .to_string()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_kid(claims, "k1")
    }

    fn sign_kid(&self, claims: &Value, kid: &str) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), msg.as_bytes())
            .unwrap();
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "repo:acme/web:ref:refs/heads/main", "aud": AUD,
           "iat": NOW, "nbf": NOW - 5, "exp": NOW + 300, "jti": "j-1",
           "run_id": "42", "nested": {"a": [1, 2]}})
}

fn setup() -> (Es256, Verifier) {
    let key = Es256::new();
    let clock: SharedClock = Arc::new(FixedClock::at(NOW));
    let verifier = Verifier::new(&[], clock, VerifierOptions::default()).unwrap();
    verifier.add_static_issuer(ISS, &key.jwks()).unwrap();
    (key, verifier)
}

async fn verify(v: &Verifier, token: &str) -> Result<VerifiedToken, OidcError> {
    v.verify(token, &[ISS.to_owned()], AUD).await
}

#[tokio::test]
async fn static_issuer_token_verifies_with_full_claims() {
    let (key, v) = setup();
    let token = key.sign(&claims());
    let t = verify(&v, &token).await.unwrap();
    assert_eq!(t.issuer, ISS);
    assert_eq!(t.subject, "repo:acme/web:ref:refs/heads/main");
    assert_eq!(t.jti.as_deref(), Some("j-1"));
    assert_eq!(t.expires_at, NOW + 300);
    assert_eq!(t.issued_at, Some(NOW));
    assert_eq!(Value::Object(t.claims), claims());
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    assert_eq!(&t.token_sha256[..], digest.as_ref());
}

#[tokio::test]
async fn time_claims_are_checked_with_leeway() {
    let (key, v) = setup();
    let cases = [
        ("exp", NOW - 61, Some("expired")),
        ("exp", NOW - 59, None),
        ("nbf", NOW + 61, Some("nbf")),
        ("nbf", NOW + 59, None),
        ("iat", NOW + 61, Some("iat")),
        ("iat", NOW + 59, None),
    ];
    for (claim, value, refused) in cases {
        let mut c = claims();
        c[claim] = json!(value);
        let r = verify(&v, &key.sign(&c)).await;
        match (refused, r) {
            (None, Ok(_)) => {}
            (Some("expired"), Err(OidcError::Expired)) => {}
            (Some("nbf"), Err(OidcError::NotYetValid)) => {}
            (Some("iat"), Err(OidcError::IssuedInFuture)) => {}
            (want, got) => panic!("{claim}={value}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn untrusted_or_unknown_issuer_is_refused() {
    let (key, v) = setup();
    let token = key.sign(&claims());
    let err = v.verify(&token, &[], AUD).await.unwrap_err();
    assert!(matches!(err, OidcError::UntrustedIssuer));
    let mut c = claims();
    c["iss"] = json!("https://elsewhere.invalid");
    let err = v
        .verify(
            &key.sign(&c),
            &["https://elsewhere.invalid".to_owned()],
            AUD,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::UntrustedIssuer));
}

#[tokio::test]
async fn unknown_kid_on_static_issuer_is_refused_without_network() {
    let (_, v) = setup();
    let other = Es256::new();
    let err = verify(&v, &other.sign_kid(&claims(), "k2"))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    // Right kid, wrong key: the signature does not verify.
    let err = verify(&v, &other.sign(&claims())).await.unwrap_err();
    assert!(matches!(err, OidcError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn non_string_jti_is_malformed() {
    let (key, v) = setup();
    let mut c = claims();
    c["jti"] = json!(7);
    let err = verify(&v, &key.sign(&c)).await.unwrap_err();
    assert!(matches!(err, OidcError::Malformed(_)), "{err:?}");
}

#[test]
fn only_issuer_and_config_problems_are_server_errors() {
    assert!(!OidcError::IssuerUnavailable("x".into()).is_client_error());
    assert!(!OidcError::Config("x".into()).is_client_error());
    for e in [
        OidcError::TooLarge,
        OidcError::Malformed("x".into()),
        OidcError::UnsupportedAlgorithm("none".into()),
        OidcError::UntrustedIssuer,
        OidcError::WrongAudience,
        OidcError::Expired,
        OidcError::NotYetValid,
        OidcError::IssuedInFuture,
        OidcError::BadSignature,
        OidcError::UnknownKey,
    ] {
        assert!(e.is_client_error(), "{e:?}");
    }
}

#[test]
fn static_issuer_needs_a_usable_jwks() {
    let clock: SharedClock = Arc::new(FixedClock::at(NOW));
    let v = Verifier::new(&[], clock, VerifierOptions::default()).unwrap();
    assert!(matches!(
        v.add_static_issuer(ISS, "{}"),
        Err(OidcError::Config(_))
    ));
    assert!(matches!(
        v.add_static_issuer("not a url", r#"{"keys":[]}"#),
        Err(OidcError::Config(_))
    ));
    assert!(!v.knows_issuer(ISS));
}
