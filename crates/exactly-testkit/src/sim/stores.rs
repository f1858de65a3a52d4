//! Simulated state directories: stores that outlive the simulated process, standing in for a
//! task's RocksDB directories across simulated crashes, and the [`StoreFactory`] that binds
//! them to a process.

use super::process::SimProcess;
use exactly_core::engine::StoreFactory;
use exactly_core::state::KvWrite;
use exactly_core::{
    ChangelogCheckpoint, DedupStore, IdKey, KvStore, MemDedupStore, MemKvStore, SeenEntry,
    StoreBatch, StoreError, StoreSpec, StoreStats, TaskId,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A store's contents as its process sees them and as a crash leaves them. Writes reach the
/// disk in order, every `persist_every`-th one taking the ones before it along (a RocksDB
/// flush, a dedup store writing its recent IDs to disk); a process killed with writes not on
/// disk yet loses them, and the store opens at the last persisted write: behind its changelog,
/// never ahead of it. A store closed in an orderly way persists everything.
#[derive(Debug, Default)]
struct Volatile<T> {
    live: T,
    durable: T,
    unpersisted: u32,
    persist_every: u32,
}

impl<T: Clone> Volatile<T> {
    fn new(persist_every: u32, value: T) -> Self {
        Self {
            durable: value.clone(),
            live: value,
            unpersisted: 0,
            persist_every: persist_every.max(1),
        }
    }
    /// A write was made to `live`.
    fn written(&mut self) {
        self.unpersisted += 1;
        if self.unpersisted >= self.persist_every {
            self.persist();
        }
    }
    fn persist(&mut self) {
        if self.unpersisted > 0 {
            self.durable = self.live.clone();
            self.unpersisted = 0;
        }
    }
    /// The store is opened after its last holder died: what it had not persisted is gone.
    fn recover(&mut self) {
        if self.unpersisted > 0 {
            self.live = self.durable.clone();
            self.unpersisted = 0;
        }
    }
    /// Replaces both copies (a directory lost or damaged from outside).
    fn reset(&mut self, value: T) {
        self.durable = value.clone();
        self.live = value;
        self.unpersisted = 0;
    }
}

#[derive(Debug, Default)]
struct DiskState {
    store: Volatile<MemDedupStore>,
    corrupt: bool,
    fail_next_apply: bool,
}

/// A shared handle to a simulated store directory. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct DiskStore {
    inner: Arc<Mutex<DiskState>>,
}

impl DiskStore {
    /// An empty directory whose writes reach the disk every write.
    pub fn new() -> Self {
        Self::persisting_every(1)
    }

    /// An empty directory whose writes reach the disk every `n`-th write (see the type docs
    /// of the simulated disk).
    pub fn persisting_every(n: u32) -> Self {
        Self {
            inner: Arc::new(Mutex::new(DiskState {
                store: Volatile::new(n, MemDedupStore::new()),
                ..DiskState::default()
            })),
        }
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
        let mut store = d.store.live.clone();
        store
            .apply(&batch)
            .expect("MemDedupStore::apply cannot fail");
        d.store.reset(store);
    }

    /// Number of stored IDs.
    pub fn entries(&self) -> u64 {
        self.lock().store.live.stats().entries
    }

    /// The checkpoint a crash now would leave the store at.
    pub fn durable_checkpoint(&self) -> Option<ChangelogCheckpoint> {
        self.lock()
            .store
            .durable
            .checkpoint()
            .expect("MemDedupStore::checkpoint cannot fail")
    }

    /// Deletes everything (the directory was lost).
    pub fn lose(&self) {
        let mut d = self.lock();
        d.store.reset(MemDedupStore::new());
        d.corrupt = false;
    }

    fn close(&self) {
        self.lock().store.persist();
    }

    fn recover(&self) {
        self.lock().store.recover();
    }
}

impl DedupStore for DiskStore {
    fn get_many(&self, ids: &[IdKey], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        let d = self.lock();
        if d.corrupt {
            return Err(StoreError::Corrupt("simulated corruption".into()));
        }
        d.store.live.get_many(ids, out)
    }
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        let mut d = self.lock();
        if std::mem::take(&mut d.fail_next_apply) {
            return Err(StoreError::Io("simulated disk write failure".into()));
        }
        if d.corrupt {
            return Err(StoreError::Corrupt("simulated corruption".into()));
        }
        d.store.live.apply(batch)?;
        d.store.written();
        Ok(())
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        let d = self.lock();
        if d.corrupt {
            return Err(StoreError::Corrupt("simulated corruption".into()));
        }
        d.store.live.checkpoint()
    }
    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut d = self.lock();
        let n = d.store.live.expire_before(cutoff_ms)?;
        d.store.written();
        Ok(n)
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        let mut d = self.lock();
        d.store.live = MemDedupStore::new();
        d.store.written();
        d.corrupt = false;
        Ok(())
    }
    fn stats(&self) -> StoreStats {
        self.lock().store.live.stats()
    }
}

