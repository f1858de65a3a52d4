//! State stores through the real task state machine on the simulated cluster: writes commit
//! with outputs, aborted and failed attempts leave no trace, crashes at every point of the
//! protocol end in the state a sequential run over unique IDs gives, TTL and scans.

use exactly_core::state::{Bincode, TypedStore};
use exactly_core::Deserializer;
use exactly_core::{
    Context, FlushContext, Output, ProcessError, Processor, Record, StoreSpec, TaskConfig, TaskId,
};
use exactly_testkit::{CrashPoint, StepOutcome, TestDriver, TestRecord};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Adds each payment (key = account, value = amount) to the account's running total and
/// emits `account -> total`. With `fail_flushes > 0` the first flushes fail (the transaction
/// aborts); `retry_once` makes the first attempt of each record write and then fail.
struct Totals {
    totals: TypedStore<String, i64, Bincode>,
    fail_flushes: Arc<AtomicU32>,
    retry_once: bool,
    attempted: bool,
}

impl Processor for Totals {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let account = String::from_utf8_lossy(r.key.unwrap_or_default()).into_owned();
        let amount: i64 = std::str::from_utf8(r.value.unwrap_or_default())
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ProcessError::dead_letter("amount is not an integer"))?;
        let total = self.totals.get(ctx, &account)?.unwrap_or(0) + amount;
        self.totals.put(ctx, &account, &total)?;
        if self.retry_once && !self.attempted {
            self.attempted = true;
            return Err(ProcessError::retry("first attempt fails after its write"));
        }
        self.attempted = false;
        if amount < 0 {
            // Written above, then refused: the write must vanish with the record.
            return Err(ProcessError::dead_letter("negative amount"));
        }
        ctx.send(Output::to("totals").key(account).value(total.to_string()));
        Ok(())
    }

    fn flush(&mut self, _ctx: &mut FlushContext<'_>) -> Result<(), ProcessError> {
        let left = self.fail_flushes.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_flushes.store(left - 1, Ordering::SeqCst);
            return Err(ProcessError::retry("sink unavailable"));
        }
        Ok(())
    }
}

type Factory = Box<dyn Fn(&TaskId) -> Totals + Send + Sync>;

fn driver_with(fail_flushes: u32, retry_once: bool, partitions: i32) -> TestDriver<Factory> {
    let fail = Arc::new(AtomicU32::new(fail_flushes));
    let factory: Factory = Box::new(move |_: &TaskId| Totals {
        totals: TypedStore::new("totals"),
        fail_flushes: fail.clone(),
        retry_once,
        attempted: false,
    });
    let config = TaskConfig {
        stores: vec![StoreSpec::new("totals")],
        dead_letter_topic: Some("dlq".into()),
        ..TaskConfig::default()
    };
    TestDriver::builder(factory)
        .input("payments", partitions)
        .config(config)
        .max_batch(4)
        .build()
}

/// 40 payments over 3 accounts, every 4th one re-sent: (id, account, amount) in send order.
fn payments() -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for i in 0..40 {
        let p = (
            format!("p{i}"),
            format!("acct-{}", i % 3),
            i64::from(i % 7) + 1,
        );
        if i % 4 == 3 {
            out.push(p.clone());
        }
        out.push(p);
    }
    out
}

fn pipe_all(d: &mut TestDriver<Factory>, payments: &[(String, String, i64)]) {
    for (id, account, amount) in payments {
        d.pipe(
            TestRecord::with_id(id.as_str())
                .key(account.as_str())
                .value(amount.to_string()),
        );
    }
}

/// What a sequential run over the unique IDs gives: each account's final total, and the total
/// emitted for each payment.
fn sequential(payments: &[(String, String, i64)]) -> (BTreeMap<String, i64>, Vec<(String, i64)>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut totals = BTreeMap::new();
    let mut emitted = Vec::new();
    for (id, account, amount) in payments {
        if !seen.insert(id) {
            continue;
        }
        let t = totals.entry(account.clone()).or_insert(0);
        *t += amount;
        emitted.push((account.clone(), *t));
    }
    (totals, emitted)
}

