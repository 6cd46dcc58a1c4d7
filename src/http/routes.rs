//! Public routes: exchange, OAuth token exchange / revocation / introspection, secret reads
//! with broker tokens, self-revocation, the list of environments and per-environment OIDC
//! metadata, health and metrics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::authorize::{BearerToken, LiveGrant};
use super::body::{FormBody, JsonBody};
use crate::app::App;
use crate::error::ApiError;
use crate::exchange::ExchangeRequest;
use crate::grants::grant_actor;
use crate::limits::Class;
use crate::store::Selector;

/// The whole router (public, admin and, in dev mode, the dev issuer).
pub fn router(app: Arc<App>) -> Router {
    let by_source =
        |class| axum::middleware::from_fn_with_state((app.clone(), class), super::limit::by_source);
    let exchanges = Router::new()
        .route("/v1/exchange", post(exchange))
        .route("/v1/oauth/token", post(oauth_token))
        .route_layer(by_source(Class::Exchange));
    let admin = super::admin::router().route_layer(by_source(Class::Admin));
    let reads = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/secrets/{env}/{*path}", get(read_secret))
        .route("/v1/revoke/self", post(revoke_self))
        .route("/v1/envs", get(env_list))
        .route("/v1/envs/{env}", get(env_info))
        .route(
            "/v1/envs/{env}/.well-known/openid-configuration",
            get(env_discovery),
        )
        .route("/v1/envs/{env}/jwks.json", get(env_jwks))
        .route("/v1/envs/{env}/revoked", get(env_revoked))
        .route("/v1/envs/{env}/ca.pem", get(env_ca))
        .route("/v1/envs/{env}/crl.pem", get(env_crl))
        .route("/v1/oauth/revoke", post(oauth_revoke))
        .route("/v1/oauth/introspect", post(oauth_introspect))
        .route_layer(by_source(Class::Read));
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .merge(exchanges)
        .merge(reads)
        .nest("/v1/admin", admin);
    if app.dev.is_some() {
        r = r
            .route(
                "/dev/oidc/.well-known/openid-configuration",
                get(dev_discovery),
            )
            .route("/dev/oidc/jwks.json", get(dev_jwks));
    }
    r.fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.max_body_bytes,
        ))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if !app.ledger.is_alive() {
        return ApiError::unavailable("the exchange ledger", &"its writer has stopped")
            .into_response();
    }
    match app.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => ApiError::unavailable("the store", &e).into_response(),
    }
}

/// How long a scrape waits for the store-wide gauges to be counted.
const METRICS_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn metrics(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    let environments: Vec<String> = app
        .policies
        .load()
        .environments()
        .map(|e| e.name.clone())
        .collect();
    let sample = app
        .metrics
        .sample_store(&app.store, &environments, app.clock.unix());
    // A slow store (or a count already running) does not hold the scrape: after
    // METRICS_STORE_WAIT it answers with the gauges' last values.
    match tokio::time::timeout(METRICS_STORE_WAIT, sample).await {
        Ok(Ok(())) => {}
        // The store-wide gauges keep their last values; the rest is still worth scraping.
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot count leases for /metrics"),
        Err(_) => tracing::warn!("counting leases for /metrics took too long; last values served"),
    }
    // OpenMetrics when the scraper asks for it (Prometheus does), the 0.0.4 text format
    // otherwise: the content type always names the format of the body.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::negotiate(accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        app.metrics.render(format),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with `token` and `environment`"
)]
struct ExchangeBody {
    token: SecretString,
    environment: String,
    #[serde(default)]
    role: Option<String>,
}

async fn exchange(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<super::ConnInfo>,
    JsonBody(body): JsonBody<ExchangeBody>,
) -> Result<Json<Value>, ApiError> {
    let issued = app
        .exchange_detached(ExchangeRequest {
            token: body.token,
            environment: body.environment,
            role: body.role,
            source: Some(conn.peer.ip()),
        })
        .await?;
    Ok(Json(issued.to_json()))
}

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

