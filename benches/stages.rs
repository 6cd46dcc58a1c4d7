//! Micro-benchmarks of the exchange's in-process stages, each in isolation and through the
//! crate's public API, so that a regression in `benches/exchange.rs` (the end-to-end load
//! test) can be pinned on the stage that caused it.
//!
//! ```sh
//! cargo bench --bench stages               # everything: about a minute on 2 cores
//! cargo bench --bench stages -- verify/    # one group (criterion filter)
//! ```
//!
//! What each benchmark measures (pipeline order: resolve → verify → decide → prepare → issue
//! → commit → answer):
//!
//! - `verify/rs256`, `verify/es256`: [`Verifier::verify`] of a GitHub-Actions-shaped ID token
//!   (the claim set of a real `prod` deployment job) against a static issuer whose JWKS holds
//!   two keys: size check, header and duplicate-member checks, issuer lookup, the
//!   `openidconnect` parse and signature check, claim checks, replay digest.
//!   `verify/{rs256,es256}_raw_rustcrypto` verify the signature alone with the RustCrypto
//!   crates `openidconnect` uses (through `jsonwebtoken`: `rsa` 0.9, the same as
//!   `openidconnect`'s, and `p256` 0.13 where `openidconnect` has 0.14),
//!   `verify/{rs256,es256}_raw_ring` with `ring`:
//!   the gap between `verify/x` and `verify/x_raw_rustcrypto` is the verifier's own overhead,
//!   the gap between the two raw figures is the price of the crypto backend.
//! - `decide/policy/allowed`, `decide/policy/denied`: [`Environment::evaluate`] of those
//!   claims against a policy shaped like `policies/prod.toml` (guardrails, then the role's
//!   match); the denial fails on the role's last condition, so every condition runs.
//! - `issue/token`: a broker token ([`mint::token::mint`], 256 random bits) and its keyed
//!   digest ([`crypto::token_digest`]), as the token minter stores it.
//! - `issue/jwt`: [`JwtSigner::sign`] (ES256, `ring`) of the claim set the JWT minter builds.
//! - `seal/lease`: AES-256-GCM ([`Sealer::seal`]) of the lease details the pipeline seals
//!   (source claims and masked credentials, about 1.5 KB of JSON).
//! - `mask/credential`: [`MaskedCredential::new`] (mask + keyed HMAC fingerprint) of a broker
//!   token.
//! - `audit/append`: [`AuditLog::append`] of an issued exchange's record to `/dev/null`:
//!   hand-off to the writer thread, rendering, HMAC chain, write, answer. No fsync cost.
//! - `ledger/commit/1`, `ledger/commit/32`: [`Ledger::submit`] of one exchange alone, and of
//!   32 concurrent exchanges, each its own task (time until all 32 are answered; the ledger
//!   may commit them in more than one batch), on a real SQLite store and a real audit file
//!   under `target/tmp`. Each exchange has a fresh replay key, lease and credential ids, a
//!   sealed lease, its indexed claims and two credentials (token and JWT). **Dominated by the disk**: each batch pays the audit fdatasync
//!   and SQLite's WAL commit fsync, so these figures say more about the machine's storage
//!   than about the code; compare them only on the same machine.
//! - `exchange/in_process`: [`App::exchange`] end to end without HTTP (resolve, verify RS256,
//!   decide, prepare, issue a broker token and a JWT, seal, commit through the ledger with
//!   both fsyncs, answer), one exchange at a time with a fresh token each. Tokens are signed
//!   before the timer starts (RSA signing is slow). Disk-dominated like `ledger/commit/1`.
//!
//! Figures are for regression hunting on one machine, not for comparison across machines.
#![allow(
    unreachable_pub,
    missing_docs,
    let_underscore_drop,
    clippy::print_stdout,
    reason = "a test or benchmark harness: its items are its own, and it reports on standard output"
)]
#![allow(clippy::disallowed_types)] // a benchmark measures wall-clock time
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use jobpass::app::App;
use jobpass::audit::{AuditKey, AuditLog, MaskedCredential};
use jobpass::clock::{SharedClock, SystemClock};
use jobpass::config::Config;
use jobpass::crypto::keyring::Sealer;
use jobpass::crypto::{Keyring, RootKey, random, token_digest};
use jobpass::exchange::audit::{ExchangeAudit, Verdict};
use jobpass::exchange::ledger::{Entry, Ledger};
use jobpass::exchange::{ACTOR_CLAIMS, ExchangeRequest, token_actor};
use jobpass::mint::Kind;
use jobpass::mint::jwt::JwtSigner;
use jobpass::oidc::{VerifiedToken, Verifier, VerifierOptions};
use jobpass::policy::{
    Environment, Grant, GrantKind, PolicySet, ServerCapabilities, UnsupportedGrant,
};
use jobpass::store::{CredentialRow, LeaseRow, NewLease, ReplaySlot, Store};
use jobpass::{crypto, mint};
use ring::signature::{self, KeyPair as _};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Map, Value, json};

