//! Duplicates injected by the producer: 25 % of the messages resend an earlier ID, some right
//! after the original, some long after it (in a later batch, after the app committed the
//! original). The output, read with isolation.level=read_committed, holds each ID once.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{
    free_port, http_get, messages_with_duplicates, metric_sum, scrape_until,
};
use std::time::Duration;

#[test]
fn producer_resends_are_dropped_and_each_id_is_output_once() {
    let Some(s) = Setup::new("dups", 4) else {
        return;
    };
    let unique = 6_000;
    let first: Vec<TestMessage> = messages_with_duplicates(unique / 2, 0.25, 11);
    // The second half: new IDs m3000.. with near resends, plus resends of the first half's
    // IDs long after they were committed.
    let mut second: Vec<TestMessage> = messages_with_duplicates(unique, 0.25, 12)
        .into_iter()
        .filter(|m| {
            m.id.as_deref()
                .and_then(|id| id[1..].parse::<usize>().ok())
                .is_some_and(|n| n >= unique / 2)
        })
        .collect();
    let late: Vec<TestMessage> = first.iter().step_by(3).cloned().collect();
    second.extend(late.iter().cloned());
    let total = first.len() + second.len();
    let injected = total - unique;
    assert!(
        injected * 5 >= total,
        "at least 20 % resends: {injected} of {total}"
    );

    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = [s.forward("0", &["--metrics-addr", &addr])];
    app[0].start();
    broker::produce(&s.bs, &s.input, &first);
    s.wait_caught_up(&mut app);
    // During the run: after the first half, the counters match the first half exactly.
    let consumed = |t: &str| metric_sum(t, "exactly_records_consumed_total", &[]) as usize;
    let mid = scrape_until(&addr, Duration::from_secs(10), |t| {
        consumed(t) >= first.len()
    });
    assert_eq!(
        consumed(&mid),
        first.len(),
        "records consumed after the first half"
    );
    assert_eq!(
        http_get(&addr, "/ready").map(|r| r.0),
        Some(200),
        "ready once every task runs"
    );
    assert_eq!(http_get(&addr, "/health").map(|r| r.0), Some(200));

    broker::produce(&s.bs, &s.input, &second);
    s.wait_caught_up(&mut app);
    // Lag is reported every second; the counters right after each commit.
    let text = scrape_until(&addr, Duration::from_secs(10), |t| {
        consumed(t) >= total && metric_sum(t, "exactly_consumer_lag_records", &[]) == 0.0
    });
    stop_all(&mut app);

    let v = s.verify();
    println!(
        "duplicates: {total} inputs, {unique} IDs, {injected} resends ({} late), {} outputs",
        late.len(),
        v.outputs
    );
    assert_eq!(v.inputs, total);
    assert_exact(&v, unique);
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels) as usize;
    assert_eq!(
        m("exactly_duplicates_dropped_total", &[]),
        injected,
        "duplicates dropped"
    );
    assert_eq!(
        m("exactly_records_consumed_total", &[]),
        total,
        "records consumed"
    );
    assert_eq!(
        m("exactly_records_processed_total", &[]),
        unique,
        "records processed"
    );
    assert_eq!(
        m("exactly_records_produced_total", &[("topic", &s.output)]),
        unique,
        "records produced"
    );
    assert_eq!(
        m("exactly_transaction_batch_records_sum", &[]),
        total,
        "records in committed transactions"
    );
    let txns = m("exactly_transactions_committed_total", &[]);
    assert!(txns > 0, "transactions committed");
    assert_eq!(
        m("exactly_transaction_batch_records_count", &[]),
        txns,
        "one batch size per transaction"
    );
    assert_eq!(
        m("exactly_transaction_commit_seconds_count", &[]),
        txns,
        "one commit latency per transaction"
    );
    assert_eq!(m("exactly_transactions_aborted_total", &[]), 0, "no aborts");
    assert_eq!(m("exactly_consumer_lag_records", &[]), 0, "lag back to 0");
    assert_eq!(m("exactly_assigned_tasks", &[]), 4, "tasks");
    assert_eq!(m("exactly_tasks_restoring", &[]), 0, "restoring tasks");
    assert!(
        broker::read_committed(&s.bs, &s.dlq()).is_empty(),
        "nothing was dead-lettered"
    );
}
