//! Admin API (`/v1/admin/…`, SPEC §4): callers authenticate with a TLS client certificate
//! from the configured admin CA whose subject OU names their role. Every call, refused ones
//! included, is audited with the certificate's common name and role.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ConnInfo;
use super::body::JsonBody;
use crate::app::App;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::leases::revoke::selector_json;
use crate::store::{ExternalRevocation, LeaseFilter, SecretRow, Selector};
use crate::tls::{AdminIdentity, AdminRole};

/// Admin routes (nested under `/v1/admin`).
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/secrets/{env}", get(list_secrets))
        .route(
            "/secrets/{env}/{*path}",
            get(get_secret).put(put_secret).delete(delete_secret),
        )
        .route("/leases", get(list_leases))
        .route("/revoke", post(revoke))
        .route("/environments/{env}/freeze", post(freeze))
        .route("/environments/{env}/unfreeze", post(unfreeze))
        .route("/keys/{env}/rotate", post(keys_rotate))
        .route("/keys/{env}/rewrap", post(keys_rewrap))
        .route("/keys/{env}/destroy", post(keys_destroy))
}

fn actor(id: &AdminIdentity) -> Actor {
    Actor {
        kind: "admin".into(),
        subject: Some(id.common_name.clone()),
        issuer: None,
        role: Some(role_name(id.role).into()),
        claims: Map::new(),
    }
}

fn role_name(r: AdminRole) -> &'static str {
    match r {
        AdminRole::Admin => "admin",
        AdminRole::Security => "security",
        AdminRole::Auditor => "auditor",
    }
}

/// Checks the caller's role; audits a refusal. Returns the identity and the audit event
/// to complete.
async fn guard(
    app: &App,
    conn: &ConnInfo,
    allowed: &[AdminRole],
    call: &str,
    env: Option<&str>,
) -> Result<(AdminIdentity, AuditEvent), ApiError> {
    let mut ev = AuditEvent::new("admin_call", Outcome::Denied);
    ev.environment = env.map(str::to_string);
    ev.details.insert("call".into(), Value::String(call.into()));
    let id = match &conn.admin {
        Some(id) => id.clone(),
        None => {
            let err = ApiError::AccessDenied(if conn.client_cert {
                "the client certificate carries no admin role (OU=admin|security|auditor)".into()
            } else {
                "an admin client certificate is required".into()
            });
            ev.reason = Some(err.to_string());
            app.audit.append(ev).await?;
            return Err(err);
        }
    };
    ev.actor = actor(&id);
    if !allowed.contains(&id.role) {
        let err =
            ApiError::AccessDenied(format!("role `{}` may not call {call}", role_name(id.role)));
        ev.reason = Some(err.to_string());
        app.audit.append(ev).await?;
        return Err(err);
    }
    ev.outcome = Outcome::Success;
    Ok((id, ev))
}

