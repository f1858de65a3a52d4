//! Targeted schedules: each puts the production engine through one situation of Apache
//! Kafka's rules that the local test broker cannot show or that once went wrong, and checks
//! the committed output per message ID.

use crate::apps::AppKind;
use crate::world::{lock_world, step, Setup, Shared, Who, World};
use exactly_core::engine::RestoreFrom;
use exactly_testkit::sim::GroupProtocol;
use exactly_testkit::{Fault, FaultKind, Request};
use rand::SeedableRng;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

fn world(kind: AppKind, partitions: i32, instances: usize) -> Shared {
    world_with(kind, partitions, instances, |_| {})
}

/// [`world`] with `change` applied to its setup.
fn world_with(
    kind: AppKind,
    partitions: i32,
    instances: usize,
    change: impl FnOnce(&mut Setup),
) -> Shared {
    let mut setup = Setup {
        kind,
        partitions,
        instances,
        threads: 1,
        protocol: GroupProtocol::Cooperative,
        static_membership: true,
        max_batch: 1_000,
        restore_from: RestoreFrom::Checkpoint,
        // Transactions stay open across turns unless a scenario lets this much time pass.
        commit_interval_ms: 2_000,
        poison_rate: 0.0,
        global: false,
        persist_every: 1,
        changelog_record_bytes: exactly_core::task::DEFAULT_CHANGELOG_RECORD_BYTES,
    };
    change(&mut setup);
    let rng = rand::rngs::StdRng::seed_from_u64(7);
    Arc::new(Mutex::new(World::new(rng, setup)))
}

/// Turns of thread 0 of instance `i` (10 ms apart) until its tasks are these partitions,
/// all running.
fn run_until_tasks(w: &Shared, i: usize, partitions: &[i32]) {
    for _ in 0..500 {
        let tasks = lock_world(w).tasks(i, 0);
        let mut running: Vec<i32> = tasks.iter().filter(|t| t.1).map(|t| t.0).collect();
        running.sort_unstable();
        if running == partitions && tasks.len() == partitions.len() {
            return;
        }
        lock_world(w).advance(10);
        step(w, Who::Instance(i, 0), None);
    }
    panic!(
        "instance {i} did not get running tasks {partitions:?}: {:?}",
        lock_world(w).tasks(i, 0)
    );
}

/// Two instances of the stateless app over 2 partitions, with dynamic membership (an
/// instance that shuts down leaves the group at once, so the other gets its partition while
/// its own transaction is still open), turned until each runs one task.
fn two_instances_with_a_task_each() -> Shared {
    let w = world_with(AppKind::Fanout, 2, 2, |s| s.static_membership = false);
    {
        let mut g = lock_world(&w);
        g.start(0);
        g.start(1);
    }
    for _ in 0..500 {
        let done = {
            let g = lock_world(&w);
            (0..2).all(|i| g.tasks(i, 0).iter().filter(|t| t.1).count() == 1)
        };
        if done {
            break;
        }
        lock_world(&w).advance(10);
        step(&w, Who::Instance(0, 0), None);
        step(&w, Who::Instance(1, 0), None);
    }
    w
}

/// Starts instance `i` alone with both partitions and leaves a transaction open holding `n`
/// new inputs.
fn open_transaction(w: &Shared, i: usize, n: usize) {
    lock_world(w).start(i);
    run_until_tasks(w, i, &[0, 1]);
    lock_world(w).produce(n);
    step(w, Who::Instance(i, 0), None);
    assert!(lock_world(w).transaction_open(i, 0));
}

/// Turns of every thread until the input is consumed; then the oracle.
fn finish(w: &Shared) {
    for _ in 0..5_000 {
        let runnable = {
            let mut g = lock_world(w);
            g.advance(25);
            if g.drained() {
                break;
            }
            g.runnable()
        };
        for who in runnable {
            step(w, who, None);
        }
    }
    let g = lock_world(w);
    assert!(g.drained(), "the input was not consumed:\n{}", g.diagnose());
    let problems = g.problems();
    assert!(
        g.failures.is_empty() && problems.is_empty(),
        "failures: {:?}\nproblems: {problems:?}\ntrace:\n{}",
        g.failures,
        g.trace.join("\n")
    );
}

/// Records fetched in the poll that delivers a revocation are handled before it; when the
/// revocation's commit fails, the abort rewinds the kept partition and its records are
/// fetched again: none is handled after the rewind out of order. (The stream thread used to
/// handle the revocation inside the poll, rewind, and then process the records it had fetched
/// before the rewind.)
#[test]
fn records_fetched_before_a_rewind_in_a_revocation_are_not_processed_after_it() {
    let w = world(AppKind::Totals, 2, 2);
    // An open transaction with records of both partitions.
    open_transaction(&w, 0, 20);
    // A second member joins: cooperative-sticky takes one partition from the first.
    lock_world(&w).start(1);
    lock_world(&w).produce(20);
    // The commit before the partition moves fails and must abort.
    lock_world(&w).inject(Fault::new(Request::EndTxn, FaultKind::Abortable));
    lock_world(&w).advance(300);
    step(&w, Who::Instance(0, 0), None);
    {
        let g = lock_world(&w);
        assert_eq!(
            g.cluster().pending_faults(),
            0,
            "the commit in the revocation failed"
        );
        assert_eq!(
            g.tasks(0, 0).len(),
            1,
            "one partition moved to the new member"
        );
        assert_eq!(
            g.tally.aborts.load(Ordering::Relaxed),
            1,
            "the failed commit in the revocation aborted"
        );
    }
    finish(&w);
}

