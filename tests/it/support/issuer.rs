//! A real OIDC issuer on loopback for tests: discovery and JWKS over plain HTTP on
//! `127.0.0.1:0`, tokens signed with RS256/384/512, PS256/384/512 (RSA 2048, `rsa` +
//! `jsonwebtoken`), ES256 and EdDSA (`ring`), key rotation, fetch counters, and helpers that
//! craft hostile tokens (`alg: none`, HS256 keyed with the public key, foreign key, unknown
//! `kid`).
//!
//! [`TestIssuer::start_tls`] serves HTTPS instead, with a certificate for 127.0.0.1/localhost
//! from a fresh CA ([`TestIssuer::ca_pem`]), to exercise `ca_file`.
//!
//! Self-contained: it depends only on tokio, axum, hyper-util, rustls, tokio-rustls, rcgen,
//! serde_json, base64, ring, rsa, rand and jsonwebtoken, never on the crate under test, so it
//! can live in any test binary.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Map, Value, json};

/// Signature algorithms the test issuer can sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    EdDSA,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn is_rsa(self) -> bool {
        !matches!(self, Alg::ES256 | Alg::EdDSA)
    }

    fn jsonwebtoken_alg(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Alg::RS256 => J::RS256,
            Alg::RS384 => J::RS384,
            Alg::RS512 => J::RS512,
            Alg::PS256 => J::PS256,
            Alg::PS384 => J::PS384,
            Alg::PS512 => J::PS512,
            Alg::ES256 => J::ES256,
            Alg::EdDSA => J::EdDSA,
        }
    }
}

/// Which `kid` goes into the header.
#[derive(Clone, Debug, Default)]
pub enum Kid {
    /// The kid of the key that signs (current RSA key, or the EC/Ed key).
    #[default]
    Current,
    /// No `kid` header at all.
    Omit,
    /// This exact value.
    Custom(String),
}

/// Options of [`TestIssuer::sign_with`].
#[derive(Clone, Debug)]
pub struct SignOptions {
    pub alg: Alg,
    pub kid: Kid,
    /// `typ` header; `None` omits it. Default `Some("JWT")`.
    pub typ: Option<String>,
    /// Sign with a key that is not (and never was) in the JWKS, while the header still names
    /// the kid chosen by `kid`.
    pub foreign_key: bool,
    /// Extra header members (e.g. `crit`, `x5t`).
    pub extra_header: Map<String, Value>,
}

impl Default for SignOptions {
    fn default() -> Self {
        Self {
            alg: Alg::RS256,
            kid: Kid::Current,
            typ: Some("JWT".to_owned()),
            foreign_key: false,
            extra_header: Map::new(),
        }
    }
}

impl SignOptions {
    /// Defaults with this algorithm.
    pub fn alg(alg: Alg) -> Self {
        Self {
            alg,
            ..Self::default()
        }
    }
}

struct RsaKey {
    kid: String,
    /// PKCS#1 DER of the private key.
    der: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
    public_pem: String,
}

impl RsaKey {
    fn generate(kid: String) -> Self {
        let mut rng = rand::thread_rng();
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation");
        let der = key.to_pkcs1_der().expect("PKCS#1 DER").as_bytes().to_vec();
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("public PEM");
        Self {
            kid,
            der,
            n: key.n().to_bytes_be(),
            e: key.e().to_bytes_be(),
            public_pem,
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "RSA", "use": "sig", "kid": self.kid,
               "n": URL_SAFE_NO_PAD.encode(&self.n), "e": URL_SAFE_NO_PAD.encode(&self.e)})
    }

    fn sign(&self, alg: Alg, message: &[u8]) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_der(&self.der);
        jsonwebtoken::crypto::sign(message, &key, alg.jsonwebtoken_alg()).expect("RSA signing")
    }
}

struct EcKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl EcKey {
    fn generate(kid: String) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { kid, pair }
    }

    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
    }

    fn sign(&self, message: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), message).unwrap();
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    }
}

struct EdKey {
    kid: String,
    pair: Ed25519KeyPair,
}

impl EdKey {
    fn generate(kid: String) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self { kid, pair }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())})
    }

    fn sign(&self, message: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.sign(message).as_ref())
    }
}

