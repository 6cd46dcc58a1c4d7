//! Behaviour of the audit log as a whole: writing, reopening, verifying, finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::*;
use crate::clock::{FixedClock, SharedClock};

const T0: i64 = 1_795_000_000;

fn key() -> AuditKey {
    AuditKey::from_bytes([42; 32])
}

fn clock() -> SharedClock {
    Arc::new(FixedClock::at(T0))
}

fn open(path: &Path) -> AuditLog {
    AuditLog::open(path, key(), clock(), None, false).unwrap()
}

fn event(i: usize) -> AuditEvent {
    AuditEvent::new("exchange", Outcome::Success)
        .with_actor(Actor::token(Some("repo:acme/web"), Some("https://issuer")))
        .with_environment("prod")
        .with_role("deploy-web")
        .with_lease_id(&format!("lse_{i}"))
        .with_detail("i", Value::from(i))
}

/// A temp dir with a log of `n` records.
async fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path);
    for i in 0..n {
        log.append(event(i)).await.unwrap();
    }
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn tampered_line(path: &Path) -> u64 {
    match verify(path, &key()) {
        Err(AuditError::Tampered { line, .. }) => line,
        other => panic!("expected Tampered, got {other:?}"),
    }
}

#[tokio::test]
async fn chain_of_many_records_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path);
    let genesis_head = log.head();
    assert_eq!(genesis_head, genesis(&key()));
    for i in 0..200 {
        assert_eq!(log.append(event(i)).await.unwrap(), i as u64 + 1);
    }
    let report = verify(&path, &key()).unwrap();
    assert_eq!(report.lines, 200);
    assert_eq!(report.head, log.head());
    assert_ne!(report.head, genesis_head);
    let first: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], Value::from(genesis(&key())));
    assert_eq!(first["time"], Value::from(crate::clock::rfc3339(T0)));
    assert_eq!(first["outcome"], "success");
    assert_eq!(first["actor"]["kind"], "token");
}

#[tokio::test]
async fn empty_log_verifies_with_genesis_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    drop(open(&path));
    let report = verify(&path, &key()).unwrap();
    assert_eq!(
        report,
        VerifyReport {
            lines: 0,
            head: genesis(&key()),
            replica: None,
        }
    );
}

#[cfg(unix)]
#[tokio::test]
async fn new_log_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = log_with(1).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn flipping_any_byte_of_line_k_is_reported_at_k() {
    let (_dir, path) = log_with(8).await;
    let original = std::fs::read(&path).unwrap();
    let k = 5usize;
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            original
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let (from, to) = (starts[k - 1], starts[k] - 1); // line k without its newline
    for at in from..to {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            tampered_line(&path),
            k as u64,
            "byte {} of line {k}",
            at - from
        );
    }
}

#[tokio::test]
async fn deleting_line_k_is_reported_at_k() {
    for k in [1usize, 4, 7] {
        let (_dir, path) = log_with(8).await;
        let mut l = lines(&path);
        l.remove(k - 1);
        write_lines(&path, &l);
        assert_eq!(tampered_line(&path), k as u64, "deleted line {k}");
    }
}

#[tokio::test]
async fn swapping_lines_k_and_k_plus_1_is_reported_at_k() {
    for k in [1usize, 3, 7] {
        let (_dir, path) = log_with(8).await;
        let mut l = lines(&path);
        l.swap(k - 1, k);
        write_lines(&path, &l);
        assert_eq!(
            tampered_line(&path),
            k as u64,
            "swapped lines {k},{}",
            k + 1
        );
    }
}

#[tokio::test]
async fn garbage_line_is_reported_where_it_stands() {
    let (_dir, path) = log_with(5).await;
    let mut l = lines(&path);
    l.insert(2, "{\"seq\":3,\"event\":\"exchange\"}".to_owned());
    write_lines(&path, &l);
    assert_eq!(tampered_line(&path), 3);
    l[2] = String::new();
    write_lines(&path, &l);
    assert_eq!(tampered_line(&path), 3);
}

