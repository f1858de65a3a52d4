//! One process-level test per crash point of docs/exactly-once.md: the app SIGKILLs itself at
//! that exact point of the protocol (`EXACTLY_FAILPOINT`), is restarted, and the output, read
//! with isolation.level=read_committed, still holds every ID exactly once.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker;
use exactly_testkit::chaos::{messages_with_duplicates, wait_for_log};
use std::time::Duration;

/// Produces 6000 messages (5000 IDs); the first instance dies at `point` on its `hit`-th
/// visit; the restarted one (no failpoint) finishes the stream.
fn crash_at(test: &str, point: &str, hit: u32) {
    let Some(s) = Setup::new(test, 2) else { return };
    let unique = 5_000;
    let messages = messages_with_duplicates(unique, 1.0 / 6.0, 41);
    let mut app = s.forward("0", &["--commit-interval-ms", "50"]);
    app.env("EXACTLY_FAILPOINT", &format!("{point}:{hit}"));
    app.start();
    broker::produce(&s.bs, &s.input, &messages);
    // The failpoint kills the process: wait for that event.
    let status = app.wait_exit(Duration::from_secs(120));
    let log = std::fs::read_to_string(&app.log).unwrap_or_default();
    assert!(
        log.contains("EXACTLY_FAILPOINT: SIGKILL"),
        "the app exited ({status}) but not at the failpoint; log tail:\n{}",
        app.log_tail(30)
    );
    app.env("EXACTLY_FAILPOINT", "");
    app.set_log(s.dir.path().join("restart.log"));
    app.start();
    // The restart restores both tasks before it processes (or finds nothing left to do).
    wait_for_log(&mut app, "task restored; running", Duration::from_secs(60));
    s.wait_caught_up(std::slice::from_mut(&mut app));
    stop_all(std::slice::from_mut(&mut app));
    let v = s.verify();
    println!(
        "{point}:{hit}: {} inputs, {} outputs, {} duplicates, {} missing",
        v.inputs,
        v.outputs,
        v.duplicates,
        v.missing.len()
    );
    assert_eq!(v.inputs, messages.len());
    assert_exact(&v, unique);
}

#[test]
fn sigkill_before_anything_was_sent_reprocesses_the_batch_exactly_once() {
    crash_at("cp-before-send", "before_send", 2);
}

#[test]
fn sigkill_after_sends_before_commit_leaves_a_transaction_the_restart_aborts() {
    crash_at("cp-after-send", "after_send", 2);
}

#[test]
fn sigkill_during_commit_moves_offsets_outputs_and_changelog_together_or_not_at_all() {
    crash_at("cp-during-commit", "during_commit", 2);
}

#[test]
fn sigkill_after_commit_before_store_apply_restores_the_changelog_tail_first() {
    crash_at("cp-after-commit", "after_commit", 2);
}
