//! The one place where the outcome of an exchange becomes its audit record (SPEC §6: every
//! exchange, allowed or denied, is one line). The ledger writes the records of outcomes
//! decided inside a batch (issued, replayed, frozen, abandoned) before the batch commits; the
//! pipeline writes the record of every other outcome; both through [`ExchangeAudit::record`].

use serde_json::Value;

use super::error::ExchangeError;
use crate::audit::{AuditEvent, MaskedCredential, Outcome};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::policy::Denial;

/// How an exchange ended, for its record.
pub enum Verdict<'a> {
    /// Credentials issued and committed.
    Issued,
    /// Refused or failed: the cause, and the answer the client gets.
    Refused(&'a ExchangeError, &'a ApiError),
}

/// What the record of one exchange says, filled in stage by stage.
#[derive(Clone, Debug)]
pub struct ExchangeAudit {
    base: AuditEvent,
    jti: Option<String>,
    lease: Option<LeaseFacts>,
    verified: bool,
}

#[derive(Clone, Debug)]
struct LeaseFacts {
    id: String,
    credentials: Vec<MaskedCredential>,
    expires_at: i64,
}

impl ExchangeAudit {
    /// The record of an exchange decided under `policy_version`.
    #[must_use]
    pub fn new(policy_version: &str) -> Self {
        let mut base = AuditEvent::new("exchange", Outcome::Denied);
        base.policy_version = Some(policy_version.to_string());
        Self {
            base,
            jti: None,
            lease: None,
            verified: false,
        }
    }

    /// The environment and role resolved (the default role when none was asked for).
    pub fn resolved(&mut self, environment: &str, role: &str) {
        self.base.environment = Some(environment.to_string());
        self.base.role = Some(role.to_string());
    }

    /// The verified token's actor and `jti`.
    pub fn token(&mut self, actor: crate::audit::Actor, jti: Option<&str>) {
        self.base.actor = actor;
        self.jti = jti.map(str::to_string);
        self.verified = true;
    }

    /// Whether the source token was verified (the caller proved an identity).
    #[must_use]
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// The verified caller (issuer and subject), the key of its own-line record budget.
    #[must_use]
    pub fn caller(&self) -> Option<(&str, &str)> {
        let actor = &self.base.actor;
        match (self.verified, &actor.issuer, &actor.subject) {
            (true, Some(iss), Some(sub)) => Some((iss.as_str(), sub.as_str())),
            _ => None,
        }
    }

    /// The lease about to be committed, with its credentials masked.
    pub fn lease(&mut self, id: &str, credentials: Vec<MaskedCredential>, expires_at: i64) {
        self.lease = Some(LeaseFacts {
            id: id.to_string(),
            credentials,
            expires_at,
        });
    }

    /// The record of `verdict`.
    #[must_use]
    pub fn record(&self, verdict: &Verdict<'_>) -> AuditEvent {
        let mut ev = self.base.clone();
        match verdict {
            Verdict::Issued => {
                ev.outcome = Outcome::Success;
                self.add_lease(&mut ev);
            }
            Verdict::Refused(cause, answer) => {
                ev.reason = Some(answer.to_string());
                ev.details
                    .insert("error".into(), Value::String(answer.code().into()));
                match cause {
                    ExchangeError::Replayed => {
                        ev.event = "replay".into();
                        ev.reason =
                            Some("source token presented again: possible token theft".into());
                        if let Some(j) = &self.jti {
                            ev.details.insert("jti".into(), Value::String(j.clone()));
                        }
                    }
                    ExchangeError::Denied(Denial::Condition { claim, .. }) => {
                        ev.details
                            .insert("claim".into(), Value::String(claim.clone()));
                    }
                    ExchangeError::NotCommitted(_) => {
                        ev.event = "exchange_aborted".into();
                        ev.outcome = Outcome::Failure;
                        self.add_lease(&mut ev);
                    }
                    _ if matches!(answer, ApiError::Unavailable(_)) => {
                        ev.outcome = Outcome::Failure;
                    }
                    _ => {}
                }
            }
        }
        ev
    }

    fn add_lease(&self, ev: &mut AuditEvent) {
        if let Some(lease) = &self.lease {
            ev.lease_id = Some(lease.id.clone());
            ev.credentials.clone_from(&lease.credentials);
            ev.details.insert(
                "expires_at".into(),
                Value::String(rfc3339(lease.expires_at)),
            );
        }
    }
}
