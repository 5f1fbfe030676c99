//! [`Kv`] on fjall, a log-structured merge tree: one keyspace, one partition.
//!
//! Why not sled, which this store was built on: under a steady rewrite load sled's data
//! directory settles at many times the live data and keeps growing (its cleaner frees a log
//! segment only once at most half of it is live, and its count of what is live drifts upward
//! until the database is reopened), so a hub under the rooms flood outgrew any fixed bound
//! within half an hour. An LSM tree writes sorted files and merges them, dropping what was
//! overwritten or removed; what it keeps is the live data, the journal since the last memtable
//! flush and the files a merge has not dropped yet, each bounded by a setting here. The README's
//! "Storage layout" has the numbers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use super::StorageError;
use super::idle::IdleClock;
use super::kv::{Kv, KvBatch, Visit, visit_pairs};

pub struct FjallKv {
    /// `None` only while [`Kv::recover`] or an idle release reopens it.
    open: RwLock<Option<Open>>,
    path: PathBuf,
    cache_bytes: u64,
    idle: IdleClock,
    _only_user: DirLock,
    /// The OS error that made fjall refuse writes, which it answers only with "poisoned" from
    /// then on: later failures report it too, so the operator is told "disk full" until the
    /// store is reopened.
    poisoned_by: Mutex<Option<i32>>,
    since_flush: Mutex<SinceFlush>,
    /// An undo a recovery could not write yet (the disk was still full): the next one writes it.
    undo_owed: Mutex<Option<KvBatch>>,
    merge_all: Mutex<MergeAll>,
}

/// What a recovery undoes. fjall replays on reopen every batch its journal holds, synced or
/// not, so a batch whose flush failed (its group was refused, nobody was acked) could come back;
/// the [`Kv`] contract is that such writes are gone. So every key written since the last
/// successful flush is kept with the value it had then (read before the first write to it), and
/// a recovery writes those values back.
#[derive(Default)]
struct SinceFlush {
    before: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// More keys than [`MAX_UNDO_KEYS`] were written without a flush (relaxed durability
    /// flushes only in the background): a recovery keeps what the journal holds.
    overflowed: bool,
}

/// How many keys written since the last flush a recovery can undo: far more than one group
/// commit writes.
const MAX_UNDO_KEYS: usize = 100_000;

/// Merges never meet what a steady flood of new keys leaves behind (the log's keys only grow,
/// and a removed entry's tombstone reaches the older levels only with the files around it), so
/// now and then everything is merged into the last level at once, which keeps only what is
/// live. It runs on a thread of its own once the directory has grown by half of what the last
/// such merge left, or by this if that is more. While it runs the directory holds the old files
/// and the new ones, so the bound is what keeps the largest directory near twice the live data
/// (1.5 times plus 16 MiB let the writes flood's directory reach 77 MB with about 15 MB left
/// after each merge).
const MERGE_ALL_SLACK_BYTES: u64 = 8 << 20;

/// How often the directory's size is looked at for that.
const MERGE_ALL_CHECK: Duration = Duration::from_secs(1);

/// The whole-store merge running in the background, if any, and what the last one left.
#[derive(Default)]
struct MergeAll {
    running: Option<std::thread::JoinHandle<()>>,
    left_bytes: Arc<AtomicU64>,
    checked: Option<Instant>,
}

struct Open {
    keyspace: fjall::Keyspace,
    kv: fjall::PartitionHandle,
}

/// The one partition every key lives in (the store's layout keeps rooms apart by prefix).
const PARTITION: &str = "kv";

/// Journals kept before the oldest memtable must be written out as a sorted file: what the
/// directory holds beyond its sorted files. This is fjall's floor; its default, 512 MiB, would
/// be most of a small disk. A journal is dropped once the memtables it covers are written out,
/// so under a flood it holds about one memtable.
const MAX_JOURNALS_BYTES: u64 = 24 << 20;

/// Memtables held before the largest is written out: a bound on the memory writes take.
const MAX_MEMTABLES_BYTES: u64 = 8 << 20;

/// The partition's memtable, written out as a sorted file of the first level once full.
const MEMTABLE_BYTES: u32 = 4 << 20;

/// The size of the sorted files merges write, which also sets how much the first level holds
/// (four files) before a merge moves data down to the next. What was overwritten or removed
/// stays on disk until a merge meets it, so the levels above the last one are what the
/// directory holds beyond the live data. fjall's default, 64 MiB, lets the first level grow to
/// 256 MiB; small files keep the levels above the last one small, and the whole-store merge
/// (see [`MERGE_ALL_SLACK_BYTES`]) cleans the last one.
const SORTED_FILE_BYTES: u32 = 4 << 20;

