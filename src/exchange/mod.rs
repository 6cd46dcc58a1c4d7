//! The exchange (SPEC §2) as a typed pipeline:
//!
//! **resolve** (environment, role) → **verify** (the OIDC token) → **decide** (policy) →
//! **prepare** (keys and external resources, outside any transaction) → **issue** (mint the
//! values, seal the lease) → **commit** (the group-committing [`ledger`]) → **answer**.
//!
//! Each stage fails with an [`ExchangeError`]; the pipeline's one exit turns the outcome into
//! the audit record ([`audit::ExchangeAudit::record`]) unless the ledger already wrote it
//! inside its batch, so no exit skips the audit log.
//!
//! Guarantees:
//! - nothing is minted for a token that fails verification, replay or policy;
//! - a source token is used at most once (primary key on issuer + jti, or on the token's
//!   signed part; first wins inside a batch);
//! - no credential leaves the broker unless its lease is committed to the store AND its audit
//!   record is durable (see [`ledger`]); otherwise the answer is 503 and nothing is stored;
//! - every outcome (allowed, denied, replayed, failed) is audited, values masked;
//! - external resources created for an exchange that does not commit (PostgreSQL roles) are
//!   torn down.

pub mod audit;
pub mod error;
pub mod ledger;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use self::audit::{ExchangeAudit, Verdict};
pub use self::error::ExchangeError;
use self::ledger::Entry;
use crate::app::App;
use crate::audit::{Actor, MaskedCredential};
use crate::clock::rfc3339;
use crate::crypto::{random, sha256};
pub use crate::mint::IssuedCredential;
use crate::mint::{Kind, MintContext, Minted, Prepared};
use crate::oidc::VerifiedToken;
use crate::policy::{Environment, PolicySet, Role};
use crate::store::{LeaseRow, NewLease, ReplaySlot};

/// An exchange request (from `/v1/exchange`, `/v1/oauth/token` or the Vault-compatible login).
pub struct ExchangeRequest {
    /// The source OIDC token.
    pub token: SecretString,
    /// Environment asked for.
    pub environment: String,
    /// Role asked for (None: the environment's default role).
    pub role: Option<String>,
    /// The caller's address (the TCP peer), for rate limits and refusal counts.
    pub source: Option<std::net::IpAddr>,
}

/// A successful exchange.
#[derive(Debug)]
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
                let mut m = Map::with_capacity(c.public.len() + 4);
                m.insert("name".into(), Value::String(c.name.clone()));
                m.insert("kind".into(), Value::String(c.kind.name().into()));
                m.insert(
                    c.kind.secret_field().into(),
                    Value::String(c.value.expose_secret().to_string()),
                );
                for (k, v) in &c.public {
                    m.insert(k.clone(), v.clone());
                }
                m.insert("expires_at".into(), Value::String(rfc3339(c.expires_at)));
                Value::Object(m)
            })
            .collect();
        json!({"lease_id": self.lease_id, "environment": self.environment, "role": self.role,
               "expires_at": rfc3339(self.expires_at), "credentials": creds})
    }

    /// The first credential of `kind`.
    #[must_use]
    pub fn credential(&self, kind: Kind) -> Option<&IssuedCredential> {
        self.credentials.iter().find(|c| c.kind == kind)
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

/// Longest claim name kept in the searchable index (selectors refuse longer names, so no
/// lookup is ever silently short). Values are indexed whatever their length (the token is at
/// most 16 KiB).
pub const MAX_INDEXED_NAME: usize = 128;

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
        .filter(|(k, _)| k.len() <= MAX_INDEXED_NAME)
        // No database keeps a NUL byte in text (PostgreSQL refuses the row).
        .filter(|(k, v)| !k.contains('\0') && !v.contains('\0'))
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

/// What a lease keeps sealed: the source claims, its credentials masked, and what revocation
/// needs (PostgreSQL role names). Serialized straight from the borrowed parts.
#[derive(serde::Serialize)]
struct LeaseDetails<'a> {
    claims: &'a Map<String, Value>,
    credentials: Vec<CredentialDetails<'a>>,
    postgres: Vec<PgRoleDetails<'a>>,
}

