//! The audit key, masking and fingerprints: the one place where a secret value is turned
//! into something that may be written down.

use std::fmt;

use ring::hmac;
use serde::Serialize;
use zeroize::Zeroizing;

/// Label under which the fingerprint subkey is derived from the audit key.
///
/// Fingerprints are computed under a subkey rather than the audit key itself, so that a
/// chosen value (e.g. a static secret an admin stores) can never yield the HMAC of a forged
/// audit line: line MACs use the audit key, fingerprints use `HMAC(audit key, this label)`.
/// The label does not start with `{`, so it can never equal a serialized line.
const FINGERPRINT_SUBKEY_LABEL: &[u8] = b"jobpass/audit/fingerprint-key/v1";

/// Prefix of every fingerprint.
pub const FINGERPRINT_PREFIX: &str = "hmac-sha256:";

/// The 32-byte audit key (derived by the caller from the root key).
///
/// The bytes are zeroized on drop and never printed: `Debug` shows `[REDACTED]`.
#[derive(Clone)]
pub struct AuditKey {
    /// Key of the line MACs (the chain), as handed in.
    chain: Zeroizing<[u8; 32]>,
    /// Key of the fingerprints, derived from `chain`.
    fingerprint: Zeroizing<[u8; 32]>,
}

impl AuditKey {
    /// Wraps 32 key bytes.
    #[must_use]
    pub fn from_bytes(b: [u8; 32]) -> Self {
        let chain = Zeroizing::new(b);
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, chain.as_slice()),
            FINGERPRINT_SUBKEY_LABEL,
        );
        let mut fingerprint = Zeroizing::new([0u8; 32]);
        fingerprint.copy_from_slice(tag.as_ref());
        Self { chain, fingerprint }
    }

    /// HMAC-SHA256 of `data` under the chain key.
    pub(crate) fn chain_mac(&self, data: &[u8]) -> [u8; 32] {
        sign(self.chain.as_slice(), data)
    }

    /// Constant-time check of a chain MAC.
    pub(crate) fn chain_verify(&self, data: &[u8], mac: &[u8]) -> bool {
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, self.chain.as_slice()),
            data,
            mac,
        )
        .is_ok()
    }

    /// HMAC-SHA256 of `data` under the fingerprint subkey.
    fn fingerprint_mac(&self, data: &[u8]) -> [u8; 32] {
        sign(self.fingerprint.as_slice(), data)
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

fn sign(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Number of leading characters [`mask`] reveals.
const MASK_SHOWN: usize = 4;
/// Values of this many characters or fewer reveal nothing.
const MASK_MIN_LEN: usize = 8;

/// Masks a value: its first 4 characters (chars, not bytes) followed by `…`.
///
/// Values of 8 characters or fewer show no characters at all, just `…`, so a short secret
/// never leaks half of itself.
#[must_use]
pub fn mask(value: &str) -> String {
    if value.chars().count() <= MASK_MIN_LEN {
        return "…".to_owned();
    }
    let mut out: String = value.chars().take(MASK_SHOWN).collect();
    out.push('…');
    out
}

/// Fingerprint of a value: `hmac-sha256:<64 hex>`, keyed by the audit key (through a derived
/// fingerprint subkey), so that a leaked value can be matched against the log with
/// [`find`](super::find) without the log holding the value.
#[must_use]
pub fn fingerprint(key: &AuditKey, value: &str) -> String {
    let mac = key.fingerprint_mac(value.as_bytes());
    format!("{FINGERPRINT_PREFIX}{}", hex::encode(mac))
}

/// A credential as the audit log shows it: never the value, only its mask and fingerprint.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct MaskedCredential {
    /// The grant name (`api`, `db`, …).
    pub name: String,
    /// The credential kind (`token`, `jwt`, `postgres`, `x509`, …).
    pub kind: String,
    /// [`mask`] of the value.
    pub masked: String,
    /// [`fingerprint`] of the value.
    pub fingerprint: String,
}

impl MaskedCredential {
    /// Masks and fingerprints `value`; the value itself is not kept.
    #[must_use]
    pub fn new(key: &AuditKey, name: &str, kind: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: kind.to_owned(),
            masked: mask(value),
            fingerprint: fingerprint(key, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> AuditKey {
        AuditKey::from_bytes([b; 32])
    }

    #[test]
    fn mask_shows_first_four_chars_of_long_values() {
        assert_eq!(mask("jpt_abcdefghijkl"), "jpt_…");
        assert_eq!(mask("123456789"), "1234…");
    }

    #[test]
    fn mask_shows_nothing_of_short_values() {
        assert_eq!(mask(""), "…");
        assert_eq!(mask("abc"), "…");
        assert_eq!(mask("12345678"), "…");
    }

    #[test]
    fn mask_counts_characters_not_bytes() {
        // 8 two-byte characters: short, shows nothing.
        assert_eq!(mask("éééééééé"), "…");
        // 9 characters: shows 4 whole characters.
        assert_eq!(mask("éàüößçñøå"), "éàüö…");
        assert_eq!(mask("🔑🔑🔑🔑🔑🔑🔑🔑🔑🔑"), "🔑🔑🔑🔑…");
    }

    #[test]
    fn fingerprint_is_keyed_hmac_hex() {
        let fp = fingerprint(&key(1), "s3cr3t-value");
        let hex_part = fp.strip_prefix("hmac-sha256:").unwrap_or_default();
        assert_eq!(hex_part.len(), 64);
        assert!(
            hex_part
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(fp, fingerprint(&key(1), "s3cr3t-value"), "deterministic");
        assert_ne!(fp, fingerprint(&key(1), "s3cr3t-valuf"), "depends on value");
        assert_ne!(fp, fingerprint(&key(2), "s3cr3t-value"), "depends on key");
        assert!(!fp.contains("s3cr3t"));
    }

    #[test]
    fn fingerprint_is_stable_across_versions() {
        // Pinned so that a change of derivation (which would make `audit find` miss every
        // old record) cannot go unnoticed.
        let k = AuditKey::from_bytes([0u8; 32]);
        let expected_subkey = sign(&[0u8; 32], FINGERPRINT_SUBKEY_LABEL);
        assert_eq!(
            fingerprint(&k, "x"),
            format!("hmac-sha256:{}", hex::encode(sign(&expected_subkey, b"x")))
        );
        assert_eq!(fingerprint(&k, "x"), PINNED_FINGERPRINT_OF_X);
    }

    const PINNED_FINGERPRINT_OF_X: &str =
        "hmac-sha256:2b87b96b75ef25d3935aed528092e4d27a1804b1314c4eabc3dc92151b0b8050";

    #[test]
    fn fingerprint_subkey_differs_from_chain_key() {
        let k = key(7);
        assert_ne!(k.chain_mac(b"v"), k.fingerprint_mac(b"v"));
    }

    #[test]
    fn masked_credential_keeps_no_value() {
        let c = MaskedCredential::new(&key(3), "api", "token", "jpt_verysecretvalue");
        assert_eq!(c.masked, "jpt_…");
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(!json.contains("verysecret"));
        assert_eq!(
            json,
            format!(
                r#"{{"name":"api","kind":"token","masked":"jpt_…","fingerprint":"{}"}}"#,
                fingerprint(&key(3), "jpt_verysecretvalue")
            )
        );
    }

    #[test]
    fn audit_key_debug_is_redacted() {
        let k = AuditKey::from_bytes([0xAB; 32]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "AuditKey([REDACTED])");
        assert!(!dbg.to_lowercase().contains("ab, ab"));
    }
}
