//! Behaviour of `RocksDedupStore` beyond the shared conformance suite: identity, corruption,
//! recreation, locking, retention, the recent IDs in memory and crash consistency.

use exactly_core::changelog::{encode_checkpoint, encode_entry};
use exactly_core::{ChangelogCheckpoint, DedupStore, IdKey, SeenEntry, StoreBatch, StoreError};
use exactly_state::layout::{
    CHECKPOINT_KEY, ENTRY_COUNT_KEY, IDS_COLUMN_FAMILY, META_COLUMN_FAMILY,
};
use exactly_state::{
    RocksDedupStore, SharedRocksResources, StateError, StoreIdentity, StoreOptions,
};
use std::path::{Path, PathBuf};

const TOPIC: &str = "app-in-dedup-changelog";

fn identity() -> StoreIdentity {
    StoreIdentity::new(TOPIC, 3)
}

fn shared() -> SharedRocksResources {
    SharedRocksResources::new(8 << 20, 8 << 20)
}

fn entry(first_seen_ms: i64, source_offset: i64) -> SeenEntry {
    SeenEntry {
        first_seen_ms,
        source_offset,
    }
}

fn batch_for(identity: &StoreIdentity, ids: &[(&[u8], SeenEntry)], next_offset: i64) -> StoreBatch {
    StoreBatch {
        entries: ids.iter().map(|(id, e)| (key(id), *e)).collect(),
        checkpoint: ChangelogCheckpoint {
            topic: identity.changelog_topic.clone(),
            partition: identity.partition,
            next_offset,
        },
    }
}

fn batch(ids: &[(&[u8], SeenEntry)], next_offset: i64) -> StoreBatch {
    batch_for(&identity(), ids, next_offset)
}

fn key(id: &[u8]) -> IdKey {
    IdKey::of(id)
}

fn open(dir: &Path) -> RocksDedupStore {
    RocksDedupStore::open(dir, &shared(), &identity()).expect("open store")
}

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("create temp dir");
    let dir = exactly_state::task_dir(root.path(), "app", "in", 3);
    (root, dir)
}

/// Keys physically present in the ids column family, read with plain RocksDB (no retention
/// cutoff, no compaction filter), in key order.
fn physical_ids(dir: &Path) -> Vec<Vec<u8>> {
    let db = rocksdb::DB::open_cf_for_read_only(
        &rocksdb::Options::default(),
        dir,
        [IDS_COLUMN_FAMILY, META_COLUMN_FAMILY],
        false,
    )
    .expect("open store read-only");
    let ids = db.cf_handle(IDS_COLUMN_FAMILY).expect("ids column family");
    db.iterator_cf(ids, rocksdb::IteratorMode::Start)
        .map(|item| item.expect("iterate ids").0.to_vec())
        .collect()
}

#[test]
fn task_dir_is_app_then_topic_dash_partition() {
    assert_eq!(
        exactly_state::task_dir(Path::new("/state"), "billing", "payments", 12),
        Path::new("/state/billing/payments-12")
    );
}

#[test]
fn reopen_keeps_entries_and_checkpoint_together() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    for n in 0..20i64 {
        let id = format!("id-{n}");
        store
            .apply(&batch(&[(id.as_bytes(), entry(1_000 + n, n))], n + 1))
            .expect("apply");
    }
    drop(store);

    let store = open(&dir);
    let checkpoint = store
        .checkpoint()
        .expect("checkpoint")
        .expect("a checkpoint");
    assert_eq!(checkpoint.next_offset, 20);
    for n in 0..20i64 {
        let id = format!("id-{n}");
        assert_eq!(
            store.get(&key(id.as_bytes())).expect("get"),
            Some(entry(1_000 + n, n)),
            "{id}"
        );
    }
    assert_eq!(store.stats().entries, 20);
}

/// Batches written by the crash child: batch `b` (changelog offset `b + 1`) holds IDs
/// `{b}-{i}` for `i` in `0..CRASH_IDS_PER_BATCH`.
const CRASH_BATCHES: i64 = 1_500;
const CRASH_IDS_PER_BATCH: i64 = 100;
const CRASH_DIR_ENV: &str = "EXACTLY_STATE_CRASH_DIR";

