//! The line format and the HMAC chain: rendering one record, and checking one line.
//!
//! A line is the compact JSON object `{"seq":…,"time":…,["replica":…,]"event":…,"actor":…,
//! "environment":…,"role":…,"lease_id":…,"outcome":…,"reason":…,"policy_version":…,
//! "credentials":[…],"details":{…},"prev":"<hex>","mac":"<hex>"}` followed by `\n`. The MAC
//! is `HMAC-SHA256(audit key, body)` where *body* is the exact text of the line without the
//! mac field, i.e. the same object ending in `"prev":"<hex>"}`. Checking works on the bytes
//! as written, never on a re-serialisation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Actor, AuditEvent, AuditKey, MaskedCredential, Outcome};

/// Label whose HMAC is the `prev` of the first record. Does not start with `{`, so it can
/// never equal a record body.
const GENESIS_LABEL: &[u8] = b"jobpass/audit/genesis/v1";

/// Text between the body (without its closing brace) and the hex MAC.
const MAC_FIELD: &[u8] = b",\"mac\":\"";
/// Hex digits of a MAC.
const MAC_HEX_LEN: usize = 64;
/// Text after the hex MAC.
const LINE_END: &[u8] = b"\"}";
/// Length of `,"mac":"<64 hex>"}`.
const SUFFIX_LEN: usize = MAC_FIELD.len() + MAC_HEX_LEN + LINE_END.len();

/// The `prev` value of the first record: hex HMAC of a fixed label under the audit key.
#[must_use]
pub fn genesis(key: &AuditKey) -> String {
    hex::encode(key.chain_mac(GENESIS_LABEL))
}

/// Field order of a record is the order of this struct.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a str>,
    event: &'a str,
    actor: &'a Actor,
    environment: Option<&'a str>,
    role: Option<&'a str>,
    lease_id: Option<&'a str>,
    outcome: Outcome,
    reason: Option<&'a str>,
    policy_version: Option<&'a str>,
    credentials: &'a [MaskedCredential],
    details: &'a Map<String, Value>,
    prev: &'a str,
}

/// A rendered record.
pub(crate) struct Rendered {
    /// The full line, ending in `\n`.
    pub line: String,
    /// Its MAC (hex), the next record's `prev`.
    pub mac: String,
}

/// Where a record goes in the chain.
pub(crate) struct Position<'a> {
    pub seq: u64,
    pub time: &'a str,
    pub replica: Option<&'a str>,
    pub prev: &'a str,
}

/// Renders `event` at `pos` into a MAC'd line.
pub(crate) fn render(
    key: &AuditKey,
    pos: &Position<'_>,
    event: &AuditEvent,
) -> Result<Rendered, serde_json::Error> {
    let body = Body {
        seq: pos.seq,
        time: pos.time,
        replica: pos.replica,
        event: &event.event,
        actor: &event.actor,
        environment: event.environment.as_deref(),
        role: event.role.as_deref(),
        lease_id: event.lease_id.as_deref(),
        outcome: event.outcome,
        reason: event.reason.as_deref(),
        policy_version: event.policy_version.as_deref(),
        credentials: &event.credentials,
        details: &event.details,
        prev: pos.prev,
    };
    let text = serde_json::to_string(&body)?;
    let mac = hex::encode(key.chain_mac(text.as_bytes()));
    // A serialized struct always ends with its closing brace; compact JSON holds no raw
    // newline (control characters in strings are escaped), so the line stays one line.
    let open = text.strip_suffix('}').unwrap_or(&text);
    let line = format!("{open},\"mac\":\"{mac}\"}}\n");
    Ok(Rendered { line, mac })
}

/// What a line that passed its MAC check says about its place in the chain.
#[derive(Debug)]
pub(crate) struct Checked {
    pub seq: u64,
    pub prev: String,
    pub mac: String,
}

#[derive(Deserialize)]
struct Links {
    seq: u64,
    prev: String,
}

/// Why one line is not an authentic audit record.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    /// The line does not end in a `mac` field of lowercase hex.
    #[error("not an audit record: no mac field at the end of the line")]
    NoMac,
    /// The `mac` field does not decode.
    #[error("mac is not hex")]
    MacNotHex,
    /// The MAC does not authenticate the line under this key.
    #[error("mac does not match: the line was altered (or the audit key is wrong)")]
    MacMismatch,
    /// Authentic, but not a record (a bug, or a key reused elsewhere).
    #[error("authenticated line is not a valid record: {0}")]
    NotARecord(serde_json::Error),
}

