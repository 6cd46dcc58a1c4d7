//! The append side: one writer thread per log file, group commit, fail-closed durability.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::chain::{Position, check, genesis, render};
use super::{AuditError, AuditEvent, AuditKey};
use crate::clock::{SharedClock, rfc3339};

/// Requests waiting for the writer; callers beyond this wait in `send`.
const QUEUE: usize = 4096;
/// Most records written under one fsync.
const MAX_BATCH: usize = 512;
/// Longest last line `open` is willing to read back.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Chunk size when reading the last line backwards.
const TAIL_CHUNK: u64 = 8192;

/// One caller's records: written together, all or none.
struct Request {
    events: Vec<AuditEvent>,
    reply: oneshot::Sender<Result<Vec<u64>, AuditError>>,
}

/// Handle to an open audit log. Cheap to clone (an `Arc` inside); all clones feed the same
/// writer. When the last clone is dropped, the writer finishes what it was given and stops
/// (the drop waits for it, so the file can be reopened right after).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    head: Arc<Mutex<AuditHead>>,
    path: PathBuf,
    regular: bool,
    replica: Option<String>,
}

/// The position of the last durable line: its `seq` (0 for an empty log) and its MAC (the
/// genesis value for an empty log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// `seq` of the last durable line; 0 when there is none.
    pub seq: u64,
    /// MAC (hex) of that line, or the genesis value.
    pub mac: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the queue is drained.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("audit writer thread panicked");
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating it with mode 0600, in append mode) the audit file at `path` and
    /// starts its writer thread.
    ///
    /// The chain resumes from the last line (its `seq` and `mac`, after checking that line's
    /// MAC under `key`); an empty or new file starts at `seq` 1 with `prev` = the genesis
    /// value. A file that does not end in a newline is refused with [`AuditError::Torn`].
    /// A regular file is locked exclusively (`flock`) for as long as the log is open, so two
    /// processes cannot interleave one chain ([`AuditError::Locked`]). A non-regular file
    /// (`/dev/full`, a pipe) is neither read nor locked and its chain starts at `seq` 1.
    /// With `stdout`, every durable line is also written to standard output. Only the last
    /// line is checked here; [`verify`](super::verify) checks the whole file.
    ///
    /// The `AuditLog` is a cloneable handle; share it by cloning (or behind an `Arc`).
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] when the file cannot be opened, read or locked,
    /// [`AuditError::Locked`] when another writer holds it, [`AuditError::Torn`] when it does
    /// not end in a newline, [`AuditError::Resume`] when its last line is not a record
    /// under `key`.
    pub fn open(
        path: &Path,
        key: AuditKey,
        clock: SharedClock,
        replica: Option<String>,
        stdout: bool,
    ) -> Result<AuditLog, AuditError> {
        let writer = Writer::open(path, key, clock, replica.clone(), stdout)?;
        let head = Arc::clone(&writer.head);
        let regular = writer.regular;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run(rx))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                head,
                path: path.to_owned(),
                regular,
                replica,
            }),
        })
    }

    /// Appends one record and returns its `seq` once the line is written and fdatasync'ed.
    ///
    /// Concurrent calls are batched by the writer thread and share one sync; each caller is
    /// answered only after its own line is durable. On a write or sync error every caller of
    /// that batch gets an error ([`AuditError::Write`]) and nothing of the batch counts: a
    /// regular file is truncated back to its last good length before the next record; if
    /// that is impossible, every later call fails with [`AuditError::Poisoned`]. A caller
    /// that stops awaiting after the record was queued does not cancel the write.
    ///
    /// # Errors
    ///
    /// [`AuditError::Write`] (this batch failed), [`AuditError::Poisoned`] (an earlier
    /// failure could not be undone), [`AuditError::Closed`] (the writer stopped),
    /// [`AuditError::Serialize`]. Any error means the record is not in the log.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let seqs = self.append_all(vec![event]).await?;
        seqs.first().copied().ok_or(AuditError::Closed)
    }

    /// Appends several records as consecutive lines under one sync, all or none, and returns
    /// their `seq`s once they are durable (the group commit of the exchange ledger uses this:
    /// one batch of exchanges, one audit fsync). Same guarantees and errors as
    /// [`append`](Self::append); an empty list is a no-op.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append); on any error none of the records is in the log.
    pub async fn append_all(&self, events: Vec<AuditEvent>) -> Result<Vec<u64>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.inner.tx.as_ref().ok_or(AuditError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Request { events, reply })
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// The head hash: MAC (hex) of the last durable line, or the genesis value.
    #[must_use]
    pub fn head(&self) -> String {
        self.position().mac
    }

    /// `seq` and MAC of the last durable line, read together (never a line that is not yet
    /// fdatasync'ed: the head moves only after the sync).
    #[must_use]
    pub fn position(&self) -> AuditHead {
        self.inner
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the log is a regular file (which can be read back, locked and anchored);
    /// false for `/dev/full`, a pipe or a terminal.
    #[must_use]
    pub fn is_regular(&self) -> bool {
        self.inner.regular
    }

    /// The replica name written into every record, if any.
    #[must_use]
    pub fn replica(&self) -> Option<&str> {
        self.inner.replica.as_deref()
    }

    /// The path the log was opened with.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// The state owned by the writer thread.
struct Writer {
    file: File,
    /// A regular file: can be read back, locked and truncated.
    regular: bool,
    /// Length of the file up to the last durable line.
    good_len: u64,
    /// A failed write may have left bytes after `good_len` that are not yet removed.
    poisoned: bool,
    /// `seq` of the last durable line (0 when none).
    seq: u64,
    /// MAC of the last durable line (genesis when none).
    prev: String,
    key: AuditKey,
    clock: SharedClock,
    replica: Option<String>,
    stdout: bool,
    head: Arc<Mutex<AuditHead>>,
}

impl Writer {
    fn open(
        path: &Path,
        key: AuditKey,
        clock: SharedClock,
        replica: Option<String>,
        stdout: bool,
    ) -> Result<Self, AuditError> {
        let (file, created) = open_file(path)?;
        let meta = file.metadata()?;
        let regular = meta.is_file();
        let (seq, prev, good_len) = if regular {
            lock(&file, path)?;
            if created {
                sync_parent(path)?;
            } else if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "audit log is accessible to group or others; it should be mode 0600"
                );
            }
            let len = meta.len();
            let (seq, prev) = resume(&file, len, &key, path)?;
            (seq, prev, len)
        } else {
            (0, genesis(&key), 0)
        };
        Ok(Self {
            file,
            regular,
            good_len,
            poisoned: false,
            seq,
            head: Arc::new(Mutex::new(AuditHead {
                seq,
                mac: prev.clone(),
            })),
            prev,
            key,
            clock,
            replica,
            stdout,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut records = first.events.len();
            let mut batch = vec![first];
            while records < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => {
                        records += request.events.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let groups: Vec<&[AuditEvent]> = batch.iter().map(|r| r.events.as_slice()).collect();
            let results = self.commit_groups(&groups);
            for (request, result) in batch.into_iter().zip(results) {
                // The caller may have stopped waiting; its record is written all the same.
                drop(request.reply.send(result));
            }
        }
    }

    /// Writes `events` as consecutive lines under one sync; one result per event.
    #[cfg(test)]
    fn commit(&mut self, events: &[&AuditEvent]) -> Vec<Result<u64, AuditError>> {
        let groups: Vec<&[AuditEvent]> = events.iter().map(|e| std::slice::from_ref(*e)).collect();
        self.commit_groups(&groups)
            .into_iter()
            .map(|r| r.map(|seqs| seqs.first().copied().unwrap_or(0)))
            .collect()
    }

    /// Writes every group as consecutive lines under one sync; one result per group. A group
    /// is all or nothing: if one of its records cannot be serialized, none of it is written.
    fn commit_groups(&mut self, groups: &[&[AuditEvent]]) -> Vec<Result<Vec<u64>, AuditError>> {
        if self.poisoned && !self.recover() {
            return groups.iter().map(|_| Err(AuditError::Poisoned)).collect();
        }
        let time = rfc3339(self.clock.unix());
        let mut seq = self.seq;
        let mut prev = self.prev.clone();
        let mut buf = String::new();
        let mut results = Vec::with_capacity(groups.len());
        for group in groups {
            let (group_seq, group_prev, group_len) = (seq, prev.clone(), buf.len());
            let mut seqs = Vec::with_capacity(group.len());
            let mut failed = None;
            for event in *group {
                let pos = Position {
                    seq: seq + 1,
                    time: &time,
                    replica: self.replica.as_deref(),
                    prev: &prev,
                };
                match render(&self.key, &pos, event) {
                    Ok(rendered) => {
                        seq += 1;
                        buf.push_str(&rendered.line);
                        prev = rendered.mac;
                        seqs.push(seq);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => results.push(Ok(seqs)),
                Some(e) => {
                    // Take the whole group back out of the batch.
                    seq = group_seq;
                    prev = group_prev;
                    buf.truncate(group_len);
                    results.push(Err(AuditError::Serialize(e)));
                }
            }
        }
        if buf.is_empty() {
            return results;
        }
        if let Err(e) = self.write_durably(buf.as_bytes()) {
            tracing::error!(error = %e, "audit log write failed; refusing the records");
            return results
                .into_iter()
                .map(|r| {
                    r.and_then(|_| Err(AuditError::Write(io::Error::new(e.kind(), e.to_string()))))
                })
                .collect();
        }
        self.seq = seq;
        self.good_len += buf.len() as u64;
        {
            let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
            head.seq = seq;
            head.mac.clone_from(&prev);
        }
        self.prev = prev;
        if self.stdout {
            let mut out = io::stdout().lock();
            if let Err(e) = out.write_all(buf.as_bytes()).and_then(|()| out.flush()) {
                tracing::warn!(error = %e, "could not copy audit records to stdout");
            }
        }
        results
    }

    /// Writes all of `bytes` and syncs them; on failure marks the log poisoned when bytes
    /// may be left behind, and tries to remove them at once.
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0usize;
        let result = write_counted(&mut self.file, bytes, &mut written).and_then(|()| self.sync());
        if result.is_err() {
            if self.regular {
                // Even with nothing written, the length is checked by truncating.
                self.poisoned = true;
                self.recover();
            } else if written > 0 {
                // A device or pipe cannot take back a half-written line.
                self.poisoned = true;
            }
        }
        result
    }

    fn sync(&self) -> io::Result<()> {
        match self.file.sync_data() {
            // Pipes and character devices have nothing to sync.
            Err(e)
                if !self.regular
                    && matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Cuts the file back to the last durable line. True when the log is usable again.
    fn recover(&mut self) -> bool {
        if !self.regular {
            return false;
        }
        match self
            .file
            .set_len(self.good_len)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.poisoned = false;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "audit log: cannot remove a failed write");
                false
            }
        }
    }
}

fn write_counted(file: &mut File, bytes: &[u8], written: &mut usize) -> io::Result<()> {
    while let Some(rest) = bytes.get(*written..).filter(|r| !r.is_empty()) {
        match file.write(rest) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens for reading and appending; creates with mode 0600. Says whether it created.
fn open_file(path: &Path) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).mode(0o600);
    match options.clone().create_new(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((options.open(path)?, false)),
        Err(e) => Err(e),
    }
}

fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::Io(e)),
    }
}

