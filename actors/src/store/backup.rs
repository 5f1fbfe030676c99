//! Backups: a consistent copy of every room, taken while the hub runs, and a data directory
//! made from one.
//!
//! A backup file is a header line, then records, then a trailer:
//!
//! ```text
//! {"synchub_backup":1,"format":"3","created_ms":…,"node_id":…}\n
//! 'K' len(u32 be) key len(u32 be) value      one stored pair, as the store holds it
//! 'E' count(u64 be) blake3(32 bytes)          pairs written, hash of every byte before it
//! ```
//!
//! Each room is copied as it stood at one moment: its counters first, then the log entries and
//! state records they cover (later ones, written while the backup runs, are left out). No
//! compaction runs meanwhile, so nothing a room's counters cover can leave the log before the
//! backup reads it: every change acked before the backup started is in it, with its number.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::ControlFlow;

use serde_json::json;

use super::{
    FORMAT, KvBatch, LogEntry, RoomLayout, RoomMeta, StorageError, Store, decode_state, node_key,
    prefix_end, push_entry, read_segment,
};

const VERSION: u64 = 1;
const PAIR: u8 = b'K';
const END: u8 = b'E';

/// What a backup holds or a restore wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackupReport {
    pub rooms: u64,
    pub pairs: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("backup file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a synchub backup, or a damaged one: {0}")]
    Invalid(String),
}

/// Counts and hashes every byte that goes through it.
struct Hashing<W> {
    inner: W,
    hash: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.inner.write_all(b)
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&[PAIR])?;
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }
}

