//! A Vault-compatible subset of the API on a separate listener (`vault_compat_listen`), so
//! that Vault clients in CI (hvac, node-vault, vault-action, GitLab's `secrets: vault:`) work by
//! changing the server address.
//!
//! The routes, and nothing else (any other path answers 404, another method 405):
//!
//! | Route | Vault equivalent | jobpass behaviour |
//! |---|---|---|
//! | `GET /v1/sys/health` | health | 200 `{"initialized": true, "sealed": false, …}`; 503 (`sealed: true`) when the store is unreachable |
//! | `POST` or `PUT /v1/auth/<env>/login` `{"role", "jwt"}` | JWT auth login | one exchange ([`App::exchange`]: verification, replay protection, policy, audit); answers the role's `token` credential as `auth.client_token` |
//! | `GET` or `POST /v1/auth/token/lookup-self` | token lookup | the token's lease, role, environment and remaining TTL |
//! | `POST` or `PUT /v1/auth/token/revoke-self` | token revocation | revokes the token's whole lease (every credential of it); 204 |
//! | `GET /v1/<env>/data/<path>[?version=N]` | KV v2 read | `{"data": {"data": {…}, "metadata": {…}}}` |
//! | `GET /v1/<env>/<path>` | KV v1 read | `{"data": {…}}` |
//!
//! A login's mount is the environment; an empty or missing `role` means the environment's
//! `default_role`. The client token is the role's broker token (`jpt_…`): `accessor` is the
//! lease id, `policies` is `[role]`, the token is not renewable. A role without a `token` grant
//! is refused before anything is minted; the role's other credentials are minted as the policy
//! says but only the native `POST /v1/exchange` returns them. Login ignores a stale
//! `X-Vault-Token` and any `X-Vault-Namespace`; the request body is read as JSON whatever its
//! `Content-Type` (the Vault Go client sends none).
//!
//! KV reads take the token from `X-Vault-Token` (or `Authorization: Bearer`) and go through the
//! same checks and the same `secret_read` audit record as the native `GET /v1/secrets/…`.
//! Because the mount is the environment, a KV v1 read of a path whose first segment is `data`
//! is taken as a KV v2 read; `sys` and `auth` are not KV mounts. Writes, deletes, lists and
//! KV `metadata/` reads are not served (405, or 403/404 like any path outside the token's
//! globs).
//!
//! A successful login is audited as the ordinary `exchange` record (the same one as
//! `POST /v1/exchange`); a login refused because its role has no `token` grant is refused
//! before its token is verified, so it is counted into the aggregate `refusals` records like
//! every refusal of a caller who proved no identity.
//!
//! Errors are Vault's shape, `{"errors": ["…"]}` with `Content-Type: application/json`, and
//! keep the native statuses, except: a missing, unknown, expired or revoked token answers 403
//! with `"permission denied"` first (as Vault does), and a source JWT that fails verification
//! at login answers 400 (as Vault's JWT auth method does). Every response carries
//! `Cache-Control: no-store`.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::authorize::bearer;
use super::body::{describe_json_error, read_limited};
use crate::app::App;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::exchange::ExchangeRequest;
use crate::grants::grant_actor;
use crate::limits::Class;
use crate::store::{Selector, TokenGrant};

/// The header Vault clients send their token in.
const VAULT_TOKEN: &str = "x-vault-token";

/// The Vault-compatible routes.
pub fn router(app: Arc<App>) -> Router {
    let by_source = |class| {
        axum::middleware::from_fn_with_state((app.clone(), class), super::limit::by_source_vault)
    };
    let logins = Router::new()
        .route("/v1/auth/{mount}/login", post(login).put(login))
        .route_layer(by_source(Class::Exchange));
    let reads = Router::new()
        .route("/v1/sys/health", get(health))
        .route(
            "/v1/auth/token/lookup-self",
            get(lookup_self).post(lookup_self),
        )
        .route(
            "/v1/auth/token/revoke-self",
            post(revoke_self).put(revoke_self),
        )
        .route("/v1/{mount}/{*path}", get(kv_read))
        .route_layer(by_source(Class::Read));
    Router::new()
        .merge(logins)
        .merge(reads)
        .fallback(not_found)
        .method_not_allowed_fallback(unsupported_operation)
        .layer(axum::middleware::map_response(no_store))
        .with_state(app)
}