/// Makes a newly created file's directory entry durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// `seq` and MAC of the last line of a file of `len` bytes.
fn resume(file: &File, len: u64, key: &AuditKey, path: &Path) -> Result<(u64, String), AuditError> {
    if len == 0 {
        return Ok((0, genesis(key)));
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        return Err(AuditError::Torn {
            path: path.to_owned(),
        });
    }
    // Read backwards from the final newline to the one before it (or the file's start).
    let end = len - 1;
    let mut start = end;
    let mut tail: Vec<u8> = Vec::new();
    while start > 0 {
        let from = start.saturating_sub(TAIL_CHUNK);
        let size =
            usize::try_from(start - from).map_err(|_| io::Error::from(ErrorKind::InvalidData))?;
        let mut chunk = vec![0u8; size];
        file.read_exact_at(&mut chunk, from)?;
        let newline = chunk.iter().rposition(|&b| b == b'\n');
        let keep = newline.map_or(0, |i| i + 1);
        chunk.drain(..keep);
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if newline.is_some() {
            break;
        }
        start = from;
        if tail.len() > MAX_LINE {
            return Err(AuditError::Resume {
                reason: "is too long to be an audit record".to_owned(),
            });
        }
    }
    let checked = check(key, &tail).map_err(|e| AuditError::Resume {
        reason: e.to_string(),
    })?;
    Ok((checked.seq, checked.mac))
}

