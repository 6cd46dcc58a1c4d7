//! The lease listing (SPEC §4, `GET /v1/admin/leases`): a filter built from the query's
//! parameters, one page of leases with their status, and the cursor of the next page.
//!
//! Guarantees:
//! - an unknown parameter or an out-of-range value is refused before the store is read;
//! - a page holds at most 10 000 leases (100 unless asked);
//! - of a lease's sealed record only the source claims and the masked credentials are shown,
//!   never what revocation needs (database role names); a record that cannot be opened (keys
//!   destroyed) is listed without them;
//! - a credential revoked on its own (a JWT revoked by its holder) carries its `revoked_at`;
//!   its lease stays `active`;
//! - every listing is one audit record with its count, and a listing whose record cannot be
//!   written is refused (fail closed).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{AuditError, AuditEvent, Outcome};
use crate::clock::rfc3339;
use crate::store::{ExternalRevocation, LeaseFilter, LeaseRow, StoreError};

/// Page size unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 100;

/// Largest page.
const MAX_LIMIT: i64 = 10_000;

/// Why a listing was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The query string is not `application/x-www-form-urlencoded`.
    #[error("malformed query string")]
    MalformedQuery,
    /// `active` is neither `true` nor `false`.
    #[error("active must be true or false")]
    InvalidActive,
    /// `limit` is not a number in 1..=10000.
    #[error("limit must be 1..10000")]
    InvalidLimit,
    /// A parameter the listing does not know (the argument names it).
    #[error("unknown query parameter `{0}`")]
    UnknownParameter(String),
    /// A claim name longer than any indexed claim name: it could never match.
    #[error(
        "claim names are at most {} bytes; longer claims are not kept searchable",
        crate::exchange::MAX_INDEXED_NAME
    )]
    ClaimNameTooLong,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written: nothing is answered.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// Neither revoked nor expired.
    Active,
    /// Past its expiry, not revoked.
    Expired,
    /// Revoked.
    Revoked,
}

impl LeaseStatus {
    /// The status of `l` at `now` (unix seconds).
    pub fn of(l: &LeaseRow, now: i64) -> LeaseStatus {
        if l.revoked_at.is_some() {
            LeaseStatus::Revoked
        } else if l.expires_at <= now {
            LeaseStatus::Expired
        } else {
            LeaseStatus::Active
        }
    }
}

/// One lease as the listing shows it (times in RFC 3339).
#[derive(Debug, Clone, Serialize)]
pub struct ListedLease {
    /// `lse_…`
    pub lease_id: String,
    /// Environment.
    pub environment: String,
    /// Role.
    pub role: String,
    /// Issuer of the source token.
    pub issuer: String,
    /// Subject of the source token.
    pub subject: String,
    /// Policy version that allowed it.
    pub policy_version: String,
    /// When it was issued.
    pub issued_at: String,
    /// When it expires.
    pub expires_at: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// State of the revocation of its external credentials (database roles), if any.
    pub revocation: Option<&'static str>,
    /// Where it stands now.
    pub status: LeaseStatus,
    /// Its credentials, masked (with `revoked_at` on one revoked on its own); None when its
    /// record cannot be opened.
    pub credentials: Option<Value>,
    /// The source token's claims; None when its record cannot be opened.
    pub claims: Option<Value>,
}

/// One page of the listing.
#[derive(Debug, Clone)]
pub struct LeasePage {
    /// The leases of this page.
    pub leases: Vec<ListedLease>,
    /// Lease id to pass as `after` for the next page; None on the last page.
    pub next_after: Option<String>,
}

/// The filter the query parameters ask for; `now` (unix seconds) is the instant `active=true`
/// refers to.
pub fn lease_filter(
    params: impl IntoIterator<Item = (String, String)>,
    now: i64,
) -> Result<LeaseFilter, ListError> {
    let mut f = LeaseFilter {
        limit: DEFAULT_LIMIT,
        ..LeaseFilter::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "environment" => f.env = Some(v),
            "role" => f.role = Some(v),
            "after" => f.after = Some(v),
            "active" => match v.as_str() {
                "true" => f.active_at = Some(now),
                "false" => {}
                _ => return Err(ListError::InvalidActive),
            },
            "limit" => {
                f.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or(ListError::InvalidLimit)?;
            }
            other => match other.strip_prefix("claim.") {
                Some(name) if name.len() > crate::exchange::MAX_INDEXED_NAME => {
                    return Err(ListError::ClaimNameTooLong);
                }
                Some(name) if !name.is_empty() => f.claims.push((name.to_string(), v)),
                _ => return Err(ListError::UnknownParameter(other.to_string())),
            },
        }
    }
    Ok(f)
}

