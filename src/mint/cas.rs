//! The certificate authorities of every environment: created on first use, the CA key sealed
//! with the environment's data key and stored beside the JWT signing key; the certificate is
//! public (`GET /v1/envs/<env>/ca.pem`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::MintError;
use super::x509::EnvCa;
use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::store::{SigningKeyRow, Store};

const PURPOSE: &str = "x509-ca";
/// Record identity of an environment's CA key (associated data of its ciphertext).
const KID: &str = "x509-ca";

/// Every environment's CA.
pub struct Cas {
    store: Store,
    keyring: Arc<Keyring>,
    clock: SharedClock,
    cache: RwLock<HashMap<String, Arc<EnvCa>>>,
}

impl Cas {
    /// CAs over the store.
    pub fn new(store: Store, keyring: Arc<Keyring>, clock: SharedClock) -> Self {
        Self {
            store,
            keyring,
            clock,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Forgets a cached CA (after key destruction).
    pub fn invalidate(&self, env: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(env);
        }
    }

    /// The environment's CA, created on first use. Call outside a write transaction.
    pub async fn for_env(&self, env: &str) -> Result<Arc<EnvCa>, MintError> {
        if let Some(ca) = self.cache.read().ok().and_then(|c| c.get(env).cloned()) {
            return Ok(ca);
        }
        let key_err = |e: &dyn std::fmt::Display| MintError::Key(e.to_string());
        let row = match self
            .store
            .signing_key(env, PURPOSE)
            .await
            .map_err(|e| key_err(&e))?
        {
            Some(r) => r,
            None => {
                let (ca, pkcs8) = EnvCa::generate(env, self.clock.as_ref())?;
                let (key_version, sealed) = self
                    .keyring
                    .seal(env, "signing_key", KID, &pkcs8)
                    .await
                    .map_err(|e| key_err(&e))?;
                let row = SigningKeyRow {
                    kid: KID.into(),
                    key_version,
                    sealed,
                    public_jwk: ca.ca_pem().to_string(),
                };
                self.store
                    .insert_signing_key(env, PURPOSE, &row, self.clock.unix())
                    .await
                    .map_err(|e| key_err(&e))?;
                // Another writer may have stored its CA first: the stored one wins.
                self.store
                    .signing_key(env, PURPOSE)
                    .await
                    .map_err(|e| key_err(&e))?
                    .ok_or_else(|| MintError::Key("CA vanished".into()))?
            }
        };
        let pkcs8 = self
            .keyring
            .open(env, "signing_key", &row.kid, row.key_version, &row.sealed)
            .await
            .map_err(|e| key_err(&e))?;
        let ca = Arc::new(EnvCa::from_parts(&row.public_jwk, &pkcs8)?);
        if let Ok(mut c) = self.cache.write() {
            c.insert(env.to_string(), ca.clone());
        }
        Ok(ca)
    }
}