/// GitHub Actions' issuer, trusted by the benchmark policy.
const GITHUB: &str = "https://token.actions.githubusercontent.com";
/// A second static issuer, signing ES256.
const EC_ISSUER: &str = "https://ci.example.com";
/// The audience the benchmark environment expects.
const AUDIENCE: &str = "https://jobpass.bench";
const ENV: &str = "prod";
const ROLE: &str = "deploy-web";

/// The benchmark environment: the shape of `policies/prod.toml` (guardrails, a deployment
/// role with a broker token and a JWT, a second role). The x509 grant of the real file is
/// left out: certificate issuance is a stage of its own, not benchmarked here.
const POLICY: &str = r#"
[environment]
name = "prod"
issuers = ["https://token.actions.githubusercontent.com", "https://ci.example.com"]
audience = "https://jobpass.bench"
max_ttl = "1h"

[environment.require]
ref = "refs/heads/main"
repository_owner = "octo-org"
runner_environment = "github-hosted"

[[role]]
name = "deploy-web"
ttl = "15m"
[role.match]
repository = "octo-org/octo-repo"
environment = "prod"
event_name = ["push", "workflow_dispatch"]
job_workflow_ref = "octo-org/octo-repo/.github/workflows/*@refs/heads/main"

[[role.grant]]
name = "api"
kind = "token"
secrets = ["prod/web/*"]

[[role.grant]]
name = "deploy"
kind = "jwt"
audience = "https://deploy.internal"
claims = { scope = "deploy:web" }

[[role]]
name = "read-config"
ttl = "5m"
[role.match]
repository = "octo-org/*"
repository_visibility = "private"

[[role.grant]]
name = "config"
kind = "token"
secrets = ["prod/config/public-*"]
"#;

/// The claims of a GitHub Actions ID token for a `prod` deployment from `main` (numbers and
/// booleans are strings, as GitHub sends them), issued now, with a unique `jti`.
fn github_claims(iss: &str, now: i64) -> Map<String, Value> {
    let jti = hex::encode(random::bytes::<16>().unwrap());
    let v = json!({
        "jti": jti,
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": AUDIENCE,
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
        "workflow_sha": "15a5ebfa3fb5ddf10c4b4250e14496bec7f03a56",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "job_workflow_sha": "15a5ebfa3fb5ddf10c4b4250e14496bec7f03a56",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "ref_protected": "false",
        "check_run_id": "56363837828",
        "iss": iss,
        "nbf": now - 300,
        "iat": now,
        "exp": now + 600,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// An RS256 signing key of a test issuer, with its public JWK.
struct RsaIssuerKey {
    kid: String,
    /// Signs with `ring` (several times faster than the `rsa` crate).
    pair: signature::RsaKeyPair,
    /// RustCrypto (`rsa`) verification key, from the JWK's components.
    decoding: jsonwebtoken::DecodingKey,
    /// `ring` verification key.
    ring_public: signature::RsaPublicKeyComponents<Vec<u8>>,
    jwk: Value,
}

impl RsaIssuerKey {
    fn generate(kid: &str) -> Self {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = key.to_pkcs1_der().unwrap();
        let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
        let (n64, e64) = (B64.encode(&n), B64.encode(&e));
        RsaIssuerKey {
            kid: kid.to_owned(),
            pair: signature::RsaKeyPair::from_der(der.as_bytes()).unwrap(),
            decoding: jsonwebtoken::DecodingKey::from_rsa_components(&n64, &e64).unwrap(),
            ring_public: signature::RsaPublicKeyComponents { n, e },
            jwk: json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": n64, "e": e64}),
        }
    }

    /// A compact RS256 JWT with GitHub's header shape (`typ`, `alg`, `kid`, `x5t`).
    fn sign(&self, claims: &Map<String, Value>) -> String {
        let x5t = B64.encode(&crypto::sha256(self.kid.as_bytes())[..20]);
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid, "x5t": x5t});
        compact(&header, claims, |msg| {
            let mut sig = vec![0; self.pair.public().modulus_len()];
            self.pair
                .sign(
                    &signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    msg,
                    &mut sig,
                )
                .unwrap();
            sig
        })
    }
}

/// An ES256 signing key of a test issuer, with its public JWK.
struct EcIssuerKey {
    kid: String,
    pair: signature::EcdsaKeyPair,
    /// RustCrypto (`p256`) verification key.
    decoding: jsonwebtoken::DecodingKey,
    /// Uncompressed public point, for `ring`.
    public: Vec<u8>,
    jwk: Value,
}

impl EcIssuerKey {
    fn generate(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let (x, y) = (B64.encode(&public[1..33]), B64.encode(&public[33..65]));
        EcIssuerKey {
            kid: kid.to_owned(),
            pair,
            decoding: jsonwebtoken::DecodingKey::from_ec_components(&x, &y).unwrap(),
            public,
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y}),
        }
    }

    fn sign(&self, claims: &Map<String, Value>) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        compact(&header, claims, |msg| {
            let rng = ring::rand::SystemRandom::new();
            self.pair.sign(&rng, msg).unwrap().as_ref().to_vec()
        })
    }
}

