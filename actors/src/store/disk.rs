//! [`Kv`] on sled: one database, one tree.

use std::path::Path;

use super::StorageError;
use super::kv::{Kv, KvBatch, Visit};

pub struct SledKv {
    db: sled::Db,
}

impl SledKv {
    /// `cache_bytes` bounds sled's page cache, the bulk of what the store holds in memory
    /// (sled's own default is 1 GiB, far more than a small machine should give it).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledKv, StorageError> {
        Ok(SledKv {
            db: sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .open()?,
        })
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), StorageError> {
        for item in self.db.range(start..end) {
            let (k, v) = item?;
            if visit(&k, &v)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.db.range(start..end).next_back() {
            None => Ok(None),
            Some(item) => Ok(Some(item?.0.to_vec())),
        }
    }

    fn apply(&self, batch: KvBatch) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b)?;
        Ok(())
    }

    /// A blocking flush. The durability actor calls it on its own thread: sled's `flush_async`
    /// would hand it to sled's pool, which wakes every idle pool thread per flush.
    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