/// How often the journal is synced when nobody flushes (relaxed durability).
const RELAXED_SYNC_MS: u16 = 500;

/// Sorted files are written as they are: a change's body is JSON, which compresses, but
/// compression would make the directory's size depend on what clients send, and the size bound
/// measured with the load generator's padding would mean nothing.
const COMPRESSION: fjall::CompressionType = fjall::CompressionType::None;

fn open(path: &Path, cache_bytes: u64) -> Result<Open, StorageError> {
    let keyspace = fjall::Config::new(path)
        .cache_size(cache_bytes)
        .max_journaling_size(MAX_JOURNALS_BYTES)
        .max_write_buffer_size(MAX_MEMTABLES_BYTES)
        // [`Kv::flush`] syncs for the durability actor's acks; under relaxed durability, which
        // does not flush, a background sync bounds what a power cut loses to half a second.
        .manual_journal_persist(true)
        .fsync_ms(Some(RELAXED_SYNC_MS))
        .open()?;
    let kv = keyspace.open_partition(
        PARTITION,
        fjall::PartitionCreateOptions::default()
            .max_memtable_size(MEMTABLE_BYTES)
            .compression(COMPRESSION)
            .compaction_strategy(fjall::compaction::Strategy::Leveled(
                fjall::compaction::Leveled {
                    target_size: SORTED_FILE_BYTES,
                    ..Default::default()
                },
            ))
            .manual_journal_persist(true),
    )?;
    Ok(Open { keyspace, kv })
}