/// The coordinator aborts a transaction that outlived `transaction.timeout.ms` and bumps the
/// producer's epoch; librdkafka then reports the producer as fenced. The instance is no zombie
/// (no other process has its instance id): it drops the open transaction's tasks without
/// applying them, makes a new producer, restores and goes on. (It used to stop as a zombie,
/// and after a restart could time out on the same batch again.)
#[test]
fn a_transaction_timed_out_by_the_coordinator_is_recovered_not_taken_for_a_zombie() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    // The thread stalls (slow processing, a long pause) past the transaction timeout while
    // its process keeps heartbeating.
    lock_world(&w).advance(6_000);
    finish(&w);
    let g = lock_world(&w);
    assert_eq!(g.tally.fences.load(Ordering::Relaxed), 1, "fenced once");
    assert_eq!(g.zombie_stops, 0, "and not stopped as a zombie");
    assert!(g.is_running(0), "the instance runs on");
}

/// `/ready` through a fence: a thread whose transaction the coordinator timed out drops its
/// tasks and checks for a newer process with its instance id. It keeps its assignment all
/// along, so "assigned and nothing restoring" held while no task ran; it is not ready until
/// its tasks are restored and run again.
#[test]
fn a_thread_is_not_ready_while_it_checks_for_a_fence_and_until_its_tasks_restored_again() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    assert!(
        lock_world(&w).reported_ready(0, 0),
        "ready with both tasks running"
    );
    lock_world(&w).advance(6_000);
    let mut turns = 0;
    while lock_world(&w).tally.fences.load(Ordering::Relaxed) == 0 {
        turns += 1;
        assert!(turns < 100, "the timed-out transaction was never fenced");
        step(&w, Who::Instance(0, 0), None);
    }
    {
        let g = lock_world(&w);
        assert!(
            g.tasks(0, 0).is_empty(),
            "the fenced thread dropped its tasks"
        );
        assert!(!g.reported_ready(0, 0), "not ready during the fence check");
    }
    let mut unready_turns = 0;
    while !lock_world(&w).reported_ready(0, 0) {
        unready_turns += 1;
        assert!(unready_turns < 500, "never ready again");
        lock_world(&w).advance(10);
        step(&w, Who::Instance(0, 0), None);
    }
    let running: Vec<(i32, bool)> = lock_world(&w).tasks(0, 0);
    assert_eq!(
        running,
        vec![(0, true), (1, true)],
        "ready once both run again"
    );
    assert!(lock_world(&w).failures.is_empty());
    finish(&w);
}

/// The group's committed offsets expire (`offsets.retention.minutes` with every instance
/// down) while the tasks' changelogs keep their IDs. By default the restarted instance
/// refuses to start rather than reprocess the whole input retention from its start; with
/// `offset_reset = earliest` it reprocesses it and the restored stores drop every ID.
#[test]
fn a_task_whose_committed_offset_expired_refuses_to_start_unless_offset_reset_says_where() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    lock_world(&w).produce(30);
    finish(&w);
    let outputs = lock_world(&w).outputs().len();
    lock_world(&w).shutdown(0);
    assert_eq!(lock_world(&w).delete_committed_offsets(), 2);

    lock_world(&w).start(0);
    run_until_stopped(&w, 0, 200);
    {
        let mut g = lock_world(&w);
        assert!(!g.is_running(0), "the instance stopped");
        assert_eq!(g.failures.len(), 1, "{:?}", g.failures);
        assert!(
            g.failures[0].contains("has no committed input offset")
                && g.failures[0].contains("offset_reset"),
            "the error says what happened and what to set: {}",
            g.failures[0]
        );
        assert_eq!(g.outputs().len(), outputs, "nothing was processed again");
        g.failures.clear();
        g.set_offset_reset(exactly_core::engine::OffsetReset::Earliest);
        g.start(0);
    }
    run_until_tasks(&w, 0, &[0, 1]);
    finish(&w);
    assert_eq!(
        lock_world(&w).outputs().len(),
        outputs,
        "reprocessed from the start, every ID dropped by the restored stores"
    );
}

/// A real zombie: the process is paused with a transaction open and a replacement with the
/// same instance id takes over (new producer epoch, the member replaced). When the zombie
/// wakes it finds its member fenced and stops without writing anything.
#[test]
fn a_zombie_replaced_by_its_own_instance_id_writes_nothing_and_stops() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    {
        let mut g = lock_world(&w);
        g.set_paused(0, true);
        g.start(0);
    }
    run_until_tasks(&w, 0, &[0, 1]);
    lock_world(&w).produce(12);
    finish(&w);
    let outputs_before = lock_world(&w).outputs().len();
    // The zombie wakes up and takes turns: it stops, fenced, and adds nothing.
    lock_world(&w).resume_zombies();
    for _ in 0..20 {
        step(&w, Who::Zombie(0, 0), None);
    }
    let g = lock_world(&w);
    assert_eq!(g.zombie_stops, 1, "the zombie stopped as fenced");
    assert_eq!(g.zombies_alive(), 0);
    assert_eq!(g.outputs().len(), outputs_before);
    drop(g);
    finish(&w);
}

