//! The root key: 32 random bytes kept as base64 text in a file that group and others cannot
//! read, or in an environment variable. It wraps data keys and derives the audit and
//! token-hash keys; it never encrypts records directly.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use ring::hkdf;
use zeroize::Zeroizing;

use super::{CryptoError, random};

/// The root key. Zeroized on drop; `Debug` prints `[REDACTED]`.
pub struct RootKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey([REDACTED])")
    }
}

/// Purposes of keys derived from the root key.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// Wraps per-environment data keys.
    Wrap,
    /// Keys the audit HMAC chain and fingerprints.
    Audit,
    /// Keys the digests under which broker tokens are stored.
    TokenHash,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Wrap => b"jobpass v1 data-key wrap",
            Purpose::Audit => b"jobpass v1 audit",
            Purpose::TokenHash => b"jobpass v1 token digest",
        }
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl RootKey {
    /// From raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// Parses base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| CryptoError::RootKey("not valid base64".into()))?,
        );
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::RootKey(format!("must be 32 bytes, found {}", raw.len())))?;
        Ok(Self::from_bytes(arr))
    }

    /// Reads a key file, refusing one that group or others may read or write.
    pub fn load_file(path: &Path) -> Result<Self, CryptoError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| CryptoError::RootKey(format!("cannot read {}: {e}", path.display())))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(CryptoError::RootKey(format!(
                "{} is accessible by group or others (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            )));
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                CryptoError::RootKey(format!("cannot read {}: {e}", path.display()))
            })?);
        Self::from_base64(&text)
            .map_err(|e| CryptoError::RootKey(format!("{}: {e}", path.display())))
    }

    /// Reads the key from an environment variable holding base64 text.
    pub fn from_env(var: &str) -> Result<Self, CryptoError> {
        let text = Zeroizing::new(
            std::env::var(var)
                .map_err(|_| CryptoError::RootKey(format!("variable {var} is not set")))?,
        );
        Self::from_base64(&text).map_err(|e| CryptoError::RootKey(format!("{var}: {e}")))
    }

    /// Creates a new random key file with mode 0600; never overwrites an existing file.
    pub fn generate_file(path: &Path) -> Result<(), CryptoError> {
        let key = Zeroizing::new(random::bytes::<32>()?);
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*key));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                CryptoError::RootKey(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CryptoError::RootKey(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| CryptoError::RootKey(format!("cannot write {}: {e}", path.display())))
    }

    /// A 32-byte key for `purpose`, derived with HKDF-SHA256.
    pub fn derive(&self, purpose: Purpose) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"jobpass root key");
        let prk = salt.extract(&self.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        let info = [purpose.label()];
        prk.expand(&info, Len32)
            .and_then(|okm| okm.fill(&mut out[..]))
            .map_err(|_| CryptoError::RootKey("key derivation failed".into()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_is_private_and_loads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("root.key");
        RootKey::generate_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k = RootKey::load_file(&p).unwrap();
        assert_eq!(format!("{k:?}"), "RootKey([REDACTED])");
        assert!(RootKey::generate_file(&p).is_err(), "never overwrites");
    }

    #[test]
    fn group_readable_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("root.key");
        RootKey::generate_file(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = RootKey::load_file(&p).unwrap_err().to_string();
        assert!(e.contains("group or others"), "{e}");
    }

    #[test]
    fn purposes_derive_distinct_keys() {
        let k = RootKey::from_bytes([1u8; 32]);
        assert_ne!(
            *k.derive(Purpose::Audit).unwrap(),
            *k.derive(Purpose::Wrap).unwrap()
        );
        assert_ne!(
            *k.derive(Purpose::Audit).unwrap(),
            *k.derive(Purpose::TokenHash).unwrap()
        );
        assert_eq!(
            *k.derive(Purpose::Audit).unwrap(),
            *RootKey::from_bytes([1u8; 32])
                .derive(Purpose::Audit)
                .unwrap()
        );
    }
}
