//! `RocksDedupStore`: the [`DedupStore`] of one task, one RocksDB instance per task directory.

use crate::error::StateError;
use crate::layout::{
    StoreIdentity, CHECKPOINT_KEY, ENTRY_COUNT_KEY, IDS_COLUMN_FAMILY, META_COLUMN_FAMILY,
};
use crate::resources::{SharedRocksResources, StoreOptions};
use crate::tuning::{db_options, ids_cf_options, meta_cf_options};
use exactly_core::changelog::{
    decode_checkpoint, decode_entry, encode_checkpoint, encode_entry_into,
};
use exactly_core::{
    ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError, StoreStats,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, ErrorKind, FlushOptions, ReadOptions, SingleThreaded,
    WriteBatch, WriteOptions,
};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Spelled out rather than `rocksdb::DB`, whose thread mode changes with the crate's
/// `multi-threaded-cf` feature (enabled workspace-wide if any crate asks for it).
pub(crate) type Db = rocksdb::DBWithThreadMode<SingleThreaded>;

/// Deletes per write batch when expiring, so expiring millions of IDs needs bounded memory.
const EXPIRE_CHUNK: usize = 10_000;

/// The RocksDB dedup store of one task.
///
/// Layout (see [`crate::layout`]): column family `ids` maps each ID to its encoded
/// [`SeenEntry`]; column family `meta` holds the checkpoint and the exact entry count. Both
/// are written by one `WriteBatch` per [`apply`](DedupStore::apply), so a reader never sees IDs
/// without their checkpoint or the reverse.
///
/// # Durability without a write-ahead log
///
/// With [`StoreOptions::disable_wal`] (the default) a write lives only in memtables until they
/// are flushed, and a crash loses it. That is allowed: the store is a cache of the changelog
/// and may lag it (the restore replays the tail from the checkpoint), but it must never lead
/// it, and its IDs and checkpoint must describe the same changelog prefix. The batch is atomic
/// in memory; what keeps it atomic on disk is `atomic_flush`: without it RocksDB flushes each
/// column family on its own schedule, so after a crash the `ids` SSTs could hold a batch whose
/// checkpoint in `meta` was lost (harmless: replay rewrites the same IDs) or, worse, `meta`
/// could hold a checkpoint whose IDs were lost, and the restore would skip them and let their
/// duplicates through. `atomic_flush` makes every flush cover both column families in one
/// manifest commit. Dropping the store flushes explicitly.
///
/// # Retention
///
/// A compaction filter drops IDs first seen before the retention cutoff (see
/// [`set_retention_cutoff`](Self::set_retention_cutoff)) when background compaction reaches
/// them, matching the changelog's `retention.ms`. So that the answer to a lookup never depends
/// on when compaction ran, IDs below the cutoff are also invisible to `get`/`get_many` at once,
/// and `apply` does not store them. [`expire_before`](DedupStore::expire_before) removes them
/// synchronously and recounts the entries exactly.
pub struct RocksDedupStore {
    db: Db,
    path: PathBuf,
    identity: StoreIdentity,
    write_options: WriteOptions,
    flush_on_drop: bool,
    /// Entries first seen before this are expired. Only ever raised. Shared with the
    /// compaction filter, which runs on RocksDB's background threads.
    retention_cutoff: Arc<AtomicI64>,
    checkpoint: Option<ChangelogCheckpoint>,
    /// Keys in the ids column family, as of this store's last write (background compaction
    /// may have dropped expired ones since; the next `expire_before` recounts).
    entries: u64,
}

impl RocksDedupStore {
    /// Opens (creating if needed) the store in `path` with default [`StoreOptions`].
    ///
    /// Fails with [`StateError::Corrupt`] if the directory cannot be read as a store, with
    /// [`StateError::WrongIdentity`] if its checkpoint names another changelog than
    /// `identity`, and with [`StateError::Locked`] if another open store holds it.
    pub fn open(
        path: &Path,
        shared: &SharedRocksResources,
        identity: &StoreIdentity,
    ) -> Result<Self, StateError> {
        Self::open_with(path, shared, identity, &StoreOptions::default())
    }