impl Store {
    /// Writes a backup of every room to `out`. Runs while the hub serves; holds compactions
    /// off until it is done. Blocks: call it off the actors' threads.
    pub fn backup(&self, out: &mut dyn Write) -> Result<BackupReport, BackupError> {
        let _no_compaction = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut w: Hashing<&mut dyn Write> = Hashing {
            inner: out,
            hash: blake3::Hasher::new(),
            bytes: 0,
        };
        let header = json!({
            "synchub_backup": VERSION,
            "format": FORMAT,
            "created_ms": crate::clock::now_ms(),
            "node_id": self.node_value("node_id")?,
        });
        w.put(format!("{header}\n").as_bytes())?;
        let mut report = BackupReport::default();
        // Node-level values, but for the format (a restore writes its own) and the probe.
        let mut node = Vec::new();
        self.kv.scan(b"n", b"o", &mut |k, v| {
            if k != node_key("format").as_slice() && k != node_key("probe").as_slice() {
                node.push((k.to_vec(), v.to_vec()));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        for (k, v) in &node {
            w.pair(k, v)?;
            report.pairs += 1;
        }
        for (room, _) in self.rooms()? {
            let layout = RoomLayout::new(&room);
            // The counters first: what they cover is in the log and stays there.
            let Some(raw_meta) = self.kv.get(&layout.meta)? else {
                continue;
            };
            let meta: RoomMeta =
                serde_json::from_slice(&raw_meta).map_err(|e| super::corrupt(&layout.meta, e))?;
            let upto = meta.seq;
            w.pair(&layout.meta, &raw_meta)?;
            report.pairs += 1;
            report.rooms += 1;
            // Written as they are read: a room's log is never held whole.
            let mut failed: Option<std::io::Error> = None;
            let mut copy = |k: &[u8], v: &[u8], w: &mut Hashing<&mut dyn Write>| match w.pair(k, v)
            {
                Ok(()) => {
                    report.pairs += 1;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            };
            self.kv
                .scan(&layout.log, &prefix_end(&layout.log), &mut |k, raw| {
                    let mut kept = Vec::with_capacity(raw.len());
                    let mut all = true;
                    // The visit never stops early.
                    let _ = read_segment(k, raw, &mut |seq, key, body| {
                        if seq <= upto {
                            let entry = LogEntry::stored(seq, String::new(), key, body);
                            push_entry(&mut kept, &entry);
                        } else {
                            all = false;
                        }
                        Ok(ControlFlow::Continue(()))
                    })?;
                    Ok(match (all, kept.is_empty()) {
                        (true, _) => copy(k, raw, &mut w),
                        (false, false) => copy(k, &kept, &mut w),
                        (false, true) => ControlFlow::Continue(()),
                    })
                })?;
            self.kv
                .scan(&layout.state, &prefix_end(&layout.state), &mut |k, raw| {
                    if decode_state(k, raw)?.seq > upto {
                        return Ok(ControlFlow::Continue(()));
                    }
                    Ok(copy(k, raw, &mut w))
                })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        let digest = w.hash.finalize();
        let mut end = vec![END];
        end.extend_from_slice(&report.pairs.to_be_bytes());
        w.inner.write_all(&end)?;
        w.inner.write_all(digest.as_bytes())?;
        w.inner.flush()?;
        report.bytes = w.bytes + end.len() as u64 + 32;
        Ok(report)
    }

    /// Reads a backup into this store, which must be empty (freshly created). The file is
    /// checked whole (its hash) before anything is written, so a damaged file writes nothing.
    pub fn restore(
        &self,
        open: &mut dyn FnMut() -> std::io::Result<Box<dyn Read>>,
    ) -> Result<BackupReport, BackupError> {
        let mut report = BackupReport::default();
        // First pass: the hash and the count.
        read_backup(open()?, &mut |_, _| Ok(()), &mut report)?;
        report = BackupReport::default();
        let mut batch = KvBatch::default();
        let mut batch_bytes = 0;
        let mut rooms = BTreeMap::new();
        read_backup(
            open()?,
            &mut |k, v| {
                if k.first() == Some(&b'm') {
                    rooms.insert(k.to_vec(), ());
                }
                batch_bytes += k.len() + v.len();
                batch.insert(k.to_vec(), v.to_vec());
                if batch_bytes > 1 << 20 {
                    self.kv.apply(std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                }
                Ok(())
            },
            &mut report,
        )?;
        self.kv.apply(batch)?;
        self.kv.flush()?;
        report.rooms = rooms.len() as u64;
        Ok(report)
    }
}

/// What a reader of a backup does with each stored pair.
type OnPair<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StorageError> + 'a;

/// Reads a backup through, handing every pair to `pair`; fails on a bad header, a cut-off or
/// damaged file (the hash of what was read must match the trailer's).
fn read_backup(
    input: Box<dyn Read>,
    pair: &mut OnPair<'_>,
    report: &mut BackupReport,
) -> Result<(), BackupError> {
    let mut r = std::io::BufReader::with_capacity(1 << 16, input);
    let mut hash = blake3::Hasher::new();
    let mut header = Vec::new();
    std::io::BufRead::read_until(&mut r, b'\n', &mut header)?;
    let parsed: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|_| BackupError::Invalid("no backup header".into()))?;
    if parsed["synchub_backup"] != VERSION {
        return Err(BackupError::Invalid(format!(
            "backup version {} (this synchub reads {VERSION})",
            parsed["synchub_backup"]
        )));
    }
    hash.update(&header);
    report.bytes += header.len() as u64;
    let invalid = |what: &str| BackupError::Invalid(what.into());
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(|_| invalid("cut off"))?;
        match tag[0] {
            PAIR => {
                hash.update(&tag);
                let key = read_chunk(&mut r, &mut hash)?;
                let value = read_chunk(&mut r, &mut hash)?;
                pair(&key, &value)?;
                report.pairs += 1;
                report.bytes += 9 + key.len() as u64 + value.len() as u64;
            }
            END => {
                let mut count = [0u8; 8];
                let mut digest = [0u8; 32];
                r.read_exact(&mut count).map_err(|_| invalid("cut off"))?;
                r.read_exact(&mut digest).map_err(|_| invalid("cut off"))?;
                if u64::from_be_bytes(count) != report.pairs {
                    return Err(invalid("wrong count of pairs"));
                }
                if hash.finalize().as_bytes() != &digest {
                    return Err(invalid("damaged (its hash does not match)"));
                }
                report.bytes += 41;
                return Ok(());
            }
            _ => return Err(invalid("unknown record")),
        }
    }
}

fn read_chunk(r: &mut dyn Read, hash: &mut blake3::Hasher) -> Result<Vec<u8>, BackupError> {
    let cut = || BackupError::Invalid("cut off".into());
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|_| cut())?;
    hash.update(&len);
    let len = u32::from_be_bytes(len) as usize;
    // A damaged length must not allocate gigabytes before the read fails.
    let mut out = Vec::with_capacity(len.min(1 << 20));
    r.take(len as u64).read_to_end(&mut out)?;
    if out.len() != len {
        return Err(cut());
    }
    hash.update(&out);
    Ok(out)
}

/// Reads a backup file through and checks it whole (header, every record, count and hash).
pub fn check_backup(path: &std::path::Path) -> Result<BackupReport, BackupError> {
    let mut report = BackupReport::default();
    let mut rooms = 0;
    let file = std::fs::File::open(path)?;
    read_backup(
        Box::new(file),
        &mut |k, _| {
            rooms += u64::from(k.first() == Some(&b'm'));
            Ok(())
        },
        &mut report,
    )?;
    report.rooms = rooms;
    Ok(report)
}
