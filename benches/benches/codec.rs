//! Changelog benchmarks: encoding and decoding dedup changelog values, and the restore rate
//! from a changelog held in memory.
//!
//! ```text
//! cargo bench -p exactly-benches --bench codec
//! ```
//!
//! `changelog/*` encode and decode the IDs of one task's share of a transaction
//! ([`IDS_PER_CHANGELOG_RECORD`] IDs, 32-character IDs as the pipeline's) in the format the
//! runtime writes (16-byte `IdKey`s with delta-coded entries), next to two others measured for
//! the choice: the same with the raw IDs length-prefixed instead of their keys, and the
//! per-ID records of earlier versions (one value per ID). The sizes are printed once.
//!
//! The restore benchmark drives a real `Task` through its restore path
//! (`Task::restore_records`: decode every value, check retention, one store apply per poll
//! batch) into an empty store, 1M IDs (10M with `BENCH_LARGE=1`), from the batch
//! format and from the per-ID format. It excludes the Kafka fetch, which the pipeline
//! benchmark's restore measurement includes.

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use exactly_benches::fixtures::{
    changelog, count_label, large_enabled, now_ms, open_rocks, per_id_changelog, ChangelogRecord,
    NoopProcessor, BENCH_CHANGELOG, IDS_PER_CHANGELOG_RECORD,
};
use exactly_benches::ids::{stored_id, ID_LEN};
use exactly_core::changelog::{decode_entry, decode_record, encode_batch_into, encode_entry_into};
use exactly_core::{
    DedupStore, IdKey, MemDedupStore, SeenEntry, SystemClock, Task, TaskConfig, TaskId,
};
use exactly_state::SharedRocksResources;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// Changelog records handed to one restore step (the runtime polls up to this many).
const RESTORE_BATCH: usize = 10_000;

/// The alternative to fixed-width keys: the raw IDs, each length-prefixed, with the same
/// delta-coded entries (bincode 2 throughout).
fn encode_raw_ids_into(entries: &[([u8; ID_LEN], SeenEntry)], buf: &mut Vec<u8>) {
    let config = bincode::config::standard();
    buf.clear();
    buf.push(2);
    let (mut seen, mut offset) = (0i64, 0i64);
    bincode::encode_into_std_write(entries.len() as u32, buf, config).expect("into a Vec");
    for (id, e) in entries {
        let deltas = (
            e.first_seen_ms.wrapping_sub(seen),
            e.source_offset.wrapping_sub(offset),
        );
        bincode::encode_into_std_write((&id[..], deltas), buf, config).expect("into a Vec");
        (seen, offset) = (e.first_seen_ms, e.source_offset);
    }
}

fn decode_raw_ids(value: &[u8], mut f: impl FnMut(IdKey, SeenEntry)) {
    let config = bincode::config::standard();
    let mut rest = &value[1..];
    let (count, used): (u32, usize) = bincode::decode_from_slice(rest, config).expect("valid");
    rest = &rest[used..];
    let (mut seen, mut offset) = (0i64, 0i64);
    for _ in 0..count {
        let ((id, (d_seen, d_offset)), used): ((&[u8], (i64, i64)), usize) =
            bincode::borrow_decode_from_slice(rest, config).expect("valid");
        rest = &rest[used..];
        seen = seen.wrapping_add(d_seen);
        offset = offset.wrapping_add(d_offset);
        // A store keyed by ID hash still hashes each raw ID on restore.
        f(
            IdKey::of(id),
            SeenEntry {
                first_seen_ms: seen,
                source_offset: offset,
            },
        );
    }
}