/// A compact JWS: `header.payload` signed by `sign`.
fn compact(
    header: &Value,
    claims: &Map<String, Value>,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    let mut out = B64.encode(header.to_string());
    out.push('.');
    out.push_str(&B64.encode(serde_json::to_vec(claims).unwrap()));
    let sig = sign(out.as_bytes());
    out.push('.');
    out.push_str(&B64.encode(sig));
    out
}

/// A JWKS document of these keys.
fn jwks(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// (signing input, raw signature) of a compact JWS.
fn split_signed(token: &str) -> (&str, Vec<u8>) {
    let (signed, sig) = token.rsplit_once('.').unwrap();
    (signed, B64.decode(sig).unwrap())
}

/// The policy capabilities of the benchmark server: its two issuers, no PostgreSQL.
struct BenchCaps;

impl ServerCapabilities for BenchCaps {
    fn knows_issuer(&self, url: &str) -> bool {
        url == GITHUB || url == EC_ISSUER
    }

    fn supports_grant(&self, grant: &Grant) -> Result<(), UnsupportedGrant> {
        match &grant.kind {
            GrantKind::Postgres { database, .. } => {
                Err(UnsupportedGrant::PostgresTarget(database.clone()))
            }
            _ => Ok(()),
        }
    }
}

/// Writes the benchmark policy into `dir`.
fn write_policies(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("prod.toml"), POLICY).unwrap();
}

