//! Bad input and failing processors against the real broker: every bad record is accounted
//! for (dead-lettered once with its reason, or the app stops with a clear error and commits
//! nothing of its batch), and every good record still reaches the output exactly once.

mod common;
use common::{stop_all, Setup};
use exactly_testkit::broker::{self, ReadRecord, TestMessage};
use exactly_testkit::chaos::{count_by_id, AppProcess};
use std::collections::BTreeMap;
use std::time::Duration;

const FAULTY: &str = env!("CARGO_BIN_EXE_faulty-forward");

fn faulty(s: &Setup, extra: &[&str]) -> AppProcess {
    s.instance(FAULTY, "0", &s.state_dir("0"), extra)
}

fn msg(id: Option<&str>, value: &str) -> TestMessage {
    TestMessage {
        id: id.map(str::to_owned),
        key: Some(b"k".to_vec()),
        value: value.as_bytes().to_vec(),
        timestamp: None,
    }
}

fn good(range: std::ops::Range<usize>) -> Vec<TestMessage> {
    range.map(|i| msg(Some(&format!("g{i}")), "ok")).collect()
}

fn header(r: &ReadRecord, name: &str) -> String {
    String::from_utf8_lossy(r.headers.get(name).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

/// Dead letters by their `exactly.error.kind` header.
fn kinds(dead: &[ReadRecord]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in dead {
        *m.entry(header(r, "exactly.error.kind")).or_default() += 1;
    }
    m
}

#[test]
fn missing_empty_and_oversized_ids_are_dead_lettered_with_their_reason_and_good_records_flow() {
    let Some(s) = Setup::new("bad-ids", 2) else {
        return;
    };
    let long = "x".repeat(300);
    let mut input = good(0..200);
    input.extend((0..10).map(|_| msg(None, "no id")));
    input.extend((0..10).map(|_| msg(Some(""), "empty id")));
    input.extend((0..10).map(|_| msg(Some(&long), "long id")));
    input.extend(good(0..50)); // resends
    let mut app = faulty(&s, &[]);
    app.start();
    broker::produce(&s.bs, &s.input, &input);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    stop_all(std::slice::from_mut(&mut app));

    let out = s.output_records();
    let dead = broker::read_committed(&s.bs, &s.dlq());
    assert_eq!(out.len(), 200);
    assert!(count_by_id(&out).values().all(|n| *n == 1));
    let expected: BTreeMap<String, usize> =
        [("empty_id", 10), ("missing_id", 10), ("oversized_id", 10)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    assert_eq!(kinds(&dead), expected);
    assert!(dead
        .iter()
        .all(|r| r.value.is_some() && header(r, "exactly.source.topic") == s.input));
}

#[test]
fn panics_and_rejections_are_dead_lettered_once_retries_succeed_and_resends_change_nothing() {
    let Some(s) = Setup::new("poison", 2) else {
        return;
    };
    let mut input = good(0..300);
    input.extend((0..5).map(|i| msg(Some(&format!("p{i}")), "panic please")));
    input.extend((0..5).map(|i| msg(Some(&format!("d{i}")), "dead letter me")));
    input.extend((0..5).map(|i| msg(Some(&format!("r{i}")), "retry:2")));
    let resends: Vec<TestMessage> = input.iter().step_by(2).cloned().collect();
    let mut app = faulty(
        &s,
        &[
            "--metrics-addr",
            &format!("127.0.0.1:{}", exactly_testkit::chaos::free_port()),
        ],
    );
    app.start();
    broker::produce(&s.bs, &s.input, &input);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    // A redelivery of the poison messages (a producer resend) is not dead-lettered twice.
    broker::produce(&s.bs, &s.input, &resends);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    stop_all(std::slice::from_mut(&mut app));

    let out = count_by_id(&s.output_records());
    let dead = broker::read_committed(&s.bs, &s.dlq());
    assert_eq!(out.len(), 305, "300 good + 5 retried IDs");
    assert!(out.values().all(|n| *n == 1), "each forwarded once");
    assert!((0..5).all(|i| out.contains_key(&format!("r{i}"))));
    let expected: BTreeMap<String, usize> = [("panic", 5), ("processor_error", 5)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(kinds(&dead), expected);
    assert!(dead
        .iter()
        .filter(|r| header(r, "exactly.error.kind") == "panic")
        .all(|r| header(r, "exactly.error").contains("panicked")));
    assert_eq!(
        count_by_id(&dead).values().max(),
        Some(&1),
        "no ID dead-lettered twice"
    );
}

#[test]
fn a_fatal_error_stops_the_app_with_a_clear_error_and_nothing_of_its_batch_commits() {
    let Some(s) = Setup::new("fatal", 1) else {
        return;
    };
    let mut app = faulty(&s, &[]);
    app.start();
    broker::produce(&s.bs, &s.input, &good(0..100));
    s.wait_caught_up(std::slice::from_mut(&mut app));
    let mut rest = good(100..110);
    rest.push(msg(Some("f"), "fatal"));
    rest.extend(good(110..120));
    broker::produce(&s.bs, &s.input, &rest);
    let status = app.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the app must stop with an error");
    let log = std::fs::read_to_string(&app.log).unwrap_or_default();
    assert!(
        log.contains("fatal record at offset 110"),
        "the error names the record; log tail:\n{}",
        app.log_tail(20)
    );
    // Only the first, committed batch is visible; g100..g109 were in the aborted transaction.
    let out = s.output_records();
    assert_eq!(out.len(), 100, "committed outputs");
    let committed = broker::committed_offsets(&s.bs, &s.app, &s.input, 1);
    assert_eq!(
        committed.get(&0),
        Some(&100),
        "the fatal batch's offsets are not committed"
    );
}

#[test]
fn an_unreachable_broker_fails_start_up_within_the_timeout_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--bootstrap",
        "127.0.0.1:1",
        "--input",
        "in",
        "--output",
        "out",
        "--startup-timeout-ms",
        "3000",
        "--state-dir",
        &dir.path().display().to_string(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let mut app = AppProcess::new(FAULTY, &[], "0", args, dir.path());
    let started = std::time::Instant::now();
    app.start();
    let status = app.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(&app.log).unwrap_or_default();
    assert!(!status.success());
    // The documented bound: the startup timeout (3 s here), plus the process's start and exit.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} with a 3 s startup timeout",
        started.elapsed()
    );
    assert!(
        log.contains("cannot reach Kafka at 127.0.0.1:1"),
        "log:\n{log}"
    );
}

/// Starts the app against topics set up by `prepare` and returns its log once it exited.
fn refused(test: &str, prepare: impl FnOnce(&Setup)) -> Option<String> {
    refused_with(test, &[], prepare)
}

/// [`refused`] for an app started with `extra` arguments.
fn refused_with(test: &str, extra: &[&str], prepare: impl FnOnce(&Setup)) -> Option<String> {
    let s = Setup::new(test, 2)?;
    prepare(&s);
    let mut app = faulty(&s, extra);
    app.start();
    let status = app.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "start-up must be refused");
    let log = std::fs::read_to_string(&app.log).unwrap_or_default();
    // Refused before processing: nothing was produced, and the group committed no offset.
    assert!(s.output_records().is_empty());
    let committed = broker::committed_offsets(&s.bs, &s.app, &s.input, s.partitions);
    assert!(
        committed.is_empty(),
        "offsets committed by a refused start: {committed:?}"
    );
    Some(log)
}

#[test]
fn a_missing_input_topic_is_refused_before_processing() {
    let log = refused("no-input", |s| broker::delete_topics(&s.bs, &[&s.input]));
    if let Some(log) = log {
        assert!(
            log.contains("input topic") && log.contains("does not exist"),
            "log:\n{log}"
        );
    }
}

#[test]
fn a_missing_output_topic_is_refused_before_processing() {
    let log = refused("no-output", |s| {
        broker::produce(&s.bs, &s.input, &good(0..10));
        broker::delete_topics(&s.bs, &[&s.output]);
    });
    if let Some(log) = log {
        assert!(
            log.contains("output topic") && log.contains("does not exist"),
            "log:\n{log}"
        );
    }
}

#[test]
fn a_changelog_without_compaction_is_refused_before_processing() {
    let log = refused("delete-changelog", |s| {
        broker::produce(&s.bs, &s.input, &good(0..10));
        broker::create_topics_with(
            &s.bs,
            &[(&s.changelog(), 2, &[("cleanup.policy", "delete")])],
        );
    });
    if let Some(log) = log {
        assert!(
            log.contains("has cleanup.policy=delete; it must include `compact`"),
            "log:\n{log}"
        );
    }
}

#[test]
fn a_changelog_keeping_ids_shorter_than_the_dedup_retention_is_refused_before_processing() {
    let log = refused("short-changelog", |s| {
        broker::produce(&s.bs, &s.input, &good(0..10));
        broker::create_topics_with(
            &s.bs,
            &[(
                &s.changelog(),
                2,
                &[
                    ("cleanup.policy", "compact,delete"),
                    ("retention.ms", "60000"),
                ],
            )],
        );
    });
    if let Some(log) = log {
        assert!(
            log.contains("has retention.ms=60000, shorter than the 604800000 ms"),
            "log:\n{log}"
        );
    }
}

#[test]
fn a_repartition_topic_keeping_records_shorter_than_the_dedup_retention_is_refused_before_processing(
) {
    let mut repartition = String::new();
    let log = refused_with("short-repartition", &["--dedup-scope", "global"], |s| {
        broker::produce(&s.bs, &s.input, &good(0..10));
        repartition = format!("{}-{}-by-id", s.app, s.input);
        broker::create_topics_with(&s.bs, &[(&repartition, 2, &[("retention.ms", "60000")])]);
    });
    if let Some(log) = log {
        assert!(
            log.contains(&format!("repartition topic `{repartition}` has retention.ms=60000, shorter than the dedup retention (604800000 ms)")),
            "log:\n{log}"
        );
        let bs = broker::bootstrap();
        assert!(
            broker::read_committed(&bs, &repartition).is_empty(),
            "nothing forwarded"
        );
        broker::delete_topics(&bs, &[&repartition]);
    }
}

#[test]
fn a_changelog_with_fewer_replicas_than_the_replication_factor_is_refused_before_processing() {
    let mut changelog = String::new();
    let log = refused_with("few-replicas", &["--replication-factor", "2"], |s| {
        broker::produce(&s.bs, &s.input, &good(0..10));
        // One replica (the test broker has one broker); the app asks for 2.
        changelog = s.changelog();
        broker::create_topics_with(
            &s.bs,
            &[(&changelog, 2, &[("cleanup.policy", "compact,delete")])],
        );
    });
    if let Some(log) = log {
        assert!(
            log.contains(&format!("internal topic `{changelog}` has 1 replica(s) per partition, fewer than replication_factor = 2")),
            "log:\n{log}"
        );
    }
}

#[test]
fn a_changelog_with_the_wrong_partition_count_is_refused_before_processing() {
    let log = refused("bad-changelog", |s| {
        broker::produce(&s.bs, &s.input, &good(0..10));
        broker::create_topics(&s.bs, &[(&s.changelog(), 3)]);
    });
    if let Some(log) = log {
        assert!(
            log.contains("has 3 partitions but input") && log.contains("must match"),
            "log:\n{log}"
        );
    }
}
