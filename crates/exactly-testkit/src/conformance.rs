//! Store conformance suite: the behaviour every [`DedupStore`] must show, written once and run
//! against every implementation (`MemDedupStore`, `RocksDedupStore`), as TiKV's engine tests
//! run against every engine.
//!
//! [`run_all`] takes a factory of fresh, empty stores; [`run_persistent`] takes a function that
//! opens the same on-disk store again and checks what survives a close. Every check is also
//! public, named after the behaviour it specifies, and panics with a message that starts with
//! its name.
//!
//! Batches carry checkpoints on changelog [`CHANGELOG_TOPIC`], partition
//! [`CHANGELOG_PARTITION`]; stores that verify their identity must be opened with it.
//!
//! The suite never uses an empty ID: the runtime dead-letters records with empty IDs before
//! they reach a store, so stores need not support it.
//!
//! ```
//! exactly_testkit::conformance::run_all(exactly_core::MemDedupStore::new);
//! ```

use exactly_core::{ChangelogCheckpoint, DedupStore, IdKey, SeenEntry, StoreBatch};
use std::fmt::Display;

/// Changelog topic named by every checkpoint the suite applies.
pub const CHANGELOG_TOPIC: &str = "conformance-in-dedup-changelog";
/// Changelog partition named by every checkpoint the suite applies.
pub const CHANGELOG_PARTITION: i32 = 0;

/// Runs every check of the suite, each on a fresh store from `make`.
pub fn run_all<S: DedupStore>(mut make: impl FnMut() -> S) {
    let make = &mut make;
    check_empty_store_has_no_checkpoint_and_misses_every_id(make);
    check_get_many_answers_each_id_in_query_order(make);
    check_get_many_replaces_previous_output(make);
    check_get_agrees_with_get_many(make);
    check_checkpoint_is_the_last_applied(make);
    check_later_entry_for_same_id_wins(make);
    check_apply_keeps_ids_of_earlier_batches(make);
    check_empty_batch_only_moves_checkpoint(make);
    check_expire_before_removes_exactly_entries_first_seen_before_cutoff(make);
    check_expire_before_again_removes_nothing(make);
    check_expire_before_keeps_checkpoint(make);
    check_wipe_clears_entries_and_checkpoint(make);
    check_store_is_usable_after_wipe(make);
    check_stats_count_distinct_ids_exactly(make);
    check_apply_unseen_records_new_ids_like_apply(make);
    check_binary_ids_are_distinct_exact_keys(make);
    check_extreme_entry_values_round_trip(make);
    check_ten_thousand_id_batch_round_trips(make);
}

/// Runs the checks of what survives closing and reopening a persistent store.
///
/// `open` must open the same store every time it is called; the suite drops the previous
/// handle before calling it again, and wipes the store at the start of each check.
pub fn run_persistent<S: DedupStore>(mut open: impl FnMut() -> S) {
    let open = &mut open;
    check_reopen_keeps_entries_and_checkpoint(open);
    check_reopen_keeps_the_last_of_many_batches(open);
    check_reopen_keeps_exact_entry_count(open);
    check_reopen_after_expire_keeps_only_survivors(open);
    check_reopen_after_wipe_is_empty(open);
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A checkpoint on the suite's changelog partition.
pub fn checkpoint(next_offset: i64) -> ChangelogCheckpoint {
    ChangelogCheckpoint {
        topic: CHANGELOG_TOPIC.to_owned(),
        partition: CHANGELOG_PARTITION,
        next_offset,
    }
}

/// An entry first seen at `first_seen_ms`, from input offset `source_offset`.
pub fn entry(first_seen_ms: i64, source_offset: i64) -> SeenEntry {
    SeenEntry {
        first_seen_ms,
        source_offset,
    }
}

/// A batch of `entries` (by raw ID) that brings the store to changelog offset `next_offset`.
pub fn batch(entries: &[(&[u8], SeenEntry)], next_offset: i64) -> StoreBatch {
    StoreBatch {
        entries: entries.iter().map(|(id, e)| (IdKey::of(id), *e)).collect(),
        checkpoint: checkpoint(next_offset),
    }
}

#[track_caller]
fn ok<T, E: Display>(check: &str, what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{check}: {what} failed: {err}"),
    }
}

#[track_caller]
fn apply<S: DedupStore>(check: &str, store: &mut S, batch: &StoreBatch) {
    ok(check, "apply", store.apply(batch));
}

