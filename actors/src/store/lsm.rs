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

use std::collections::HashSet;
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
/// the [`Kv`] contract is that such writes are gone. So a snapshot is taken at each successful
/// flush and the keys written since are noted; a recovery reads what those keys held in the
/// snapshot and writes it back. The snapshot only keeps fjall's merges from dropping versions
/// newer than it, and it moves on at every flush. (Reading each key's value before its first
/// write instead cost the writer a point read per key: 10 to 50 ms a group under the rooms
/// flood, waiting on the tree's locks while memtables were written out.)
#[derive(Default)]
struct SinceFlush {
    /// The store as of the last successful flush; `None` when there is nothing a recovery can
    /// go back to (too much was written since).
    at: Option<fjall::Snapshot>,
    keys: HashSet<Vec<u8>>,
}

impl SinceFlush {
    fn flushed(open: &Open) -> SinceFlush {
        SinceFlush {
            at: Some(open.kv.snapshot()),
            keys: HashSet::new(),
        }
    }
}

/// How many keys written since the last flush a recovery can undo: far more than one group
/// commit writes. Past it (a store whose writers never flush), a recovery keeps what the
/// journal holds.
const MAX_UNDO_KEYS: usize = 100_000;

/// Merges never meet what a steady flood of new keys leaves behind (the log's keys only grow,
/// and a removed entry's tombstone reaches the older levels only with the files around it), so
/// now and then everything is merged into the last level at once, which keeps only what is
/// live. It runs on a thread of its own once the sorted files have grown by half of what the
/// last such merge left, or by this if that is more. While it runs the directory holds the old
/// files and the new ones, so the bound is what keeps the largest directory near twice the live
/// data (1.5 times plus 16 MiB let the writes flood's directory reach 77 MB with about 15 MB
/// left after each merge). The journals are left out of the count: fjall counts each at its
/// preallocated 32 MiB.
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

/// How much journal fjall lets build up before it stops writers until the oldest memtables are
/// written out. fjall counts each journal at its preallocated length, 32 MiB, although the file
/// is sparse and takes only what was written (about one memtable), and it puts writers to sleep
/// for 100 ms at a time while the count is over this, or for 500 ms when a rotation finds it
/// over 90% of it. At its floor, 24 MiB, every memtable rotation under a flood (one every second
/// or two) stopped every write for 100 ms or more: a third of the one-room flood's acks and
/// most of its slowest. Three journals' worth keeps two sealed journals, what a flush that
/// lags behind leaves, clear of both sleeps; a journal is dropped once the memtable it covers
/// is written out.
const MAX_JOURNALS_BYTES: u64 = 3 * JOURNAL_PREALLOCATED_BYTES;

/// The length fjall gives each new journal file (sparse: the disk holds what was written).
const JOURNAL_PREALLOCATED_BYTES: u64 = 32 << 20;

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

/// Sorted files are written as they are: a change's body is JSON, which compresses, but
/// compression would make the directory's size depend on what clients send, and the size bound
/// measured with the load generator's padding would mean nothing.
const COMPRESSION: fjall::CompressionType = fjall::CompressionType::None;

