//! HTTPS plumbing shared by the admin and runner clients: a client trusting a private CA (or
//! the public roots) and optionally presenting a client certificate, one JSON request, and the
//! texts of errors.

use std::path::Path;

use openidconnect::http::{Method, StatusCode};
use openidconnect::reqwest;
use serde_json::Value;
use zeroize::Zeroizing;

use super::error::CliError;

/// An answer of the broker: its status and its body (JSON, or the raw text as a JSON string
/// when it is not JSON).
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: Value,
}

// By hand: a body can hold issued credentials.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("body", &"[REDACTED]")
            .finish()
    }
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// An HTTPS client trusting `ca` (or the public roots) and presenting a client certificate.
pub fn http_client(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<reqwest::Client, CliError> {
    let ca_pem = ca.map(read).transpose()?;
    let cert_pem = cert.map(read).transpose()?;
    let key_pem = key.map(read).transpose()?.map(Zeroizing::new);
    let tls = crate::tls::client_config(
        ca_pem.as_deref(),
        cert_pem.as_deref(),
        key_pem.as_deref().map(|k| k.as_str()),
    )?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(CliError::HttpClient)
}

/// Sends a request with an optional JSON body; returns status and JSON answer.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Answer, CliError> {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.map_err(|source| CliError::Unreachable {
        url: url.to_owned(),
        source,
    })?;
    let status = resp.status();
    // The answer may carry credentials: its text is wiped once parsed.
    let text = Zeroizing::new(resp.text().await.map_err(CliError::ReadAnswer)?);
    let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.to_string()));
    Ok(Answer { status, body })
}

/// An error and its sources, `: `-separated (reqwest hides the useful part in the sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The human text of an error answer.
pub fn error_text(v: &Value) -> String {
    match (v["error"].as_str(), v["message"].as_str()) {
        (Some(code), Some(msg)) => format!("error: {code}: {msg}"),
        _ => format!("error: {v}"),
    }
}
