//! The certificate authorities of every environment: created on first use, the CA key sealed
//! with the environment's data key and stored beside the JWT signing key; the certificate is
//! public (`GET /v1/envs/<env>/ca.pem`).

use zeroize::Zeroizing;

use super::signing::{KeyStore, StoredKey};
use crate::clock::SharedClock;
use crate::mint::MintError;
use crate::mint::x509::EnvCa;

impl StoredKey for EnvCa {
    const PURPOSE: &'static str = "x509-ca";

    fn generate(
        env: &str,
        clock: &SharedClock,
    ) -> Result<(String, Zeroizing<Vec<u8>>, String), MintError> {
        let (ca, pkcs8) = EnvCa::generate(env, clock.as_ref())?;
        // The record id of an environment's CA key (associated data of its ciphertext).
        Ok(("x509-ca".into(), pkcs8, ca.ca_pem().to_string()))
    }

    fn load(public: &str, pkcs8: &[u8]) -> Result<Self, MintError> {
        EnvCa::from_parts(public, pkcs8)
    }
}

/// Every environment's CA.
pub type Cas = KeyStore<EnvCa>;