#[track_caller]
fn get_many<S: DedupStore>(check: &str, store: &S, ids: &[&[u8]]) -> Vec<Option<SeenEntry>> {
    let mut out = Vec::new();
    ok(check, "get_many", store.get_many(&keys(ids), &mut out));
    out
}

#[track_caller]
fn get<S: DedupStore>(check: &str, store: &S, id: &[u8]) -> Option<SeenEntry> {
    ok(check, "get", store.get(&IdKey::of(id)))
}

/// The keys of raw IDs.
fn keys(ids: &[&[u8]]) -> Vec<IdKey> {
    ids.iter().map(|id| IdKey::of(id)).collect()
}

#[track_caller]
fn stored_checkpoint<S: DedupStore>(check: &str, store: &S) -> Option<ChangelogCheckpoint> {
    ok(check, "checkpoint", store.checkpoint())
}

#[track_caller]
fn fresh<S: DedupStore>(check: &str, open: &mut impl FnMut() -> S) -> S {
    let mut store = open();
    ok(check, "wipe before the check", store.wipe());
    store
}

// ---------------------------------------------------------------------------------------------
// Checks on one open store.

/// A new store has no checkpoint, no entries, and misses every ID.
pub fn check_empty_store_has_no_checkpoint_and_misses_every_id<S: DedupStore>(
    make: &mut impl FnMut() -> S,
) {
    const CHECK: &str = "check_empty_store_has_no_checkpoint_and_misses_every_id";
    let store = make();
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        None,
        "{CHECK}: checkpoint"
    );
    assert_eq!(get(CHECK, &store, b"a"), None, "{CHECK}: get(a)");
    assert_eq!(
        get_many(CHECK, &store, &[b"a", b"b", &[0u8], &[0xff; 256]]),
        vec![None; 4],
        "{CHECK}: get_many"
    );
    assert_eq!(store.stats().entries, 0, "{CHECK}: stats().entries");
}

/// `get_many` answers once per queried ID, in query order, with the exact stored entry for a
/// hit and `None` for a miss, also when the query repeats IDs.
pub fn check_get_many_answers_each_id_in_query_order<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_get_many_answers_each_id_in_query_order";
    let mut store = make();
    let (a, b, c) = (entry(1_000, 10), entry(2_000, 20), entry(3_000, 30));
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"a", a), (b"b", b), (b"c", c)], 3),
    );
    let answers = get_many(
        CHECK,
        &store,
        &[b"x", b"c", b"a", b"y", b"a", b"b", b"c", b"x"],
    );
    assert_eq!(
        answers,
        vec![
            None,
            Some(c),
            Some(a),
            None,
            Some(a),
            Some(b),
            Some(c),
            None
        ],
        "{CHECK}: answers to [x, c, a, y, a, b, c, x]"
    );
    assert_eq!(get_many(CHECK, &store, &[]), vec![], "{CHECK}: empty query");
}

/// `get_many` clears its output buffer before answering.
pub fn check_get_many_replaces_previous_output<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_get_many_replaces_previous_output";
    let mut store = make();
    let a = entry(1_000, 10);
    apply(CHECK, &mut store, &batch(&[(b"a", a)], 1));
    let mut out = vec![Some(entry(9, 9)); 5];
    ok(
        CHECK,
        "get_many",
        store.get_many(&keys(&[b"z", b"a"]), &mut out),
    );
    assert_eq!(
        out,
        vec![None, Some(a)],
        "{CHECK}: output after a 2-ID query"
    );
    ok(CHECK, "get_many", store.get_many(&keys(&[]), &mut out));
    assert_eq!(out, vec![], "{CHECK}: output after an empty query");
}

/// `get` gives the same answer as a one-ID `get_many`.
pub fn check_get_agrees_with_get_many<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_get_agrees_with_get_many";
    let mut store = make();
    let a = entry(1_000, 10);
    apply(CHECK, &mut store, &batch(&[(b"a", a)], 1));
    assert_eq!(get(CHECK, &store, b"a"), Some(a), "{CHECK}: get(a)");
    assert_eq!(get(CHECK, &store, b"b"), None, "{CHECK}: get(b)");
    for id in [&b"a"[..], b"b"] {
        assert_eq!(
            get_many(CHECK, &store, &[id]),
            vec![get(CHECK, &store, id)],
            "{CHECK}: id {id:?}"
        );
    }
}

