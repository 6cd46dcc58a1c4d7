//! The exchange path (SPEC §2): **verify → policy → mint → seal → store → audit**, then answer.
//!
//! Guarantees:
//! - nothing is minted for a token that fails verification, replay or policy;
//! - a source token is used at most once (primary key on issuer + jti, or the token hash);
//! - no credential leaves the broker unless its lease is committed to the store AND its audit
//!   record is durable: the audit record is written inside the store transaction, before the
//!   commit; if it cannot be written the transaction rolls back and the answer is 503;
//! - every outcome (allowed, denied, replayed, failed) is audited, values masked.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::audit::{Actor, AuditEvent, MaskedCredential, Outcome};
use crate::clock::rfc3339;
use crate::crypto::{random, sha256, token_digest};
use crate::error::ApiError;
use crate::mint::jwt::JwtSigner;
use crate::mint::{self, MintError};
use crate::oidc::VerifiedToken;
use crate::policy::{Denial, GrantKind, Role};
use crate::store::{CredentialRow, LeaseRow, PgIntent};

/// An exchange request (from `/v1/exchange` or `/v1/oauth/token`).
pub struct ExchangeRequest {
    /// The source OIDC token.
    pub token: SecretString,
    /// Environment asked for.
    pub environment: String,
    /// Role asked for (None: the environment's default role).
    pub role: Option<String>,
}

/// One minted credential.
pub struct IssuedCredential {
    /// Grant name.
    pub name: String,
    /// Grant kind.
    pub kind: &'static str,
    /// The secret value: broker token, JWT, database password or certificate private key.
    pub value: SecretString,
    /// Public parts (username, host, certificate, CA…).
    pub public: Map<String, Value>,
    /// Unix seconds.
    pub expires_at: i64,
}

impl IssuedCredential {
    /// The JSON field holding the secret value for this kind (SPEC §2).
    pub fn secret_field(&self) -> &'static str {
        match self.kind {
            "postgres" => "password",
            "x509" => "private_key_pem",
            _ => "token",
        }
    }
}

/// Key material loaded before the write transaction.
#[derive(Default)]
struct Keys {
    sealer: Option<crate::crypto::keyring::Sealer>,
    signer: Option<std::sync::Arc<JwtSigner>>,
    ca: Option<std::sync::Arc<crate::mint::x509::EnvCa>>,
}

/// A PostgreSQL role created for an exchange in progress.
struct PgRole {
    grant: String,
    target: String,
    role_name: String,
    password: SecretString,
}

/// Everything the transactional half of an exchange needs.
struct Finish<'a> {
    ev: AuditEvent,
    env_name: &'a str,
    policy_version: &'a str,
    verified: &'a VerifiedToken,
    replay: &'a [u8; 32],
    decision: Result<&'a Role, Denial>,
    lease_id: &'a str,
    now: i64,
    expires_at: i64,
    keys: &'a Keys,
    external: &'a [PgRole],
}

/// A successful exchange.
pub struct Issued {
    /// Lease id.
    pub lease_id: String,
    /// Environment.
    pub environment: String,
    /// Role.
    pub role: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Credentials.
    pub credentials: Vec<IssuedCredential>,
}

impl Issued {
    /// The SPEC §2 response body. This is the only place minted values are exposed.
    pub fn to_json(&self) -> Value {
        let creds: Vec<Value> = self
            .credentials
            .iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert("name".into(), Value::String(c.name.clone()));
                m.insert("kind".into(), Value::String(c.kind.into()));
                m.insert(
                    c.secret_field().into(),
                    Value::String(c.value.expose_secret().to_string()),
                );
                for (k, v) in &c.public {
                    if k != "serial" {
                        m.insert(k.clone(), v.clone());
                    }
                }
                m.insert("expires_at".into(), Value::String(rfc3339(c.expires_at)));
                Value::Object(m)
            })
            .collect();
        json!({"lease_id": self.lease_id, "environment": self.environment, "role": self.role,
               "expires_at": rfc3339(self.expires_at), "credentials": creds})
    }
}

/// Claims copied into the audit actor and the lease's searchable claims, when present.
pub const ACTOR_CLAIMS: &[&str] = &[
    "repository",
    "repository_owner",
    "ref",
    "ref_path",
    "environment",
    "event_name",
    "workflow",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "actor",
    "project_path",
    "namespace_path",
    "pipeline_id",
    "job_id",
    "organization_slug",
    "pipeline_slug",
    "build_number",
];