/// A zombie whose partitions were taken over by another instance (its session expired while
/// it was paused with sends in an open transaction): the new owner's restore waits for that
/// transaction to end; the zombie, woken up, can commit nothing of it (its transaction timed
/// out, its member is gone) and rejoins as a new member. The local test broker cannot show
/// this: it accepts offsets of a member that left the group.
#[test]
fn a_zombie_taken_over_by_another_instance_cannot_commit_behind_the_new_owner() {
    let w = world(AppKind::Fanout, 2, 2);
    open_transaction(&w, 0, 12);
    {
        let mut g = lock_world(&w);
        g.set_paused(0, true);
        g.start(1);
        // Past the session timeout: the group removes the paused member.
        g.advance(3_500);
    }
    run_until_tasks(&w, 1, &[0, 1]);
    lock_world(&w).produce(12);
    lock_world(&w).set_paused(0, false);
    finish(&w);
}

/// A member frozen inside `commit_transaction`, after its offsets went into the transaction,
/// loses its partitions (session timeout) to another instance. The new owner's read of the
/// committed offsets waits for that transaction (KIP-447): it must not start from the old
/// offsets while the frozen member's commit can still complete. It completes when the member
/// wakes (its epoch is still valid), and the new owner then starts after it.
#[test]
fn a_new_owner_starts_only_after_a_frozen_predecessors_pending_offsets_resolve() {
    let w = world(AppKind::Totals, 2, 2);
    open_transaction(&w, 0, 16);
    let process = lock_world(&w).process(0).expect("running");
    let during = w.clone();
    let new_owner_outputs = Arc::new(Mutex::new(None));
    let seen = new_owner_outputs.clone();
    process.freeze_at_call("commit_transaction", move || {
        {
            let mut g = lock_world(&during);
            g.advance(3_500);
            g.start(1);
        }
        for _ in 0..200 {
            lock_world(&during).advance(5);
            step(&during, Who::Instance(1, 0), None);
        }
        *seen.lock().unwrap() = Some(lock_world(&during).outputs().len());
    });
    // Due for a commit: the turn sends the offsets and freezes in the commit.
    lock_world(&w).advance(2_100);
    step(&w, Who::Instance(0, 0), None);
    let during_freeze = new_owner_outputs.lock().unwrap().take();
    assert_eq!(
        during_freeze,
        Some(0),
        "the new owner produced nothing while the predecessor's offsets were pending"
    );
    lock_world(&w).produce(8);
    finish(&w);
}

/// Refused transactions of a schedule, by what followed.
fn production_errors(w: &Shared) -> Vec<(&'static str, u64)> {
    let g = lock_world(w);
    let m = g.tally.production_errors.lock().unwrap();
    m.iter().map(|(k, v)| (*k, *v)).collect()
}

/// Turns of instance `i` (10 ms apart) until it stops (an engine error), at most `turns`.
fn run_until_stopped(w: &Shared, i: usize, turns: usize) {
    for _ in 0..turns {
        if !lock_world(w).is_running(i) {
            return;
        }
        lock_world(w).advance(10);
        step(w, Who::Instance(i, 0), None);
    }
    panic!("instance {i} still runs after {turns} turns");
}

/// An input record whose outputs the broker refuses for good (here: larger than the output
/// topic's `max.message.bytes`) aborts every transaction that holds them. The broker fails
/// the whole produce batch, so the first refusal names an innocent neighbour; the thread then
/// runs one input record per transaction, and after three refused transactions of that one
/// record it goes to the dead-letter topic with `exactly.error.kind = production` in the
/// transaction that commits its offset, and every other record flows. (The thread used to
/// abort, rewind and retry the same batch for ever.)
#[test]
fn an_input_whose_outputs_the_broker_refuses_is_dead_lettered_once_after_three_refusals() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let mut g = lock_world(&w);
        g.produce(15);
        g.produce_poison(1);
        g.produce(15);
    }
    finish(&w);
    assert_eq!(
        production_errors(&w),
        vec![("dead_lettered", 1), ("retried", 3)],
        "the batch refused, then the record alone refused twice and retried, the third time dead-lettered"
    );
    let g = lock_world(&w);
    assert_eq!(g.tally.aborts.load(Ordering::Relaxed), 4, "four aborts");
    let dead = g.dead_letters();
    assert_eq!(dead.len(), 1, "one dead letter");
    let error = String::from_utf8_lossy(dead[0].2.header("exactly.error").unwrap()).into_owned();
    assert!(
        error.contains("MESSAGE_TOO_LARGE") && error.contains("3 transactions"),
        "the dead letter carries the broker's error: {error}"
    );
}