fn crash_batch(b: i64) -> StoreBatch {
    let ids: Vec<String> = (0..CRASH_IDS_PER_BATCH)
        .map(|i| format!("{b:06}-{i:03}"))
        .collect();
    let entries: Vec<(&[u8], SeenEntry)> = ids
        .iter()
        .map(|id| (id.as_bytes(), entry(1_000 + b, b)))
        .collect();
    batch(&entries, b + 1)
}

/// Recent IDs the crash child holds before it writes them to disk: every 70 batches.
const CRASH_RECENT_IDS: usize = 7_000;

/// The child half of `crash_leaves_the_entries_and_checkpoint_of_the_last_spill` (the test
/// re-runs its own binary with `CRASH_DIR_ENV` set): writes batches, so that the recent IDs
/// go to disk every 70 batches, then aborts without closing the store.
fn crash_child_writes_batches_then_aborts(dir: &str) -> ! {
    let shared = SharedRocksResources::new(1 << 20, 4 << 20);
    let options = StoreOptions {
        recent_ids: CRASH_RECENT_IDS,
        ..StoreOptions::default()
    };
    let mut store =
        RocksDedupStore::open_with(Path::new(dir), &shared, &identity(), &options).expect("open");
    for b in 0..CRASH_BATCHES {
        store.apply(&crash_batch(b)).expect("apply");
    }
    std::process::abort();
}

#[test]
fn crash_leaves_the_entries_and_checkpoint_of_the_last_spill() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        crash_child_writes_batches_then_aborts(&dir);
    }
    let (_root, dir) = store_dir();
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_leaves_the_entries_and_checkpoint_of_the_last_spill",
            "--nocapture",
        ])
        .env(CRASH_DIR_ENV, &dir)
        .status()
        .expect("run crash child");
    assert!(
        !status.success(),
        "the child must abort, not exit: {status}"
    );

    let store = open(&dir);
    let reflected = store
        .checkpoint()
        .expect("checkpoint")
        .map_or(0, |cp| cp.next_offset);
    // The last spill came after batch 1470 (21 spills of 70 batches); the 30 batches after
    // it were in memory only.
    let per_spill = CRASH_RECENT_IDS as i64 / CRASH_IDS_PER_BATCH;
    assert_eq!(reflected, CRASH_BATCHES / per_spill * per_spill);
    // Exactly the batches below the checkpoint are present: never IDs without their
    // checkpoint (would be harmless) nor a checkpoint without its IDs (would let duplicates in).
    for b in 0..CRASH_BATCHES {
        let ids: Vec<String> = (0..CRASH_IDS_PER_BATCH)
            .map(|i| format!("{b:06}-{i:03}"))
            .collect();
        let keys: Vec<IdKey> = ids.iter().map(|id| key(id.as_bytes())).collect();
        let mut found = Vec::new();
        store.get_many(&keys, &mut found).expect("get_many");
        let expected = if b < reflected {
            Some(entry(1_000 + b, b))
        } else {
            None
        };
        assert!(
            found.iter().all(|f| *f == expected),
            "batch {b} with checkpoint {reflected}"
        );
    }
    assert_eq!(
        store.stats().entries,
        (reflected * CRASH_IDS_PER_BATCH) as u64
    );
}

#[test]
fn store_from_other_changelog_is_rejected_as_wrong_identity() {
    let (_root, dir) = store_dir();
    let other = StoreIdentity::new("other-app-in-dedup-changelog", 3);
    let mut store = RocksDedupStore::open(&dir, &shared(), &other).expect("open as other");
    store
        .apply(&batch_for(&other, &[(b"a", entry(1, 1))], 1))
        .expect("apply");
    drop(store);

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("must be rejected");
    match &err {
        StateError::WrongIdentity {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, &dir);
            assert_eq!(expected, &identity());
            assert_eq!(found, &other);
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("other-app-in-dedup-changelog-3"),
        "{message}"
    );
    assert!(message.contains("app-in-dedup-changelog-3"), "{message}");
    assert!(
        message.contains("wiped and restored from the changelog"),
        "{message}"
    );
    assert!(err.requires_wipe());
    assert!(matches!(StoreError::from(err), StoreError::Corrupt(_)));
}