fn check_env(app: &App, env: &str) -> Result<(), ApiError> {
    if app.policies.load().environment(env).is_none() {
        return Err(ApiError::NotFound(format!("unknown environment `{env}`")));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    data: Map<String, Value>,
}

fn secret_meta(path: &str, rows: &[SecretRow]) -> Value {
    json!({
        "path": path,
        "current_version": rows.first().map(|r| r.version),
        "versions": rows.iter().map(|r| json!({
            "version": r.version, "fields": r.fields, "created_at": rfc3339(r.created_at),
        })).collect::<Vec<_>>(),
    })
}

async fn put_secret(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path((env, path)): Path<(String, String)>,
    JsonBody(body): JsonBody<PutSecret>,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(&app, &conn, &[AdminRole::Admin], "secrets.put", Some(&env)).await?;
    let w = app.put_secret(&env, &path, body.data, ev).await?;
    Ok(Json(
        json!({"path": path, "version": w.version, "fields": w.fields,
        "created_at": rfc3339(w.created_at)}),
    ))
}

async fn get_secret(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path((env, path)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(
        &app,
        &conn,
        &[AdminRole::Admin, AdminRole::Auditor],
        "secrets.get",
        Some(&env),
    )
    .await?;
    let rows = app.secret_versions(&env, &path, ev).await?;
    Ok(Json(secret_meta(&path, &rows)))
}

async fn list_secrets(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(env): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(
        &app,
        &conn,
        &[AdminRole::Admin, AdminRole::Auditor],
        "secrets.list",
        Some(&env),
    )
    .await?;
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or_default();
    let prefix = params
        .iter()
        .find(|(k, _)| k == "prefix")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let paths = app.secret_paths(&env, &prefix, ev).await?;
    Ok(Json(json!({"environment": env, "paths": paths})))
}

async fn delete_secret(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path((env, path)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(
        &app,
        &conn,
        &[AdminRole::Admin],
        "secrets.delete",
        Some(&env),
    )
    .await?;
    let n = app.delete_secret(&env, &path, ev).await?;
    Ok(Json(json!({"path": path, "deleted_versions": n})))
}

async fn list_leases(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, mut ev) = guard(
        &app,
        &conn,
        &[AdminRole::Admin, AdminRole::Security, AdminRole::Auditor],
        "leases.list",
        None,
    )
    .await?;
    let params: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::InvalidRequest("malformed query string".into()))?;
    let mut f = LeaseFilter {
        limit: 100,
        ..LeaseFilter::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "environment" => f.env = Some(v),
            "role" => f.role = Some(v),
            "after" => f.after = Some(v),
            "active" => match v.as_str() {
                "true" => f.active_at = Some(app.clock.unix()),
                "false" => {}
                _ => {
                    return Err(ApiError::InvalidRequest(
                        "active must be true or false".into(),
                    ));
                }
            },
            "limit" => {
                f.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| ApiError::InvalidRequest("limit must be 1..10000".into()))?;
            }
            other => match other.strip_prefix("claim.") {
                Some(name) if !name.is_empty() => f.claims.push((name.to_string(), v)),
                _ => {
                    return Err(ApiError::InvalidRequest(format!(
                        "unknown query parameter `{other}`"
                    )));
                }
            },
        }
    }
    ev.environment = f.env.clone();
    let rows = app.store.leases(&f).await?;
    let now = app.clock.unix();
    let mut out = Vec::with_capacity(rows.len());
    for l in &rows {
        let details: Option<Value> = match app
            .keyring
            .open(&l.env, "leases", &l.id, l.key_version, &l.sealed)
            .await
        {
            Ok(p) => serde_json::from_slice(&p).ok(),
            Err(_) => None,
        };
        let status = if l.revoked_at.is_some() {
            "revoked"
        } else if l.expires_at <= now {
            "expired"
        } else {
            "active"
        };
        out.push(json!({
            "lease_id": l.id, "environment": l.env, "role": l.role, "issuer": l.issuer,
            "subject": l.subject, "policy_version": l.policy_version,
            "issued_at": rfc3339(l.issued_at), "expires_at": rfc3339(l.expires_at),
            "revoked_at": l.revoked_at.map(rfc3339), "revoke_reason": l.revoke_reason,
            "revocation": l.revocation.map(ExternalRevocation::as_str),
            "status": status,
            "credentials": details.as_ref().map(|d| d["credentials"].clone()),
            "claims": details.as_ref().map(|d| d["claims"].clone()),
        }));
    }
    ev.details.insert("count".into(), json!(out.len()));
    app.audit.append(ev).await?;
    let next = if i64::try_from(rows.len()).unwrap_or(0) == f.limit {
        rows.last().map(|l| l.id.clone())
    } else {
        None
    };
    Ok(Json(json!({"leases": out, "next_after": next})))
}

fn parse_time(field: &str, v: Option<String>) -> Result<Option<i64>, ApiError> {
    v.map(|t| {
        humantime::parse_rfc3339_weak(&t)
            .map(crate::clock::unix_seconds)
            .map_err(|_| ApiError::InvalidRequest(format!("`{field}` must be an RFC 3339 time")))
    })
    .transpose()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SelectorBody {
    lease_id: Option<String>,
    environment: Option<String>,
    role: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, String>,
    policy_version: Option<String>,
    issued_after: Option<String>,
    issued_before: Option<String>,
    #[serde(default)]
    all: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    selector: SelectorBody,
    reason: Option<String>,
}

fn required_reason(reason: Option<String>) -> Result<String, ApiError> {
    reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::InvalidRequest("a non-empty `reason` is required".into()))
}