/// Two poison records in one partition and one in another, in a stateful app: each is
/// dead-lettered once, its state write is dropped with it (the totals are those of a
/// sequential run without it), and its resends are dropped as duplicates.
#[test]
fn poison_records_of_a_stateful_app_are_dead_lettered_once_without_their_state_writes() {
    let w = world(AppKind::Totals, 2, 1);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let mut g = lock_world(&w);
        g.produce(10);
        g.produce_poison(3);
        g.produce(10);
        // Resends of the poison records.
        let poison: Vec<_> = g.inputs.iter().filter(|i| i.poison).cloned().collect();
        for p in poison {
            g.inputs.push(p.clone());
            let key = p.key.clone();
            g.cluster().produce(
                crate::world::INPUT,
                Some(exactly_testkit::sim::partition_of(key.as_bytes(), 2)),
                exactly_testkit::SimRecord {
                    key: Some(key.into_bytes()),
                    value: Some(p.value.to_string().into_bytes()),
                    headers: vec![("message-id".to_owned(), Some(p.id.into_bytes()))],
                    timestamp: None,
                },
            );
        }
    }
    finish(&w);
    let dead_lettered = production_errors(&w)
        .into_iter()
        .find(|(k, _)| *k == "dead_lettered");
    assert_eq!(dead_lettered, Some(("dead_lettered", 3)));
    assert_eq!(lock_world(&w).dead_letters().len(), 3);
}

/// With `on_production_error = fail` the instance stops at the third refusal with an error
/// naming the record and the broker's error, and commits nothing of it; restarted with the
/// default policy it dead-letters the record and goes on.
#[test]
fn with_policy_fail_a_refused_output_stops_the_instance_naming_the_record() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).set_on_production_error(exactly_core::ErrorPolicy::Fail);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let mut g = lock_world(&w);
        g.produce(5);
        g.produce_poison(1);
        g.produce(5);
    }
    run_until_stopped(&w, 0, 2_000);
    {
        let mut g = lock_world(&w);
        assert_eq!(g.failures.len(), 1, "{:?}", g.failures);
        let f = &g.failures[0];
        assert!(
            f.contains("refused an output of input record in-")
                && f.contains("in 3 transactions in a row")
                && f.contains("MESSAGE_TOO_LARGE")
                && f.contains("on_production_error"),
            "the error names the record, the broker's error and the setting: {f}"
        );
        assert!(g.dead_letters().is_empty(), "nothing dead-lettered");
        assert!(!g.cluster().has_open_transactions(), "nothing left open");
        g.failures.clear();
        g.set_on_production_error(exactly_core::ErrorPolicy::DeadLetter);
        g.start(0);
    }
    run_until_tasks(&w, 0, &[0, 1]);
    finish(&w);
    assert_eq!(
        production_errors(&w),
        vec![("dead_lettered", 1), ("retried", 6), ("stopped", 1)],
        "each run: the batch refused, then the record alone twice; the third time stopped, then dead-lettered"
    );
}

/// A dead letter the broker refuses too (the dead-letter topic's `max.message.bytes` is
/// smaller than the record) stops the instance: the record is never skipped without a trace.
#[test]
fn a_refused_dead_letter_stops_the_instance_instead_of_skipping_the_record() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).limit_dead_letters(100);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let mut g = lock_world(&w);
        g.produce(5);
        g.produce_poison(1);
    }
    run_until_stopped(&w, 0, 2_000);
    let g = lock_world(&w);
    assert_eq!(g.failures.len(), 1, "{:?}", g.failures);
    assert!(
        g.failures[0].contains("refused the dead letter of input record"),
        "{}",
        g.failures[0]
    );
    assert!(g.dead_letters().is_empty());
    let committed = g
        .outputs()
        .iter()
        .filter(|(_, _, r)| r.key.as_ref().is_some_and(|k| k.starts_with(b"poison")))
        .count();
    assert_eq!(committed, 0, "no output of the poison record committed");
}

/// A commit whose response is lost (the coordinator committed it) and whose every retry then
/// fails retriably for the whole retry limit (60 s): the outcome is unknown to the thread, so
/// it must not abort and must not go on; it stops with "outcome unknown". The restart finds
/// the transaction committed: every output of it exactly once, nothing processed again.
#[test]
fn a_commit_unresolved_for_the_whole_retry_limit_stops_the_thread_and_the_restart_is_exact() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    {
        let mut g = lock_world(&w);
        g.inject(Fault::new(Request::EndTxn, FaultKind::ResponseLost));
        // 60 s of retries, 100 ms apart, and some to spare.
        for _ in 0..700 {
            g.inject(Fault::new(Request::EndTxn, FaultKind::Retriable));
        }
        g.advance(2_000);
    }
    step(&w, Who::Instance(0, 0), None);
    {
        let mut g = lock_world(&w);
        assert!(!g.is_running(0), "the thread stopped");
        assert_eq!(g.failures.len(), 1, "{:?}", g.failures);
        assert!(
            g.failures[0].contains("outcome unknown")
                && g.failures[0].contains("after retrying for 60 s"),
            "{}",
            g.failures[0]
        );
        let left = g.cluster().pending_faults();
        assert!(
            (90..=100).contains(&left),
            "retried for 60 s, 100 ms apart: {left} faults left"
        );
        assert_eq!(
            g.tally.aborts.load(Ordering::Relaxed),
            0,
            "never aborted: the commit had gone through"
        );
        let committed = g.outputs().len();
        assert!(committed > 0, "the lost-response commit is visible");
        g.cluster().clear_faults();
        g.failures.clear();
        g.start(0);
    }
    run_until_tasks(&w, 0, &[0, 1]);
    finish(&w);
}