#[test]
fn store_from_other_partition_is_rejected_as_wrong_identity() {
    let (_root, dir) = store_dir();
    let partition_4 = StoreIdentity::new(TOPIC, 4);
    let mut store = RocksDedupStore::open(&dir, &shared(), &partition_4).expect("open");
    store
        .apply(&batch_for(&partition_4, &[(b"a", entry(1, 1))], 1))
        .expect("apply");
    drop(store);

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("must be rejected");
    assert!(
        matches!(err, StateError::WrongIdentity { ref found, .. } if *found == partition_4),
        "{err}"
    );
}

#[test]
fn garbage_in_store_dir_is_detected_as_corrupt() {
    let (_root, dir) = store_dir();
    std::fs::create_dir_all(&dir).expect("create dir");
    std::fs::write(dir.join("CURRENT"), "MANIFEST-000999\n").expect("write CURRENT");
    std::fs::write(dir.join("000007.sst"), b"not an sst file").expect("write junk");

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("must be rejected");
    assert!(
        matches!(err, StateError::Corrupt { ref path, .. } if *path == dir),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("is corrupt"), "{message}");
    assert!(
        message.contains("wiped and restored from the changelog"),
        "{message}"
    );
    assert!(matches!(StoreError::from(err), StoreError::Corrupt(_)));
}

#[test]
fn current_file_without_newline_is_detected_as_corrupt() {
    let (_root, dir) = store_dir();
    drop(open(&dir));
    std::fs::write(dir.join("CURRENT"), "garbage").expect("overwrite CURRENT");

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("must be rejected");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
}

#[test]
fn garbage_checkpoint_value_is_detected_as_corrupt() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    store
        .apply(&batch(&[(b"a", entry(1, 1))], 1))
        .expect("apply");
    drop(store);
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            &dir,
            [IDS_COLUMN_FAMILY, META_COLUMN_FAMILY],
        )
        .expect("open raw");
        let meta = db
            .cf_handle(META_COLUMN_FAMILY)
            .expect("meta column family");
        db.put_cf(meta, CHECKPOINT_KEY, b"\x01\xff\xff\xff")
            .expect("write junk");
    }

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("must be rejected");
    match &err {
        StateError::Corrupt { reason, .. } => assert!(reason.contains("checkpoint"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn garbage_entry_value_is_reported_as_corrupt_on_lookup() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    store
        .apply(&batch(&[(b"a", entry(1, 1))], 1))
        .expect("apply");
    drop(store);
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            &dir,
            [IDS_COLUMN_FAMILY, META_COLUMN_FAMILY],
        )
        .expect("open raw");
        let ids = db.cf_handle(IDS_COLUMN_FAMILY).expect("ids column family");
        db.put_cf(ids, key(b"b").as_bytes(), b"junk")
            .expect("write junk");
    }

    let store = open(&dir);
    assert_eq!(store.get(&key(b"a")).expect("get a"), Some(entry(1, 1)));
    let err = store
        .get(&key(b"b"))
        .expect_err("junk value must not decode");
    let expected = format!("id key {}", key(b"b"));
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains(&expected) && m.contains("4 bytes, expected 16")),
        "{err}"
    );
}

#[test]
fn store_path_that_is_a_file_is_detected_as_corrupt() {
    let (_root, dir) = store_dir();
    std::fs::create_dir_all(dir.parent().expect("task dir has a parent")).expect("create parent");
    std::fs::write(&dir, b"not a directory").expect("write file");

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("must be rejected");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
}

#[test]
fn open_or_recreate_wipes_corrupt_dir_and_reports_why() {
    let (_root, dir) = store_dir();
    std::fs::create_dir_all(&dir).expect("create dir");
    std::fs::write(dir.join("CURRENT"), "MANIFEST-000999\n").expect("write CURRENT");

    let (mut store, why) =
        RocksDedupStore::open_or_recreate(&dir, &shared(), &identity()).expect("recreate");
    assert!(matches!(why, Some(StateError::Corrupt { .. })), "{why:?}");
    assert_eq!(store.checkpoint().expect("checkpoint"), None);
    assert_eq!(store.stats().entries, 0);
    store
        .apply(&batch(&[(b"a", entry(1, 1))], 1))
        .expect("apply to the new store");
    drop(store);

    // The recreated store is healthy: reopening reports nothing and keeps its data.
    let (store, why) =
        RocksDedupStore::open_or_recreate(&dir, &shared(), &identity()).expect("reopen");
    assert!(why.is_none(), "{why:?}");
    assert_eq!(store.get(&key(b"a")).expect("get"), Some(entry(1, 1)));
}