fn committed_totals(d: &TestDriver<Factory>, partitions: i32) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        for (k, v) in d.committed_state("totals", p) {
            let total: i64 = Deserializer::<i64>::decode(&Bincode, &v).expect("a bincode i64");
            out.insert(String::from_utf8(k).expect("utf-8 account"), total);
        }
    }
    out
}

fn emitted(d: &TestDriver<Factory>) -> Vec<(String, i64)> {
    d.committed_outputs("totals")
        .into_iter()
        .map(|r| {
            let account = String::from_utf8(r.key.expect("key")).expect("utf-8");
            let total = String::from_utf8(r.value.expect("value"))
                .expect("utf-8")
                .parse()
                .expect("a number");
            (account, total)
        })
        .collect()
}

/// Outputs grouped per account, in order (accounts may interleave differently across
/// partitions, never within one).
fn per_account(list: &[(String, i64)]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (a, t) in list {
        out.entry(a.clone()).or_default().push(*t);
    }
    out
}

#[test]
fn running_totals_equal_a_sequential_run_over_unique_ids() {
    let mut d = driver_with(0, false, 2);
    let input = payments();
    pipe_all(&mut d, &input);
    d.run_until_idle().unwrap();
    let (totals, expected) = sequential(&input);
    assert_eq!(committed_totals(&d, 2), totals);
    assert_eq!(per_account(&emitted(&d)), per_account(&expected));
    assert_eq!(emitted(&d).len(), 40);
    assert_eq!(d.stats().duplicates_dropped, 10);
}

#[test]
fn a_crash_at_every_point_of_every_cycle_ends_in_the_sequential_state() {
    let points = [
        CrashPoint::BeforeSend,
        CrashPoint::AfterSendsBeforeCommit,
        CrashPoint::DuringCommit { committed: true },
        CrashPoint::DuringCommit { committed: false },
        CrashPoint::AfterCommitBeforeApply,
    ];
    let input = payments();
    let (totals, expected) = sequential(&input);
    for point in points {
        let mut d = driver_with(0, false, 2);
        pipe_all(&mut d, &input);
        // Crash every other cycle until the input is done.
        let mut crashes = 0;
        for cycle in 0..1000 {
            let outcome = if cycle % 2 == 0 {
                d.step_and_crash(point).unwrap()
            } else {
                d.step().unwrap()
            };
            if matches!(outcome, StepOutcome::Crashed(_)) {
                crashes += 1;
            }
            if outcome == StepOutcome::Idle {
                break;
            }
        }
        d.run_until_idle().unwrap();
        assert!(crashes >= 5, "{point:?}: only {crashes} crashes");
        assert_eq!(committed_totals(&d, 2), totals, "{point:?}");
        assert_eq!(
            per_account(&emitted(&d)),
            per_account(&expected),
            "{point:?}"
        );
    }
}

#[test]
fn an_aborted_transactions_state_changes_are_invisible_after_the_rewind() {
    // The first two flushes fail: the first two transactions abort after their records were
    // processed and their writes staged; the redelivered records must see the old totals.
    let mut d = driver_with(2, false, 1);
    let input = payments();
    pipe_all(&mut d, &input);
    assert!(matches!(d.step().unwrap(), StepOutcome::Aborted { .. }));
    assert!(d.committed_state("totals", 0).is_empty());
    assert!(matches!(d.step().unwrap(), StepOutcome::Aborted { .. }));
    d.run_until_idle().unwrap();
    assert_eq!(d.stats().aborts, 2);
    let (totals, expected) = sequential(&input);
    assert_eq!(committed_totals(&d, 1), totals);
    assert_eq!(emitted(&d), expected, "one partition: the exact sequence");
}

#[test]
fn a_failed_attempts_writes_are_dropped_before_the_retry() {
    // Every record's first attempt reads, writes total+amount, then fails with Retry. If that
    // write survived, the second attempt would add the amount twice.
    let mut d = driver_with(0, true, 1);
    let input = payments();
    pipe_all(&mut d, &input);
    d.run_until_idle().unwrap();
    let (totals, expected) = sequential(&input);
    assert_eq!(committed_totals(&d, 1), totals);
    assert_eq!(emitted(&d), expected);
}

