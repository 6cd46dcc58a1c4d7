//! The broker's shared state, built once at start: configuration, clock, store, keys,
//! verifier, policies, audit log and metrics.

use std::sync::Arc;

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use crate::audit::{AuditKey, AuditLog};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::rootkey::Purpose;
use crate::crypto::{Keyring, RootKey};
use crate::exchange::ledger::Ledger;
use crate::keys::cas::Cas;
use crate::metrics::Metrics;
use crate::mint::Minters;
use crate::mint::jwt::JwtMinter;
use crate::mint::jwt::Signers;
use crate::mint::postgres::PgTarget;
use crate::mint::postgres::PostgresMinter;
use crate::mint::token::TokenMinter;
use crate::mint::x509::X509Minter;
use crate::oidc::{Verifier, VerifierOptions};
use crate::policy::{
    Grant, GrantKind, PolicyErrors, PolicySet, ServerCapabilities, UnsupportedGrant,
};
use crate::store::Store;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error("{0}")]
    Config(String),
    /// Root key problem.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Invalid policies.
    #[error("invalid policies:\n{0}")]
    Policy(#[from] PolicyErrors),
    /// Audit log problem.
    #[error("audit log: {0}")]
    Audit(String),
    /// Issuer configuration problem.
    #[error("issuers: {0}")]
    Oidc(String),
    /// TLS problem.
    #[error("tls: {0}")]
    Tls(String),
    /// Listener problem.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

/// The dev-mode issuer (only ever set by `serve --dev`).
#[derive(Debug, Clone)]
pub struct DevIssuer {
    /// Its issuer URL.
    pub url: String,
    /// Its public JWKS (JSON text).
    pub jwks: String,
}

/// What the server can serve, for policy validation.
pub struct Capabilities<'a> {
    /// The configuration.
    pub config: &'a Config,
}

impl ServerCapabilities for Capabilities<'_> {
    fn knows_issuer(&self, url: &str) -> bool {
        self.config.issuer.iter().any(|i| i.url == url)
    }

    fn supports_grant(&self, grant: &Grant) -> Result<(), UnsupportedGrant> {
        match &grant.kind {
            GrantKind::Token { .. } | GrantKind::Jwt { .. } | GrantKind::X509 { .. } => Ok(()),
            GrantKind::Postgres { database, .. } => {
                if self.config.postgres.contains_key(database) {
                    Ok(())
                } else {
                    Err(UnsupportedGrant::PostgresTarget(database.clone()))
                }
            }
        }
    }
}

/// Shared state of a running broker.
pub struct App {
    /// Configuration.
    pub(crate) config: Config,
    /// Time source.
    pub(crate) clock: SharedClock,
    /// Store.
    pub(crate) store: Store,
    /// Data keys.
    pub(crate) keyring: Arc<Keyring>,
    /// JWT signing keys.
    pub(crate) signers: Arc<Signers>,
    /// Certificate authorities.
    pub(crate) cas: Arc<Cas>,
    /// `[postgres.<name>]` targets.
    pub(crate) pg_targets: Arc<std::collections::BTreeMap<String, PgTarget>>,
    /// One minter per credential kind.
    pub(crate) minters: Minters,
    /// The exchange's commit stage (group commit of leases and audit records).
    pub(crate) ledger: Ledger,
    /// Wakes the revocation worker.
    pub(crate) revocations: tokio::sync::Notify,
    /// Held while this replica runs the background work.
    pub(crate) leader: tokio::sync::Mutex<Option<crate::store::LeaderLock>>,
    /// Source-token verifier.
    pub(crate) verifier: Verifier,
    /// Verifier of admin client certificates (`tls.admin_client_ca`, `tls.crl`).
    pub(crate) admin_client_auth: Option<Arc<crate::tls::AdminClientAuth>>,
    /// Current policy set (swapped atomically on reload).
    pub(crate) policies: ArcSwap<PolicySet>,
    /// The version of the policies in force, published after every reload that changed them
    /// (`subscribe()` to be told).
    pub(crate) policy_version: tokio::sync::watch::Sender<String>,
    /// Audit log.
    pub(crate) audit: AuditLog,
    /// Key of audit fingerprints.
    pub(crate) audit_key: AuditKey,
    /// Key of broker-token digests.
    pub(crate) token_key: ring::hmac::Key,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// Base URL of this broker.
    pub(crate) public_url: String,
    /// Dev-mode issuer, if running with `--dev`.
    pub(crate) dev: Option<DevIssuer>,
    /// Rate limits, connection caps and timeouts (`[limits]`).
    pub(crate) limits: Arc<crate::limits::Limits>,
    /// Refusals of callers without an identity, audited in aggregate.
    pub(crate) refusals: crate::audit::RefusalTally,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Loads the root key the configuration names.
pub fn load_root_key(config: &Config) -> Result<RootKey, StartError> {
    match (&config.keys.root_key_file, &config.keys.root_key_env) {
        (Some(f), _) => {
            if !f.exists() {
                return Err(StartError::Config(format!(
                    "root key file {} does not exist; create one with `jobpass keys generate --out {}`",
                    f.display(),
                    f.display()
                )));
            }
            Ok(RootKey::load_file(f)?)
        }
        (None, Some(var)) => Ok(RootKey::from_env(var)?),
        (None, None) => Err(StartError::Config(
            "no root key: set keys.root_key_file or keys.root_key_env".into(),
        )),
    }
}

/// The audit key derived from a root key.
pub fn audit_key(root: &RootKey) -> Result<AuditKey, crate::crypto::CryptoError> {
    Ok(AuditKey::from_bytes(*root.derive(Purpose::Audit)?))
}

/// Checks the audit log against its anchor in the store and takes the anchor over (see
/// [`crate::audit::anchor`]): a file behind its anchor stops the start unless
/// `audit.accept_behind_anchor` gives a reason.
async fn anchor_audit(
    config: &Config,
    store: &Store,
    audit: &AuditLog,
    root: &RootKey,
    clock: &SharedClock,
    metrics: &Metrics,
) -> Result<Option<crate::audit::anchor::Anchor>, StartError> {
    let accept = config.audit.accept_behind_anchor.as_deref();
    if accept.is_some_and(|r| r.trim().is_empty()) {
        return Err(StartError::Config(
            "audit.accept_behind_anchor needs a reason (an incident or ticket and why the \
             audit lines are lost), not an empty text"
                .into(),
        ));
    }
    let key = audit_key(root)?;
    crate::audit::anchor::establish(crate::audit::anchor::Start {
        store,
        log: audit,
        key: &key,
        accept,
        now: clock.unix(),
        gauges: metrics.audit_gauges(audit.replica().unwrap_or_default()),
    })
    .await
    .map_err(|e| StartError::Audit(e.to_string()))
}

/// Loads and validates the policy directory against the configuration.
pub fn load_policies(config: &Config) -> Result<PolicySet, PolicyErrors> {
    PolicySet::load_dir(&config.policies, &Capabilities { config })
}

impl App {
    /// The configuration it was built from.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Its time source.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Its store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The data keys (sealing and opening records).
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The exchange ledger (stop it to release the store and the audit log).
    #[must_use]
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The policy set in force now.
    #[must_use]
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// The version of the policy set in force, updated on every reload that changes it.
    #[must_use]
    pub fn watch_policy_version(&self) -> tokio::sync::watch::Receiver<String> {
        self.policy_version.subscribe()
    }