/// Everything the CPU-only stages share: issuer keys, a verifier, the policy, a verified token.
struct Fixture {
    rt: tokio::runtime::Runtime,
    clock: SharedClock,
    rsa: RsaIssuerKey,
    ec: EcIssuerKey,
    verifier: Verifier,
    policies: PolicySet,
    trusted: Vec<String>,
    /// The outcome of verifying a GitHub token, as later stages see it.
    verified: VerifiedToken,
    audit_key: AuditKey,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let rsa = RsaIssuerKey::generate("gh-2026-11");
        // GitHub publishes more than one key; the token names the second.
        let rsa_other = RsaIssuerKey::generate("gh-2026-05");
        let ec = EcIssuerKey::generate("ci-ec-1");
        let ec_other = EcIssuerKey::generate("ci-ec-0");
        let verifier = Verifier::new(&[], clock.clone(), VerifierOptions::default()).unwrap();
        verifier
            .add_static_issuer(GITHUB, &jwks(&[&rsa_other.jwk, &rsa.jwk]))
            .unwrap();
        verifier
            .add_static_issuer(EC_ISSUER, &jwks(&[&ec_other.jwk, &ec.jwk]))
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path());
        let policies = PolicySet::load_dir(dir.path(), &BenchCaps).unwrap();
        let trusted = policies.environment(ENV).unwrap().issuers.clone();

        let token = rsa.sign(&github_claims(GITHUB, clock.unix()));
        let verified = rt
            .block_on(verifier.verify(&token, &trusted, AUDIENCE))
            .unwrap();
        Fixture {
            rt,
            clock,
            rsa,
            ec,
            verifier,
            policies,
            trusted,
            verified,
            audit_key: AuditKey::from_bytes(random::bytes::<32>().unwrap()),
        }
    }

    fn env(&self) -> &Environment {
        self.policies.environment(ENV).unwrap()
    }

    /// The masked credentials of a `deploy-web` lease (a broker token and a JWT).
    fn masked_credentials(&self) -> Vec<MaskedCredential> {
        let token = mint::token::mint().unwrap();
        let (signer, _) = JwtSigner::generate().unwrap();
        let jwt = signer.sign(&jwt_claims(&self.verified, 0)).unwrap();
        vec![
            MaskedCredential::new(&self.audit_key, "api", "token", token.expose_secret()),
            MaskedCredential::new(&self.audit_key, "deploy", "jwt", &jwt),
        ]
    }

    /// The sealed lease details of the pipeline: source claims and masked credentials.
    fn lease_details(&self, masked: &[MaskedCredential]) -> Vec<u8> {
        let now = self.clock.unix_millis();
        json!({
            "claims": Value::Object(self.verified.claims.clone()),
            "credentials": masked.iter().map(|m| json!({
                "id": random::time_ordered_id("crd_", now).unwrap(),
                "name": m.name, "kind": m.kind, "masked": m.masked, "fingerprint": m.fingerprint,
            })).collect::<Vec<_>>(),
            "postgres": [],
        })
        .to_string()
        .into_bytes()
    }

    /// The audit record of an issued `deploy-web` exchange, filled in stage by stage.
    fn exchange_audit(&self, lease_id: &str, masked: Vec<MaskedCredential>) -> ExchangeAudit {
        let mut audit = ExchangeAudit::new(self.policies.version());
        audit.resolved(ENV, ROLE);
        audit.token(token_actor(&self.verified), self.verified.jti.as_deref());
        audit.lease(lease_id, masked, self.clock.unix() + 900);
        audit
    }
}

/// The claim set the JWT minter signs for a `deploy-web` lease.
fn jwt_claims(src: &VerifiedToken, now: i64) -> Value {
    let mut src_claims = Map::new();
    for name in ACTOR_CLAIMS {
        if let Some(v) = src.claims.get(*name) {
            src_claims.insert((*name).to_string(), v.clone());
        }
    }
    src_claims.insert("iss".into(), Value::String(src.issuer.clone()));
    json!({
        "scope": "deploy:web",
        "iss": "https://jobpass.bench/v1/envs/prod",
        "sub": src.subject,
        "aud": "https://deploy.internal",
        "iat": now, "nbf": now, "exp": now + 900,
        "jti": "crd_0199c1e4a3b07f3a9d2c4e5f6a7b8c9d",
        "env": ENV, "role": ROLE,
        "lease_id": "lse_0199c1e4a3b07f3a9d2c4e5f6a7b8c9e",
        "src": src_claims,
    })
}

fn cpu_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(40);
    g
}

fn bench_verify(c: &mut Criterion, f: &Fixture) {
    let now = f.clock.unix();
    let rs_token = f.rsa.sign(&github_claims(GITHUB, now));
    let ec_token = f.ec.sign(&github_claims(EC_ISSUER, now));
    let mut g = cpu_group(c, "verify");
    g.bench_function("rs256", |b| {
        b.iter(|| {
            f.rt.block_on(
                f.verifier
                    .verify(black_box(&rs_token), &f.trusted, AUDIENCE),
            )
            .unwrap()
        });
    });
    g.bench_function("es256", |b| {
        b.iter(|| {
            f.rt.block_on(
                f.verifier
                    .verify(black_box(&ec_token), &f.trusted, AUDIENCE),
            )
            .unwrap()
        });
    });

    // The signature alone, as a floor for the two above.
    let (rs_signed, rs_sig) = split_signed(&rs_token);
    let rs_sig64 = B64.encode(&rs_sig);
    g.bench_function("rs256_raw_rustcrypto", |b| {
        b.iter(|| {
            assert!(
                jsonwebtoken::crypto::verify(
                    black_box(&rs_sig64),
                    rs_signed.as_bytes(),
                    &f.rsa.decoding,
                    jsonwebtoken::Algorithm::RS256,
                )
                .unwrap()
            );
        });
    });
    g.bench_function("rs256_raw_ring", |b| {
        b.iter(|| {
            f.rsa
                .ring_public
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    black_box(rs_signed.as_bytes()),
                    &rs_sig,
                )
                .unwrap();
        });
    });
    let (ec_signed, ec_sig) = split_signed(&ec_token);
    let ec_sig64 = B64.encode(&ec_sig);
    g.bench_function("es256_raw_rustcrypto", |b| {
        b.iter(|| {
            assert!(
                jsonwebtoken::crypto::verify(
                    black_box(&ec_sig64),
                    ec_signed.as_bytes(),
                    &f.ec.decoding,
                    jsonwebtoken::Algorithm::ES256,
                )
                .unwrap()
            );
        });
    });
    let ec_public =
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &f.ec.public);
    g.bench_function("es256_raw_ring", |b| {
        b.iter(|| {
            ec_public
                .verify(black_box(ec_signed.as_bytes()), &ec_sig)
                .unwrap();
        });
    });
    g.finish();
}

