//! The root of trust as the store sees it: which root key a data directory
//! was made with (a check blob, never the key), and the data keys that the
//! root key wraps, one per purpose.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rampart_crypto::{DataKey, KdfParams, RootKey, RootKeyCheck, SecretBytes};
use serde::{Deserialize, Serialize};

use crate::{Expect, Store, StoreError};

const META_NS: &str = "meta";
const ROOT_META_KEY: &str = "root";
const KEYRING_NS: &str = "keyring";

/// Where a data directory's root key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootKeySource {
    /// A key file (`root.key`, mode 0600) in the data directory.
    File,
    /// A passphrase, through Argon2id.
    Passphrase,
    /// Base64 in the `RAMPART_ROOT_KEY` environment variable.
    Env,
}

/// What the store records about the root key. Nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootMeta {
    /// Where the key comes from.
    pub source: RootKeySource,
    /// Argon2id parameters, for a passphrase-derived key.
    pub kdf: Option<KdfParams>,
    /// The check blob, base64.
    pub check: String,
    /// When the data directory was initialised.
    pub created_at: u64,
}

impl RootMeta {
    /// Reads the record, if the store has been initialised.
    pub async fn read(store: &dyn Store) -> Result<Option<RootMeta>, StoreError> {
        let Some(e) = store.get(META_NS, ROOT_META_KEY).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&e.value)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                ns: META_NS.into(),
                key: ROOT_META_KEY.into(),
                why: e.to_string(),
            })
    }
}

/// The unlocked root key and the data keys it wraps.
pub struct Keyring {
    root: RootKey,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring([redacted])")
    }
}

impl Keyring {
    /// Records a new root key in an empty store.
    pub async fn initialise(
        store: Arc<dyn Store>,
        root: RootKey,
        source: RootKeySource,
        kdf: Option<KdfParams>,
        now: u64,
    ) -> Result<Keyring, StoreError> {
        let meta = RootMeta {
            source,
            kdf,
            check: B64.encode(root.check()?.0),
            created_at: now,
        };
        let json = serde_json::to_vec(&meta).map_err(|e| StoreError::Backend(e.to_string()))?;
        store
            .put(META_NS, ROOT_META_KEY, &json, Expect::Absent)
            .await?;
        Ok(Keyring { root, store })
    }

    /// Unlocks a store with a root key, refusing a key that is not the one
    /// the store was initialised with.
    pub async fn unlock(store: Arc<dyn Store>, root: RootKey) -> Result<Keyring, StoreError> {
        let meta = RootMeta::read(store.as_ref())
            .await?
            .ok_or_else(|| StoreError::NotInitialised("store".into()))?;
        let check = B64
            .decode(meta.check.as_bytes())
            .map_err(|e| StoreError::Corrupt {
                ns: META_NS.into(),
                key: ROOT_META_KEY.into(),
                why: e.to_string(),
            })?;
        root.verify(&RootKeyCheck(check))?;
        Ok(Keyring { root, store })
    }

    /// The root key, for planes that wrap their own keys under it.
    pub fn root(&self) -> &RootKey {
        &self.root
    }

    /// The store this keyring lives in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The secret kept for `purpose`, made by `generate` the first time it is
    /// asked for, stored wrapped by the root key.
    pub async fn secret(
        &self,
        purpose: &str,
        generate: impl Fn() -> Result<SecretBytes, StoreError>,
    ) -> Result<SecretBytes, StoreError> {
        loop {
            if let Some(e) = self.store.get(KEYRING_NS, purpose).await? {
                return Ok(self.root.unwrap_secret(&e.value, purpose)?);
            }
            let fresh = generate()?;
            let wrapped = self.root.wrap(fresh.expose(), purpose)?;
            match self
                .store
                .put(KEYRING_NS, purpose, &wrapped, Expect::Absent)
                .await
            {
                Ok(_) => return Ok(fresh),
                // Another node made it first: use theirs.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The data key kept for `purpose`, created on first use.
    pub async fn data_key(&self, purpose: &str) -> Result<DataKey, StoreError> {
        let s = self
            .secret(purpose, || {
                Ok(SecretBytes::new(DataKey::generate()?.expose().to_vec()))
            })
            .await?;
        Ok(DataKey::from_slice(s.expose())?)
    }
}