#[test]
fn open_or_recreate_wipes_store_of_other_changelog_and_reports_why() {
    let (_root, dir) = store_dir();
    let other = StoreIdentity::new("other-app-in-dedup-changelog", 3);
    let mut store = RocksDedupStore::open(&dir, &shared(), &other).expect("open as other");
    store
        .apply(&batch_for(&other, &[(b"a", entry(1, 1))], 1))
        .expect("apply");
    drop(store);

    let (store, why) =
        RocksDedupStore::open_or_recreate(&dir, &shared(), &identity()).expect("recreate");
    assert!(
        matches!(why, Some(StateError::WrongIdentity { .. })),
        "{why:?}"
    );
    assert_eq!(store.get(&key(b"a")).expect("get"), None);
    assert_eq!(store.checkpoint().expect("checkpoint"), None);
}

#[test]
fn store_open_elsewhere_is_locked_and_never_wiped() {
    let (_root, dir) = store_dir();
    let mut first = open(&dir);
    first
        .apply(&batch(&[(b"a", entry(1, 1))], 1))
        .expect("apply");

    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("second open");
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert!(!err.requires_wipe());
    let err = RocksDedupStore::open_or_recreate(&dir, &shared(), &identity())
        .expect_err("open_or_recreate must not wipe a live store");
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");

    assert_eq!(first.get(&key(b"a")).expect("get"), Some(entry(1, 1)));
    drop(first);
    assert_eq!(
        open(&dir).get(&key(b"a")).expect("get after reopen"),
        Some(entry(1, 1))
    );
}

#[test]
fn apply_of_other_changelog_checkpoint_is_refused() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    let other = StoreIdentity::new(TOPIC, 4);
    let err = store
        .apply(&batch_for(&other, &[(b"a", entry(1, 1))], 1))
        .expect_err("refused");
    assert!(
        matches!(err, StoreError::Io(ref m) if m.contains("refusing")),
        "{err}"
    );
    assert_eq!(store.get(&key(b"a")).expect("get"), None);
    assert_eq!(store.checkpoint().expect("checkpoint"), None);
}

#[test]
fn compaction_filter_drops_expired_entries() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    store
        .apply(&batch(
            &[
                (b"old-1", entry(100, 1)),
                (b"old-2", entry(199, 2)),
                (b"new", entry(200, 3)),
            ],
            3,
        ))
        .expect("apply");
    store.flush().expect("flush");
    store.set_retention_cutoff(200);
    store.compact();
    drop(store);

    assert_eq!(physical_ids(&dir), vec![key(b"new").as_bytes().to_vec()]);
    let mut store = open(&dir);
    assert_eq!(store.get(&key(b"new")).expect("get"), Some(entry(200, 3)));
    // The compaction dropped them without counting; the next expiry recounts exactly.
    assert_eq!(store.expire_before(200).expect("expire"), 0);
    assert_eq!(store.stats().entries, 1);
}

#[test]
fn retention_cutoff_hides_expired_entries_before_compaction() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    store
        .apply(&batch(
            &[(b"old", entry(100, 1)), (b"new", entry(300, 2))],
            2,
        ))
        .expect("apply");
    store.set_retention_cutoff(200);
    store.set_retention_cutoff(150); // never lowered
    assert_eq!(store.retention_cutoff(), 200);

    let mut found = Vec::new();
    store
        .get_many(&[key(b"old"), key(b"new")], &mut found)
        .expect("get_many");
    assert_eq!(found, vec![None, Some(entry(300, 2))]);
    // Entries already expired when applied are not stored at all.
    store
        .apply(&batch(&[(b"late", entry(150, 3))], 3))
        .expect("apply");
    assert_eq!(store.get(&key(b"late")).expect("get"), None);
}