/// The checkpoint is the one of the last applied batch, whatever its offset.
pub fn check_checkpoint_is_the_last_applied<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_checkpoint_is_the_last_applied";
    let mut store = make();
    apply(CHECK, &mut store, &batch(&[(b"a", entry(1, 1))], 5));
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(5)),
        "{CHECK}: after first"
    );
    apply(CHECK, &mut store, &batch(&[(b"b", entry(2, 2))], 9));
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(9)),
        "{CHECK}: after second"
    );
    // The store records what it is given; ordering offsets is the protocol's job.
    apply(CHECK, &mut store, &batch(&[(b"c", entry(3, 3))], 7));
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(7)),
        "{CHECK}: after third"
    );
}

/// A later entry for an ID replaces the earlier one, within a batch and across batches.
pub fn check_later_entry_for_same_id_wins<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_later_entry_for_same_id_wins";
    let mut store = make();
    apply(
        CHECK,
        &mut store,
        &batch(
            &[
                (b"a", entry(1_000, 1)),
                (b"b", entry(1_000, 2)),
                (b"a", entry(1_500, 3)),
            ],
            3,
        ),
    );
    assert_eq!(
        get(CHECK, &store, b"a"),
        Some(entry(1_500, 3)),
        "{CHECK}: within a batch"
    );
    apply(CHECK, &mut store, &batch(&[(b"b", entry(2_000, 4))], 4));
    assert_eq!(
        get(CHECK, &store, b"b"),
        Some(entry(2_000, 4)),
        "{CHECK}: across batches"
    );
    assert_eq!(
        get(CHECK, &store, b"a"),
        Some(entry(1_500, 3)),
        "{CHECK}: other id untouched"
    );
    assert_eq!(store.stats().entries, 2, "{CHECK}: stats().entries");
}

/// Applying a batch leaves the IDs of earlier batches in place.
pub fn check_apply_keeps_ids_of_earlier_batches<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_apply_keeps_ids_of_earlier_batches";
    let mut store = make();
    for n in 0..5u8 {
        apply(
            CHECK,
            &mut store,
            &batch(&[(&[b'k', n], entry(i64::from(n), 0))], i64::from(n)),
        );
    }
    let ids: Vec<[u8; 2]> = (0..5u8).map(|n| [b'k', n]).collect();
    let refs: Vec<&[u8]> = ids.iter().map(|id| &id[..]).collect();
    let expected: Vec<_> = (0..5).map(|n| Some(entry(n, 0))).collect();
    assert_eq!(
        get_many(CHECK, &store, &refs),
        expected,
        "{CHECK}: all five IDs"
    );
}

/// A batch without entries moves the checkpoint and changes nothing else.
pub fn check_empty_batch_only_moves_checkpoint<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_empty_batch_only_moves_checkpoint";
    let mut store = make();
    let a = entry(1_000, 10);
    apply(CHECK, &mut store, &batch(&[(b"a", a)], 1));
    apply(CHECK, &mut store, &batch(&[], 8));
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(8)),
        "{CHECK}: checkpoint"
    );
    assert_eq!(
        get_many(CHECK, &store, &[b"a", b"b"]),
        vec![Some(a), None],
        "{CHECK}: entries"
    );
    assert_eq!(store.stats().entries, 1, "{CHECK}: stats().entries");

    let mut empty = make();
    apply(CHECK, &mut empty, &batch(&[], 4));
    assert_eq!(
        stored_checkpoint(CHECK, &empty),
        Some(checkpoint(4)),
        "{CHECK}: on empty store"
    );
    assert_eq!(
        empty.stats().entries,
        0,
        "{CHECK}: stats().entries of empty store"
    );
}

