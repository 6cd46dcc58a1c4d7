//! The commit stage of the exchange: a group-committing ledger writer.
//!
//! Exchanges that reach the commit stage queue here. One task drains the queue and commits
//! whatever has gathered as one batch: one write transaction (a handful of multi-row
//! statements whatever the batch size), one audit write with one fsync, one store commit
//! with one fsync. While a batch commits, the next one gathers, so under load many exchanges
//! share each pair of fsyncs; alone, an exchange pays what it always did.
//!
//! Guarantees (the same as one transaction per exchange):
//! - nothing is answered before its audit record and its rows are durable: records are
//!   written (and fsync'ed) inside the transaction, before the commit;
//! - a batch that fails before its records are durable fails every exchange in it (503) and
//!   stores nothing; when the store refuses a batch of several, each exchange is retried
//!   alone, so one the database cannot take fails only itself; a batch whose commit fails
//!   after its records were written answers 503 to every exchange and records each as
//!   `exchange_aborted`;
//! - a source token is used at most once, within a batch too: the first exchange of a batch
//!   presenting it wins, every other one is refused (409) and recorded as a replay; a token
//!   already used is a replay before anything else (even in a frozen environment);
//! - a freeze that committed before a batch began is seen by it, and no lease commits after a
//!   freeze of its environment did; a revocation counts every lease it matches committed
//!   before it commits (SQLite: the batch, the freeze and the revocation are transactions of
//!   the one writer; PostgreSQL: the batch reads the freeze state after taking its
//!   environments' advisory locks, shared, which a freeze or revocation takes exclusively:
//!   see `store::sql::env_locks`);
//! - an exchange whose PostgreSQL role intent was claimed by reconciliation is abandoned
//!   (503): its token's single-use slot is left untaken and its other intents stay for
//!   reconciliation (the lease takes all of its intents over, or none).
//!
//! The audit anchor (see [`crate::audit::anchor`]): a ledger started with one moves it inside
//! each batch transaction, after the batch's records are durable and before the commit (so
//! the anchor never names a line that is not on disk, and a batch whose anchor cannot move
//! stores nothing new and answers 503). Every [`ANCHOR_EVERY`] and when it stops, it also
//! anchors the head that records written outside a store transaction moved.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::audit::{ExchangeAudit, Verdict};
use super::error::ExchangeError;
use crate::audit::AuditLog;
use crate::audit::anchor::{ANCHOR_EVERY, Anchor};
use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::error::ApiError;
use crate::store::{BatchItem, NewLease, ReplaySlot, Store, StoreError};

/// Exchanges waiting for the ledger; callers beyond this wait to queue.
const QUEUE: usize = 8192;
/// Most exchanges committed in one batch.
const MAX_BATCH: usize = 256;
/// Leases whose claims may wait in the store's backlog (see `store::sql::claims`) until the
/// queue is empty; then the ledger folds them into the claim index.
const FOLD_QUIET: usize = 32;
/// Backlog at which the ledger folds between batches even when exchanges are waiting.
const FOLD_BUSY: usize = 2048;
/// Most leases folded at once: bounds how long one fold holds the writer.
const FOLD_CHUNK: u32 = 32;
/// A smaller backlog is folded after this long without an exchange.
const FOLD_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

/// What one exchange hands to the ledger: everything it writes, computed beforehand.
pub struct Entry {
    /// Environment of the lease.
    pub env: String,
    /// The source token's single-use slot.
    pub slot: ReplaySlot,
    /// The lease with its claims and credentials.
    pub lease: NewLease,
    /// PostgreSQL role intents the lease takes over.
    pub intents: Vec<String>,
    /// Its audit record, to be written in the batch.
    pub audit: ExchangeAudit,
}

/// The ledger's answer for one exchange.
pub struct Reply {
    /// Committed, or why not.
    pub result: Result<(), ExchangeError>,
    /// Whether the ledger wrote this exchange's audit record (otherwise the caller must).
    pub recorded: bool,
}

struct Submission {
    entry: Entry,
    reply: oneshot::Sender<Reply>,
}

enum Message {
    Commit(Box<Submission>),
    /// Time to anchor the audit head if it moved.
    Anchor,
    Stop,
}

/// Handle to the ledger writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ledger {
    tx: mpsc::Sender<Message>,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Marks the ledger dead when its writer ends, however it ends (a panic included).
struct AliveGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Ledger {
    /// Starts the writer task on the current tokio runtime. It stops when every handle is
    /// dropped, after committing what it was given.
    #[must_use]
    pub fn start(
        store: Store,
        audit: AuditLog,
        keyring: Arc<Keyring>,
        clock: SharedClock,
    ) -> Ledger {
        Self::start_anchored(store, audit, keyring, clock, None)
    }

