//! Values encrypted before they reach the backend.

use std::sync::Arc;

use rampart_crypto::{DataKey, SecretBytes};

use crate::{Expect, Store, StoreError};

/// A view of a store whose values are sealed with AES-256-GCM under one data
/// key; each value is bound to its namespace and key, so a sealed value
/// copied to another record does not open.
#[derive(Clone)]
pub struct SealedStore {
    store: Arc<dyn Store>,
    key: Arc<DataKey>,
    key_id: String,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("key_id", &self.key_id)
            .finish()
    }
}

fn context(ns: &str, key: &str) -> Vec<u8> {
    let mut c = Vec::with_capacity(ns.len() + key.len() + 1);
    c.extend_from_slice(ns.as_bytes());
    c.push(0);
    c.extend_from_slice(key.as_bytes());
    c
}

impl SealedStore {
    /// Seals values under `key`, named `key_id` in each envelope.
    pub fn new(store: Arc<dyn Store>, key: DataKey, key_id: impl Into<String>) -> Self {
        SealedStore {
            store,
            key: Arc::new(key),
            key_id: key_id.into(),
        }
    }

    /// Seals and writes a secret; returns its version.
    pub async fn put(
        &self,
        ns: &str,
        key: &str,
        secret: &[u8],
        expect: Expect,
    ) -> Result<u64, StoreError> {
        let blob = rampart_crypto::seal(&self.key, &self.key_id, secret, &context(ns, key))?;
        self.store.put(ns, key, &blob, expect).await
    }

    /// Reads and opens a secret, with its version.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<(SecretBytes, u64)>, StoreError> {
        let Some(e) = self.store.get(ns, key).await? else {
            return Ok(None);
        };
        let plain = rampart_crypto::open(&self.key, &e.value, &context(ns, key))?;
        Ok(Some((SecretBytes::from(plain), e.version)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Keyring, RootKeySource, SqliteStore};
    use rampart_core::ManualClock;
    use rampart_crypto::RootKey;

    fn store() -> Arc<dyn Store> {
        Arc::new(SqliteStore::in_memory(Arc::new(ManualClock::at_unix_secs(1))).unwrap())
    }

    #[tokio::test]
    async fn sealed_values_are_not_plaintext_and_are_bound_to_their_place() {
        let raw = store();
        let sealed = SealedStore::new(raw.clone(), DataKey::generate().unwrap(), "store");
        sealed
            .put("secrets", "db", b"s3cr3t-password", Expect::Any)
            .await
            .unwrap();
        let stored = raw.get("secrets", "db").await.unwrap().unwrap().value;
        assert!(!stored.windows(b"s3cr3t".len()).any(|w| w == b"s3cr3t"));
        let (plain, v) = sealed.get("secrets", "db").await.unwrap().unwrap();
        assert_eq!((plain.expose(), v), (&b"s3cr3t-password"[..], 1));
        // The same bytes moved to another key do not open.
        raw.put("secrets", "other", &stored, Expect::Any)
            .await
            .unwrap();
        assert!(sealed.get("secrets", "other").await.is_err());
    }

    #[tokio::test]
    async fn keyring_refuses_wrong_root_and_keeps_data_keys() {
        let s = store();
        let root = RootKey::from_base64(&RootKey::generate().unwrap().to_base64()).unwrap();
        let same = RootKey::from_base64(&root.to_base64()).unwrap();
        let kr = Keyring::initialise(s.clone(), root, RootKeySource::Env, None, 5)
            .await
            .unwrap();
        let k1 = kr.data_key("store").await.unwrap();
        let k2 = kr.data_key("store").await.unwrap();
        assert_eq!(k1.expose(), k2.expose());
        assert_ne!(kr.data_key("audit").await.unwrap().expose(), k1.expose());

        let err = Keyring::unlock(s.clone(), RootKey::generate().unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "root key does not match this data directory"
        );
        let kr2 = Keyring::unlock(s, same).await.unwrap();
        assert_eq!(kr2.data_key("store").await.unwrap().expose(), k1.expose());
    }
}
