//! Audit anchors: each replica's last anchored audit line (`seq` and MAC), kept in the store
//! so that an audit file cut at its end, replaced or emptied is noticed at start (see
//! [`crate::audit::anchor`]).
//!
//! Tables: `audit_anchors` (one row per replica name; `''` for an unnamed replica).
//!
//! Guarantees:
//! - the exchange ledger moves the anchor inside its batch transaction
//!   ([`WriteTx::advance_audit_anchor`]), so it commits with the rows its records describe;
//! - a move is refused (`false`) unless this process still owns the row and the anchor does
//!   not go backwards: a second process using the same replica name cannot silently move the
//!   anchor of the first, nor the first undo what the second anchored.

use super::Store;
use crate::store::{Result, StoreError, WriteTx};

/// One replica's anchor row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditAnchorRow {
    /// Replica name (`audit.replica`), `""` when unnamed.
    pub replica: String,
    /// `seq` of the anchored line (0: an empty log).
    pub seq: i64,
    /// MAC (hex) of that line (the genesis value for an empty log).
    pub mac: String,
    /// The audit file it was written for, as configured.
    pub file: String,
    /// Id of the process that anchors this replica now.
    pub owner: String,
    /// Unix seconds of the last move.
    pub updated_at: i64,
}

impl Store {
    /// The anchor of `replica` (read on the writer, so a move just committed is seen).
    pub async fn audit_anchor(&self, replica: &str) -> Result<Option<AuditAnchorRow>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as(READ).bind(replica).fetch_optional(w).await?)
        })
    }

    /// Sets the anchor of `row.replica`, whoever owned it (at start, after the file was
    /// checked against it, or re-anchoring after an accepted override).
    pub async fn put_audit_anchor(&self, row: &AuditAnchorRow) -> Result<()> {
        with_db!(self, |w, r, Db| {
            sqlx::query(
                "INSERT INTO audit_anchors (replica, seq, mac, file, owner, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (replica) DO UPDATE SET seq = $2, mac = $3, file = $4, owner = $5,
                     updated_at = $6",
            )
            .bind(&row.replica)
            .bind(row.seq)
            .bind(&row.mac)
            .bind(&row.file)
            .bind(&row.owner)
            .bind(row.updated_at)
            .execute(w)
            .await?;
            Ok(())
        })
    }

    /// Moves the anchor of `row.replica` to `row` if `row.owner` still owns it and it does
    /// not go backwards; false otherwise (nothing changed).
    pub async fn advance_audit_anchor(&self, row: &AuditAnchorRow) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let done = sqlx::query(ADVANCE)
                .bind(&row.replica)
                .bind(row.seq)
                .bind(&row.mac)
                .bind(&row.file)
                .bind(&row.owner)
                .bind(row.updated_at)
                .execute(w)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

/// The SELECT of one anchor.
const READ: &str = "SELECT replica, seq, mac, file, owner, updated_at FROM audit_anchors
     WHERE replica = $1";

impl Store {
    /// Reads the anchor of `replica` from the store at `url` for an offline check (`jobpass
    /// audit verify --anchor`): one read-only connection, no migration, nothing created (a
    /// SQLite file that does not exist is an error).
    pub async fn read_audit_anchor(url: &str, replica: &str) -> Result<Option<AuditAnchorRow>> {
        use sqlx::Connection;
        use std::str::FromStr;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // The URL may hold a password: never repeat it in an error.
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|_| StoreError::Url("postgres (invalid URL)".into()))?
                .application_name("jobpass audit verify");
            let mut conn = sqlx::PgConnection::connect_with(&opts).await?;
            let row = sqlx::query_as(READ)
                .bind(replica)
                .fetch_optional(&mut conn)
                .await?;
            drop(conn.close().await);
            return Ok(row);
        }
        let path = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| StoreError::Url(url.split("://").next().unwrap_or("").to_string()))?;
        if !std::path::Path::new(path).exists() {
            return Err(StoreError::Unavailable(format!(
                "the SQLite store {path} does not exist"
            )));
        }
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
        let row = sqlx::query_as(READ)
            .bind(replica)
            .fetch_optional(&mut conn)
            .await?;
        drop(conn.close().await);
        Ok(row)
    }
}

/// The conditional move: only by its owner, never backwards.
const ADVANCE: &str = "UPDATE audit_anchors SET seq = $2, mac = $3, file = $4, updated_at = $6
     WHERE replica = $1 AND owner = $5 AND seq <= $2";

impl WriteTx {
    /// [`Store::advance_audit_anchor`] inside this transaction: the move commits with it.
    pub async fn advance_audit_anchor(&mut self, row: &AuditAnchorRow) -> Result<bool> {
        with_tx!(self, |conn| {
            let done = sqlx::query(ADVANCE)
                .bind(&row.replica)
                .bind(row.seq)
                .bind(&row.mac)
                .bind(&row.file)
                .bind(&row.owner)
                .bind(row.updated_at)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::AuditAnchorRow;
    use crate::store::Store;

    fn row(seq: i64, owner: &str) -> AuditAnchorRow {
        AuditAnchorRow {
            replica: "a".into(),
            seq,
            mac: format!("mac{seq}"),
            file: "a.log".into(),
            owner: owner.into(),
            updated_at: 1,
        }
    }

    #[tokio::test]
    async fn only_the_owner_moves_an_anchor_and_never_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.audit_anchor("a").await.unwrap(), None);
        store.put_audit_anchor(&row(3, "p1")).await.unwrap();
        assert!(store.advance_audit_anchor(&row(5, "p1")).await.unwrap());
        assert!(!store.advance_audit_anchor(&row(4, "p1")).await.unwrap());
        assert!(!store.advance_audit_anchor(&row(9, "p2")).await.unwrap());
        assert_eq!(store.audit_anchor("a").await.unwrap(), Some(row(5, "p1")));
        // A restart takes the row over; the old owner can no longer move it.
        store.put_audit_anchor(&row(5, "p2")).await.unwrap();
        assert!(!store.advance_audit_anchor(&row(6, "p1")).await.unwrap());
        let mut tx = store.begin().await.unwrap();
        assert!(tx.advance_audit_anchor(&row(6, "p2")).await.unwrap());
        drop(tx);
        assert_eq!(store.audit_anchor("a").await.unwrap().unwrap().seq, 5);
        assert_eq!(store.audit_anchor("b").await.unwrap(), None);
        assert_eq!(
            Store::read_audit_anchor(&url, "a").await.unwrap(),
            Some(row(5, "p2"))
        );
        let missing = format!("sqlite://{}", dir.path().join("none.db").display());
        assert!(Store::read_audit_anchor(&missing, "a").await.is_err());
        assert!(!dir.path().join("none.db").exists(), "nothing created");
    }
}
