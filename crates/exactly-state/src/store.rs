//! `RocksDedupStore`: the [`DedupStore`] of one task, one RocksDB instance per task directory.

use crate::error::StateError;
use crate::layout::{
    decode_stored_entry, encode_stored_entry, StoreIdentity, CHECKPOINT_KEY, ENTRY_COUNT_KEY,
    FORMAT_KEY, IDS_COLUMN_FAMILY, META_COLUMN_FAMILY, STORE_FORMAT,
};
use crate::resources::{RecentIdsBudget, SharedRocksResources, StoreOptions};
use crate::tuning::{db_options, ids_cf_options, meta_cf_options};
use exactly_core::changelog::{decode_checkpoint, encode_checkpoint};
use exactly_core::id::IdKeyMap;
use exactly_core::{
    ChangelogCheckpoint, DedupStore, IdKey, SeenEntry, StoreBatch, StoreError, StoreStats,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, ErrorKind, IngestExternalFileOptions, Options,
    ReadOptions, SingleThreaded, SstFileWriter, WriteBatch, WriteOptions,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Spelled out rather than `rocksdb::DB`, whose thread mode changes with the crate's
/// `multi-threaded-cf` feature (enabled workspace-wide if any crate asks for it).
pub(crate) type Db = rocksdb::DBWithThreadMode<SingleThreaded>;

/// Deletes per write batch when expiring, so expiring millions of IDs needs bounded memory.
const EXPIRE_CHUNK: usize = 10_000;

/// The fewest recent IDs a store writes to disk because the process's shared budget is full
/// (fewer would make many tiny files).
const MIN_BUDGET_SPILL: usize = 16 << 10;

/// The file a store writes its recent IDs to before RocksDB takes it in.
const SPILL_FILE: &str = "recent-ids.sst";

/// The RocksDB dedup store of one task.
///
/// # Two tiers
///
/// IDs applied recently live in memory (`recent`, a hash table keyed by [`IdKey`]); when
/// there are [`StoreOptions::recent_ids`] of them, or the stores of the process together hold
/// more than their shared budget, the store sorts them, writes them to one SST file and has
/// RocksDB ingest it into the `ids` column family, then records the checkpoint they bring the
/// store to. A lookup asks the recent IDs first, then RocksDB (one sorted `multi_get`, mostly
/// answered by bloom filters). So an ID costs a hash insert and its share of one sequential
/// file write, where a RocksDB write costs a skip-list insert into a memtable that a flush
/// writes out again later.
///
/// # What survives a crash
///
/// The checkpoint on disk is the one of the last file ingested, and it is written only after
/// the file is in (ingestion is durable once it returns): the disk always holds every ID its
/// checkpoint covers. The recent IDs are lost with the process, which only leaves the store
/// behind its changelog, never ahead of it: the restore replays the tail from the checkpoint.
/// Dropping the store (a task closed or moved, a graceful stop) writes the recent IDs to disk,
/// so a restart restores nothing. Meta writes (checkpoint, count) go through the write-ahead
/// log; IDs never pass through a memtable.
///
/// # Layout
///
/// See [`crate::layout`]: column family `ids` maps each [`IdKey`] to its fixed-width entry;
/// column family `meta` holds the checkpoint, the exact entry count and the format version.
/// A directory of an older format is reported [`StateError::Corrupt`], so that
/// [`open_or_recreate`](Self::open_or_recreate) wipes it and the task restores it from the
/// changelog.
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
    /// Options of the ids column family, for the spill files' table format and filters.
    ids_options: Options,
    write_options: WriteOptions,
    /// Entries first seen before this are expired. Only ever raised. Shared with the
    /// compaction filter, which runs on RocksDB's background threads.
    retention_cutoff: Arc<AtomicI64>,
    /// IDs applied since the last spill (an ID may be on disk too; this entry is newer).
    recent: IdKeyMap<SeenEntry>,
    recent_max: usize,
    budget: Arc<RecentIdsBudget>,
    /// The checkpoint of the last applied batch (recent IDs included).
    checkpoint: Option<ChangelogCheckpoint>,
    /// The checkpoint on disk: the one of the last spill.
    durable: Option<ChangelogCheckpoint>,
    /// Distinct IDs in the store (recent ones included), as of its last write (background
    /// compaction may have dropped expired ones since; the next `expire_before` recounts).
    entries: u64,
    /// `entries` as of the last spill (what the disk's count says).
    durable_entries: u64,
}