fn form_get<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// RFC 8693 token exchange: `audience` = environment, `scope` = role; answers the role's
/// `token` credential.
async fn oauth_token(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<super::ConnInfo>,
    FormBody(form): FormBody,
) -> Result<Json<Value>, ApiError> {
    if form_get(&form, "grant_type") != Some(TOKEN_EXCHANGE) {
        return Err(ApiError::InvalidRequest(format!(
            "grant_type must be {TOKEN_EXCHANGE}"
        )));
    }
    let token = form_get(&form, "subject_token")
        .ok_or_else(|| ApiError::InvalidRequest("subject_token is required".into()))?;
    match form_get(&form, "subject_token_type") {
        Some(ID_TOKEN_TYPE | JWT_TYPE) => {}
        _ => {
            return Err(ApiError::InvalidRequest(format!(
                "subject_token_type must be {ID_TOKEN_TYPE} or {JWT_TYPE}"
            )));
        }
    }
    let env = form_get(&form, "audience")
        .ok_or_else(|| ApiError::InvalidRequest("audience (the environment) is required".into()))?;
    let issued = app
        .exchange_detached(ExchangeRequest {
            token: SecretString::from(token.to_string()),
            environment: env.to_string(),
            role: form_get(&form, "scope").map(str::to_string),
            source: Some(conn.peer.ip()),
        })
        .await?;
    let now = app.clock.unix();
    let cred = issued
        .credentials
        .iter()
        .find(|c| c.kind == crate::mint::Kind::Token)
        .or_else(|| issued.credentials.first())
        .ok_or_else(|| ApiError::InvalidRequest("the role grants no credential".into()))?;
    let issued_type = if cred.kind == crate::mint::Kind::Jwt {
        JWT_TYPE
    } else {
        ACCESS_TOKEN_TYPE
    };
    Ok(Json(json!({
        "access_token": cred.value.expose_secret(),
        "issued_token_type": issued_type,
        "token_type": "Bearer",
        "expires_in": (cred.expires_at - now).max(0),
        "scope": issued.role,
    })))
}

async fn read_secret(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<super::ConnInfo>,
    token: Option<BearerToken>,
    Path((env, path)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    // A missing or dead token is the read's own refusal, counted like every refused read.
    let token = token.map(|BearerToken(t)| t);
    let read = app
        .read_secret(
            &env,
            &path,
            None,
            token,
            "Authorization: Bearer",
            Some(conn.peer.ip()),
        )
        .await?;
    Ok(Json(
        json!({"path": read.path, "version": read.version, "data": read.data.exposed()}),
    ))
}

async fn revoke_self(
    State(app): State<Arc<App>>,
    LiveGrant(grant): LiveGrant,
) -> Result<Json<Value>, ApiError> {
    let sel = Selector {
        lease_id: Some(grant.lease_id.clone()),
        ..Selector::default()
    };
    let done = app
        .revoke(
            &sel,
            "revoked by its own job (revoke/self)",
            grant_actor(&grant),
        )
        .await?;
    Ok(Json(
        json!({"revoked": done.lease_ids.len(), "lease_ids": done.lease_ids}),
    ))
}

/// The credential of an introspection or revocation form.
fn form_token(form: &[(String, String)]) -> Result<SecretString, ApiError> {
    form_get(form, "token")
        .map(|t| SecretString::from(t.to_string()))
        .ok_or_else(|| ApiError::InvalidRequest("form field `token` is required".into()))
}

/// RFC 7662 introspection. The caller authenticates with a live broker token or an admin
/// client certificate.
async fn oauth_introspect(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<super::ConnInfo>,
    caller: Option<BearerToken>,
    FormBody(form): FormBody,
) -> Result<Json<Value>, ApiError> {
    if conn.admin.is_none() {
        let BearerToken(caller) = caller.ok_or_else(|| {
            ApiError::InvalidToken(
                "introspection needs a live broker token or an admin certificate".into(),
            )
        })?;
        app.live_token_grant(&caller).await?;
    }
    let token = form_token(&form)?;
    Ok(Json(app.introspect(&token).await?))
}

/// RFC 7009 revocation: possession of the credential is the authority to revoke it (a JWT
/// alone, a broker token with its lease). Unknown tokens are answered 200 too, as the RFC requires.
async fn oauth_revoke(
    State(app): State<Arc<App>>,
    FormBody(form): FormBody,
) -> Result<Json<Value>, ApiError> {
    let token = form_token(&form)?;
    app.revoke_presented(&token).await?;
    Ok(Json(json!({})))
}

/// Unexpired ids of revoked JWTs (alone or with their lease), for services that verify JWTs offline.
async fn env_revoked(
    State(app): State<Arc<App>>,
    Path(env): Path<String>,
) -> Result<Response, ApiError> {
    known_env(&app, &env)?;
    // Listed until they expire plus the leeway verifiers commonly allow.
    let leeway = i64::try_from(app.config.leeway.as_secs()).unwrap_or(0);
    let list = app
        .store
        .revoked_jwts(&env, app.clock.unix() - leeway)
        .await?;
    let entries: Vec<Value> = list
        .iter()
        .map(|(jti, exp)| json!({"jti": jti, "exp": exp}))
        .collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"environment": env, "revoked": entries})),
    )
        .into_response())
}

