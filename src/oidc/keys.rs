//! Per-issuer JSON Web Key Sets: discovery, fetching, caching and rate-limited refresh.
//!
//! Guarantees:
//! - keys are fetched lazily, on first use, so the server starts while an issuer is down;
//! - discovery reads only `issuer` and `jwks_uri`; `issuer` must equal the configured URL
//!   exactly and `jwks_uri` must be https (http only for an `allow_http` loopback issuer);
//! - redirects are never followed and documents over 1 MiB are refused;
//! - network fetches per issuer are serialised and happen at most once per
//!   `jwks_min_refresh`, whatever the number of concurrent requests (unknown `kid` bursts
//!   cannot make us hammer the issuer); concurrent callers that waited share the result;
//! - a periodic refresh never makes a request wait: while one caller refreshes, others use
//!   the keys already held; a failed refresh keeps the last good key set;
//! - static issuers (`jwks_file`, dev issuer) never touch the network.

use std::sync::Arc;

use super::ring_key::RingJwk;
use arc_swap::ArcSwapOption;
use openidconnect::JsonWebKeySet;
use openidconnect::reqwest;
use openidconnect::url::Url;

use super::config::{KeySourceError, check_fetch_url, parse_jwks};
use super::{OidcError, VerifierOptions};
use crate::clock::Clock;

/// Largest discovery or JWKS document we read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A key set and when it was obtained.
pub(crate) struct KeySnapshot {
    pub(crate) jwks: JsonWebKeySet<RingJwk>,
    /// Unix seconds of the fetch.
    fetched_at: i64,
    /// Increases with every successful fetch; lets a caller tell whether keys changed.
    pub(crate) generation: u64,
}

/// Where an issuer's keys come from.
enum Source {
    /// Given at start (`jwks_file`) or in memory (dev issuer): never refreshed.
    Static,
    /// Discovery + JWKS over HTTP.
    Remote {
        client: reqwest::Client,
        base: Url,
        allow_http: bool,
    },
}

/// Bookkeeping of network attempts, guarded by the refresh lock.
#[derive(Default)]
struct RefreshState {
    /// Unix seconds of the last attempt (successful or not).
    last_attempt: Option<i64>,
    /// Why the last attempt failed, if it did (issuer-side information only).
    last_error: Option<String>,
}

/// One trusted issuer and its cached keys.
pub(crate) struct IssuerKeys {
    /// The configured issuer URL, exactly as written.
    pub(crate) url: String,
    source: Source,
    keys: ArcSwapOption<KeySnapshot>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

/// Why keys are wanted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    /// Normal use: fetch if never fetched or older than `jwks_max_age`.
    Current,
    /// A token names a key we do not have: refetch unless the snapshot the caller saw has
    /// already been replaced, or the rate limit forbids it.
    Newer { seen_generation: u64 },
}

