//! The key-value seam under the store. The store's layout and encoding are written once, on top
//! of [`Kv`]; [`crate::store::FjallKv`] implements it on disk, [`crate::store::MemoryKv`] in
//! memory for tests and for benchmarks that separate the hub's own work from the disk's, and
//! [`crate::store::SledKv`] reads the directories of earlier formats.

use std::ops::ControlFlow;

use super::StorageError;

/// What a scan's visitor tells the scan: go on, or stop here.
pub type Visit = Result<ControlFlow<()>, StorageError>;

/// Writes applied together: after a crash, all of them or none.
#[derive(Debug, Default, Clone)]
pub struct KvBatch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl KvBatch {
    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }

    /// Appends another batch; where both write a key, the later write wins.
    pub fn append(&mut self, other: KvBatch) {
        self.ops.extend(other.ops);
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered map of byte strings with atomic batches and an explicit flush.
pub trait Kv: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Visits the pairs with `start <= key < end` in key order until the visitor stops.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), StorageError>;

    /// The last key with `start <= key < end`.
    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies every write of the batch atomically, in order.
    fn apply(&self, batch: KvBatch) -> Result<(), StorageError>;

    /// Returns once every write applied before the call survives a crash.
    fn flush(&self) -> Result<(), StorageError>;

    fn size_on_disk(&self) -> u64;

    /// Checks that the store answers (for the health endpoint); not counted as use.
    fn probe(&self) -> Result<(), StorageError> {
        self.get(b"nprobe").map(|_| ())
    }

    /// After a failed write or flush: gets back to the state of the last successful flush,
    /// ready to write again, or says why it cannot yet. Writes applied since that flush are
    /// gone afterwards (nobody was told they are durable).
    fn recover(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Hands back the memory the store grew (caches, page tables) once nobody has used it for
    /// `idle`: what a flood left behind. Answers whether it did. Everything written must have
    /// been flushed. The default keeps what it has.
    fn release_if_idle(&self, _idle: std::time::Duration) -> Result<bool, StorageError> {
        Ok(false)
    }
}

/// Hands the pairs an engine's range iterator yields to a scan's visitor until it stops.
pub(super) fn visit_pairs<K, V, E>(
    pairs: impl Iterator<Item = Result<(K, V), E>>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
) -> Result<(), StorageError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
    StorageError: From<E>,
{
    for pair in pairs {
        let (k, v) = pair?;
        if visit(k.as_ref(), v.as_ref())?.is_break() {
            break;
        }
    }
    Ok(())
}

/// The first key after every key that starts with `prefix`. The store's prefixes start with a
/// tag letter, so one of their bytes is always below 0xFF.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_prefixed_keys() {
        assert_eq!(prefix_end(b"ab\0"), b"ab\x01");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}
