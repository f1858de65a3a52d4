//! `/ready` through restarts: an instance restarted over a store and a changelog of 40,000
//! IDs answers 503 until every one of its tasks is restored and running, and never 200
//! before. An orchestrator that rolls instances one at a time moves on at the first 200; a
//! 200 while a task still restores would take two instances' partitions down at once.

mod common;
use common::{assert_exact, numbered, stop_all, Setup};
use exactly_testkit::broker;
use exactly_testkit::chaos::{free_port, http_get, metric_sum};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

/// Polls `/ready` as fast as it answers until the first 200, then reads `/metrics` at once.
/// Returns how many answers came before (503 or nothing listening) and the exposition.
fn first_ready(addr: &str, within: Duration) -> (u64, String) {
    let deadline = Instant::now() + within;
    let mut before = 0;
    loop {
        match http_get(addr, "/ready") {
            Some((200, _)) => {
                let (status, text) = http_get(addr, "/metrics").expect("/metrics answers");
                assert_eq!(status, 200);
                return (before, text);
            }
            Some((503, _)) | None => before += 1,
            Some((status, body)) => panic!("/ready answered {status}: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "not ready within {within:?} ({before} answers)"
        );
    }
}

#[test]
fn ready_answers_200_only_once_every_task_is_restored_and_running_across_restarts() {
    let Some(s) = Setup::new("ready", PARTITIONS) else {
        return;
    };
    let messages = numbered(0..40_000);
    let mut app = [s.forward("0", &[])];
    app[0].start();
    broker::produce(&s.bs, &s.input, &messages);
    s.wait_caught_up(&mut app);
    stop_all(&mut app);

    for restart in 1..=3 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut app = [s.forward("0", &["--metrics-addr", &addr])];
        app[0].start();
        let (before, text) = first_ready(&addr, Duration::from_secs(120));
        let m = |name: &str| metric_sum(&text, name, &[]);
        println!(
            "ready: restart {restart}: {before} answers before the first 200; then {} restores done, {} restoring, {} tasks",
            m("exactly_restore_seconds_count"),
            m("exactly_tasks_restoring"),
            m("exactly_assigned_tasks")
        );
        assert_eq!(
            m("exactly_restore_seconds_count"),
            f64::from(PARTITIONS),
            "restart {restart}: every task had finished its restore at the first 200"
        );
        assert_eq!(m("exactly_tasks_restoring"), 0.0, "restart {restart}");
        assert_eq!(
            m("exactly_assigned_tasks"),
            f64::from(PARTITIONS),
            "restart {restart}"
        );
        // Resends after the restart are all dropped: the restored store is complete.
        broker::produce(
            &s.bs,
            &s.input,
            &messages[restart * 1_000..restart * 1_000 + 500],
        );
        s.wait_caught_up(&mut app);
        stop_all(&mut app);
    }
    assert_exact(&s.verify(), messages.len());
}
