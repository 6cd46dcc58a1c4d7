//! The one place where errors become HTTP answers: every error of every module maps to one of
//! the SPEC's JSON error codes, `{"error": "<code>", "message": "<sentence>"}`. Messages are
//! written for the client and never echo token contents, SQL errors or secret values; the
//! details of server-side failures go to the service log only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::audit::AuditError;
use crate::crypto::CryptoError;
use crate::exchange::ExchangeError;
use crate::freeze::FreezeError;
use crate::grants::{GrantError, PresentedError};
use crate::keys::KeysError;
use crate::leases::list::ListError;
use crate::leases::revoke::RevokeError;
use crate::limits::Limited;
use crate::mint::MintError;
use crate::oidc::OidcError;
use crate::reason::NoReason;
use crate::secrets::SecretError;
use crate::store::StoreError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// 413 `invalid_request`: body over the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 401 `invalid_token`.
    #[error("{0}")]
    InvalidToken(String),
    /// 403 `access_denied`.
    #[error("{0}")]
    AccessDenied(String),
    /// 403 `environment_frozen`.
    #[error("environment `{0}` is frozen")]
    Frozen(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `token_replayed`.
    #[error("this token was already exchanged")]
    Replayed,
    /// 429 `rate_limited`, with `Retry-After`.
    #[error("{0}")]
    RateLimited(Limited),
    /// 503 `unavailable`: the store, the audit log or an issuer failed; nothing was minted.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// HTTP status and error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            ApiError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            ApiError::AccessDenied(_) => (StatusCode::FORBIDDEN, "access_denied"),
            ApiError::Frozen(_) => (StatusCode::FORBIDDEN, "environment_frozen"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Replayed => (StatusCode::CONFLICT, "token_replayed"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// 503 after logging the internal cause (which never reaches the client).
    pub fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "{what} failed");
        ApiError::Unavailable(format!("{what} is unavailable; nothing was issued"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut resp = (
            status,
            axum::Json(json!({"error": code, "message": self.to_string()})),
        )
            .into_response();
        if let ApiError::RateLimited(limited) = &self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(limited.retry_after_secs),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}

impl From<&ExchangeError> for ApiError {
    /// The answer to a failed exchange. Server-side causes are logged here (once per
    /// exchange) and answered with a generic 503.
    fn from(e: &ExchangeError) -> Self {
        match e {
            ExchangeError::RateLimited(l) => ApiError::RateLimited(*l),
            ExchangeError::InvalidName(_)
            | ExchangeError::UnknownEnvironment(_)
            | ExchangeError::NoRole
            | ExchangeError::UnknownRole { .. } => ApiError::InvalidRequest(e.to_string()),
            ExchangeError::Token(oidc) => {
                if oidc.is_client_error() {
                    ApiError::InvalidToken(oidc.to_string())
                } else {
                    ApiError::unavailable("token verification", oidc)
                }
            }
            ExchangeError::Replayed => ApiError::Replayed,
            ExchangeError::Frozen(env) => ApiError::Frozen(env.clone()),
            ExchangeError::Denied(denial) => ApiError::AccessDenied(denial.public_message()),
            ExchangeError::Keys(k) => crypto_answer(k),
            ExchangeError::Mint(m) => ApiError::unavailable("credential minting", m),
            ExchangeError::Store(s) => ApiError::unavailable("the store", s),
            ExchangeError::Audit(a) => ApiError::unavailable("the audit log", a),
            ExchangeError::NotCommitted(s) => ApiError::unavailable("the store commit", s),
            ExchangeError::Abandoned => ApiError::Unavailable(e.to_string()),
            ExchangeError::Internal(why) => ApiError::unavailable("the exchange", why),
        }
    }
}

impl From<Limited> for ApiError {
    fn from(l: Limited) -> Self {
        ApiError::RateLimited(l)
    }
}

impl From<&GrantError> for ApiError {
    /// A presented broker token that does not stand is a 401; a store failure a 503 (logged).
    fn from(e: &GrantError) -> Self {
        match e {
            GrantError::Store(s) => ApiError::unavailable("the store", s),
            other => ApiError::InvalidToken(other.to_string()),
        }
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        ApiError::from(&e)
    }
}

impl From<PresentedError> for ApiError {
    /// Only server-side failures reach here: each a logged 503.
    fn from(e: PresentedError) -> Self {
        match e {
            PresentedError::Store(s) => ApiError::unavailable("the store", &s),
            PresentedError::Signing(m) => ApiError::from(m),
            PresentedError::Revoke(r) => ApiError::from(r),
        }
    }
}

impl From<&SecretError> for ApiError {
    /// Server-side causes are logged here, once, and answered with a generic 503.
    fn from(e: &SecretError) -> Self {
        match e {
            SecretError::InvalidPath
            | SecretError::InvalidData
            | SecretError::InvalidEnvironmentName => ApiError::InvalidRequest(e.to_string()),
            SecretError::RateLimited(l) => ApiError::RateLimited(*l),
            SecretError::UnknownEnvironment(_)
            | SecretError::NotFound(_)
            | SecretError::NoVersion { .. } => ApiError::NotFound(e.to_string()),
            SecretError::OutOfScope { .. } => ApiError::AccessDenied(e.to_string()),
            SecretError::Grant(g) => ApiError::from(g),
            SecretError::Store(s) => ApiError::unavailable("the store", s),
            SecretError::Keys(c) => crypto_answer(c),
            SecretError::Audit(a) => ApiError::unavailable("the audit log", a),
            SecretError::Decode(d) => ApiError::unavailable("secret decoding", d),
        }
    }
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        ApiError::from(&e)
    }
}

/// The answer to a key failure: destroyed keys say so; anything else is a logged 503.
fn crypto_answer(e: &CryptoError) -> ApiError {
    match e {
        CryptoError::Destroyed(env) => ApiError::Unavailable(format!(
            "the keys of environment `{env}` were destroyed; its records cannot be decrypted"
        )),
        other => ApiError::unavailable("key material", other),
    }
}

impl From<KeysError> for ApiError {
    fn from(e: KeysError) -> Self {
        match e {
            KeysError::UnknownEnvironment(_) => ApiError::NotFound(e.to_string()),
            KeysError::NotConfirmed(_) | KeysError::NoReason(_) => {
                ApiError::InvalidRequest(e.to_string())
            }
            KeysError::RolesRemain(_) | KeysError::NotAudited => {
                ApiError::Unavailable(e.to_string())
            }
            KeysError::Task(t) => ApiError::unavailable("crypto-shredding", &t),
            KeysError::Revoke(r) => r.into(),
            KeysError::Freeze(f) => f.into(),
            KeysError::Keys(k) => crypto_answer(&k),
            KeysError::Store(s) => ApiError::unavailable("the store", &s),
            KeysError::Audit(a) => ApiError::unavailable("the audit log", &a),
        }
    }
}

impl From<FreezeError> for ApiError {
    fn from(e: FreezeError) -> Self {
        match e {
            FreezeError::UnknownEnvironment(_) => ApiError::NotFound(e.to_string()),
            FreezeError::NoReason(_) => ApiError::InvalidRequest(e.to_string()),
            FreezeError::Store(s) => ApiError::unavailable("the store", &s),
            FreezeError::Audit(a) => ApiError::unavailable("the audit log", &a),
        }
    }
}

impl From<NoReason> for ApiError {
    fn from(e: NoReason) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<RevokeError> for ApiError {
    fn from(e: RevokeError) -> Self {
        match e {
            RevokeError::Store(s) => ApiError::unavailable("the store", &s),
            RevokeError::Audit(a) => ApiError::unavailable("the audit log", &a),
            RevokeError::EmptySelector
            | RevokeError::AllWithOthers
            | RevokeError::NoReason(_)
            | RevokeError::InvalidTime(_)
            | RevokeError::ClaimNameTooLong => ApiError::InvalidRequest(e.to_string()),
        }
    }
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::MalformedQuery
            | ListError::InvalidActive
            | ListError::InvalidLimit
            | ListError::UnknownParameter(_)
            | ListError::ClaimNameTooLong => ApiError::InvalidRequest(e.to_string()),
            ListError::Store(s) => ApiError::unavailable("the store", &s),
            ListError::Audit(a) => ApiError::unavailable("the audit log", &a),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::unavailable("the store", &e)
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        ApiError::unavailable("the audit log", &e)
    }
}

impl From<CryptoError> for ApiError {
    fn from(e: CryptoError) -> Self {
        crypto_answer(&e)
    }
}

impl From<MintError> for ApiError {
    fn from(e: MintError) -> Self {
        ApiError::unavailable("credential minting", &e)
    }
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> Self {
        if e.is_client_error() {
            ApiError::InvalidToken(e.to_string())
        } else {
            ApiError::unavailable("token verification", &e)
        }
    }
}