/// MAC of the line of `path` whose `seq` is `seq`, when the file's last line has `seq`
/// `last` (lines are numbered by `seq` in a valid chain, so it is the line `last - seq`
/// places before the last one). Reads backwards from the end: the cost grows with the
/// distance from the end, not with the file. Checks that line's MAC under `key`.
///
/// `Ok(None)` when the file has no such line, or the line there is not an authentic record
/// carrying that `seq` (the file was replaced or rewritten).
///
/// # Errors
///
/// [`AuditError::Io`] when the file cannot be read, [`AuditError::Torn`] when it does not
/// end in a newline.
pub(crate) fn mac_at(
    path: &Path,
    key: &AuditKey,
    last: u64,
    seq: u64,
) -> Result<Option<String>, AuditError> {
    if seq == 0 || seq > last {
        return Ok(None);
    }
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut end_byte = [0u8; 1];
    file.read_exact_at(&mut end_byte, len - 1)?;
    if end_byte[0] != b'\n' {
        return Err(AuditError::Torn {
            path: path.to_owned(),
        });
    }
    let Some(line) = line_from_end(&file, len, last - seq)? else {
        return Ok(None);
    };
    Ok(check(key, &line)
        .ok()
        .filter(|c| c.seq == seq)
        .map(|c| c.mac))
}