impl FjallKv {
    /// `cache_bytes` bounds fjall's block cache, the bulk of what the store holds in memory
    /// beside its memtables.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<FjallKv, StorageError> {
        std::fs::create_dir_all(path)?;
        let only_user = DirLock::take(path)?;
        Ok(FjallKv {
            open: RwLock::new(Some(open(path, cache_bytes)?)),
            path: path.to_owned(),
            cache_bytes,
            idle: IdleClock::default(),
            _only_user: only_user,
            poisoned_by: Mutex::new(None),
            since_flush: Mutex::default(),
            undo_owed: Mutex::default(),
            merge_all: Mutex::default(),
        })
    }

    /// Whether `path` holds a store of this kind (fjall writes its `version` file first).
    pub fn is_at(path: &Path) -> bool {
        path.join("version").is_file()
    }

    fn db(&self) -> Result<OpenGuard<'_>, StorageError> {
        self.idle.touch();
        self.db_untouched()
    }

    /// The handle, for what does not count as use (health probes, size figures).
    fn db_untouched(&self) -> Result<OpenGuard<'_>, StorageError> {
        // A panic while holding the lock left either the old handle or none: both are usable.
        let guard = self.open.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StorageError::Reopening);
        }
        Ok(OpenGuard(guard))
    }

    fn since_flush(&self) -> std::sync::MutexGuard<'_, SinceFlush> {
        self.since_flush.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The values of the keys written since the last successful flush as they were then; `None`
    /// when that is not known (too much was written since).
    fn undo(&self) -> Option<KvBatch> {
        let since = self.since_flush();
        if since.overflowed {
            return None;
        }
        let mut undo = KvBatch::default();
        for (k, v) in &since.before {
            match v {
                Some(v) => undo.insert(k.clone(), v.clone()),
                None => undo.remove(k.clone()),
            }
        }
        Some(undo)
    }

    /// Keeps what the keys of `batch` hold before it is written, for [`FjallKv::undo`].
    fn remember_before(&self, open: &Open, batch: &KvBatch) -> Result<(), StorageError> {
        let mut since = self.since_flush();
        if since.overflowed {
            return Ok(());
        }
        if since.before.len() + batch.ops.len() > MAX_UNDO_KEYS {
            *since = SinceFlush {
                overflowed: true,
                ..SinceFlush::default()
            };
            return Ok(());
        }
        for (k, _) in &batch.ops {
            if !since.before.contains_key(k) {
                let then = open.kv.get(k)?.map(|v| v.to_vec());
                since.before.insert(k.clone(), then);
            }
        }
        Ok(())
    }

    /// Starts a merge of the whole store on a thread of its own when the directory has grown
    /// enough since the last one (see [`MERGE_ALL_SLACK_BYTES`]) and none is running.
    fn merge_all_if_grown(&self, open: &Open) {
        let mut merge = self.merge_all.lock().unwrap_or_else(|p| p.into_inner());
        if merge
            .checked
            .is_some_and(|at| at.elapsed() < MERGE_ALL_CHECK)
        {
            return;
        }
        merge.checked = Some(Instant::now());
        if merge.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let left = merge.left_bytes.load(Ordering::Relaxed);
        if open.keyspace.disk_space() <= left + (left / 2).max(MERGE_ALL_SLACK_BYTES) {
            return;
        }
        let (keyspace, kv) = (open.keyspace.clone(), open.kv.clone());
        let left_bytes = merge.left_bytes.clone();
        let started = std::thread::Builder::new()
            .name("store-merge".into())
            .spawn(move || match kv.major_compact() {
                Ok(()) => left_bytes.store(keyspace.disk_space(), Ordering::Relaxed),
                Err(e) => log::warn!("storage: merging the whole store failed: {e}"),
            });
        match started {
            Ok(handle) => merge.running = Some(handle),
            Err(e) => log::warn!("storage: cannot start a merge of the whole store: {e}"),
        }
    }

    /// Drops the handle (fjall waits for its flush and merge threads) and opens a new one.
    fn reopen(&self) -> Result<(), StorageError> {
        let mut slot = self.open.write().unwrap_or_else(|p| p.into_inner());
        *self.since_flush() = SinceFlush::default();
        // A merge holds the old handle: it must be done before a new one opens the directory.
        let running = self
            .merge_all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .take();
        if let Some(merge) = running {
            let _ = merge.join();
        }
        drop(slot.take());
        *slot = Some(open(&self.path, self.cache_bytes)?);
        *self.poisoned_by.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// A failed write's error, with the cause of the first failure in place of fjall's
    /// "poisoned".
    fn write_error(&self, e: fjall::Error) -> StorageError {
        let mut first = self.poisoned_by.lock().unwrap_or_else(|p| p.into_inner());
        match (&e, *first) {
            (fjall::Error::Poisoned, Some(code)) => {
                StorageError::Io(std::io::Error::from_raw_os_error(code))
            }
            // Poisoned by fjall's own threads (a memtable written out, the background sync),
            // whose errors it only logs: a disk with no room left is the likely cause, and the
            // one to report when it is so.
            (fjall::Error::Poisoned, None) if disk_is_full(&self.path) => {
                StorageError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => {
                if first.is_none() {
                    *first = os_error_in(&e);
                }
                StorageError::Lsm(e)
            }
        }
    }
}

/// Whether the disk under `path` has less room than a reopen wants.
fn disk_is_full(path: &Path) -> bool {
    super::free_space::free_bytes(path)
        .is_some_and(|free| free < super::free_space::MIN_FREE_TO_REOPEN)
}

/// The OS error code somewhere in `e`'s chain of causes.
fn os_error_in(e: &fjall::Error) -> Option<i32> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(code);
        }
        cause = c.source();
    }
    None
}

/// An exclusive `flock` on the directory's `lock` file, held as long as the store is open:
/// fjall does not guard its directory, and two processes writing one would corrupt it. The
/// kernel lets go of it when the process ends, however it ends.
struct DirLock {
    _held: std::fs::File,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, StorageError> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: the descriptor is open for the duration of the call; flock has no other
        // preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let why = std::io::Error::last_os_error();
            return Err(StorageError::InUse {
                path: dir.to_owned(),
                why,
            });
        }
        Ok(DirLock { _held: file })
    }
}

struct OpenGuard<'a>(RwLockReadGuard<'a, Option<Open>>);

impl std::ops::Deref for OpenGuard<'_> {
    type Target = Open;

    fn deref(&self) -> &Open {
        match self.0.as_ref() {
            Some(open) => open,
            // `FjallKv::db` hands out guards only over a handle.
            None => unreachable!("a storage guard without a keyspace"),
        }
    }
}