#[derive(serde::Serialize)]
struct CredentialDetails<'a> {
    id: &'a str,
    #[serde(flatten)]
    masked: &'a MaskedCredential,
}

#[derive(serde::Serialize)]
struct PgRoleDetails<'a> {
    target: &'a str,
    role: &'a str,
}

/// An outcome the pipeline still has to record, or one the ledger recorded.
struct Refusal {
    error: ExchangeError,
    recorded: bool,
}

impl From<ExchangeError> for Refusal {
    fn from(error: ExchangeError) -> Self {
        Refusal {
            error,
            recorded: false,
        }
    }
}

/// resolve: the environment and role asked for. Names are checked first, so that nothing
/// longer than a short identifier is ever echoed or recorded.
fn resolve<'p>(
    policies: &'p PolicySet,
    req: &ExchangeRequest,
) -> Result<(&'p Environment, String), ExchangeError> {
    if !crate::names::is_name(&req.environment) {
        return Err(ExchangeError::InvalidName("environment"));
    }
    if let Some(role) = req.role.as_deref().filter(|r| !r.is_empty())
        && !crate::names::is_name(role)
    {
        return Err(ExchangeError::InvalidName("role"));
    }
    let env = policies
        .environment(&req.environment)
        .ok_or_else(|| ExchangeError::UnknownEnvironment(req.environment.clone()))?;
    let role = match req.role.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None => env.default_role.clone().ok_or(ExchangeError::NoRole)?,
    };
    if env.role(&role).is_none() {
        return Err(ExchangeError::UnknownRole {
            env: env.name.clone(),
            role,
        });
    }
    Ok((env, role))
}

impl App {
    /// Runs an exchange in its own task: if the caller goes away (the client disconnects, the
    /// request times out) the exchange still finishes — audit record and commit, or abort
    /// record — instead of being cut between the two.
    pub async fn exchange_detached(
        self: &std::sync::Arc<Self>,
        req: ExchangeRequest,
    ) -> Result<Issued, crate::error::ApiError> {
        let app = self.clone();
        tokio::spawn(async move { app.exchange(req).await })
            .await
            .map_err(|e| crate::error::ApiError::unavailable("the exchange task", &e))?
    }

    /// Runs one exchange end to end: every outcome is audited exactly once — on its own line
    /// once the token is verified, else counted into the aggregate refusal records
    /// ([`App::note_refusal`]), as is every rate-limited exchange.
    pub async fn exchange(&self, req: ExchangeRequest) -> Result<Issued, crate::error::ApiError> {
        let started = tokio::time::Instant::now();
        let policies = self.policies.load_full();
        let mut audit = ExchangeAudit::new(policies.version());
        let outcome = self.pipeline(&req, &policies, &mut audit).await;
        let result = match outcome {
            Ok(issued) => {
                self.metrics.exchange("success");
                Ok(issued)
            }
            Err(Refusal { error, recorded }) => {
                if let ExchangeError::Denied(crate::policy::Denial::Condition { claim, .. }) =
                    &error
                {
                    self.metrics.denial(claim);
                }
                let answer = crate::error::ApiError::from(&error);
                self.metrics.exchange(answer.code());
                // Its own line for a verified caller within its record budget; counted
                // otherwise (no identity, a rate limit, or a caller over its budget).
                let own_line = !matches!(error, ExchangeError::RateLimited(_))
                    && audit
                        .caller()
                        .is_some_and(|c| recorded || self.limits.rates.own_record(c));
                if !own_line {
                    self.note_refusal(req.source, "exchange", &answer);
                } else if !recorded {
                    let record = audit.record(&Verdict::Refused(&error, &answer));
                    if let Err(e) = self.audit.append(record).await {
                        tracing::error!(error = %e, "audit log write failed for a refused exchange");
                        // A possible theft is never left unrecorded silently: fail closed.
                        if matches!(error, ExchangeError::Replayed) {
                            return Err(crate::error::ApiError::from(&ExchangeError::Audit(e)));
                        }
                    }
                }
                Err(answer)
            }
        };
        self.metrics.observe_exchange(started.elapsed());
        result
    }

