//! The DHT's state saved across restarts: routing-table contacts and
//! provider records, in the store's redb database beside the manifests.

use redb::{ReadableDatabase, ReadableTable};

use super::{Store, StoreError, CONTACTS, PROVIDERS};

/// A provider record as persisted: key, provider, addresses, expiry.
pub type SavedProvider = (
    crate::proto::NodeId,
    crate::proto::NodeId,
    Vec<std::net::SocketAddr>,
    std::time::SystemTime,
);

impl Store {
    /// Replaces the saved routing-table contacts and provider records.
    pub fn save_dht(
        &self,
        contacts: &[(crate::proto::NodeId, Vec<std::net::SocketAddr>)],
        providers: &[SavedProvider],
    ) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write()?;
        tx.delete_table(CONTACTS)?;
        tx.delete_table(PROVIDERS)?;
        {
            let mut t = tx.open_table(CONTACTS)?;
            for (id, addrs) in contacts {
                let v = postcard::to_allocvec(addrs).map_err(|e| StoreError::Db(e.to_string()))?;
                t.insert(id.as_bytes(), v.as_slice())?;
            }
            let mut t = tx.open_table(PROVIDERS)?;
            for (key, provider, addrs, expires) in providers {
                let secs = expires
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let v = postcard::to_allocvec(&(addrs, secs))
                    .map_err(|e| StoreError::Db(e.to_string()))?;
                let mut k = [0u8; 64];
                k[..32].copy_from_slice(key.as_bytes());
                k[32..].copy_from_slice(provider.as_bytes());
                t.insert(&k, v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The saved contacts and unexpired provider records.
    #[allow(clippy::type_complexity)]
    pub fn load_dht(
        &self,
    ) -> Result<
        (
            Vec<(crate::proto::NodeId, Vec<std::net::SocketAddr>)>,
            Vec<SavedProvider>,
        ),
        StoreError,
    > {
        use crate::proto::NodeId;
        let tx = self.inner.db.begin_read()?;
        let mut contacts = Vec::new();
        for row in tx.open_table(CONTACTS)?.iter()? {
            let (k, v) = row?;
            if let Ok(addrs) = postcard::from_bytes::<Vec<std::net::SocketAddr>>(v.value()) {
                contacts.push((NodeId::from_bytes(*k.value()), addrs));
            }
        }
        let now = std::time::SystemTime::now();
        let mut providers = Vec::new();
        for row in tx.open_table(PROVIDERS)?.iter()? {
            let (k, v) = row?;
            let k = k.value();
            let Ok((addrs, secs)) =
                postcard::from_bytes::<(Vec<std::net::SocketAddr>, u64)>(v.value())
            else {
                continue;
            };
            let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            if expires <= now {
                continue;
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&k[..32]);
            let mut provider = [0u8; 32];
            provider.copy_from_slice(&k[32..]);
            providers.push((
                NodeId::from_bytes(key),
                NodeId::from_bytes(provider),
                addrs,
                expires,
            ));
        }
        Ok((contacts, providers))
    }
}
