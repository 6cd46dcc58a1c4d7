//! The OIDC issuer: one RSA-2048 key, discovery and JWKS over plain HTTP on loopback, and
//! GitHub-Actions-shaped RS256 tokens minted in parallel.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jobpass::clock::{Clock, SystemClock};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaKeyPair, RsaPublicKeyComponents};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{AUDIENCE, Res};

/// The issuer `http://127.0.0.1:<port>`: its signing key and the documents it serves.
pub struct Issuer {
    key: RsaKeyPair,
    pub public_der: Vec<u8>,
    kid: String,
    url: String,
    jwks: Bytes,
    discovery: Bytes,
}

impl Issuer {
    pub fn new(key_file: Option<&Path>, url: &str) -> Res<Self> {
        let key = match key_file {
            Some(path) => match PrivateKeyDer::from_pem_file(path)? {
                PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                _ => return Err(format!("{}: not an RSA private key", path.display()).into()),
            }
            .map_err(|e| format!("{}: {e}", path.display()))?,
            None => {
                use rsa::pkcs8::EncodePrivateKey;
                let k = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
                RsaKeyPair::from_pkcs8(k.to_pkcs8_der()?.as_bytes()).map_err(|e| e.to_string())?
            }
        };
        let parts = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
        let digest = ring::digest::digest(&ring::digest::SHA256, &parts.n);
        let kid = B64.encode(&digest.as_ref()[..12]);
        let jwks = json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": B64.encode(&parts.n), "e": B64.encode(&parts.e)}]});
        // What GitHub's discovery document holds (no authorization endpoint).
        let discovery = json!({
            "issuer": url, "jwks_uri": format!("{url}/.well-known/jwks"),
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref",
                "repository", "repository_owner", "run_id", "workflow", "job_workflow_ref"],
        });
        Ok(Self {
            public_der: key.public().as_ref().to_vec(),
            key,
            kid,
            url: url.to_string(),
            jwks: Bytes::from(jwks.to_string()),
            discovery: Bytes::from(discovery.to_string()),
        })
    }

    /// `n` unique tokens, signed in parallel on every core.
    pub fn mint(&self, n: usize) -> Res<Vec<String>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let now = u64::try_from(SystemClock.unix())?;
        let run_base = 20_000_000_000 + (now % 1_000_000) * 10_000;
        let chunk = n.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|from| {
                    s.spawn(move || {
                        let rng = SystemRandom::new();
                        (from..(from + chunk).min(n))
                            .map(|i| self.sign(&self.claims(run_base + i as u64, now, &rng)?, &rng))
                            .collect::<Res<Vec<String>>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(n);
            for h in handles {
                out.extend(h.join().map_err(|_| "a minting thread panicked")??);
            }
            Ok(out)
        })
    }

    /// GitHub Actions claims (push to main of octo-org/octo-repo), unique `jti` and `run_id`.
    fn claims(&self, run_id: u64, now: u64, rng: &SystemRandom) -> Res<Value> {
        let r = random_with::<16>(rng)?;
        let jti = format!(
            "{}-{}-{}-{}-{}",
            hex(&r[..4]),
            hex(&r[4..6]),
            hex(&r[6..8]),
            hex(&r[8..10]),
            hex(&r[10..])
        );
        let sha = hex(&random_with::<20>(rng)?);
        let wf = "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main";
        Ok(json!({
            "jti": jti, "sub": "repo:octo-org/octo-repo:ref:refs/heads/main", "aud": AUDIENCE,
            "ref": "refs/heads/main", "sha": sha, "repository": "octo-org/octo-repo",
            "repository_owner": "octo-org", "repository_owner_id": "46576199",
            "repository_id": "1104004353", "repository_visibility": "private",
            "actor": "octocat", "actor_id": "1492007", "run_id": run_id.to_string(),
            "run_number": "4", "run_attempt": "1", "runner_environment": "github-hosted",
            "workflow": "CI", "workflow_ref": wf, "workflow_sha": sha, "job_workflow_ref": wf,
            "job_workflow_sha": sha, "head_ref": "", "base_ref": "", "event_name": "push",
            "ref_type": "branch", "ref_protected": "false", "check_run_id": "56363837828",
            "iss": self.url, "nbf": now - 5, "iat": now, "exp": now + 600,
        }))
    }

    fn sign(&self, claims: &Value, rng: &SystemRandom) -> Res<String> {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        let msg = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, rng, msg.as_bytes(), &mut sig)
            .map_err(|_| "RSA signing failed")?;
        Ok(format!("{msg}.{}", B64.encode(sig)))
    }
}

/// Serves discovery and the JWKS (HTTP/1.1, plain, loopback) until aborted.
pub async fn serve(listener: TcpListener, issuer: Arc<Issuer>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = match req.uri().path() {
                    "/.well-known/openid-configuration" => Some(issuer.discovery.clone()),
                    "/.well-known/jwks" => Some(issuer.jwks.clone()),
                    _ => None,
                };
                async move {
                    let mut resp = Response::new(Full::new(body.clone().unwrap_or_default()));
                    match body {
                        Some(_) => {
                            resp.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                        }
                        None => *resp.status_mut() = hyper::StatusCode::NOT_FOUND,
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

pub fn random<const N: usize>() -> Res<[u8; N]> {
    random_with(&SystemRandom::new())
}

fn random_with<const N: usize>(rng: &SystemRandom) -> Res<[u8; N]> {
    let mut b = [0u8; N];
    rng.fill(&mut b).map_err(|_| "no randomness")?;
    Ok(b)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
