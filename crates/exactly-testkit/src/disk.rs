//! `DiskStore`: a [`MemDedupStore`] that outlives the simulated process, standing in for a
//! task's RocksDB directory across simulated crashes.

use exactly_core::{
    ChangelogCheckpoint, DedupStore, MemDedupStore, SeenEntry, StoreBatch, StoreError, StoreStats,
};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct DiskState {
    store: MemDedupStore,
    corrupt: bool,
    fail_next_apply: bool,
}

/// A shared handle to a simulated store directory. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct DiskStore {
    inner: Arc<Mutex<DiskState>>,
}

impl DiskStore {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding this lock is a test failure already; keep the data readable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the directory as corrupt: reads fail with `StoreError::Corrupt` until wiped.
    pub fn corrupt(&self) {
        self.lock().corrupt = true;
    }

    /// The next `apply` fails with an I/O error (a disk write failure).
    pub fn fail_next_apply(&self) {
        self.lock().fail_next_apply = true;
    }

    /// Overwrites the checkpoint (e.g. beyond the changelog end, or of another topic).
    pub fn set_checkpoint(&self, checkpoint: ChangelogCheckpoint) {
        let mut d = self.lock();
        let batch = StoreBatch {
            entries: Vec::new(),
            checkpoint,
        };
        d.store
            .apply(&batch)
            .expect("MemDedupStore::apply cannot fail");
    }

    /// Number of stored IDs.
    pub fn entries(&self) -> u64 {
        self.lock().store.stats().entries
    }

    /// Deletes everything (the directory was lost).
    pub fn lose(&self) {
        let mut d = self.lock();
        d.store = MemDedupStore::new();
        d.corrupt = false;
    }
}

impl DedupStore for DiskStore {
    fn get_many(&self, ids: &[&[u8]], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        let d = self.lock();
        if d.corrupt {
            return Err(StoreError::Corrupt("simulated corruption".into()));
        }
        d.store.get_many(ids, out)
    }
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        let mut d = self.lock();
        if std::mem::take(&mut d.fail_next_apply) {
            return Err(StoreError::Io("simulated disk write failure".into()));
        }
        if d.corrupt {
            return Err(StoreError::Corrupt("simulated corruption".into()));
        }
        d.store.apply(batch)
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        let d = self.lock();
        if d.corrupt {
            return Err(StoreError::Corrupt("simulated corruption".into()));
        }
        d.store.checkpoint()
    }
    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.lock().store.expire_before(cutoff_ms)
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        self.lose();
        Ok(())
    }
    fn stats(&self) -> StoreStats {
        self.lock().store.stats()
    }
}