fn bench_decide(c: &mut Criterion, f: &Fixture) {
    let env = f.env();
    let allowed = f.verified.claims.clone();
    // Passes the guardrails and every condition but the role's last one.
    let mut denied = allowed.clone();
    denied.insert(
        "job_workflow_ref".into(),
        json!("octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/feature"),
    );
    assert!(env.evaluate(Some(ROLE), &allowed).is_ok());
    assert!(env.evaluate(Some(ROLE), &denied).is_err());
    let mut g = cpu_group(c, "decide/policy");
    g.bench_function("allowed", |b| {
        b.iter(|| {
            env.evaluate(black_box(Some(ROLE)), black_box(&allowed))
                .unwrap()
        });
    });
    g.bench_function("denied", |b| {
        b.iter(|| {
            env.evaluate(black_box(Some(ROLE)), black_box(&denied))
                .unwrap_err()
        });
    });
    g.finish();
}

fn bench_issue(c: &mut Criterion, f: &Fixture) {
    let token_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &random::bytes::<32>().unwrap());
    let (signer, _) = JwtSigner::generate().unwrap();
    let claims = jwt_claims(&f.verified, f.clock.unix());
    let mut g = cpu_group(c, "issue");
    g.bench_function("token", |b| {
        b.iter(|| {
            let value = mint::token::mint().unwrap();
            let digest = token_digest(&token_key, value.expose_secret());
            (value, digest)
        });
    });
    g.bench_function("jwt", |b| {
        b.iter(|| signer.sign(black_box(&claims)).unwrap());
    });
    g.finish();
}

fn bench_seal_and_mask(c: &mut Criterion, f: &Fixture, sealer: &Sealer) {
    let masked = f.masked_credentials();
    let details = f.lease_details(&masked);
    let lease_id = random::time_ordered_id("lse_", f.clock.unix_millis()).unwrap();
    let mut g = cpu_group(c, "seal");
    g.throughput(Throughput::Bytes(details.len() as u64));
    eprintln!("seal/lease: {} bytes of lease details", details.len());
    g.bench_function("lease", |b| {
        b.iter(|| {
            sealer
                .seal("leases", &lease_id, black_box(&details))
                .unwrap()
        });
    });
    g.finish();

    let value = mint::token::mint().unwrap();
    let mut g = cpu_group(c, "mask");
    g.bench_function("credential", |b| {
        b.iter(|| {
            MaskedCredential::new(
                &f.audit_key,
                "api",
                "token",
                black_box(value.expose_secret()),
            )
        });
    });
    g.finish();
}

