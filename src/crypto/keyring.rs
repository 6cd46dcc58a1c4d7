//! Per-environment data keys: versioned AES-256 keys, each wrapped by the root key's wrap
//! key and stored; the newest version seals new records, older versions still open old ones.
//! Unwrapped keys are cached in memory (zeroized when dropped).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use super::{CryptoError, aead, random};
use crate::clock::SharedClock;
use crate::store::{self, Store};

type DataKey = Zeroizing<[u8; 32]>;

struct EnvKeys {
    current: i64,
    keys: BTreeMap<i64, Option<DataKey>>,
}

/// Data keys of every environment.
pub struct Keyring {
    wrap: Zeroizing<[u8; 32]>,
    store: Store,
    clock: SharedClock,
    cache: RwLock<HashMap<String, Arc<EnvKeys>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring([REDACTED])")
    }
}

fn wrap_aad(env: &str, version: i64) -> Vec<u8> {
    format!("jobpass/v1/data_key/{env}/{version}").into_bytes()
}

impl Keyring {
    /// A keyring over `store`, wrapping with `wrap_key` (derived from the root key).
    pub fn new(wrap_key: Zeroizing<[u8; 32]>, store: Store, clock: SharedClock) -> Self {
        Self {
            wrap: wrap_key,
            store,
            clock,
            cache: RwLock::new(HashMap::new()),
        }
    }

    fn cached(&self, env: &str) -> Option<Arc<EnvKeys>> {
        self.cache.read().ok().and_then(|c| c.get(env).cloned())
    }

    /// Forgets cached keys of `env` (after rotation or destruction elsewhere).
    pub fn invalidate(&self, env: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(env);
        }
    }

    async fn load(&self, env: &str) -> Result<Arc<EnvKeys>, CryptoError> {
        if let Some(k) = self.cached(env) {
            return Ok(k);
        }
        let mut rows = self.store.data_keys(env).await.map_err(store_err)?;
        if rows.is_empty() {
            // First use: create version 1. A concurrent creator may win; then re-read.
            let key = Zeroizing::new(random::bytes::<32>()?);
            let wrapped = aead::seal(&self.wrap, &key[..], &wrap_aad(env, 1))
                .map_err(|_| CryptoError::Random)?;
            self.store
                .insert_data_key(env, 1, &wrapped, self.clock.unix())
                .await
                .map_err(store_err)?;
            rows = self.store.data_keys(env).await.map_err(store_err)?;
        }
        let mut keys = BTreeMap::new();
        let mut current = 0;
        for row in rows {
            current = current.max(row.version);
            let key = match row.wrapped {
                None => None,
                Some(w) => {
                    let raw = aead::open(&self.wrap, &w, &wrap_aad(env, row.version))
                        .map_err(|_| CryptoError::RootKey(format!(
                            "data key {} of environment `{env}` does not unwrap: the root key is not the one this store was created with",
                            row.version
                        )))?;
                    let arr: [u8; 32] =
                        raw.as_slice().try_into().map_err(|_| CryptoError::Open {
                            env: env.to_string(),
                        })?;
                    Some(Zeroizing::new(arr))
                }
            };
            keys.insert(row.version, key);
        }
        let ek = Arc::new(EnvKeys { current, keys });
        if let Ok(mut c) = self.cache.write() {
            c.insert(env.to_string(), ek.clone());
        }
        Ok(ek)
    }

    /// Loads (creating on first use) the environment's keys. Call before opening a write
    /// transaction: creating a key needs the store's writer.
    pub async fn prepare(&self, env: &str) -> Result<(), CryptoError> {
        self.load(env).await.map(|_| ())
    }

    /// Seals `plaintext` for the record `table/id` of `env` with the current key version.
    pub async fn seal(
        &self,
        env: &str,
        table: &str,
        id: &str,
        plaintext: &[u8],
    ) -> Result<(i64, Vec<u8>), CryptoError> {
        let ek = self.load(env).await?;
        let key = ek
            .keys
            .get(&ek.current)
            .and_then(Option::as_ref)
            .ok_or_else(|| CryptoError::Destroyed(env.to_string()))?;
        let blob = aead::seal(key, plaintext, &store::aad(table, env, id, ek.current))
            .map_err(|_| CryptoError::Random)?;
        Ok((ek.current, blob))
    }

    /// Opens a record sealed by [`Keyring::seal`].
    pub async fn open(
        &self,
        env: &str,
        table: &str,
        id: &str,
        version: i64,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut ek = self.load(env).await?;
        if !ek.keys.contains_key(&version) {
            // Maybe rotated by another replica since we cached.
            self.invalidate(env);
            ek = self.load(env).await?;
        }
        let key = match ek.keys.get(&version) {
            None => {
                return Err(CryptoError::UnknownVersion {
                    env: env.to_string(),
                    version,
                });
            }
            Some(None) => return Err(CryptoError::Destroyed(env.to_string())),
            Some(Some(k)) => k,
        };
        aead::open(key, blob, &store::aad(table, env, id, version)).map_err(|_| CryptoError::Open {
            env: env.to_string(),
        })
    }
}

fn store_err(e: store::StoreError) -> CryptoError {
    CryptoError::Store(e.to_string())
}
