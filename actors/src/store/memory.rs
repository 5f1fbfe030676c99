//! [`Kv`] in memory: nothing survives the process. For tests, and for benchmarks that measure
//! the hub without the disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::StorageError;
use super::kv::{Kv, KvBatch, Visit};

#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A writer that panicked left whole batches or none: the map is still consistent.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn range<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(start), Bound::Excluded(end))
}

impl Kv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.read().get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), StorageError> {
        if start >= end {
            return Ok(());
        }
        let map = self.read();
        for (k, v) in map.range::<[u8], _>(range(start, end)) {
            if visit(k, v)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        Ok(self
            .read()
            .range::<[u8], _>(range(start, end))
            .next_back()
            .map(|(k, _)| k.clone()))
    }

    fn apply(&self, batch: KvBatch) -> Result<(), StorageError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}
