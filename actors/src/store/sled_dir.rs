//! [`Kv`] on sled, one database with one tree: how data directories of storage formats 1 and 2
//! are read, so that `synchub migrate` (or the hub at start) can copy them into the store this
//! version writes. Nothing writes to one any more but the tests that make such directories.

use std::path::Path;
use std::time::Duration;

use super::StorageError;
use super::kv::{Kv, KvBatch, Visit, visit_pairs};

pub struct SledKv {
    db: sled::Db,
}

/// How long an open waits for a handle this process just dropped to let go of the file lock,
/// which sled does from a background thread a moment later.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// sled's own segment size, which directories made before the size was chosen here have.
const SLED_DEFAULT_SEGMENT_SIZE: usize = 512 << 10;

fn open(path: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    Ok(sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .segment_size(segment_size_of(path))
        .open()?)
}

/// The segment size a data directory was made with, which sled refuses to change: 512 KiB
/// (sled's default) or 2 MiB (format 2's last version). sled records it in its `conf` file as
/// a `segment_size: N` line (followed by a binary checksum).
fn segment_size_of(path: &Path) -> usize {
    std::fs::read(path.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|line| line.strip_prefix("segment_size:")?.trim().parse().ok())
        })
        .unwrap_or(SLED_DEFAULT_SEGMENT_SIZE)
}

impl SledKv {
    /// Whether `path` holds a sled database (sled writes its `conf` and `db` files).
    pub fn is_at(path: &Path) -> bool {
        path.join("conf").is_file() && path.join("db").is_file()
    }

    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledKv, StorageError> {
        Ok(SledKv {
            db: open_when_free(path, cache_bytes)?,
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
        visit_pairs(self.db.range(start..end), visit)
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

/// Opens the database, waiting a moment for a handle this process just dropped to let go of
/// the file lock.
fn open_when_free(path: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match open(path, cache_bytes) {
            Err(e) if std::time::Instant::now() < deadline && is_lock_held(&e) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether opening failed only because the previous handle still holds the file lock (sled
/// says so only in its message).
fn is_lock_held(e: &StorageError) -> bool {
    matches!(e, StorageError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::kv::KvBatch;

    #[test]
    fn a_directory_opens_with_the_segment_size_it_was_made_with() {
        for made_with in [None, Some(2 << 20)] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let mut config = sled::Config::new().path(dir.path());
                if let Some(size) = made_with {
                    config = config.segment_size(size);
                }
                let db = config.open().expect("sled");
                db.insert(b"k", b"v".as_slice()).expect("insert");
                db.flush().expect("flush");
            }
            assert_eq!(
                segment_size_of(dir.path()),
                made_with.unwrap_or(SLED_DEFAULT_SEGMENT_SIZE)
            );
            let kv = SledKv::open(dir.path(), 1 << 20).expect("it opens");
            assert_eq!(kv.get(b"k").expect("get"), Some(b"v".to_vec()));
            let mut b = KvBatch::default();
            b.insert(b"k2".to_vec(), b"w".to_vec());
            kv.apply(b).expect("writes");
            kv.flush().expect("flush");
        }
    }
}