impl RocksDedupStore {
    /// Opens (creating if needed) the store in `path` with default [`StoreOptions`].
    ///
    /// Fails with [`StateError::Corrupt`] if the directory cannot be read as a store (or was
    /// written in an older format), with [`StateError::WrongIdentity`] if its checkpoint names
    /// another changelog than `identity`, and with [`StateError::Locked`] if another open
    /// store holds it.
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
        let ids_options = ids_cf_options(shared, options, Arc::clone(&retention_cutoff));
        let cfs = [
            ColumnFamilyDescriptor::new(IDS_COLUMN_FAMILY, ids_options.clone()),
            ColumnFamilyDescriptor::new(META_COLUMN_FAMILY, meta_cf_options(shared)),
        ];
        let db = Db::open_cf_descriptors(&db_options(shared), path, cfs)
            .map_err(|e| classify_open_error(path, e))?;

        let checkpoint = read_checkpoint(&db, path, identity)?;
        let format = read_meta(&db, path, FORMAT_KEY)?;
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
        match format.as_deref() {
            Some([STORE_FORMAT]) => {}
            // Nothing written yet: the first spill records the format.
            None if checkpoint.is_none() && entries == 0 => {}
            found => {
                return Err(StateError::Corrupt {
                    path: path.to_owned(),
                    reason: format!(
                        "written in store format {} (this version reads format {STORE_FORMAT}); the task restores it from the changelog",
                        found.map_or("1".to_owned(), |f| format!("{f:?}"))
                    ),
                })
            }
        }
        // A spill file left by a crash before its ingestion holds nothing the checkpoint
        // covers.
        let leftover = path.join(SPILL_FILE);
        if leftover.exists() {
            std::fs::remove_file(&leftover).map_err(|source| StateError::Io {
                path: path.to_owned(),
                action: "delete an unfinished spill file",
                source,
            })?;
        }

