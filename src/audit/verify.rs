//! Offline reading of an audit file: chain verification and fingerprint search.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::chain::{check, genesis};
use super::{AuditError, AuditKey, fingerprint};

/// Result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records (lines) in the file; also the last `seq`.
    pub lines: u64,
    /// MAC of the last line (the genesis value for an empty file). Record it: only a
    /// comparison against a recorded head reveals that lines were cut from the end.
    pub head: String,
    /// The `replica` named by the last line (None for an empty file or an unnamed replica).
    pub replica: Option<String>,
}

#[derive(Deserialize)]
struct Replica {
    #[serde(default)]
    replica: Option<String>,
}

/// Reads the file line by line, handing each line (without its `\n`, and a flag saying
/// whether it had one) with its 1-based number to `each`.
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(u64, &[u8], bool) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(number);
        }
        number += 1;
        match buf.strip_suffix(b"\n") {
            Some(line) => each(number, line, true)?,
            None => each(number, &buf, false)?,
        }
    }
}

/// Verifies an audit file against `key`.
///
/// Every line must carry a MAC over its exact bytes, link to the previous line's MAC (the
/// genesis value for line 1) and carry `seq` = its line number. Returns the count and the
/// head hash, or [`AuditError::Tampered`] naming the FIRST bad line (1-based): the line that
/// was altered, the line after a removed one, the first of two swapped lines, a garbage line,
/// or a torn last line. Lines cut from the end cannot be detected here: compare
/// [`VerifyReport::head`] with a head recorded earlier. Files of several replicas are
/// independent chains: verify each file on its own.
///
/// # Errors
///
/// [`AuditError::Tampered`] for the first bad line, [`AuditError::Io`] when the file cannot
/// be read.
pub fn verify(path: &Path, key: &AuditKey) -> Result<VerifyReport, AuditError> {
    let mut head = genesis(key);
    let mut last = Vec::new();
    let lines = for_each_line(path, |number, line, complete| {
        let tampered = |reason: String| AuditError::Tampered {
            line: number,
            reason,
        };
        if !complete {
            return Err(tampered(
                "torn line: the file ends in the middle of a line (an interrupted write or a cut)"
                    .to_owned(),
            ));
        }
        let checked = check(key, line).map_err(|e| tampered(e.to_string()))?;
        if checked.prev != head {
            return Err(tampered(if number == 1 {
                "prev is not the genesis value: lines were removed from the start of the log"
                    .to_owned()
            } else {
                "prev does not match the previous line's mac: a line was removed, inserted or \
                 reordered here"
                    .to_owned()
            }));
        }
        if checked.seq != number {
            return Err(tampered(format!(
                "seq is {} where {number} was expected",
                checked.seq
            )));
        }
        head = checked.mac;
        last.clear();
        last.extend_from_slice(line);
        Ok(())
    })?;
    let replica = serde_json::from_slice::<Replica>(&last)
        .ok()
        .and_then(|r| r.replica);
    Ok(VerifyReport {
        lines,
        head,
        replica,
    })
}

#[derive(Deserialize)]
struct WithCredentials {
    #[serde(default)]
    credentials: Vec<CredentialFingerprint>,
}

#[derive(Deserialize)]
struct CredentialFingerprint {
    #[serde(default)]
    fingerprint: String,
}

/// Lines (1-based number and raw JSON text) of the records one of whose credential
/// fingerprints equals `fingerprint(key, value)`.
///
/// This is a search, not a verification: lines that are not JSON records are skipped, and
/// the chain is not checked (run [`verify`] for that).
///
/// # Errors
///
/// [`AuditError::Io`] when the file cannot be read.
pub fn find(path: &Path, key: &AuditKey, value: &str) -> Result<Vec<(u64, String)>, AuditError> {
    let wanted = fingerprint(key, value);
    let mut found = Vec::new();
    for_each_line(path, |number, line, _complete| {
        let Ok(record) = serde_json::from_slice::<WithCredentials>(line) else {
            return Ok(());
        };
        let hit = record
            .credentials
            .iter()
            .any(|c| bool::from(c.fingerprint.as_bytes().ct_eq(wanted.as_bytes())));
        if hit {
            found.push((number, String::from_utf8_lossy(line).into_owned()));
        }
        Ok(())
    })?;
    Ok(found)
}

/// Verifies the chain over the last `window` bytes of the file (the whole file when it is
/// smaller): every whole line there must carry a valid MAC, link to the line before it and
/// carry the next `seq`. The first line of a partial window is taken as its own start. Used at
/// start, so that lines removed from the recent part of the log — also before a line that is
/// still there — are noticed without reading a large file whole; `jobpass audit verify` checks
/// all of it.
///
/// # Errors
///
/// [`AuditError::Tampered`] naming the `seq` after which the chain breaks (the line number
/// within the file is not known without reading it from its start); [`AuditError::Io`].
pub fn verify_tail(path: &Path, key: &AuditKey, window: u64) -> Result<u64, AuditError> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len <= window {
        return verify(path, key).map(|r| r.lines);
    }
    file.seek(SeekFrom::Start(len - window))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    // Skip the partial line the window starts in.
    reader.read_until(b'\n', &mut buf)?;
    let mut prev: Option<(u64, String)> = None;
    let mut checked_lines = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(checked_lines);
        }
        let after = prev.as_ref().map_or(0, |(seq, _)| *seq);
        let tampered = |reason: String| AuditError::Tampered {
            line: after + 1,
            reason: format!("after the record with seq {after}: {reason}"),
        };
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Err(tampered("torn line at the end of the file".to_owned()));
        };
        let c = check(key, line).map_err(|e| tampered(e.to_string()))?;
        if let Some((seq, mac)) = &prev {
            if c.prev != *mac {
                return Err(tampered(
                    "prev does not match the previous line's mac: a line was removed, inserted \
                     or reordered here"
                        .to_owned(),
                ));
            }
            if c.seq != seq + 1 {
                return Err(tampered(format!(
                    "seq is {} where {} was expected",
                    c.seq,
                    seq + 1
                )));
            }
        }
        prev = Some((c.seq, c.mac));
        checked_lines += 1;
    }
}