/// `expire_before(cutoff)` removes exactly the entries first seen before `cutoff` (an entry
/// seen at `cutoff` stays), returns how many, and lookups and counts reflect it at once.
pub fn check_expire_before_removes_exactly_entries_first_seen_before_cutoff<S: DedupStore>(
    make: &mut impl FnMut() -> S,
) {
    const CHECK: &str = "check_expire_before_removes_exactly_entries_first_seen_before_cutoff";
    let mut store = make();
    let ids: [&[u8]; 6] = [b"neg", b"old", b"edge-1", b"edge", b"edge+1", b"new"];
    let seen = [-5, 100, 149, 150, 151, 10_000];
    let entries: Vec<(&[u8], SeenEntry)> = ids
        .iter()
        .zip(seen)
        .map(|(id, ms)| (*id, entry(ms, ms)))
        .collect();
    apply(CHECK, &mut store, &batch(&entries, 6));

    let removed = ok(CHECK, "expire_before", store.expire_before(150));
    assert_eq!(removed, 3, "{CHECK}: expire_before(150) return value");
    assert_eq!(
        get_many(CHECK, &store, &ids),
        vec![
            None,
            None,
            None,
            Some(entry(150, 150)),
            Some(entry(151, 151)),
            Some(entry(10_000, 10_000))
        ],
        "{CHECK}: entries after expire_before(150)"
    );
    assert_eq!(get(CHECK, &store, b"old"), None, "{CHECK}: get(old)");
    assert_eq!(store.stats().entries, 3, "{CHECK}: stats().entries");
}

/// Expiring with the same or a lower cutoff again removes nothing.
pub fn check_expire_before_again_removes_nothing<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_expire_before_again_removes_nothing";
    let mut store = make();
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"a", entry(100, 1)), (b"b", entry(200, 2))], 2),
    );
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(150)),
        1,
        "{CHECK}: first call"
    );
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(150)),
        0,
        "{CHECK}: same cutoff"
    );
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(120)),
        0,
        "{CHECK}: lower cutoff"
    );
    assert_eq!(
        get(CHECK, &store, b"b"),
        Some(entry(200, 2)),
        "{CHECK}: survivor"
    );
    assert_eq!(store.stats().entries, 1, "{CHECK}: stats().entries");

    let mut empty = make();
    assert_eq!(
        ok(CHECK, "expire_before", empty.expire_before(i64::MAX)),
        0,
        "{CHECK}: empty"
    );
}

/// Expiry removes entries, never the checkpoint: the changelog position is unchanged.
pub fn check_expire_before_keeps_checkpoint<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_expire_before_keeps_checkpoint";
    let mut store = make();
    apply(CHECK, &mut store, &batch(&[(b"a", entry(100, 1))], 11));
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(1_000)),
        1,
        "{CHECK}: removed"
    );
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(11)),
        "{CHECK}: checkpoint"
    );
}

/// `wipe` removes every entry and the checkpoint.
pub fn check_wipe_clears_entries_and_checkpoint<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_wipe_clears_entries_and_checkpoint";
    let mut store = make();
    let ids: [&[u8]; 4] = [b"a", b"b", &[0u8], &[0xff; 256]];
    let entries: Vec<(&[u8], SeenEntry)> = ids.iter().map(|id| (*id, entry(1_000, 1))).collect();
    apply(CHECK, &mut store, &batch(&entries, 4));
    ok(CHECK, "wipe", store.wipe());
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        None,
        "{CHECK}: checkpoint"
    );
    assert_eq!(
        get_many(CHECK, &store, &ids),
        vec![None; 4],
        "{CHECK}: entries"
    );
    assert_eq!(store.stats().entries, 0, "{CHECK}: stats().entries");
    ok(CHECK, "wipe of a wiped store", store.wipe());
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        None,
        "{CHECK}: checkpoint after 2nd wipe"
    );
}

/// After `wipe` the store takes new batches as if it were new.
pub fn check_store_is_usable_after_wipe<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_store_is_usable_after_wipe";
    let mut store = make();
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"a", entry(1_000, 1)), (b"b", entry(1_000, 2))], 2),
    );
    ok(CHECK, "wipe", store.wipe());
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"b", entry(2_000, 3)), (b"c", entry(2_000, 4))], 2),
    );
    assert_eq!(
        get_many(CHECK, &store, &[b"a", b"b", b"c"]),
        vec![None, Some(entry(2_000, 3)), Some(entry(2_000, 4))],
        "{CHECK}: entries"
    );
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(2)),
        "{CHECK}: checkpoint"
    );
    assert_eq!(store.stats().entries, 2, "{CHECK}: stats().entries");
}