/// An environment of the policies in force; a name that is not one is refused without being
/// echoed.
fn known_env(app: &App, env: &str) -> Result<(), ApiError> {
    if !crate::names::is_name(env) {
        return Err(ApiError::InvalidRequest(format!(
            "an environment name is {}",
            crate::names::NAME_RULE
        )));
    }
    if app.policies.load().environment(env).is_none() {
        return Err(ApiError::NotFound(crate::names::unknown_environment(env)));
    }
    Ok(())
}

fn pem(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The CA of a known environment (created on first use).
async fn known_env_ca(app: &App, env: &str) -> Result<Arc<crate::mint::x509::EnvCa>, ApiError> {
    known_env(app, env)?;
    app.keyring.prepare(env).await?;
    Ok(app.cas.for_env(env).await?)
}

/// The environment's CA certificate.
async fn env_ca(
    State(app): State<Arc<App>>,
    Path(env): Path<String>,
) -> Result<Response, ApiError> {
    Ok(pem(known_env_ca(&app, &env).await?.ca_pem().to_string()))
}

/// The environment's CRL: serials of revoked certificates that have not expired yet, signed
/// now by the CA, valid for ten minutes.
async fn env_crl(
    State(app): State<Arc<App>>,
    Path(env): Path<String>,
) -> Result<Response, ApiError> {
    let ca = known_env_ca(&app, &env).await?;
    let revoked = app
        .store
        .revoked_certificates(&env, app.clock.unix())
        .await?;
    let crl = ca.crl_pem(
        &revoked,
        app.clock.unix_millis(),
        std::time::Duration::from_secs(600),
        app.clock.as_ref(),
    )?;
    Ok(pem(crl))
}

/// The names of the environments of the policies in force (each also public through
/// `/v1/envs/<env>`), sorted.
async fn env_list(State(app): State<Arc<App>>) -> Json<Value> {
    let policies = app.policies.load();
    let mut names: Vec<&str> = policies.environments().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    Json(json!({"environments": names}))
}

/// What a CI client needs before exchanging: the audience its token must carry.
async fn env_info(
    State(app): State<Arc<App>>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known_env(&app, &env)?;
    let policies = app.policies.load();
    let e = policies
        .environment(&env)
        .ok_or_else(|| ApiError::NotFound(crate::names::unknown_environment(&env)))?;
    Ok(Json(json!({
        "environment": e.name,
        "audience": e.audience,
        "default_role": e.default_role,
        "issuer": app.env_issuer(&env),
    })))
}

async fn env_discovery(
    State(app): State<Arc<App>>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known_env(&app, &env)?;
    let iss = app.env_issuer(&env);
    Ok(Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/jwks.json"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "env", "role", "lease_id", "src"],
    })))
}

async fn env_jwks(
    State(app): State<Arc<App>>,
    Path(env): Path<String>,
) -> Result<Response, ApiError> {
    known_env(&app, &env)?;
    let signer = app.signers.for_env(&env).await?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(json!({"keys": [signer.jwk()]})),
    )
        .into_response())
}

async fn dev_discovery(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let dev = app
        .dev
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("no such route".into()))?;
    Ok(Json(json!({
        "issuer": dev.url,
        "jwks_uri": format!("{}/jwks.json", dev.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })))
}

async fn dev_jwks(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let dev = app
        .dev
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("no such route".into()))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        dev.jwks.clone(),
    )
        .into_response())
}
