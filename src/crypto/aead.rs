//! AES-256-GCM sealing with associated data. A sealed blob is `nonce ‖ ciphertext ‖ tag`
//! with a random 96-bit nonce.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use zeroize::Zeroizing;

use super::random;

/// Why a blob did not open.
#[derive(Debug, thiserror::Error)]
pub enum AeadError {
    /// Wrong key, wrong associated data, or a modified blob.
    #[error("ciphertext did not authenticate")]
    Authentication,
    /// The random nonce could not be drawn.
    #[error("random number generator failed")]
    Random,
}

const NONCE_LEN: usize = 12;

/// Encrypts `plaintext` under `key`, binding `aad`.
pub fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, AeadError> {
    let cipher = Aes256Gcm::new(key.into());
    let nonce_bytes = random::bytes::<NONCE_LEN>().map_err(|_| AeadError::Random)?;
    let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| AeadError::Authentication)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts a blob made by [`seal`] with the same key and associated data.
pub fn open(key: &[u8; 32], blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    if blob.len() < NONCE_LEN + 16 {
        return Err(AeadError::Authentication);
    }
    let cipher = Aes256Gcm::new(key.into());
    let nonce =
        Nonce::<Aes256Gcm>::try_from(&blob[..NONCE_LEN]).map_err(|_| AeadError::Authentication)?;
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &blob[NONCE_LEN..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| AeadError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blob_opens_only_with_same_key_and_aad() {
        let k = [7u8; 32];
        let blob = seal(&k, b"hunter2", b"secret:prod:db:1").unwrap();
        assert!(!blob.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            &open(&k, &blob, b"secret:prod:db:1").unwrap()[..],
            b"hunter2"
        );
        assert!(open(&k, &blob, b"secret:staging:db:1").is_err());
        assert!(open(&[8u8; 32], &blob, b"secret:prod:db:1").is_err());
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(&k, &bad, b"secret:prod:db:1").is_err());
    }
}