/// `stats().entries` counts distinct stored IDs exactly through apply (with repeated and
/// overwritten IDs), expiry and wipe.
pub fn check_stats_count_distinct_ids_exactly<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_stats_count_distinct_ids_exactly";
    let mut store = make();
    apply(
        CHECK,
        &mut store,
        &batch(
            &[
                (b"a", entry(100, 1)),
                (b"b", entry(200, 2)),
                (b"a", entry(100, 3)),
            ],
            3,
        ),
    );
    assert_eq!(
        store.stats().entries,
        2,
        "{CHECK}: after a batch repeating an ID"
    );
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"b", entry(300, 4)), (b"c", entry(300, 5))], 5),
    );
    assert_eq!(
        store.stats().entries,
        3,
        "{CHECK}: after overwriting one and adding one"
    );
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(250)),
        1,
        "{CHECK}: expired"
    );
    assert_eq!(store.stats().entries, 2, "{CHECK}: after expiry");
    ok(CHECK, "wipe", store.wipe());
    assert_eq!(store.stats().entries, 0, "{CHECK}: after wipe");
    apply(CHECK, &mut store, &batch(&[(b"a", entry(400, 6))], 6));
    assert_eq!(
        store.stats().entries,
        1,
        "{CHECK}: after apply following wipe"
    );
}

/// `apply_unseen` of IDs absent from the store records them, moves the checkpoint and counts
/// them exactly, like `apply`; an ID re-seen after it expired is stored again with its new
/// entry, and the next expiry leaves the count exact.
pub fn check_apply_unseen_records_new_ids_like_apply<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_apply_unseen_records_new_ids_like_apply";
    let mut store = make();
    apply(CHECK, &mut store, &batch(&[(b"old", entry(100, 1))], 2));
    let unseen = batch(&[(b"a", entry(500, 2)), (b"b", entry(500, 3))], 4);
    ok(CHECK, "apply_unseen", store.apply_unseen(&unseen));
    assert_eq!(
        ok(CHECK, "get a", store.get(&IdKey::of(b"a"))),
        Some(entry(500, 2)),
        "{CHECK}: a"
    );
    assert_eq!(
        ok(CHECK, "get b", store.get(&IdKey::of(b"b"))),
        Some(entry(500, 3)),
        "{CHECK}: b"
    );
    assert_eq!(
        ok(CHECK, "checkpoint", store.checkpoint()),
        Some(checkpoint(4)),
        "{CHECK}: checkpoint"
    );
    assert_eq!(
        store.stats().entries,
        3,
        "{CHECK}: entries after apply_unseen"
    );

    // "old" expired (first seen at 100, retention cut-off 300) and is seen again.
    let reseen = batch(&[(b"old", entry(600, 4))], 5);
    ok(CHECK, "apply_unseen re-seen", store.apply_unseen(&reseen));
    assert_eq!(
        ok(CHECK, "get old", store.get(&IdKey::of(b"old"))),
        Some(entry(600, 4)),
        "{CHECK}: re-seen ID holds its new entry"
    );
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(300)),
        0,
        "{CHECK}: nothing is older than the cut-off any more"
    );
    assert_eq!(
        store.stats().entries,
        3,
        "{CHECK}: entries after the expiry pass"
    );
}

/// IDs are arbitrary bytes compared exactly: zero bytes, 0xff runs, prefixes of each other
/// and non-UTF-8 sequences are all distinct keys.
pub fn check_binary_ids_are_distinct_exact_keys<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_binary_ids_are_distinct_exact_keys";
    let mut store = make();
    let long_ff = [0xffu8; 256];
    let long_ff_but_last = [0xffu8; 255];
    let ids: [&[u8]; 10] = [
        &[0u8],
        &[0u8, 0],
        &[0u8, 1],
        &long_ff,
        &long_ff_but_last,
        b"a",
        b"a\0",
        b"ab",
        &[0xc3, 0x28],
        &[0x80, 0xff, 0x00, 0x7f],
    ];
    let entries: Vec<(&[u8], SeenEntry)> = ids
        .iter()
        .zip(0..)
        .map(|(id, n)| (*id, entry(1_000 + n, n)))
        .collect();
    // Store every other ID first: each stored one must hit, its neighbours must miss.
    let (even, _): (Vec<_>, Vec<_>) = entries
        .iter()
        .copied()
        .partition(|(_, e)| e.source_offset % 2 == 0);
    apply(CHECK, &mut store, &batch(&even, 1));
    let expected: Vec<_> = entries
        .iter()
        .map(|(_, e)| (e.source_offset % 2 == 0).then_some(*e))
        .collect();
    assert_eq!(
        get_many(CHECK, &store, &ids),
        expected,
        "{CHECK}: half stored"
    );

    apply(CHECK, &mut store, &batch(&entries, 2));
    let expected: Vec<_> = entries.iter().map(|(_, e)| Some(*e)).collect();
    assert_eq!(
        get_many(CHECK, &store, &ids),
        expected,
        "{CHECK}: all stored"
    );
    assert_eq!(store.stats().entries, 10, "{CHECK}: stats().entries");
    assert_eq!(
        get(CHECK, &store, &[0xffu8; 257]),
        None,
        "{CHECK}: longer 0xff run"
    );
    assert_eq!(
        get(CHECK, &store, &[0u8, 0, 0]),
        None,
        "{CHECK}: longer zero run"
    );
}

