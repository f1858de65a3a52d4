//! The dedup store contract: which message IDs a task has handled, and up to which
//! changelog offset the store reflects the changelog.
//!
//! The store is a cache of the changelog topic, which is the source of truth. The one
//! invariant every implementation upholds: entries and checkpoint move together
//! ([`DedupStore::apply`] is atomic), so the store is never ahead of the committed changelog.
//!
//! Stores hold [`IdKey`]s (16-byte hashes of the IDs), never the raw IDs.

use crate::id::IdKey;
use thiserror::Error;

/// What the store remembers about a handled message ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct SeenEntry {
    /// Wall-clock time (ms since the Unix epoch) when the ID was first handled. Drives TTL expiry.
    pub first_seen_ms: i64,
    /// Input offset of the record that carried the ID the first time.
    pub source_offset: i64,
}

/// The changelog position a store reflects: the next changelog offset to replay.
///
/// It names the changelog topic and partition so that a store directory copied from another
/// app or topic is detected instead of trusted.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ChangelogCheckpoint {
    /// Changelog topic the store was built from.
    pub topic: String,
    /// Changelog partition (equal to the input partition).
    pub partition: i32,
    /// Offset after the last changelog record reflected in the store.
    pub next_offset: i64,
}

/// One atomic change to a store: new entries plus the checkpoint they bring the store to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreBatch {
    /// IDs to record, with their entries. Later entries for the same ID win.
    pub entries: Vec<(IdKey, SeenEntry)>,
    /// Checkpoint written in the same atomic write as the entries.
    pub checkpoint: ChangelogCheckpoint,
}

/// Counters a store can report cheaply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of stored IDs (may be an estimate for on-disk stores).
    pub entries: u64,
    /// Bytes used on disk or in memory (estimate).
    pub bytes: u64,
}

/// Errors from a dedup store. `Corrupt` means the store must be wiped and restored.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store's data cannot be trusted (unreadable, wrong format, wrong identity).
    #[error("dedup store is corrupt: {0}; it will be wiped and restored from the changelog")]
    Corrupt(String),
    /// An I/O or engine error; the operation may succeed on retry or after a restore.
    #[error("dedup store I/O error: {0}")]
    Io(String),
}

/// A task's store of handled message IDs.
///
/// Implementations: `MemDedupStore` (here), `RocksDedupStore` (`exactly-state`). Both must pass
/// the conformance suite in `exactly-testkit`.
pub trait DedupStore: Send {
    /// Looks up many IDs at once (one `multi_get` for on-disk stores). `out` is cleared and
    /// receives one answer per ID, in order.
    fn get_many(&self, ids: &[IdKey], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError>;

    /// Looks up one ID.
    fn get(&self, id: &IdKey) -> Result<Option<SeenEntry>, StoreError> {
        let mut out = Vec::with_capacity(1);
        self.get_many(std::slice::from_ref(id), &mut out)?;
        Ok(out.pop().flatten())
    }

    /// Atomically records the entries and the checkpoint. Never partially applied.
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError>;

    /// [`apply`](Self::apply) for a batch of IDs the store is not expected to hold: the
    /// committing task's (it has just looked them up and found them absent or expired, with
    /// no write in between) and a restore's (the changelog past the store's checkpoint). A
    /// store may then skip its own existence check (an on-disk store saves a batched lookup
    /// per batch); its entry count may then count an ID twice (one re-seen after it expired,
    /// or one on disk past its checkpoint after a crash) until the next
    /// [`expire_before`](Self::expire_before) recounts.
    fn apply_unseen(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        self.apply(batch)
    }

    /// The checkpoint of the last applied batch, or `None` for an empty store.
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError>;

    /// Removes entries first seen before `cutoff_ms`; returns how many were removed (stores
    /// that expire lazily, e.g. in compaction, may return 0 and remove them later).
    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError>;

    /// Deletes every entry and the checkpoint (before a full restore).
    fn wipe(&mut self) -> Result<(), StoreError>;

    /// Size counters.
    fn stats(&self) -> StoreStats;
}

impl<S: DedupStore + ?Sized> DedupStore for Box<S> {
    fn get_many(&self, ids: &[IdKey], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        (**self).get_many(ids, out)
    }
    fn get(&self, id: &IdKey) -> Result<Option<SeenEntry>, StoreError> {
        (**self).get(id)
    }
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
    fn apply_unseen(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        (**self).apply_unseen(batch)
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        (**self).checkpoint()
    }
    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        (**self).expire_before(cutoff_ms)
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        (**self).wipe()
    }
    fn stats(&self) -> StoreStats {
        (**self).stats()
    }
}
