//! Store fixtures shared by the criterion benchmarks and the pipeline's memory measurement:
//! how many IDs to store, filling a store, opening a RocksDB store, an in-memory changelog.

use crate::ids::stored_id;
use exactly_core::changelog::{batch_record_key, encode_batch_into, encode_entry};
use exactly_core::{
    ChangelogCheckpoint, Context, DedupStore, IdKey, ProcessError, Processor, Record, SeenEntry,
    StoreBatch,
};
use exactly_state::{RocksDedupStore, SharedRocksResources, StoreIdentity};
use std::ops::Range;
use std::path::Path;

/// Set to `1` to also run the store benchmarks at 10M stored IDs (filling and compacting a
/// 10M-ID RocksDB store takes minutes on two cores, so it is off by default).
pub const BENCH_LARGE_ENV: &str = "BENCH_LARGE";

/// Changelog topic named in the checkpoints of benchmark stores.
pub const BENCH_CHANGELOG: &str = "bench-in-dedup-changelog";

/// Whether [`BENCH_LARGE_ENV`] asks for the large store sizes.
pub fn large_enabled() -> bool {
    std::env::var(BENCH_LARGE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Store sizes (stored IDs) the store benchmarks run at: 1M, plus 10M with
/// `BENCH_LARGE=1`.
pub fn stored_id_counts() -> Vec<u64> {
    if large_enabled() {
        vec![1_000_000, 10_000_000]
    } else {
        vec![1_000_000]
    }
}

/// `1M`, `10M`, `250k`, ...: a count for benchmark names and tables.
pub fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The identity of benchmark store `partition`.
pub fn bench_identity(partition: i32) -> StoreIdentity {
    StoreIdentity::new(BENCH_CHANGELOG, partition)
}

/// A checkpoint of the benchmark changelog.
pub fn bench_checkpoint(partition: i32, next_offset: i64) -> ChangelogCheckpoint {
    ChangelogCheckpoint {
        topic: BENCH_CHANGELOG.to_owned(),
        partition,
        next_offset,
    }
}

/// Records [`stored_id`]`(n)` for every `n` in `range`, `batch` IDs per [`DedupStore::apply`]
/// (as commits do), first seen now, into a store of partition 0.
pub fn fill<S: DedupStore>(store: &mut S, range: Range<u64>, batch: usize) {
    fill_partition(store, 0, range, batch);
}

/// [`fill`] for a store of `partition`.
pub fn fill_partition<S: DedupStore>(
    store: &mut S,
    partition: i32,
    range: Range<u64>,
    batch: usize,
) {
    let first_seen_ms = now_ms();
    let mut next = range.start;
    while next < range.end {
        let end = (next + batch as u64).min(range.end);
        let entries = (next..end)
            .map(|n| {
                (
                    IdKey::of(&stored_id(n)),
                    SeenEntry {
                        first_seen_ms,
                        source_offset: n as i64,
                    },
                )
            })
            .collect();
        store
            .apply(&StoreBatch {
                entries,
                checkpoint: bench_checkpoint(partition, end as i64),
            })
            .expect("a fresh benchmark store accepts writes");
        next = end;
    }
}

/// Opens the RocksDB store of benchmark partition `partition` in `dir` with default options.
pub fn open_rocks(dir: &Path, shared: &SharedRocksResources, partition: i32) -> RocksDedupStore {
    RocksDedupStore::open(dir, shared, &bench_identity(partition))
        .expect("a benchmark store opens in its own temporary directory")
}

/// One changelog record as the restore consumer hands it over: offset, key (the ID), value.
pub type ChangelogRecord = (i64, Vec<u8>, Vec<u8>);

/// IDs per dedup changelog record in [`changelog`]: a transaction of the runtime's default
/// 10,000 records over 4 tasks.
pub const IDS_PER_CHANGELOG_RECORD: u64 = 2_500;

/// A dedup changelog holding IDs [`stored_id`]`(0..n)`, first seen now, as the runtime writes
/// it: one record per [`IDS_PER_CHANGELOG_RECORD`] IDs (one task's share of a transaction).
pub fn changelog(n: u64) -> Vec<ChangelogRecord> {
    let first_seen_ms = now_ms();
    let mut value = Vec::new();
    (0..n.div_ceil(IDS_PER_CHANGELOG_RECORD))
        .map(|r| {
            let ids = r * IDS_PER_CHANGELOG_RECORD..((r + 1) * IDS_PER_CHANGELOG_RECORD).min(n);
            let entries: Vec<(IdKey, SeenEntry)> = ids
                .map(|i| {
                    (
                        IdKey::of(&stored_id(i)),
                        SeenEntry {
                            first_seen_ms,
                            source_offset: i as i64,
                        },
                    )
                })
                .collect();
            encode_batch_into(entries.into_iter(), &mut value);
            (r as i64, batch_record_key(&value).to_vec(), value.clone())
        })
        .collect()
}

/// The same IDs as [`changelog`] in the per-ID format of earlier versions (key = the raw ID,
/// one record each), which restores still read.
pub fn per_id_changelog(n: u64) -> Vec<ChangelogRecord> {
    let first_seen_ms = now_ms();
    (0..n)
        .map(|i| {
            let value = encode_entry(&SeenEntry {
                first_seen_ms,
                source_offset: i as i64,
            });
            (i as i64, stored_id(i).to_vec(), value)
        })
        .collect()
}

/// A processor that does nothing; the restore benchmark drives a real `Task` through its
/// restore path, which needs one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopProcessor;

impl Processor for NoopProcessor {
    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exactly_core::MemDedupStore;

    #[test]
    fn fill_stores_every_id_of_the_range() {
        let mut store = MemDedupStore::new();
        fill(&mut store, 10..1_010, 300);
        assert_eq!(store.stats().entries, 1_000);
        assert!(store.get(&IdKey::of(&stored_id(10))).unwrap().is_some());
        assert!(store.get(&IdKey::of(&stored_id(9))).unwrap().is_none());
        assert_eq!(
            store.checkpoint().unwrap(),
            Some(bench_checkpoint(0, 1_010))
        );
    }

    #[test]
    fn count_labels() {
        assert_eq!(count_label(1_000_000), "1M");
        assert_eq!(count_label(250_000), "250k");
        assert_eq!(count_label(1_234), "1234");
    }
}