    /// [`start`](Self::start), and with an `anchor`, keeps the audit anchor (see the module
    /// docs): in every batch, every [`ANCHOR_EVERY`] when the head moved, and when it stops.
    #[must_use]
    pub fn start_anchored(
        store: Store,
        audit: AuditLog,
        keyring: Arc<Keyring>,
        clock: SharedClock,
        anchor: Option<Anchor>,
    ) -> Ledger {
        let (tx, rx) = mpsc::channel(QUEUE);
        if anchor.is_some() {
            // Holds the queue weakly: the writer still stops when every handle is dropped.
            let weak = tx.downgrade();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(ANCHOR_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(tx) = weak.upgrade() else { break };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Message::Anchor)
                    {
                        break;
                    }
                }
            });
        }
        let writer = Writer {
            store,
            audit,
            keyring,
            clock,
            anchor,
        };
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let task = tokio::spawn(async move {
            let _guard = guard;
            writer.run(rx).await;
        });
        Ledger {
            tx,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
            alive,
        }
    }

    /// Whether the writer is running (readiness: without it no exchange can commit).
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Commits what was queued before this call, then stops the writer and waits for it, so
    /// the store and the audit log it holds are released (a restart in the same process can
    /// then reopen the audit file). Later submissions answer 503.
    pub async fn stop(&self) {
        drop(self.tx.send(Message::Stop).await);
        if let Some(task) = self.task.lock().await.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the ledger writer failed");
        }
    }

    /// Commits one exchange (in whatever batch it lands in) and says how it ended. The
    /// commit goes on even if the caller stops waiting.
    pub async fn submit(&self, entry: Entry) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || Reply {
            result: Err(ExchangeError::Internal("the ledger has stopped".into())),
            recorded: false,
        };
        if self
            .tx
            .send(Message::Commit(Box::new(Submission { entry, reply })))
            .await
            .is_err()
        {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }
}

struct Writer {
    store: Store,
    audit: AuditLog,
    keyring: Arc<Keyring>,
    clock: SharedClock,
    anchor: Option<Anchor>,
}