fn bench_audit(c: &mut Criterion, f: &Fixture) {
    let log = AuditLog::open(
        Path::new("/dev/null"),
        f.audit_key.clone(),
        f.clock.clone(),
        None,
        false,
    )
    .unwrap();
    let lease_id = random::time_ordered_id("lse_", f.clock.unix_millis()).unwrap();
    let record = f
        .exchange_audit(&lease_id, f.masked_credentials())
        .record(&Verdict::Issued);
    let mut g = cpu_group(c, "audit");
    g.bench_function("append", |b| {
        b.iter_batched(
            || record.clone(),
            |ev| f.rt.block_on(log.append(ev)).unwrap(),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

/// A real SQLite store, keyring and audit file under `target/tmp`, and a ledger over them.
struct Disk {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    keyring: Arc<Keyring>,
    ledger: Ledger,
}

impl Disk {
    fn new(f: &Fixture) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Not /tmp, which may be a tmpfs where fsync costs nothing.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (keyring, ledger) = rt.block_on(async {
            let url = format!("sqlite://{}", dir.path().join("jobpass.db").display());
            let store = Store::open(&url).await.unwrap();
            let keyring = Arc::new(Keyring::new(
                zeroize::Zeroizing::new(random::bytes::<32>().unwrap()),
                store.clone(),
                f.clock.clone(),
            ));
            keyring.prepare(ENV).await.unwrap();
            let audit = AuditLog::open(
                &dir.path().join("audit.log"),
                f.audit_key.clone(),
                f.clock.clone(),
                None,
                false,
            )
            .unwrap();
            let ledger = Ledger::start(store, audit, keyring.clone(), f.clock.clone());
            (keyring, ledger)
        });
        Disk {
            rt,
            _dir: dir,
            keyring,
            ledger,
        }
    }

    fn sealer(&self) -> Sealer {
        self.rt.block_on(self.keyring.sealer(ENV)).unwrap()
    }
}

/// What a `deploy-web` exchange hands the ledger, with fresh ids and a fresh replay key.
struct EntryTemplate {
    claims: Vec<(String, String)>,
    masked: Vec<MaskedCredential>,
    details: Vec<u8>,
}

impl EntryTemplate {
    fn new(f: &Fixture) -> Self {
        // The searchable claims the pipeline keeps: scalar values, time claims and aud left out.
        let claims = f
            .verified
            .claims
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "exp" | "iat" | "nbf" | "aud"))
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k.clone(), s.clone())),
                Value::Number(n) => Some((k.clone(), n.to_string())),
                Value::Bool(b) => Some((k.clone(), b.to_string())),
                _ => None,
            })
            .collect();
        let masked = f.masked_credentials();
        let details = f.lease_details(&masked);
        EntryTemplate {
            claims,
            masked,
            details,
        }
    }

    fn entry(&self, f: &Fixture, sealer: &Sealer) -> Entry {
        let now = f.clock.unix();
        let millis = f.clock.unix_millis();
        let expires_at = now + 900;
        let lease_id = random::time_ordered_id("lse_", millis).unwrap();
        let (key_version, sealed) = sealer.seal("leases", &lease_id, &self.details).unwrap();
        let credential =
            |name: &str, kind: Kind, token_hash: Option<Vec<u8>>, scope: &str| CredentialRow {
                id: random::time_ordered_id("crd_", millis).unwrap(),
                lease_id: lease_id.clone(),
                env: ENV.into(),
                name: name.into(),
                kind,
                token_hash,
                scope: scope.into(),
                expires_at,
            };
        let credentials = vec![
            credential(
                "api",
                Kind::Token,
                Some(random::bytes::<32>().unwrap().to_vec()),
                "[\"prod/web/*\"]",
            ),
            credential("deploy", Kind::Jwt, None, "[]"),
        ];
        Entry {
            env: ENV.into(),
            slot: ReplaySlot {
                key: random::bytes::<32>().unwrap(),
                issuer: f.verified.issuer.clone(),
                expires_at: f.verified.expires_at + 60,
            },
            lease: NewLease {
                lease: LeaseRow {
                    id: lease_id.clone(),
                    env: ENV.into(),
                    role: ROLE.into(),
                    issuer: f.verified.issuer.clone(),
                    subject: f.verified.subject.clone(),
                    policy_version: f.policies.version().into(),
                    issued_at: now,
                    expires_at,
                    revoked_at: None,
                    revoke_reason: None,
                    key_version,
                    sealed,
                    revocation: None,
                    revocation_attempts: 0,
                },
                claims: self.claims.clone(),
                credentials,
            },
            intents: Vec::new(),
            audit: f.exchange_audit(&lease_id, self.masked.clone()),
        }
    }
}