/// A simulated state store directory: a [`MemKvStore`] that outlives the simulated process,
/// with the same crash behaviour as [`DiskStore`].
#[derive(Debug, Clone, Default)]
pub struct DiskKvStore {
    inner: Arc<Mutex<Volatile<MemKvStore>>>,
}

impl DiskKvStore {
    /// An empty directory whose writes reach the disk every `n`-th write.
    pub fn persisting_every(n: u32) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Volatile::new(n, MemKvStore::new()))),
        }
    }
    fn lock(&self) -> MutexGuard<'_, Volatile<MemKvStore>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Number of stored entries.
    pub fn entries(&self) -> u64 {
        self.lock().live.stats().entries
    }
    fn close(&self) {
        self.lock().persist();
    }
    fn recover(&self) {
        self.lock().recover();
    }
    fn write<T>(
        &self,
        f: impl FnOnce(&mut MemKvStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut v = self.lock();
        let out = f(&mut v.live)?;
        v.written();
        Ok(out)
    }
}

impl KvStore for DiskKvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.lock().live.get(key)
    }
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.lock().live.scan(from, to, f)
    }
    fn apply(&mut self, writes: &[KvWrite], cp: &ChangelogCheckpoint) -> Result<(), StoreError> {
        DiskKvStore::write(self, |s| s.apply(writes, cp))
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        self.lock().live.checkpoint()
    }
    fn synced_ms(&self) -> Result<Option<i64>, StoreError> {
        self.lock().live.synced_ms()
    }
    fn mark_synced(&mut self, now_ms: i64) -> Result<(), StoreError> {
        DiskKvStore::write(self, |s| s.mark_synced(now_ms))
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        DiskKvStore::write(self, KvStore::wipe)
    }
    fn stats(&self) -> StoreStats {
        self.lock().live.stats()
    }
}

/// The state directory of a simulated instance: one [`DiskStore`] per task and one
/// [`DiskKvStore`] per task and state store. Clones share it; it outlives the process.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    /// Writes of each store reach the disk every this many (0 or 1: every write).
    persist_every: u32,
    dedup: Arc<Mutex<BTreeMap<(String, i32), DiskStore>>>,
    state: Arc<Mutex<BTreeMap<StateDir, DiskKvStore>>>,
    /// Which process holds each open directory (RocksDB's `LOCK`: released when the store
    /// closes or its process dies).
    locks: Arc<Mutex<BTreeMap<StateDir, Weak<SimProcess>>>>,
}

/// A store directory: (topic, partition, store name; `dedup` for the dedup store).
type StateDir = (String, i32, String);

impl SimDisk {
    /// An empty state directory whose stores write every write to disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state directory whose stores write to disk every `n`-th write, losing the
    /// writes since when their process is killed (see [`DiskStore::persisting_every`]).
    pub fn persisting_every(n: u32) -> Self {
        Self {
            persist_every: n,
            ..Self::default()
        }
    }

