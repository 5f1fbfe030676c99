//! Upgrading a data directory written by an earlier synchub to the layout this one reads.
//!
//! Formats 1 and 2 were stored in sled; format 3 is format 2's layout in fjall (see `lsm.rs`).
//! Format 1 (synchub 0.1) kept one log key per change (`l` room NUL seq → `{"s": stream,
//! "k": record key, "b": change}`), a per-stream index (`i` room NUL stream NUL seq), and every
//! record's state (`s` room NUL stream NUL key → seq, then the state as JSON), with no format
//! marker. Format 2 keeps the log in segments per stream, and state records where the log
//! alone does not make the state; a migrated room keeps every format-1 state as one. A format-2
//! directory is copied pair by pair.
//!
//! The migration writes the new store into a directory beside the old one and swaps them only
//! once it is complete and flushed: the old directory is kept as `<dir>.format1` (or
//! `.format2`), and a crash at any point leaves a directory that opens as one format or the
//! other.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{
    DEFAULT_CACHE_BYTES, FORMAT, FjallKv, Kv, KvBatch, LogEntry, RoomLayout, RoomMeta, SledKv,
    StateWrite, StorageError, encode_state, node_key, prefix_end, read_segment, segments,
    state_hash,
};
use crate::raw_json::RawJson;
use crate::room_key::RoomKey;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// The format the directory had.
    pub from: String,
    pub rooms: u64,
    pub entries: u64,
    /// Where the directory as it was is kept (`None` when there was nothing to do).
    pub kept_as: Option<PathBuf>,
}

#[derive(Deserialize)]
struct LogRecordV1 {
    s: String,
    k: String,
    b: Value,
}

/// The format a data directory holds: `None` for an empty one.
pub fn format_of(kv: &dyn Kv) -> Result<Option<String>, StorageError> {
    if let Some(f) = kv.get(&node_key("format"))? {
        return Ok(Some(String::from_utf8_lossy(&f).into_owned()));
    }
    let mut empty = true;
    kv.scan(&[], &[u8::MAX], &mut |_, _| {
        empty = false;
        Ok(ControlFlow::Break(()))
    })?;
    Ok((!empty).then(|| "1".to_owned()))
}

/// The format of a sled directory: one nothing was written to counts as format 2, the last one
/// sled held.
pub(super) fn format_of_sled(old: &SledKv) -> Result<String, StorageError> {
    Ok(format_of(old)?.unwrap_or_else(|| "2".to_owned()))
}

/// Whether [`migrate`] upgrades a directory of `format` (formats 1 and 2, stored in sled).
pub fn is_upgradable(format: &str) -> bool {
    format == "1" || format == "2"
}

/// Brings the data directory `dir` to the format this synchub reads, if it holds an older one;
/// `stamp` gives each change of the log its sequence number as the room's model writes it (a
/// format-1 log may hold the client's numbers). Refuses a directory of an unknown format.
pub fn migrate(
    dir: &Path,
    stamp: &dyn Fn(&RoomKey, &mut Value, u64),
) -> Result<MigrateReport, StorageError> {
    if !SledKv::is_at(dir) {
        // This version's store (or nothing yet): there is nothing to upgrade, only to check.
        let current = FjallKv::open(dir, DEFAULT_CACHE_BYTES)?;
        return match format_of(&current)? {
            None => Ok(MigrateReport::default()),
            Some(f) if f == FORMAT => Ok(MigrateReport {
                from: f,
                ..MigrateReport::default()
            }),
            Some(found) => Err(StorageError::Format { found }),
        };
    }
    let old = SledKv::open(dir, DEFAULT_CACHE_BYTES)?;
    let from = format_of_sled(&old)?;
    if !is_upgradable(&from) {
        return Err(StorageError::Format { found: from });
    }
    let mut report = MigrateReport {
        from,
        ..MigrateReport::default()
    };
    let staging = sibling(dir, "migrating");
    if staging.exists() {
        // What an interrupted migration left: started again from the old directory.
        std::fs::remove_dir_all(&staging)?;
    }
    let new = FjallKv::open(&staging, DEFAULT_CACHE_BYTES)?;
    if report.from == "1" {
        from_format1(&old, &new, stamp, &mut report)?;
    } else {
        copy(&old, &new, &mut report)?;
    }
    let mut done = KvBatch::default();
    done.insert(node_key("format"), FORMAT.as_bytes().to_vec());
    new.apply(done)?;
    new.flush()?;
    drop(new);
    drop(old);
    let kept = sibling(dir, &format!("format{}", report.from));
    std::fs::rename(dir, &kept)?;
    std::fs::rename(&staging, dir)?;
    report.kept_as = Some(kept);
    Ok(report)
}

/// How many bytes of pairs one batch of a copy carries.
const COPY_BATCH_BYTES: usize = 4 << 20;

