//! The anchor: each replica's audit head kept in the store, so that lines cut from the end
//! of the audit file, or the file replaced or emptied, are noticed.
//!
//! # What it guarantees
//!
//! - **Never ahead of the file.** The anchor names a line (`seq`, MAC) only after that line
//!   is fdatasync'ed: the exchange ledger moves it inside its batch transaction, after the
//!   batch's records are durable and before the commit; records written outside a store
//!   transaction (secret reads, admin calls, aggregate refusals, policy reloads) are covered
//!   by the ledger every [`ANCHOR_EVERY`] when the head moved, and when the ledger stops. So
//!   after a crash the anchor is at or behind the last durable line, never beyond it; it
//!   lags the file by about a second at most.
//! - **Checked at start.** [`establish`] compares the file with its replica's anchor: a file
//!   whose last line is before the anchored `seq`, or whose line at that `seq` does not carry
//!   the anchored MAC (the file was cut, replaced or emptied), refuses the start with
//!   [`AnchorError::Behind`], which names the file, both heads and the recovery procedure.
//!   With `audit.accept_behind_anchor = "<reason>"` the start goes on: an
//!   `audit_anchor_override` record stating both heads and the reason is written first, then
//!   the anchor is moved to the file's head.
//! - **One row per replica name** (`audit.replica`, `""` when unnamed; SQLite serves one
//!   replica). The process that starts takes the row over; from then on only it moves the
//!   anchor ([`Store::advance_audit_anchor`]): a second process started with the same
//!   replica name and another file is refused at start (its file is not the anchored one),
//!   and if both started at once, the one that lost the row fails its batches (503) and
//!   logs why instead of silently moving the other's anchor. A replica that starts on a new
//!   file name meets the anchor of its old file: the new file is behind it, and the start is
//!   refused until the old file is put back or the override is given.
//! - **The recent part verifies.** Lines removed before a line that is still there leave the
//!   anchored line in place, so at start the chain of the file's last
//!   [`TAIL_CHECKED_AT_START`] bytes (the whole file when smaller) is verified as well
//!   ([`AnchorError::Broken`], same override); `jobpass audit verify` checks all of it.
//! - Only a regular file is anchored: `/dev/full`, a pipe or a terminal cannot be read back.
//!   Where the store anchors lines of the replica already, a log that is not a regular file
//!   (swapped for a link to `/dev/null`, say) refuses the start ([`AnchorError::NotAFile`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::log::mac_at;
use super::{AuditError, AuditEvent, AuditHead, AuditKey, AuditLog, Outcome};
use crate::metrics::AuditGauges;
use crate::store::{AuditAnchorRow, Store, StoreError};

/// How much of the audit file's end is verified at start (the whole file when smaller).
pub const TAIL_CHECKED_AT_START: u64 = 64 << 20;

