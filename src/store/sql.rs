//! The SQL store, one code path for SQLite (the default: a file, no setup) and PostgreSQL
//! (several replicas sharing one database). Every query is written once; `with_db!` expands it
//! for each backend, so both run the same statements (with `$1…$N` placeholders, which SQLite
//! accepts too).
//!
//! SQLite: one writer connection (SQLite allows one writer; queuing in the pool beats
//! busy-waiting), `BEGIN IMMEDIATE` write transactions, WAL with `synchronous=FULL`, and a
//! small pool of readers. PostgreSQL: one pool; uniqueness (single-use tokens, key versions,
//! lease ids) is enforced by primary keys, and migrations take an advisory lock so replicas
//! starting together migrate once.
//!
//! One file per aggregate, each an `impl Store` (and `impl WriteTx`) over the tables it owns:
//! [`open`] (connections, migrations, write transactions), [`leader`] (background-work lock),
//! [`keys`] (data and signing keys, rewrap), [`credentials`] (credentials and what reads them),
//! [`leases`] (leases, their claims and revocation by selector, sweep), [`revocations`]
//! (revocation of external credentials), [`intents`] (PostgreSQL role intents),
//! [`environments`] (freeze), [`secrets`], [`replay`] (single use of source tokens),
//! [`batch`] (the exchange ledger's multi-row writes), [`anchors`] (each replica's audit
//! anchor) and [`env_locks`] (how batches, freezes and revocations of an environment are
//! serialised on PostgreSQL). Rows are decoded with
//! [`sqlx::FromRow`], one impl for both backends; a stored value that does not decode (an
//! unknown kind or state, malformed JSON) is a [`StoreError::Corrupt`](super::StoreError).

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

/// The store.
#[derive(Clone, Debug)]
pub enum Store {
    /// A SQLite file.
    Sqlite {
        /// The single writer connection.
        writer: SqlitePool,
        /// Read-only connections.
        reader: SqlitePool,
    },
    /// A PostgreSQL database shared by replicas.
    Postgres {
        /// The pool.
        pool: PgPool,
    },
}

/// Runs `$body` with `$w` (writer pool), `$r` (reader pool) and `$db` (the sqlx database
/// type) bound for the store's backend.
macro_rules! with_db {
    ($store:expr, |$w:ident, $r:ident, $db:ident| $body:block) => {
        match $store {
            $crate::store::Store::Sqlite { writer, reader } => {
                #[allow(unused_variables)]
                let ($w, $r) = (writer, reader);
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::store::Store::Postgres { pool } => {
                #[allow(unused_variables)]
                let ($w, $r) = (pool, pool);
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}

/// Runs `$body` with `$c` bound to the transaction's connection.
macro_rules! with_tx {
    ($tx:expr, |$c:ident| $body:block) => {
        match $tx {
            $crate::store::WriteTx::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
            $crate::store::WriteTx::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

mod anchors;
mod batch;
mod claims;
mod credentials;
mod decode;
mod env_locks;
mod environments;
mod intents;
mod keys;
mod leader;
mod leases;
mod open;
mod replay;
mod revocations;
mod secrets;

pub use anchors::AuditAnchorRow;
pub use batch::{BatchChecks, BatchItem, KeyState, NewLease, ReplaySlot};
pub use leader::LeaderLock;
pub use open::WriteTx;
