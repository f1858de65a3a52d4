//! Changelog benchmarks: encoding and decoding changelog values, and the restore rate from a
//! changelog held in memory.
//!
//! ```text
//! cargo bench -p exactly-benches --bench codec
//! ```
//!
//! The restore benchmark drives a real `Task` through its restore path
//! (`Task::restore_records`: decode every value, check retention, one store apply per batch)
//! with batches of 10 000 records, as the runtime's restore step hands them over after a
//! poll, into an empty store; 1M records (10M with `EXACTLY_BENCH_LARGE=1`). It excludes the
//! Kafka fetch, which the pipeline benchmark's restore measurement includes.

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use exactly_benches::fixtures::{
    changelog, count_label, large_enabled, now_ms, open_rocks, ChangelogRecord, NoopProcessor,
    BENCH_CHANGELOG,
};
use exactly_core::changelog::{decode_entry, encode_entry, encode_entry_into};
use exactly_core::{DedupStore, MemDedupStore, SeenEntry, SystemClock, Task, TaskConfig, TaskId};
use exactly_state::SharedRocksResources;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// Values per codec iteration.
const VALUES: usize = 1_000;
/// Changelog records per restore batch (the runtime polls up to this many per step).
const RESTORE_BATCH: usize = 10_000;

fn codec(c: &mut Criterion) {
    let now = now_ms();
    let entries: Vec<SeenEntry> = (0..VALUES as i64)
        .map(|i| SeenEntry {
            first_seen_ms: now + i,
            source_offset: 1_000_000 + i * 7,
        })
        .collect();
    let encoded: Vec<Vec<u8>> = entries.iter().map(encode_entry).collect();
    let mut group = c.benchmark_group("changelog");
    group.throughput(Throughput::Elements(VALUES as u64));
    let mut buf = Vec::with_capacity(16);
    group.bench_function("encode_entry_into", |b| {
        b.iter(|| {
            for e in &entries {
                encode_entry_into(black_box(e), &mut buf);
                black_box(&buf);
            }
        })
    });
    group.bench_function("encode_entry", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(encode_entry(black_box(e)));
            }
        })
    });
    group.bench_function("decode_entry", |b| {
        b.iter(|| {
            for v in &encoded {
                black_box(decode_entry(black_box(v)).expect("valid value"));
            }
        })
    });
    group.finish();
}

/// Replays `log` into `store` through a task's restore path; returns the store.
fn restore_into<S: DedupStore>(store: S, log: &[ChangelogRecord]) -> S {
    let mut task = Task::new(
        TaskId::new("bench-in", 0),
        BENCH_CHANGELOG,
        NoopProcessor,
        store,
        Arc::new(TaskConfig::default()),
    );
    let plan = task
        .restore_plan(0, log.len() as i64)
        .expect("restore plan");
    assert!(plan.wiped.is_none(), "an empty store needs no wipe");
    let clock = SystemClock;
    for chunk in log.chunks(RESTORE_BATCH) {
        task.restore_records(
            chunk
                .iter()
                .map(|(o, k, v)| (*o, k.as_slice(), Some(v.as_slice()))),
            &clock,
        )
        .expect("restore batch");
    }
    task.close()
}

fn restore(c: &mut Criterion) {
    let records: u64 = if large_enabled() {
        10_000_000
    } else {
        1_000_000
    };
    let log = changelog(records);
    let mut group = c.benchmark_group("restore");
    group.throughput(Throughput::Elements(records));
    // One iteration replays the whole changelog (about a second): ten flat samples.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(if large_enabled() { 120 } else { 12 }));
    group.bench_function(BenchmarkId::new("mem", count_label(records)), |b| {
        b.iter_batched(
            MemDedupStore::new,
            |store| restore_into(store, &log),
            BatchSize::PerIteration,
        )
    });
    let shared = SharedRocksResources::default();
    group.bench_function(BenchmarkId::new("rocks", count_label(records)), |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("temporary directory");
                let store = open_rocks(dir.path(), &shared, 0);
                (dir, store)
            },
            // The directory and the store are dropped after the measurement (closing flushes).
            |(dir, store)| (restore_into(store, &log), dir),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Modest times so `cargo bench -p exactly-benches` finishes in minutes on two cores.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec, restore
}
criterion_main!(benches);