    /// The dedup store directory of the task of `topic`/`partition`.
    pub fn dedup(&self, topic: &str, partition: i32) -> DiskStore {
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| DiskStore::persisting_every(self.persist_every))
            .clone()
    }

    /// The directory of state store `store` of the task of `topic`/`partition`.
    pub fn state(&self, topic: &str, partition: i32, store: &str) -> DiskKvStore {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((topic.to_owned(), partition, store.to_owned()))
            .or_insert_with(|| DiskKvStore::persisting_every(self.persist_every))
            .clone()
    }

    /// Locks directory `dir` for `process`; fails while another live process holds it.
    fn lock_dir(&self, dir: &StateDir, process: &Arc<SimProcess>) -> Result<(), StoreError> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = locks.get(dir).and_then(Weak::upgrade) {
            if !Arc::ptr_eq(&holder, process) && !holder.is_killed() {
                return Err(StoreError::Io(format!(
                    "store directory {}-{}/{} is locked by another process ({})",
                    dir.0,
                    dir.1,
                    dir.2,
                    holder.name()
                )));
            }
        }
        locks.insert(dir.clone(), Arc::downgrade(process));
        Ok(())
    }

    fn unlock_dir(&self, dir: &StateDir, process: &Arc<SimProcess>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks
            .get(dir)
            .and_then(Weak::upgrade)
            .is_some_and(|h| Arc::ptr_eq(&h, process))
        {
            locks.remove(dir);
        }
    }

    /// The dedup store directories that exist.
    pub fn dedup_dirs(&self) -> Vec<((String, i32), DiskStore)> {
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A store that belongs to a simulated process: a write is an operation of the process (it may
/// be killed there), and a dead process changes nothing.
struct ProcessBound<S: SimDir> {
    disk: S,
    process: Arc<SimProcess>,
    /// The directory lock, released on close.
    lock: (SimDisk, StateDir),
}

/// What a simulated directory does when its store is closed.
trait SimDir {
    /// Closed by a live process: everything reaches the disk.
    fn close(&self);
}

impl SimDir for DiskStore {
    fn close(&self) {
        DiskStore::close(self);
    }
}

impl SimDir for DiskKvStore {
    fn close(&self) {
        DiskKvStore::close(self);
    }
}

impl<S: SimDir> Drop for ProcessBound<S> {
    fn drop(&mut self) {
        // A killed process's store is dropped whenever its engine goes, maybe after a new
        // process opened the directory: it changes nothing then.
        if !self.process.is_killed() {
            self.disk.close();
        }
        self.lock.0.unlock_dir(&self.lock.1, &self.process);
    }
}

impl<S: SimDir> ProcessBound<S> {
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut S) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let dies = self
            .process
            .begin_op("store write")
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let out = f(&mut self.disk);
        self.process
            .end_op(dies, "store write")
            .map_err(|e| StoreError::Io(e.to_string()))?;
        out
    }
    fn read(&self) -> Result<&S, StoreError> {
        if self.process.is_killed() {
            return Err(StoreError::Io("the process was killed".into()));
        }
        Ok(&self.disk)
    }
}

impl DedupStore for ProcessBound<DiskStore> {
    fn get_many(&self, ids: &[IdKey], out: &mut Vec<Option<SeenEntry>>) -> Result<(), StoreError> {
        self.read()?.get_many(ids, out)
    }
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        self.write(|d| d.apply(batch))
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        self.read()?.checkpoint()
    }
    fn expire_before(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.write(|d| d.expire_before(cutoff_ms))
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        self.write(DedupStore::wipe)
    }
    fn stats(&self) -> StoreStats {
        self.disk.stats()
    }
}

impl KvStore for ProcessBound<DiskKvStore> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read()?.get(key)
    }
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.read()?.scan(from, to, f)
    }
    fn apply(&mut self, writes: &[KvWrite], cp: &ChangelogCheckpoint) -> Result<(), StoreError> {
        self.write(|d| d.apply(writes, cp))
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        self.read()?.checkpoint()
    }
    fn synced_ms(&self) -> Result<Option<i64>, StoreError> {
        self.read()?.synced_ms()
    }
    fn mark_synced(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.write(|d| d.mark_synced(now_ms))
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        self.write(KvStore::wipe)
    }
    fn stats(&self) -> StoreStats {
        self.disk.stats()
    }
}

/// The [`StoreFactory`] of a simulated instance: its [`SimDisk`], bound to its process.
pub struct SimStores {
    disk: SimDisk,
    process: Arc<SimProcess>,
}

impl SimStores {
    /// The stores of `process` on `disk`.
    pub fn new(disk: SimDisk, process: Arc<SimProcess>) -> Self {
        Self { disk, process }
    }
}

impl StoreFactory for SimStores {
    fn open_dedup(
        &self,
        task: &TaskId,
        _changelog: &str,
    ) -> Result<(Box<dyn DedupStore>, Option<String>), StoreError> {
        let dir = (task.topic.to_string(), task.partition, "dedup".to_owned());
        self.disk.lock_dir(&dir, &self.process)?;
        let disk = self.disk.dedup(&task.topic, task.partition);
        disk.recover();
        Ok((
            Box::new(ProcessBound {
                disk,
                process: self.process.clone(),
                lock: (self.disk.clone(), dir),
            }),
            None,
        ))
    }

    fn open_state(
        &self,
        task: &TaskId,
        spec: &StoreSpec,
        _changelog: &str,
    ) -> Result<Box<dyn KvStore>, StoreError> {
        let dir = (task.topic.to_string(), task.partition, spec.name.clone());
        self.disk.lock_dir(&dir, &self.process)?;
        let disk = self.disk.state(&task.topic, task.partition, &spec.name);
        disk.recover();
        Ok(Box::new(ProcessBound {
            disk,
            process: self.process.clone(),
            lock: (self.disk.clone(), dir),
        }))
    }
}
