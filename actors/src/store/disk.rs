//! [`Kv`] on sled: one database, one tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use super::StorageError;
use super::kv::{Kv, KvBatch, Visit};

pub struct SledKv {
    /// `None` only while [`Kv::recover`] reopens it.
    db: RwLock<Option<sled::Db>>,
    path: PathBuf,
    cache_bytes: u64,
    /// Set by every use (a plain store: no clock is read per operation); the idle check takes
    /// it and keeps when it last found it set, `None` once the handle was reopened and not
    /// used since. An idle handle is reopened to give back what sled grew, once.
    touched: AtomicBool,
    last_seen_used: Mutex<Option<Instant>>,
}

/// How long a reopen waits for the previous handle's file lock, which sled lets go of from a
/// background thread a moment after the handle is dropped.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// sled's log segment size for a new data directory: 2 MiB, four times sled's default. sled
/// cleans a segment once at most half of it is live, and frees it only when every page that was
/// still live in it has been moved on; in the rooms flood (10 rooms, 1 000 writes/s of 4 KB, about
/// 30 MB live) the data directory held at most 218 MB at 512 KiB segments, 199 MB at 1 MiB and
/// 177 MB at 2 MiB over three minutes (271 MB and 388 MB at 128 and 256 KiB; 4 and 8 MiB
/// gained little more and wrote two to four times as much), and 246 MB against 215 MB at 512 KiB
/// and 2 MiB over 13 minutes side by side. What it costs: one IO buffer of this size per segment
/// written, and a database that never holds less than a few segments.
const SEGMENT_SIZE: usize = 2 << 20;

fn open(path: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    Ok(sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .segment_size(segment_size_of(path))
        .open()?)
}

/// The segment size a data directory was made with, which sled refuses to change: directories
/// of earlier versions keep sled's default (512 KiB). sled records it in its `conf` file as a
/// `segment_size: N` line (followed by a binary checksum); a directory without one is new.
fn segment_size_of(path: &Path) -> usize {
    std::fs::read(path.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|line| line.strip_prefix("segment_size:")?.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_SIZE)
}

impl SledKv {
    /// `cache_bytes` bounds sled's page cache, the bulk of what the store holds in memory
    /// (sled's own default is 1 GiB, far more than a small machine should give it).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledKv, StorageError> {
        Ok(SledKv {
            db: RwLock::new(Some(open_when_free(path, cache_bytes)?)),
            path: path.to_owned(),
            cache_bytes,
            touched: AtomicBool::new(false),
            last_seen_used: Mutex::new(None),
        })
    }

    fn db(&self) -> Result<DbGuard<'_>, StorageError> {
        self.touched.store(true, Ordering::Relaxed);
        self.db_untouched()
    }

    /// The handle, for what does not count as use (health probes, size figures).
    fn db_untouched(&self) -> Result<DbGuard<'_>, StorageError> {
        // A panic while holding the lock left either the old handle or none: both are usable.
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StorageError::Reopening);
        }
        Ok(DbGuard(guard))
    }
}

struct DbGuard<'a>(RwLockReadGuard<'a, Option<sled::Db>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        match self.0.as_ref() {
            Some(db) => db,
            // `SledKv::db` hands out guards only over a handle.
            None => unreachable!("a storage guard without a database"),
        }
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db()?.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), StorageError> {
        let db = self.db()?;
        for item in db.range(start..end) {
            let (k, v) = item?;
            if visit(&k, &v)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.db()?.range(start..end).next_back() {
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
        self.db()?.apply_batch(b)?;
        Ok(())
    }

    /// A blocking flush. The durability actor calls it on its own thread: sled's `flush_async`
    /// would hand it to sled's pool, which wakes every idle pool thread per flush.
    fn flush(&self) -> Result<(), StorageError> {
        self.db()?.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db_untouched()
            .map_or(0, |db| db.size_on_disk().unwrap_or(0))
    }

    fn probe(&self) -> Result<(), StorageError> {
        self.db_untouched()?.get(b"nprobe")?;
        Ok(())
    }

    /// sled keeps the first IO error it meets and fails every later write with it, even once
    /// the disk has room again: the only way back is a new handle, which reads the database as
    /// the last flush left it. sled cannot open a database on a full disk, so the old handle,
    /// which still reads, is kept until there is room to open a new one.
    /// sled keeps its page cache (up to `storage.cache_bytes`), its page table and IO buffers
    /// once a flood has grown them: a process that opens the same data afresh holds a fraction
    /// of it. So an idle handle is reopened, once per stretch of use.
    fn release_if_idle(&self, idle: Duration) -> Result<bool, StorageError> {
        let mut seen = self
            .last_seen_used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.touched.swap(false, Ordering::Relaxed) {
            *seen = Some(Instant::now());
        }
        if !seen.is_some_and(|at| at.elapsed() >= idle) {
            return Ok(false);
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            db.flush()?;
        }
        drop(slot.take());
        *slot = Some(open_when_free(&self.path, self.cache_bytes)?);
        *seen = None;
        Ok(true)
    }

    fn recover(&self) -> Result<(), StorageError> {
        if free_bytes(&self.path).is_some_and(|free| free < MIN_FREE_TO_REOPEN) {
            return Err(StorageError::Sled(sled::Error::Io(
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            )));
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must be gone before the new one can take the file lock.
        drop(slot.take());
        *slot = Some(open_when_free(&self.path, self.cache_bytes)?);
        Ok(())
    }
}

/// Free bytes a reopen wants on the disk: sled writes a new log segment (up to 2 MiB) and its
/// configuration when it opens, and the probe that follows writes again.
const MIN_FREE_TO_REOPEN: u64 = 8 << 20;

/// Bytes the file system holding `path` has free for this process.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is written by the call
    // before it is read; on failure it is not read.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // Both are 64-bit on the 64-bit Linux the hub is built for; elsewhere they widen.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Some(blocks.saturating_mul(size))
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
    fn a_new_directory_gets_the_larger_segments_and_an_older_one_keeps_its_own() {
        let fresh = tempfile::tempdir().expect("tempdir");
        drop(SledKv::open(fresh.path(), 1 << 20).expect("open a new directory"));
        assert_eq!(segment_size_of(fresh.path()), SEGMENT_SIZE);

        // A directory an earlier version made, with sled's default segment size.
        let older = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::Config::new().path(older.path()).open().expect("sled");
            db.insert(b"k", b"v".as_slice()).expect("insert");
            db.flush().expect("flush");
        }
        assert_eq!(segment_size_of(older.path()), 512 << 10);
        let kv = SledKv::open(older.path(), 1 << 20).expect("an older directory opens");
        assert_eq!(kv.get(b"k").expect("get"), Some(b"v".to_vec()));
        let mut b = KvBatch::default();
        b.insert(b"k2".to_vec(), b"w".to_vec());
        kv.apply(b).expect("writes");
        kv.flush().expect("flush");
    }
}
