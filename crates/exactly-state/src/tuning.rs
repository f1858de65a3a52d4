//! RocksDB options of a task store: shared memory budget, bloom filters, compression, the
//! retention compaction filter, and atomic flushes.

use crate::layout::decode_stored_entry;
use crate::resources::{SharedRocksResources, StoreOptions};
use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, BlockBasedTablePinningTier, DBCompressionType, DataBlockIndexType, Options,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Memtable size of a state store's column family. Kept well below RocksDB's 64 MiB default
/// because a process holds one memtable per assigned task and store and each allocates its
/// arena in blocks of 1/8 of this size; the shared write-buffer manager bounds the total anyway.
const STATE_WRITE_BUFFER_BYTES: usize = 16 << 20;

/// Memtable size of the ids column family: IDs arrive as ingested files, so its memtable only
/// holds the deletes of expiry and wipes.
const IDS_WRITE_BUFFER_BYTES: usize = 4 << 20;

/// Memtable size of the meta column family: it holds two small keys, rewritten on every apply.
const META_WRITE_BUFFER_BYTES: usize = 1 << 20;

pub(crate) fn db_options(shared: &SharedRocksResources) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Entries and checkpoint must reach disk together even without a WAL (see the type doc).
    opts.set_atomic_flush(true);
    opts.set_write_buffer_manager(&shared.write_buffer_manager);
    // The write-ahead log holds only meta writes and deletes (IDs arrive as files, a state
    // store writes without it by default), yet RocksDB preallocates its file by the write
    // buffer budget (64 MiB of disk per store while open) and the manifest by 4 MiB: both are
    // kept small. The unused default column family gets a small memtable too.
    opts.set_write_buffer_size(1 << 20);
    opts.set_max_total_wal_size(4 << 20);
    opts.set_manifest_preallocation_size(64 << 10);
    // Every task directory gets RocksDB's info log; keep it small.
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    opts
}

pub(crate) fn table_options(shared: &SharedRocksResources) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&shared.block_cache);
    // Index and filter blocks live in the shared cache too, or they would grow with the data
    // outside any budget; L0's stay pinned because every lookup consults them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

pub(crate) fn ids_cf_options(
    shared: &SharedRocksResources,
    options: &StoreOptions,
    retention_cutoff: Arc<AtomicI64>,
) -> Options {
    let mut table = table_options(shared);
    if options.bloom_bits > 0.0 {
        // Whole-key bloom filters: most lookups are misses, answered without a data block.
        table.set_bloom_filter(options.bloom_bits, false);
        table.set_whole_key_filtering(true);
        table.set_optimize_filters_for_memory(true);
        // One whole filter (and index) per SST, pinned in the shared cache: a miss costs one
        // probe per file. Partitioned filters cost a binary search of the partition index
        // per key and file first, which made up half of a miss (1.4 M/s against 4.2 M/s in
        // `get_many_500/miss` at 1M IDs); the filters of 10M IDs take about 12 MiB.
        table.set_unpartitioned_pinning_tier(BlockBasedTablePinningTier::All);
    }
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);

    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    // 16 random key bytes and two integers per entry gain little from compression, and every
    // lookup that finds an ID would pay for decompressing its block (without it, `hit`
    // lookups at 10M IDs ran 2.8 times as fast: 248 k/s against 88 k/s).
    opts.set_compression_type(DBCompressionType::None);
    opts.set_write_buffer_size(IDS_WRITE_BUFFER_BYTES);
    opts.set_compaction_filter(
        "exactly-dedup-retention",
        move |_level: u32, _id: &[u8], value: &[u8]| {
            match decode_stored_entry(value) {
                Some(entry) if entry.first_seen_ms < retention_cutoff.load(Ordering::Relaxed) => {
                    Decision::Remove
                }
                // An undecodable value is kept so that lookups report the corruption.
                _ => Decision::Keep,
            }
        },
    );
    opts
}

pub(crate) fn meta_cf_options(shared: &SharedRocksResources) -> Options {
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table_options(shared));
    opts.set_write_buffer_size(META_WRITE_BUFFER_BYTES);
    opts
}

/// Options of a state store's data column family: shared cache, whole-key bloom filters for
/// point lookups, lz4. No compaction filter: TTL is enforced by the task (reads skip expired
/// entries, expiry deletes them).
pub(crate) fn state_cf_options(shared: &SharedRocksResources) -> Options {
    let mut table = table_options(shared);
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_size(STATE_WRITE_BUFFER_BYTES);
    opts
}