async fn revoke(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Json<Value>, ApiError> {
    let (_, mut ev) = guard(
        &app,
        &conn,
        &[AdminRole::Security],
        "revoke",
        body.selector.environment.as_deref(),
    )
    .await?;
    let b = body.selector;
    let sel = Selector {
        lease_id: b.lease_id,
        env: b.environment,
        role: b.role,
        issuer: b.issuer,
        subject: b.subject,
        claims: b.claims.into_iter().collect(),
        policy_version: b.policy_version,
        issued_after: parse_time("issued_after", b.issued_after)?,
        issued_before: parse_time("issued_before", b.issued_before)?,
        all: b.all,
    };
    let checked = required_reason(body.reason).and_then(|r| {
        if sel.is_empty() && !sel.all {
            Err(ApiError::InvalidRequest(
                "an empty selector is refused; use {\"all\": true} to revoke everything".into(),
            ))
        } else if sel.all && !sel.is_empty() {
            Err(ApiError::InvalidRequest(
                "`all` cannot be combined with other selector keys".into(),
            ))
        } else {
            Ok(r)
        }
    });
    let reason = match checked {
        Ok(r) => r,
        Err(e) => {
            ev.outcome = Outcome::Denied;
            ev.event = "revoke".into();
            ev.reason = Some(e.to_string());
            ev.details.insert("selector".into(), selector_json(&sel));
            app.audit.append(ev).await?;
            return Err(e);
        }
    };
    let done = app.revoke(&sel, &reason, ev.actor.clone()).await?;
    Ok(Json(
        json!({"revoked": done.lease_ids.len(), "lease_ids": done.lease_ids, "audited": done.audited}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

async fn set_frozen(
    app: &App,
    conn: &ConnInfo,
    env: &str,
    frozen: bool,
    body: ReasonBody,
) -> Result<Json<Value>, ApiError> {
    let call = if frozen { "freeze" } else { "unfreeze" };
    let (id, mut ev) = guard(app, conn, &[AdminRole::Security], call, Some(env)).await?;
    check_env(app, env)?;
    let reason = required_reason(body.reason)?;
    ev.event = call.into();
    ev.reason = Some(reason.clone());
    // Audit first: a freeze is a security decision that must be on record.
    app.audit.append(ev).await?;
    app.store
        .set_frozen(env, frozen, &reason, &id.common_name, app.clock.unix())
        .await?;
    Ok(Json(
        json!({"environment": env, "frozen": frozen, "reason": reason}),
    ))
}

async fn freeze(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(env): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    set_frozen(&app, &conn, &env, true, body).await
}

async fn unfreeze(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(env): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    set_frozen(&app, &conn, &env, false, body).await
}

async fn keys_rotate(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(&app, &conn, &[AdminRole::Admin], "keys.rotate", Some(&env)).await?;
    let version = app.rotate_key(&env, ev).await?;
    Ok(Json(json!({"environment": env, "version": version})))
}

async fn keys_rewrap(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(&app, &conn, &[AdminRole::Admin], "keys.rewrap", Some(&env)).await?;
    let done = app.rewrap_keys(&env, ev).await?;
    Ok(Json(
        json!({"environment": env, "version": done.version, "rewrapped": done.records}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestroyBody {
    reason: Option<String>,
    confirm: Option<String>,
}

async fn keys_destroy(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(env): Path<String>,
    JsonBody(body): JsonBody<DestroyBody>,
) -> Result<Json<Value>, ApiError> {
    let (id, ev) = guard(&app, &conn, &[AdminRole::Admin], "keys.destroy", Some(&env)).await?;
    check_env(&app, &env)?;
    let reason = required_reason(body.reason)?;
    let done = app
        .shred_detached(
            env.clone(),
            body.confirm,
            reason,
            id.common_name.clone(),
            ev,
        )
        .await?;
    Ok(Json(
        json!({"environment": env, "versions_destroyed": done.versions, "revoked": done.revoked}),
    ))
}
