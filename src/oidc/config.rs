//! Issuer configuration (`[[issuer]]` in the server config) and its validation.
//!
//! Guarantees: an issuer URL is `https`, or plain `http` only when `allow_http` is set *and*
//! the host is a loopback address or `localhost`; it carries no credentials, query or
//! fragment. `ca_file` and `jwks_file` are read and parsed when the verifier is built, so a
//! broken file stops the server at start rather than at the first exchange.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ring_key::RingJwk;
use openidconnect::reqwest;
use openidconnect::url::{Host, Url};
use openidconnect::{JsonWebKey as _, JsonWebKeySet};

use super::OidcError;

/// One issuer an environment may trust (`[[issuer]]`).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier, compared exactly with the token's `iss` and the discovery
    /// document's `issuer`.
    pub url: String,
    /// Extra root certificate(s) (PEM) trusted for this issuer's discovery and JWKS requests,
    /// in addition to the public web roots.
    pub ca_file: Option<PathBuf>,
    /// A static JWKS file used instead of discovery; the network is never used for this
    /// issuer (air-gapped setups).
    pub jwks_file: Option<PathBuf>,
    /// Accept a plain-`http` issuer, only on a loopback address (tests).
    #[serde(default)]
    pub allow_http: bool,
}

/// Timeout for each discovery or JWKS request (connect and whole request).
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses and checks an issuer URL. `allow_http` permits `http` on loopback hosts only.
pub(crate) fn check_issuer_url(url: &str, allow_http: bool) -> Result<Url, OidcError> {
    let parsed = Url::parse(url)
        .map_err(|_| OidcError::Config(format!("issuer `{url}` is not a valid URL")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OidcError::Config(format!(
            "issuer URL `{}` must not contain credentials",
            redacted(&parsed)
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(OidcError::Config(format!(
            "issuer `{url}` must not have a query or fragment"
        )));
    }
    check_fetch_url(&parsed, allow_http)
        .map_err(|why| OidcError::Config(format!("issuer `{url}`: {why}")))?;
    Ok(parsed)
}

/// Why an issuer's keys could not be had from a URL, a document or a file. Keys are public:
/// the messages may name URLs, never a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeySourceError {
    /// http to a host that is not loopback.
    #[error("plain http is only allowed for a loopback address or localhost")]
    HttpNotLoopback,
    /// http without `allow_http`.
    #[error("plain http requires allow_http (loopback only)")]
    HttpNotAllowed,
    /// Neither https nor http.
    #[error("unsupported URL scheme `{0}`")]
    Scheme(String),
    /// No host in the URL.
    #[error("the URL has no host")]
    NoHost,
    /// The document is not a JSON Web Key Set.
    #[error("not a JSON Web Key Set")]
    NotJwks,
    /// The key set holds no key this crate understands.
    #[error("the key set has no usable key")]
    NoKey,
    /// The discovery URL cannot be built from the issuer.
    #[error("cannot build the discovery URL")]
    DiscoveryUrl,
    /// The discovery document lacks `issuer` or `jwks_uri`.
    #[error("the discovery document lacks issuer or jwks_uri")]
    Discovery,
    /// The discovery document is another issuer's.
    #[error("the discovery document names a different issuer")]
    IssuerMismatch,
    /// `jwks_uri` does not parse.
    #[error("jwks_uri is not a valid URL")]
    JwksUri,
    /// `jwks_uri` is refused (scheme, host).
    #[error("jwks_uri refused: {0}")]
    JwksUriRefused(Box<KeySourceError>),
    /// The fetched key set is unusable.
    #[error("JWKS: {0}")]
    Jwks(Box<KeySourceError>),
    /// A GET did not complete.
    #[error("GET {url} failed: {cause}")]
    Transport {
        /// The URL.
        url: String,
        /// A short cause (timed out, cannot connect…).
        cause: &'static str,
    },
    /// A GET answered another status than 200.
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// A document beyond the size cap.
    #[error("GET {0}: document too large")]
    TooLarge(String),
}

/// Checks a URL we are about to fetch (issuer base or `jwks_uri`): https, or http on loopback
/// when allowed.
pub(crate) fn check_fetch_url(url: &Url, allow_http: bool) -> Result<(), KeySourceError> {
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {
            if !is_loopback(url) {
                return Err(KeySourceError::HttpNotLoopback);
            }
        }
        "http" => return Err(KeySourceError::HttpNotAllowed),
        other => return Err(KeySourceError::Scheme(other.to_owned())),
    }
    if url.host().is_none() {
        return Err(KeySourceError::NoHost);
    }
    Ok(())
}

/// True when the URL's host is a loopback IP or `localhost`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A URL without its userinfo, for messages.
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Parses a JWKS document, requiring at least one key this crate understands.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<JsonWebKeySet<RingJwk>, KeySourceError> {
    // Keys are public, so the parser's message could be shown; keep it short anyway.
    let jwks: JsonWebKeySet<RingJwk> =
        serde_json::from_slice(bytes).map_err(|_| KeySourceError::NotJwks)?;
    if jwks.keys().is_empty() {
        return Err(KeySourceError::NoKey);
    }
    if jwks.keys().iter().any(|k| k.key_id().is_none()) && jwks.keys().len() > 1 {
        // Allowed by the crate, but then tokens without `kid` are ambiguous; only note it.
        tracing::debug!("JWKS holds several keys, some without kid");
    }
    Ok(jwks)
}

/// Reads a `jwks_file`.
pub(crate) fn read_jwks_file(path: &std::path::Path) -> Result<JsonWebKeySet<RingJwk>, OidcError> {
    let bytes = std::fs::read(path)
        .map_err(|e| OidcError::Config(format!("cannot read jwks_file {}: {e}", path.display())))?;
    parse_jwks(&bytes)
        .map_err(|why| OidcError::Config(format!("jwks_file {}: {why}", path.display())))
}

/// Builds the HTTP client for one issuer: no redirects (SSRF), 5 s timeouts, rustls with the
/// web roots plus the issuer's `ca_file`, no proxy for loopback issuers.
pub(crate) fn http_client(cfg: &IssuerConfig, issuer: &Url) -> Result<reqwest::Client, OidcError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .user_agent(concat!("jobpass/", env!("CARGO_PKG_VERSION")));
    if is_loopback(issuer) {
        builder = builder.no_proxy();
    }
    if !cfg.allow_http {
        builder = builder.https_only(true);
    }
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            OidcError::Config(format!("cannot read ca_file {}: {e}", path.display()))
        })?;
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(OidcError::Config(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
            OidcError::Config(format!(
                "ca_file {} is not a valid PEM certificate bundle",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(OidcError::Config(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|_| {
        OidcError::Config(format!(
            "cannot build the HTTP client for issuer `{issuer}`"
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn https_issuer_is_accepted() {
        assert!(check_issuer_url("https://token.actions.githubusercontent.com", false).is_ok());
    }

    #[test]
    fn http_issuer_needs_allow_http_and_loopback() {
        assert!(check_issuer_url("http://127.0.0.1:8080", false).is_err());
        assert!(check_issuer_url("http://127.0.0.1:8080", true).is_ok());
        assert!(check_issuer_url("http://[::1]:8080/x", true).is_ok());
        assert!(check_issuer_url("http://localhost:9", true).is_ok());
        assert!(check_issuer_url("http://LOCALHOST:9", true).is_ok());
        assert!(check_issuer_url("http://10.0.0.1", true).is_err());
        assert!(check_issuer_url("http://example.com", true).is_err());
        assert!(check_issuer_url("http://localhost.example.com", true).is_err());
        assert!(check_issuer_url("http://127.0.0.1.nip.io", true).is_err());
    }

    #[test]
    fn odd_issuer_urls_are_refused() {
        for u in [
            "ftp://example.com",
            "not a url",
            "https://user:pw@example.com",
            "https://example.com/?a=b",
            "https://example.com/#x",
        ] {
            let err = check_issuer_url(u, true).err();
            assert!(matches!(err, Some(OidcError::Config(_))), "{u}");
            assert!(!format!("{err:?}").contains("pw@"), "{u}");
        }
    }

    #[test]
    fn empty_or_garbage_jwks_is_refused() {
        assert!(parse_jwks(b"{\"keys\":[]}").is_err());
        assert!(parse_jwks(b"nope").is_err());
        assert!(parse_jwks(b"{\"keys\":[{\"kty\":\"weird\"}]}").is_err());
    }
}
