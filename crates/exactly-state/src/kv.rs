//! `RocksKvStore`: the [`KvStore`] under one task's state store, one RocksDB instance per
//! task and store.

use crate::error::StateError;
use crate::layout::{
    StoreIdentity, CHECKPOINT_KEY, ENTRY_COUNT_KEY, META_COLUMN_FAMILY, SYNCED_KEY,
};
use crate::resources::{SharedRocksResources, StoreOptions};
use crate::store::{
    classify_open_error, prepare_dir, read_checkpoint, read_meta, remove_store_dir, Db,
};
use crate::tuning::{db_options, meta_cf_options, state_cf_options};
use exactly_core::changelog::encode_checkpoint;
use exactly_core::state::{KvStore, KvWrite};
use exactly_core::{ChangelogCheckpoint, StoreError, StoreStats};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, FlushOptions, IteratorMode, WriteBatch,
    WriteOptions,
};
use std::path::{Path, PathBuf};

/// Column family of a state store's entries: key = the processor's key bytes, value = the
/// changelog value (`exactly_core::state::encode_state_value`).
pub const STATE_COLUMN_FAMILY: &str = "state";

/// The directory of a state store: `{state_dir}/{app}/stores/{topic}-{partition}/{store}`.
///
/// ```
/// use std::path::Path;
/// let dir = exactly_state::state_store_dir(Path::new("/var/lib/exactly"), "billing", "payments", 3, "totals");
/// assert_eq!(dir, Path::new("/var/lib/exactly/billing/stores/payments-3/totals"));
/// ```
pub fn state_store_dir(
    state_dir: &Path,
    app: &str,
    topic: &str,
    partition: i32,
    store: &str,
) -> PathBuf {
    state_dir
        .join(app)
        .join("stores")
        .join(format!("{topic}-{partition}"))
        .join(store)
}

/// The RocksDB instance under one task's state store. Entries and checkpoint are written in
/// one `WriteBatch` with atomic flush across both column families (as in
/// [`RocksDedupStore`](crate::RocksDedupStore)), so the store never holds writes its
/// checkpoint does not cover, or the reverse.
pub struct RocksKvStore {
    db: Db,
    path: PathBuf,
    identity: StoreIdentity,
    write_options: WriteOptions,
    flush_on_drop: bool,
    checkpoint: Option<ChangelogCheckpoint>,
    synced_ms: Option<i64>,
    /// Keys in the store: kept in the meta column family with every apply (counted by a scan
    /// when a store written by an older version lacks it).
    entries: u64,
}

impl RocksKvStore {
    /// Opens the store in `path` for the changelog `identity`. A directory that cannot be read
    /// as a store, or that belongs to another changelog, is deleted and recreated empty (its
    /// task restores it from the changelog anyway).
    pub fn open(
        path: &Path,
        shared: &SharedRocksResources,
        identity: &StoreIdentity,
        options: &StoreOptions,
    ) -> Result<Self, StateError> {
        match Self::try_open(path, shared, identity, options) {
            Err(e) if e.requires_wipe() => {
                tracing::warn!(path = %path.display(), error = %e, "deleting state store directory; the task restores it from its changelog");
                remove_store_dir(path)?;
                Self::try_open(path, shared, identity, options)
            }
            other => other,
        }
    }