struct Keys {
    /// Published RSA keys; the last one signs.
    rsa: Vec<Arc<RsaKey>>,
    ec: Arc<EcKey>,
    ed: Arc<EdKey>,
    /// Never published; generated on first use.
    foreign_rsa: Option<Arc<RsaKey>>,
    foreign_ec: Arc<EcKey>,
    generation: usize,
}

struct Shared {
    url: String,
    keys: Mutex<Keys>,
    /// `issuer` served in the discovery document when it should differ from the URL.
    discovery_issuer: Mutex<Option<String>>,
    /// `jwks_uri` served in discovery when it should differ from the issuer's own.
    jwks_uri_override: Mutex<Option<String>>,
    /// When set, discovery and JWKS answer this status instead.
    failure: Mutex<Option<StatusCode>>,
    /// When set, discovery answers `302 Found` to this location.
    discovery_redirect: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// A running test issuer. Dropping it stops the server.
pub struct TestIssuer {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    ca_pem: Option<String>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestIssuer {
    /// Starts an issuer at `http://127.0.0.1:PORT`.
    pub async fn start() -> TestIssuer {
        Self::start_inner("", false).await
    }

    /// Starts an issuer whose URL has a path (`http://127.0.0.1:PORT/org/x`), like CircleCI.
    pub async fn start_with_path(path: &str) -> TestIssuer {
        Self::start_inner(path, false).await
    }

    /// Starts an issuer at `https://127.0.0.1:PORT` whose certificate chains to a fresh CA
    /// ([`ca_pem`](Self::ca_pem)), not to any public root.
    pub async fn start_tls() -> TestIssuer {
        Self::start_inner("", true).await
    }

