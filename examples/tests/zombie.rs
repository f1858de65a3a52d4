//! Zombie fencing: an instance is frozen with SIGSTOP (mid-stream, with a transaction in
//! flight), a replacement with the same instance id (so the same transactional.id) starts on
//! another state dir and takes over, then the old process is continued with SIGCONT. It must
//! be fenced: it stops with an error and nothing it writes becomes visible.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker;
use exactly_testkit::chaos::messages_with_duplicates;
use std::time::Duration;

#[test]
fn a_frozen_instance_replaced_under_the_same_id_is_fenced_and_writes_nothing_visible() {
    let Some(s) = Setup::new("zombie", 2) else {
        return;
    };
    let unique = 12_000;
    let messages = messages_with_duplicates(unique, 0.2, 31);
    let thirds: Vec<_> = messages.chunks(messages.len().div_ceil(3)).collect();

    let mut old = s.forward("0", &[]);
    old.start();
    broker::produce(&s.bs, &s.input, thirds[0]);
    s.wait_caught_up(std::slice::from_mut(&mut old));
    // Freeze it while it works on the second third.
    broker::produce(&s.bs, &s.input, &thirds[1][..thirds[1].len() / 2]);
    old.freeze();

    // The replacement: same instance id, its own state dir (another machine).
    let mut new = s.instance(common::FORWARD, "0", &s.state_dir("replacement"), &[]);
    new.set_log(s.dir.path().join("replacement.log"));
    new.start();
    broker::produce(&s.bs, &s.input, &thirds[1][thirds[1].len() / 2..]);
    s.wait_caught_up(std::slice::from_mut(&mut new));

    // Wake the zombie: it must notice it is fenced and stop.
    old.resume();
    let status = old.wait_exit(Duration::from_secs(90));
    let log = std::fs::read_to_string(&old.log).unwrap_or_default();
    assert!(
        !status.success(),
        "the zombie exited 0; log tail:\n{}",
        old.log_tail(30)
    );
    assert!(
        log.contains("fenced"),
        "the zombie's log does not say it was fenced; log tail:\n{}",
        old.log_tail(30)
    );

    broker::produce(&s.bs, &s.input, thirds[2]);
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