/// Largest claim value kept in the searchable index.
const MAX_INDEXED_VALUE: usize = 512;

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The audit actor of a verified source token.
pub fn token_actor(t: &VerifiedToken) -> Actor {
    let mut claims = Map::new();
    for name in ACTOR_CLAIMS {
        if let Some(v) = t.claims.get(*name).and_then(scalar_text) {
            claims.insert((*name).to_string(), Value::String(v));
        }
    }
    Actor {
        kind: "token".into(),
        subject: Some(t.subject.clone()),
        issuer: Some(t.issuer.clone()),
        role: None,
        claims,
    }
}

fn indexed_claims(t: &VerifiedToken) -> Vec<(String, String)> {
    t.claims
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "exp" | "iat" | "nbf" | "aud"))
        .filter_map(|(k, v)| scalar_text(v).map(|s| (k.clone(), s)))
        .filter(|(k, v)| k.len() <= 128 && v.len() <= MAX_INDEXED_VALUE)
        .collect()
}

/// Replay key: SHA-256 of issuer and jti; without a jti, of issuer and the signed part of the
/// token (header and payload) — never of the signature, which an attacker can re-encode
/// (ECDSA signatures are malleable) without invalidating it.
fn replay_key(t: &VerifiedToken, raw: &str) -> [u8; 32] {
    match &t.jti {
        Some(jti) => sha256(format!("jti\u{0}{}\u{0}{jti}", t.issuer).as_bytes()),
        None => {
            let signed = raw.rsplit_once('.').map_or(raw, |(signed, _)| signed);
            sha256(format!("signed\u{0}{}\u{0}{signed}", t.issuer).as_bytes())
        }
    }
}

impl App {
    async fn audit_denial(&self, mut ev: AuditEvent, err: &ApiError) {
        ev.reason = Some(err.to_string());
        ev.details
            .insert("error".into(), Value::String(err.code().into()));
        self.metrics.exchange(err.code());
        if let Err(e) = self.audit.append(ev).await {
            tracing::error!(error = %e, "audit log write failed for a denial");
        }
    }

    /// Runs one exchange end to end.
    pub async fn exchange(&self, req: ExchangeRequest) -> Result<Issued, ApiError> {
        let started = std::time::Instant::now();
        let r = self.exchange_inner(req).await;
        self.metrics.observe_exchange(started.elapsed());
        r
    }

    async fn exchange_inner(&self, req: ExchangeRequest) -> Result<Issued, ApiError> {
        let policies = self.policies.load_full();
        let mut ev = AuditEvent::new("exchange", Outcome::Denied);
        ev.environment = Some(req.environment.clone());
        ev.role = req.role.clone();
        ev.policy_version = Some(policies.version().to_string());

        let Some(env) = policies.environment(&req.environment) else {
            let err =
                ApiError::InvalidRequest(format!("unknown environment `{}`", req.environment));
            self.audit_denial(ev, &err).await;
            return Err(err);
        };
        // Resolve the role before verifying, so unknown roles cost nothing.
        let role_name = match req.role.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => r.to_string(),
            None => match &env.default_role {
                Some(r) => r.clone(),
                None => {
                    let err = ApiError::InvalidRequest(
                        "no role given and the environment has no default role".into(),
                    );
                    self.audit_denial(ev, &err).await;
                    return Err(err);
                }
            },
        };
        ev.role = Some(role_name.clone());
        if env.role(&role_name).is_none() {
            let err = ApiError::InvalidRequest(format!(
                "unknown role `{role_name}` in environment `{}`",
                env.name
            ));
            self.audit_denial(ev, &err).await;
            return Err(err);
        }