#[test]
fn a_dead_lettered_records_writes_are_dropped() {
    let mut d = driver_with(0, false, 1);
    d.pipe(TestRecord::with_id("a").key("acct").value("5"));
    d.pipe(TestRecord::with_id("b").key("acct").value("-100"));
    d.pipe(TestRecord::with_id("c").key("acct").value("2"));
    d.run_until_idle().unwrap();
    assert_eq!(d.dead_letters().len(), 1);
    assert_eq!(committed_totals(&d, 1)["acct"], 7);
    assert_eq!(
        emitted(&d),
        vec![("acct".to_owned(), 5), ("acct".to_owned(), 7)]
    );
}

/// Counts events per key in the store it names (`recent`: a windowed store, TTL 1 minute);
/// lists the live keys with a prefix scan; `del:<key>` deletes.
struct Window(&'static str);

impl Processor for Window {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let key = r.key.unwrap_or_default().to_vec();
        let mut store = ctx.store(self.0)?;
        if let Some(k) = key.strip_prefix(b"del:") {
            store.delete(k.to_vec());
        } else {
            let n = store.get(&key)?.map_or(0, |v| v[0]) + 1;
            store.put(key, &[n]);
        }
        let live: Vec<String> = store
            .scan_prefix(b"k")?
            .into_iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(&k), v[0]))
            .collect();
        ctx.send(Output::to("live").value(live.join(",")));
        Ok(())
    }
}

fn window_driver() -> TestDriver<fn(&TaskId) -> Window> {
    let config = TaskConfig {
        stores: vec![StoreSpec::new("recent").ttl(Duration::from_secs(60))],
        ..TaskConfig::default()
    };
    TestDriver::builder((|_: &TaskId| Window("recent")) as fn(&TaskId) -> Window)
        .input("events", 1)
        .config(config)
        .build()
}

fn last_live(d: &TestDriver<fn(&TaskId) -> Window>) -> String {
    let out = d.committed_outputs("live");
    String::from_utf8(out.last().expect("an output").value.clone().unwrap()).unwrap()
}

#[test]
fn scans_see_this_transactions_writes_and_deletes_in_key_order() {
    let mut d = window_driver();
    for (id, key) in [
        ("1", "k2"),
        ("2", "k1"),
        ("3", "k2"),
        ("4", "x"),
        ("5", "del:k1"),
    ] {
        d.pipe(TestRecord::with_id(id).key(key));
    }
    // One transaction: every scan merges the committed (none), staged and pending writes.
    d.step().unwrap();
    let live: Vec<String> = d
        .committed_outputs("live")
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
        .collect();
    assert_eq!(
        live,
        ["k2=1", "k1=1,k2=1", "k1=1,k2=2", "k1=1,k2=2", "k2=2"]
    );
    // Across a restart (restore from the changelog) the delete holds too.
    d.restart().unwrap();
    d.pipe(TestRecord::with_id("6").key("k3"));
    d.run_until_idle().unwrap();
    assert_eq!(last_live(&d), "k2=2,k3=1");
}

#[test]
fn entries_expire_after_the_store_ttl_in_reads_expiry_and_restores() {
    let mut d = window_driver();
    d.pipe(TestRecord::with_id("1").key("k1"));
    d.run_until_idle().unwrap();
    d.clock().advance(Duration::from_secs(45));
    d.pipe(TestRecord::with_id("2").key("k2"));
    d.run_until_idle().unwrap();
    assert_eq!(last_live(&d), "k1=1,k2=1");
    d.clock().advance(Duration::from_secs(30)); // k1 is 75 s old, k2 30 s
    d.pipe(TestRecord::with_id("3").key("k1"));
    d.run_until_idle().unwrap();
    assert_eq!(
        last_live(&d),
        "k1=1,k2=1",
        "k1 expired: counted from 0 again"
    );
    assert_eq!(d.committed_state("recent", 0).len(), 2);
    d.clock().advance(Duration::from_secs(40)); // k2 is 70 s old
    assert_eq!(d.committed_state("recent", 0).len(), 1);
    d.expire().unwrap();
    // A restore skips the expired entry as well.
    d.restart().unwrap();
    d.pipe(TestRecord::with_id("4").key("k2"));
    d.run_until_idle().unwrap();
    assert_eq!(last_live(&d), "k1=1,k2=1");
}

