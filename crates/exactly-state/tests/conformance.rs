//! `RocksDedupStore` passes the store conformance suite of `exactly-testkit`.

use exactly_state::{RocksDedupStore, SharedRocksResources, StoreIdentity, StoreOptions};
use exactly_testkit::conformance::{run_all, run_persistent, CHANGELOG_PARTITION, CHANGELOG_TOPIC};

fn identity() -> StoreIdentity {
    StoreIdentity::new(CHANGELOG_TOPIC, CHANGELOG_PARTITION)
}

fn run_all_with(options: StoreOptions) {
    let root = tempfile::tempdir().expect("create temp dir");
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    let mut n = 0;
    run_all(|| {
        n += 1;
        let dir = root.path().join(format!("store-{n}"));
        RocksDedupStore::open_with(&dir, &shared, &identity(), &options).expect("open store")
    });
}

#[test]
fn rocks_store_passes_the_suite() {
    run_all_with(StoreOptions::default());
}

#[test]
fn rocks_store_writing_every_few_ids_to_disk_passes_the_suite() {
    // Batches straddle the recent IDs and the disk: every check sees both tiers.
    run_all_with(StoreOptions {
        recent_ids: 3,
        ..StoreOptions::default()
    });
}

#[test]
fn rocks_store_without_bloom_filter_passes_the_suite() {
    run_all_with(StoreOptions {
        bloom_bits: 0.0,
        ..StoreOptions::default()
    });
}

#[test]
fn rocks_store_passes_the_persistent_suite() {
    let root = tempfile::tempdir().expect("create temp dir");
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    let dir = root.path().join("store");
    run_persistent(|| RocksDedupStore::open(&dir, &shared, &identity()).expect("open store"));
}

#[test]
fn rocks_store_writing_every_few_ids_to_disk_passes_the_persistent_suite() {
    let root = tempfile::tempdir().expect("create temp dir");
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    let dir = root.path().join("store");
    let options = StoreOptions {
        recent_ids: 3,
        ..StoreOptions::default()
    };
    run_persistent(|| {
        RocksDedupStore::open_with(&dir, &shared, &identity(), &options).expect("open store")
    });
}
