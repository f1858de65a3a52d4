//! An output topic deleted while the app runs, then created again (#15): the instance must
//! not exit (its restart would refuse to start over the missing topic), must commit nothing
//! while the topic is missing, must say so (`/ready` 503, an error log line, a metric), and
//! must output every ID exactly once across the two topics once it is back. Its producer must
//! not create the topic either: a broker with `auto.create.topics.enable` would bring it back
//! with its default partition count.

mod common;
use common::{numbered, stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{
    count_by_id, free_port, http_get, metric_sum, scrape_until, wait_for_log, Verification,
};
use std::time::Duration;

#[test]
fn an_output_topic_deleted_while_running_is_waited_for_and_every_id_is_output_once() {
    let Some(s) = Setup::new("output-deleted", 4) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = [s.forward("0", &["--metrics-addr", &addr])];
    app[0].start();
    broker::produce(&s.bs, &s.input, &numbered(0..1000));
    s.wait_caught_up(&mut app);
    let before = s.output_records();
    assert_eq!(
        before.len(),
        1000,
        "the first 1000 IDs are output before the deletion"
    );

    broker::delete_topics(&s.bs, &[&s.output]);
    // New IDs, and resends of IDs whose outputs went with the deleted topic: those stay
    // duplicates (the dedup store remembers them), they are not output again.
    let mut second: Vec<TestMessage> = numbered(1000..2000);
    second.extend(numbered(0..100));
    broker::produce(&s.bs, &s.input, &second);
    wait_for_log(
        &mut app[0],
        "an output topic is missing",
        Duration::from_secs(120),
    );
    // Readiness is reported when the turn that logged the error ends (after its backoff).
    let metrics = scrape_until(&addr, Duration::from_secs(30), |_| {
        matches!(http_get(&addr, "/ready"), Some((503, _)))
    });
    assert_eq!(
        http_get(&addr, "/ready").map(|r| r.0),
        Some(503),
        "not ready while its output topic is missing"
    );
    assert!(
        metric_sum(
            &metrics,
            "exactly_production_errors_total",
            &[("action", "output_missing")]
        ) >= 1.0,
        "the missing topic is counted"
    );
    assert!(
        broker::list_topics(&s.bs).iter().all(|t| t != &s.output),
        "the producer did not create the topic again"
    );
    assert!(app[0].exited().is_none(), "the instance runs on");

    broker::create_topics(&s.bs, &[(&s.output, 4)]);
    s.wait_caught_up(&mut app);
    wait_for_log(
        &mut app[0],
        "the missing output topic is back",
        Duration::from_secs(60),
    );
    scrape_until(&addr, Duration::from_secs(30), |_| {
        matches!(http_get(&addr, "/ready"), Some((200, _)))
    });
    let after = s.output_records();
    stop_all(&mut app);

    let ids_after = count_by_id(&after);
    assert_eq!(
        ids_after.len(),
        1000,
        "the new topic holds the 1000 new IDs"
    );
    assert!(
        (1000..2000).all(|i| ids_after.get(&format!("m{i}")) == Some(&1)),
        "each new ID once in the new topic"
    );
    let mut all = before;
    all.extend(after);
    let v = Verification::compare(&broker::read_committed(&s.bs, &s.input), &all);
    println!("output topic deleted and created again: {v:?}");
    assert!(v.is_exact(), "across both topics: {v:?}");
    assert_eq!((v.unique_ids, v.outputs), (2000, 2000));
}
