//! Request bodies: read with a size limit and parsed strictly, with error messages that name
//! what is wrong without echoing the body (it may hold a token).

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::ApiError;

/// Reads the whole body, refusing one over the configured limit with 413.
pub async fn read_limited(req: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::TooLarge(limit))
}

/// Longest part of an error message taken from the request.
const MAX_ECHO: usize = 200;

/// Describes a JSON error without quoting the input.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let at = format!("at line {} column {}", e.line(), e.column());
    match e.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => {
            format!("request body is not valid JSON ({at})")
        }
        serde_json::error::Category::Data => {
            if msg.starts_with("missing field") || msg.starts_with("unknown field") {
                let head = msg.split(" at line").next().unwrap_or(&msg);
                // The field name comes from the request: never echo a long one whole.
                let head = match head.char_indices().nth(MAX_ECHO) {
                    Some((cut, _)) => format!("{}…", &head[..cut]),
                    None => head.to_string(),
                };
                format!("invalid request body: {head}")
            } else if let Some(exp) = msg.split(", expected ").nth(1) {
                let exp = exp.split(" at line").next().unwrap_or(exp);
                format!("invalid request body: wrong type of value, expected {exp} ({at})")
            } else {
                format!("invalid request body ({at})")
            }
        }
    }
}

/// Strict JSON body extractor.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<App>) -> Result<Self, Self::Rejection> {
        let ct_ok = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/json"));
        if !ct_ok {
            return Err(ApiError::InvalidRequest(
                "Content-Type must be application/json".into(),
            ));
        }
        let bytes = read_limited(req, state.config.max_body_bytes).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidRequest(describe_json_error(&e)))
    }
}

/// Form body extractor (OAuth endpoints), size-limited.
pub struct FormBody(pub Vec<(String, String)>);

impl FromRequest<Arc<App>> for FormBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<App>) -> Result<Self, Self::Rejection> {
        let bytes = read_limited(req, state.config.max_body_bytes).await?;
        serde_urlencoded::from_bytes(&bytes)
            .map(FormBody)
            .map_err(|_| ApiError::InvalidRequest("request body is not a valid form".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_do_not_quote_input() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct R {
            token: u32,
        }
        let e = serde_json::from_str::<R>(r#"{"token": "SECRETVALUE"}"#).unwrap_err();
        let m = describe_json_error(&e);
        assert!(!m.contains("SECRETVALUE"), "{m}");
        let e = serde_json::from_str::<R>(r#"{"token": "SECRET"#).unwrap_err();
        assert!(!describe_json_error(&e).contains("SECRET"));
    }

    #[test]
    fn a_wrong_type_is_described_in_the_callers_terms() {
        let e =
            serde_json::from_str::<crate::leases::revoke::SelectorSpec>(r#""repository=acme/web""#)
                .unwrap_err();
        let m = describe_json_error(&e);
        assert!(m.contains("expected a selector object"), "{m}");
        assert!(!m.contains("SelectorSpec") && !m.contains("acme"), "{m}");
    }
}
