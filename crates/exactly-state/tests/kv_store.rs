//! `RocksKvStore`, the engine under a task's state store: it answers like `MemKvStore` for
//! the same writes, keeps entries and checkpoint together across reopen, refuses foreign
//! checkpoints, and rebuilds a corrupt or foreign directory empty.

use exactly_core::state::{KvStore, KvWrite, MemKvStore};
use exactly_core::ChangelogCheckpoint;
use exactly_state::{
    state_store_dir, RocksKvStore, SharedRocksResources, StoreIdentity, StoreOptions,
};
use rand::{Rng, SeedableRng};
use std::path::Path;

const TOPIC: &str = "app-in-totals-changelog";

fn identity() -> StoreIdentity {
    StoreIdentity::new(TOPIC, 1)
}

fn cp(next_offset: i64) -> ChangelogCheckpoint {
    ChangelogCheckpoint {
        topic: TOPIC.into(),
        partition: 1,
        next_offset,
    }
}

fn open(dir: &Path, shared: &SharedRocksResources) -> RocksKvStore {
    RocksKvStore::open(dir, shared, &identity(), &StoreOptions::default()).expect("open")
}

fn scan_all(s: &dyn KvStore, from: &[u8], to: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    s.scan(from, to, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .expect("scan");
    out
}

#[test]
fn answers_like_the_in_memory_store_for_random_writes() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    let mut rocks = open(dir.path(), &shared);
    let mut mem = MemKvStore::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..50 {
        let writes: Vec<KvWrite> = (0..40)
            .map(|_| {
                let key = format!("k{:03}", rng.gen_range(0..200)).into_bytes();
                let value = rng
                    .gen_bool(0.8)
                    .then(|| vec![rng.gen::<u8>(); rng.gen_range(1..20)]);
                (key, value)
            })
            .collect();
        rocks.apply(&writes, &cp(round + 1)).unwrap();
        mem.apply(&writes, &cp(round + 1)).unwrap();
    }
    assert_eq!(scan_all(&rocks, b"", None), scan_all(&mem, b"", None));
    assert_eq!(
        scan_all(&rocks, b"k050", Some(b"k100")),
        scan_all(&mem, b"k050", Some(b"k100"))
    );
    for i in 0..200 {
        let key = format!("k{i:03}").into_bytes();
        assert_eq!(rocks.get(&key).unwrap(), mem.get(&key).unwrap(), "k{i:03}");
    }
    assert_eq!(rocks.stats().entries, mem.stats().entries);
    assert!(mem.stats().entries > 100, "the writes left a real store");
    // A scan stops when told to.
    let mut n = 0;
    rocks
        .scan(b"", None, &mut |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!(n, 3);
}

#[test]
fn entries_and_checkpoint_survive_a_reopen_and_a_wipe_clears_both() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    {
        let mut s = open(dir.path(), &shared);
        s.apply(
            &[
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"b".to_vec(), Some(b"2".to_vec())),
                (b"a".to_vec(), None),
            ],
            &cp(9),
        )
        .unwrap();
    }
    let mut s = open(dir.path(), &shared);
    assert_eq!(s.checkpoint().unwrap(), Some(cp(9)));
    assert_eq!(
        s.get(b"a").unwrap(),
        None,
        "the later delete in the batch wins"
    );
    assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.stats().entries, 1);
    s.wipe().unwrap();
    assert_eq!(s.checkpoint().unwrap(), None);
    assert!(scan_all(&s, b"", None).is_empty());
    assert_eq!(s.stats().entries, 0);
}

#[test]
fn a_foreign_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    let mut s = open(dir.path(), &shared);
    let foreign = ChangelogCheckpoint {
        topic: "other-changelog".into(),
        partition: 1,
        next_offset: 1,
    };
    let err = s
        .apply(&[(b"a".to_vec(), Some(b"1".to_vec()))], &foreign)
        .unwrap_err();
    assert!(err.to_string().contains("other-changelog"), "{err}");
    assert_eq!(s.get(b"a").unwrap(), None);
}

#[test]
fn a_corrupt_or_foreign_directory_is_rebuilt_empty() {
    let root = tempfile::tempdir().unwrap();
    let shared = SharedRocksResources::new(8 << 20, 8 << 20);
    let dir = state_store_dir(root.path(), "app", "in", 1, "totals");
    // A file where the directory should be.
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::write(&dir, b"not a store").unwrap();
    let s = open(&dir, &shared);
    assert_eq!(s.checkpoint().unwrap(), None);
    drop(s);
    // A store of another changelog in the directory.
    {
        let other = StoreIdentity::new("other-changelog", 1);
        let mut s = RocksKvStore::open(&dir, &shared, &other, &StoreOptions::default()).unwrap();
        let cp = ChangelogCheckpoint {
            topic: "other-changelog".into(),
            partition: 1,
            next_offset: 5,
        };
        s.apply(&[(b"x".to_vec(), Some(b"1".to_vec()))], &cp)
            .unwrap();
    }
    let s = open(&dir, &shared);
    assert_eq!(s.checkpoint().unwrap(), None);
    assert_eq!(s.get(b"x").unwrap(), None);
    // Garbage in RocksDB's CURRENT file.
    drop(s);
    std::fs::write(dir.join("CURRENT"), b"garbage\n").unwrap();
    let s = open(&dir, &shared);
    assert_eq!(s.checkpoint().unwrap(), None);
}
