//! Per-environment private keys the broker mints with (the JWT signing key, the CA key): each
//! created on first use, sealed with the environment's data key and stored with its public
//! half; loaded once and cached. Two replicas creating one at the same time cannot both win:
//! the store keeps the first and everyone uses it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::crypto::Keyring;
use crate::mint::MintError;
use crate::store::{SigningKeyRow, Store};

/// A key type the store can hold.
pub trait StoredKey: Sized + Send + Sync + 'static {
    /// Store purpose (one key of each purpose per environment).
    const PURPOSE: &'static str;
    /// A new key for `env`: (record id, PKCS#8 private key, public half as text).
    fn generate(
        env: &str,
        clock: &SharedClock,
    ) -> Result<(String, Zeroizing<Vec<u8>>, String), MintError>;
    /// Rebuilds the key from its stored public half and decrypted PKCS#8.
    fn load(public: &str, pkcs8: &[u8]) -> Result<Self, MintError>;
}

/// The keys of one type for every environment.
pub struct KeyStore<K: StoredKey> {
    store: Store,
    keyring: Arc<Keyring>,
    clock: SharedClock,
    cache: RwLock<HashMap<String, Arc<K>>>,
}

impl<K: StoredKey> KeyStore<K> {
    /// Keys over the store.
    pub fn new(store: Store, keyring: Arc<Keyring>, clock: SharedClock) -> Self {
        Self {
            store,
            keyring,
            clock,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Forgets a cached key (after key destruction).
    pub fn invalidate(&self, env: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(env);
        }
    }

    /// The environment's key, created on first use. Call outside a write transaction.
    pub async fn for_env(&self, env: &str) -> Result<Arc<K>, MintError> {
        if let Some(k) = self.cache.read().ok().and_then(|c| c.get(env).cloned()) {
            return Ok(k);
        }
        let key_err = |e: &dyn std::fmt::Display| MintError::Key(e.to_string());
        let row = match self
            .store
            .signing_key(env, K::PURPOSE)
            .await
            .map_err(|e| key_err(&e))?
        {
            Some(r) => r,
            None => {
                let (kid, pkcs8, public) = K::generate(env, &self.clock)?;
                let (key_version, sealed) = self
                    .keyring
                    .seal(env, "signing_key", &kid, &pkcs8)
                    .await
                    .map_err(|e| key_err(&e))?;
                let row = SigningKeyRow {
                    kid,
                    key_version,
                    sealed,
                    public_jwk: public,
                };
                self.store
                    .insert_signing_key(env, K::PURPOSE, &row, self.clock.unix())
                    .await
                    .map_err(|e| key_err(&e))?;
                // Another writer may have stored its key first: the stored one wins.
                self.store
                    .signing_key(env, K::PURPOSE)
                    .await
                    .map_err(|e| key_err(&e))?
                    .ok_or_else(|| MintError::Key("stored key vanished".into()))?
            }
        };
        let pkcs8 = self
            .keyring
            .open(env, "signing_key", &row.kid, row.key_version, &row.sealed)
            .await
            .map_err(|e| key_err(&e))?;
        let key = Arc::new(K::load(&row.public_jwk, &pkcs8)?);
        if let Ok(mut c) = self.cache.write() {
            c.insert(env.to_string(), key.clone());
        }
        Ok(key)
    }
}
