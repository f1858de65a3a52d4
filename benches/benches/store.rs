//! Dedup store benchmarks: lookups (hit and miss) and inserts, batched and single, for
//! `MemDedupStore` and `RocksDedupStore` holding 1M IDs (and 10M with `BENCH_LARGE=1`).
//!
//! ```text
//! cargo bench -p exactly-benches --bench store
//! BENCH_LARGE=1 cargo bench -p exactly-benches --bench store
//! ```
//!
//! Every benchmark handles 500 IDs per iteration (the runtime looks up a poll batch at once)
//! and reports IDs per second. `lookup_then_insert` is the runtime's per-batch work: one
//! batched lookup of 500 IDs (10 % of them stored already), then one apply of the 450 new
//! ones, so its rate is "lookups + inserts per second" per record. Inserted IDs are expired
//! (unmeasured) whenever they exceed 20 % of the nominal size, so the store stays near it. The RocksDB store is flushed and
//! compacted after filling, like a store that has run for a while; its background flushes
//! and compactions run on RocksDB's own threads. `rocks` uses the runtime's default shared
//! block cache (64 MiB), `rocks-cache1g` a 1 GiB one, to show what a filter block that stays
//! cached is worth.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use exactly_benches::fixtures::{
    bench_checkpoint, count_label, fill, open_rocks, stored_id_counts, BENCH_LARGE_ENV,
};
use exactly_benches::ids::{absent_id, fresh_id, splitmix64, stored_id, ID_LEN};
use exactly_core::{DedupStore, IdKey, MemDedupStore, SeenEntry, StoreBatch};
use exactly_state::SharedRocksResources;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// IDs per benchmark iteration: the runtime's poll batches are of this order.
const BATCH: usize = 500;
/// Share of already stored IDs in `lookup_then_insert` (the pipeline's duplicate share).
const DUPLICATES_PER_BATCH: usize = BATCH / 10;
/// Distinct lookup batches cycled through (so lookups do not hit one cached block).
const LOOKUP_BATCHES: usize = 256;
/// IDs per apply while filling (a big restore batch).
const FILL_BATCH: usize = 10_000;

/// Batches of IDs.
type IdBatches = Vec<Vec<[u8; ID_LEN]>>;

/// IDs to look up: `LOOKUP_BATCHES` batches of `BATCH` random stored IDs, and as many of
/// absent ones.
fn lookup_sets(stored: u64) -> (IdBatches, IdBatches) {
    let hits = (0..LOOKUP_BATCHES)
        .map(|b| {
            (0..BATCH)
                .map(|i| stored_id(splitmix64((b * BATCH + i) as u64) % stored))
                .collect()
        })
        .collect();
    let misses = (0..LOOKUP_BATCHES)
        .map(|b| {
            (0..BATCH)
                .map(|i| absent_id((b * BATCH + i) as u64))
                .collect()
        })
        .collect();
    (hits, misses)
}

fn as_keys(batch: &[[u8; ID_LEN]]) -> Vec<IdKey> {
    batch.iter().map(|id| IdKey::of(id)).collect()
}

/// Inserts run with `first_seen_ms` = the current epoch (far below the fill's "now"), so
/// `expire_before(epoch + 1)` removes exactly the IDs inserted since the last expiry.
struct Inserts {
    next_fresh: u64,
    epoch: i64,
    checkpoint: i64,
    since_expiry: u64,
    /// Inserted IDs tolerated before they are expired: 20 % of the nominal size, so the
    /// store stays near it without a full expiry scan per sample.
    max_extra: u64,
}

impl Inserts {
    fn batch(&mut self, n: usize) -> StoreBatch {
        self.since_expiry += n as u64;
        let entries = (0..n)
            .map(|_| {
                self.next_fresh += 1;
                (
                    IdKey::of(&fresh_id(self.next_fresh)),
                    SeenEntry {
                        first_seen_ms: self.epoch,
                        source_offset: self.next_fresh as i64,
                    },
                )
            })
            .collect();
        self.checkpoint += n as i64;
        StoreBatch {
            entries,
            checkpoint: bench_checkpoint(0, self.checkpoint),
        }
    }

    /// Between iterations (not measured): once the inserted IDs exceed `max_extra`, expires
    /// them and starts a new epoch.
    fn settle<S: DedupStore>(&mut self, store: &mut S) {
        if self.since_expiry < self.max_extra {
            return;
        }
        self.epoch += 1;
        self.since_expiry = 0;
        store
            .expire_before(self.epoch)
            .expect("expiring benchmark inserts");
    }
}