/// The `back`-th line counted from the end (0: the last line), without its newline, of a
/// file of `len` bytes that ends in a newline; None when the file has fewer lines or the
/// line is longer than [`MAX_LINE`].
fn line_from_end(file: &File, len: u64, back: u64) -> Result<Option<Vec<u8>>, AuditError> {
    let too_big = || io::Error::from(ErrorKind::InvalidData);
    // Exclusive end of the wanted line; bytes [0, pos) are still to scan.
    let mut end = len.saturating_sub(1);
    let mut pos = end;
    let mut newlines = 0u64;
    let mut start = None;
    while pos > 0 && start.is_none() {
        let from = pos.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - from).map_err(|_| too_big())?];
        file.read_exact_at(&mut chunk, from)?;
        for (i, &b) in chunk.iter().enumerate().rev() {
            if b != b'\n' {
                continue;
            }
            let at = from + i as u64;
            if newlines == back {
                start = Some(at + 1);
                break;
            }
            newlines += 1;
            if newlines == back {
                end = at;
            }
        }
        pos = from;
    }
    let start = match start {
        Some(s) => s,
        // The wanted line is the file's first.
        None if newlines == back => 0,
        None => return Ok(None),
    };
    let size = usize::try_from(end - start).map_err(|_| too_big())?;
    if size > MAX_LINE {
        return Ok(None);
    }
    let mut line = vec![0u8; size];
    file.read_exact_at(&mut line, start)?;
    Ok(Some(line))
}

/// Drives a [`Writer`] synchronously, to test failure recovery without a failing disk.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::{AuditEvent, AuditKey, Path, SharedClock, Writer};

    pub(crate) struct TestWriter(Writer);

    pub(crate) fn writer(path: &Path, key: AuditKey, clock: SharedClock) -> TestWriter {
        match Writer::open(path, key, clock, None, false) {
            Ok(w) => TestWriter(w),
            Err(e) => unreachable!("test writer: {e}"),
        }
    }

    /// One `Some(seq)` per record written, `None` per failure.
    pub(crate) fn commit(w: &mut TestWriter, events: &[&AuditEvent]) -> Vec<Option<u64>> {
        w.0.commit(events).into_iter().map(Result::ok).collect()
    }

    /// Marks the writer as having failed a write.
    pub(crate) fn poison(w: &mut TestWriter) {
        w.0.poisoned = true;
    }
}