/// Entries with extreme field values round-trip unchanged.
pub fn check_extreme_entry_values_round_trip<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_extreme_entry_values_round_trip";
    let mut store = make();
    let cases: [(&[u8], SeenEntry); 4] = [
        (b"max", entry(i64::MAX, i64::MAX)),
        (b"zero", entry(0, 0)),
        (b"minus-one", entry(-1, -1)),
        (b"offset-min", entry(1, i64::MIN)),
    ];
    apply(CHECK, &mut store, &batch(&cases, i64::MAX));
    let ids: Vec<&[u8]> = cases.iter().map(|(id, _)| *id).collect();
    let expected: Vec<_> = cases.iter().map(|(_, e)| Some(*e)).collect();
    assert_eq!(get_many(CHECK, &store, &ids), expected, "{CHECK}: entries");
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(i64::MAX)),
        "{CHECK}: checkpoint"
    );
}

/// A batch of 10 000 IDs is applied atomically and read back exactly, next to 10 000 misses.
pub fn check_ten_thousand_id_batch_round_trips<S: DedupStore>(make: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_ten_thousand_id_batch_round_trips";
    const N: i64 = 10_000;
    let mut store = make();
    let id = |n: i64, tag: &[u8]| [tag, &n.to_be_bytes()[..]].concat();
    let stored: Vec<Vec<u8>> = (0..N).map(|n| id(n, b"msg-")).collect();
    let absent: Vec<Vec<u8>> = (0..N).map(|n| id(n, b"not-")).collect();
    let batch = StoreBatch {
        entries: stored
            .iter()
            .zip(0..)
            .map(|(id, n)| (IdKey::of(id), entry(1_000 + n, n)))
            .collect(),
        checkpoint: checkpoint(N),
    };
    apply(CHECK, &mut store, &batch);

    // Interleave hits and misses, in reverse order of insertion.
    let query: Vec<&[u8]> = stored
        .iter()
        .rev()
        .zip(absent.iter())
        .flat_map(|(hit, miss)| [hit.as_slice(), miss.as_slice()])
        .collect();
    let answers = get_many(CHECK, &store, &query);
    assert_eq!(answers.len(), query.len(), "{CHECK}: one answer per ID");
    for (i, answer) in answers.iter().enumerate() {
        let expected = (i % 2 == 0).then(|| {
            let n = N - 1 - (i / 2) as i64;
            entry(1_000 + n, n)
        });
        assert_eq!(*answer, expected, "{CHECK}: answer {i}");
    }
    assert_eq!(store.stats().entries, N as u64, "{CHECK}: stats().entries");
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(N)),
        "{CHECK}: checkpoint"
    );
}

// ---------------------------------------------------------------------------------------------
// Checks across reopening a persistent store.

/// Closing and reopening keeps entries and checkpoint.
pub fn check_reopen_keeps_entries_and_checkpoint<S: DedupStore>(open: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_reopen_keeps_entries_and_checkpoint";
    let mut store = fresh(CHECK, open);
    let (a, b) = (entry(1_000, 1), entry(2_000, 2));
    apply(CHECK, &mut store, &batch(&[(b"a", a), (&[0u8], b)], 2));
    drop(store);

    let store = open();
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(2)),
        "{CHECK}: checkpoint"
    );
    assert_eq!(
        get_many(CHECK, &store, &[b"a", &[0u8], b"c"]),
        vec![Some(a), Some(b), None],
        "{CHECK}: entries"
    );
}