    /// [`open`](Self::open) with explicit options.
    pub fn open_with(
        path: &Path,
        shared: &SharedRocksResources,
        identity: &StoreIdentity,
        options: &StoreOptions,
    ) -> Result<Self, StateError> {
        prepare_dir(path)?;
        let retention_cutoff = Arc::new(AtomicI64::new(i64::MIN));
        let cfs = [
            ColumnFamilyDescriptor::new(
                IDS_COLUMN_FAMILY,
                ids_cf_options(shared, options, Arc::clone(&retention_cutoff)),
            ),
            ColumnFamilyDescriptor::new(META_COLUMN_FAMILY, meta_cf_options(shared)),
        ];
        let db = Db::open_cf_descriptors(&db_options(shared), path, cfs)
            .map_err(|e| classify_open_error(path, e))?;

        let checkpoint = read_checkpoint(&db, path, identity)?;
        let entries = match read_meta(&db, path, ENTRY_COUNT_KEY)? {
            Some(bytes) => decode_count(&bytes).ok_or_else(|| StateError::Corrupt {
                path: path.to_owned(),
                reason: format!("unreadable entry count ({} bytes, expected 8)", bytes.len()),
            })?,
            // Written with the first checkpoint; a checkpoint without it was not written here.
            None if checkpoint.is_some() => {
                return Err(StateError::Corrupt {
                    path: path.to_owned(),
                    reason: "checkpoint without entry count".into(),
                })
            }
            None => 0,
        };

        let mut write_options = WriteOptions::default();
        write_options.disable_wal(options.disable_wal);
        Ok(Self {
            db,
            path: path.to_owned(),
            identity: identity.clone(),
            write_options,
            flush_on_drop: options.disable_wal,
            retention_cutoff,
            checkpoint,
            entries,
        })
    }

    /// Opens the store in `path`; if it is corrupt or belongs to another changelog, deletes the
    /// directory (logged as a warning) and opens an empty store there.
    ///
    /// Returns the store and, if it was recreated, why, so the caller can count it; the caller
    /// then restores the empty store from the beginning of the changelog.
    pub fn open_or_recreate(
        path: &Path,
        shared: &SharedRocksResources,
        identity: &StoreIdentity,
    ) -> Result<(Self, Option<StateError>), StateError> {
        Self::open_or_recreate_with(path, shared, identity, &StoreOptions::default())
    }

    /// [`open_or_recreate`](Self::open_or_recreate) with explicit options.
    pub fn open_or_recreate_with(
        path: &Path,
        shared: &SharedRocksResources,
        identity: &StoreIdentity,
        options: &StoreOptions,
    ) -> Result<(Self, Option<StateError>), StateError> {
        match Self::open_with(path, shared, identity, options) {
            Ok(store) => Ok((store, None)),
            Err(reason) if reason.requires_wipe() => {
                tracing::warn!(
                    path = %path.display(),
                    error = %reason,
                    "deleting dedup store directory; the task restores from its changelog"
                );
                remove_store_dir(path)?;
                let store = Self::open_with(path, shared, identity, options)?;
                Ok((store, Some(reason)))
            }
            Err(other) => Err(other),
        }
    }

