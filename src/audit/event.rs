//! What a caller hands to the audit log: the event, its actor and its outcome.

use serde::Serialize;
use serde_json::{Map, Value};

use super::MaskedCredential;

/// Who caused an event.
///
/// Optional fields that are `None` and an empty `claims` map are left out of the record.
#[derive(Serialize, Clone, Default, Debug, PartialEq)]
pub struct Actor {
    /// `"token"` (a CI job's OIDC token or a broker token), `"admin"` (an admin client
    /// certificate) or `"broker"` (the broker itself: expiry, reload, …).
    pub kind: String,
    /// The token's `sub`, or the admin certificate's common name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The token's `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The admin role (`admin`, `security`, `auditor`) from the certificate's `OU`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Chosen claims of the token (repository, ref, run id, …). Never put a secret here.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
}

impl Actor {
    /// A CI job identified by its token's subject and issuer.
    #[must_use]
    pub fn token(subject: Option<&str>, issuer: Option<&str>) -> Self {
        Self {
            kind: "token".to_owned(),
            subject: subject.map(str::to_owned),
            issuer: issuer.map(str::to_owned),
            ..Self::default()
        }
    }

    /// An admin identified by its certificate's common name and role.
    #[must_use]
    pub fn admin(common_name: &str, role: &str) -> Self {
        Self {
            kind: "admin".to_owned(),
            subject: Some(common_name.to_owned()),
            role: Some(role.to_owned()),
            ..Self::default()
        }
    }

    /// The broker itself.
    #[must_use]
    pub fn broker() -> Self {
        Self {
            kind: "broker".to_owned(),
            ..Self::default()
        }
    }

    /// Adds one chosen claim.
    #[must_use]
    pub fn with_claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.to_owned(), value);
        self
    }
}

/// How an event ended. Serialized lowercase: `success`, `denied`, `failure`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done as asked.
    Success,
    /// Refused by policy, authorization, replay protection or a freeze.
    Denied,
    /// Could not be done (an error).
    Failure,
}

/// One event as a caller hands it in; the log adds `seq`, `time`, `replica`, `prev` and `mac`.
///
/// Fields must never hold a raw secret: credentials go in as [`MaskedCredential`], and
/// `reason` / `details` are written verbatim.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// Event type: `exchange`, `secret_read`, `replay`, `revoke`, `freeze`, `unfreeze`,
    /// `secret_put`, `secret_delete`, `key_rotate`, `policy_reload`, `admin_call`, …
    pub event: String,
    /// Who caused it.
    pub actor: Actor,
    /// Environment concerned.
    pub environment: Option<String>,
    /// Role concerned.
    pub role: Option<String>,
    /// Lease concerned.
    pub lease_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why (denial reason, incident number, error summary).
    pub reason: Option<String>,
    /// Version of the policy set that decided.
    pub policy_version: Option<String>,
    /// Credentials minted, read or revoked, masked.
    pub credentials: Vec<MaskedCredential>,
    /// Anything else worth keeping (secret path, selector, counts, …).
    pub details: Map<String, Value>,
}

impl AuditEvent {
    /// An event with the given type and outcome, actor `broker`, everything else empty.
    #[must_use]
    pub fn new(event: &str, outcome: Outcome) -> Self {
        Self {
            event: event.to_owned(),
            actor: Actor::broker(),
            environment: None,
            role: None,
            lease_id: None,
            outcome,
            reason: None,
            policy_version: None,
            credentials: Vec::new(),
            details: Map::new(),
        }
    }

    /// Sets the actor.
    #[must_use]
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// Sets the environment.
    #[must_use]
    pub fn with_environment(mut self, environment: &str) -> Self {
        self.environment = Some(environment.to_owned());
        self
    }

    /// Sets the role.
    #[must_use]
    pub fn with_role(mut self, role: &str) -> Self {
        self.role = Some(role.to_owned());
        self
    }

    /// Sets the lease id.
    #[must_use]
    pub fn with_lease_id(mut self, lease_id: &str) -> Self {
        self.lease_id = Some(lease_id.to_owned());
        self
    }

    /// Sets the reason.
    #[must_use]
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }

    /// Sets the policy version.
    #[must_use]
    pub fn with_policy_version(mut self, version: &str) -> Self {
        self.policy_version = Some(version.to_owned());
        self
    }

    /// Adds a masked credential.
    #[must_use]
    pub fn with_credential(mut self, credential: MaskedCredential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// Adds one detail.
    #[must_use]
    pub fn with_detail(mut self, name: &str, value: Value) -> Self {
        self.details.insert(name.to_owned(), value);
        self
    }
}