/// How often the ledger anchors a head that records outside a store transaction moved.
pub const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the anchor refused or could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The audit file is behind its anchor (cut, replaced or emptied).
    #[error(
        "{0} Lines were cut from the end of the file, or the file was replaced or emptied, \
         after they were written; the broker does not start on it. Recovery: keep this file \
         and the store as they are for the investigation; put the complete file back (from a \
         copy or your log store; `jobpass audit verify --anchor --config FILE COPY` says \
         whether a copy reaches the anchor) and start again; or, if the lines are lost for \
         good, start once with `audit.accept_behind_anchor = \"<reason>\"` (or \
         JOBPASS_AUDIT__ACCEPT_BEHIND_ANCHOR): the broker records both heads and the reason \
         in the audit log, re-anchors and starts; then remove the setting."
    )]
    Behind(Box<Behind>),
    /// The recent part of the audit file does not verify (lines removed, altered or
    /// reordered before its last line).
    #[error(
        "audit log {file} fails verification in its last {window_mib} MiB: {cause}. Lines were \
         removed, altered or reordered; the broker does not start on it. Recovery: keep the \
         file and the store for the investigation; put the complete file back and start again \
         (`jobpass audit verify --anchor --config FILE COPY` checks a copy), or start once with \
         `audit.accept_behind_anchor = \"<reason>\"`, which records the problem and the reason; \
         then remove the setting."
    )]
    Broken {
        /// The audit file.
        file: String,
        /// How much of its end was verified.
        window_mib: u64,
        /// What is wrong, and where.
        cause: String,
    },
    /// The audit file is not a regular file (a link to /dev/null, a pipe) while the store
    /// anchors lines of this replica.
    #[error(
        "audit log {file} is not a regular file, but the store anchors replica {replica} at \
         line {seq}: its records would be lost unread. Point audit.file at the real log, or \
         start once with `audit.accept_behind_anchor = \"<reason>\"`."
    )]
    NotAFile {
        /// The audit file.
        file: String,
        /// The replica name, quoted.
        replica: String,
        /// The anchored line.
        seq: i64,
    },
    /// Another process took this replica's anchor over (two brokers share a replica name).
    #[error(
        "the audit anchor of replica {replica} was taken over by another process: two brokers \
         use the same audit.replica; give each its own name (and its own file)"
    )]
    Taken {
        /// The replica name, quoted.
        replica: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed (reading the file back, or writing the override record).
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// A file behind its anchor: both heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    /// The audit file.
    pub file: String,
    /// The replica name, quoted (`"a"`, or `(unnamed)`).
    pub replica: String,
    /// The file's last line (`seq`, MAC).
    pub file_head: AuditHead,
    /// The anchored line (`seq`, MAC).
    pub anchor: AuditHead,
    /// The file the anchor was written for.
    pub anchor_file: String,
    /// The MAC the file's line at the anchored `seq` carries, when it has an authentic
    /// record there.
    pub found: Option<String>,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit log {} is behind its anchor in the store: the store anchors replica {} at \
             line {} (mac {}, written for file {}), ",
            self.file, self.replica, self.anchor.seq, self.anchor.mac, self.anchor_file
        )?;
        if self.file_head.seq < self.anchor.seq {
            if self.file_head.seq == 0 {
                write!(f, "but the file is empty (no line at all).")
            } else {
                write!(
                    f,
                    "but the file ends at line {} (mac {}): {} line(s) missing at its end.",
                    self.file_head.seq,
                    self.file_head.mac,
                    self.anchor.seq - self.file_head.seq
                )
            }
        } else {
            match &self.found {
                Some(mac) => write!(
                    f,
                    "but line {} of the file carries mac {mac} (the file ends at line {}, mac \
                     {}): it is another chain.",
                    self.anchor.seq, self.file_head.seq, self.file_head.mac
                ),
                None => write!(
                    f,
                    "but line {} of the file is not that record (the file ends at line {}, mac \
                     {}): it is another chain.",
                    self.anchor.seq, self.file_head.seq, self.file_head.mac
                ),
            }
        }
    }
}

/// The anchor key and display name of a replica.
fn replica_key(replica: Option<&str>) -> (String, String) {
    match replica {
        Some(r) => (r.to_owned(), format!("\"{r}\"")),
        None => (String::new(), "(unnamed)".to_owned()),
    }
}

fn to_head(row: &AuditAnchorRow) -> Result<AuditHead, AnchorError> {
    let seq = u64::try_from(row.seq)
        .map_err(|_| StoreError::Corrupt(format!("audit anchor with seq {}", row.seq)))?;
    Ok(AuditHead {
        seq,
        mac: row.mac.clone(),
    })
}

/// Compares the file at `path`, whose last line is `head`, with `anchor`: `None` when the
/// file reaches the anchor and carries the anchored line, else what differs.
///
/// # Errors
///
/// The file cannot be read back, or the anchor row is corrupt.
pub fn compare(
    path: &Path,
    key: &AuditKey,
    head: &AuditHead,
    replica: Option<&str>,
    anchor: &AuditAnchorRow,
) -> Result<Option<Behind>, AnchorError> {
    let anchored = to_head(anchor)?;
    let found = if anchored.seq == 0 {
        // An empty log was anchored: every file under this key reaches it.
        return Ok(None);
    } else if head.seq < anchored.seq {
        None
    } else if head.seq == anchored.seq {
        Some(head.mac.clone())
    } else {
        mac_at(path, key, head.seq, anchored.seq)?
    };
    if head.seq >= anchored.seq && found.as_deref() == Some(anchored.mac.as_str()) {
        return Ok(None);
    }
    Ok(Some(Behind {
        file: path.display().to_string(),
        replica: replica_key(replica).1,
        file_head: head.clone(),
        anchor: anchored,
        anchor_file: anchor.file.clone(),
        found,
    }))
}