    /// The changelog this store reflects.
    pub fn identity(&self) -> &StoreIdentity {
        &self.identity
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raises the retention cutoff (never lowers it): IDs first seen before `cutoff_ms`
    /// become invisible at once and are dropped by background compactions, reclaiming their
    /// space without a scan. [`StoreStats::entries`] keeps counting them until the next
    /// [`expire_before`](DedupStore::expire_before). Not persisted: set it after each open.
    pub fn set_retention_cutoff(&self, cutoff_ms: i64) {
        self.retention_cutoff
            .fetch_max(cutoff_ms, Ordering::Relaxed);
    }

    /// The current retention cutoff (`i64::MIN` until one is set).
    pub fn retention_cutoff(&self) -> i64 {
        self.retention_cutoff.load(Ordering::Relaxed)
    }

    /// Writes memtables of both column families to disk in one atomic flush, so that a crash
    /// afterwards loses nothing applied so far (only needed with the WAL disabled).
    pub fn flush(&self) -> Result<(), StateError> {
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db
            .flush_cfs_opt(&[self.ids_cf(), self.meta_cf()], &flush)
            .map_err(|e| self.rocks_error("flush", e))
    }

    /// Compacts the whole ids column family now (it is normally compacted in the background),
    /// dropping IDs below the retention cutoff from disk.
    pub fn compact(&self) {
        self.db
            .compact_range_cf(self.ids_cf(), None::<&[u8]>, None::<&[u8]>);
    }

    fn ids_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(IDS_COLUMN_FAMILY)
            .expect("ids column family is opened with the store")
    }

    fn meta_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(META_COLUMN_FAMILY)
            .expect("meta column family is opened with the store")
    }

    fn rocks_error(&self, action: &'static str, source: rocksdb::Error) -> StateError {
        StateError::Rocks {
            path: self.path.clone(),
            action,
            source,
        }
    }

    fn corrupt_value(&self, id: &[u8], err: impl fmt::Display) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            reason: format!("unreadable entry for id {}: {err}", IdForLog(id)),
        }
    }

    fn write(&self, batch: WriteBatch, action: &'static str) -> Result<(), StateError> {
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(|e| self.rocks_error(action, e))
    }

    /// Writes `batch` and its checkpoint in one WriteBatch. `unseen`: the caller found every
    /// ID absent (or expired), so the lookup that keeps the entry count exact is skipped.
    fn apply_batch(&mut self, batch: &StoreBatch, unseen: bool) -> Result<(), StateError> {
        if !self.identity.owns(&batch.checkpoint) {
            return Err(StateError::ForeignCheckpoint {
                expected: self.identity.clone(),
                found: StoreIdentity::of_checkpoint(&batch.checkpoint),
            });
        }
        // Last entry per ID wins. Sorted so the existence lookup can say `sorted_input`.
        let mut latest: HashMap<&[u8], SeenEntry> = HashMap::with_capacity(batch.entries.len());
        for (id, entry) in &batch.entries {
            latest.insert(id.as_slice(), *entry);
        }
        let mut ids: Vec<&[u8]> = latest.keys().copied().collect();
        ids.sort_unstable();

        // The exact count needs to know which IDs are new: one batched lookup, unless the
        // caller already knows.
        let ids_cf = self.ids_cf();
        let existing: Vec<bool> = if unseen {
            vec![false; ids.len()]
        } else {
            self.db
                .batched_multi_get_cf(ids_cf, ids.iter(), true)
                .into_iter()
                .map(|found| found.map(|v| v.is_some()))
                .collect::<Result<_, _>>()
                .map_err(|e| self.rocks_error("multi_get", e))?
        };
        let cutoff = self.retention_cutoff();
        let mut entries = self.entries;
        let mut write = WriteBatch::default();
        let mut value = Vec::with_capacity(16);
        for (id, existed) in ids.iter().zip(existing) {
            let entry = latest[id];
            if entry.first_seen_ms < cutoff {
                // Already expired: storing it would only let compaction decide when it goes.
                if existed {
                    write.delete_cf(ids_cf, id);
                    entries = entries.saturating_sub(1);
                }
                continue;
            }
            encode_entry_into(&entry, &mut value);
            write.put_cf(ids_cf, id, &value);
            entries += u64::from(!existed);
        }
        let meta_cf = self.meta_cf();
        write.put_cf(
            meta_cf,
            CHECKPOINT_KEY,
            encode_checkpoint(&batch.checkpoint),
        );
        write.put_cf(meta_cf, ENTRY_COUNT_KEY, entries.to_le_bytes());
        self.write(write, "apply")?;
        self.entries = entries;
        self.checkpoint = Some(batch.checkpoint.clone());
        Ok(())
    }

    fn expire(&mut self, cutoff_ms: i64) -> Result<u64, StateError> {
        // Raise the shared cutoff first: whatever the compaction filter may drop from now on,
        // this scan deletes and counts too, so the recount below stays exact.
        self.set_retention_cutoff(cutoff_ms);
        let cutoff = self.retention_cutoff();
        let (ids_cf, meta_cf) = (self.ids_cf(), self.meta_cf());

        // IDs are not ordered by time, so this is a full scan; it reads through a consistent
        // view and does not fill the block cache with blocks the lookups do not need.
        let mut scan = ReadOptions::default();
        scan.fill_cache(false);
        let mut iter = self.db.raw_iterator_cf_opt(ids_cf, scan);
        iter.seek_to_first();
        let (mut removed, mut kept) = (0u64, 0u64);
        let mut write = WriteBatch::default();
        while let Some((id, value)) = iter.item() {
            let entry = decode_entry(value).map_err(|e| self.corrupt_value(id, e))?;
            if entry.first_seen_ms < cutoff {
                write.delete_cf(ids_cf, id);
                removed += 1;
                if write.len() >= EXPIRE_CHUNK {
                    let partial = self.entries.saturating_sub(removed);
                    write.put_cf(meta_cf, ENTRY_COUNT_KEY, partial.to_le_bytes());
                    self.write(std::mem::take(&mut write), "expire")?;
                }
            } else {
                kept += 1;
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| self.rocks_error("expire scan", e))?;
        drop(iter);
        // The scan saw every key, so this also corrects a count left stale by compactions.
        write.put_cf(meta_cf, ENTRY_COUNT_KEY, kept.to_le_bytes());
        self.write(write, "expire")?;
        self.entries = kept;
        Ok(removed)
    }

    fn wipe_all(&mut self) -> Result<(), StateError> {
        let ids_cf = self.ids_cf();
        let mut write = WriteBatch::default();
        // IDs have no upper bound, so the range ends at the largest key present, which gets a
        // point delete. One batch: entries, checkpoint and count go together.
        let mut iter = self.db.raw_iterator_cf(ids_cf);
        iter.seek_to_last();
        if let Some(last) = iter.key() {
            write.delete_range_cf(ids_cf, &[][..], last);
            write.delete_cf(ids_cf, last);
        }
        iter.status()
            .map_err(|e| self.rocks_error("wipe scan", e))?;
        drop(iter);
        let meta_cf = self.meta_cf();
        write.delete_cf(meta_cf, CHECKPOINT_KEY);
        write.delete_cf(meta_cf, ENTRY_COUNT_KEY);
        self.write(write, "wipe")?;
        self.entries = 0;
        self.checkpoint = None;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let mut bytes = 0;
        for cf in [self.ids_cf(), self.meta_cf()] {
            for property in [
                "rocksdb.total-sst-files-size",
                "rocksdb.cur-size-all-mem-tables",
            ] {
                // A missing property only makes the estimate low; stats() cannot fail.
                if let Ok(Some(n)) = self.db.property_int_value_cf(cf, property) {
                    bytes += n;
                }
            }
        }
        bytes
    }
}