/// A format-2 directory, pair by pair: the layout is the same.
fn copy(old: &SledKv, new: &FjallKv, report: &mut MigrateReport) -> Result<(), StorageError> {
    let mut batch = KvBatch::default();
    let mut bytes = 0;
    old.scan(&[], &[u8::MAX], &mut |k, v| {
        match k.first() {
            Some(b'm') => report.rooms += 1,
            Some(b'l') => {
                let _ = read_segment(k, v, &mut |_, _, _| {
                    report.entries += 1;
                    Ok(ControlFlow::Continue(()))
                })?;
            }
            _ => {}
        }
        // The format marker is written last, once everything else is in.
        if k != node_key("format").as_slice() {
            bytes += k.len() + v.len();
            batch.insert(k.to_vec(), v.to_vec());
        }
        if bytes >= COPY_BATCH_BYTES {
            bytes = 0;
            new.apply(std::mem::take(&mut batch))?;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    new.apply(batch)
}

/// A format-1 directory, room by room, into format 2's layout.
fn from_format1(
    old: &SledKv,
    new: &FjallKv,
    stamp: &dyn Fn(&RoomKey, &mut Value, u64),
    report: &mut MigrateReport,
) -> Result<(), StorageError> {
    let mut batch = KvBatch::default();
    old.scan(b"n", b"o", &mut |k, v| {
        batch.insert(k.to_vec(), v.to_vec());
        Ok(ControlFlow::Continue(()))
    })?;
    new.apply(std::mem::take(&mut batch))?;
    let mut rooms = Vec::new();
    old.scan(b"m", b"n", &mut |k, v| {
        rooms.push((k[1..].to_vec(), v.to_vec()));
        Ok(ControlFlow::Continue(()))
    })?;
    for (name, raw_meta) in rooms {
        let name = String::from_utf8_lossy(&name).into_owned();
        let Some(room) = RoomKey::parse(&name) else {
            log::warn!("migration: a room with an invalid name is left out: {name:?}");
            continue;
        };
        let mut meta: RoomMeta =
            serde_json::from_slice(&raw_meta).map_err(|e| corrupt(&name, e))?;
        let layout = RoomLayout::new(&room);
        let entries = log_v1(old, &name, &room, stamp)?;
        let mut heads = BTreeMap::new();
        for e in &entries {
            heads.insert(e.stream.clone(), e.seq);
        }
        let mut batch = KvBatch::default();
        let mut streams: Vec<&str> = entries.iter().map(|e| e.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        for stream in streams {
            segments(
                &layout,
                stream,
                entries.iter().filter(|e| e.stream == stream),
                None,
                &mut batch,
            );
        }
        // Every record's state is kept as a state record: it is what format 1 served, and what
        // its digest covers. A state record is not replaced by a log entry of the same number,
        // so these are what the room loads; the log stays its history, for pulls. (Some
        // states cannot be rebuilt from a format-1 log: a SyncKit write's counter was kept only
        // in the state.)
        let mut prefix = vec![b's'];
        prefix.extend_from_slice(name.as_bytes());
        prefix.push(0);
        old.scan(&prefix, &prefix_end(&prefix), &mut |k, raw| {
            let rest = &k[prefix.len()..];
            let sep = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt(&name, "state key"))?;
            let stream = String::from_utf8_lossy(&rest[..sep]).into_owned();
            let key = String::from_utf8_lossy(&rest[sep + 1..]).into_owned();
            let seq = raw
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&name, "short state record"))?;
            let json = std::str::from_utf8(&raw[8..]).map_err(|e| corrupt(&name, e))?;
            let head = heads.entry(stream.clone()).or_default();
            *head = (*head).max(seq);
            let w = StateWrite {
                seq,
                hash: state_hash(&stream, &key, json),
                json,
            };
            batch.insert(layout.state_key(&stream, &key), encode_state(&w));
            Ok(ControlFlow::Continue(()))
        })?;
        meta.heads = heads;
        meta.log_len = entries.len() as u64;
        batch.insert(
            layout.meta.clone(),
            serde_json::to_vec(&meta).map_err(|e| corrupt(&name, e))?,
        );
        new.apply(batch)?;
        report.rooms += 1;
        report.entries += entries.len() as u64;
    }
    Ok(())
}

/// A room's format-1 log, in sequence order, its changes stamped with their numbers.
fn log_v1(
    old: &SledKv,
    name: &str,
    room: &RoomKey,
    stamp: &dyn Fn(&RoomKey, &mut Value, u64),
) -> Result<Vec<LogEntry>, StorageError> {
    let mut prefix = vec![b'l'];
    prefix.extend_from_slice(name.as_bytes());
    prefix.push(0);
    let mut entries = Vec::new();
    old.scan(&prefix, &prefix_end(&prefix), &mut |k, raw| {
        let Some(seq) = k
            .get(prefix.len()..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
        else {
            return Err(corrupt(name, "a log key that is not format 1"));
        };
        let r: LogRecordV1 = serde_json::from_slice(raw).map_err(|e| corrupt(name, e))?;
        let mut body = r.b;
        stamp(room, &mut body, seq);
        entries.push(LogEntry {
            seq,
            stream: r.s,
            key: r.k,
            body: RawJson::from_value(&body),
            origin: None,
        });
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(entries)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn corrupt(room: &str, why: impl ToString) -> StorageError {
    StorageError::Corrupt {
        key: room.to_owned(),
        why: why.to_string(),
    }
}