/// The anchor of one running replica: the ledger moves it (see the module docs).
#[derive(Debug)]
pub struct Anchor {
    replica: String,
    shown: String,
    owner: String,
    file: String,
    anchored: AtomicU64,
    gauges: AuditGauges,
}

impl Anchor {
    /// The row that anchors `head` now.
    #[must_use]
    pub fn row(&self, head: &AuditHead, now: i64) -> AuditAnchorRow {
        AuditAnchorRow {
            replica: self.replica.clone(),
            seq: i64::try_from(head.seq).unwrap_or(i64::MAX),
            mac: head.mac.clone(),
            file: self.file.clone(),
            owner: self.owner.clone(),
            updated_at: now,
        }
    }

    /// `seq` of the line anchored last by this process.
    #[must_use]
    pub fn anchored(&self) -> u64 {
        self.anchored.load(Ordering::SeqCst)
    }

    /// Notes that `head` is anchored (its move committed).
    pub fn moved(&self, head: &AuditHead) {
        self.anchored.fetch_max(head.seq, Ordering::SeqCst);
        self.gauges.head(head.seq);
        self.gauges.anchored(self.anchored());
    }

    /// The error of a move the store refused (another process owns the row).
    #[must_use]
    pub fn taken(&self) -> AnchorError {
        AnchorError::Taken {
            replica: self.shown.clone(),
        }
    }

    /// Anchors the log's head if it moved since the last anchor (outside any transaction).
    ///
    /// # Errors
    ///
    /// The store failed, or another process owns the anchor ([`AnchorError::Taken`]).
    pub async fn catch_up(
        &self,
        store: &Store,
        log: &AuditLog,
        now: i64,
    ) -> Result<(), AnchorError> {
        let head = log.position();
        self.gauges.head(head.seq);
        if head.seq <= self.anchored() {
            return Ok(());
        }
        if !store.advance_audit_anchor(&self.row(&head, now)).await? {
            return Err(self.taken());
        }
        self.moved(&head);
        Ok(())
    }
}

/// What [`establish`] needs.
pub struct Start<'a> {
    /// The store holding the anchors.
    pub store: &'a Store,
    /// The freshly opened log (nothing appended yet by this process).
    pub log: &'a AuditLog,
    /// The chain key.
    pub key: &'a AuditKey,
    /// `audit.accept_behind_anchor`: the operator's reason to start on a file behind its
    /// anchor.
    pub accept: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
    /// The replica's gauges.
    pub gauges: AuditGauges,
}