fn bench_ledger(c: &mut Criterion, f: &Fixture, disk: &Disk, sealer: &Sealer) {
    let template = EntryTemplate::new(f);
    let mut g = c.benchmark_group("ledger/commit");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    for n in [1usize, 32] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(n.to_string(), |b| {
            b.iter_custom(|iters| {
                disk.rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let entries: Vec<Entry> =
                            (0..n).map(|_| template.entry(f, sealer)).collect();
                        let start = Instant::now();
                        let mut tasks = tokio::task::JoinSet::new();
                        for entry in entries {
                            let ledger = disk.ledger.clone();
                            tasks.spawn(async move { ledger.submit(entry).await });
                        }
                        while let Some(reply) = tasks.join_next().await {
                            reply.unwrap().result.unwrap();
                        }
                        total += start.elapsed();
                    }
                    total
                })
            });
        });
    }
    g.finish();
}

/// A whole broker state (`App`) whose GitHub issuer has a static `jwks_file`.
struct InProcess {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    app: Arc<App>,
}

impl InProcess {
    fn new(f: &Fixture) -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let d = dir.path();
        write_policies(&d.join("policies"));
        std::fs::write(d.join("github-jwks.json"), jwks(&[&f.rsa.jwk])).unwrap();
        std::fs::write(d.join("ec-jwks.json"), jwks(&[&f.ec.jwk])).unwrap();
        RootKey::generate_file(&d.join("root.key")).unwrap();
        let config = format!(
            r#"
listen = "127.0.0.1:0"
public_url = "https://jobpass.bench"
store = "sqlite://{store}"
policies = "policies"
leeway = "60s"

[keys]
root_key_file = "root.key"

[audit]
file = "audit.log"

[limits]
# Capacity is measured here, not the limits: every rate limit is off.
exchange_per_ip = {{ per_second = 0 }}
exchange_per_subject = {{ per_second = 0 }}
exchange_global = {{ per_second = 0 }}
read_per_ip = {{ per_second = 0 }}
read_per_subject = {{ per_second = 0 }}
read_global = {{ per_second = 0 }}

[[issuer]]
url = "{GITHUB}"
jwks_file = "github-jwks.json"

[[issuer]]
url = "{EC_ISSUER}"
jwks_file = "ec-jwks.json"
"#,
            store = d.join("jobpass.db").display(),
        );
        std::fs::write(d.join("jobpass.toml"), config).unwrap();
        let config =
            Config::load_with_env(Some(&d.join("jobpass.toml")), std::iter::empty()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = rt
            .block_on(App::build(config, f.clock.clone(), None))
            .unwrap();
        InProcess { rt, _dir: dir, app }
    }

    fn request(token: String) -> ExchangeRequest {
        ExchangeRequest {
            token: SecretString::from(token),
            environment: ENV.into(),
            role: Some(ROLE.into()),
            source: None,
        }
    }
}

fn bench_exchange(c: &mut Criterion, f: &Fixture, broker: &InProcess) {
    // One exchange first: creates the environment's JWT signing key and checks the setup.
    let first = broker.rt.block_on(broker.app.exchange(InProcess::request(
        f.rsa.sign(&github_claims(GITHUB, f.clock.unix())),
    )));
    assert_eq!(first.unwrap().credentials.len(), 2);
    let mut g = c.benchmark_group("exchange");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    g.bench_function("in_process", |b| {
        b.iter_custom(|iters| {
            // Signed outside the measurement (RSA signing is slow).
            let now = f.clock.unix();
            let tokens: Vec<String> = (0..iters)
                .map(|_| f.rsa.sign(&github_claims(GITHUB, now)))
                .collect();
            broker.rt.block_on(async {
                let start = Instant::now();
                for token in tokens {
                    let issued = broker
                        .app
                        .exchange(InProcess::request(token))
                        .await
                        .unwrap();
                    black_box(issued);
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn main() {
    // Fewer bootstrap resamples than the default 100 000: the analysis runs single-threaded
    // (no rayon) and would otherwise take about as long as the measurements.
    let mut c = Criterion::default()
        .nresamples(20_000)
        .configure_from_args();
    let f = Fixture::new();
    bench_verify(&mut c, &f);
    bench_decide(&mut c, &f);
    bench_issue(&mut c, &f);
    let disk = Disk::new(&f);
    let sealer = disk.sealer();
    bench_seal_and_mask(&mut c, &f, &sealer);
    bench_audit(&mut c, &f);
    bench_ledger(&mut c, &f, &disk, &sealer);
    let broker = InProcess::new(&f);
    bench_exchange(&mut c, &f, &broker);
    c.final_summary();
}