    async fn pipeline(
        &self,
        req: &ExchangeRequest,
        policies: &PolicySet,
        audit: &mut ExchangeAudit,
    ) -> Result<Issued, Refusal> {
        // resolve (before verifying, so unknown roles cost nothing)
        let (env, role_name) = resolve(policies, req)?;
        audit.resolved(&env.name, &role_name);

        // verify
        let verified = self.verify(env, &req.token).await?;
        audit.token(token_actor(&verified), verified.jti.as_deref());
        self.limits
            .rates
            .check_subject(
                crate::limits::Class::Exchange,
                (verified.issuer.as_str(), verified.subject.as_str()),
            )
            .map_err(ExchangeError::RateLimited)?;
        let replay = replay_key(&verified, req.token.expose_secret());

        // decide: a refused token still learns first whether it was replayed or the
        // environment frozen (checked against committed state).
        let role = match env.evaluate(Some(&role_name), &verified.claims) {
            Ok(role) => role,
            Err(denial) => {
                self.not_replayed_nor_frozen(&replay, &env.name).await?;
                return Err(ExchangeError::Denied(denial).into());
            }
        };

        // prepare
        let now = self.clock.unix();
        let lease_id = random::time_ordered_id("lse_", self.clock.unix_millis())
            .map_err(ExchangeError::from)?;
        // No credential outlives the environment's max_ttl (nor a year, whatever a policy says).
        let ttl = role
            .ttl
            .min(env.max_ttl)
            .min(std::time::Duration::from_secs(366 * 86_400));
        let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(0));
        let jwt_issuer = self.env_issuer(&env.name);
        let cx = MintContext {
            env: &env.name,
            role: &role.name,
            lease_id: &lease_id,
            source: &verified,
            now,
            expires_at,
            jwt_issuer: &jwt_issuer,
            clock: self.clock.as_ref(),
        };
        let sealer = self
            .keyring
            .sealer_cached(&env.name)
            .await
            .map_err(ExchangeError::from)?;
        if role
            .grants
            .iter()
            .any(|g| Kind::of(&g.kind) == Kind::Postgres)
        {
            // Creating a database role is costly: not for a replayed token or a frozen
            // environment (the batch checks both again, authoritatively).
            self.not_replayed_nor_frozen(&replay, &env.name).await?;
        }
        let prepared = self
            .minters
            .prepare(&role.grants, &cx)
            .await
            .map_err(ExchangeError::from)?;

