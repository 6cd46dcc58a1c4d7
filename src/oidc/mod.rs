//! OIDC ID token verification (SPEC §2 step 1): the one place where a CI job's token is
//! checked before anything else looks at its claims.
//!
//! A token passes [`Verifier::verify`] only if, in this order:
//! 1. it is at most [`VerifierOptions::max_token_bytes`] (16 KiB) long;
//! 2. it is a three-part JWS whose header names an asymmetric algorithm (RS256/384/512,
//!    PS256/384/512, ES256/384, EdDSA) and carries no `crit`; `alg: none` and HMAC are refused
//!    before any key is looked at, and no JSON object in it repeats a member name;
//! 3. its `iss` is exactly one of the issuers the environment trusts *and* one configured on
//!    the server (or added with [`Verifier::add_static_issuer`]);
//! 4. its signature verifies (with the `openidconnect` crate) against that issuer's JWKS, found
//!    by OIDC discovery and cached; an unknown `kid` triggers one rate-limited refetch;
//! 5. its `aud` contains the environment's audience (other audiences alongside are allowed),
//!    `exp` is not past and `iat` and `nbf` are not in the future, each with the configured
//!    leeway, all against the injected [`crate::clock::Clock`].
//!
//! Error messages never quote the token or its claims; at most the issuer URL or the
//! (sanitised) algorithm name. [`OidcError::is_client_error`] tells a bad token (401) from an
//! unavailable issuer or a configuration problem (503).

mod config;
mod keys;
mod ring_key;
mod token;

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use openidconnect::core::{
    CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    ClaimsVerificationError, ClientId, EmptyAdditionalClaims, IdToken, IdTokenVerifier, IssuerUrl,
    Nonce, SignatureVerificationError,
};
use serde_json::{Map, Value};

pub use config::IssuerConfig;
use keys::{IssuerKeys, KeySnapshot, Want};

use crate::clock::SharedClock;

/// Errors of token verification. Messages never contain the token or its claims.
#[derive(thiserror::Error, Debug)]
pub enum OidcError {
    /// The token is longer than the configured cap (16 KiB).
    #[error("the token is too large")]
    TooLarge,
    /// The token is not a well-formed signed JWT, or lacks a required claim.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token's `alg` is not an allowed asymmetric algorithm (the name, sanitised).
    #[error("unsupported token algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    /// The token's issuer is not trusted by this environment or not configured.
    #[error("the token's issuer is not trusted here")]
    UntrustedIssuer,
    /// The token's `aud` does not contain the environment's audience.
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future, beyond the leeway.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// The signature does not verify with the issuer's key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// No key of the issuer's JWKS matches the token's `kid`/`alg`, even after a refetch.
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    /// The issuer's discovery document or JWKS cannot be fetched (server-side problem).
    #[error("token issuer unavailable: {0}")]
    IssuerUnavailable(String),
    /// The issuer configuration is invalid.
    #[error("OIDC configuration error: {0}")]
    Config(String),
}

impl OidcError {
    /// True when the token is at fault (answer 401); false when the broker cannot verify right
    /// now or is misconfigured (answer 503).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::IssuerUnavailable(_) | Self::Config(_))
    }
}

/// Tunables of verification.
#[derive(Clone, Debug)]
pub struct VerifierOptions {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// At most one network fetch per issuer within this window (unknown-`kid` refetches,
    /// retries after a failure).
    pub jwks_min_refresh: Duration,
    /// Keys older than this are refetched on next use.
    pub jwks_max_age: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(60),
            max_token_bytes: 16 * 1024,
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(15 * 60),
        }
    }
}

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// `iss`, equal to a configured issuer URL.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `jti`, when the token has one.
    pub jti: Option<String>,
    /// The full payload, as sent.
    pub claims: Map<String, Value>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `iat`, Unix seconds.
    pub issued_at: Option<i64>,
    /// SHA-256 of the raw token text (for replay detection when there is no jti).
    pub token_sha256: [u8; 32],
}