/// An error answered Vault's way: `{"errors": ["…"]}`, `Content-Type: application/json`.
#[derive(Debug)]
pub struct VaultError {
    status: StatusCode,
    errors: Vec<String>,
    retry_after: Option<u64>,
}

impl VaultError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![message.into()],
            retry_after: None,
        }
    }

    /// 403 `permission denied`, then the reason.
    fn permission_denied(reason: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            errors: vec!["permission denied".into(), reason],
            retry_after: None,
        }
    }

    /// The mapping for a login: a source JWT that fails verification is a bad request, as in
    /// Vault's JWT auth method.
    fn from_login(e: ApiError) -> Self {
        match e {
            ApiError::InvalidToken(m) => Self::new(
                StatusCode::BAD_REQUEST,
                format!("error validating token: {m}"),
            ),
            other => Self::from(other),
        }
    }
}

impl From<ApiError> for VaultError {
    /// Native statuses, except that token failures are 403 `permission denied`, as in Vault.
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidToken(m) | ApiError::AccessDenied(m) => Self::permission_denied(m),
            ApiError::RateLimited(l) => Self {
                retry_after: Some(l.retry_after_secs),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ApiError::RateLimited(l).to_string(),
                )
            },
            other => {
                let (status, _) = other.status_and_code();
                Self::new(status, other.to_string())
            }
        }
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({"errors": self.errors}))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn not_found() -> VaultError {
    VaultError::new(
        StatusCode::NOT_FOUND,
        "no handler for this route: the Vault-compatible listener serves sys/health, \
         auth/<environment>/login, auth/token/lookup-self, auth/token/revoke-self and KV reads",
    )
}