impl DedupStore for RocksDedupStore {
    fn get_many(&self, ids: &[&[u8]], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        out.clear();
        if ids.is_empty() {
            return Ok(());
        }
        out.reserve(ids.len());
        let cutoff = self.retention_cutoff();
        let found = self
            .db
            .batched_multi_get_cf(self.ids_cf(), ids.iter(), false);
        for (id, value) in ids.iter().zip(found) {
            let entry = match value.map_err(|e| self.rocks_error("multi_get", e))? {
                None => None,
                Some(bytes) => {
                    let entry = decode_entry(&bytes).map_err(|e| self.corrupt_value(id, e))?;
                    // Below the cutoff: expired, whether or not compaction has dropped it yet.
                    (entry.first_seen_ms >= cutoff).then_some(entry)
                }
            };
            out.push(entry);
        }
        Ok(())
    }

    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        Ok(self.apply_batch(batch, false)?)
    }

    fn apply_unseen(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        Ok(self.apply_batch(batch, true)?)
    }

    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        Ok(self.checkpoint.clone())
    }

    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        Ok(self.expire(cutoff_ms)?)
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        Ok(self.wipe_all()?)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.entries,
            bytes: self.size_bytes(),
        }
    }
}

impl Drop for RocksDedupStore {
    fn drop(&mut self) {
        // RocksDB also flushes unpersisted memtables when it closes; flushing here makes the
        // "closed store keeps everything applied" guarantee explicit and reports failures.
        if self.flush_on_drop {
            if let Err(err) = self.flush() {
                tracing::warn!(%err, "flush on close failed; the store will restore the tail");
            }
        }
    }
}

