//! `MemDedupStore`: the in-memory [`DedupStore`], used by the `TestDriver` and as the
//! reference implementation for the conformance suite.

use crate::store::{
    ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError, StoreStats,
};
use std::collections::HashMap;

/// An in-memory dedup store. Cloning copies its contents (the `TestDriver` uses that to keep a
/// task's "disk" across simulated crashes).
#[derive(Debug, Clone, Default)]
pub struct MemDedupStore {
    entries: HashMap<Vec<u8>, SeenEntry>,
    checkpoint: Option<ChangelogCheckpoint>,
    id_bytes: u64,
}

impl MemDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl DedupStore for MemDedupStore {
    fn get_many(&self, ids: &[&[u8]], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        out.clear();
        out.extend(ids.iter().map(|id| self.entries.get(*id).copied()));
        Ok(())
    }

    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        for (id, entry) in &batch.entries {
            if self.entries.insert(id.clone(), *entry).is_none() {
                self.id_bytes += id.len() as u64;
            }
        }
        self.checkpoint = Some(batch.checkpoint.clone());
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        Ok(self.checkpoint.clone())
    }

    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let before = self.entries.len();
        let mut freed = 0u64;
        self.entries.retain(|id, e| {
            let keep = e.first_seen_ms >= cutoff_ms;
            if !keep {
                freed += id.len() as u64;
            }
            keep
        });
        self.id_bytes -= freed;
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
            bytes: self.id_bytes + n * std::mem::size_of::<SeenEntry>() as u64,
        }
    }
}
