//! Admin API (`/v1/admin/…`, SPEC §4): callers authenticate with a TLS client certificate
//! from the configured admin CA whose subject OU names their role; each handler names the call
//! it serves in its signature (`Authorized<…>`, see [`super::authorize`]), which checks the role
//! and audits a refusal before anything else of the request is read. Every authorized call and
//! every refusal of a role is audited with the certificate's common name and role, and so are
//! the domain's refusals (unknown environment, missing reason, bad selector or query); a body
//! or path that does not parse is answered 400 before any domain function runs, and recorded
//! as the authorized caller's refused call.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::authorize::{
    Authorized, Freeze, KeysDestroy, KeysRewrap, KeysRotate, LeasesList, Revoke, SecretsDelete,
    SecretsGet, SecretsList, SecretsPut, Unfreeze,
};
use super::body::JsonBody;
use crate::app::App;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::leases::revoke::SelectorSpec;
use crate::store::SecretRow;

/// The parsed input of an authorized call, or its refusal on the caller's record.
async fn input<C, T>(
    app: &App,
    call: &Authorized<C>,
    parsed: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => Err(call.refuse(app, e).await),
    }
}

/// A path segment that does not decode.
fn path_error(_: PathRejection) -> ApiError {
    ApiError::InvalidRequest("the path does not decode as UTF-8".into())
}

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
    call: Authorized<SecretsPut>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<JsonBody<PutSecret>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let Path((env, path)) = input(&app, &call, path.map_err(path_error)).await?;
    let JsonBody(body) = input(&app, &call, body).await?;
    let w = app.put_secret(&env, &path, body.data, call.ev).await?;
    Ok(Json(
        json!({"path": path, "version": w.version, "fields": w.fields,
        "created_at": rfc3339(w.created_at)}),
    ))
}

async fn get_secret(
    State(app): State<Arc<App>>,
    call: Authorized<SecretsGet>,
    Path((env, path)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let rows = app.secret_versions(&env, &path, call.ev).await?;
    Ok(Json(secret_meta(&path, &rows)))
}

async fn list_secrets(
    State(app): State<Arc<App>>,
    call: Authorized<SecretsList>,
    Path(env): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or_default();
    let prefix = params
        .iter()
        .find(|(k, _)| k == "prefix")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let paths = app.secret_paths(&env, &prefix, call.ev).await?;
    Ok(Json(json!({"environment": env, "paths": paths})))
}

async fn delete_secret(
    State(app): State<Arc<App>>,
    call: Authorized<SecretsDelete>,
    Path((env, path)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let n = app.delete_secret(&env, &path, call.ev).await?;
    Ok(Json(json!({"path": path, "deleted_versions": n})))
}

async fn list_leases(
    State(app): State<Arc<App>>,
    call: Authorized<LeasesList>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let page = app.list_leases(q.as_deref(), call.ev).await?;
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
    call: Authorized<Revoke>,
    body: Result<JsonBody<RevokeBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let JsonBody(body) = input(&app, &call, body).await?;
    let mut ev = call.ev;
    ev.environment.clone_from(&body.selector.environment);
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

async fn set_frozen<C>(
    app: &App,
    call: Authorized<C>,
    env: &str,
    frozen: bool,
    body: ReasonBody,
) -> Result<Json<Value>, ApiError> {
    let state = app
        .set_frozen(env, frozen, body.reason, &call.id.common_name, call.ev)
        .await?;
    Ok(Json(
        json!({"environment": env, "frozen": state.frozen, "reason": state.reason.as_str()}),
    ))
}

async fn freeze(
    State(app): State<Arc<App>>,
    call: Authorized<Freeze>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<ReasonBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let Path(env) = input(&app, &call, path.map_err(path_error)).await?;
    let JsonBody(body) = input(&app, &call, body).await?;
    set_frozen(&app, call, &env, true, body).await
}

async fn unfreeze(
    State(app): State<Arc<App>>,
    call: Authorized<Unfreeze>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<ReasonBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let Path(env) = input(&app, &call, path.map_err(path_error)).await?;
    let JsonBody(body) = input(&app, &call, body).await?;
    set_frozen(&app, call, &env, false, body).await
}

async fn keys_rotate(
    State(app): State<Arc<App>>,
    call: Authorized<KeysRotate>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let version = app.rotate_key(&env, call.ev).await?;
    Ok(Json(json!({"environment": env, "version": version})))
}

async fn keys_rewrap(
    State(app): State<Arc<App>>,
    call: Authorized<KeysRewrap>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let done = app.rewrap_keys(&env, call.ev).await?;
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
    call: Authorized<KeysDestroy>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<DestroyBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let Path(env) = input(&app, &call, path.map_err(path_error)).await?;
    let JsonBody(body) = input(&app, &call, body).await?;
    // The checks (environment, reason, confirmation) and their refusals' records are the
    // shredding's own.
    let done = app
        .shred_detached(
            env.clone(),
            body.confirm,
            body.reason,
            call.id.common_name.clone(),
            call.ev,
        )
        .await?;
    Ok(Json(
        json!({"environment": env, "versions_destroyed": done.versions, "revoked": done.revoked}),
    ))
}