        // issue, then commit; what was prepared is torn down unless the lease commits.
        let result = self
            .issue_and_commit(
                role,
                &cx,
                (&verified, replay),
                (&prepared, &sealer),
                policies.version(),
                audit,
            )
            .await;
        if result.is_err() {
            self.minters.teardown(&prepared).await;
        }
        result
    }

    /// A replay, then a freeze, as committed now (a read-only early check).
    async fn not_replayed_nor_frozen(
        &self,
        replay: &[u8; 32],
        env: &str,
    ) -> Result<(), ExchangeError> {
        if self.store.replay_seen(replay).await? {
            return Err(ExchangeError::Replayed);
        }
        if self.store.is_frozen(env).await? {
            return Err(ExchangeError::Frozen(env.to_string()));
        }
        Ok(())
    }

    /// verify: the source token against the environment's issuers and audience.
    async fn verify(
        &self,
        env: &Environment,
        token: &SecretString,
    ) -> Result<VerifiedToken, ExchangeError> {
        let extra = self.dev.as_ref().map(|d| d.url.clone());
        let trusted: std::borrow::Cow<'_, [String]> = match extra {
            Some(dev) => {
                let mut all = env.issuers.clone();
                all.push(dev);
                std::borrow::Cow::Owned(all)
            }
            None => std::borrow::Cow::Borrowed(&env.issuers),
        };
        Ok(self
            .verifier
            .verify(token.expose_secret(), &trusted, &env.audience)
            .await?)
    }

    /// issue → commit → answer.
    async fn issue_and_commit(
        &self,
        role: &Role,
        cx: &MintContext<'_>,
        (verified, replay): (&VerifiedToken, [u8; 32]),
        (prepared, sealer): (&[Prepared], &crate::crypto::keyring::Sealer),
        policy_version: &str,
        audit: &mut ExchangeAudit,
    ) -> Result<Issued, Refusal> {
        // issue
        let minted: Vec<Minted> = self
            .minters
            .issue(&role.grants, prepared, cx)
            .map_err(ExchangeError::from)?;
        let masked: Vec<MaskedCredential> = minted
            .iter()
            .map(|m| {
                let c = &m.credential;
                MaskedCredential::new(
                    &self.audit_key,
                    &c.name,
                    c.kind.name(),
                    c.value.expose_secret(),
                )
            })
            .collect();
        // The sealed lease keeps what revocation needs (PostgreSQL role names) encrypted.
        let pg_roles: Vec<(&str, &str)> = prepared
            .iter()
            .filter_map(|p| match p {
                Prepared::Postgres(c) => Some((c.target.as_str(), c.role_name.as_str())),
                _ => None,
            })
            .collect();
        let details = LeaseDetails {
            claims: &verified.claims,
            credentials: masked
                .iter()
                .zip(&minted)
                .map(|(m, c)| CredentialDetails {
                    id: &c.row.id,
                    masked: m,
                })
                .collect(),
            postgres: pg_roles
                .iter()
                .map(|&(target, role)| PgRoleDetails { target, role })
                .collect(),
        };
        let details =
            serde_json::to_vec(&details).map_err(|e| ExchangeError::Internal(e.to_string()))?;
        let (key_version, sealed) = sealer
            .seal("leases", cx.lease_id, &details)
            .map_err(ExchangeError::from)?;
        audit.lease(cx.lease_id, masked, cx.expires_at);
        let (credentials, rows): (Vec<IssuedCredential>, Vec<_>) =
            minted.into_iter().map(|m| (m.credential, m.row)).unzip();
        let entry = Entry {
            env: cx.env.to_string(),
            slot: ReplaySlot {
                key: replay,
                issuer: verified.issuer.clone(),
                expires_at: verified.expires_at
                    + i64::try_from(self.config.leeway.as_secs()).unwrap_or(0),
            },
            lease: NewLease {
                lease: LeaseRow {
                    id: cx.lease_id.to_string(),
                    env: cx.env.to_string(),
                    role: role.name.clone(),
                    issuer: verified.issuer.clone(),
                    subject: verified.subject.clone(),
                    policy_version: policy_version.to_string(),
                    issued_at: cx.now,
                    expires_at: cx.expires_at,
                    revoked_at: None,
                    revoke_reason: None,
                    key_version,
                    sealed,
                    revocation: None,
                    revocation_attempts: 0,
                },
                claims: indexed_claims(verified),
                credentials: rows,
            },
            intents: pg_roles.iter().map(|(_, r)| (*r).to_string()).collect(),
            audit: audit.clone(),
        };

        // commit
        let reply = self.ledger.submit(entry).await;
        if let Err(error) = reply.result {
            return Err(Refusal {
                error,
                recorded: reply.recorded,
            });
        }

        // answer
        Ok(Issued {
            lease_id: cx.lease_id.to_string(),
            environment: cx.env.to_string(),
            role: role.name.clone(),
            expires_at: cx.expires_at,
            credentials,
        })
    }
}