#[tokio::test]
async fn torn_last_line_is_reported_by_verify_and_refused_by_open() {
    let (_dir, path) = log_with(3).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let half = lines(&path)[1].len() / 2;
    bytes.extend_from_slice(&lines(&path)[1].as_bytes()[..half]);
    std::fs::write(&path, &bytes).unwrap();
    match verify(&path, &key()) {
        Err(AuditError::Tampered { line, reason }) => {
            assert_eq!(line, 4);
            assert!(reason.contains("torn"), "{reason}");
        }
        other => panic!("expected Tampered, got {other:?}"),
    }
    let err = AuditLog::open(&path, key(), clock(), None, false).unwrap_err();
    assert!(matches!(err, AuditError::Torn { .. }), "{err:?}");
    assert!(err.to_string().contains("torn line"));
}

#[tokio::test]
async fn seq_must_count_up_by_one() {
    // Lines correctly MAC'd and linked, but seq jumps: only someone with the key could
    // write this, still verify must refuse it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let k = key();
    let mut prev = genesis(&k);
    let mut text = String::new();
    for seq in [1u64, 2, 4] {
        let pos = chain::Position {
            seq,
            time: "t",
            replica: None,
            prev: &prev,
        };
        let r = chain::render(&k, &pos, &event(0)).unwrap();
        text.push_str(&r.line);
        prev = r.mac;
    }
    std::fs::write(&path, text).unwrap();
    match verify(&path, &k) {
        Err(AuditError::Tampered { line: 3, reason }) => assert!(reason.contains("seq")),
        other => panic!("expected seq error at line 3, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_with_another_key_fails_at_line_1() {
    let (_dir, path) = log_with(3).await;
    match verify(&path, &AuditKey::from_bytes([1; 32])) {
        Err(AuditError::Tampered { line: 1, .. }) => {}
        other => panic!("expected line 1, got {other:?}"),
    }
}

#[tokio::test]
async fn reopen_resumes_the_chain() {
    let (_dir, path) = log_with(3).await;
    let head_before = verify(&path, &key()).unwrap().head;
    let log = open(&path);
    assert_eq!(log.head(), head_before);
    assert_eq!(log.append(event(3)).await.unwrap(), 4);
    assert_eq!(log.append(event(4)).await.unwrap(), 5);
    drop(log);
    let log = AuditLog::open(&path, key(), clock(), Some("r2".to_owned()), false).unwrap();
    assert_eq!(log.append(event(5)).await.unwrap(), 6);
    let report = verify(&path, &key()).unwrap();
    assert_eq!(report.lines, 6);
    assert_eq!(report.head, log.head());
    let last: Value = serde_json::from_str(&lines(&path)[5]).unwrap();
    assert_eq!(last["replica"], "r2");
}

#[tokio::test]
async fn reopen_with_another_key_is_refused() {
    let (_dir, path) = log_with(2).await;
    let err =
        AuditLog::open(&path, AuditKey::from_bytes([1; 32]), clock(), None, false).unwrap_err();
    assert!(matches!(err, AuditError::Resume { .. }), "{err:?}");
}

#[tokio::test]
async fn second_writer_on_the_same_file_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let first = open(&path);
    let clone = first.clone();
    let err = AuditLog::open(&path, key(), clock(), None, false).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    // The message says what is going on and what to do.
    let text = err.to_string();
    assert!(text.contains("already running"), "{text}");
    assert!(text.contains("Stop it first"), "{text}");
    drop(first);
    clone.append(event(0)).await.unwrap();
    drop(clone);
    let again = open(&path);
    assert_eq!(again.append(event(1)).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_unique_consecutive_seqs_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path);
    let mut tasks = Vec::new();
    for t in 0..40 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(log.append(event(t * 100 + i)).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's records in order"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1000).collect::<Vec<u64>>());
    let report = verify(&path, &key()).unwrap();
    assert_eq!(report.lines, 1000);
    assert_eq!(report.head, log.head());
    // Each line's seq is the one its caller was given.
    for (i, line) in lines(&path).iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn dev_full_opens_but_every_append_fails() {
    let log = AuditLog::open(Path::new("/dev/full"), key(), clock(), None, false).unwrap();
    let head = log.head();
    for _ in 0..3 {
        let err = log.append(event(0)).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Write(_) | AuditError::Poisoned),
            "{err:?}"
        );
    }
    assert_eq!(log.head(), head, "nothing durable, head unchanged");
    // Two opens of the device at once are fine (not locked).
    let other = AuditLog::open(Path::new("/dev/full"), key(), clock(), None, false).unwrap();
    assert!(other.append(event(1)).await.is_err());
}

#[test]
fn failed_write_is_cut_off_before_the_next_record() {
    // Simulates what a failed write leaves (half a line) and checks that the next commit
    // starts on a clean line after truncating back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut writer = log::tests_support::writer(&path, key(), clock());
    let e0 = event(0);
    assert_eq!(
        log::tests_support::commit(&mut writer, &[&e0]),
        vec![Some(1)]
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":2,\"half").unwrap();
    }
    log::tests_support::poison(&mut writer);
    let e1 = event(1);
    assert_eq!(
        log::tests_support::commit(&mut writer, &[&e1]),
        vec![Some(2)]
    );
    assert_eq!(verify(&path, &key()).unwrap().lines, 2);
}