async fn unsupported_operation() -> VaultError {
    VaultError::new(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
}

/// A Vault-shaped response envelope around `data` and/or `auth`.
fn envelope(data: Value, auth: Value, mount_type: &str) -> Result<Value, ApiError> {
    Ok(json!({
        "request_id": request_id()?,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth,
        "mount_type": mount_type,
    }))
}

/// A random UUID (version 4 layout), like Vault's request ids.
fn request_id() -> Result<String, ApiError> {
    let mut b = crate::crypto::random::bytes::<16>()
        .map_err(|e| ApiError::unavailable("randomness", &e))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn json_ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// The Vault token of a request: `X-Vault-Token`, else `Authorization: Bearer`.
fn vault_token(headers: &HeaderMap) -> Option<SecretString> {
    headers
        .get(VAULT_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_string()))
        .or_else(|| bearer(headers))
}

/// The live grant of the request's token, or 403 `permission denied`.
async fn token_grant(app: &App, headers: &HeaderMap) -> Result<TokenGrant, VaultError> {
    let token = vault_token(headers).ok_or_else(|| {
        VaultError::permission_denied("a broker token is required (X-Vault-Token)".into())
    })?;
    Ok(app.live_token_grant(&token).await.map_err(ApiError::from)?)
}

// ---- sys/health ----

async fn health(State(app): State<Arc<App>>) -> Response {
    let ok = match app.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "the store is unreachable (Vault-compatible health)");
            false
        }
    };
    let body = json!({
        "initialized": true,
        "sealed": !ok,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": app.clock.unix(),
        "version": concat!("jobpass-", env!("CARGO_PKG_VERSION")),
        "cluster_name": "jobpass",
        "cluster_id": "",
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

// ---- auth/<env>/login ----

#[derive(Deserialize, Default)]
#[serde(expecting = "a JSON object with `jwt` and `role`")]
struct LoginBody {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    jwt: Option<SecretString>,
}

async fn login(
    State(app): State<Arc<App>>,
    Path(mount): Path<String>,
    req: Request,
) -> Result<Response, VaultError> {
    // The body is JSON whatever the Content-Type says; headers (a stale X-Vault-Token, an
    // empty X-Vault-Namespace) play no part in a login.
    let source = req
        .extensions()
        .get::<super::ConnInfo>()
        .map(|c| c.peer.ip());
    let bytes = read_limited(req, app.config.max_body_bytes).await?;
    let body: LoginBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        LoginBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::InvalidRequest(describe_json_error(&e)))?
    };
    let jwt = body
        .jwt
        .filter(|j| !j.expose_secret().trim().is_empty())
        .ok_or_else(|| VaultError::new(StatusCode::BAD_REQUEST, "missing jwt"))?;
    let role = body.role.filter(|r| !r.trim().is_empty());
    refuse_role_without_token(&app, &mount, role.as_deref(), source)?;

    let issued = app
        .exchange_detached(ExchangeRequest {
            token: jwt,
            environment: mount.clone(),
            role,
            source,
        })
        .await
        .map_err(VaultError::from_login)?;

    let now = app.clock.unix();
    let Some(cred) = issued.credential(crate::mint::Kind::Token) else {
        // The policy changed between the check above and the exchange: end the lease, whose
        // credentials nobody will receive.
        let sel = Selector {
            lease_id: Some(issued.lease_id.clone()),
            ..Selector::default()
        };
        let actor = crate::audit::Actor::broker();
        let reason = "the role grants no token for the Vault-compatible login";
        if let Err(e) = app.revoke(&sel, reason, actor).await {
            tracing::error!(error = %e, "could not revoke an undeliverable lease");
        }
        return Err(no_token_grant(&issued.role));
    };
    let ttl = (cred.expires_at - now).max(0);
    let auth = json!({
        "client_token": cred.value.expose_secret(),
        "accessor": issued.lease_id,
        "policies": [issued.role],
        "token_policies": [issued.role],
        "identity_policies": null,
        "metadata": {"role": issued.role, "environment": issued.environment},
        "lease_duration": ttl,
        "renewable": false,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": 0,
    });
    Ok(json_ok(envelope(Value::Null, auth, "")?))
}

fn no_token_grant(role: &str) -> VaultError {
    VaultError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "role `{role}` grants no `token` credential, which a Vault-compatible login \
             returns as its client token; use POST /v1/exchange for this role"
        ),
    )
}

/// Refuses, before anything is minted or the source token is spent, a login whose role has no
/// `token` grant. The caller has proved nothing yet, so the refusal is counted into the
/// aggregate refusal records. Unknown environments and roles are left to the exchange.
fn refuse_role_without_token(
    app: &App,
    env: &str,
    role: Option<&str>,
    source: Option<std::net::IpAddr>,
) -> Result<(), VaultError> {
    let policies = app.policies.load_full();
    let Some(environment) = policies.environment(env) else {
        return Ok(());
    };
    let Some(name) = role.or(environment.default_role.as_deref()) else {
        return Ok(());
    };
    let Some(r) = environment.role(name) else {
        return Ok(());
    };
    if r.grants.iter().any(|g| g.kind.name() == "token") {
        return Ok(());
    }
    let err = no_token_grant(name);
    app.metrics.exchange("invalid_request");
    app.note_refusal(source, "exchange", &ApiError::InvalidRequest(String::new()));
    Err(err)
}

// ---- auth/token/* ----