/// `send_offsets_to_transaction` that keeps failing retriably: nothing is committed yet, so
/// the thread aborts while the coordinator still takes the abort (four fifths into
/// `transaction.timeout.ms`), rewinds and goes on. Retrying for the whole 60 s limit instead
/// outlived the transaction: the coordinator aborted it and fenced the producer.
#[test]
fn offsets_that_stay_retriable_abort_before_the_transaction_times_out_not_after() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    {
        let mut g = lock_world(&w);
        // 10 s of retries, twice the transaction timeout.
        for _ in 0..100 {
            g.inject(Fault::new(Request::TxnOffsetCommit, FaultKind::Retriable));
        }
        g.advance(2_000);
    }
    finish(&w);
    let g = lock_world(&w);
    assert_eq!(g.cluster().pending_faults(), 0);
    assert_eq!(g.tally.fences.load(Ordering::Relaxed), 0, "never fenced");
    assert!(
        g.tally.aborts.load(Ordering::Relaxed) >= 2,
        "aborted in time, more than once: {}",
        g.tally.aborts.load(Ordering::Relaxed)
    );
}

/// A request of a task's restore that fails transiently (a broker restarting, a request that
/// timed out) makes only that task wait and check again, with backoff: the thread's open
/// transaction goes on and commits. (It used to be handled like a failed commit: the open
/// transaction of the thread's running tasks was aborted, and the thread slept.)
#[test]
fn a_failed_restore_request_retries_that_task_without_aborting_the_open_transaction() {
    let w = two_instances_with_a_task_each();
    let own = lock_world(&w).tasks(0, 0);
    assert_eq!(own.len(), 1, "instance 0 runs one task: {own:?}");
    lock_world(&w).produce(40);
    step(&w, Who::Instance(0, 0), None);
    {
        let mut g = lock_world(&w);
        assert!(g.transaction_open(0, 0), "instance 0 holds a transaction");
        g.shutdown(1);
        // The first watermark request (the restore's plan) passes; the restore's check of the
        // changelog's end fails.
        g.inject(Fault::new(Request::ListOffsets, FaultKind::Retriable).after(1));
    }
    let mut turns = 0;
    while lock_world(&w).cluster().pending_faults() > 0 {
        turns += 1;
        assert!(turns < 100, "the restore's request was never made");
        lock_world(&w).advance(10);
        step(&w, Who::Instance(0, 0), None);
    }
    {
        let g = lock_world(&w);
        assert_eq!(g.tally.aborts.load(Ordering::Relaxed), 0, "nothing aborted");
        assert!(
            g.transaction_open(0, 0),
            "the open transaction goes on after the restore's failed request"
        );
        assert_eq!(
            g.tasks(0, 0).iter().filter(|t| !t.1).count(),
            1,
            "the new task restores on: {:?}",
            g.tasks(0, 0)
        );
    }
    run_until_tasks(&w, 0, &[0, 1]);
    finish(&w);
    assert_eq!(lock_world(&w).tally.aborts.load(Ordering::Relaxed), 0);
}

/// No broker answers for 20 s (a cluster restart) while a transaction is open: its commit
/// cannot be made and its abort cannot be sent, and the coordinator times it out meanwhile.
/// The thread drops its tasks without applying the transaction, makes a new producer once the
/// brokers answer, restores and goes on: the instance never stops, the output is exact. (A
/// failed abort used to stop the thread: "abort failed: stopping the thread".)
#[test]
fn a_broker_outage_with_a_transaction_open_stops_nothing_and_loses_nothing() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    lock_world(&w).outage(20_000);
    // Through the outage: the commit falls due, its offsets fail until the abort deadline,
    // the abort fails, the tasks are dropped.
    let mut dropped = false;
    while !lock_world(&w).cluster().reachable() {
        lock_world(&w).advance(25);
        step(&w, Who::Instance(0, 0), None);
        let g = lock_world(&w);
        assert!(g.is_running(0), "the instance runs through the outage");
        assert!(g.failures.is_empty(), "failures: {:?}", g.failures);
        dropped |= g.tasks(0, 0).is_empty();
    }
    {
        let g = lock_world(&w);
        assert!(dropped, "the tasks were dropped while no broker answered");
        assert_eq!(g.outputs().len(), 0, "nothing committed during the outage");
        assert_eq!(g.tally.aborts.load(Ordering::Relaxed), 1);
    }
    finish(&w);
    let g = lock_world(&w);
    assert!(g.is_running(0));
    assert_eq!(
        g.tally.aborts.load(Ordering::Relaxed),
        1,
        "the open transaction, dropped once"
    );
}