    /// The verifier of admin client certificates, for the TLS server configuration (None
    /// without `tls.admin_client_ca`).
    #[must_use]
    pub fn admin_client_auth(&self) -> Option<Arc<crate::tls::AdminClientAuth>> {
        self.admin_client_auth.clone()
    }

    /// A `[postgres.<name>]` target.
    #[must_use]
    pub fn pg_target(&self, name: &str) -> Option<&PgTarget> {
        self.pg_targets.get(name)
    }

    /// The URL it is reached at (issuer of the JWTs it mints).
    #[must_use]
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Its rate limits, connection caps and timeouts (shared by every listener).
    #[must_use]
    pub fn limits(&self) -> Arc<crate::limits::Limits> {
        self.limits.clone()
    }

    /// Counts a refusal of a caller who proved no identity (written in aggregate by
    /// [`App::flush_refusals`]).
    pub fn note_refusal(
        &self,
        source: Option<std::net::IpAddr>,
        call: &'static str,
        answer: &crate::error::ApiError,
    ) {
        if let crate::error::ApiError::RateLimited(l) = answer {
            self.metrics.rate_limited(l);
        }
        self.refusals
            .note(source, call, answer.code(), self.clock.unix());
    }

    /// A call of `class` from `source`, against its source's and the global rate (a refusal
    /// is counted).
    ///
    /// # Errors
    /// 429 when over a rate.
    pub fn check_source(
        &self,
        class: crate::limits::Class,
        source: std::net::IpAddr,
    ) -> Result<(), crate::error::ApiError> {
        self.limits.rates.check_source(class, source).map_err(|l| {
            let answer = crate::error::ApiError::RateLimited(l);
            self.note_refusal(Some(source), class.name(), &answer);
            answer
        })
    }