async fn lookup_self(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, VaultError> {
    let grant = token_grant(&app, &headers).await?;
    let now = app.clock.unix();
    let issued_at = app
        .store
        .lease(&grant.lease_id)
        .await
        .map_err(ApiError::from)?
        .map_or(now, |l| l.issued_at);
    let data = json!({
        "accessor": grant.lease_id,
        "creation_time": issued_at,
        "creation_ttl": (grant.expires_at - issued_at).max(0),
        "display_name": format!("{}-{}", grant.env, grant.subject),
        "entity_id": "",
        "expire_time": rfc3339(grant.expires_at),
        "explicit_max_ttl": 0,
        "id": "",
        "issue_time": rfc3339(issued_at),
        "meta": {"role": grant.role, "environment": grant.env},
        "num_uses": 0,
        "orphan": true,
        "path": format!("auth/{}/login", grant.env),
        "policies": [grant.role],
        "renewable": false,
        "ttl": (grant.expires_at - now).max(0),
        "type": "service",
    });
    Ok(json_ok(envelope(data, Value::Null, "token")?))
}

async fn revoke_self(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<StatusCode, VaultError> {
    let grant = token_grant(&app, &headers).await?;
    let sel = Selector {
        lease_id: Some(grant.lease_id.clone()),
        ..Selector::default()
    };
    app.revoke(
        &sel,
        "revoked by its own job (Vault auth/token/revoke-self)",
        grant_actor(&grant),
    )
    .await
    .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- KV reads ----

#[derive(Deserialize, Default)]
struct KvQuery {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    list: Option<String>,
}

async fn kv_read(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    Extension(conn): Extension<super::ConnInfo>,
) -> Result<Response, VaultError> {
    let source = Some(conn.peer.ip());
    let Path((env, rest)) =
        path.map_err(|_| VaultError::new(StatusCode::BAD_REQUEST, "invalid path encoding"))?;
    if env == "sys" || env == "auth" {
        return Err(not_found().await);
    }
    let q: KvQuery = match query.as_deref() {
        Some(q) if !q.is_empty() => serde_urlencoded::from_str(q)
            .map_err(|_| VaultError::new(StatusCode::BAD_REQUEST, "invalid query string"))?,
        _ => KvQuery::default(),
    };
    if q.list.as_deref().is_some_and(|l| l == "true" || l == "1") {
        return Err(unsupported_operation().await);
    }
    let token = vault_token(&headers);
    match rest.strip_prefix("data/") {
        Some(path) => {
            let version = match q.version.as_deref().map(str::parse::<i64>) {
                None | Some(Ok(0)) => None,
                Some(Ok(v)) if v > 0 => Some(v),
                Some(_) => {
                    return Err(VaultError::new(
                        StatusCode::BAD_REQUEST,
                        "version must be a positive integer",
                    ));
                }
            };
            let read = app
                .read_secret(&env, path, version, token, "X-Vault-Token", source)
                .await?;
            let data = json!({
                "data": read.data.exposed(),
                "metadata": {
                    "created_time": rfc3339(read.created_at),
                    "custom_metadata": null,
                    "deletion_time": "",
                    "destroyed": false,
                    "version": read.version,
                },
            });
            Ok(json_ok(envelope(data, Value::Null, "kv")?))
        }
        None => {
            let read = app
                .read_secret(&env, &rest, None, token, "X-Vault-Token", source)
                .await?;
            let data = json!(read.data.exposed());
            Ok(json_ok(envelope(data, Value::Null, "kv")?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_failures_are_permission_denied() {
        let e = VaultError::from(ApiError::InvalidToken("this credential was revoked".into()));
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.errors[0], "permission denied");
        let e = VaultError::from(ApiError::AccessDenied("no".into()));
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = VaultError::from(ApiError::NotFound("no secret".into()));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.errors, vec!["no secret".to_string()]);
        let e = VaultError::from(ApiError::Unavailable("down".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn unverifiable_login_token_is_a_bad_request() {
        let e = VaultError::from_login(ApiError::InvalidToken("expired".into()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = VaultError::from_login(ApiError::Replayed);
        assert_eq!(e.status, StatusCode::CONFLICT);
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[14..15], "4");
    }
}