#[test]
fn an_undeclared_store_is_a_fatal_error_that_names_the_declared_ones() {
    struct Wrong;
    impl Processor for Wrong {
        fn process(&mut self, _: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
            ctx.store("totalz")?.put(b"k".to_vec(), b"v");
            Ok(())
        }
    }
    let config = TaskConfig {
        stores: vec![StoreSpec::new("totals")],
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder((|_: &TaskId| Wrong) as fn(&TaskId) -> Wrong)
        .config(config)
        .build();
    d.pipe(TestRecord::with_id("1"));
    let err = d.run_until_idle().unwrap_err().to_string();
    assert!(
        err.contains("no state store named \"totalz\" (declared: totals)"),
        "{err}"
    );
}

/// [`Window`]'s counting over store `registry`, which has no TTL.
fn registry_driver() -> TestDriver<fn(&TaskId) -> Window> {
    let config = TaskConfig {
        stores: vec![StoreSpec::new("registry")],
        ..TaskConfig::default()
    };
    TestDriver::builder((|_: &TaskId| Window("registry")) as fn(&TaskId) -> Window)
        .input("events", 1)
        .config(config)
        .build()
}

#[test]
fn a_restart_restores_only_the_tail_a_recent_state_store_lacks() {
    let mut d = registry_driver();
    for (id, key) in [("1", "k1"), ("2", "k2"), ("3", "k1")] {
        d.pipe(TestRecord::with_id(id).key(key));
    }
    d.run_until_idle().unwrap();
    let before = d.stats().restored_state_records;

    // A restart with the store intact replays nothing of the state changelog.
    d.restart().unwrap();
    assert_eq!(d.stats().restored_state_records, before);

    // A crash between the commit and the store apply leaves the store one transaction
    // behind: the restart replays exactly that transaction's state writes.
    d.pipe(TestRecord::with_id("4").key("k3"));
    d.pipe(TestRecord::with_id("5").key("k1"));
    d.step_and_crash(CrashPoint::AfterCommitBeforeApply)
        .unwrap();
    d.restart().unwrap();
    assert_eq!(d.stats().restored_state_records, before + 2);
    d.pipe(TestRecord::with_id("6").key("k2"));
    d.run_until_idle().unwrap();
    assert_eq!(last_live(&d), "k1=3,k2=2,k3=1");
}

#[test]
fn a_state_store_left_behind_for_longer_than_half_the_delete_retention_is_restored_whole() {
    let mut d = registry_driver();
    d.pipe(TestRecord::with_id("1").key("k1"));
    d.pipe(TestRecord::with_id("2").key("k2"));
    d.run_until_idle().unwrap();

    // The task moves to another host (a replacement with this instance id and an empty state
    // directory), which deletes k1. The first host's directory stays behind, holding k1.
    let zombie = d.start_replacement().unwrap();
    let first_host = zombie.state_dir();
    drop(zombie);
    d.pipe(TestRecord::with_id("3").key("del:k1"));
    d.run_until_idle().unwrap();
    assert_eq!(last_live(&d), "k2=1");

    // A day and a half later compaction has removed k1's put and then its tombstone, older
    // than the changelog's delete.retention.ms (a day).
    d.clock().advance(Duration::from_secs(36 * 3600));
    let changelog = d.state_changelog_topic("registry");
    d.cluster().clean(&changelog);
    let left: Vec<_> = d
        .cluster()
        .committed_records(&changelog)
        .into_iter()
        .filter_map(|(_, _, r)| r.key.clone())
        .collect();
    assert_eq!(left, vec![b"k2".to_vec()]);

    // The task moves back to the first host. Its store last matched the changelog 36 hours
    // ago: it is wiped and restored whole, so k1 does not come back.
    d.use_state_dir(first_host);
    let before = d.stats().restored_state_records;
    d.restart().unwrap();
    assert_eq!(d.stats().restored_state_records, before + 1);
    d.pipe(TestRecord::with_id("4").key("k3"));
    d.run_until_idle().unwrap();
    assert_eq!(last_live(&d), "k2=1,k3=1");
}
