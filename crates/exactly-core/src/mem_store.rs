//! `MemDedupStore`: the in-memory [`DedupStore`], used by the `TestDriver` and as the
//! reference implementation for the conformance suite.

use crate::id::{IdKey, IdKeyMap};
use crate::store::{
    ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError, StoreStats,
};

/// An in-memory dedup store. Cloning copies its contents (the `TestDriver` uses that to keep a
/// task's "disk" across simulated crashes).
#[derive(Debug, Clone, Default)]
pub struct MemDedupStore {
    entries: IdKeyMap<SeenEntry>,
    checkpoint: Option<ChangelogCheckpoint>,
}

impl MemDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl DedupStore for MemDedupStore {
    fn get_many(&self, ids: &[IdKey], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        out.clear();
        out.extend(ids.iter().map(|id| self.entries.get(id).copied()));
        Ok(())
    }

    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        self.entries.extend(batch.entries.iter().copied());
        self.checkpoint = Some(batch.checkpoint.clone());
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        Ok(self.checkpoint.clone())
    }

    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.first_seen_ms >= cutoff_ms);
        Ok((before - self.entries.len()) as u64)
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        *self = Self::default();
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let n = self.entries.len() as u64;
        StoreStats {
            entries: n,
            bytes: n * (IdKey::LEN + std::mem::size_of::<SeenEntry>()) as u64,
        }
    }
}