/// Checks one line (without its `\n`): shape and MAC.
pub(crate) fn check(key: &AuditKey, line: &[u8]) -> Result<Checked, LineError> {
    let Some(split) = line.len().checked_sub(SUFFIX_LEN).filter(|&s| s > 0) else {
        return Err(LineError::NoMac);
    };
    let (open, suffix) = line.split_at(split);
    let Some(mac_hex) = suffix
        .strip_prefix(MAC_FIELD)
        .and_then(|rest| rest.strip_suffix(LINE_END))
        .filter(|hex| hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    else {
        return Err(LineError::NoMac);
    };
    let mut body = Vec::with_capacity(open.len() + 1);
    body.extend_from_slice(open);
    body.push(b'}');
    let mac = hex::decode(mac_hex).map_err(|_| LineError::MacNotHex)?;
    if !key.chain_verify(&body, &mac) {
        return Err(LineError::MacMismatch);
    }
    let links: Links = serde_json::from_slice(&body).map_err(LineError::NotARecord)?;
    Ok(Checked {
        seq: links.seq,
        prev: links.prev,
        mac: String::from_utf8_lossy(mac_hex).into_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::from_bytes([9; 32])
    }

    fn sample() -> AuditEvent {
        AuditEvent::new("exchange", Outcome::Success)
            .with_actor(
                Actor::token(
                    Some("repo:acme/web:ref:refs/heads/main"),
                    Some("https://iss"),
                )
                .with_claim("run_id", Value::from("42")),
            )
            .with_environment("prod")
            .with_role("deploy-web")
            .with_lease_id("lse_1")
            .with_policy_version("pv1")
            .with_detail("note", Value::from("line\nbreak \"quoted\""))
    }

    #[test]
    fn record_fields_come_in_the_fixed_order() {
        let k = key();
        let g = genesis(&k);
        let pos = Position {
            seq: 1,
            time: "2026-11-22T10:00:00Z",
            replica: Some("r1"),
            prev: &g,
        };
        let r = render(&k, &pos, &sample()).unwrap();
        let names = [
            "seq",
            "time",
            "replica",
            "event",
            "actor",
            "environment",
            "role",
            "lease_id",
            "outcome",
            "reason",
            "policy_version",
            "credentials",
            "details",
            "prev",
            "mac",
        ];
        let mut last = 0;
        for n in names {
            let at = r.line.find(&format!("\"{n}\":")).unwrap();
            assert!(at >= last, "{n} out of order in {}", r.line);
            last = at;
        }
        assert!(r.line.ends_with(&format!(",\"mac\":\"{}\"}}\n", r.mac)));
        assert_eq!(r.line.matches('\n').count(), 1, "one line per record");
        assert!(r.line.contains("\"outcome\":\"success\""));
        assert!(r.line.contains("\"reason\":null"));
    }

    #[test]
    fn replica_is_omitted_when_none() {
        let k = key();
        let g = genesis(&k);
        let pos = Position {
            seq: 1,
            time: "t",
            replica: None,
            prev: &g,
        };
        let r = render(&k, &pos, &sample()).unwrap();
        assert!(!r.line.contains("replica"));
    }

    #[test]
    fn mac_covers_the_line_without_the_mac_field() {
        let k = key();
        let g = genesis(&k);
        let pos = Position {
            seq: 1,
            time: "t",
            replica: None,
            prev: &g,
        };
        let r = render(&k, &pos, &sample()).unwrap();
        let text = r.line.trim_end_matches('\n');
        let cut = text.find(",\"mac\":").unwrap();
        let body = format!("{}}}", &text[..cut]);
        assert!(body.ends_with(&format!("\"prev\":\"{g}\"}}")));
        assert_eq!(hex::encode(k.chain_mac(body.as_bytes())), r.mac);
        let c = check(&k, text.as_bytes()).unwrap();
        assert_eq!(
            (c.seq, c.prev.as_str(), c.mac.as_str()),
            (1, g.as_str(), r.mac.as_str())
        );
    }

    #[test]
    fn check_refuses_garbage_and_wrong_key() {
        let k = key();
        assert!(check(&k, b"").is_err());
        assert!(check(&k, b"hello world").is_err());
        assert!(check(&k, b"{}").is_err());
        let g = genesis(&k);
        let pos = Position {
            seq: 1,
            time: "t",
            replica: None,
            prev: &g,
        };
        let r = render(&k, &pos, &sample()).unwrap();
        let text = r.line.trim_end_matches('\n').as_bytes();
        let other = AuditKey::from_bytes([8; 32]);
        assert!(matches!(check(&other, text), Err(LineError::MacMismatch)));
        let upper = String::from_utf8(text.to_vec())
            .unwrap()
            .replace(&r.mac, &r.mac.to_uppercase());
        assert!(check(&k, upper.as_bytes()).is_err());
    }

    #[test]
    fn genesis_is_keyed_and_pinned() {
        assert_ne!(genesis(&key()), genesis(&AuditKey::from_bytes([8; 32])));
        // HMAC-SHA256(32 zero bytes, "jobpass/audit/genesis/v1"), computed independently.
        assert_eq!(
            genesis(&AuditKey::from_bytes([0; 32])),
            "c0c6dfd6d16b79d913eb33ab5294232d56c116108e171fea17f4b9eb7e23f7b9"
        );
    }
}