#[test]
fn expire_before_deletes_from_disk_at_once() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    let ids: Vec<String> = (0..25_000).map(|n| format!("id-{n:05}")).collect();
    let entries: Vec<(&[u8], SeenEntry)> = ids
        .iter()
        .zip(0..)
        .map(|(id, n)| (id.as_bytes(), entry(n, n)))
        .collect();
    store.apply(&batch(&entries, 1)).expect("apply");
    store.flush().expect("flush");
    assert_eq!(physical_ids(store.path()).len(), 25_000);

    // 20 000 expire: more than one internal delete chunk.
    assert_eq!(store.expire_before(20_000).expect("expire"), 20_000);
    assert_eq!(store.stats().entries, 5_000);
    assert_eq!(physical_ids(store.path()).len(), 5_000);
    drop(store);

    let mut remaining = physical_ids(&dir);
    let mut expected: Vec<Vec<u8>> = ids[20_000..]
        .iter()
        .map(|id| key(id.as_bytes()).as_bytes().to_vec())
        .collect();
    remaining.sort();
    expected.sort();
    assert_eq!(remaining, expected);
}

#[test]
fn stats_report_bytes_once_data_is_written() {
    let (_root, dir) = store_dir();
    let mut store = open(&dir);
    let before = store.stats().bytes;
    let ids: Vec<String> = (0..1_000).map(|n| format!("id-{n}")).collect();
    let entries: Vec<(&[u8], SeenEntry)> =
        ids.iter().map(|id| (id.as_bytes(), entry(1, 1))).collect();
    store.apply(&batch(&entries, 1)).expect("apply");
    assert!(
        store.stats().bytes > before,
        "{} <= {before}",
        store.stats().bytes
    );
    store.flush().expect("flush");
    assert!(store.stats().bytes > 0);
}

fn open_with_recent(
    dir: &Path,
    shared: &SharedRocksResources,
    recent_ids: usize,
) -> RocksDedupStore {
    let options = StoreOptions {
        recent_ids,
        ..StoreOptions::default()
    };
    RocksDedupStore::open_with(dir, shared, &identity(), &options).expect("open")
}

fn numbered(from: i64, to: i64) -> Vec<String> {
    (from..to).map(|n| format!("id-{n}")).collect()
}

fn batch_of(ids: &[String], next_offset: i64) -> StoreBatch {
    let entries: Vec<(&[u8], SeenEntry)> = ids
        .iter()
        .map(|id| (id.as_bytes(), entry(1_000, 1)))
        .collect();
    batch(&entries, next_offset)
}

#[test]
fn recent_ids_go_to_disk_with_their_checkpoint_once_there_are_enough() {
    let (_root, dir) = store_dir();
    let shared = shared();
    let mut store = open_with_recent(&dir, &shared, 10);
    store.apply(&batch_of(&numbered(0, 9), 1)).expect("apply");
    assert_eq!(store.recent_ids(), 9);
    assert_eq!(store.durable_checkpoint(), None);
    assert_eq!(shared.recent_ids_held(), 9);
    assert!(physical_ids(&dir).is_empty());

    store.apply(&batch_of(&numbered(9, 10), 2)).expect("apply");
    assert_eq!(store.recent_ids(), 0);
    assert_eq!(shared.recent_ids_held(), 0);
    assert_eq!(store.durable_checkpoint().map(|cp| cp.next_offset), Some(2));
    assert_eq!(physical_ids(&dir).len(), 10);
    // Lookups answer from both tiers alike.
    store.apply(&batch_of(&numbered(10, 12), 3)).expect("apply");
    let keys: Vec<IdKey> = numbered(0, 13)
        .iter()
        .map(|id| key(id.as_bytes()))
        .collect();
    let mut found = Vec::new();
    store.get_many(&keys, &mut found).expect("get_many");
    assert_eq!(found.iter().filter(|f| f.is_some()).count(), 12);
    assert_eq!(found[12], None);
    assert_eq!(store.stats().entries, 12);
}