/// A processor that retries with backoff (a slow sink: each ID's first 4 attempts ask for a
/// retry, 150 ms of backoff per new record) makes one polled batch of 60 records take longer
/// than the 5 s transaction timeout. The thread stops taking records at half the timeout,
/// commits what the transaction holds, and goes on in the next one: no transaction outlives
/// its timeout. (It used to process the whole batch in one transaction: the coordinator
/// aborted it and fenced the producer, and the batch was processed again.)
#[test]
fn a_batch_slower_than_the_transaction_timeout_commits_early_instead_of_being_aborted() {
    let w = world(AppKind::Fanout, 2, 1);
    {
        let mut g = lock_world(&w);
        g.start(0);
    }
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let mut g = lock_world(&w);
        g.flaky.retries.store(4, Ordering::Relaxed);
        g.produce(60);
    }
    let started = lock_world(&w).now_ms();
    step(&w, Who::Instance(0, 0), None);
    {
        let g = lock_world(&w);
        let took = g.now_ms() - started;
        assert!(
            took > 5_000,
            "the batch outlasts the transaction timeout: {took} ms"
        );
        assert_eq!(g.tally.fences.load(Ordering::Relaxed), 0, "never fenced");
        assert_eq!(g.tally.aborts.load(Ordering::Relaxed), 0, "nothing aborted");
        let committed = g.tally.commits.load(Ordering::Relaxed) as i64;
        assert!(
            committed >= took / 2_500 - 1 && committed >= 2,
            "{took} ms of processing in transactions of at most 2.5 s: {committed} commits"
        );
    }
    finish(&w);
    let g = lock_world(&w);
    assert_eq!(g.tally.fences.load(Ordering::Relaxed), 0);
}

/// Turns of instance 0's thread while no broker answers; returns the longest of those that
/// began with a transaction open, in ms.
fn longest_turn_during_outage(w: &Shared) -> i64 {
    let mut longest = 0;
    while !lock_world(w).cluster().reachable() {
        lock_world(w).advance(25);
        let (started, open) = {
            let g = lock_world(w);
            (g.now_ms(), g.transaction_open(0, 0))
        };
        step(w, Who::Instance(0, 0), None);
        let g = lock_world(w);
        if open {
            longest = longest.max(g.now_ms() - started);
        }
        assert!(g.is_running(0), "the instance runs through the outage");
        assert!(g.failures.is_empty(), "failures: {:?}", g.failures);
    }
    longest
}

/// Turns of instance 0 through the outage (none that held a transaction outlasts the 5 s
/// transaction timeout), then every thread until the input is consumed; the producer was
/// never fenced.
fn ride_out_the_outage(w: &Shared) {
    let longest = longest_turn_during_outage(w);
    assert!(
        longest < 5_000,
        "a turn that held a transaction took {longest} ms"
    );
    finish(w);
    assert_eq!(
        lock_world(w).tally.fences.load(Ordering::Relaxed),
        0,
        "never fenced"
    );
}

/// No broker answers from the middle of a batch on (a cluster restart): the producer's queue
/// fills and a send waits for room. It waits until the transaction's deadline (four fifths of
/// its 5 s timeout) at most; then the transaction aborts, the thread drops its tasks, makes a
/// new producer once the brokers answer, restores and goes on. No turn outlasts the
/// transaction timeout, the coordinator never times the transaction out, the output is
/// exact. (The send used to wait for room as long as the outage lasted: the turn took the
/// outage's 20 s, and the transaction it held was timed out and its producer fenced.)
#[test]
fn a_send_waiting_for_room_in_the_producers_queue_gives_up_before_the_transaction_times_out() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    let process = lock_world(&w).process(0).expect("running");
    let during = w.clone();
    process.freeze_at_call("send", move || lock_world(&during).outage(20_000));
    lock_world(&w).produce(200);
    let started = lock_world(&w).now_ms();
    step(&w, Who::Instance(0, 0), None);
    {
        let g = lock_world(&w);
        let took = g.now_ms() - started;
        assert!(
            (3_500..5_000).contains(&took),
            "the send waited until the transaction's deadline, not for the outage: {took} ms"
        );
        assert!(!g.cluster().reachable(), "the outage goes on");
        assert_eq!(g.tally.aborts.load(Ordering::Relaxed), 1, "one abort");
    }
    ride_out_the_outage(&w);
    assert_eq!(lock_world(&w).tally.aborts.load(Ordering::Relaxed), 1);
}

/// An instance takes over a partition and restores it while its own transaction holds
/// records of the partition it runs; no broker answers for 20 s from the restore's first
/// request on. The restore's requests wait at most one commit interval (and never past the
/// transaction's time bound), so the thread ends its transaction in time (its offsets fail
/// until the deadline, then it aborts) and goes on after the outage: no turn that held a
/// transaction outlasts the transaction timeout, no fence, exact output. (A restore's request used to
/// wait up to 30 s: the turn took the outage's 20 s, and the coordinator timed the held
/// transaction out and fenced the producer.)
#[test]
fn a_restore_request_during_an_outage_does_not_hold_the_open_transaction_past_its_timeout() {
    let w = two_instances_with_a_task_each();
    lock_world(&w).produce(40);
    step(&w, Who::Instance(0, 0), None);
    assert!(
        lock_world(&w).transaction_open(0, 0),
        "instance 0 holds a transaction"
    );
    // The outage starts as the new task's restore asks for its changelog's watermarks.
    let process = lock_world(&w).process(0).expect("running");
    let during = w.clone();
    let began = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = began.clone();
    process.freeze_at_call("watermarks", move || {
        lock_world(&during).outage(20_000);
        flag.store(true, Ordering::Relaxed);
    });
    lock_world(&w).shutdown(1);
    for turn in 0.. {
        assert!(turn < 100, "the outage never started");
        lock_world(&w).advance(10);
        let started = lock_world(&w).now_ms();
        step(&w, Who::Instance(0, 0), None);
        let g = lock_world(&w);
        if began.load(Ordering::Relaxed) {
            let took = g.now_ms() - started;
            assert!(
                took < 5_000,
                "the turn the outage began in ended within the transaction timeout: {took} ms"
            );
            break;
        }
    }
    ride_out_the_outage(&w);
}