    /// Writes the aggregate records of the refusals counted since the last flush.
    ///
    /// # Errors
    /// The audit log's failure (the counts are lost, and logged).
    pub async fn flush_refusals(&self) -> Result<(), crate::audit::AuditError> {
        let records = self.refusals.take();
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        self.audit.append_all(records).await.map_err(|e| {
            tracing::error!(error = %e, records = n, "audit log write failed for refusal counts");
            e
        })?;
        Ok(())
    }
}

impl App {
    /// Builds the state: opens the store, audit log and policies. Refuses to start on an
    /// invalid policy or a missing root key.
    pub async fn build(
        config: Config,
        clock: SharedClock,
        dev: Option<DevIssuer>,
    ) -> Result<Arc<App>, StartError> {
        let root = load_root_key(&config)?;
        let policies = load_policies(&config)?;
        let admin_client_auth = crate::tls::AdminClientAuth::from_config(&config.tls, &*clock)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let admin_crl = admin_client_auth.as_ref().and_then(|a| a.crl_info());
        let store = Store::open(&config.store).await?;
        let keyring = Arc::new(Keyring::new(
            root.derive(Purpose::Wrap)?,
            store.clone(),
            clock.clone(),
        ));
        let signers = Arc::new(Signers::new(store.clone(), keyring.clone(), clock.clone()));
        let cas = Arc::new(Cas::new(store.clone(), keyring.clone(), clock.clone()));
        let mut pg_targets = std::collections::BTreeMap::new();
        for (name, target) in &config.postgres {
            let t = PgTarget::new(name, &target.url)
                .map_err(|e| StartError::Config(format!("[postgres.{name}]: {e}")))?;
            pg_targets.insert(name.clone(), t);
        }
        let verifier = Verifier::new(
            &config.issuer,
            clock.clone(),
            VerifierOptions {
                leeway: config.leeway,
                max_token_bytes: 16 * 1024,
                jwks_min_refresh: std::time::Duration::from_secs(30),
                jwks_max_age: std::time::Duration::from_secs(15 * 60),
            },
        )
        .map_err(|e| StartError::Oidc(e.to_string()))?;
        if let Some(d) = &dev {
            verifier
                .add_static_issuer(&d.url, &d.jwks)
                .map_err(|e| StartError::Oidc(e.to_string()))?;
        }
        let audit = AuditLog::open(
            &config.audit.file,
            audit_key(&root)?,
            clock.clone(),
            config.audit.replica.clone(),
            config.audit.stdout,
        )
        .map_err(|e| StartError::Audit(e.to_string()))?;
        let token_key_bytes: Zeroizing<[u8; 32]> = root.derive(Purpose::TokenHash)?;
        let token_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &token_key_bytes[..]);
        let public_url = config.public_url();
        let pg_targets = Arc::new(pg_targets);
        let minters = Minters {
            token: TokenMinter::new(token_key.clone()),
            jwt: JwtMinter::new(signers.clone()),
            postgres: PostgresMinter::new(pg_targets.clone(), store.clone()),
            x509: X509Minter::new(cas.clone()),
        };
        let metrics = Metrics::new().with_admin_crl(admin_crl);
        let anchor = anchor_audit(&config, &store, &audit, &root, &clock, &metrics).await?;
        let ledger = Ledger::start_anchored(
            store.clone(),
            audit.clone(),
            keyring.clone(),
            clock.clone(),
            anchor,
        );
        let limits = Arc::new(crate::limits::Limits::new(
            &config.limits,
            metrics.connection_counter(),
        ));
        Ok(Arc::new(App {
            audit_key: audit_key(&root)?,
            config,
            clock,
            store,
            keyring,
            signers,
            cas,
            pg_targets,
            minters,
            ledger,
            revocations: tokio::sync::Notify::new(),
            leader: tokio::sync::Mutex::new(None),
            verifier,
            admin_client_auth,
            policy_version: tokio::sync::watch::Sender::new(policies.version().to_string()),
            policies: ArcSwap::from_pointee(policies),
            audit,
            token_key,
            metrics,
            public_url,
            dev,
            limits,
            refusals: crate::audit::RefusalTally::new(),
        }))
    }

    /// Whether this replica runs the background work (sweeper, revocation worker,
    /// reconciliation): exactly one replica does at a time; when it dies another takes over.
    pub async fn lead(&self) -> bool {
        let mut held = self.leader.lock().await;
        if let Some(lock) = held.as_mut() {
            if lock.alive().await {
                return true;
            }
            *held = None;
        }
        match self.store.try_leader_lock().await {
            Ok(Some(lock)) => {
                tracing::info!("this replica now runs the background work");
                *held = Some(lock);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the background-work lock");
                false
            }
        }
    }

    /// Waits up to `within` until this replica runs the background work: true at once if it
    /// does, else as soon as the replica that does dies (its lock is released with its
    /// session); false when `within` passes first (the wait is bounded so that a connection
    /// lost without a word cannot hold a standby forever: the caller asks again). It holds the
    /// replica's lock slot while it waits, so [`App::lead`] waits too instead of taking a
    /// second lock of its own in another session.
    pub async fn wait_lead(
        &self,
        within: std::time::Duration,
    ) -> Result<bool, crate::store::StoreError> {
        let mut held = self.leader.lock().await;
        if let Some(lock) = held.as_mut() {
            if lock.alive().await {
                return Ok(true);
            }
            *held = None;
        }
        // On timeout the waiting connection is dropped, which ends its session's wait.
        let Ok(lock) = tokio::time::timeout(within, self.store.wait_leader_lock()).await else {
            return Ok(false);
        };
        let lock = lock?;
        tracing::info!("this replica now runs the background work");
        *held = Some(lock);
        Ok(true)
    }

    /// Issuer URL of an environment's minted JWTs.
    pub fn env_issuer(&self, env: &str) -> String {
        format!("{}/v1/envs/{env}", self.public_url)
    }
}
