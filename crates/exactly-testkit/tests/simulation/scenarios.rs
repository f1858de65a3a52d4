//! Targeted schedules: each puts the production engine through one situation of Apache
//! Kafka's rules that the local test broker cannot show or that once went wrong, and checks
//! the committed output per message ID.

use crate::apps::{self, AppKind};
use crate::world::{lock_world, step, Setup, Shared, Who, World};
use exactly_core::engine::RestoreFrom;
use exactly_testkit::sim::GroupProtocol;
use exactly_testkit::{Fault, FaultKind, Request};
use rand::SeedableRng;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

fn world(kind: AppKind, partitions: i32, instances: usize) -> Shared {
    let setup = Setup {
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
    };
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
    let problems = apps::check(g.setup.kind, &g.inputs, &g.outputs());
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
    for _ in 0..200 {
        if !lock_world(&w).is_running(0) {
            break;
        }
        lock_world(&w).advance(10);
        step(&w, Who::Instance(0, 0), None);
    }
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
