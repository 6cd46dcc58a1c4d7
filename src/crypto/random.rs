//! Randomness from the operating system (ring's `SystemRandom`) and the identifiers built
//! from it.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

use super::CryptoError;

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CryptoError::Random)?;
    Ok(b)
}

static SEQUENCE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// An identifier `<prefix><12 hex: unix milliseconds><4 hex: process sequence><12 hex: random>`:
/// unique, and sorting by text sorts by creation time (used for lease pagination; ids made in
/// the same millisecond by one process keep their order).
pub fn time_ordered_id(prefix: &str, unix_millis: u64) -> Result<String, CryptoError> {
    let r = bytes::<6>()?;
    let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(format!(
        "{prefix}{:012x}{seq:04x}{}",
        unix_millis & 0xffff_ffff_ffff,
        hex::encode(r)
    ))
}

/// `prefix` + base64url(32 random bytes): a bearer secret.
pub fn bearer(prefix: &str) -> Result<String, CryptoError> {
    let r = bytes::<32>()?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_differ() {
        let a = time_ordered_id("lse_", 1_000).unwrap();
        let b = time_ordered_id("lse_", 2_000).unwrap();
        let c = time_ordered_id("lse_", 2_000).unwrap();
        assert!(a < b);
        assert_ne!(b, c);
        assert!(bearer("jpt_").unwrap().len() > 40);
    }
}