/// Checks the log against its replica's anchor and takes the anchor over (see the module
/// docs). `Ok(None)` for a log that is not a regular file (nothing to anchor).
///
/// # Errors
///
/// [`AnchorError::Behind`] when the file is behind its anchor and no override is given; a
/// store or audit failure.
pub async fn establish(start: Start<'_>) -> Result<Option<Anchor>, AnchorError> {
    let Start {
        store,
        log,
        key,
        accept,
        now,
        gauges,
    } = start;
    let (replica, shown) = replica_key(log.replica());
    let stored = store.audit_anchor(&replica).await?;
    if !log.is_regular() {
        // A file that cannot be read back cannot be checked: refused where lines of this
        // replica were anchored before (the file was swapped for /dev/null, a pipe...).
        if let Some(a) = stored.as_ref().filter(|a| a.seq > 0)
            && accept.is_none()
        {
            return Err(AnchorError::NotAFile {
                file: log.path().display().to_string(),
                replica: shown,
                seq: a.seq,
            });
        }
        tracing::warn!(
            path = %log.path().display(),
            "the audit log is not a regular file: it is not anchored in the store"
        );
        return Ok(None);
    }
    let owner = hex::encode(
        crate::crypto::random::bytes::<16>()
            .map_err(|e| StoreError::Unavailable(format!("no anchor owner id: {e}")))?,
    );
    let head = log.position();
    let behind = match &stored {
        Some(a) => compare(log.path(), key, &head, log.replica(), a)?,
        None => None,
    };
    // The recent part of the file must verify too: lines removed before a line that is
    // still there leave the anchored line in place.
    if behind.is_none() && stored.is_some() {
        let path = log.path().to_path_buf();
        let key = key.clone();
        let checked = tokio::task::spawn_blocking(move || {
            super::verify_tail(&path, &key, TAIL_CHECKED_AT_START)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the audit check at start: {e}")))?;
        if let Err(e) = checked {
            let broken = AnchorError::Broken {
                file: log.path().display().to_string(),
                window_mib: TAIL_CHECKED_AT_START >> 20,
                cause: e.to_string(),
            };
            match accept {
                None => return Err(broken),
                Some(reason) => {
                    tracing::warn!(problem = %broken, reason, "starting on an audit log that fails verification (audit.accept_behind_anchor)");
                    let record = AuditEvent::new("audit_anchor_override", Outcome::Success)
                        .with_reason(reason)
                        .with_detail("file", log.path().display().to_string().into())
                        .with_detail("problem", broken.to_string().into());
                    log.append(record).await?;
                }
            }
        }
    }
    match (behind, accept) {
        (Some(b), None) => return Err(AnchorError::Behind(Box::new(b))),
        (Some(b), Some(reason)) => {
            tracing::warn!(problem = %b, reason, "starting on an audit log behind its anchor (audit.accept_behind_anchor)");
            let record = AuditEvent::new("audit_anchor_override", Outcome::Success)
                .with_reason(reason)
                .with_detail("file", b.file.clone().into())
                .with_detail("file_seq", b.file_head.seq.into())
                .with_detail("file_head", b.file_head.mac.clone().into())
                .with_detail("anchor_seq", b.anchor.seq.into())
                .with_detail("anchor_head", b.anchor.mac.clone().into())
                .with_detail("anchor_file", b.anchor_file.clone().into())
                .with_detail("problem", b.to_string().into());
            log.append(record).await?;
        }
        (None, Some(_)) => tracing::warn!(
            "audit.accept_behind_anchor is set but the audit log is not behind its anchor: \
             nothing to accept; remove the setting"
        ),
        (None, None) => {}
    }
    let anchor = Anchor {
        replica,
        shown,
        owner,
        file: log.path().display().to_string(),
        anchored: AtomicU64::new(0),
        gauges,
    };
    let head = log.position();
    store.put_audit_anchor(&anchor.row(&head, now)).await?;
    anchor.moved(&head);
    Ok(Some(anchor))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::{AnchorError, Start, compare, establish};
    use crate::audit::{AuditEvent, AuditHead, AuditKey, AuditLog, Outcome};
    use crate::clock::{FixedClock, SharedClock};
    use crate::metrics::AuditGauges;
    use crate::store::{AuditAnchorRow, Store};

    fn key() -> AuditKey {
        AuditKey::from_bytes([9; 32])
    }

    fn clock() -> SharedClock {
        Arc::new(FixedClock::at(1_800_000_000))
    }

    fn anchor_at(head: &AuditHead) -> AuditAnchorRow {
        AuditAnchorRow {
            replica: String::new(),
            seq: i64::try_from(head.seq).unwrap(),
            mac: head.mac.clone(),
            file: "old.log".into(),
            owner: "p".into(),
            updated_at: 0,
        }
    }

    async fn write(path: &std::path::Path, n: usize) -> Vec<AuditHead> {
        let log = AuditLog::open(path, key(), clock(), None, false).unwrap();
        let mut heads = vec![log.position()];
        for _ in 0..n {
            log.append(AuditEvent::new("secret_read", Outcome::Success))
                .await
                .unwrap();
            heads.push(log.position());
        }
        heads
    }

    #[tokio::test]
    async fn a_file_is_compared_with_its_anchor_by_the_line_at_the_anchored_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let heads = write(&path, 5).await;
        let last = &heads[5];
        // At, or beyond, the anchor: fine (the line at the anchored seq is read back).
        for h in &heads {
            assert!(
                compare(&path, &key(), last, None, &anchor_at(h))
                    .unwrap()
                    .is_none()
            );
        }
        // Behind: the anchor is beyond the file's last line.
        let ahead = AuditHead {
            seq: 7,
            mac: "ab".repeat(32),
        };
        let b = compare(&path, &key(), last, None, &anchor_at(&ahead))
            .unwrap()
            .unwrap();
        assert_eq!((b.file_head.seq, b.anchor.seq), (5, 7));
        let text = b.to_string();
        assert!(text.contains("line 7"), "{text}");
        assert!(text.contains("ends at line 5"), "{text}");
        assert!(text.contains("2 line(s) missing"), "{text}");
        // Another chain: the line at the anchored seq carries another MAC.
        let other = AuditHead {
            seq: 3,
            mac: "cd".repeat(32),
        };
        let b = compare(&path, &key(), last, Some("r1"), &anchor_at(&other))
            .unwrap()
            .unwrap();
        assert_eq!(b.found.as_deref(), Some(heads[3].mac.as_str()));
        assert!(b.to_string().contains("replica \"r1\""));
    }

    #[tokio::test]
    async fn a_start_on_a_cut_file_is_refused_and_an_override_is_recorded_and_reanchors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
        let start = |log: &AuditLog, accept: Option<&'static str>| {
            let (store, log) = (store.clone(), log.clone());
            async move {
                establish(Start {
                    store: &store,
                    log: &log,
                    key: &key(),
                    accept,
                    now: 1,
                    gauges: AuditGauges::default(),
                })
                .await
            }
        };
        let log = AuditLog::open(&path, key(), clock(), None, false).unwrap();
        let anchor = start(&log, None).await.unwrap().unwrap();
        for _ in 0..4 {
            log.append(AuditEvent::new("secret_read", Outcome::Success))
                .await
                .unwrap();
        }
        anchor.catch_up(&store, &log, 2).await.unwrap();
        assert_eq!(store.audit_anchor("").await.unwrap().unwrap().seq, 4);
        drop(log);

        // Cut the last line.
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, kept).unwrap();
        let log = AuditLog::open(&path, key(), clock(), None, false).unwrap();
        let err = start(&log, None).await.unwrap_err();
        assert!(matches!(err, AnchorError::Behind(_)), "{err}");
        assert!(err.to_string().contains("accept_behind_anchor"));
        assert_eq!(store.audit_anchor("").await.unwrap().unwrap().seq, 4);

        // With the override: one record with both heads, and the anchor moves to it.
        let anchor = start(&log, Some("INC-9 disk lost")).await.unwrap().unwrap();
        assert_eq!(anchor.anchored(), 4);
        let last = std::fs::read_to_string(&path).unwrap();
        let rec: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(rec["event"], "audit_anchor_override");
        assert_eq!(rec["reason"], "INC-9 disk lost");
        assert_eq!(rec["details"]["file_seq"], 3);
        assert_eq!(rec["details"]["anchor_seq"], 4);
        let row = store.audit_anchor("").await.unwrap().unwrap();
        assert_eq!((row.seq, row.mac), (4, log.head()));
        drop(log);
        // The next start is fine.
        let log = AuditLog::open(&path, key(), clock(), None, false).unwrap();
        start(&log, None).await.unwrap().unwrap();
        // The process that lost the row can no longer move it.
        log.append(AuditEvent::new("secret_read", Outcome::Success))
            .await
            .unwrap();
        assert!(matches!(
            anchor.catch_up(&store, &log, 3).await,
            Err(AnchorError::Taken { .. })
        ));
    }
}