    fn try_open(
        path: &Path,
        shared: &SharedRocksResources,
        identity: &StoreIdentity,
        options: &StoreOptions,
    ) -> Result<Self, StateError> {
        prepare_dir(path)?;
        let cfs = [
            ColumnFamilyDescriptor::new(STATE_COLUMN_FAMILY, state_cf_options(shared)),
            ColumnFamilyDescriptor::new(META_COLUMN_FAMILY, meta_cf_options(shared)),
        ];
        let db = Db::open_cf_descriptors(&db_options(shared), path, cfs)
            .map_err(|e| classify_open_error(path, e))?;
        let checkpoint = read_checkpoint(&db, path, identity)?;
        let meta_i64 = |key: &[u8]| -> Result<Option<i64>, StateError> {
            match read_meta(&db, path, key)? {
                None => Ok(None),
                Some(bytes) => Ok(Some(i64::from_le_bytes(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StateError::Corrupt {
                            path: path.to_owned(),
                            reason: format!(
                                "unreadable meta key {:?}",
                                String::from_utf8_lossy(key)
                            ),
                        })?,
                ))),
            }
        };
        let synced_ms = meta_i64(SYNCED_KEY)?;
        let stored_count = meta_i64(ENTRY_COUNT_KEY)?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(options.disable_wal);
        let mut store = Self {
            db,
            path: path.to_owned(),
            identity: identity.clone(),
            write_options,
            flush_on_drop: options.disable_wal,
            checkpoint,
            synced_ms,
            entries: stored_count.map_or(0, |n| n.max(0) as u64),
        };
        if stored_count.is_none() {
            store.entries = store.count_entries()?;
        }
        Ok(store)
    }

    fn data_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(STATE_COLUMN_FAMILY)
            .expect("state column family is opened with the store")
    }

    fn meta_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(META_COLUMN_FAMILY)
            .expect("meta column family is opened with the store")
    }

    fn rocks_error(&self, action: &'static str, source: rocksdb::Error) -> StoreError {
        StateError::Rocks {
            path: self.path.clone(),
            action,
            source,
        }
        .into()
    }

    fn count_entries(&self) -> Result<u64, StateError> {
        let mut n = 0;
        let mut iter = self.db.raw_iterator_cf(self.data_cf());
        iter.seek_to_first();
        while iter.valid() {
            n += 1;
            iter.next();
        }
        iter.status().map_err(|source| StateError::Rocks {
            path: self.path.clone(),
            action: "count entries",
            source,
        })?;
        Ok(n)
    }

    /// Writes the memtables of both column families to disk in one atomic flush.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db
            .flush_cfs_opt(&[self.data_cf(), self.meta_cf()], &flush)
            .map_err(|e| self.rocks_error("flush", e))
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KvStore for RocksKvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.data_cf(), key)
            .map_err(|e| self.rocks_error("get", e))
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let iter = self
            .db
            .iterator_cf(self.data_cf(), IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks_error("scan", e))?;
            if to.is_some_and(|to| &*k >= to) || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        writes: &[KvWrite],
        checkpoint: &ChangelogCheckpoint,
    ) -> Result<(), StoreError> {
        if !self.identity.owns(checkpoint) {
            return Err(StateError::ForeignCheckpoint {
                expected: self.identity.clone(),
                found: StoreIdentity::of_checkpoint(checkpoint),
            }
            .into());
        }
        let data = self.data_cf();
        // The entry count needs to know which keys exist: one batched lookup.
        let keys: Vec<&[u8]> = writes.iter().map(|(k, _)| k.as_slice()).collect();
        let existing = self.db.batched_multi_get_cf(data, keys.iter(), false);
        let mut present = std::collections::HashMap::with_capacity(writes.len());
        for (k, found) in keys.iter().zip(existing) {
            let found = found.map_err(|e| self.rocks_error("multi_get", e))?;
            present.insert(*k, found.is_some());
        }
        let mut entries = self.entries as i64;
        let mut batch = WriteBatch::default();
        for (k, v) in writes {
            let was = present.insert(k.as_slice(), v.is_some()).unwrap_or(false);
            match v {
                Some(v) => batch.put_cf(data, k, v),
                None => batch.delete_cf(data, k),
            }
            entries += i64::from(v.is_some()) - i64::from(was);
        }
        let entries = entries.max(0) as u64;
        batch.put_cf(
            self.meta_cf(),
            CHECKPOINT_KEY,
            encode_checkpoint(checkpoint),
        );
        batch.put_cf(self.meta_cf(), ENTRY_COUNT_KEY, entries.to_le_bytes());
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(|e| self.rocks_error("apply", e))?;
        self.entries = entries;
        self.checkpoint = Some(checkpoint.clone());
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        Ok(self.checkpoint.clone())
    }

    fn synced_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.synced_ms)
    }

    fn mark_synced(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.meta_cf(), SYNCED_KEY, now_ms.to_le_bytes());
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(|e| self.rocks_error("record the synced time", e))?;
        self.synced_ms = Some(now_ms);
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        let data = self.data_cf();
        let mut batch = WriteBatch::default();
        let mut iter = self.db.raw_iterator_cf(data);
        iter.seek_to_last();
        if let Some(last) = iter.key() {
            batch.delete_range_cf(data, &[][..], last);
            batch.delete_cf(data, last);
        }
        iter.status()
            .map_err(|e| self.rocks_error("wipe scan", e))?;
        drop(iter);
        batch.delete_cf(self.meta_cf(), CHECKPOINT_KEY);
        batch.delete_cf(self.meta_cf(), SYNCED_KEY);
        batch.put_cf(self.meta_cf(), ENTRY_COUNT_KEY, 0u64.to_le_bytes());
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(|e| self.rocks_error("wipe", e))?;
        self.entries = 0;
        self.checkpoint = None;
        self.synced_ms = None;
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let mut bytes = 0;
        for cf in [self.data_cf(), self.meta_cf()] {
            for property in [
                "rocksdb.total-sst-files-size",
                "rocksdb.cur-size-all-mem-tables",
            ] {
                if let Ok(Some(n)) = self.db.property_int_value_cf(cf, property) {
                    bytes += n;
                }
            }
        }
        StoreStats {
            entries: self.entries,
            bytes,
        }
    }
}

impl Drop for RocksKvStore {
    fn drop(&mut self) {
        if self.flush_on_drop {
            if let Err(err) = self.flush() {
                tracing::warn!(%err, "state store flush on close failed; it is restored from its changelog on open anyway");
            }
        }
    }
}

impl std::fmt::Debug for RocksKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKvStore")
            .field("path", &self.path)
            .field("identity", &self.identity)
            .field("checkpoint", &self.checkpoint)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}