#[test]
fn the_shared_budget_makes_a_store_write_its_recent_ids_early() {
    let (_root, dir) = store_dir();
    let root2 = tempfile::tempdir().expect("temp dir");
    let dir2 = exactly_state::task_dir(root2.path(), "app", "in", 3);
    let shared = SharedRocksResources::with_recent_ids(8 << 20, 8 << 20, 40_000);
    let mut a = open_with_recent(&dir, &shared, 1 << 20);
    let mut b = open_with_recent(&dir2, &shared, 1 << 20);
    a.apply(&batch_of(&numbered(0, 30_000), 1))
        .expect("apply a");
    assert_eq!(a.recent_ids(), 30_000);
    // 30 000 + 20 000 held: over the budget, so the store that applies writes to disk.
    b.apply(&batch_of(&numbered(0, 20_000), 1))
        .expect("apply b");
    assert_eq!(b.recent_ids(), 0);
    assert_eq!(a.recent_ids(), 30_000);
    assert_eq!(shared.recent_ids_held(), 30_000);
    drop(a);
    assert_eq!(shared.recent_ids_held(), 0);
}

#[test]
fn a_closed_store_keeps_its_recent_ids() {
    let (_root, dir) = store_dir();
    let shared = shared();
    let mut store = open_with_recent(&dir, &shared, 1 << 20);
    store.apply(&batch_of(&numbered(0, 100), 7)).expect("apply");
    assert_eq!(store.durable_checkpoint(), None);
    drop(store);
    let store = open_with_recent(&dir, &shared, 1 << 20);
    assert_eq!(store.durable_checkpoint().map(|cp| cp.next_offset), Some(7));
    assert_eq!(store.recent_ids(), 0);
    assert_eq!(store.stats().entries, 100);
    assert!(store.get(&key(b"id-99")).expect("get").is_some());
}

#[test]
fn a_store_of_the_per_id_format_is_wiped_and_reported() {
    let (_root, dir) = store_dir();
    std::fs::create_dir_all(&dir).expect("create dir");
    {
        // What the previous version wrote: raw IDs as keys, no format key.
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, &dir, [IDS_COLUMN_FAMILY, META_COLUMN_FAMILY])
            .expect("open raw");
        let ids = db.cf_handle(IDS_COLUMN_FAMILY).expect("ids column family");
        db.put_cf(ids, b"order-1", encode_entry(&entry(1, 1)))
            .expect("write id");
        let meta = db
            .cf_handle(META_COLUMN_FAMILY)
            .expect("meta column family");
        let cp = ChangelogCheckpoint {
            topic: TOPIC.into(),
            partition: 3,
            next_offset: 1,
        };
        db.put_cf(meta, CHECKPOINT_KEY, encode_checkpoint(&cp))
            .expect("write checkpoint");
        db.put_cf(meta, ENTRY_COUNT_KEY, 1u64.to_le_bytes())
            .expect("write count");
    }
    let err = RocksDedupStore::open(&dir, &shared(), &identity()).expect_err("old format");
    assert!(
        matches!(err, StateError::Corrupt { ref reason, .. } if reason.contains("store format 1")),
        "{err}"
    );
    let (store, why) =
        RocksDedupStore::open_or_recreate(&dir, &shared(), &identity()).expect("recreate");
    assert!(matches!(why, Some(StateError::Corrupt { .. })), "{why:?}");
    assert_eq!(store.checkpoint().expect("checkpoint"), None);
    assert_eq!(store.stats().entries, 0);
}

#[test]
fn an_unfinished_spill_file_is_deleted_at_open() {
    let (_root, dir) = store_dir();
    drop(open(&dir));
    std::fs::write(dir.join("recent-ids.sst"), b"half written").expect("write file");
    let store = open(&dir);
    assert!(!dir.join("recent-ids.sst").exists());
    assert_eq!(store.checkpoint().expect("checkpoint"), None);
}

#[test]
fn a_batch_that_would_pass_the_limit_goes_in_after_the_recent_ids_are_on_disk() {
    let (_root, dir) = store_dir();
    let shared = shared();
    let mut store = open_with_recent(&dir, &shared, 10);
    store.apply(&batch_of(&numbered(0, 8), 1)).expect("apply");
    assert_eq!(store.recent_ids(), 8);
    // 8 + 5 > 10: the 8 go to disk with their checkpoint first.
    store.apply(&batch_of(&numbered(8, 13), 2)).expect("apply");
    assert_eq!(store.recent_ids(), 5);
    assert_eq!(store.durable_checkpoint().map(|cp| cp.next_offset), Some(1));
    assert_eq!(physical_ids(&dir).len(), 8);
    assert_eq!(store.stats().entries, 13);
}