fn codec(c: &mut Criterion) {
    let now = now_ms();
    let n = IDS_PER_CHANGELOG_RECORD as usize;
    let raw: Vec<([u8; ID_LEN], SeenEntry)> = (0..n as u64)
        .map(|i| {
            let entry = SeenEntry {
                first_seen_ms: now + (i / 100) as i64,
                source_offset: 1_000_000 + i as i64,
            };
            (stored_id(i), entry)
        })
        .collect();
    let keyed: Vec<(IdKey, SeenEntry)> = raw.iter().map(|(id, e)| (IdKey::of(id), *e)).collect();
    let mut batch = Vec::new();
    encode_batch_into(keyed.iter().copied(), &mut batch);
    let mut raw_batch = Vec::new();
    encode_raw_ids_into(&raw, &mut raw_batch);
    let mut per_id_bytes = 0usize;
    let per_id: Vec<(Vec<u8>, Vec<u8>)> = raw
        .iter()
        .map(|(id, e)| {
            let mut v = Vec::new();
            encode_entry_into(e, &mut v);
            per_id_bytes += id.len() + v.len();
            (id.to_vec(), v)
        })
        .collect();
    eprintln!(
        "changelog bytes per ID (key + value), {n} IDs of {ID_LEN} bytes: batch of 16-byte keys {:.1}, batch of raw IDs {:.1}, one record per ID {:.1} (plus the broker's per-record overhead, about 20 bytes, and per-batch 60)",
        (batch.len() + IdKey::LEN) as f64 / n as f64,
        (raw_batch.len() + IdKey::LEN) as f64 / n as f64,
        per_id_bytes as f64 / n as f64,
    );

    let mut group = c.benchmark_group("changelog");
    group.throughput(Throughput::Elements(n as u64));
    let mut buf = Vec::new();
    group.bench_function("encode_batch/keys", |b| {
        b.iter(|| {
            encode_batch_into(black_box(&keyed).iter().copied(), &mut buf);
            black_box(&buf);
        })
    });
    group.bench_function("encode_batch/raw_ids", |b| {
        b.iter(|| {
            encode_raw_ids_into(black_box(&raw), &mut buf);
            black_box(&buf);
        })
    });
    group.bench_function("encode_per_id", |b| {
        b.iter(|| {
            for (_, e) in black_box(&raw) {
                encode_entry_into(e, &mut buf);
                black_box(&buf);
            }
        })
    });
    group.bench_function("decode_batch/keys", |b| {
        b.iter(|| {
            decode_record(&[], black_box(&batch), |k, e| {
                black_box((k, e));
            })
            .expect("valid value")
        })
    });
    group.bench_function("decode_batch/raw_ids", |b| {
        b.iter(|| {
            decode_raw_ids(black_box(&raw_batch), |k, e| {
                black_box((k, e));
            })
        })
    });
    group.bench_function("decode_per_id", |b| {
        b.iter(|| {
            for (id, v) in black_box(&per_id) {
                black_box((IdKey::of(id), decode_entry(v).expect("valid value")));
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
    let ids: u64 = if large_enabled() {
        10_000_000
    } else {
        1_000_000
    };
    let logs = [("", changelog(ids)), ("per-id-", per_id_changelog(ids))];
    let mut group = c.benchmark_group("restore");
    group.throughput(Throughput::Elements(ids));
    // One iteration replays the whole changelog (about a second): ten flat samples.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(if large_enabled() { 120 } else { 12 }));
    let shared = SharedRocksResources::default();
    for (format, log) in &logs {
        group.bench_function(
            BenchmarkId::new(format!("{format}mem"), count_label(ids)),
            |b| {
                b.iter_batched(
                    MemDedupStore::new,
                    |store| restore_into(store, log),
                    BatchSize::PerIteration,
                )
            },
        );
        group.bench_function(
            BenchmarkId::new(format!("{format}rocks"), count_label(ids)),
            |b| {
                b.iter_batched(
                    || {
                        let dir = tempfile::tempdir().expect("temporary directory");
                        let store = open_rocks(dir.path(), &shared, 0);
                        (dir, store)
                    },
                    // The directory and the store are dropped after the measurement (closing
                    // writes the recent IDs to disk).
                    |(dir, store)| (restore_into(store, log), dir),
                    BatchSize::PerIteration,
                )
            },
        );
    }
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
