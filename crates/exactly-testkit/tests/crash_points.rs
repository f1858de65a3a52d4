//! One deterministic test per crash point of the protocol (docs/exactly-once.md).
//! Each pipes 6 IDs (2 of them re-sent), crashes once, restarts and checks the committed
//! outputs per ID.

mod common;
use common::{fanout, oracle, Fanout};
use exactly_core::ChangelogCheckpoint;
use exactly_testkit::{CrashPoint, Fault, FaultKind, Request, StepOutcome, TestDriver, TestRecord};

fn driver() -> TestDriver<fn(&exactly_core::TaskId) -> Fanout> {
    TestDriver::builder(fanout as fn(&exactly_core::TaskId) -> Fanout)
        .input("in", 1)
        .max_batch(3)
        .build()
}

/// Pipes a1..a6 with fanout 2, a2 and a5 sent twice. Returns the expected (id, fanout) list.
fn pipe_inputs(d: &mut TestDriver<fn(&exactly_core::TaskId) -> Fanout>) -> Vec<(String, u64)> {
    let mut inputs = Vec::new();
    for id in ["a1", "a2", "a2", "a3", "a4", "a5", "a6", "a5"] {
        d.pipe(TestRecord::with_id(id).value("2"));
        inputs.push((id.to_owned(), 2));
    }
    inputs
}

fn assert_exact(d: &TestDriver<fn(&exactly_core::TaskId) -> Fanout>, inputs: &[(String, u64)]) {
    let outputs = d.committed_outputs("out");
    let report = oracle(inputs, &outputs);
    assert!(report.is_exact(), "{report}");
    assert_eq!(report.unique_ids, 6);
    assert_eq!(outputs.len(), 12, "6 unique IDs x fanout 2");
}

#[test]
fn crash_before_send_reprocesses_batch_and_nothing_was_visible() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    assert_eq!(
        d.step_and_crash(CrashPoint::BeforeSend).unwrap(),
        StepOutcome::Crashed(CrashPoint::BeforeSend)
    );
    assert_eq!(d.committed_outputs("out").len(), 0);
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(d.stats().duplicates_dropped, 2);
}

#[test]
fn crash_after_sends_before_commit_leaves_open_transaction_that_restart_aborts() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.step_and_crash(CrashPoint::AfterSendsBeforeCommit)
        .unwrap();
    // The open transaction holds a1, a2 (a2's resend dropped) x 2 outputs, invisible to
    // read_committed.
    assert!(d.cluster().has_open_transaction("app-0-0"));
    assert_eq!(d.cluster().record_count_any_status("out"), 4);
    assert_eq!(d.committed_outputs("out").len(), 0);
    d.restart().unwrap();
    assert!(!d.cluster().has_open_transaction("app-0-0"));
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
}

#[test]
fn crash_during_commit_that_the_coordinator_completed_moves_offsets_outputs_and_changelog_together()
{
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.step_and_crash(CrashPoint::DuringCommit { committed: true })
        .unwrap();
    // Committed: a1, a2, a2(dup) → 2 IDs x 2 outputs; offsets at 3; store not applied.
    assert_eq!(d.committed_outputs("out").len(), 4);
    assert_eq!(d.committed_offset(0), Some(3));
    assert_eq!(d.disk(0).entries(), 0);
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(
        d.stats().restored_records,
        2,
        "a1 and a2 restored from the changelog tail"
    );
}

#[test]
fn crash_during_commit_that_the_coordinator_aborted_reprocesses_the_batch() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.step_and_crash(CrashPoint::DuringCommit { committed: false })
        .unwrap();
    assert_eq!(d.committed_outputs("out").len(), 0);
    assert_eq!(d.committed_offset(0), None);
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(d.stats().restored_records, 0);
}

#[test]
fn crash_after_commit_before_store_apply_restores_changelog_tail_before_processing() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.step().unwrap();
    d.step_and_crash(CrashPoint::AfterCommitBeforeApply)
        .unwrap();
    // Store reflects only the first transaction (a1, a2); the changelog also has a3, a4, a5.
    assert_eq!(d.disk(0).entries(), 2);
    d.restart().unwrap();
    assert_eq!(
        d.stats().restored_records,
        3,
        "exactly the tail: a3, a4, a5"
    );
    assert_eq!(d.disk(0).entries(), 5);
    // a6, a5 remain; a resend of a3 now must be dropped from the restored store.
    d.pipe(TestRecord::with_id("a3").value("2"));
    let mut inputs = inputs;
    inputs.push(("a3".into(), 2));
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(d.stats().duplicates_dropped, 3);
}

#[test]
fn lost_store_directory_is_fully_restored_from_the_changelog() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.run_until_idle().unwrap();
    d.step_and_crash(CrashPoint::BeforeSend).unwrap();
    d.disk(0).lose();
    d.restart().unwrap();
    assert_eq!(d.stats().restored_records, 6);
    assert_eq!(d.disk(0).entries(), 6);
    for id in ["a1", "a4", "a6"] {
        d.pipe(TestRecord::with_id(id).value("2"));
    }
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(d.stats().duplicates_dropped, 2 + 3);
}

#[test]
fn corrupt_store_is_wiped_and_fully_restored() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.run_until_idle().unwrap();
    d.step_and_crash(CrashPoint::BeforeSend).unwrap();
    d.disk(0).corrupt();
    d.restart().unwrap();
    assert_eq!(d.stats().wipes, vec![(0, "corrupt")]);
    assert_eq!(d.disk(0).entries(), 6);
    d.pipe(TestRecord::with_id("a2").value("2"));
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
}