/// Verifies CI OIDC tokens against the configured issuers. Cheap to share behind `Arc`.
pub struct Verifier {
    issuers: ArcSwap<HashMap<String, Arc<IssuerKeys>>>,
    clock: SharedClock,
    opts: VerifierOptions,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut urls: Vec<String> = self.issuers.load().keys().cloned().collect();
        urls.sort();
        f.debug_struct("Verifier")
            .field("issuers", &urls)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The `openidconnect` token type, with claims beyond the standard ones ignored (we decode
/// the full payload ourselves once the signature has verified).
type CiIdToken = IdToken<
    EmptyAdditionalClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Longest `sub` accepted.
const MAX_SUBJECT_BYTES: usize = 1024;

/// Marker the `iat` check returns so its failure can be told from an expiry.
const IAT_IN_FUTURE: &str = "iat-in-future";

impl Verifier {
    /// Validates the configs (https required unless `allow_http` AND host is a loopback IP or
    /// `localhost`; `ca_file`/`jwks_file` readable and parseable) but fetches nothing yet:
    /// keys are fetched lazily on first use so the server starts while an issuer is
    /// unreachable. `jwks_file` issuers use that static JWKS, never the network.
    pub fn new(
        issuers: &[IssuerConfig],
        clock: SharedClock,
        opts: VerifierOptions,
    ) -> Result<Verifier, OidcError> {
        if opts.max_token_bytes == 0 {
            return Err(OidcError::Config(
                "max_token_bytes must be positive".to_owned(),
            ));
        }
        let mut map = HashMap::new();
        for cfg in issuers {
            let url = config::check_issuer_url(&cfg.url, cfg.allow_http)?;
            // Built even for a jwks_file issuer so a broken ca_file is reported at start.
            let client = config::http_client(cfg, &url)?;
            let keys = match &cfg.jwks_file {
                Some(path) => IssuerKeys::fixed(cfg.url.clone(), config::read_jwks_file(path)?),
                None => IssuerKeys::remote(cfg.url.clone(), url, client, cfg.allow_http),
            };
            if map.insert(cfg.url.clone(), Arc::new(keys)).is_some() {
                return Err(OidcError::Config(format!(
                    "issuer `{}` is configured twice",
                    cfg.url
                )));
            }
        }
        Ok(Verifier {
            issuers: ArcSwap::from_pointee(map),
            clock,
            opts,
        })
    }

    /// Adds an issuer whose JWKS is given in memory (dev mode's built-in issuer). It never
    /// uses the network. Adding a URL that is already known is a configuration error.
    pub fn add_static_issuer(&self, url: &str, jwks_json: &str) -> Result<(), OidcError> {
        let parsed = openidconnect::url::Url::parse(url)
            .map_err(|_| OidcError::Config(format!("issuer `{url}` is not a valid URL")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(OidcError::Config(format!(
                "issuer `{url}` must be an http(s) URL"
            )));
        }
        let jwks = config::parse_jwks(jwks_json.as_bytes())
            .map_err(|why| OidcError::Config(format!("static issuer `{url}`: {why}")))?;
        let issuer = Arc::new(IssuerKeys::fixed(url.to_owned(), jwks));
        let mut duplicate = false;
        self.issuers.rcu(|current| {
            duplicate = current.contains_key(url);
            let mut next = HashMap::clone(current);
            if !duplicate {
                next.insert(url.to_owned(), Arc::clone(&issuer));
            }
            next
        });
        if duplicate {
            return Err(OidcError::Config(format!(
                "issuer `{url}` is already known"
            )));
        }
        Ok(())
    }

    /// True when `url` is a configured or static issuer (for policy validation).
    pub fn knows_issuer(&self, url: &str) -> bool {
        self.issuers.load().contains_key(url)
    }

    /// Verifies `token` for an environment that trusts `trusted_issuers` and expects
    /// `audience`. See the module documentation for the checks and their order.
    pub async fn verify(
        &self,
        token: &str,
        trusted_issuers: &[String],
        audience: &str,
    ) -> Result<VerifiedToken, OidcError> {
        let unverified = token::parse(token, self.opts.max_token_bytes)?;
        let iss = unverified.issuer();
        if !trusted_issuers.iter().any(|t| t == iss) {
            return Err(OidcError::UntrustedIssuer);
        }
        let Some(issuer) = self.issuers.load().get(iss).cloned() else {
            return Err(OidcError::UntrustedIssuer);
        };
        let id_token = CiIdToken::from_str(token)
            .map_err(|_| malformed("the claims lack iss, sub, aud, exp or iat, or mistype them"))?;

        let keys = issuer
            .get(Want::Current, self.clock.as_ref(), &self.opts)
            .await?;
        let outcome = match self.check(&id_token, &issuer.url, audience, &keys) {
            Err(Checked::NoMatchingKey) if !issuer.is_static() => {
                let seen_generation = keys.generation;
                let newer = issuer
                    .get(
                        Want::Newer { seen_generation },
                        self.clock.as_ref(),
                        &self.opts,
                    )
                    .await?;
                if newer.generation == seen_generation {
                    Err(Checked::NoMatchingKey)
                } else {
                    self.check(&id_token, &issuer.url, audience, &newer)
                }
            }
            other => other,
        };
        let (subject, expires_at) = match outcome {
            Ok(v) => v,
            Err(Checked::NoMatchingKey) => return Err(OidcError::UnknownKey),
            Err(Checked::Failed(e)) => return Err(e),
        };
        // The subject is stored and indexed with every lease: no CI platform sends more than
        // a few hundred bytes, and a NUL byte is no text a database keeps.
        if subject.len() > MAX_SUBJECT_BYTES || subject.contains('\0') {
            return Err(malformed("sub is over 1024 bytes or holds a NUL character"));
        }

        let alg = unverified.alg;
        let claims = unverified.payload;
        let now = self.clock.unix();
        let leeway = i64::try_from(self.opts.leeway.as_secs()).unwrap_or(i64::MAX);
        if let Some(nbf) = numeric_claim(&claims, "nbf")?
            && nbf > now.saturating_add(leeway)
        {
            return Err(OidcError::NotYetValid);
        }
        let issued_at = numeric_claim(&claims, "iat")?;
        let jti = match claims.get("jti") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return Err(malformed("jti is not a non-empty string")),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut token_sha256 = [0u8; 32];
        token_sha256.copy_from_slice(digest.as_ref());

        tracing::debug!(issuer = %issuer.url, alg, "token verified");
        Ok(VerifiedToken {
            issuer: issuer.url.clone(),
            subject,
            jti,
            claims,
            expires_at,
            issued_at,
            token_sha256,
        })
    }

    /// Runs the `openidconnect` verifier with one key set. Returns `sub` and `exp`.
    fn check(
        &self,
        id_token: &CiIdToken,
        issuer: &str,
        audience: &str,
        keys: &KeySnapshot,
    ) -> Result<(String, i64), Checked> {
        let issuer_url = IssuerUrl::new(issuer.to_owned())
            .map_err(|_| Checked::Failed(OidcError::UntrustedIssuer))?;
        let clock = Arc::clone(&self.clock);
        let clock_iat = Arc::clone(&self.clock);
        let leeway = self.opts.leeway;
        let leeway_secs = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        let verifier = IdTokenVerifier::new_public_client(
            ClientId::new(audience.to_owned()),
            issuer_url,
            keys.jwks.clone(),
        )
        .set_allowed_algs(allowed_algs())
        // `aud` must contain ours; other audiences next to it are fine.
        .set_other_audience_verifier_fn(|_| true)
        // The crate refuses when now >= exp; shifting "now" back gives exp its leeway.
        .set_time_fn(move || {
            let now = clock.now();
            now.checked_sub(leeway)
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .into()
        })
        .set_issue_time_verifier_fn(move |iat| {
            if iat.timestamp() > clock_iat.unix().saturating_add(leeway_secs) {
                Err(IAT_IN_FUTURE.to_owned())
            } else {
                Ok(())
            }
        });
        // CI tokens carry no nonce; one that does is not ours to judge.
        let claims = id_token
            .claims(&verifier, |_: Option<&Nonce>| Ok(()))
            .map_err(map_claims_error)?;
        Ok((
            claims.subject().to_string(),
            claims.expiration().timestamp(),
        ))
    }
}

/// Outcome of one verification attempt that is not a success.
enum Checked {
    /// No key of the set fits the token's `kid` and `alg`: worth one refetch.
    NoMatchingKey,
    Failed(OidcError),
}

fn map_claims_error(e: ClaimsVerificationError) -> Checked {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    let err = match e {
        C::SignatureVerification(S::NoMatchingKey) => return Checked::NoMatchingKey,
        C::SignatureVerification(S::AmbiguousKeyId(_)) => OidcError::UnknownKey,
        C::SignatureVerification(S::DisallowedAlg(_) | S::UnsupportedAlg(_)) => {
            OidcError::UnsupportedAlgorithm("(refused by verifier)".to_owned())
        }
        C::SignatureVerification(S::NoSignature) => malformed("the token is not signed"),
        C::SignatureVerification(_) => OidcError::BadSignature,
        C::Expired(why) if why == IAT_IN_FUTURE => OidcError::IssuedInFuture,
        C::Expired(_) => OidcError::Expired,
        C::InvalidAudience(_) => OidcError::WrongAudience,
        C::InvalidIssuer(_) => OidcError::UntrustedIssuer,
        C::Unsupported(_) => malformed("unsupported token type or header"),
        _ => malformed("the claims did not verify"),
    };
    Checked::Failed(err)
}

/// The algorithms the `openidconnect` verifier may accept (mirrors the header check).
fn allowed_algs() -> [CoreJwsSigningAlgorithm; 9] {
    use CoreJwsSigningAlgorithm as A;
    [
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EdDsa,
    ]
}

/// A NumericDate claim as whole seconds; absent is `None`, a non-number is malformed.
fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, OidcError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                // Fractional seconds are allowed by RFC 7519; clamp absurd values.
                #[allow(clippy::cast_possible_truncation)]
                Ok(Some(f.clamp(i64::MIN as f64, i64::MAX as f64) as i64))
            } else {
                Err(OidcError::Malformed(format!("{name} is not a number")))
            }
        }
        Some(_) => Err(OidcError::Malformed(format!("{name} is not a number"))),
    }
}

fn malformed(why: &str) -> OidcError {
    OidcError::Malformed(why.to_owned())
}

// `Verifier` is shared across request tasks.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<Verifier>();
    is::<VerifiedToken>();
};

#[cfg(test)]
mod tests;