/// Why a batch failed as a whole.
enum BatchError {
    /// Before any record was durable: nothing written.
    Store(StoreError),
    /// The records could not be written: nothing written.
    Audit(crate::audit::AuditError),
    /// The records were written but the commit failed: verdicts as decided.
    Commit(StoreError, Vec<Option<ExchangeError>>),
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut pending = Vec::with_capacity(MAX_BATCH);
        // Leases in the claim backlog, as far as this writer knows; unknown at start (a
        // backlog left by an earlier run), so the first quiet moment folds. PostgreSQL has none.
        let keeps_backlog = self.store.has_claims_backlog();
        let mut backlog = if keeps_backlog { FOLD_QUIET } else { 0 };
        loop {
            let received = if backlog == 0 {
                rx.recv_many(&mut pending, MAX_BATCH).await
            } else if let Ok(n) =
                tokio::time::timeout(FOLD_IDLE, rx.recv_many(&mut pending, MAX_BATCH)).await
            {
                n
            } else {
                // Idle: drain the backlog chunk by chunk while nothing arrives.
                loop {
                    let folded;
                    (backlog, folded) = self.fold(backlog, FOLD_CHUNK).await;
                    if backlog == 0 || !folded || !rx.is_empty() {
                        break;
                    }
                }
                continue;
            };
            if received == 0 {
                break;
            }
            let mut entries = Vec::with_capacity(pending.len());
            let mut replies = Vec::with_capacity(pending.len());
            let mut stop = false;
            let mut tick = false;
            let mut added = 0;
            for message in pending.drain(..) {
                match message {
                    Message::Commit(s) if !stop => {
                        entries.push(s.entry);
                        replies.push(s.reply);
                    }
                    // After a stop, dropping the reply answers "the ledger has stopped".
                    Message::Commit(_) => {}
                    Message::Anchor => tick = true,
                    Message::Stop => stop = true,
                }
            }
            if !entries.is_empty() {
                let answers = self.commit(&entries).await;
                if keeps_backlog {
                    added = answers.iter().filter(|a| a.result.is_ok()).count();
                    backlog += added;
                }
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The caller may have stopped waiting; the outcome stands all the same.
                    drop(reply.send(answer));
                }
            }
            if tick && !stop {
                self.catch_up().await;
            }
            if stop {
                break;
            }
            // Under load each fold takes at least what the batch added, so the backlog stays
            // bounded near FOLD_BUSY however large batches grow.
            if backlog >= FOLD_BUSY || (backlog >= FOLD_QUIET && rx.is_empty()) {
                let chunk = u32::try_from(added).map_or(FOLD_CHUNK, |a| a.max(FOLD_CHUNK));
                backlog = self.fold(backlog, chunk).await.0;
            }
        }
        // What was written since the last anchor (refusal counts flushed at shutdown, secret
        // reads, admin calls) is anchored before the log is released.
        self.catch_up().await;
    }

    /// Anchors the audit head if it moved (outside any batch); a failure is logged and the
    /// next tick tries again.
    async fn catch_up(&self) {
        if let Some(anchor) = &self.anchor
            && let Err(e) = anchor
                .catch_up(&self.store, &self.audit, self.clock.unix())
                .await
        {
            tracing::error!(error = %e, "the audit anchor could not be moved");
        }
    }

    /// Folds up to `chunk` leases of the claim backlog into the index; returns the backlog
    /// left as far as known and whether the fold worked (after a failure the backlog is
    /// unchanged: lookups read it where it is, and the next fold retries).
    async fn fold(&self, backlog: usize, chunk: u32) -> (usize, bool) {
        let started = tokio::time::Instant::now();
        match self.store.fold_claims(chunk).await {
            Ok(n) => {
                tracing::debug!(
                    leases = n,
                    elapsed_us = started.elapsed().as_micros(),
                    "claims folded into the claim index"
                );
                let left = if n < u64::from(chunk) {
                    0
                } else {
                    // A full chunk: more may be left (the count is unknown after a restart).
                    backlog
                        .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX))
                        .max(FOLD_QUIET)
                };
                (left, true)
            }
            Err(e) => {
                tracing::warn!(error = %e, backlog, "folding lease claims into the claim index failed; will retry");
                (backlog, false)
            }
        }
    }

    /// Commits a batch; one reply per entry, in order. When the store refuses a batch of
    /// several exchanges (nothing was written), each is retried alone, so one exchange the
    /// database cannot take fails only itself.
    pub(super) async fn commit(&self, entries: &[Entry]) -> Vec<Reply> {
        match self.try_commit(entries).await {
            Err(BatchError::Store(e)) if entries.len() > 1 => {
                tracing::warn!(error = %e, batch = entries.len(), "exchange batch refused by the store; retrying its exchanges one by one");
                let mut out = Vec::with_capacity(entries.len());
                for one in entries.chunks(1) {
                    let result = self.try_commit(one).await;
                    out.extend(self.settle(one, result).await);
                }
                out
            }
            result => self.settle(entries, result).await,
        }
    }

    /// The replies to a batch's outcome (and the abort records of a failed commit).
    async fn settle(
        &self,
        entries: &[Entry],
        result: Result<Vec<Option<ExchangeError>>, BatchError>,
    ) -> Vec<Reply> {
        match result {
            Ok(verdicts) => verdicts
                .into_iter()
                .map(|v| Reply {
                    result: v.map_or(Ok(()), Err),
                    recorded: true,
                })
                .collect(),
            Err(BatchError::Store(e)) => {
                tracing::error!(error = %e, batch = entries.len(), "exchange batch failed in the store; nothing was issued");
                let msg = e.to_string();
                entries
                    .iter()
                    .map(|_| Reply {
                        result: Err(ExchangeError::Store(StoreError::Unavailable(msg.clone()))),
                        recorded: false,
                    })
                    .collect()
            }
            Err(BatchError::Audit(e)) => {
                tracing::error!(error = %e, batch = entries.len(), "exchange batch: audit records could not be written; nothing was issued");
                let msg = e.to_string();
                entries
                    .iter()
                    .map(|_| Reply {
                        result: Err(ExchangeError::Audit(crate::audit::AuditError::Write(
                            std::io::Error::other(msg.clone()),
                        ))),
                        recorded: false,
                    })
                    .collect()
            }
            Err(BatchError::Commit(e, verdicts)) => {
                tracing::error!(error = %e, batch = entries.len(), "exchange batch could not commit; nothing was issued");
                let msg = e.to_string();
                let mut out = Vec::with_capacity(entries.len());
                let mut aborted = Vec::new();
                for (entry, verdict) in entries.iter().zip(verdicts) {
                    match verdict {
                        // Refusals were recorded as such and stay refusals.
                        Some(refusal) => out.push(Reply {
                            result: Err(refusal),
                            recorded: true,
                        }),
                        None => {
                            let cause =
                                ExchangeError::NotCommitted(StoreError::Unavailable(msg.clone()));
                            let answer = ApiError::from(&cause);
                            aborted.push(entry.audit.record(&Verdict::Refused(&cause, &answer)));
                            out.push(Reply {
                                result: Err(cause),
                                recorded: true,
                            });
                        }
                    }
                }
                if let Err(ae) = self.audit.append_all(aborted).await {
                    tracing::error!(error = %ae, "audit log write failed for aborted exchanges");
                }
                out
            }
        }
    }

    /// The batch transaction. `Ok` holds one verdict per entry: `None` issued, `Some` why not.
    async fn try_commit(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Option<ExchangeError>>, BatchError> {
        let now = self.clock.unix();
        let mut tx = self.store.begin().await.map_err(BatchError::Store)?;
        let mut verdicts: Vec<Option<ExchangeError>> = entries.iter().map(|_| None).collect();

        // Single use, first: a token already used is a replay (a possible theft) whatever
        // else is wrong with the exchange. Inside the batch the first presentation wins.
        let mut first: HashMap<[u8; 32], usize> = HashMap::with_capacity(entries.len());
        let mut duplicate_of: Vec<Option<usize>> = vec![None; entries.len()];
        for (i, entry) in entries.iter().enumerate() {
            if let Some(&j) = first.get(&entry.slot.key) {
                duplicate_of[i] = Some(j);
                verdicts[i] = Some(ExchangeError::Replayed);
            } else {
                first.insert(entry.slot.key, i);
            }
        }
        let keys: Vec<[u8; 32]> = first.keys().copied().collect();
        let mut envs: Vec<&str> = entries.iter().map(|e| e.env.as_str()).collect();
        envs.sort_unstable();
        envs.dedup();
        let names: Vec<&str> = live(entries, &verdicts)
            .flat_map(|(_, e)| e.intents.iter().map(String::as_str))
            .collect();
        // One read of everything the batch decides on, inside its transaction: freezes
        // committed before it are seen (on PostgreSQL a freeze or revocation of its
        // environments waits for it), and role intents are locked against reconciliation.
        let checks = tx
            .checks(&keys, &envs, &names)
            .await
            .map_err(BatchError::Store)?;
        for (entry, verdict) in entries.iter().zip(verdicts.iter_mut()) {
            if verdict.is_none() && checks.used.contains(&entry.slot.key) {
                *verdict = Some(ExchangeError::Replayed);
            }
        }
        for (entry, verdict) in entries.iter().zip(verdicts.iter_mut()) {
            if verdict.is_some() {
                continue;
            }
            // Leases were sealed with a cached data key: it must still be live (a key
            // destroyed on any replica refuses the lease); a newer version makes the cache
            // refresh.
            let version = entry.lease.lease.key_version;
            let state = checks.keys.get(&entry.env);
            if checks.frozen.contains(&entry.env) {
                *verdict = Some(ExchangeError::Frozen(entry.env.clone()));
            } else if state.is_none_or(|k| k.destroyed.contains(&version) || version > k.current) {
                self.keyring.invalidate(&entry.env);
                *verdict = Some(ExchangeError::Keys(crate::crypto::CryptoError::Destroyed(
                    entry.env.clone(),
                )));
            } else {
                if state.is_some_and(|k| version < k.current) {
                    // Sealed under an older version, still live: the lease stands, the
                    // cache refreshes.
                    self.keyring.invalidate(&entry.env);
                }
                if entry.intents.iter().any(|n| !checks.intents.contains(n)) {
                    // PostgreSQL roles: the lease takes all its intents over, or none of
                    // them (those of an exchange whose intent reconciliation claimed stay).
                    *verdict = Some(ExchangeError::Abandoned);
                }
            }
        }
        // A token presented again in this batch was not used after all.
        for i in 0..entries.len() {
            if let Some(j) = duplicate_of[i]
                && matches!(verdicts[j], Some(ExchangeError::Abandoned))
            {
                verdicts[i] = Some(ExchangeError::Abandoned);
            }
        }

        // Claim the slots and write the rows; a slot another replica took meanwhile is a
        // replay too (that exchange wrote nothing).
        let items: Vec<BatchItem<'_>> = live(entries, &verdicts)
            .map(|(_, e)| BatchItem {
                slot: &e.slot,
                intents: &e.intents,
                lease: &e.lease,
            })
            .collect();
        let claimed = tx
            .write_batch(&items, now)
            .await
            .map_err(BatchError::Store)?;
        for (entry, verdict) in entries.iter().zip(verdicts.iter_mut()) {
            if verdict.is_none() && !claimed.contains(&entry.slot.key) {
                *verdict = Some(ExchangeError::Replayed);
            }
        }

        // Every record of the batch under one fsync, before the commit (fail closed).
        let records = entries
            .iter()
            .zip(&verdicts)
            .map(|(entry, verdict)| match verdict {
                None => entry.audit.record(&Verdict::Issued),
                Some(cause) => {
                    let answer = ApiError::from(cause);
                    entry.audit.record(&Verdict::Refused(cause, &answer))
                }
            })
            .collect();
        if let Err(e) = self.audit.append_all(records).await {
            drop(tx);
            return Err(BatchError::Audit(e));
        }
        // The records are durable: the anchor may name them (or any later durable line).
        let head = self.audit.position();
        if let Some(anchor) = &self.anchor {
            match tx.advance_audit_anchor(&anchor.row(&head, now)).await {
                Ok(true) => {}
                Ok(false) => {
                    let taken = anchor.taken().to_string();
                    return Err(BatchError::Commit(StoreError::Unavailable(taken), verdicts));
                }
                Err(e) => return Err(BatchError::Commit(e, verdicts)),
            }
        }
        if let Err(e) = tx.commit().await {
            return Err(BatchError::Commit(e, verdicts));
        }
        if let Some(anchor) = &self.anchor {
            anchor.moved(&head);
        }
        Ok(verdicts)
    }
}