fn open(path: &Path, cache_bytes: u64) -> Result<Open, StorageError> {
    let keyspace = fjall::Config::new(path)
        .cache_size(cache_bytes)
        .max_journaling_size(MAX_JOURNALS_BYTES)
        .max_write_buffer_size(MAX_MEMTABLES_BYTES)
        // Nothing is synced but by [`Kv::flush`]: what a recovery undoes is what came after it.
        .manual_journal_persist(true)
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
        let opened = open(path, cache_bytes)?;
        Ok(FjallKv {
            since_flush: Mutex::new(SinceFlush::flushed(&opened)),
            open: RwLock::new(Some(opened)),
            path: path.to_owned(),
            cache_bytes,
            idle: IdleClock::default(),
            _only_user: only_user,
            poisoned_by: Mutex::new(None),
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

    /// The values of the keys written since the last successful flush as they were then;
    /// `None` when that is not known (too much was written since).
    fn undo(&self) -> Result<Option<KvBatch>, StorageError> {
        let since = self.since_flush();
        let Some(at) = &since.at else {
            return Ok(None);
        };
        let mut undo = KvBatch::default();
        for k in &since.keys {
            match at.get(k).map_err(fjall::Error::from)? {
                Some(v) => undo.insert(k.clone(), v.to_vec()),
                None => undo.remove(k.clone()),
            }
        }
        Ok(Some(undo))
    }

    /// Notes the keys of `batch` for [`FjallKv::undo`].
    fn note_written(&self, batch: &KvBatch) {
        let mut since = self.since_flush();
        if since.at.is_none() {
            return;
        }
        if since.keys.len() + batch.ops.len() > MAX_UNDO_KEYS {
            // Lets fjall's merges drop what the snapshot kept.
            *since = SinceFlush::default();
            return;
        }
        for (k, _) in &batch.ops {
            if !since.keys.contains(k) {
                since.keys.insert(k.clone());
            }
        }
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
        if open.kv.disk_space() <= left + (left / 2).max(MERGE_ALL_SLACK_BYTES) {
            return;
        }
        let kv = open.kv.clone();
        let left_bytes = merge.left_bytes.clone();
        let started = std::thread::Builder::new()
            .name("store-merge".into())
            .spawn(move || match kv.major_compact() {
                Ok(()) => left_bytes.store(kv.disk_space(), Ordering::Relaxed),
                Err(e) => log::warn!("storage: merging the whole store failed: {e}"),
            });
        match started {
            Ok(handle) => merge.running = Some(handle),
            Err(e) => log::warn!("storage: cannot start a merge of the whole store: {e}"),
        }
    }

    /// Waits for a whole-store merge under way: it holds a handle of its own, so the directory
    /// is in use until it is done.
    fn wait_for_merge(&self) {
        let running = self
            .merge_all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .take();
        if let Some(merge) = running {
            let _ = merge.join();
        }
    }

    /// Drops the handle (fjall waits for its flush and merge threads) and opens a new one.
    fn reopen(&self) -> Result<(), StorageError> {
        let mut slot = self.open.write().unwrap_or_else(|p| p.into_inner());
        *self.since_flush() = SinceFlush::default();
        self.wait_for_merge();
        drop(slot.take());
        let opened = open(&self.path, self.cache_bytes)?;
        *self.since_flush() = SinceFlush::flushed(&opened);
        *slot = Some(opened);
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

/// The directory's lock is let go only once nothing writes to it any more: another store may
/// open it next (a restart in the same process, a restore's clean-up).
impl Drop for FjallKv {
    fn drop(&mut self) {
        self.wait_for_merge();
    }
}

/// What the files directly in `dir` take on disk (sparse files count what they hold).
fn allocated_bytes_in(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
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
        self.note_written(&batch);
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
        *self.since_flush() = SinceFlush::flushed(&db);
        Ok(())
    }

    /// The sorted files, and what the journals take on disk: fjall's own figure counts each
    /// journal at its preallocated length.
    fn size_on_disk(&self) -> u64 {
        let files = self.db_untouched().map_or(0, |db| db.kv.disk_space());
        files + allocated_bytes_in(&self.path.join("journals"))
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
        let undo = match owed.take() {
            Some(undo) => Some(undo),
            None => self.undo()?,
        };
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
        // The old values must survive the memtable being written out and everything merged.
        {
            let db = kv.db().expect("open");
            db.kv.rotate_memtable_and_wait().expect("rotate");
            db.kv.major_compact().expect("merge");
        }
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

    /// The threads of this process with `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[test]
    fn a_dropped_store_has_finished_its_whole_store_merge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = FjallKv::open(dir.path(), 1 << 20).expect("open");
        // The same keys twice, so the merge has overlapping files to rewrite.
        for round in 0..2u8 {
            let mut big = KvBatch::default();
            for i in 0..5_000u32 {
                big.insert(format!("k{i:05}").into_bytes(), vec![round; 4_000]);
            }
            kv.apply(big).expect("apply");
            kv.db()
                .expect("open")
                .kv
                .rotate_memtable_and_wait()
                .expect("rotate");
        }
        // The next write after the check interval finds 40 MB of sorted files and starts a
        // merge, which takes a while longer than the few steps to the drop.
        std::thread::sleep(MERGE_ALL_CHECK + Duration::from_millis(100));
        let mut small = KvBatch::default();
        small.insert(b"k".to_vec(), b"1".to_vec());
        kv.apply(small).expect("apply");
        // A new thread takes its name once it runs.
        let deadline = Instant::now() + Duration::from_secs(2);
        while threads_named("store-merge") == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(threads_named("store-merge"), 1, "a merge is under way");
        drop(kv);
        assert_eq!(threads_named("store-merge"), 0);
        let kv = FjallKv::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(kv.get(b"k00042").expect("get"), Some(vec![1; 4_000]));
    }
}
