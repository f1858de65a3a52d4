//! Process-wide RocksDB memory budget and per-store tuning.

use rocksdb::{Cache, LruCacheOptions, WriteBufferManager};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Memory shared by every task store of a process: one LRU block cache, one write-buffer
/// manager, and one budget for the dedup stores' recent IDs.
///
/// Stores come and go with rebalances and each holds a RocksDB instance; giving each its own
/// cache and memtable budget would make memory grow with the number of assigned tasks. With
/// these shared, memory stays flat: data, index and filter blocks of all stores compete for one
/// cache, the write-buffer manager triggers flushes once all memtables together exceed their
/// budget, and a dedup store writes its recent IDs to disk once all stores' recent IDs
/// together exceed theirs. Cloning is cheap and shares the same resources.
#[derive(Clone)]
pub struct SharedRocksResources {
    pub(crate) block_cache: Cache,
    pub(crate) write_buffer_manager: WriteBufferManager,
    pub(crate) recent_ids: Arc<RecentIdsBudget>,
    block_cache_bytes: usize,
    write_buffer_bytes: usize,
}

/// How many recent IDs all dedup stores of a process hold in memory together, at most (see
/// [`RocksDedupStore`](crate::RocksDedupStore)).
#[derive(Debug)]
pub(crate) struct RecentIdsBudget {
    limit: usize,
    held: AtomicUsize,
}

impl RecentIdsBudget {
    /// Records that a store holds `n` more recent IDs.
    pub(crate) fn add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }
    /// Records that a store holds `n` fewer recent IDs.
    pub(crate) fn remove(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
    /// Whether the stores together hold more than the budget.
    pub(crate) fn exceeded(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl SharedRocksResources {
    /// Default block cache capacity: 64 MiB.
    pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 64 << 20;
    /// Default memtable budget across all stores: 64 MiB.
    pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 64 << 20;
    /// Default budget of recent IDs across all dedup stores: 1M IDs, about 48 MiB.
    pub const DEFAULT_RECENT_IDS: usize = 1 << 20;

    /// A block cache of `block_cache_bytes`, a memtable budget of `write_buffer_bytes` and the
    /// default budget of recent IDs.
    ///
    /// The memtable budget is a flush trigger, not a stall: a stream thread is never blocked
    /// waiting for another store's flush.
    pub fn new(block_cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        Self::with_recent_ids(
            block_cache_bytes,
            write_buffer_bytes,
            Self::DEFAULT_RECENT_IDS,
        )
    }

    /// [`new`](Self::new) with a budget of `recent_ids` IDs that the dedup stores of the
    /// process hold in memory together before they write them to disk.
    pub fn with_recent_ids(
        block_cache_bytes: usize,
        write_buffer_bytes: usize,
        recent_ids: usize,
    ) -> Self {
        Self {
            block_cache: lru_cache(block_cache_bytes),
            write_buffer_manager: WriteBufferManager::new_write_buffer_manager(
                write_buffer_bytes,
                false,
            ),
            recent_ids: Arc::new(RecentIdsBudget {
                limit: recent_ids,
                held: AtomicUsize::new(0),
            }),
            block_cache_bytes,
            write_buffer_bytes,
        }
    }

    /// Recent IDs the dedup stores of the process hold in memory together.
    pub fn recent_ids_held(&self) -> usize {
        self.recent_ids.held()
    }

    /// Bytes currently held by the block cache (all stores together).
    pub fn block_cache_usage(&self) -> usize {
        self.block_cache.get_usage()
    }

    /// Bytes currently held by memtables (all stores together).
    pub fn write_buffer_usage(&self) -> usize {
        self.write_buffer_manager.get_usage()
    }
}

impl Default for SharedRocksResources {
    fn default() -> Self {
        Self::new(
            Self::DEFAULT_BLOCK_CACHE_BYTES,
            Self::DEFAULT_WRITE_BUFFER_BYTES,
        )
    }
}

impl fmt::Debug for SharedRocksResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRocksResources")
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("recent_ids", &self.recent_ids.limit)
            .finish()
    }
}

/// Tuning of one store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreOptions {
    /// Write a state store without RocksDB's write-ahead log (default `true`).
    ///
    /// Safe because the changelog is the source of truth and the checkpoint is written in the
    /// same batch as the entries: after a crash the store may have lost its latest batches,
    /// which only means it is behind the changelog and the restore replays the tail. See
    /// [`RocksKvStore`](crate::RocksKvStore) for why entries and checkpoint still stay
    /// consistent. (A dedup store writes its IDs as ingested files and needs no log.)
    pub disable_wal: bool,
    /// Bloom filter bits per key of the ids column family (default 10, about 1% false
    /// positives). Most lookups are misses, which the filter answers without reading data
    /// blocks. `0.0` disables the filter.
    pub bloom_bits: f64,
    /// Recent IDs a dedup store holds in memory before it writes them to disk as one sorted
    /// file (default 224 Ki: seven eighths of 256 Ki, the most a hash table of 2¹⁸ slots
    /// takes, 8.4 MiB); it writes them earlier when the stores of the process together hold
    /// more than their shared budget ([`SharedRocksResources::with_recent_ids`]).
    pub recent_ids: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            disable_wal: true,
            bloom_bits: 10.0,
            recent_ids: 224 << 10,
        }
    }
}

/// Smallest shard of the block cache. RocksDB's own choice (shards of at least 512 KiB, up to
/// 64) gives a 64 MiB cache 1 MiB shards, from which a single large block (a full filter or
/// index block of a big SST) evicts everything else; fewer, larger shards keep the hot
/// metadata blocks resident at the cost of more lock sharing between a handful of stream
/// threads.
const MIN_CACHE_SHARD_BYTES: usize = 8 << 20;

fn lru_cache(capacity: usize) -> Cache {
    let shards = (capacity / MIN_CACHE_SHARD_BYTES).max(1);
    let shard_bits = (usize::BITS - 1 - shards.leading_zeros()).min(6);
    let mut opts = LruCacheOptions::default();
    opts.set_capacity(capacity);
    opts.set_num_shard_bits(shard_bits as i32);
    Cache::new_lru_cache_opts(&opts)
}
