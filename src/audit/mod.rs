//! The tamper-evident audit log (SPEC §6): masking, fingerprints, the HMAC chain, the
//! durable writer, and offline verification and search.
//!
//! # What it guarantees
//!
//! - **No raw values.** Credentials enter a record only as [`MaskedCredential`]: the first 4
//!   characters and `…` ([`mask`]; nothing at all for values of 8 characters or fewer) and a
//!   keyed fingerprint `hmac-sha256:<hex>` ([`fingerprint`]). A leaked value is matched
//!   against the log with [`find`]. Fingerprints are computed under a subkey derived from the
//!   audit key (`HMAC(key, "jobpass/audit/fingerprint-key/v1")`), so a value chosen by
//!   someone can never produce a valid MAC for a forged line. `reason` and `details` are
//!   written verbatim: callers must not put secrets there.
//! - **One JSON object per line**, fields in a fixed order: `seq`, `time` (RFC 3339 UTC, from
//!   the [`Clock`](crate::clock::Clock)), `replica` (left out when none), `event`, `actor`,
//!   `environment`, `role`, `lease_id`, `outcome`, `reason`, `policy_version`,
//!   `credentials`, `details`, `prev`, `mac`.
//! - **A chain.** `mac` = HMAC-SHA256(audit key, the exact bytes of the line without its
//!   mac field, i.e. the object ending in `"prev":"<hex>"}`); the written line is that text
//!   with its last `}` replaced by `,"mac":"<hex>"}` and a newline. `prev` is the previous
//!   line's `mac`, and for line 1 the *genesis* value `HMAC(key, "jobpass/audit/genesis/v1")`.
//!   `seq` counts from 1 by one. [`verify`] recomputes every MAC over the bytes as written
//!   (no re-serialisation) and reports the first bad line: an altered byte at that line, a
//!   removed line at the line after the gap, two swapped lines at the first of them, and
//!   garbage or a torn (unterminated) line where it stands.
//! - **Truncation of the tail** (removing the last lines) leaves a valid, shorter chain, so
//!   the file alone cannot reveal it: each replica's head is also kept in the store
//!   ([`anchor`]), moved with the store writes it covers and at most about a second behind
//!   the file, and a file behind its anchor (cut, replaced or emptied) refuses the start
//!   and fails `jobpass audit verify --anchor`. [`verify`] also returns the head, to compare
//!   with one recorded elsewhere; [`AuditLog::position`] gives the live one.
//! - **Fail closed.** [`AuditLog::append`] returns `Ok(seq)` only after the line is written
//!   and fdatasync'ed. Concurrent appends share one sync (group commit by a dedicated writer
//!   thread). On any write or sync error every caller of that batch gets an error; bytes a
//!   failed write may have left are cut off (the file is truncated back to its last good
//!   length) before anything else is written, and if that is impossible every later append
//!   fails ([`AuditError::Poisoned`]). `/dev/full` opens fine and fails every append.
//! - **One writer per file.** A regular file is `flock`ed while open; several replicas each
//!   keep their own file (name them with `replica`) and each file is its own chain, verified
//!   on its own.
//!
//! The chain key is the audit key the caller derives from the root key; a log verified
//! with another key fails at line 1.

pub mod anchor;
mod chain;
mod event;
mod log;
mod mask;
pub mod refusals;
mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use chain::genesis;
pub use event::{Actor, AuditEvent, Outcome};
pub use log::{AuditHead, AuditLog};
pub use mask::{AuditKey, FINGERPRINT_PREFIX, MaskedCredential, fingerprint, mask};
pub use refusals::RefusalTally;
pub use verify::{VerifyReport, find, verify, verify_tail};

/// Errors of the audit log. None of them carries a secret value.
#[derive(thiserror::Error, Debug)]
pub enum AuditError {
    /// Opening, reading or locking the file failed.
    #[error("audit log I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Writing or syncing a record failed; the record does not count.
    #[error("audit record could not be written durably: {0}")]
    Write(std::io::Error),
    /// The chain is broken at `line` (1-based line number in the file).
    #[error("audit log fails verification at line {line}: {reason}")]
    Tampered {
        /// First bad line.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The file does not end with a newline, so its last record was cut mid-write.
    #[error(
        "audit log {} ends with a torn line (no trailing newline): a write was interrupted or \
         the file was cut; verify it, keep a copy, and remove the partial last line before \
         reopening",
        path.display()
    )]
    Torn {
        /// The file.
        path: PathBuf,
    },
    /// The last line cannot continue the chain (not a record, or not under this key).
    #[error("cannot resume the audit chain from the last line: {reason}")]
    Resume {
        /// What is wrong with the last line.
        reason: String,
    },
    /// A failed write could not be undone; no further record can be written.
    #[error(
        "audit log is poisoned: a failed write could not be removed from the file, so no \
         further record is written"
    )]
    Poisoned,
    /// Another process (or another open handle) holds the file.
    #[error(
        "audit log {} is already open by another writer: a broker (or another jobpass \
         process) is already running with this audit file. Stop it first, or give this one \
         its own audit.file (and audit.replica)",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The writer thread has stopped.
    #[error("audit writer has stopped")]
    Closed,
    /// A record could not be serialized.
    #[error("audit record could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
}
