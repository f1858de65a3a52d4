//! Behaviour of `RocksDedupStore` beyond the shared conformance suite: identity, corruption,
//! recreation, locking, retention and crash consistency.

use exactly_core::{ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError};
use exactly_state::layout::{CHECKPOINT_KEY, IDS_COLUMN_FAMILY, META_COLUMN_FAMILY};
use exactly_state::{RocksDedupStore, SharedRocksResources, StateError, StoreIdentity};
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
        entries: ids.iter().map(|(id, e)| (id.to_vec(), *e)).collect(),
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

fn open(dir: &Path) -> RocksDedupStore {
    RocksDedupStore::open(dir, &shared(), &identity()).expect("open store")
}

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("create temp dir");
    let dir = exactly_state::task_dir(root.path(), "app", "in", 3);
    (root, dir)
}

/// Keys physically present in the ids column family, read with plain RocksDB (no retention
/// cutoff, no compaction filter).
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
            store.get(id.as_bytes()).expect("get"),
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

/// The child half of `crash_without_wal_leaves_entries_and_checkpoint_of_one_batch_prefix`
/// (the test re-runs its own binary with `CRASH_DIR_ENV` set): writes batches with the WAL off
/// and a small memtable budget (so some flushes happen), then aborts without closing the store.
fn crash_child_writes_batches_then_aborts(dir: &str) -> ! {
    let shared = SharedRocksResources::new(1 << 20, 4 << 20);
    let mut store = RocksDedupStore::open(Path::new(dir), &shared, &identity()).expect("open");
    for b in 0..CRASH_BATCHES {
        store.apply(&crash_batch(b)).expect("apply");
    }
    std::process::abort();
}

#[test]
fn crash_without_wal_leaves_entries_and_checkpoint_of_one_batch_prefix() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        crash_child_writes_batches_then_aborts(&dir);
    }
    let (_root, dir) = store_dir();
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_without_wal_leaves_entries_and_checkpoint_of_one_batch_prefix",
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
    eprintln!("after the crash the store reflects {reflected} of {CRASH_BATCHES} batches");
    // Something was flushed (the small memtable budget forces flushes), so the prefix check
    // below is not vacuous, and never more than was written.
    assert!(
        0 < reflected && reflected <= CRASH_BATCHES,
        "reflected {reflected} of {CRASH_BATCHES} batches"
    );
    // Exactly the batches below the checkpoint are present: never IDs without their
    // checkpoint (would be harmless) nor a checkpoint without its IDs (would let duplicates in).
    for b in 0..CRASH_BATCHES {
        let ids: Vec<String> = (0..CRASH_IDS_PER_BATCH)
            .map(|i| format!("{b:06}-{i:03}"))
            .collect();
        let refs: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
        let mut found = Vec::new();
        store.get_many(&refs, &mut found).expect("get_many");
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
        db.put_cf(ids, b"b", b"junk").expect("write junk");
    }

    let store = open(&dir);
    assert_eq!(store.get(b"a").expect("get a"), Some(entry(1, 1)));
    let err = store.get(b"b").expect_err("junk value must not decode");
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("id 62:")),
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
    assert_eq!(store.get(b"a").expect("get"), Some(entry(1, 1)));
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
    assert_eq!(store.get(b"a").expect("get"), None);
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

    assert_eq!(first.get(b"a").expect("get"), Some(entry(1, 1)));
    drop(first);
    assert_eq!(
        open(&dir).get(b"a").expect("get after reopen"),
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
    assert_eq!(store.get(b"a").expect("get"), None);
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

    assert_eq!(physical_ids(&dir), vec![b"new".to_vec()]);
    let mut store = open(&dir);
    assert_eq!(store.get(b"new").expect("get"), Some(entry(200, 3)));
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
        .get_many(&[b"old", b"new"], &mut found)
        .expect("get_many");
    assert_eq!(found, vec![None, Some(entry(300, 2))]);
    // Entries already expired when applied are not stored at all.
    store
        .apply(&batch(&[(b"late", entry(150, 3))], 3))
        .expect("apply");
    assert_eq!(store.get(b"late").expect("get"), None);
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

    // 20 000 expire: more than one internal delete chunk.
    assert_eq!(store.expire_before(20_000).expect("expire"), 20_000);
    assert_eq!(store.stats().entries, 5_000);
    drop(store);

    let remaining = physical_ids(&dir);
    assert_eq!(remaining.len(), 5_000);
    assert_eq!(remaining.first().map(Vec::as_slice), Some(&b"id-20000"[..]));
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