impl fmt::Debug for RocksDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDedupStore")
            .field("path", &self.path)
            .field("identity", &self.identity)
            .field("checkpoint", &self.checkpoint)
            .field("entries", &self.entries)
            .field("retention_cutoff", &self.retention_cutoff())
            .finish_non_exhaustive()
    }
}

/// Makes sure `path` is a directory (creating it if needed); a file there is corruption.
pub(crate) fn prepare_dir(path: &Path) -> Result<(), StateError> {
    if path.exists() && !path.is_dir() {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            reason: "it is a file, not a directory".into(),
        });
    }
    std::fs::create_dir_all(path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        action: "create the store directory",
        source,
    })
}

/// Deletes a store directory (or the file in its place) before it is recreated empty.
pub(crate) fn remove_store_dir(path: &Path) -> Result<(), StateError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|source| StateError::Io {
        path: path.to_owned(),
        action: "delete the corrupt store directory",
        source,
    })
}

/// A key of the meta column family.
pub(crate) fn read_meta(db: &Db, path: &Path, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
    let meta = db
        .cf_handle(META_COLUMN_FAMILY)
        .expect("meta column family is opened with the store");
    db.get_cf(meta, key).map_err(|source| StateError::Rocks {
        path: path.to_owned(),
        action: "read meta",
        source,
    })
}

/// The checkpoint in the meta column family; one of another changelog is an error.
pub(crate) fn read_checkpoint(
    db: &Db,
    path: &Path,
    identity: &StoreIdentity,
) -> Result<Option<ChangelogCheckpoint>, StateError> {
    let Some(bytes) = read_meta(db, path, CHECKPOINT_KEY)? else {
        return Ok(None);
    };
    let cp = decode_checkpoint(&bytes).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: format!("unreadable checkpoint: {e}"),
    })?;
    if !identity.owns(&cp) {
        return Err(StateError::WrongIdentity {
            path: path.to_owned(),
            expected: identity.clone(),
            found: StoreIdentity::of_checkpoint(&cp),
        });
    }
    Ok(Some(cp))
}

/// Sorts a failed open into "wipe and restore" and "someone else's problem": a lock held by a
/// live store must never lead to deleting its directory.
pub(crate) fn classify_open_error(path: &Path, err: rocksdb::Error) -> StateError {
    let message = err.to_string();
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    match err.kind() {
        ErrorKind::IOError
            if message.contains("While lock file")
                || message.contains("lock hold by current process") =>
        {
            StateError::Locked {
                path: path.to_owned(),
                reason: message,
            }
        }
        // Files named by CURRENT or the manifest are missing.
        ErrorKind::IOError if message.contains("No such file or directory") => corrupt(message),
        // Unreadable metadata, unknown format, foreign column families.
        ErrorKind::Corruption
        | ErrorKind::NotFound
        | ErrorKind::NotSupported
        | ErrorKind::InvalidArgument => corrupt(message),
        _ => StateError::Rocks {
            path: path.to_owned(),
            action: "open",
            source: err,
        },
    }
}

fn decode_count(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// An ID in a log line: hex, cut after 32 bytes (IDs may be long and are not UTF-8).
struct IdForLog<'a>(&'a [u8]);

impl fmt::Display for IdForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().take(32) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 32 {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}
