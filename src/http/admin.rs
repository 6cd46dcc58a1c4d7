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
use crate::leases::revoke::SelectorSpec;
use crate::store::SecretRow;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object with `data`")]
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
    let (_, ev) = guard(
        &app,
        &conn,
        &[AdminRole::Admin, AdminRole::Security, AdminRole::Auditor],
        "leases.list",
        None,
    )
    .await?;
    let page = app.list_leases(q.as_deref(), ev).await?;
    Ok(Json(
        json!({"leases": page.leases, "next_after": page.next_after}),
    ))
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with `selector` and `reason`"
)]
struct RevokeBody {
    selector: SelectorSpec,
    reason: Option<String>,
}

async fn revoke(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Json<Value>, ApiError> {
    let (_, ev) = guard(
        &app,
        &conn,
        &[AdminRole::Security],
        "revoke",
        body.selector.environment.as_deref(),
    )
    .await?;
    let done = app.revoke_requested(body.selector, body.reason, ev).await?;
    Ok(Json(
        json!({"revoked": done.lease_ids.len(), "lease_ids": done.lease_ids, "audited": done.audited}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object with `reason`")]
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
    let (id, ev) = guard(app, conn, &[AdminRole::Security], call, Some(env)).await?;
    let state = app
        .set_frozen(env, frozen, body.reason, &id.common_name, ev)
        .await?;
    Ok(Json(
        json!({"environment": env, "frozen": state.frozen, "reason": state.reason.as_str()}),
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
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with `reason` and `confirm`"
)]
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
    // The checks (environment, reason, confirmation) and their refusals' records are the
    // shredding's own.
    let done = app
        .shred_detached(
            env.clone(),
            body.confirm,
            body.reason,
            id.common_name.clone(),
            ev,
        )
        .await?;
    Ok(Json(
        json!({"environment": env, "versions_destroyed": done.versions, "revoked": done.revoked}),
    ))
}
