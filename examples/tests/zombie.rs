//! Zombie fencing: an instance freezes itself (SIGSTOP, `TEST_FAILPOINT=after_send:3:stop`)
//! right after the sends of a transaction, before its offsets and its commit; a replacement with
//! the same instance id (so the same transactional.id and `group.instance.id`) starts on another
//! state dir and takes over, then the old process is continued with SIGCONT. It goes on with its
//! commit and meets the producer-epoch fence first (the replacement's `init_transactions`
//! bumped the epoch and aborted the open transaction); its fence check then finds its group
//! member fenced too (the replacement took the instance id), so it stops with an error and
//! nothing it wrote becomes visible.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker;
use exactly_testkit::chaos::messages_with_duplicates;
use std::time::{Duration, Instant};

/// The position of `needle` in `log`, or a panic naming what is missing.
fn at(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("the zombie's log lacks {needle:?}; log:\n{log}"))
}

#[test]
fn a_frozen_instance_replaced_under_the_same_id_is_fenced_and_writes_nothing_visible() {
    let Some(s) = Setup::new("zombie", 2) else {
        return;
    };
    let unique = 12_000;
    let messages = messages_with_duplicates(unique, 0.2, 31);
    let halves: Vec<_> = messages.chunks(messages.len().div_ceil(2)).collect();

    let mut old = s.forward(
        "0",
        &["--commit-interval-ms", "100", "--max-batch-records", "500"],
    );
    old.env("TEST_FAILPOINT", "after_send:3:stop");
    old.start();
    broker::produce(&s.bs, &s.input, halves[0]);
    // It stops itself in its third transaction, after the sends, before the commit.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !old.is_stopped() {
        assert!(
            Instant::now() < deadline,
            "the instance did not stop at the failpoint; log tail:\n{}",
            old.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The replacement: same instance id, its own state dir (another machine).
    let mut new = s.instance(common::FORWARD, "0", &s.state_dir("replacement"), &[]);
    new.set_log(s.dir.path().join("replacement.log"));
    new.start();
    broker::produce(&s.bs, &s.input, &halves[1][..halves[1].len() / 2]);
    s.wait_caught_up(std::slice::from_mut(&mut new));

    // Wake the zombie: it goes on with its commit, is fenced, and stops.
    old.resume();
    let status = old.wait_exit(Duration::from_secs(90));
    assert!(
        !status.success(),
        "the zombie exited 0; log tail:\n{}",
        old.log_tail(30)
    );
    let log = std::fs::read_to_string(&old.log).unwrap_or_default();
    let frozen = at(&log, "TEST_FAILPOINT: SIGSTOP at AfterSend");
    let producer = at(&log, "producer fenced: dropped this thread's tasks");
    let member = at(
        &log,
        "a newer member joined with this thread's group.instance.id",
    );
    assert!(
        frozen < producer && producer < member,
        "fences out of order (frozen at {frozen}, producer fence at {producer}, member fence at {member}); log:\n{log}"
    );

    broker::produce(&s.bs, &s.input, &halves[1][halves[1].len() / 2..]);
    s.wait_caught_up(std::slice::from_mut(&mut new));
    stop_all(std::slice::from_mut(&mut new));

    let v = s.verify();
    println!(
        "zombie: {} inputs, {} outputs, zombie exit {status}",
        v.inputs, v.outputs
    );
    assert_eq!(v.inputs, messages.len());
    assert_exact(&v, unique);
}
