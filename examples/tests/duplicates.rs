//! Duplicates injected by the producer: 25 % of the messages resend an earlier ID, some right
//! after the original, some long after it (in a later batch, after the app committed the
//! original). The output, read with isolation.level=read_committed, holds each ID once.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{free_port, http_get, messages_with_duplicates, metric_sum};

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

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut app = [s.forward("0", &["--metrics-addr", &addr])];
    app[0].start();
    broker::produce(&s.bs, &s.input, &first);
    s.wait_caught_up(&mut app);
    broker::produce(&s.bs, &s.input, &second);
    s.wait_caught_up(&mut app);

    // The counters move right after each commit returns: wait for the last one to land.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (status, text) = http_get(&addr, "/metrics").expect("metrics endpoint answers");
        assert_eq!(status, 200);
        if metric_sum(&text, "exactly_duplicates_dropped_total", &[]) as usize >= injected
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    stop_all(&mut app);

    let v = s.verify();
    println!(
        "duplicates: {total} inputs, {unique} IDs, {injected} resends ({} late), {} outputs",
        late.len(),
        v.outputs
    );
    assert_eq!(v.inputs, total);
    assert_exact(&v, unique);
    let dropped = metric_sum(&text, "exactly_duplicates_dropped_total", &[]);
    assert_eq!(
        dropped as usize, injected,
        "exactly_duplicates_dropped_total"
    );
    assert!(
        broker::read_committed(&s.bs, &s.dlq()).is_empty(),
        "nothing was dead-lettered"
    );
}