    async fn start_inner(path: &str, tls: bool) -> TestIssuer {
        let path = path.trim_end_matches('/').to_owned();
        assert!(
            path.is_empty() || path.starts_with('/'),
            "path must start with /"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{addr}{path}");
        let keys = Keys {
            rsa: vec![Arc::new(RsaKey::generate("rsa-1".to_owned()))],
            ec: Arc::new(EcKey::generate("ec-1".to_owned())),
            ed: Arc::new(EdKey::generate("ed-1".to_owned())),
            foreign_rsa: None,
            foreign_ec: Arc::new(EcKey::generate("ec-1".to_owned())),
            generation: 1,
        };
        let shared = Arc::new(Shared {
            url,
            keys: Mutex::new(keys),
            discovery_issuer: Mutex::new(None),
            jwks_uri_override: Mutex::new(None),
            failure: Mutex::new(None),
            discovery_redirect: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let routes = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(Arc::clone(&shared));
        let app = if path.is_empty() {
            routes
        } else {
            Router::new().nest(&path, routes)
        };
        let (server, ca_pem) = if tls {
            let (acceptor, ca_pem) = tls_acceptor();
            (
                tokio::spawn(serve_tls(listener, acceptor, app)),
                Some(ca_pem),
            )
        } else {
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (server, None)
        };
        TestIssuer {
            shared,
            server,
            ca_pem,
        }
    }

    /// The CA certificate (PEM) of a [`start_tls`](Self::start_tls) issuer.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The issuer identifier (`iss`), e.g. `http://127.0.0.1:41234`.
    pub fn issuer_url(&self) -> String {
        self.shared.url.clone()
    }

    /// The JWKS URL announced by discovery.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.shared.url)
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetch_count(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetch_count(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// The kid of the current RSA signing key.
    pub fn current_kid(&self) -> String {
        self.keys().rsa.last().expect("an RSA key").kid.clone()
    }

    /// The kid of the ES256 key.
    pub fn ec_kid(&self) -> String {
        self.keys().ec.kid.clone()
    }

    /// The JWKS currently published (text), e.g. for a `jwks_file` or a static issuer.
    pub fn jwks_json(&self) -> String {
        jwks_document(&self.keys()).to_string()
    }

    /// The current RSA public key as SPKI PEM (what an attacker would use as an HMAC secret).
    pub fn public_key_pem(&self) -> String {
        self.keys()
            .rsa
            .last()
            .expect("an RSA key")
            .public_pem
            .clone()
    }

    /// Signs `claims` with RS256 and the current kid.
    pub fn sign(&self, claims: Value) -> String {
        self.sign_with(claims, SignOptions::default())
    }

    /// Signs `claims` as the options say.
    pub fn sign_with(&self, claims: Value, opts: SignOptions) -> String {
        let (rsa, ec, ed) = {
            let mut keys = self.keys();
            let rsa = if opts.foreign_key && opts.alg.is_rsa() {
                if keys.foreign_rsa.is_none() {
                    let kid = keys.rsa.last().expect("an RSA key").kid.clone();
                    keys.foreign_rsa = Some(Arc::new(RsaKey::generate(kid)));
                }
                Arc::clone(keys.foreign_rsa.as_ref().expect("just set"))
            } else {
                Arc::clone(keys.rsa.last().expect("an RSA key"))
            };
            let ec = if opts.foreign_key {
                Arc::clone(&keys.foreign_ec)
            } else {
                Arc::clone(&keys.ec)
            };
            if opts.foreign_key && opts.alg == Alg::EdDSA {
                panic!("foreign EdDSA key not supported by the test issuer");
            }
            (rsa, ec, Arc::clone(&keys.ed))
        };
        let own_kid = match opts.alg {
            Alg::ES256 => self.keys().ec.kid.clone(),
            Alg::EdDSA => ed.kid.clone(),
            _ => self.current_kid(),
        };
        let mut header = Map::new();
        header.insert("alg".to_owned(), json!(opts.alg.name()));
        if let Some(typ) = &opts.typ {
            header.insert("typ".to_owned(), json!(typ));
        }
        match &opts.kid {
            Kid::Current => {
                header.insert("kid".to_owned(), json!(own_kid));
            }
            Kid::Omit => {}
            Kid::Custom(k) => {
                header.insert("kid".to_owned(), json!(k));
            }
        }
        header.extend(opts.extra_header.clone());
        let message = signing_input(&Value::Object(header), &claims);
        let signature = match opts.alg {
            Alg::ES256 => ec.sign(message.as_bytes()),
            Alg::EdDSA => ed.sign(message.as_bytes()),
            alg => rsa.sign(alg, message.as_bytes()),
        };
        format!("{message}.{signature}")
    }

    /// A new RSA key with a new kid becomes the signing key and is published. The old key is
    /// kept in the JWKS when `keep_old`, else removed.
    pub fn rotate_keep_old(&self, keep_old: bool) -> String {
        let kid = {
            let keys = self.keys();
            format!("rsa-{}", keys.generation + 1)
        };
        let key = Arc::new(RsaKey::generate(kid.clone()));
        let mut keys = self.keys();
        keys.generation += 1;
        if !keep_old {
            keys.rsa.clear();
        }
        keys.rsa.push(key);
        kid
    }

    /// [`rotate_keep_old`](Self::rotate_keep_old) removing the old key. Returns the new kid.
    pub fn rotate(&self) -> String {
        self.rotate_keep_old(false)
    }

    /// Serves `issuer` in the discovery document instead of the real URL (`None` restores).
    pub fn set_discovery_issuer(&self, issuer: Option<String>) {
        *self.shared.discovery_issuer.lock().unwrap() = issuer;
    }

    /// Serves `jwks_uri` in the discovery document instead of the real one (`None` restores).
    pub fn set_jwks_uri(&self, jwks_uri: Option<String>) {
        *self.shared.jwks_uri_override.lock().unwrap() = jwks_uri;
    }

    /// Makes discovery and JWKS answer `status` (`None` restores normal service).
    pub fn set_failure(&self, status: Option<StatusCode>) {
        *self.shared.failure.lock().unwrap() = status;
    }

    /// Makes discovery redirect (302) to `location` (`None` restores).
    pub fn set_discovery_redirect(&self, location: Option<String>) {
        *self.shared.discovery_redirect.lock().unwrap() = location;
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.url)
    }

    // ---- hostile tokens -------------------------------------------------------------------

    /// `alg: none`, empty signature, current kid.
    pub fn token_alg_none(&self, claims: Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT", "kid": self.current_kid()});
        format!("{}.", signing_input(&header, &claims))
    }

    /// HS256 whose HMAC secret is the issuer's RSA public key (PEM): the classic key-confusion
    /// attack.
    pub fn token_hs256_with_public_key(&self, claims: Value) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": self.current_kid()});
        let message = signing_input(&header, &claims);
        let key = jsonwebtoken::EncodingKey::from_secret(self.public_key_pem().as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{message}.{sig}")
    }

    /// RS256 by a key that is not in the JWKS, with the header naming the real current kid.
    pub fn token_signed_by_unknown_key(&self, claims: Value) -> String {
        self.sign_with(
            claims,
            SignOptions {
                foreign_key: true,
                ..SignOptions::default()
            },
        )
    }

    /// RS256 by the current key, but the header names a kid the JWKS does not have.
    pub fn token_with_unknown_kid(&self, claims: Value) -> String {
        self.sign_with(
            claims,
            SignOptions {
                kid: Kid::Custom("no-such-kid".to_owned()),
                ..SignOptions::default()
            },
        )
    }

    // ---- claim shapes ---------------------------------------------------------------------

    /// Claims shaped like a GitHub Actions token from this issuer (strings for ids and
    /// booleans; `nbf` before `iat`; five-minute lifetime).
    pub fn github_claims(&self, audience: &str, now: i64) -> Value {
        json!({
            "jti": format!("gh-{now}-{}", rand::random::<u32>()),
            "sub": "repo:octo-org/octo-repo:environment:prod",
            "environment": "prod",
            "aud": audience,
            "ref": "refs/heads/main",
            "sha": "15a5ebfa3fb5ddf10c4b4250e14496bec7f03a56",
            "repository": "octo-org/octo-repo",
            "repository_owner": "octo-org",
            "repository_owner_id": "46576199",
            "repository_id": "1104004353",
            "repository_visibility": "private",
            "actor": "octocat",
            "actor_id": "1492007",
            "run_id": "19677834613",
            "run_number": "4",
            "run_attempt": "1",
            "runner_environment": "github-hosted",
            "workflow": "CI",
            "workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
            "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
            "head_ref": "",
            "base_ref": "",
            "event_name": "push",
            "ref_type": "branch",
            "ref_protected": "false",
            "iss": self.issuer_url(),
            "nbf": now - 300,
            "iat": now,
            "exp": now + 300,
        })
    }

    /// Claims shaped like a GitLab CI `id_tokens` token from this issuer (`ref` is the bare
    /// branch, `ref_path` the full ref, `runner_id` a number, `nbf = iat - 5`).
    pub fn gitlab_claims(&self, audience: &str, now: i64) -> Value {
        json!({
            "namespace_id": "72", "namespace_path": "my-group",
            "project_id": "20", "project_path": "my-group/my-project",
            "user_id": "1", "user_login": "sample-user", "user_access_level": "owner",
            "pipeline_id": "574", "pipeline_source": "push", "job_id": "302",
            "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main",
            "ref_protected": "true",
            "environment": "production", "environment_protected": "true",
            "deployment_tier": "production",
            "runner_id": 1, "runner_environment": "self-hosted",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "project_visibility": "private",
            "jti": format!("gl-{now}-{}", rand::random::<u32>()),
            "iss": self.issuer_url(),
            "iat": now, "nbf": now - 5, "exp": now + 3600,
            "sub": "project_path:my-group/my-project:ref_type:branch:ref:main",
            "aud": audience,
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.shared.keys.lock().unwrap()
    }
}

/// `base64url(header).base64url(claims)`.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn jwks_document(keys: &Keys) -> Value {
    let mut list: Vec<Value> = keys.rsa.iter().map(|k| k.jwk()).collect();
    list.push(keys.ec.jwk());
    list.push(keys.ed.jwk());
    json!({ "keys": list })
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = *shared.failure.lock().unwrap() {
        return status.into_response();
    }
    if let Some(location) = shared.discovery_redirect.lock().unwrap().clone() {
        return (
            StatusCode::FOUND,
            [(axum::http::header::LOCATION, location)],
        )
            .into_response();
    }
    let issuer = shared
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| shared.url.clone());
    let jwks_uri = shared
        .jwks_uri_override
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("{}/jwks", shared.url));
    // Shaped like GitHub's document: no authorization_endpoint.
    Json(json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "subject_types_supported": ["public", "pairwise"],
        "response_types_supported": ["id_token"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "scopes_supported": ["openid"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = *shared.failure.lock().unwrap() {
        return status.into_response();
    }
    let doc = jwks_document(&shared.keys.lock().unwrap());
    Json(doc).into_response()
}

/// A TLS acceptor for 127.0.0.1/localhost with a certificate from a fresh CA; returns the CA
/// certificate as PEM.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test issuer CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_cert.pem(),
    )
}

/// Accept loop: TLS handshake per connection, then hyper serving the axum router.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}