/// With the global dedup scope, the tasks that read the repartition topic delete its records
/// they committed past (DeleteRecords, every purge interval), as Kafka Streams does: the topic
/// keeps only what its readers have not committed yet, and needs no retention that a lagging
/// reader could outrun. A failed purge is tried again at the next interval. (The repartition
/// topic used to keep every record until its retention deleted it, whether read or not.)
#[test]
fn the_repartition_topic_is_purged_up_to_the_offsets_its_readers_committed() {
    let w = world_with(AppKind::Fanout, 2, 1, |s| s.global = true);
    // The first purge fails; a later interval's succeeds.
    lock_world(&w).inject(Fault::new(Request::DeleteRecords, FaultKind::Retriable));
    lock_world(&w).start(0);
    lock_world(&w).produce(40);
    finish(&w);
    let repartition =
        exactly_core::engine::repartition_topic(crate::world::APP, crate::world::INPUT);
    let committed = |g: &World, p: i32| {
        g.cluster()
            .committed_offset(crate::world::APP, &repartition, p)
            .unwrap_or(0)
    };
    for _ in 0..200 {
        lock_world(&w).advance(25);
        step(&w, Who::Instance(0, 0), None);
    }
    let g = lock_world(&w);
    assert_eq!(g.cluster().pending_faults(), 0, "a purge was tried");
    let mut total = 0;
    for p in 0..2 {
        let start = g.cluster().log_start_offset(&repartition, p);
        assert_eq!(
            start,
            committed(&g, p),
            "partition {p}: deleted up to the committed offset"
        );
        total += start;
    }
    assert!(total >= 40, "the 40 forwarded records were purged: {total}");
}

/// An operator deletes the output topic while the app runs and creates it again 20 s later.
/// Sends to the missing topic fail (the runtime's producers do not create topics): the thread
/// aborts and retries with backoff, each time with a new producer, reports not ready, and
/// keeps its tasks. Once the topic is back every ID is output once across the two topics.
/// (The thread used to stop at the first UNKNOWN_TOPIC_OR_PARTITION, "fatal client error",
/// and a restarted instance refuses to start while the topic is missing.)
#[test]
fn an_output_topic_deleted_and_created_again_holds_the_thread_until_it_is_back_then_every_id_is_output_once(
) {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    lock_world(&w).produce(30);
    finish(&w);
    let (outputs_before, aborts_before, restores_before) = {
        let mut g = lock_world(&w);
        g.delete_output_topic();
        g.produce(30);
        (
            g.outputs().len(),
            g.tally.aborts.load(Ordering::Relaxed),
            g.tally.restores.load(Ordering::Relaxed),
        )
    };
    let until = lock_world(&w).now_ms() + 20_000;
    while lock_world(&w).now_ms() < until {
        lock_world(&w).advance(25);
        step(&w, Who::Instance(0, 0), None);
        let g = lock_world(&w);
        assert!(
            g.is_running(0),
            "the instance runs while the topic is missing"
        );
        assert!(g.failures.is_empty(), "failures: {:?}", g.failures);
    }
    let missing_aborts = {
        let g = lock_world(&w);
        assert!(
            !g.reported_ready(0, 0),
            "not ready while an output topic is missing"
        );
        assert_eq!(
            g.tasks(0, 0),
            vec![(0, true), (1, true)],
            "the tasks are kept"
        );
        assert_eq!(
            g.outputs().len(),
            outputs_before,
            "nothing commits without the topic"
        );
        g.tally.aborts.load(Ordering::Relaxed) - aborts_before
    };
    let missing: u64 = production_errors(&w)
        .iter()
        .filter(|(action, _)| *action == "output_missing")
        .map(|(_, n)| n)
        .sum();
    assert!(
        missing_aborts >= 3,
        "aborted and retried with backoff over 20 s: {missing_aborts} aborts"
    );
    assert_eq!(
        missing, missing_aborts,
        "each abort is counted as output_missing"
    );
    lock_world(&w).create_output_topic();
    finish(&w);
    let g = lock_world(&w);
    assert!(g.is_running(0));
    assert!(
        g.reported_ready(0, 0),
        "ready again once outputs are delivered"
    );
    assert_eq!(
        g.tally.restores.load(Ordering::Relaxed),
        restores_before,
        "the tasks ran throughout: none restored"
    );
}

/// The output topic is deleted and created again between two transactions, so that the
/// producer's next send goes to the new topic with the sequence numbers of the old one: the
/// broker refuses them (OUT_OF_ORDER_SEQUENCE_NUMBER, fatal for that producer). The thread
/// drops its tasks without applying the transaction, makes a new producer, restores both tasks
/// and outputs every ID once. (The thread used to stop: "fatal client error".)
#[test]
fn a_producer_failed_by_an_output_topic_created_again_is_replaced_and_every_id_is_output_once() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    lock_world(&w).produce(30);
    finish(&w);
    let restores_before = {
        let mut g = lock_world(&w);
        g.delete_output_topic();
        g.create_output_topic();
        g.produce(30);
        g.tally.restores.load(Ordering::Relaxed)
    };
    finish(&w);
    let g = lock_world(&w);
    assert!(g.is_running(0));
    assert_eq!(
        g.tally.restores.load(Ordering::Relaxed) - restores_before,
        2,
        "the producer was replaced once: both tasks restored once"
    );
}

