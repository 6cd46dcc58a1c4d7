//! Refusals of callers who proved no identity (no valid token, no admin certificate, a name
//! that is not one, a rate limit) are not written one line each: anyone can send them, and a
//! line per request would let anyone fill the disk until every exchange fails closed. They
//! are counted per source address, call and answer, and written as one `refusals` record per
//! key and interval with the count and the first and last time seen. The number of keys is
//! bounded; sources beyond it are counted together as `other`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::{AuditEvent, Outcome};
use crate::clock::rfc3339;

/// Keys kept between two flushes before new sources are counted together.
pub const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    source: Option<IpAddr>,
    call: &'static str,
    answer: &'static str,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u64,
    first: i64,
    last: i64,
}

/// Counts of refusals since the last flush.
#[derive(Debug, Default)]
pub struct RefusalTally {
    counts: Mutex<HashMap<Key, Count>>,
}

impl RefusalTally {
    /// An empty tally.
    #[must_use]
    pub fn new() -> RefusalTally {
        RefusalTally::default()
    }

    /// Counts one refusal of `call` from `source` answered `answer` (an error code) at `now`
    /// (Unix seconds).
    pub fn note(&self, source: Option<IpAddr>, call: &'static str, answer: &'static str, now: i64) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = Key {
            source: source.map(crate::limits::source_key),
            call,
            answer,
        };
        if counts.len() >= MAX_KEYS && !counts.contains_key(&key) {
            key.source = None;
        }
        counts
            .entry(key)
            .and_modify(|c| {
                c.n += 1;
                c.last = now;
            })
            .or_insert(Count {
                n: 1,
                first: now,
                last: now,
            });
    }

    /// The records of everything counted since the last call, and a fresh count.
    #[must_use]
    pub fn take(&self) -> Vec<AuditEvent> {
        let counts = std::mem::take(
            &mut *self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut keys: Vec<(Key, Count)> = counts.into_iter().collect();
        keys.sort_by_key(|(k, c)| (c.first, k.call, k.answer, k.source));
        keys.into_iter()
            .map(|(k, c)| {
                let mut ev = AuditEvent::new("refusals", Outcome::Denied);
                let source = k.source.map_or_else(|| "other".to_string(), |ip| ip.to_string());
                ev.reason = Some(format!(
                    "{} {} request(s) from {source} refused with `{}` before the caller proved an identity",
                    c.n, k.call, k.answer
                ));
                ev.details.insert("call".into(), Value::String(k.call.into()));
                ev.details.insert("source".into(), Value::String(source));
                ev.details
                    .insert("answer".into(), Value::String(k.answer.into()));
                ev.details.insert("count".into(), json!(c.n));
                ev.details
                    .insert("first".into(), Value::String(rfc3339(c.first)));
                ev.details
                    .insert("last".into(), Value::String(rfc3339(c.last)));
                ev
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_source_call_and_answer() {
        let t = RefusalTally::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..1000 {
            t.note(Some(a), "exchange", "invalid_token", 100 + i);
        }
        t.note(Some(a), "exchange", "invalid_request", 150);
        t.note(
            Some("192.0.2.2".parse().unwrap()),
            "exchange",
            "invalid_token",
            120,
        );
        let records = t.take();
        assert_eq!(records.len(), 3);
        let first = &records[0];
        assert_eq!(first.event, "refusals");
        assert_eq!(first.details["count"], json!(1000));
        assert_eq!(first.details["source"], json!("192.0.2.1"));
        assert_eq!(first.details["first"], json!(rfc3339(100)));
        assert_eq!(first.details["last"], json!(rfc3339(1099)));
        assert!(t.take().is_empty(), "a flush starts a new count");
    }

    #[test]
    fn sources_beyond_the_bound_are_counted_together() {
        let t = RefusalTally::new();
        for i in 0..(MAX_KEYS as u32 + 500) {
            t.note(
                Some(IpAddr::from(i.to_be_bytes())),
                "secret_read",
                "invalid_token",
                1,
            );
        }
        let records = t.take();
        assert_eq!(records.len(), MAX_KEYS + 1);
        let other: Vec<_> = records
            .iter()
            .filter(|r| r.details["source"] == json!("other"))
            .collect();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].details["count"], json!(500));
    }
}