/// Entries still on course to be issued.
fn live<'a>(
    entries: &'a [Entry],
    verdicts: &'a [Option<ExchangeError>],
) -> impl Iterator<Item = (usize, &'a Entry)> {
    entries
        .iter()
        .enumerate()
        .filter(|(i, _)| verdicts.get(*i).is_some_and(Option::is_none))
}

#[cfg(test)]
mod tests {
    //! The ledger's batch semantics, on a real SQLite store and a real audit file. Batches
    //! are formed explicitly (`Writer::commit` on a chosen set of entries) so what shares a
    //! batch is never left to timing.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use super::{Entry, Ledger, Reply, Writer};
    use crate::audit::{AuditKey, AuditLog, MaskedCredential};
    use crate::clock::{FixedClock, SharedClock};
    use crate::crypto::Keyring;
    use crate::exchange::audit::ExchangeAudit;
    use crate::exchange::error::ExchangeError;
    use crate::store::{CredentialRow, LeaseRow, NewLease, ReplaySlot, Store};

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        keyring: Arc<Keyring>,
        dir: tempfile::TempDir,
        store: Store,
        audit: AuditLog,
        writer: Writer,
        key: AuditKey,
    }

    async fn fixture_with_audit(audit_file: Option<&std::path::Path>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("db").display()))
            .await
            .unwrap();
        let clock: SharedClock = Arc::new(FixedClock::at(NOW));
        let key = AuditKey::from_bytes([7; 32]);
        let path = audit_file.map_or_else(|| dir.path().join("audit.log"), ToOwned::to_owned);
        let audit = AuditLog::open(&path, key.clone(), clock.clone(), None, false).unwrap();
        let keyring = Arc::new(Keyring::new(
            zeroize::Zeroizing::new([3; 32]),
            store.clone(),
            clock.clone(),
        ));
        keyring.prepare("prod").await.unwrap();
        keyring.prepare("dev").await.unwrap();
        let writer = Writer {
            store: store.clone(),
            audit: audit.clone(),
            keyring: keyring.clone(),
            clock,
            anchor: None,
        };
        Fixture {
            keyring,
            dir,
            store,
            audit,
            writer,
            key,
        }
    }

    async fn fixture() -> Fixture {
        fixture_with_audit(None).await
    }

    /// An exchange of `env` whose token has single-use key `token`, minting one credential.
    fn entry(env: &str, n: u8, token: u8) -> Entry {
        let lease_id = format!("lse_{n:04}");
        let mut audit = ExchangeAudit::new("pv1");
        audit.resolved(env, "ci");
        let key = AuditKey::from_bytes([7; 32]);
        audit.lease(
            &lease_id,
            vec![MaskedCredential::new(
                &key,
                "api",
                "token",
                &format!("jpt_secret_value_{n}"),
            )],
            NOW + 600,
        );
        Entry {
            env: env.to_string(),
            slot: ReplaySlot {
                key: [token; 32],
                issuer: "https://issuer.test".into(),
                expires_at: NOW + 600,
            },
            lease: NewLease {
                lease: LeaseRow {
                    id: lease_id.clone(),
                    env: env.to_string(),
                    role: "ci".into(),
                    issuer: "https://issuer.test".into(),
                    subject: format!("repo:acme/web:run:{n}"),
                    policy_version: "pv1".into(),
                    issued_at: NOW,
                    expires_at: NOW + 600,
                    revoked_at: None,
                    revoke_reason: None,
                    key_version: 1,
                    sealed: vec![1, 2, 3],
                    revocation: None,
                    revocation_attempts: 0,
                },
                claims: vec![
                    ("repository".into(), "acme/web".into()),
                    ("run_id".into(), n.to_string()),
                ],
                credentials: vec![CredentialRow {
                    id: format!("crd_{n:04}"),
                    lease_id,
                    env: env.to_string(),
                    name: "api".into(),
                    kind: crate::mint::Kind::Token,
                    token_hash: Some(vec![n; 32]),
                    scope: "[\"app/*\"]".into(),
                    expires_at: NOW + 600,
                }],
            },
            intents: Vec::new(),
            audit,
        }
    }

    fn outcomes(replies: &[Reply]) -> Vec<String> {
        replies
            .iter()
            .map(|r| match &r.result {
                Ok(()) => "issued".to_string(),
                Err(ExchangeError::Replayed) => "replayed".to_string(),
                Err(ExchangeError::Frozen(_)) => "frozen".to_string(),
                Err(ExchangeError::Abandoned) => "abandoned".to_string(),
                Err(ExchangeError::Store(_)) => "store".to_string(),
                Err(ExchangeError::Audit(_)) => "audit".to_string(),
                Err(ExchangeError::Keys(_)) => "keys".to_string(),
                Err(e) => format!("other: {e}"),
            })
            .collect()
    }

    fn records(f: &Fixture) -> Vec<serde_json::Value> {
        std::fs::read_to_string(f.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_token_presented_twice_in_one_batch_is_issued_once_and_the_other_audited_as_replay() {
        let f = fixture().await;
        let replies = f
            .writer
            .commit(&[
                entry("prod", 1, 9),
                entry("prod", 2, 9),
                entry("prod", 3, 8),
            ])
            .await;
        assert_eq!(outcomes(&replies), ["issued", "replayed", "issued"]);
        assert!(replies.iter().all(|r| r.recorded));
        assert!(f.store.lease("lse_0001").await.unwrap().is_some());
        assert!(f.store.lease("lse_0002").await.unwrap().is_none());
        assert!(f.store.lease("lse_0003").await.unwrap().is_some());
        let recs = records(&f);
        let events: Vec<(&str, &str)> = recs
            .iter()
            .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(
            events,
            [
                ("exchange", "success"),
                ("replay", "denied"),
                ("exchange", "success")
            ]
        );
        assert_eq!(recs[0]["lease_id"], "lse_0001");
        assert!(recs[1]["lease_id"].is_null(), "a replay gets no lease");

        // A later batch presenting the same token is refused too (the store remembers).
        let again = f.writer.commit(&[entry("prod", 4, 9)]).await;
        assert_eq!(outcomes(&again), ["replayed"]);
        assert!(f.store.lease("lse_0004").await.unwrap().is_none());
        assert_eq!(
            crate::audit::verify(&f.dir.path().join("audit.log"), &f.key)
                .unwrap()
                .lines,
            4
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_exchange_and_stores_nothing() {
        let f = fixture().await;
        // The store refuses every lease (as a full disk or a lost database would).
        let Store::Sqlite { writer, .. } = &f.store else {
            panic!("sqlite store expected")
        };
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON leases BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(writer)
        .await
        .unwrap();
        let replies = f
            .writer
            .commit(&[entry("prod", 1, 1), entry("prod", 2, 2), entry("dev", 3, 3)])
            .await;
        assert_eq!(outcomes(&replies), ["store", "store", "store"]);
        assert!(
            replies.iter().all(|r| !r.recorded),
            "the caller records failures"
        );
        for id in ["lse_0001", "lse_0002", "lse_0003"] {
            assert!(f.store.lease(id).await.unwrap().is_none(), "{id} stored");
        }
        for token in [1u8, 2, 3] {
            assert!(
                !f.store.replay_seen(&[token; 32]).await.unwrap(),
                "slot {token} kept"
            );
        }
        assert!(records(&f).is_empty(), "no record of a rolled-back batch");

        // Once the store takes writes again, the same exchanges go through: nothing was used.
        sqlx::query("DROP TRIGGER refuse")
            .execute(writer)
            .await
            .unwrap();
        let retry = f
            .writer
            .commit(&[entry("prod", 1, 1), entry("dev", 3, 3)])
            .await;
        assert_eq!(outcomes(&retry), ["issued", "issued"]);
    }

    #[tokio::test]
    async fn an_exchange_the_store_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
        let f = fixture().await;
        // Its credential id collides with the first entry's: the batch insert fails.
        let mut bad = entry("prod", 2, 2);
        bad.lease.credentials[0].id = "crd_0001".into();
        let replies = f
            .writer
            .commit(&[entry("prod", 1, 1), bad, entry("dev", 3, 3)])
            .await;
        assert_eq!(outcomes(&replies), ["issued", "store", "issued"]);
        assert!(!replies[1].recorded, "the caller records the failure");
        assert!(f.store.lease("lse_0001").await.unwrap().is_some());
        assert!(f.store.lease("lse_0002").await.unwrap().is_none());
        assert!(f.store.lease("lse_0003").await.unwrap().is_some());
        assert!(
            !f.store.replay_seen(&[2; 32]).await.unwrap(),
            "its token is not used up"
        );
        let leases: Vec<String> = records(&f)
            .iter()
            .map(|r| r["lease_id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(leases, ["lse_0001", "lse_0003"]);
    }

    #[tokio::test]
    async fn the_ledger_folds_the_claim_backlog_into_the_index_when_quiet() {
        let f = fixture().await;
        let ledger = Ledger::start(
            f.store.clone(),
            f.audit.clone(),
            f.keyring.clone(),
            f.writer.clock.clone(),
        );
        // Unknown backlog at start: the first quiet moment folds. Messages are handled in
        // order, so that fold is done when the second exchange is answered.
        assert!(ledger.submit(entry("prod", 1, 1)).await.result.is_ok());
        assert!(ledger.submit(entry("prod", 2, 2)).await.result.is_ok());
        let Store::Sqlite { writer, .. } = &f.store else {
            unreachable!()
        };
        let waiting: Vec<String> = sqlx::query_scalar("SELECT lease_id FROM lease_claims_backlog")
            .fetch_all(writer)
            .await
            .unwrap();
        assert_eq!(waiting, ["lse_0002"]);
        let indexed: Vec<String> = sqlx::query_scalar("SELECT DISTINCT lease_id FROM lease_claims")
            .fetch_all(writer)
            .await
            .unwrap();
        assert_eq!(indexed, ["lse_0001"]);
        ledger.stop().await;
    }

    #[tokio::test]
    async fn a_used_token_is_a_replay_even_in_a_frozen_environment() {
        let f = fixture().await;
        assert_eq!(
            outcomes(&f.writer.commit(&[entry("prod", 1, 1)]).await),
            ["issued"]
        );
        f.store
            .set_frozen("prod", true, "INC-2", "sec", NOW)
            .await
            .unwrap();
        let replies = f.writer.commit(&[entry("prod", 2, 1)]).await;
        assert_eq!(outcomes(&replies), ["replayed"]);
        assert_eq!(records(&f)[1]["event"], "replay");
    }

    /// The fixture's writer, keeping the audit anchor (no ticks: only batches move it).
    async fn anchored(f: &mut Fixture) {
        let anchor = crate::audit::anchor::establish(crate::audit::anchor::Start {
            store: &f.store,
            log: &f.audit,
            key: &f.key,
            accept: None,
            now: NOW,
            gauges: crate::metrics::AuditGauges::default(),
        })
        .await
        .unwrap();
        f.writer.anchor = anchor;
    }

    #[tokio::test]
    async fn a_batch_moves_the_audit_anchor_with_its_rows() {
        let mut f = fixture().await;
        anchored(&mut f).await;
        assert_eq!(f.store.audit_anchor("").await.unwrap().unwrap().seq, 0);
        let replies = f
            .writer
            .commit(&[entry("prod", 1, 1), entry("prod", 2, 2)])
            .await;
        assert_eq!(outcomes(&replies), ["issued", "issued"]);
        let row = f.store.audit_anchor("").await.unwrap().unwrap();
        assert_eq!((row.seq, row.mac), (2, f.audit.head()));
    }

    #[tokio::test]
    async fn a_batch_whose_audit_anchor_another_process_took_stores_nothing() {
        let mut f = fixture().await;
        anchored(&mut f).await;
        // Another broker started with the same replica name took the row over.
        let mut theirs = f.store.audit_anchor("").await.unwrap().unwrap();
        theirs.owner = "someone-else".into();
        f.store.put_audit_anchor(&theirs).await.unwrap();
        let replies = f.writer.commit(&[entry("prod", 1, 1)]).await;
        assert!(
            matches!(replies[0].result, Err(ExchangeError::NotCommitted(_))),
            "{:?}",
            outcomes(&replies)
        );
        assert!(f.store.lease("lse_0001").await.unwrap().is_none());
        assert!(!f.store.replay_seen(&[1; 32]).await.unwrap());
        assert_eq!(f.store.audit_anchor("").await.unwrap().unwrap(), theirs);
    }

    #[tokio::test]
    async fn a_batch_whose_audit_records_cannot_be_written_stores_nothing() {
        let f = fixture_with_audit(Some(std::path::Path::new("/dev/full"))).await;
        let replies = f
            .writer
            .commit(&[entry("prod", 1, 1), entry("prod", 2, 2)])
            .await;
        assert_eq!(outcomes(&replies), ["audit", "audit"]);
        assert!(replies.iter().all(|r| !r.recorded));
        assert!(f.store.lease("lse_0001").await.unwrap().is_none());
        assert!(f.store.lease("lse_0002").await.unwrap().is_none());
        assert!(!f.store.replay_seen(&[1; 32]).await.unwrap());
        drop(f.audit);
    }

    #[tokio::test]
    async fn a_freeze_committed_before_a_batch_is_seen_by_it() {
        let f = fixture().await;
        f.store
            .set_frozen("prod", true, "INC-1", "sec", NOW)
            .await
            .unwrap();
        let replies = f
            .writer
            .commit(&[entry("prod", 1, 1), entry("dev", 2, 2)])
            .await;
        assert_eq!(outcomes(&replies), ["frozen", "issued"]);
        assert!(f.store.lease("lse_0001").await.unwrap().is_none());
        // A refused exchange does not use up its token.
        assert!(!f.store.replay_seen(&[1; 32]).await.unwrap());
        let recs = records(&f);
        assert_eq!(recs[0]["details"]["error"], "environment_frozen");
        assert_eq!(recs[0]["outcome"], "denied");

        f.store
            .set_frozen("prod", false, "over", "sec", NOW)
            .await
            .unwrap();
        let after = f.writer.commit(&[entry("prod", 1, 1)]).await;
        assert_eq!(outcomes(&after), ["issued"]);
    }

    #[tokio::test]
    async fn an_exchange_whose_role_intent_was_reconciled_is_abandoned_and_keeps_its_token() {
        let f = fixture().await;
        let intent = crate::store::PgIntent {
            role_name: "jp_kept".into(),
            target: "main".into(),
            env: "prod".into(),
            lease_id: "lse_0001".into(),
        };
        f.store.insert_intent(&intent, NOW).await.unwrap();
        let mut kept = entry("prod", 1, 1);
        kept.intents = vec!["jp_kept".into()];
        f.store
            .insert_intent(
                &crate::store::PgIntent {
                    role_name: "jp_second".into(),
                    target: "main".into(),
                    env: "prod".into(),
                    lease_id: "lse_0002".into(),
                },
                NOW,
            )
            .await
            .unwrap();
        let mut lost = entry("prod", 2, 2);
        lost.intents = vec!["jp_second".into(), "jp_claimed_by_reconciliation".into()];
        let replies = f.writer.commit(&[kept, lost]).await;
        assert_eq!(outcomes(&replies), ["issued", "abandoned"]);
        assert!(f.store.lease("lse_0001").await.unwrap().is_some());
        assert!(f.store.lease("lse_0002").await.unwrap().is_none());
        assert!(f.store.replay_seen(&[1; 32]).await.unwrap());
        assert!(
            !f.store.replay_seen(&[2; 32]).await.unwrap(),
            "slot left untaken"
        );
        let left: Vec<String> = f
            .store
            .intents(NOW + 1)
            .await
            .unwrap()
            .into_iter()
            .map(|(i, _)| i.role_name)
            .collect();
        assert_eq!(
            left,
            ["jp_second"],
            "the abandoned exchange's intent stays for reconciliation"
        );
    }

    #[tokio::test]
    async fn a_lease_sealed_under_an_older_live_key_still_takes_all_its_intents_or_none() {
        let f = fixture().await;
        // The key was rotated after these leases were sealed under version 1.
        assert!(
            f.store
                .insert_data_key("prod", 2, b"newer", NOW)
                .await
                .unwrap()
        );
        let mut lost = entry("prod", 1, 1);
        lost.intents = vec!["jp_claimed_by_reconciliation".into()];
        let plain = entry("prod", 2, 2);
        let replies = f.writer.commit(&[lost, plain]).await;
        assert_eq!(outcomes(&replies), ["abandoned", "issued"]);
        assert!(f.store.lease("lse_0001").await.unwrap().is_none());
        assert!(!f.store.replay_seen(&[1; 32]).await.unwrap());
        assert!(f.store.lease("lse_0002").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_lease_sealed_under_a_key_destroyed_meanwhile_is_refused() {
        let f = fixture().await;
        // Shredded by another replica: this replica's cached key is stale.
        f.store.destroy_keys("prod", NOW).await.unwrap();
        let replies = f
            .writer
            .commit(&[entry("prod", 1, 1), entry("dev", 2, 2)])
            .await;
        assert_eq!(outcomes(&replies), ["keys", "issued"]);
        assert!(f.store.lease("lse_0001").await.unwrap().is_none());
        assert!(!f.store.replay_seen(&[1; 32]).await.unwrap());
        assert!(
            f.keyring.sealer_cached("prod").await.is_err(),
            "the cache was refreshed from the store"
        );
    }

    #[tokio::test]
    async fn concurrent_submissions_share_batches_and_each_gets_its_own_answer() {
        let f = fixture().await;
        let ledger = Ledger::start(
            f.store.clone(),
            f.audit.clone(),
            f.keyring.clone(),
            Arc::new(FixedClock::at(NOW)),
        );
        let mut tasks = Vec::new();
        for n in 0..60u8 {
            let ledger = ledger.clone();
            // Every third exchange reuses the token of the one before it.
            let token = if n % 3 == 2 { n - 1 } else { n };
            tasks.push(tokio::spawn(async move {
                ledger.submit(entry("prod", n, token)).await
            }));
        }
        let mut issued = 0;
        let mut replayed = 0;
        for t in tasks {
            match t.await.unwrap().result {
                Ok(()) => issued += 1,
                Err(ExchangeError::Replayed) => replayed += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!((issued, replayed), (40, 20));
        ledger.stop().await;
        let after = ledger.submit(entry("prod", 99, 99)).await;
        assert!(matches!(after.result, Err(ExchangeError::Internal(_))));
        assert!(!after.recorded);
        let recs = records(&f);
        assert_eq!(recs.len(), 60);
        assert_eq!(recs.iter().filter(|r| r["event"] == "replay").count(), 20);
    }
}
