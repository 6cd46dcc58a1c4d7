//! STUB
#![allow(missing_docs, dead_code, unused_variables)]
use crate::clock::SharedClock;
use std::path::PathBuf;
use std::time::Duration;
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_http: bool,
}
pub struct VerifierOptions {
    pub leeway: Duration,
    pub max_token_bytes: usize,
    pub jwks_min_refresh: Duration,
    pub jwks_max_age: Duration,
}
pub struct Verifier;
impl Verifier {
    pub fn new(
        issuers: &[IssuerConfig],
        clock: SharedClock,
        opts: VerifierOptions,
    ) -> Result<Verifier, OidcError> {
        Ok(Verifier)
    }
    pub fn add_static_issuer(&self, url: &str, jwks_json: &str) -> Result<(), OidcError> {
        Ok(())
    }
    pub async fn verify(
        &self,
        token: &str,
        trusted_issuers: &[String],
        audience: &str,
    ) -> Result<VerifiedToken, OidcError> {
        Err(OidcError::TooLarge)
    }
}
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    pub jti: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
    pub token_sha256: [u8; 32],
}
#[derive(thiserror::Error, Debug)]
pub enum OidcError {
    #[error("x")]
    TooLarge,
}
impl OidcError {
    pub fn is_client_error(&self) -> bool {
        true
    }
}