impl App {
    /// One page of the leases the query string selects. `ev` is the caller's audit record,
    /// completed with the environment and the count and written before answering; a query
    /// that is refused is recorded as denied.
    pub async fn list_leases(
        &self,
        query: Option<&str>,
        mut ev: AuditEvent,
    ) -> Result<LeasePage, ListError> {
        let parsed = serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
            .map_err(|_| ListError::MalformedQuery)
            .and_then(|params| lease_filter(params, self.clock.unix()));
        let f = match parsed {
            Ok(f) => f,
            Err(e) => {
                ev.outcome = Outcome::Denied;
                ev.reason = Some(e.to_string());
                self.audit.append(ev).await?;
                return Err(e);
            }
        };
        ev.environment = f.env.clone();
        let rows = self.store.leases(&f).await?;
        let ids: Vec<String> = rows.iter().map(|l| l.id.clone()).collect();
        let revoked_alone: HashMap<String, i64> = self
            .store
            .credentials_revoked_alone(&ids)
            .await?
            .into_iter()
            .collect();
        let now = self.clock.unix();
        let mut leases = Vec::with_capacity(rows.len());
        for l in &rows {
            let mut details: Option<Value> = match self
                .keyring
                .open(&l.env, "leases", &l.id, l.key_version, &l.sealed)
                .await
            {
                Ok(p) => serde_json::from_slice(&p).ok(),
                Err(_) => None,
            };
            if let Some(Value::Array(creds)) = details.as_mut().map(|d| &mut d["credentials"]) {
                mark_revoked_alone(creds, &revoked_alone);
            }
            leases.push(ListedLease {
                lease_id: l.id.clone(),
                environment: l.env.clone(),
                role: l.role.clone(),
                issuer: l.issuer.clone(),
                subject: l.subject.clone(),
                policy_version: l.policy_version.clone(),
                issued_at: rfc3339(l.issued_at),
                expires_at: rfc3339(l.expires_at),
                revoked_at: l.revoked_at.map(rfc3339),
                revoke_reason: l.revoke_reason.clone(),
                revocation: l.revocation.map(ExternalRevocation::as_str),
                status: LeaseStatus::of(l, now),
                credentials: details.as_ref().map(|d| d["credentials"].clone()),
                claims: details.as_ref().map(|d| d["claims"].clone()),
            });
        }
        ev.details.insert("count".into(), json!(leases.len()));
        self.audit.append(ev).await?;
        let next_after = if i64::try_from(rows.len()).unwrap_or(0) == f.limit {
            rows.last().map(|l| l.id.clone())
        } else {
            None
        };
        Ok(LeasePage { leases, next_after })
    }
}

/// Adds `revoked_at` to each listed credential revoked on its own.
fn mark_revoked_alone(creds: &mut [Value], revoked_alone: &HashMap<String, i64>) {
    for c in creds {
        let at = c["id"].as_str().and_then(|id| revoked_alone.get(id));
        if let (Some(&at), Value::Object(m)) = (at, c) {
            m.insert("revoked_at".into(), Value::String(rfc3339(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_the_credentials_revoked_on_their_own() {
        let mut creds = vec![
            json!({"id": "crd_a", "name": "api", "kind": "token"}),
            json!({"id": "crd_b", "name": "deploy", "kind": "jwt"}),
            json!({"name": "no-id"}),
        ];
        let revoked = HashMap::from([("crd_b".to_string(), 0)]);
        mark_revoked_alone(&mut creds, &revoked);
        assert!(creds[0].get("revoked_at").is_none());
        assert_eq!(creds[1]["revoked_at"], "1970-01-01T00:00:00Z");
        assert!(creds[2].get("revoked_at").is_none());
    }

    fn params(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn defaults_to_a_page_of_100_of_everything() {
        let f = lease_filter(params(&[]), 7).expect("empty query");
        assert_eq!(f.limit, 100);
        assert!(f.env.is_none() && f.role.is_none() && f.after.is_none());
        assert!(f.active_at.is_none() && f.claims.is_empty());
    }

    #[test]
    fn reads_every_known_parameter() {
        let f = lease_filter(
            params(&[
                ("environment", "prod"),
                ("role", "deploy"),
                ("after", "lse_x"),
                ("active", "true"),
                ("limit", "10000"),
                ("claim.run_id", "2"),
            ]),
            42,
        )
        .expect("valid query");
        assert_eq!(f.env.as_deref(), Some("prod"));
        assert_eq!(f.role.as_deref(), Some("deploy"));
        assert_eq!(f.after.as_deref(), Some("lse_x"));
        assert_eq!(f.active_at, Some(42));
        assert_eq!(f.limit, 10_000);
        assert_eq!(f.claims, vec![("run_id".to_string(), "2".to_string())]);
        let f = lease_filter(params(&[("active", "false")]), 42).expect("active=false");
        assert!(f.active_at.is_none());
    }

    #[test]
    fn refuses_bad_values_and_unknown_parameters() {
        for (q, msg) in [
            (("active", "yes"), "active must be true or false"),
            (("limit", "0"), "limit must be 1..10000"),
            (("limit", "10001"), "limit must be 1..10000"),
            (("limit", "ten"), "limit must be 1..10000"),
            (("bogus", "1"), "unknown query parameter `bogus`"),
            (("claim.", "1"), "unknown query parameter `claim.`"),
        ] {
            let e = lease_filter(params(&[q]), 0).expect_err("refused");
            assert_eq!(e.to_string(), msg);
        }
    }
}
