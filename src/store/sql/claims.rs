//! The claim index: which leases carry a claim value, for revocation and listing by claim.
//!
//! On PostgreSQL an exchange writes its claims straight into `lease_claims`. On SQLite it
//! writes them with the lease row (`leases.claims`, a JSON object) and the lease's id into
//! `lease_claims_backlog` — appends in lease order instead of one entry per claim on
//! scattered index pages, which made the claim index the largest share of what the single
//! writer wrote per exchange. The ledger folds the backlog into `lease_claims` in sorted runs
//! ([`Store::fold_claims`]), so the entries of many leases share each index page written. The
//! sweep deletes a lease's index entries by their key, read from `leases.claims`.
//!
//! Guarantees:
//! - a lookup by claim reads the index and the backlog, each statement one snapshot: a lease
//!   is found whether or not its claims were folded yet, and never twice for one claim;
//! - a fold is one transaction: a lease's claims are in the backlog or in the index, never
//!   half moved;
//! - values compare as stored text on both stores: exactly (listing) or by `LIKE` pattern
//!   (revocation by glob).

use sqlx::{Database, QueryBuilder};

use super::Store;
use super::open::BeginWrite;
use crate::store::Result;

/// Copies the claims of the oldest `$1` leases of the backlog into the index, sorted. With
/// `OR IGNORE` (an entry already there, or a JSON null no selector can match) no row can abort
/// the statement, so SQLite needs no statement journal for it.
const FOLD_COPY: &str = "
    INSERT OR IGNORE INTO lease_claims (name, value, lease_id)
        SELECT j.key, j.value, l.id
        FROM (SELECT lease_id FROM lease_claims_backlog ORDER BY lease_id LIMIT $1) b
             JOIN leases l ON l.id = b.lease_id, json_each(l.claims) j
        ORDER BY 1, 2, 3";

/// Removes the same leases from the backlog (nothing else writes in between: same
/// transaction, one writer).
const FOLD_REMOVE: &str = "
    DELETE FROM lease_claims_backlog
        WHERE lease_id IN (SELECT lease_id FROM lease_claims_backlog ORDER BY lease_id LIMIT $1)";

impl Store {
    /// Folds the claims of up to `max` leases from the backlog into the claim index; returns
    /// how many leases were folded (fewer than `max`: the backlog is empty now). PostgreSQL
    /// has no backlog: 0.
    pub async fn fold_claims(&self, max: u32) -> Result<u64> {
        let Store::Sqlite { writer, .. } = self else {
            return Ok(0);
        };
        let mut tx = writer.begin_write().await?;
        sqlx::query(FOLD_COPY)
            .bind(i64::from(max))
            .execute(&mut *tx)
            .await?;
        let folded = sqlx::query(FOLD_REMOVE)
            .bind(i64::from(max))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(folded)
    }

    /// Whether lookups by claim must read the backlog too.
    pub fn has_claims_backlog(&self) -> bool {
        matches!(self, Store::Sqlite { .. })
    }
}

/// SQLite: deletes the claim-index entries of the leases `condition` (over `leases`)
/// selects, by their keys, read from the leases' `claims`.
pub(super) fn delete_claims_of(condition: &str) -> String {
    format!(
        "DELETE FROM lease_claims WHERE (name, value, lease_id) IN
           (SELECT j.key, j.value, leases.id FROM leases, json_each(leases.claims) j
            WHERE {condition})"
    )
}

/// PostgreSQL: values up to this many bytes are in the (name, value) index; longer ones (an
/// index entry is limited to about 2.7 kB) in a partial index by name only, where a lookup
/// compares them one by one. Both partial indexes cover every row (migration 0007), so a
/// lookup that names the right length class finds every lease.
pub(super) const PG_SHORT_VALUE: usize = 512;

/// Appends ` AND EXISTS (…)`: lease `l` carries claim `name` with exactly `value` (a probe
/// per lease: for listing newest first, where a common claim must not load every match).
pub(super) fn push_has_claim<Db>(q: &mut QueryBuilder<Db>, backlog: bool, name: &str, value: &str)
where
    Db: Database,
    for<'t> String: sqlx::Encode<'t, Db> + sqlx::Type<Db>,
{
    q.push(" AND (EXISTS (SELECT 1 FROM lease_claims c WHERE c.name = ")
        .push_bind(name.to_string())
        .push(" AND c.value = ")
        .push_bind(value.to_string())
        .push(" AND c.lease_id = l.id");
    if !backlog {
        // An equal value has the same length: the predicate picks the partial index.
        q.push(if value.len() <= PG_SHORT_VALUE {
            " AND octet_length(c.value) <= 512"
        } else {
            " AND octet_length(c.value) > 512"
        });
    }
    q.push(")");
    if backlog {
        q.push(
            " OR EXISTS (SELECT 1 FROM lease_claims_backlog b, json_each(l.claims) j
              WHERE b.lease_id = l.id AND j.key = ",
        )
        .push_bind(name.to_string())
        .push(" AND j.value = ")
        .push_bind(value.to_string())
        .push(")");
    }
    q.push(")");
}

/// Appends ` AND l.id IN (…)`: the leases (`l`) that carry claim `name` with a value `LIKE`
/// `pattern` (`\` escaping), from the index and, with `backlog`, the backlog.
pub(super) fn push_lease_with_claim_like<Db>(
    q: &mut QueryBuilder<Db>,
    backlog: bool,
    name: &str,
    pattern: &str,
) where
    Db: Database,
    for<'t> String: sqlx::Encode<'t, Db> + sqlx::Type<Db>,
{
    q.push(" AND l.id IN (SELECT lease_id FROM lease_claims WHERE name = ")
        .push_bind(name.to_string())
        .push(" AND value LIKE ")
        .push_bind(pattern.to_string())
        .push(" ESCAPE '\\'");
    if !backlog {
        // PostgreSQL: the short values by the (name, value) index, the long ones by name.
        q.push(" AND octet_length(value) <= 512")
            .push(" UNION ALL SELECT lease_id FROM lease_claims WHERE name = ")
            .push_bind(name.to_string())
            .push(" AND octet_length(value) > 512 AND value LIKE ")
            .push_bind(pattern.to_string())
            .push(" ESCAPE '\\'");
    }
    if backlog {
        q.push(
            " UNION ALL SELECT b.lease_id FROM lease_claims_backlog b
              JOIN leases bl ON bl.id = b.lease_id, json_each(bl.claims) j WHERE j.key = ",
        )
        .push_bind(name.to_string())
        .push(" AND j.value LIKE ")
        .push_bind(pattern.to_string())
        .push(" ESCAPE '\\'");
    }
    q.push(")");
}