#[test]
fn checkpoint_beyond_changelog_end_is_detected_and_store_rebuilt() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.run_until_idle().unwrap();
    d.step_and_crash(CrashPoint::BeforeSend).unwrap();
    let changelog = d.changelog_topic().to_owned();
    d.disk(0).set_checkpoint(ChangelogCheckpoint {
        topic: changelog,
        partition: 0,
        next_offset: 1_000,
    });
    d.restart().unwrap();
    assert_eq!(d.stats().wipes, vec![(0, "checkpoint_beyond_end")]);
    assert_eq!(d.disk(0).entries(), 6);
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
}

#[test]
fn store_from_another_changelog_is_not_trusted() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.run_until_idle().unwrap();
    d.step_and_crash(CrashPoint::BeforeSend).unwrap();
    d.disk(0).set_checkpoint(ChangelogCheckpoint {
        topic: "other-app-in-dedup-changelog".into(),
        partition: 0,
        next_offset: 3,
    });
    d.restart().unwrap();
    assert_eq!(d.stats().wipes, vec![(0, "wrong_identity")]);
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
}

#[test]
fn zombie_with_same_transactional_id_is_fenced_and_writes_nothing() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    // The old instance sends a batch and is paused (SIGSTOP) before committing.
    assert_eq!(
        d.process_without_commit().unwrap(),
        StepOutcome::Committed { records: 3 }
    );
    let mut zombie = d.start_replacement().unwrap();
    // The replacement's start aborted the zombie's open transaction.
    assert_eq!(d.committed_outputs("out").len(), 0);
    d.run_until_idle().unwrap();
    let entries_before = d.disk(0).entries();
    let zombie_entries = zombie.disk(0).entries();
    // The zombie wakes up (SIGCONT) and tries to go on: it is fenced.
    d.pipe(TestRecord::with_id("late").value("1"));
    assert_eq!(d.zombie_step(&mut zombie).unwrap(), StepOutcome::Fenced);
    assert_eq!(
        zombie.disk(0).entries(),
        zombie_entries,
        "a zombie never writes its store"
    );
    assert_eq!(d.disk(0).entries(), entries_before);
    d.run_until_idle().unwrap();
    let mut inputs = inputs;
    inputs.push(("late".into(), 1));
    let outputs = d.committed_outputs("out");
    let report = oracle(&inputs, &outputs);
    assert!(report.is_exact(), "{report}");
    assert_eq!(outputs.len(), 13);
}

#[test]
fn broker_request_errors_abort_back_off_and_retry_without_loss_or_duplicate() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    let faults = [
        Request::Send,
        Request::Produce,
        Request::TxnOffsetCommit,
        Request::EndTxn,
    ];
    for request in faults {
        d.cluster()
            .inject(Fault::new(request, FaultKind::Abortable));
        assert!(
            matches!(d.step().unwrap(), StepOutcome::Aborted { .. }),
            "an abortable {request:?} error aborts"
        );
    }
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(d.stats().aborts, 4);
}

#[test]
fn retriable_transaction_errors_are_resumed_not_aborted() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    // A retriable TxnOffsetCommit and EndTxn are called again; an EndTxn whose response was
    // lost (outcome unknown) is resumed and found committed.
    let faults = [
        (Request::TxnOffsetCommit, FaultKind::Retriable, 3),
        (Request::EndTxn, FaultKind::Retriable, 3),
        (Request::EndTxn, FaultKind::ResponseLost, 2),
    ];
    for (request, kind, records) in faults {
        d.cluster().inject(Fault::new(request, kind));
        assert_eq!(
            d.step().unwrap(),
            StepOutcome::Committed { records },
            "{kind:?} {request:?}"
        );
        assert_eq!(d.cluster().pending_faults(), 0, "the fault was hit");
    }
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(d.stats().aborts, 0);
    assert_eq!(d.stats().commits, 3);
}

#[test]
fn a_fatal_broker_error_stops_the_instance_with_nothing_committed_and_a_restart_goes_on() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.step().unwrap();
    let committed_outputs = d.committed_outputs("out").len();
    d.cluster()
        .inject(Fault::new(Request::EndTxn, FaultKind::Fatal));
    match d.step().unwrap() {
        StepOutcome::Stopped { reason } => {
            assert!(reason.contains("EndTxn"), "{reason}")
        }
        other => panic!("expected the instance to stop, got {other:?}"),
    }
    assert!(!d.is_running());
    assert_eq!(d.committed_outputs("out").len(), committed_outputs);
    assert_eq!(
        d.committed_offset(0),
        Some(3),
        "the failed batch was not committed"
    );
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
}

#[test]
fn store_write_failure_after_commit_restores_the_task_and_loses_nothing() {
    let mut d = driver();
    let inputs = pipe_inputs(&mut d);
    d.step().unwrap();
    d.disk(0).fail_next_apply();
    assert_eq!(d.step().unwrap(), StepOutcome::Committed { records: 3 });
    assert_eq!(d.stats().store_failures, 1);
    d.run_until_idle().unwrap();
    assert_exact(&d, &inputs);
    assert_eq!(
        d.stats().restored_records,
        3,
        "the tail the failed apply missed: a3, a4, a5"
    );
}