fn bench_store<S: DedupStore>(c: &mut Criterion, kind: &str, stored: u64, store: &mut S) {
    let (hits, misses) = lookup_sets(stored);
    let hit_keys: Vec<Vec<IdKey>> = hits.iter().map(|b| as_keys(b)).collect();
    let miss_keys: Vec<Vec<IdKey>> = misses.iter().map(|b| as_keys(b)).collect();
    let mut group = c.benchmark_group(format!("store/{kind}/{}", count_label(stored)));
    group.throughput(Throughput::Elements(BATCH as u64));
    // Some iterations take milliseconds (single lookups in RocksDB): flat sampling keeps
    // ten samples within the measurement time.
    group.sampling_mode(SamplingMode::Flat);

    for (what, sets) in [("hit", &hit_keys), ("miss", &miss_keys)] {
        let mut out = Vec::with_capacity(BATCH);
        let mut i = 0;
        group.bench_function(BenchmarkId::new("get_many_500", what), |b| {
            b.iter(|| {
                i = (i + 1) % LOOKUP_BATCHES;
                store
                    .get_many(black_box(&sets[i]), &mut out)
                    .expect("lookup");
                black_box(&out);
            })
        });
        let mut i = 0;
        group.bench_function(BenchmarkId::new("get_single_x500", what), |b| {
            b.iter(|| {
                i = (i + 1) % LOOKUP_BATCHES;
                for id in &sets[i] {
                    black_box(store.get(black_box(id)).expect("lookup"));
                }
            })
        });
    }

    let mut inserts = Inserts {
        next_fresh: 0,
        epoch: 1,
        checkpoint: stored as i64,
        since_expiry: 0,
        max_extra: stored / 5,
    };
    group.bench_function("insert_batch_500", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                let batch = inserts.batch(BATCH);
                let started = Instant::now();
                store.apply(black_box(&batch)).expect("apply");
                measured += started.elapsed();
                inserts.settle(store);
            }
            measured
        })
    });
    group.bench_function("insert_single_x500", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                let batches: Vec<StoreBatch> = (0..BATCH).map(|_| inserts.batch(1)).collect();
                let started = Instant::now();
                for batch in &batches {
                    store.apply(black_box(batch)).expect("apply");
                }
                measured += started.elapsed();
                inserts.settle(store);
            }
            measured
        })
    });
    // The runtime's work per poll batch: look all IDs up at once, then (after the commit)
    // apply the new ones in one batch, as the committing task does (`apply_unseen`: the
    // lookup just found them absent).
    let mut out = Vec::with_capacity(BATCH);
    let mut round = 0usize;
    group.bench_function("lookup_then_insert_500", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                round = (round + 1) % LOOKUP_BATCHES;
                let new = inserts.batch(BATCH - DUPLICATES_PER_BATCH);
                let mut keys: Vec<IdKey> = new.entries.iter().map(|(id, _)| *id).collect();
                keys.extend_from_slice(&hit_keys[round][..DUPLICATES_PER_BATCH]);
                let started = Instant::now();
                store.get_many(black_box(&keys), &mut out).expect("lookup");
                store.apply_unseen(black_box(&new)).expect("apply");
                measured += started.elapsed();
                inserts.settle(store);
            }
            measured
        })
    });
    // The same with the IDs' keys computed from the raw IDs inside the measurement
    // (`IdKey::of`, BLAKE3), as a task does for each record: the whole per-record cost of
    // dedup on the stream thread.
    let mut round = 0usize;
    group.bench_function("hash_lookup_then_insert_500", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                round = (round + 1) % LOOKUP_BATCHES;
                let first = inserts.next_fresh + 1;
                let mut raw: Vec<[u8; ID_LEN]> = (first
                    ..first + (BATCH - DUPLICATES_PER_BATCH) as u64)
                    .map(fresh_id)
                    .collect();
                raw.extend_from_slice(&hits[round][..DUPLICATES_PER_BATCH]);
                let mut new = inserts.batch(BATCH - DUPLICATES_PER_BATCH);
                let started = Instant::now();
                let keys: Vec<IdKey> = black_box(&raw).iter().map(|id| IdKey::of(id)).collect();
                store.get_many(black_box(&keys), &mut out).expect("lookup");
                for (entry, key) in new.entries.iter_mut().zip(&keys) {
                    entry.0 = *key;
                }
                store.apply_unseen(black_box(&new)).expect("apply");
                measured += started.elapsed();
                inserts.settle(store);
            }
            measured
        })
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    if !exactly_benches::fixtures::large_enabled() {
        eprintln!("store benchmarks at 1M IDs; set {BENCH_LARGE_ENV}=1 to add 10M");
    }
    for stored in stored_id_counts() {
        let mut mem = MemDedupStore::new();
        fill(&mut mem, 0..stored, FILL_BATCH);
        bench_store(c, "mem", stored, &mut mem);
        drop(mem);

        // The runtime's default cache, and one large enough that a whole-SST filter block
        // fits in one of its shards (see docs/performance.md: with 64 MiB the LRU cache has
        // 64 shards of 1 MiB, smaller than the filter of a 1M-key SST, so filters are read
        // from the file on every lookup).
        for (kind, cache_bytes) in [
            ("rocks", SharedRocksResources::DEFAULT_BLOCK_CACHE_BYTES),
            ("rocks-cache1g", 1 << 30),
        ] {
            let dir = tempfile::tempdir().expect("temporary directory");
            let shared = SharedRocksResources::new(
                cache_bytes,
                SharedRocksResources::DEFAULT_WRITE_BUFFER_BYTES,
            );
            let mut rocks = open_rocks(dir.path(), &shared, 0);
            let started = Instant::now();
            fill(&mut rocks, 0..stored, FILL_BATCH);
            rocks.flush().expect("flush");
            rocks.compact();
            eprintln!(
                "filled and compacted a RocksDB store with {} IDs in {:.1} s",
                count_label(stored),
                started.elapsed().as_secs_f64()
            );
            bench_store(c, kind, stored, &mut rocks);
        }
    }
}

criterion_group! {
    name = benches;
    // Modest times so `cargo bench -p exactly-benches` finishes in minutes on two cores.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = stores
}
criterion_main!(benches);