#[tokio::test]
async fn stdout_copy_does_not_change_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, key(), clock(), None, true).unwrap();
    log.append(event(0)).await.unwrap();
    assert_eq!(verify(&path, &key()).unwrap().lines, 1);
}

#[tokio::test]
async fn find_matches_a_credential_value_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path);
    let k = key();
    let a = "jpt_AAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let b = "jpt_BBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    log.append(event(0).with_credential(MaskedCredential::new(&k, "api", "token", a)))
        .await
        .unwrap();
    log.append(event(1).with_credential(MaskedCredential::new(&k, "api", "token", b)))
        .await
        .unwrap();
    log.append(
        AuditEvent::new("revoke", Outcome::Success)
            .with_actor(Actor::admin("alice", "security"))
            .with_reason("INC-42")
            .with_credential(MaskedCredential::new(&k, "db", "postgres", "pw-not-this"))
            .with_credential(MaskedCredential::new(&k, "api", "token", a)),
    )
    .await
    .unwrap();
    drop(log);

    let hits = find(&path, &k, a).unwrap();
    assert_eq!(hits.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(hits[0].1, lines(&path)[0]);
    let hits_b = find(&path, &k, b).unwrap();
    assert_eq!(hits_b.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2]);
    assert!(
        find(&path, &k, "jpt_CCCCCCCCCCCCCCCCCCCCCCCCCCCC")
            .unwrap()
            .is_empty()
    );
    // Same value, other key: no match.
    assert!(
        find(&path, &AuditKey::from_bytes([1; 32]), a)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn no_raw_value_reaches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path);
    let k = key();
    let secrets = [
        "jpt_live_5uper5ecretT0kenValue",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "p4ssw0rd-of-the-db-role",
        concat!("-----BEGIN ", "PRIVATE", " KEY-----MIIEvQ"),
        "short",
    ];
    let mut ev = event(0);
    for (i, s) in secrets.iter().enumerate() {
        ev = ev.with_credential(MaskedCredential::new(&k, &format!("c{i}"), "token", s));
    }
    log.append(ev).await.unwrap();
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    for s in secrets {
        assert!(!text.contains(s), "raw value in the log");
    }
    // Nothing beyond the 4-character mask either.
    assert!(!text.contains("jpt_l"));
    assert!(text.contains("\"masked\":\"jpt_…\""));
    assert!(text.contains("\"masked\":\"…\""));
    assert!(text.contains(&fingerprint(&k, secrets[2])));
}

#[test]
fn errors_display_without_panicking_and_name_the_line() {
    let e = AuditError::Tampered {
        line: 7,
        reason: "mac does not match".to_owned(),
    };
    assert_eq!(
        e.to_string(),
        "audit log fails verification at line 7: mac does not match"
    );
}