impl IssuerKeys {
    /// An issuer whose keys are fixed.
    pub(crate) fn fixed(url: String, jwks: JsonWebKeySet<RingJwk>) -> Self {
        Self {
            url,
            source: Source::Static,
            keys: ArcSwapOption::from_pointee(KeySnapshot {
                jwks,
                fetched_at: 0,
                generation: 1,
            }),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// An issuer found by discovery; nothing is fetched yet.
    pub(crate) fn remote(
        url: String,
        base: Url,
        client: reqwest::Client,
        allow_http: bool,
    ) -> Self {
        Self {
            url,
            source: Source::Remote {
                client,
                base,
                allow_http,
            },
            keys: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// True for issuers that never use the network.
    pub(crate) fn is_static(&self) -> bool {
        matches!(self.source, Source::Static)
    }

    /// The key set to verify with, fetching or refreshing it as `want` and the options say.
    pub(crate) async fn get(
        &self,
        want: Want,
        clock: &dyn Clock,
        opts: &VerifierOptions,
    ) -> Result<Arc<KeySnapshot>, OidcError> {
        let Source::Remote {
            client,
            base,
            allow_http,
        } = &self.source
        else {
            return self
                .keys
                .load_full()
                .ok_or_else(|| self.unavailable("no keys"));
        };
        let max_age = secs(opts.jwks_max_age);
        let min_refresh = secs(opts.jwks_min_refresh);

        let current = self.keys.load_full();
        if let (Want::Current, Some(snap)) = (want, &current)
            && clock.unix().saturating_sub(snap.fetched_at) < max_age
        {
            return Ok(Arc::clone(snap));
        }

        let mut state = match (&current, want) {
            // Stale keys and someone is already refreshing: verify with what we have rather
            // than queue behind a slow issuer.
            (Some(snap), Want::Current) => match self.refresh.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(Arc::clone(snap)),
            },
            _ => self.refresh.lock().await,
        };
        // Someone may have fetched while we waited for the lock.
        let current = self.keys.load_full();
        let now = clock.unix();
        if let Some(snap) = &current {
            let fresh_enough = match want {
                Want::Current => now.saturating_sub(snap.fetched_at) < max_age,
                Want::Newer { seen_generation } => snap.generation != seen_generation,
            };
            if fresh_enough {
                return Ok(Arc::clone(snap));
            }
        }
        if let Some(last) = state.last_attempt
            && now.saturating_sub(last) < min_refresh
        {
            return match current {
                Some(snap) => Ok(snap),
                None => Err(self.unavailable(
                    state
                        .last_error
                        .as_deref()
                        .unwrap_or("keys not fetched yet"),
                )),
            };
        }

        state.last_attempt = Some(now);
        match fetch_jwks(client, base, &self.url, *allow_http).await {
            Ok(jwks) => {
                state.last_error = None;
                let generation = current.as_ref().map_or(0, |s| s.generation) + 1;
                let snap = Arc::new(KeySnapshot {
                    jwks,
                    fetched_at: clock.unix(),
                    generation,
                });
                self.keys.store(Some(Arc::clone(&snap)));
                tracing::info!(issuer = %self.url, generation, "fetched issuer keys");
                Ok(snap)
            }
            Err(why) => {
                tracing::warn!(issuer = %self.url, error = %why, "cannot fetch issuer keys");
                state.last_error = Some(why.to_string());
                match current {
                    // A failed refresh keeps the keys we have.
                    Some(snap) => Ok(snap),
                    None => Err(self.unavailable(&why.to_string())),
                }
            }
        }
    }

    fn unavailable(&self, why: &str) -> OidcError {
        OidcError::IssuerUnavailable(format!("issuer `{}`: {why}", self.url))
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The two members of a discovery document we use.
#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
async fn fetch_jwks(
    client: &reqwest::Client,
    base: &Url,
    issuer: &str,
    allow_http: bool,
) -> Result<JsonWebKeySet<RingJwk>, KeySourceError> {
    let discovery_url = discovery_url(base)?;
    let body = get_document(client, &discovery_url).await?;
    let doc: Discovery = serde_json::from_slice(&body).map_err(|_| KeySourceError::Discovery)?;
    if doc.issuer != issuer {
        return Err(KeySourceError::IssuerMismatch);
    }
    let jwks_uri = Url::parse(&doc.jwks_uri).map_err(|_| KeySourceError::JwksUri)?;
    check_fetch_url(&jwks_uri, allow_http)
        .map_err(|why| KeySourceError::JwksUriRefused(Box::new(why)))?;
    let body = get_document(client, &jwks_uri).await?;
    parse_jwks(&body).map_err(|why| KeySourceError::Jwks(Box::new(why)))
}

/// The discovery URL: the issuer without a trailing slash, plus the well-known path.
fn discovery_url(base: &Url) -> Result<Url, KeySourceError> {
    let text = base.as_str().trim_end_matches('/');
    Url::parse(&format!("{text}/.well-known/openid-configuration"))
        .map_err(|_| KeySourceError::DiscoveryUrl)
}

/// GETs a JSON document: status 200, at most [`MAX_DOCUMENT_BYTES`].
async fn get_document(client: &reqwest::Client, url: &Url) -> Result<Vec<u8>, KeySourceError> {
    let transport = |e: reqwest::Error| KeySourceError::Transport {
        url: url.to_string(),
        cause: describe(&e),
    };
    let mut resp = client
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(transport)?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(KeySourceError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(KeySourceError::TooLarge(url.to_string()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(KeySourceError::TooLarge(url.to_string()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short cause for a transport error.
fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "transport error"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_has_no_double_slash() {
        let a = discovery_url(&Url::parse("https://gitlab.example.com/").unwrap()).unwrap();
        assert_eq!(
            a.as_str(),
            "https://gitlab.example.com/.well-known/openid-configuration"
        );
        let b = discovery_url(&Url::parse("https://oidc.circleci.com/org/abc").unwrap()).unwrap();
        assert_eq!(
            b.as_str(),
            "https://oidc.circleci.com/org/abc/.well-known/openid-configuration"
        );
    }
}