/// After many batches, a reopened store shows all their IDs and the last checkpoint.
pub fn check_reopen_keeps_the_last_of_many_batches<S: DedupStore>(open: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_reopen_keeps_the_last_of_many_batches";
    let mut store = fresh(CHECK, open);
    for n in 0..50i64 {
        let id = n.to_be_bytes();
        apply(CHECK, &mut store, &batch(&[(&id, entry(n, n))], n + 1));
    }
    drop(store);

    let store = open();
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(50)),
        "{CHECK}: checkpoint"
    );
    let ids: Vec<[u8; 8]> = (0..50i64).map(i64::to_be_bytes).collect();
    let refs: Vec<&[u8]> = ids.iter().map(|id| &id[..]).collect();
    let expected: Vec<_> = (0..50).map(|n| Some(entry(n, n))).collect();
    assert_eq!(get_many(CHECK, &store, &refs), expected, "{CHECK}: entries");
}

/// A reopened store reports the exact entry count it had when closed.
pub fn check_reopen_keeps_exact_entry_count<S: DedupStore>(open: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_reopen_keeps_exact_entry_count";
    let mut store = fresh(CHECK, open);
    apply(
        CHECK,
        &mut store,
        &batch(
            &[
                (b"a", entry(1, 1)),
                (b"b", entry(2, 2)),
                (b"a", entry(3, 3)),
            ],
            3,
        ),
    );
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"b", entry(4, 4)), (b"c", entry(5, 5))], 5),
    );
    assert_eq!(store.stats().entries, 3, "{CHECK}: before close");
    drop(store);

    let mut store = open();
    assert_eq!(store.stats().entries, 3, "{CHECK}: after reopen");
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"c", entry(6, 6)), (b"d", entry(7, 7))], 7),
    );
    assert_eq!(
        store.stats().entries,
        4,
        "{CHECK}: after apply following reopen"
    );
}

/// Expired entries stay gone after a reopen; the survivors and the checkpoint stay.
pub fn check_reopen_after_expire_keeps_only_survivors<S: DedupStore>(open: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_reopen_after_expire_keeps_only_survivors";
    let mut store = fresh(CHECK, open);
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"old", entry(100, 1)), (b"new", entry(300, 2))], 2),
    );
    assert_eq!(
        ok(CHECK, "expire_before", store.expire_before(200)),
        1,
        "{CHECK}: expired"
    );
    drop(store);

    let store = open();
    assert_eq!(
        get_many(CHECK, &store, &[b"old", b"new"]),
        vec![None, Some(entry(300, 2))],
        "{CHECK}: entries"
    );
    assert_eq!(store.stats().entries, 1, "{CHECK}: stats().entries");
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        Some(checkpoint(2)),
        "{CHECK}: checkpoint"
    );
}

/// A wiped store is still empty after a reopen: nothing comes back.
pub fn check_reopen_after_wipe_is_empty<S: DedupStore>(open: &mut impl FnMut() -> S) {
    const CHECK: &str = "check_reopen_after_wipe_is_empty";
    let mut store = fresh(CHECK, open);
    apply(
        CHECK,
        &mut store,
        &batch(&[(b"a", entry(1, 1)), (&[0xff; 256], entry(2, 2))], 2),
    );
    ok(CHECK, "wipe", store.wipe());
    drop(store);

    let store = open();
    assert_eq!(
        stored_checkpoint(CHECK, &store),
        None,
        "{CHECK}: checkpoint"
    );
    assert_eq!(
        get_many(CHECK, &store, &[b"a", &[0xff; 256]]),
        vec![None; 2],
        "{CHECK}: entries"
    );
    assert_eq!(store.stats().entries, 0, "{CHECK}: stats().entries");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskStore;
    use exactly_core::MemDedupStore;

    #[test]
    fn mem_store_passes_the_suite() {
        run_all(MemDedupStore::new);
    }

    #[test]
    fn disk_store_passes_the_suite() {
        run_all(DiskStore::new);
    }

    /// Every handle opened on the same `DiskStore` sees the same data: a persistent store.
    #[test]
    fn disk_store_passes_the_persistent_suite() {
        let disk = DiskStore::new();
        run_persistent(|| disk.clone());
    }

    #[test]
    fn a_store_that_forgets_on_reopen_fails_the_persistent_suite() {
        let failure = std::panic::catch_unwind(|| run_persistent(MemDedupStore::new))
            .expect_err("a store that loses everything on reopen must fail");
        let message = failure
            .downcast_ref::<String>()
            .expect("assertion failures carry a formatted message");
        assert!(
            message.contains("check_reopen_keeps_entries_and_checkpoint: checkpoint"),
            "unexpected failure: {message}"
        );
    }
}
