//! Per-environment data keys: versioned AES-256 keys, each wrapped by the root key's wrap
//! key and stored; the newest version seals new records, older versions still open old ones.
//! Unwrapped keys are cached in memory (zeroized when dropped).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use super::{CryptoError, aead, random};
use crate::clock::SharedClock;
use crate::store::{self, SealedTable, Store};

type DataKey = Zeroizing<[u8; 32]>;

struct EnvKeys {
    current: i64,
    keys: BTreeMap<i64, Option<DataKey>>,
}

/// An environment's current data key, captured for sealing without store access.
pub struct Sealer {
    env: String,
    version: i64,
    key: DataKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({}, v{}, [REDACTED])", self.env, self.version)
    }
}

impl Sealer {
    /// Seals `plaintext` for the record `table/id`; returns (key version, blob).
    pub fn seal(
        &self,
        table: &str,
        id: &str,
        plaintext: &[u8],
    ) -> Result<(i64, Vec<u8>), CryptoError> {
        let blob = aead::seal(
            &self.key,
            plaintext,
            &store::aad(table, &self.env, id, self.version),
        )
        .map_err(|_| CryptoError::Random)?;
        Ok((self.version, blob))
    }
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

    /// The environment's key versions as the store has them now (one small query: a rotation
    /// or destruction on another replica takes effect here at once), with unwrapped keys
    /// reused from the cache.
    async fn load(&self, env: &str) -> Result<Arc<EnvKeys>, CryptoError> {
        let cached = self.cached(env);
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
            let reuse = cached
                .as_ref()
                .and_then(|c| c.keys.get(&row.version).cloned().flatten());
            let key = match row.wrapped {
                None => None,
                Some(_) if reuse.is_some() => reuse,
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
        if let Some(c) = &cached
            && c.current == current
            && c.keys.len() == keys.len()
            && c.keys
                .iter()
                .all(|(v, k)| keys.get(v).is_some_and(|n| n.is_some() == k.is_some()))
        {
            return Ok(c.clone());
        }
        let ek = Arc::new(EnvKeys { current, keys });
        if let Ok(mut c) = self.cache.write() {
            c.insert(env.to_string(), ek.clone());
        }
        Ok(ek)
    }

    /// Loads (creating on first use) the environment's keys. Call before opening a write
    /// transaction: creating a key needs the store's writer.
    /// Fails with [`CryptoError::Destroyed`] when the environment was crypto-shredded.
    pub async fn prepare(&self, env: &str) -> Result<(), CryptoError> {
        self.sealer(env).await.map(|_| ())
    }

    /// The environment's current key, taken now, to seal records later without touching the
    /// store (inside a write transaction, which on PostgreSQL must not wait for a second pool
    /// connection). Fails with [`CryptoError::Destroyed`] when the environment was shredded.
    pub async fn sealer(&self, env: &str) -> Result<Sealer, CryptoError> {
        let ek = self.load(env).await?;
        match ek.keys.get(&ek.current) {
            Some(Some(k)) => Ok(Sealer {
                env: env.to_string(),
                version: ek.current,
                key: k.clone(),
            }),
            _ => Err(CryptoError::Destroyed(env.to_string())),
        }
    }

    /// Like [`sealer`](Self::sealer), but from the in-memory cache when it holds the
    /// environment's keys (no store read). Only for records written through the exchange
    /// ledger, which checks inside its transaction that the version is still live (not
    /// destroyed, here or on another replica) and refreshes this cache when it is not current.
    pub async fn sealer_cached(&self, env: &str) -> Result<Sealer, CryptoError> {
        if let Some(ek) = self.cached(env)
            && let Some(Some(k)) = ek.keys.get(&ek.current)
        {
            return Ok(Sealer {
                env: env.to_string(),
                version: ek.current,
                key: k.clone(),
            });
        }
        self.sealer(env).await
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

    /// Opens a record whose key state the caller read from the store in the same query as
    /// the record (`live`: its version is not destroyed). With a live version already
    /// cached, no store read is needed; otherwise as [`open`](Self::open).
    pub async fn open_checked(
        &self,
        env: &str,
        (table, id): (&str, &str),
        version: i64,
        live: bool,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if !live {
            self.invalidate(env);
            return Err(CryptoError::Destroyed(env.to_string()));
        }
        if let Some(ek) = self.cached(env)
            && let Some(Some(key)) = ek.keys.get(&version)
        {
            return aead::open(key, blob, &store::aad(table, env, id, version)).map_err(|_| {
                CryptoError::Open {
                    env: env.to_string(),
                }
            });
        }
        self.open(env, table, id, version, blob).await
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

/// What a rewrap did.
#[derive(Debug, Clone, Copy)]
pub struct Rewrapped {
    /// Records re-encrypted under the current version.
    pub records: u64,
    /// The current version.
    pub version: i64,
}

impl Keyring {
    /// The environment's current data-key version.
    pub async fn current_version(&self, env: &str) -> Result<i64, CryptoError> {
        Ok(self.load(env).await?.current)
    }

    /// Creates a new data-key version for `env`; new records are sealed under it, older
    /// versions still open older records. Two concurrent rotations cannot create two keys of
    /// one version (primary key); the loser retries once.
    pub async fn rotate(&self, env: &str) -> Result<i64, CryptoError> {
        for _ in 0..2 {
            self.invalidate(env);
            let current = self.load(env).await?.current;
            let next = current + 1;
            let key = Zeroizing::new(random::bytes::<32>()?);
            let wrapped = aead::seal(&self.wrap, &key[..], &wrap_aad(env, next))
                .map_err(|_| CryptoError::Random)?;
            let inserted = self
                .store
                .insert_data_key(env, next, &wrapped, self.clock.unix())
                .await
                .map_err(store_err)?;
            self.invalidate(env);
            if inserted {
                return Ok(next);
            }
        }
        Err(CryptoError::Store("concurrent key rotation; retry".into()))
    }

    /// Re-encrypts every record of `env` sealed under an older version with the current one.
    pub async fn rewrap(&self, env: &str) -> Result<Rewrapped, CryptoError> {
        self.invalidate(env);
        let version = self.load(env).await?.current;
        let mut records = 0;
        for table in SealedTable::ALL {
            loop {
                let batch = self
                    .store
                    .sealed_below(table, env, version, 500)
                    .await
                    .map_err(store_err)?;
                if batch.is_empty() {
                    break;
                }
                for rec in &batch {
                    let plain = self
                        .open(env, table.name(), &rec.id, rec.key_version, &rec.sealed)
                        .await?;
                    let blob = {
                        let ek = self.load(env).await?;
                        let key = ek
                            .keys
                            .get(&version)
                            .and_then(Option::as_ref)
                            .ok_or_else(|| CryptoError::Destroyed(env.to_string()))?;
                        aead::seal(
                            key,
                            &plain,
                            &store::aad(table.name(), env, &rec.id, version),
                        )
                        .map_err(|_| CryptoError::Random)?
                    };
                    if self
                        .store
                        .reseal(table, env, rec, version, &blob)
                        .await
                        .map_err(store_err)?
                    {
                        records += 1;
                    }
                }
            }
        }
        Ok(Rewrapped { records, version })
    }

    /// Crypto-shredding: every data-key version of `env` is forgotten, so its sealed records
    /// can never be decrypted again. Other environments are untouched.
    pub async fn destroy(&self, env: &str) -> Result<u64, CryptoError> {
        let n = self
            .store
            .destroy_keys(env, self.clock.unix())
            .await
            .map_err(store_err)?;
        self.invalidate(env);
        Ok(n)
    }
}

fn store_err(e: store::StoreError) -> CryptoError {
    CryptoError::Store(e.to_string())
}