        let mut trusted = env.issuers.clone();
        if let Some(dev) = &self.dev {
            trusted.push(dev.url.clone());
        }
        let verified = match self
            .verifier
            .verify(req.token.expose_secret(), &trusted, &env.audience)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let err = ApiError::from(e);
                self.audit_denial(ev, &err).await;
                return Err(err);
            }
        };
        ev.actor = token_actor(&verified);

        // Policy evaluation is pure; its verdict is reported after the replay check.
        let decision = env.evaluate(Some(&role_name), &verified.claims);
        let replay = replay_key(&verified, req.token.expose_secret());
        let now = self.clock.unix();
        let lease_id = random::time_ordered_id("lse_", self.clock.unix_millis())
            .map_err(|e| ApiError::unavailable("randomness", &e))?;
        // No credential outlives the environment's max_ttl (nor a year, whatever a policy says).
        let expires_at = decision.as_ref().map_or(now, |role| {
            let ttl = role
                .ttl
                .min(env.max_ttl)
                .min(std::time::Duration::from_secs(366 * 86_400));
            now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(0))
        });

        // Everything that needs the store's writer or an external system happens before the
        // write transaction: key material, and PostgreSQL roles (recorded as intents first).
        let mut keys = Keys::default();
        let mut external = Vec::new();
        if let Ok(role) = &decision {
            keys.sealer = Some(self.keyring.sealer(&env.name).await?);
            let has = |k: &str| role.grants.iter().any(|g| g.kind.name() == k);
            if has("jwt") {
                keys.signer = Some(self.signers.for_env(&env.name).await?);
            }
            if has("x509") {
                keys.ca = Some(self.cas.for_env(&env.name).await?);
            }
            if has("postgres")
                && !self.store.replay_seen(&replay).await?
                && !self.store.is_frozen(&env.name).await?
            {
                external = self
                    .create_pg_roles(role, &env.name, &lease_id, expires_at)
                    .await?;
            }
        }

        let ctx = Finish {
            ev,
            env_name: &env.name,
            policy_version: policies.version(),
            verified: &verified,
            replay: &replay,
            decision,
            lease_id: &lease_id,
            now,
            expires_at,
            keys: &keys,
            external: &external,
        };
        let result = self.finish_exchange(ctx).await;
        if result.is_err() {
            self.drop_pg_roles(&external).await;
        }
        result
    }

    /// Creates the PostgreSQL roles of a role's `postgres` grants, each recorded as an intent
    /// first. On failure the roles created so far are dropped.
    async fn create_pg_roles(
        &self,
        role: &Role,
        env: &str,
        lease_id: &str,
        expires_at: i64,
    ) -> Result<Vec<PgRole>, ApiError> {
        let mut created: Vec<PgRole> = Vec::new();
        for grant in &role.grants {
            let GrantKind::Postgres {
                database,
                member_of,
            } = &grant.kind
            else {
                continue;
            };
            let step = async {
                let target = self.pg_targets.get(database).ok_or_else(|| {
                    ApiError::unavailable(
                        "postgres target",
                        &format!("`{database}` is not configured"),
                    )
                })?;
                let role_name = mint::postgres::new_role_name()?;
                let password = mint::postgres::new_password()?;
                self.store
                    .insert_intent(
                        &PgIntent {
                            role_name: role_name.clone(),
                            target: database.clone(),
                            env: env.to_string(),
                            lease_id: lease_id.to_string(),
                        },
                        self.clock.unix(),
                    )
                    .await?;
                let pg = PgRole {
                    grant: grant.name.clone(),
                    target: database.clone(),
                    role_name,
                    password,
                };
                if let Err(e) = target
                    .create_role(&pg.role_name, &pg.password, expires_at, member_of)
                    .await
                {
                    self.drop_pg_roles(std::slice::from_ref(&pg)).await;
                    return Err(ApiError::from(e));
                }
                Ok(pg)
            };
            match step.await {
                Ok(pg) => created.push(pg),
                Err(e) => {
                    self.drop_pg_roles(&created).await;
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// Drops roles created for an exchange that did not complete, and forgets their intents
    /// (an intent whose drop failed stays, and reconciliation retries it).
    async fn drop_pg_roles(&self, roles: &[PgRole]) {
        for pg in roles {
            let Some(target) = self.pg_targets.get(&pg.target) else {
                continue;
            };
            match target.drop_role(&pg.role_name).await {
                Ok(()) => {
                    let _ = self.store.delete_intent(&pg.role_name).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not drop the role of an aborted exchange; reconciliation will retry")
                }
            }
        }
    }

    async fn finish_exchange(&self, c: Finish<'_>) -> Result<Issued, ApiError> {
        let Finish {
            mut ev,
            env_name,
            policy_version,
            verified,
            replay,
            decision,
            lease_id,
            now,
            expires_at,
            keys,
            external,
        } = c;
        let mut tx = self.store.begin().await?;
        let replay_expiry =
            verified.expires_at + i64::try_from(self.config.leeway.as_secs()).unwrap_or(0);
        if !tx
            .claim_replay(replay, &verified.issuer, now, replay_expiry)
            .await?
        {
            drop(tx);
            let mut rev = ev.clone();
            rev.event = "replay".into();
            rev.reason = Some("source token presented again: possible token theft".into());
            if let Some(j) = &verified.jti {
                rev.details.insert("jti".into(), Value::String(j.clone()));
            }
            self.metrics.exchange("token_replayed");
            self.audit.append(rev).await?;
            return Err(ApiError::Replayed);
        }

        // Checked inside the write transaction, so no exchange commits after a freeze has.
        if tx.environment_frozen(env_name).await? {
            drop(tx);
            let err = ApiError::Frozen(env_name.to_string());
            self.audit_denial(ev, &err).await;
            return Err(err);
        }

        let role = match decision {
            Ok(r) => r,
            Err(denial) => {
                drop(tx);
                if let Denial::Condition { claim, .. } = &denial {
                    ev.details
                        .insert("claim".into(), Value::String(claim.clone()));
                    self.metrics.denial(claim);
                }
                let err = ApiError::AccessDenied(denial.public_message());
                self.audit_denial(ev, &err).await;
                return Err(err);
            }
        };

        let (credentials, rows) = self.mint_grants(
            role,
            env_name,
            lease_id,
            verified,
            keys,
            external,
            (now, expires_at),
        )?;

        let masked: Vec<MaskedCredential> = credentials
            .iter()
            .map(|c| {
                MaskedCredential::new(&self.audit_key, &c.name, c.kind, c.value.expose_secret())
            })
            .collect();
        // The sealed lease keeps what revocation needs (PostgreSQL role names) encrypted.
        let details = json!({
            "claims": Value::Object(verified.claims.clone()),
            "credentials": masked.iter().zip(&rows).map(|(m, r)| json!({
                "id": r.id, "name": m.name, "kind": m.kind, "masked": m.masked, "fingerprint": m.fingerprint,
            })).collect::<Vec<_>>(),
            "postgres": external.iter().map(|pg| json!({"target": pg.target, "role": pg.role_name})).collect::<Vec<_>>(),
        });
        let sealer = keys
            .sealer
            .as_ref()
            .ok_or_else(|| ApiError::from(MintError::Key("data key not loaded".into())))?;
        let (key_version, sealed) =
            sealer.seal("leases", lease_id, details.to_string().as_bytes())?;
        let lease = LeaseRow {
            id: lease_id.to_string(),
            env: env_name.to_string(),
            role: role.name.clone(),
            issuer: verified.issuer.clone(),
            subject: verified.subject.clone(),
            policy_version: policy_version.to_string(),
            issued_at: now,
            expires_at,
            revoked_at: None,
            revoke_reason: None,
            key_version,
            sealed,
            revocation: None,
            revocation_attempts: 0,
        };
        tx.insert_lease(&lease, &indexed_claims(verified)).await?;
        for row in &rows {
            tx.insert_credential(row).await?;
        }
        // The lease takes over from the role intents; if reconciliation claimed one first
        // (this exchange took too long), the exchange aborts and its roles are dropped.
        for pg in external {
            if !tx.take_intent(&pg.role_name).await? {
                return Err(ApiError::Unavailable(
                    "the exchange took too long and was abandoned; nothing was issued".into(),
                ));
            }
        }

        ev.outcome = Outcome::Success;
        ev.lease_id = Some(lease_id.to_string());
        ev.credentials = masked;
        ev.details
            .insert("expires_at".into(), Value::String(rfc3339(expires_at)));
        if let Err(e) = self.audit.append(ev.clone()).await {
            // Fail closed: the transaction is dropped (rolled back), nothing was stored.
            drop(tx);
            self.metrics.exchange("unavailable");
            return Err(ApiError::from(e));
        }
        if let Err(e) = tx.commit().await {
            let mut abort = ev;
            abort.event = "exchange_aborted".into();
            abort.outcome = Outcome::Failure;
            abort.reason = Some("the store could not commit the lease; nothing was issued".into());
            if let Err(ae) = self.audit.append(abort).await {
                tracing::error!(error = %ae, "audit log write failed");
            }
            self.metrics.exchange("unavailable");
            return Err(ApiError::from(e));
        }
        self.metrics.exchange("success");
        Ok(Issued {
            lease_id: lease_id.to_string(),
            environment: env_name.to_string(),
            role: role.name.clone(),
            expires_at,
            credentials,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn mint_grants(
        &self,
        role: &Role,
        env: &str,
        lease_id: &str,
        src: &VerifiedToken,
        keys: &Keys,
        external: &[PgRole],
        (now, expires_at): (i64, i64),
    ) -> Result<(Vec<IssuedCredential>, Vec<CredentialRow>), ApiError> {
        let mut creds = Vec::with_capacity(role.grants.len());
        let mut rows = Vec::with_capacity(role.grants.len());
        for grant in &role.grants {
            let id = random::time_ordered_id("crd_", self.clock.unix_millis())
                .map_err(|e| ApiError::unavailable("randomness", &e))?;
            let mut public = Map::new();
            let (kind, value, token_hash, scope) = match &grant.kind {
                GrantKind::Token { secrets } => {
                    let t = mint::token::mint()?;
                    let digest = token_digest(&self.token_key, t.expose_secret());
                    let scope = serde_json::to_string(secrets).unwrap_or_else(|_| "[]".into());
                    ("token", t, Some(digest), scope)
                }
                GrantKind::Jwt { audience, claims } => {
                    let signer = keys.signer.as_deref().ok_or_else(|| {
                        ApiError::from(MintError::Key("signing key not loaded".into()))
                    })?;
                    let mut body = claims.clone();
                    let mut src_claims = Map::new();
                    for name in ACTOR_CLAIMS {
                        if let Some(v) = src.claims.get(*name) {
                            src_claims.insert((*name).to_string(), v.clone());
                        }
                    }
                    src_claims.insert("iss".into(), Value::String(src.issuer.clone()));
                    for (k, v) in [
                        ("iss", Value::String(self.env_issuer(env))),
                        ("sub", Value::String(src.subject.clone())),
                        ("aud", Value::String(audience.clone())),
                        ("iat", json!(now)),
                        ("nbf", json!(now)),
                        ("exp", json!(expires_at)),
                        ("jti", Value::String(id.clone())),
                        ("env", Value::String(env.to_string())),
                        ("role", Value::String(role.name.clone())),
                        ("lease_id", Value::String(lease_id.to_string())),
                        ("src", Value::Object(src_claims)),
                    ] {
                        body.insert(k.to_string(), v);
                    }
                    let jwt = signer.sign(&Value::Object(body))?;
                    ("jwt", SecretString::from(jwt), None, "[]".to_string())
                }
                GrantKind::X509 { common_name } => {
                    let ca = keys
                        .ca
                        .as_deref()
                        .ok_or_else(|| ApiError::from(MintError::Key("CA not loaded".into())))?;
                    let san = format!("jobpass://{env}/{}/{lease_id}", role.name);
                    let cert = ca.issue(common_name, &san, expires_at, self.clock.as_ref())?;
                    public.insert(
                        "certificate_pem".into(),
                        Value::String(cert.certificate_pem),
                    );
                    public.insert("ca_pem".into(), Value::String(ca.ca_pem().to_string()));
                    public.insert("serial".into(), Value::String(cert.serial_hex.clone()));
                    let scope = json!({"serial": cert.serial_hex}).to_string();
                    ("x509", cert.private_key_pem, None, scope)
                }
                GrantKind::Postgres { database, .. } => {
                    let pg = external
                        .iter()
                        .find(|p| p.grant == grant.name)
                        .ok_or_else(|| {
                            ApiError::from(MintError::Database {
                                target: database.clone(),
                                reason: "role was not created".into(),
                            })
                        })?;
                    let target = self.pg_targets.get(database).ok_or_else(|| {
                        ApiError::from(MintError::Database {
                            target: database.clone(),
                            reason: "not configured".into(),
                        })
                    })?;
                    public.insert("username".into(), Value::String(pg.role_name.clone()));
                    public.insert("host".into(), Value::String(target.host().to_string()));
                    public.insert("port".into(), json!(target.port()));
                    public.insert(
                        "database".into(),
                        Value::String(target.database().to_string()),
                    );
                    let scope = json!({"target": database}).to_string();
                    ("postgres", pg.password.clone(), None, scope)
                }
            };
            rows.push(CredentialRow {
                id,
                lease_id: lease_id.to_string(),
                env: env.to_string(),
                name: grant.name.clone(),
                kind: kind.to_string(),
                token_hash,
                scope,
                expires_at,
            });
            creds.push(IssuedCredential {
                name: grant.name.clone(),
                kind,
                value,
                public,
                expires_at,
            });
        }
        Ok((creds, rows))
    }
}