/// Turns of instance 0 for `ms` of idle time, 250 ms apart.
fn idle(w: &Shared, ms: i64) {
    for _ in 0..ms / 250 {
        lock_world(w).advance(250);
        step(w, Who::Instance(0, 0), None);
    }
}

/// librdkafka drops a resume that an op its own thread queued at the same moment made
/// outdated (librdkafka #5591: a rebalance pauses the whole assignment as a restore's resume
/// is on its way), and reports no error: the restored task runs, but its partition stays
/// paused. The engine finds the running task that got no record for 30 s while committed
/// records wait past the consumer's position, resumes and seeks it: every ID is output once,
/// with one restart, and two idle minutes after restart nothing. (The task used to wait for
/// good: the 30-minute soak on the local broker stalled at 11 minutes with one partition
/// stuck at 106,846 of 107,476 records.)
#[test]
fn a_resume_the_client_dropped_is_found_by_the_stall_check_and_every_id_is_output_once() {
    let w = world(AppKind::Fanout, 2, 1);
    lock_world(&w).inject(Fault::new(Request::Resume, FaultKind::Retriable));
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let g = lock_world(&w);
        assert_eq!(
            g.cluster().pending_faults(),
            0,
            "a restore's resume was dropped"
        );
        assert_eq!(
            g.paused(0, 0).len(),
            1,
            "one running task's partition stayed paused: {:?}",
            g.tasks(0, 0)
        );
    }
    lock_world(&w).produce(40);
    finish(&w);
    idle(&w, 120_000);
    let g = lock_world(&w);
    assert!(g.problems().is_empty(), "{:?}", g.problems());
    assert_eq!(g.paused(0, 0), Vec::<i32>::new(), "both partitions fetch");
    assert_eq!(g.tally.fetch_restarts.load(Ordering::Relaxed), 1);
}

/// The tasks of the global scope read the repartition topic, which stage 1 writes in
/// transactions: its partitions end in commit markers, which the consumer's position moves
/// past. Idle for two minutes after the input is consumed, no running task is taken for
/// stalled.
#[test]
fn idle_partitions_ending_in_transaction_markers_are_not_taken_for_stalled_fetches() {
    let w = world_with(AppKind::Fanout, 2, 1, |s| s.global = true);
    lock_world(&w).start(0);
    lock_world(&w).produce(40);
    finish(&w);
    idle(&w, 120_000);
    let g = lock_world(&w);
    assert!(g.problems().is_empty(), "{:?}", g.problems());
    assert_eq!(g.tally.fetch_restarts.load(Ordering::Relaxed), 0);
    assert_eq!(g.tally.aborts.load(Ordering::Relaxed), 0);
}

/// A commit fails (a produce request failed) and the abort that follows finds the producer
/// failed on its own state, as in the soak on the local broker after an output topic was
/// deleted and created again under records in flight ("sequence desynchronization", fatal):
/// the producer is replaced and both tasks restore once, the instance runs on, every ID is
/// output once. (The thread used to stop, "abort failed: stopping the thread", and the
/// instance exited.)
#[test]
fn an_abort_that_finds_the_producer_failed_replaces_the_producer_instead_of_stopping() {
    let w = world(AppKind::Fanout, 2, 1);
    open_transaction(&w, 0, 12);
    let restores_before = {
        let mut g = lock_world(&w);
        g.inject(Fault::new(Request::Produce, FaultKind::Abortable));
        g.inject(Fault::new(Request::AbortTxn, FaultKind::Fatal));
        g.produce(12);
        g.tally.restores.load(Ordering::Relaxed)
    };
    finish(&w);
    let g = lock_world(&w);
    assert_eq!(g.cluster().pending_faults(), 0, "both faults were hit");
    assert!(g.is_running(0), "the instance runs on");
    assert_eq!(
        g.tally.restores.load(Ordering::Relaxed) - restores_before,
        2,
        "the producer was replaced once: both tasks restored once"
    );
}

/// A turn busy for longer than the stall check's 30 s (a processor that retries with backoff
/// works through 400 records in one turn) while more records wait in the partitions is not
/// taken for a stalled fetch: those records arrive in the next polls. Nothing is restarted,
/// every ID is output once.
#[test]
fn a_turn_busy_longer_than_the_stall_check_is_not_taken_for_a_stalled_fetch() {
    let w = world_with(AppKind::Fanout, 2, 1, |s| s.max_batch = 400);
    lock_world(&w).start(0);
    run_until_tasks(&w, 0, &[0, 1]);
    {
        let mut g = lock_world(&w);
        g.flaky.retries.store(4, Ordering::Relaxed);
        g.produce(800);
    }
    let started = lock_world(&w).now_ms();
    step(&w, Who::Instance(0, 0), None);
    let took = lock_world(&w).now_ms() - started;
    assert!(
        took > 30_000,
        "one turn outlasts the stall check's 30 s: {took} ms"
    );
    finish(&w);
    let g = lock_world(&w);
    assert_eq!(g.tally.fetch_restarts.load(Ordering::Relaxed), 0);
    assert_eq!(g.tally.fences.load(Ordering::Relaxed), 0);
}
