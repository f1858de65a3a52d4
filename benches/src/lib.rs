//! Benchmarks of `exactly`: what the exactly-once guarantee costs, measured side by side with
//! a raw rdkafka baseline.
//!
//! - `benches/store.rs` and `benches/codec.rs` (criterion, `cargo bench -p exactly-benches`):
//!   dedup store lookups and inserts, batched and single, for `MemDedupStore` and
//!   `RocksDedupStore` at 1M stored IDs (10M with `BENCH_LARGE=1`); the changelog
//!   codec; the restore rate from a changelog held in memory.
//! - `src/bin/pipeline.rs` (`cargo run --release -p exactly-benches --bin pipeline`): the
//!   end-to-end benchmark against a broker: a raw consume→produce copy, `exactly` at least
//!   once, `exactly` exactly once and Quix Streams' deduplication recipe (`quix/dedup.py`) on
//!   the same data, plus restart time, restore rate and memory versus store size. It writes
//!   JSON under `target/bench/` and prints a Markdown table.
//!
//! This library holds what both share: deterministic message IDs ([`ids`]), store fixtures
//! ([`fixtures`]), process measurements from `/proc` ([`procfs`]) and the pipeline itself
//! ([`pipeline`]). See `docs/performance.md` for the commands and the latest results.
//!
//! ```
//! use exactly_benches::fixtures::{fill, stored_id_counts};
//! use exactly_benches::ids::stored_id;
//! use exactly_core::{DedupStore, IdKey, MemDedupStore};
//!
//! let mut store = MemDedupStore::new();
//! fill(&mut store, 0..1_000, 500);
//! assert!(store.get(&IdKey::of(&stored_id(999))).unwrap().is_some());
//! assert!(store.get(&IdKey::of(&stored_id(1_000))).unwrap().is_none());
//! assert!(stored_id_counts().contains(&1_000_000));
//! ```
#![warn(missing_docs)]

pub mod fixtures;
pub mod ids;
pub mod pipeline;
pub mod procfs;