impl Kv for FjallKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db()?.kv.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), StorageError> {
        visit_pairs(self.db()?.kv.range(start..end), visit)
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.db()?.kv.range(start..end).next_back() {
            None => Ok(None),
            Some(item) => Ok(Some(item?.0.to_vec())),
        }
    }

    /// One fjall batch: written to the journal as one entry, so recovery replays all of it or
    /// none.
    fn apply(&self, batch: KvBatch) -> Result<(), StorageError> {
        let db = self.db()?;
        self.remember_before(&db, &batch)?;
        let mut b = db.keyspace.batch();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(&db.kv, k, v),
                None => b.remove(&db.kv, k),
            }
        }
        b.commit().map_err(|e| self.write_error(e))?;
        self.merge_all_if_grown(&db);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let db = self.db()?;
        db.keyspace
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| self.write_error(e))?;
        let mut since = self.since_flush();
        since.before.clear();
        since.overflowed = false;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db_untouched().map_or(0, |db| db.keyspace.disk_space())
    }

    fn probe(&self) -> Result<(), StorageError> {
        self.db_untouched()?.kv.get(b"nprobe")?;
        Ok(())
    }

    /// fjall refuses every write once one failed (the keyspace is "poisoned"), even after the
    /// disk has room again: the way back is a new handle, which replays the journal as it is on
    /// disk (a batch cut short by the full disk is dropped whole). Opening writes a new journal,
    /// so it waits until the disk has some room.
    fn recover(&self) -> Result<(), StorageError> {
        if disk_is_full(&self.path) {
            return Err(StorageError::Io(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )));
        }
        let mut owed = self.undo_owed.lock().unwrap_or_else(|p| p.into_inner());
        let undo = owed.take().or_else(|| self.undo());
        self.reopen()?;
        if let Some(undo) = undo.filter(|u| !u.is_empty())
            && let Err(e) = self.apply(undo.clone()).and_then(|()| self.flush())
        {
            *owed = Some(undo);
            return Err(e);
        }
        Ok(())
    }

    /// What a flood leaves behind in memory is the block cache and the memtables: an idle
    /// handle is written out and reopened, once per stretch of use.
    fn release_if_idle(&self, idle: Duration) -> Result<bool, StorageError> {
        if !self.idle.idle_for(idle) {
            return Ok(false);
        }
        self.db_untouched()?
            .keyspace
            .persist(fjall::PersistMode::SyncAll)?;
        self.reopen()?;
        self.idle.rest();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_flushed_survives_a_reopen_and_a_batch_is_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let kv = FjallKv::open(dir.path(), 1 << 20).expect("open");
            let mut b = KvBatch::default();
            b.insert(b"a".to_vec(), b"1".to_vec());
            b.insert(b"b".to_vec(), b"2".to_vec());
            b.remove(b"a".to_vec());
            kv.apply(b).expect("apply");
            kv.flush().expect("flush");
            assert_eq!(kv.last_key(b"a", b"z").expect("last"), Some(b"b".to_vec()));
        }
        let kv = FjallKv::open(dir.path(), 1 << 20).expect("reopen");
        assert!(
            matches!(
                FjallKv::open(dir.path(), 1 << 20),
                Err(StorageError::InUse { .. })
            ),
            "a second handle on an open store is refused"
        );
        assert_eq!(kv.get(b"a").expect("get"), None);
        assert_eq!(kv.get(b"b").expect("get"), Some(b"2".to_vec()));
        kv.recover().expect("a reopen in place");
        assert_eq!(kv.get(b"b").expect("get"), Some(b"2".to_vec()));
    }

    #[test]
    fn a_recovery_undoes_what_was_written_since_the_last_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = FjallKv::open(dir.path(), 1 << 20).expect("open");
        let write = |ops: &[(&[u8], Option<&[u8]>)]| {
            let mut b = KvBatch::default();
            for (k, v) in ops {
                match v {
                    Some(v) => b.insert(k.to_vec(), v.to_vec()),
                    None => b.remove(k.to_vec()),
                }
            }
            kv.apply(b).expect("apply");
        };
        write(&[
            (b"kept", Some(b"1")),
            (b"changed", Some(b"1")),
            (b"gone", Some(b"1")),
        ]);
        kv.flush().expect("flush");
        // Written, never flushed: what a group whose flush failed leaves in the journal.
        write(&[
            (b"changed", Some(b"2")),
            (b"gone", None),
            (b"new", Some(b"2")),
        ]);
        kv.recover().expect("recover");
        for (k, v) in [
            (&b"kept"[..], Some(b"1".to_vec())),
            (b"changed", Some(b"1".to_vec())),
            (b"gone", Some(b"1".to_vec())),
            (b"new", None),
        ] {
            assert_eq!(kv.get(k).expect("get"), v, "{}", String::from_utf8_lossy(k));
        }
        // And so it stays after the next open.
        drop(kv);
        let kv = FjallKv::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(kv.get(b"changed").expect("get"), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"new").expect("get"), None);
    }
}
