//! Outputs the broker refuses for good, against the real broker (#15 item 1): an input record
//! whose output is too large for the producer (refused by librdkafka when sent) or for the
//! output topic (refused by the broker at delivery), or has no key for a compacted output
//! topic, aborts its transaction; after three refusals in a row it goes to the dead-letter
//! topic once, with `exactly.error.kind = production` and the error, and every other record
//! flows. With `--on-production-error fail` the app stops naming the record.

mod common;
use common::{stop_all, Setup};
use exactly_testkit::broker::{self, ReadRecord, TestMessage};
use exactly_testkit::chaos::{count_by_id, free_port, scrape_until, AppProcess};
use std::collections::BTreeMap;
use std::time::Duration;

const FAULTY: &str = env!("CARGO_BIN_EXE_faulty-forward");

fn msg(id: &str, value: &str) -> TestMessage {
    TestMessage {
        id: Some(id.to_owned()),
        key: Some(format!("k{}", id.len() % 3).into_bytes()),
        value: value.as_bytes().to_vec(),
        timestamp: None,
    }
}

fn good(range: std::ops::Range<usize>) -> Vec<TestMessage> {
    range.map(|i| msg(&format!("g{i}"), "ok")).collect()
}

fn header(r: &ReadRecord, name: &str) -> String {
    String::from_utf8_lossy(r.headers.get(name).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

/// The output topic: compacted (a record without key is refused) and at most 20,000 bytes per
/// record.
fn setup(test: &str, partitions: i32) -> Option<Setup> {
    Setup::with_output_configs(
        test,
        partitions,
        &[
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "20000"),
        ],
    )
}

fn faulty(s: &Setup, extra: &[&str]) -> AppProcess {
    s.instance(FAULTY, "0", &s.state_dir("0"), extra)
}

#[test]
fn refused_outputs_are_dead_lettered_once_after_three_refusals_and_every_other_record_flows() {
    let Some(s) = setup("refused", 2) else {
        return;
    };
    let mut input = good(0..200);
    // Over the producer's message.max.bytes (1 MB): refused when sent.
    input.extend((0..2).map(|i| msg(&format!("big{i}"), "huge:1500000")));
    // Over the topic's max.message.bytes: refused by the broker.
    input.extend((0..2).map(|i| msg(&format!("over{i}"), "huge:50000")));
    // No key for the compacted output topic: refused by the broker.
    input.extend((0..2).map(|i| msg(&format!("nokey{i}"), "nokey")));
    input.extend(good(200..400));
    let poison: Vec<TestMessage> = input
        .iter()
        .filter(|m| !m.id.as_deref().unwrap_or_default().starts_with('g'))
        .cloned()
        .collect();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut app = faulty(&s, &["--metrics-addr", &metrics]);
    app.start();
    broker::produce(&s.bs, &s.input, &input);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    // A resend of the poison records is a duplicate: not dead-lettered again.
    broker::produce(&s.bs, &s.input, &poison);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    let text = scrape_until(&metrics, Duration::from_secs(10), |t| {
        t.contains("action=\"dead_lettered\"")
    });
    stop_all(std::slice::from_mut(&mut app));

    let out = count_by_id(&s.output_records());
    assert_eq!(out.len(), 400, "every good record forwarded");
    assert!(out.values().all(|n| *n == 1), "each once");
    assert!(out.keys().all(|id| id.starts_with('g')), "no poison output");
    let dead = broker::read_committed(&s.bs, &s.dlq());
    let mut by_id: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    for r in &dead {
        let id = header(r, "message-id");
        let e = by_id.entry(id).or_default();
        e.0 += 1;
        e.1 = header(r, "exactly.error.kind");
        e.2 = header(r, "exactly.error");
    }
    assert_eq!(by_id.len(), 6, "six dead letters: {by_id:?}");
    for (id, (n, kind, error)) in &by_id {
        assert_eq!(*n, 1, "{id} dead-lettered once");
        assert_eq!(kind, "production", "{id}");
        assert!(
            error.contains("refused an output of this record in 3 transactions"),
            "{id}: {error}"
        );
    }
    let dead_lettered: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("exactly_production_errors_total")
                && l.contains("action=\"dead_lettered\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(dead_lettered, 6, "metrics:\n{text}");
}

#[test]
fn with_policy_fail_a_refused_output_stops_the_app_naming_the_record_and_a_restart_goes_on() {
    let Some(s) = setup("refused-fail", 1) else {
        return;
    };
    let mut app = faulty(&s, &["--on-production-error", "fail"]);
    app.start();
    broker::produce(&s.bs, &s.input, &good(0..50));
    s.wait_caught_up(std::slice::from_mut(&mut app));
    let mut rest = vec![msg("over", "huge:50000")];
    rest.extend(good(50..100));
    broker::produce(&s.bs, &s.input, &rest);
    let status = app.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the app must stop with an error");
    let log = std::fs::read_to_string(&app.log).unwrap_or_default();
    assert!(
        log.contains(&format!(
            "refused an output of input record {}-0 offset 50 in 3 transactions in a row",
            s.input
        )) && log.contains("on_production_error"),
        "the error names the record and the setting; log tail:\n{}",
        app.log_tail(20)
    );
    let out = count_by_id(&s.output_records());
    assert_eq!(out.len(), 50, "nothing after the refused record committed");
    assert!(broker::read_committed(&s.bs, &s.dlq()).is_empty());

    let mut app = faulty(&s, &[]);
    app.start();
    s.wait_caught_up(std::slice::from_mut(&mut app));
    stop_all(std::slice::from_mut(&mut app));
    let out = count_by_id(&s.output_records());
    assert_eq!(out.len(), 100);
    assert!(out.values().all(|n| *n == 1));
    let dead = broker::read_committed(&s.bs, &s.dlq());
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "message-id"), "over");
}
