//! HTTP clients of the CLI: exchange and the admin API over HTTPS with an optional private CA
//! and client certificate.
#![allow(
    clippy::print_stdout,
    reason = "the admin client prints the answers it gets"
)]

use std::path::Path;

use openidconnect::http::{Method, StatusCode};
use openidconnect::reqwest;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::cli::{
    AdminConn, FreezeArgs, KeysCmd, LeasesArgs, LeasesOp, RevokeArgs, SecretsArgs, SecretsOp,
};

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An HTTPS client trusting `ca` (or the public roots) and presenting a client certificate.
pub fn http_client(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<reqwest::Client, String> {
    let ca_pem = ca.map(read).transpose()?;
    let cert_pem = cert.map(read).transpose()?;
    let key_pem = key.map(read).transpose()?.map(Zeroizing::new);
    let tls = crate::tls::client_config(
        ca_pem.as_deref(),
        cert_pem.as_deref(),
        key_pem.as_deref().map(|k| k.as_str()),
    )
    .map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Sends a request with an optional JSON body; returns status and JSON answer.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), String> {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

fn error_chain(e: &dyn std::error::Error) -> String {
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

fn admin_client(c: &AdminConn) -> Result<reqwest::Client, String> {
    if c.cert.is_none() || c.key.is_none() {
        return Err(
            "admin commands need --cert and --key (a client certificate from the admin CA)".into(),
        );
    }
    http_client(c.ca.as_deref(), c.cert.as_deref(), c.key.as_deref())
}

fn enc(s: &str) -> String {
    s.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~@+=".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn admin_call(
    c: &AdminConn,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<i32, String> {
    let client = admin_client(c)?;
    let url = format!("{}/v1/admin/{path}", c.server.trim_end_matches('/'));
    let (status, v) = send(&client, method, &url, body).await?;
    if status.is_success() {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        Ok(0)
    } else {
        eprintln!("{}", error_text(&v));
        Ok(1)
    }
}

/// `jobpass secrets …`
pub async fn secrets(a: SecretsArgs) -> Result<i32, String> {
    match a.op {
        SecretsOp::Put {
            env,
            path,
            fields,
            data_file,
        } => {
            let mut data = Map::new();
            if let Some(f) = data_file {
                let text = Zeroizing::new(if f.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?
                } else {
                    read(&f)?
                });
                let v: Map<String, Value> = serde_json::from_str(&text).map_err(|_| {
                    "--data-file must hold a JSON object of string fields".to_string()
                })?;
                data.extend(v);
            }
            for f in fields {
                let (k, v) = f
                    .split_once('=')
                    .ok_or_else(|| "fields are FIELD=VALUE".to_string())?;
                data.insert(k.to_string(), Value::String(v.to_string()));
            }
            admin_call(
                &a.conn,
                Method::PUT,
                &format!("secrets/{}/{}", enc(&env), enc(&path)),
                Some(json!({"data": data})),
            )
            .await
        }
        SecretsOp::Get { env, path } => {
            admin_call(
                &a.conn,
                Method::GET,
                &format!("secrets/{}/{}", enc(&env), enc(&path)),
                None,
            )
            .await
        }
        SecretsOp::List { env, prefix } => {
            admin_call(
                &a.conn,
                Method::GET,
                &format!("secrets/{}?prefix={}", enc(&env), enc(&prefix)),
                None,
            )
            .await
        }
        SecretsOp::Delete { env, path } => {
            admin_call(
                &a.conn,
                Method::DELETE,
                &format!("secrets/{}/{}", enc(&env), enc(&path)),
                None,
            )
            .await
        }
    }
}

/// `jobpass leases …`
pub async fn leases(a: LeasesArgs) -> Result<i32, String> {
    let LeasesOp::List {
        env,
        role,
        active,
        claims,
        limit,
        after,
    } = a.op;
    let mut q: Vec<(String, String)> = Vec::new();
    if let Some(e) = env {
        q.push(("environment".into(), e));
    }
    if let Some(r) = role {
        q.push(("role".into(), r));
    }
    if active {
        q.push(("active".into(), "true".into()));
    }
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| "--claim is NAME=VALUE".to_string())?;
        q.push((format!("claim.{k}"), v.to_string()));
    }
    if let Some(l) = limit {
        q.push(("limit".into(), l.to_string()));
    }
    if let Some(x) = after {
        q.push(("after".into(), x));
    }
    let qs = serde_urlencoded::to_string(&q).map_err(|e| e.to_string())?;
    admin_call(&a.conn, Method::GET, &format!("leases?{qs}"), None).await
}

/// `jobpass revoke …`
pub async fn revoke(a: RevokeArgs) -> Result<i32, String> {
    let mut sel = Map::new();
    for (k, v) in [
        ("lease_id", a.lease_id),
        ("environment", a.env),
        ("role", a.role),
        ("issuer", a.issuer),
        ("subject", a.subject),
        ("policy_version", a.policy_version),
        ("issued_after", a.issued_after),
        ("issued_before", a.issued_before),
    ] {
        if let Some(v) = v {
            sel.insert(k.into(), Value::String(v));
        }
    }
    if !a.claims.is_empty() {
        let mut claims = Map::new();
        for c in a.claims {
            let (k, v) = c
                .split_once('=')
                .ok_or_else(|| "--claim is NAME=GLOB".to_string())?;
            claims.insert(k.into(), Value::String(v.into()));
        }
        sel.insert("claims".into(), Value::Object(claims));
    }
    if a.all {
        sel.insert("all".into(), Value::Bool(true));
    }
    admin_call(
        &a.conn,
        Method::POST,
        "revoke",
        Some(json!({"selector": sel, "reason": a.reason})),
    )
    .await
}

/// `jobpass freeze|unfreeze ENV`
pub async fn freeze(a: FreezeArgs, frozen: bool) -> Result<i32, String> {
    let op = if frozen { "freeze" } else { "unfreeze" };
    admin_call(
        &a.conn,
        Method::POST,
        &format!("environments/{}/{op}", enc(&a.env)),
        Some(json!({"reason": a.reason})),
    )
    .await
}

/// `jobpass keys rotate|rewrap|destroy ENV`
pub async fn keys(k: KeysCmd) -> Result<i32, String> {
    match k {
        KeysCmd::Generate { .. } => Err("keys generate runs offline".into()),
        KeysCmd::Rotate { conn, env } => {
            admin_call(
                &conn,
                Method::POST,
                &format!("keys/{}/rotate", enc(&env)),
                None,
            )
            .await
        }
        KeysCmd::Rewrap { conn, env } => {
            admin_call(
                &conn,
                Method::POST,
                &format!("keys/{}/rewrap", enc(&env)),
                None,
            )
            .await
        }
        KeysCmd::Destroy {
            conn,
            env,
            reason,
            confirm,
        } => {
            admin_call(
                &conn,
                Method::POST,
                &format!("keys/{}/destroy", enc(&env)),
                Some(json!({"reason": reason, "confirm": confirm})),
            )
            .await
        }
    }
}

/// `jobpass health`: 0 when `GET /healthz` answers 200 within 3 seconds, 1 otherwise.
pub async fn health(server: &str, ca: Option<&Path>) -> Result<i32, String> {
    let client = http_client(ca, None, None)?;
    let url = format!("{}/healthz", server.trim_end_matches('/'));
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(3), client.get(&url).send()).await;
    match answer {
        Ok(Ok(r)) if r.status().is_success() => Ok(0),
        Ok(Ok(r)) => {
            eprintln!("unhealthy: {}", r.status());
            Ok(1)
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {}", error_chain(&e));
            Ok(1)
        }
        Err(_) => {
            eprintln!("unhealthy: no answer within 3 s");
            Ok(1)
        }
    }
}