        Ok(Self {
            db,
            path: path.to_owned(),
            identity: identity.clone(),
            ids_options,
            write_options: WriteOptions::default(),
            retention_cutoff,
            recent: IdKeyMap::default(),
            recent_max: options.recent_ids.max(1),
            budget: Arc::clone(&shared.recent_ids),
            durable: checkpoint.clone(),
            checkpoint,
            entries,
            durable_entries: entries,
        })
    }

    /// Opens the store in `path`; if it is corrupt, of an older format or belongs to another
    /// changelog, deletes the directory (logged as a warning) and opens an empty store there.
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

    /// Writes the recent IDs to disk with their checkpoint, so that a crash afterwards loses
    /// nothing applied so far. Dropping the store does it too.
    pub fn flush(&mut self) -> Result<(), StateError> {
        self.spill()
    }

    /// The checkpoint a crash now would leave the store at (that of the last spill).
    pub fn durable_checkpoint(&self) -> Option<&ChangelogCheckpoint> {
        self.durable.as_ref()
    }

    /// IDs held in memory, not yet on disk.
    pub fn recent_ids(&self) -> usize {
        self.recent.len()
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

    fn corrupt_value(&self, id: &[u8], len: usize) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            reason: format!(
                "unreadable entry for id key {} ({len} bytes, expected 16)",
                IdForLog(id)
            ),
        }
    }

    fn write(&self, batch: WriteBatch, action: &'static str) -> Result<(), StateError> {
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(|e| self.rocks_error(action, e))
    }

    /// Looks `keys` up on disk (not in the recent IDs): one `multi_get` in key order.
    /// `answer(i, entry)` receives each key's entry by its index in `keys`.
    fn get_on_disk(
        &self,
        keys: &[IdKey],
        mut answer: impl FnMut(usize, Option<SeenEntry>),
    ) -> Result<(), StateError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.sort_unstable_by_key(|&i| keys[i as usize]);
        let found = self.db.batched_multi_get_cf(
            self.ids_cf(),
            order.iter().map(|&i| keys[i as usize].as_bytes()),
            true,
        );
        for (&i, value) in order.iter().zip(found) {
            let entry =
                match value.map_err(|e| self.rocks_error("multi_get", e))? {
                    None => None,
                    Some(bytes) => Some(decode_stored_entry(&bytes).ok_or_else(|| {
                        self.corrupt_value(keys[i as usize].as_bytes(), bytes.len())
                    })?),
                };
            answer(i as usize, entry);
        }
        Ok(())
    }

    /// Applies `batch`. `unseen`: the caller found every ID absent (or expired), so the lookup
    /// that keeps the entry count exact is skipped.
    fn apply_batch(&mut self, batch: &StoreBatch, unseen: bool) -> Result<(), StateError> {
        if !self.identity.owns(&batch.checkpoint) {
            return Err(StateError::ForeignCheckpoint {
                expected: self.identity.clone(),
                found: StoreIdentity::of_checkpoint(&batch.checkpoint),
            });
        }
        // The recent IDs' table never grows past the size `recent_ids` fits in: a batch that
        // would take it past them goes after the recent IDs are on disk.
        if !self.recent.is_empty() && self.recent.len() + batch.entries.len() > self.recent_max {
            self.spill()?;
        }
        let cutoff = self.retention_cutoff();
        let before = self.recent.len();
        if unseen {
            for (key, entry) in &batch.entries {
                if entry.first_seen_ms >= cutoff && self.recent.insert(*key, *entry).is_none() {
                    self.entries += 1;
                }
            }
        } else {
            self.apply_checked(&batch.entries, cutoff)?;
        }
        self.budget.add(self.recent.len().saturating_sub(before));
        self.budget.remove(before.saturating_sub(self.recent.len()));
        self.checkpoint = Some(batch.checkpoint.clone());
        let spill = self.recent.len() >= self.recent_max
            || (self.budget.exceeded() && self.recent.len() >= MIN_BUDGET_SPILL);
        if spill {
            self.spill()?;
        }
        Ok(())
    }

    /// Applies `entries` (the last entry of an ID wins), keeping the entry count exact: every
    /// ID is looked up on disk first. An entry already expired is not stored, and removes the
    /// ID wherever it is.
    fn apply_checked(
        &mut self,
        entries: &[(IdKey, SeenEntry)],
        cutoff: i64,
    ) -> Result<(), StateError> {
        let mut latest: IdKeyMap<SeenEntry> = IdKeyMap::default();
        latest.reserve(entries.len());
        latest.extend(entries.iter().copied());
        let keys: Vec<IdKey> = latest.keys().copied().collect();
        let mut on_disk = vec![false; keys.len()];
        self.get_on_disk(&keys, |i, entry| on_disk[i] = entry.is_some())?;
        let mut deletes = WriteBatch::default();
        for (key, on_disk) in keys.iter().zip(on_disk) {
            let entry = latest[key];
            let known = on_disk || self.recent.contains_key(key);
            if entry.first_seen_ms < cutoff {
                self.recent.remove(key);
                if on_disk {
                    deletes.delete_cf(self.ids_cf(), key.as_bytes());
                }
                if known {
                    self.entries = self.entries.saturating_sub(1);
                }
                continue;
            }
            self.recent.insert(*key, entry);
            if !known {
                self.entries += 1;
            }
        }
        if !deletes.is_empty() {
            // On disk before any checkpoint that covers them: a crash before the next spill
            // leaves the disk's count one high per delete at worst, until the next expiry.
            self.write(deletes, "apply")?;
        }
        Ok(())
    }

    /// Writes the recent IDs to disk: sorted into one SST file that RocksDB ingests, then the
    /// checkpoint they bring the disk to (see the type docs for why in that order).
    fn spill(&mut self) -> Result<(), StateError> {
        if self.checkpoint == self.durable && self.entries == self.durable_entries {
            return Ok(());
        }
        if !self.recent.is_empty() {
            let mut ids: Vec<(IdKey, SeenEntry)> =
                self.recent.iter().map(|(k, e)| (*k, *e)).collect();
            ids.sort_unstable_by_key(|(k, _)| *k);
            let file = self.path.join(SPILL_FILE);
            let mut writer = SstFileWriter::create(&self.ids_options);
            writer
                .open(&file)
                .map_err(|e| self.rocks_error("create a spill file", e))?;
            for (key, entry) in &ids {
                writer
                    .put(key.as_bytes(), encode_stored_entry(entry))
                    .map_err(|e| self.rocks_error("write a spill file", e))?;
            }
            writer
                .finish()
                .map_err(|e| self.rocks_error("finish a spill file", e))?;
            let mut ingest = IngestExternalFileOptions::default();
            ingest.set_move_files(true);
            self.db
                .ingest_external_file_cf_opts(self.ids_cf(), &ingest, vec![&file])
                .map_err(|e| self.rocks_error("ingest a spill file", e))?;
        }
        let mut meta = WriteBatch::default();
        let meta_cf = self.meta_cf();
        if let Some(cp) = &self.checkpoint {
            meta.put_cf(meta_cf, CHECKPOINT_KEY, encode_checkpoint(cp));
        }
        meta.put_cf(meta_cf, ENTRY_COUNT_KEY, self.entries.to_le_bytes());
        meta.put_cf(meta_cf, FORMAT_KEY, [STORE_FORMAT]);
        self.write(meta, "record the checkpoint")?;
        self.durable = self.checkpoint.clone();
        self.durable_entries = self.entries;
        self.clear_recent();
        Ok(())
    }

    /// Empties the recent IDs. A store that spilled well before its own limit (for the shared
    /// budget, or on close) gives its table's memory back; a busy one keeps it for the next
    /// round.
    fn clear_recent(&mut self) {
        let n = self.recent.len();
        self.budget.remove(n);
        self.recent.clear();
        if n < self.recent_max / 2 {
            self.recent.shrink_to_fit();
        }
    }

    fn expire(&mut self, cutoff_ms: i64) -> Result<u64, StateError> {
        // Raise the shared cutoff first: whatever the compaction filter may drop from now on,
        // this scan deletes and counts too, so the recount below stays exact.
        self.set_retention_cutoff(cutoff_ms);
        let cutoff = self.retention_cutoff();
        let before = self.recent.len();
        self.recent.retain(|_, e| e.first_seen_ms >= cutoff);
        let mut removed = (before - self.recent.len()) as u64;
        self.budget.remove(before - self.recent.len());
        let (ids_cf, meta_cf) = (self.ids_cf(), self.meta_cf());

        // IDs are not ordered by time, so this is a full scan; it reads through a consistent
        // view and does not fill the block cache with blocks the lookups do not need.
        let mut scan = ReadOptions::default();
        scan.fill_cache(false);
        let mut iter = self.db.raw_iterator_cf_opt(ids_cf, scan);
        iter.seek_to_first();
        let (mut kept_on_disk, mut also_recent) = (0u64, 0u64);
        // Deletes on disk, and those of IDs that do not live on in memory.
        let (mut disk_deleted, mut deleted) = (0u64, 0u64);
        let mut write = WriteBatch::default();
        while let Some((id, value)) = iter.item() {
            let entry =
                decode_stored_entry(value).ok_or_else(|| self.corrupt_value(id, value.len()))?;
            let recent = IdKey::from_slice(id).is_some_and(|k| self.recent.contains_key(&k));
            if entry.first_seen_ms < cutoff {
                write.delete_cf(ids_cf, id);
                // An ID seen again since keeps living in memory: only its old copy goes.
                deleted += u64::from(!recent);
                disk_deleted += 1;
                if write.len() >= EXPIRE_CHUNK {
                    let partial = self.durable_entries.saturating_sub(disk_deleted);
                    write.put_cf(meta_cf, ENTRY_COUNT_KEY, partial.to_le_bytes());
                    self.write(std::mem::take(&mut write), "expire")?;
                }
            } else {
                kept_on_disk += 1;
                also_recent += u64::from(recent);
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| self.rocks_error("expire scan", e))?;
        drop(iter);
        removed += deleted;
        // The scan saw every key on disk, so this also corrects a count left stale by
        // compactions. The disk's count covers the disk; recent IDs count once spilled.
        write.put_cf(meta_cf, ENTRY_COUNT_KEY, kept_on_disk.to_le_bytes());
        self.write(write, "expire")?;
        self.durable_entries = kept_on_disk;
        self.entries = kept_on_disk + self.recent.len() as u64 - also_recent;
        Ok(removed)
    }

    fn wipe_all(&mut self) -> Result<(), StateError> {
        let ids_cf = self.ids_cf();
        let mut write = WriteBatch::default();
        // The range ends at the largest key present, which gets a point delete. One batch:
        // entries, checkpoint and count go together.
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
        write.put_cf(meta_cf, ENTRY_COUNT_KEY, 0u64.to_le_bytes());
        write.put_cf(meta_cf, FORMAT_KEY, [STORE_FORMAT]);
        self.write(write, "wipe")?;
        self.clear_recent();
        self.entries = 0;
        self.durable_entries = 0;
        self.checkpoint = None;
        self.durable = None;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let mut bytes =
            (self.recent.len() * (IdKey::LEN + std::mem::size_of::<SeenEntry>())) as u64;
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
    fn get_many(&self, ids: &[IdKey], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        out.clear();
        if ids.is_empty() {
            return Ok(());
        }
        let cutoff = self.retention_cutoff();
        // Below the cutoff: expired, whether or not compaction has dropped it yet.
        let live = |e: SeenEntry| (e.first_seen_ms >= cutoff).then_some(e);
        let mut ask = Vec::new();
        let mut asked = Vec::new();
        out.extend(ids.iter().enumerate().map(|(i, key)| {
            let recent = self.recent.get(key).copied();
            if recent.is_none() {
                ask.push(*key);
                asked.push(i);
            }
            recent.and_then(live)
        }));
        self.get_on_disk(&ask, |j, entry| out[asked[j]] = entry.and_then(live))?;
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
        // A closed store keeps everything applied, so that the next open restores nothing.
        if let Err(err) = self.spill() {
            tracing::warn!(%err, "writing the recent IDs to disk on close failed; the store will restore the tail");
        }
        self.budget.remove(self.recent.len());
    }
}

impl fmt::Debug for RocksDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDedupStore")
            .field("path", &self.path)
            .field("identity", &self.identity)
            .field("checkpoint", &self.checkpoint)
            .field("durable", &self.durable)
            .field("entries", &self.entries)
            .field("recent", &self.recent.len())
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
