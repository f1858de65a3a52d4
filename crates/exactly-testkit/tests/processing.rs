//! Processing behaviour through the TestDriver: dedup, dead letters, ID policies, retries,
//! panics, fatal errors and TTL expiry.

mod common;
use common::{fanout, Fanout};
use exactly_core::task::dlq_headers;
use exactly_core::{
    Context, ErrorPolicy, IdPolicy, IdSource, InvalidIdPolicy, Output, ProcessError, Processor,
    Record, RetryPolicy, TaskConfig, TaskId,
};
use exactly_testkit::{CrashPoint, TestDriver, TestRecord};
use std::time::Duration;

fn dlq_config() -> TaskConfig {
    TaskConfig {
        dead_letter_topic: Some("dlq".into()),
        ..TaskConfig::default()
    }
}

fn header(r: &exactly_testkit::SimRecord, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or(b"<none>")).into_owned()
}

#[test]
fn resent_message_ids_are_dropped_and_counted() {
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .input("in", 3)
        .build();
    for id in ["a", "b", "a", "c", "b", "a"] {
        d.pipe(TestRecord::with_id(id).key(id).value("1"));
    }
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 3);
    assert_eq!(d.stats().duplicates_dropped, 3);
}

#[test]
fn resend_in_a_later_transaction_is_dropped_by_the_store() {
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout).build();
    d.pipe(TestRecord::with_id("a").value("2"));
    d.run_until_idle().unwrap();
    assert_eq!(d.disk(0).entries(), 1);
    d.pipe(TestRecord::with_id("a").value("2"));
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 2);
    assert_eq!(d.stats().duplicates_dropped, 1);
}

#[test]
fn missing_empty_and_oversized_ids_are_dead_lettered_by_default() {
    let config = TaskConfig {
        ids: IdPolicy {
            max_len: 4,
            ..IdPolicy::default()
        },
        ..dlq_config()
    };
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .config(config)
        .build();
    d.pipe(TestRecord::without_id().value("1"));
    d.pipe(TestRecord::with_id("").value("1"));
    d.pipe(TestRecord::with_id("toolong").value("1"));
    d.pipe(TestRecord::with_id("ok").value("1"));
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 1);
    let dl = d.dead_letters();
    let kinds: Vec<String> = dl
        .iter()
        .map(|r| header(r, dlq_headers::ERROR_KIND))
        .collect();
    assert_eq!(kinds, ["missing_id", "empty_id", "oversized_id"]);
    assert_eq!(header(&dl[2], dlq_headers::SOURCE_OFFSET), "2");
    assert_eq!(header(&dl[2], dlq_headers::SOURCE_TOPIC), "input");
    assert!(header(&dl[2], dlq_headers::ERROR).contains("7 bytes, longer than the maximum of 4"));
}

#[test]
fn id_policy_process_handles_records_without_dedup() {
    let config = TaskConfig {
        ids: IdPolicy {
            on_invalid: InvalidIdPolicy::Process,
            ..IdPolicy::default()
        },
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .config(config)
        .build();
    d.pipe(TestRecord::without_id().value("1"));
    d.pipe(TestRecord::without_id().value("1"));
    d.run_until_idle().unwrap();
    assert_eq!(
        d.committed_outputs("out").len(),
        2,
        "no ID: no dedup, both processed"
    );
}

#[test]
fn id_policy_fail_stops_with_an_error_that_names_the_fix_and_commits_nothing() {
    let config = TaskConfig {
        ids: IdPolicy {
            on_invalid: InvalidIdPolicy::Fail,
            ..IdPolicy::default()
        },
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .config(config)
        .build();
    d.pipe(TestRecord::with_id("a").value("1"));
    d.pipe(TestRecord::without_id().value("1"));
    let err = d.step().unwrap_err();
    assert!(err.is_fatal());
    assert!(err.to_string().contains("ids.on_invalid"), "{err}");
    assert_eq!(d.committed_outputs("out").len(), 0);
    assert_eq!(d.committed_offset(0), None);
}

#[test]
fn key_can_be_the_message_id() {
    let config = TaskConfig {
        ids: IdPolicy {
            source: IdSource::Key,
            ..IdPolicy::default()
        },
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .config(config)
        .build();
    d.pipe(TestRecord::without_id().key("k1").value("1"));
    d.pipe(TestRecord::without_id().key("k1").value("1"));
    d.pipe(TestRecord::without_id().key("k2").value("1"));
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 2);
}

#[test]
fn custom_extractor_derives_the_id_from_the_value() {
    let config = TaskConfig {
        ids: IdPolicy {
            source: IdSource::custom(|r| r.value.map(|v| std::borrow::Cow::Owned(v[..1].to_vec()))),
            ..IdPolicy::default()
        },
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .config(config)
        .build();
    for v in ["1a", "1b", "2a"] {
        d.pipe(TestRecord::without_id().value(v));
    }
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 2, "IDs '1' and '2'");
}

/// Fails with `Retry` on the first `fail_times` attempts of every record, then forwards.
struct Flaky {
    fail_times: u32,
    attempts: u32,
}

impl Processor for Flaky {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        // Outputs of failed attempts must be discarded.
        ctx.send(Output::forward("out", r));
        self.attempts += 1;
        if self.attempts <= self.fail_times {
            return Err(ProcessError::retry("downstream busy"));
        }
        self.attempts = 0;
        Ok(())
    }
}

#[test]
fn retry_succeeds_within_the_attempt_budget_with_exponential_backoff() {
    let config = TaskConfig {
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        },
        ..dlq_config()
    };
    let mut d = TestDriver::builder(|_: &TaskId| Flaky {
        fail_times: 3,
        attempts: 0,
    })
    .config(config)
    .build();
    let start = exactly_core::Clock::now_ms(d.clock());
    d.pipe(TestRecord::with_id("a"));
    d.run_until_idle().unwrap();
    assert_eq!(
        d.committed_outputs("out").len(),
        1,
        "only the successful attempt's output"
    );
    assert_eq!(d.dead_letters().len(), 0);
    assert_eq!(exactly_core::Clock::now_ms(d.clock()) - start, 10 + 20 + 40);
}

#[test]
fn exhausted_retries_dead_letter_the_record_and_record_its_id() {
    let config = TaskConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        ..dlq_config()
    };
    let mut d = TestDriver::builder(|_: &TaskId| Flaky {
        fail_times: u32::MAX,
        attempts: 0,
    })
    .config(config)
    .build();
    d.pipe(TestRecord::with_id("a"));
    d.pipe(TestRecord::with_id("a"));
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 0);
    let dl = d.dead_letters();
    assert_eq!(
        dl.len(),
        1,
        "the redelivery is a duplicate, not a second dead letter"
    );
    assert_eq!(header(&dl[0], dlq_headers::ERROR_KIND), "retries_exhausted");
    assert!(header(&dl[0], dlq_headers::ERROR).contains("gave up after 3 attempts"));
}

struct Panicky;
impl Processor for Panicky {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if r.value == Some(b"boom") {
            panic!("cannot parse {:?}", r.offset);
        }
        ctx.send(Output::forward("out", r));
        Ok(())
    }
}

#[test]
fn panicking_processor_is_caught_and_the_record_dead_lettered() {
    let mut d = TestDriver::builder(|_: &TaskId| Panicky)
        .config(dlq_config())
        .build();
    d.pipe(TestRecord::with_id("a").value("ok"));
    d.pipe(TestRecord::with_id("b").value("boom"));
    d.pipe(TestRecord::with_id("c").value("ok"));
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 2);
    let dl = d.dead_letters();
    assert_eq!(dl.len(), 1);
    assert_eq!(header(&dl[0], dlq_headers::ERROR_KIND), "panic");
    assert!(header(&dl[0], dlq_headers::ERROR).contains("cannot parse 1"));
}

#[test]
fn panicking_processor_with_fail_policy_stops_and_commits_nothing_of_the_batch() {
    let config = TaskConfig {
        on_error: ErrorPolicy::Fail,
        ..dlq_config()
    };
    let mut d = TestDriver::builder(|_: &TaskId| Panicky)
        .config(config)
        .build();
    d.pipe(TestRecord::with_id("a").value("ok"));
    d.pipe(TestRecord::with_id("b").value("boom"));
    let err = d.step().unwrap_err();
    assert!(err.to_string().contains("processor panicked"), "{err}");
    assert_eq!(d.committed_outputs("out").len(), 0);
    assert_eq!(d.dead_letters().len(), 0);
}

struct FatalOnB;
impl Processor for FatalOnB {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if r.value == Some(b"b") {
            return Err(ProcessError::fatal("invariant broken"));
        }
        ctx.send(Output::forward("out", r));
        Ok(())
    }
}

#[test]
fn fatal_error_aborts_the_batch_and_stops() {
    let mut d = TestDriver::builder(|_: &TaskId| FatalOnB)
        .config(dlq_config())
        .max_batch(10)
        .build();
    d.pipe(TestRecord::with_id("1").value("a"));
    d.pipe(TestRecord::with_id("2").value("b"));
    let err = d.step().unwrap_err();
    assert!(err.is_fatal());
    assert!(err.to_string().contains("invariant broken"));
    assert_eq!(
        d.committed_outputs("out").len(),
        0,
        "the output of record 1 was aborted too"
    );
    assert!(!d.is_running());
}

#[test]
fn dead_letter_without_a_dlq_topic_is_a_clear_error() {
    let mut d = TestDriver::builder(|_: &TaskId| Panicky).build();
    d.pipe(TestRecord::with_id("b").value("boom"));
    let err = d.step().unwrap_err();
    assert!(
        err.to_string()
            .contains("no dead-letter topic is configured"),
        "{err}"
    );
}

/// A fan-out driver whose IDs (and dedup changelog records) are kept for one minute.
fn one_minute_retention() -> TestDriver<fn(&TaskId) -> Fanout> {
    let config = TaskConfig {
        dedup_retention_ms: 60_000,
        ..TaskConfig::default()
    };
    TestDriver::builder(fanout as fn(&TaskId) -> Fanout)
        .config(config)
        .build()
}

#[test]
fn ids_older_than_the_retention_expire_and_are_processed_again() {
    let mut d = one_minute_retention();
    d.pipe(TestRecord::with_id("a").value("1"));
    d.run_until_idle().unwrap();
    d.clock().advance(Duration::from_secs(30));
    d.pipe(TestRecord::with_id("a").value("1"));
    d.run_until_idle().unwrap();
    assert_eq!(
        d.committed_outputs("out").len(),
        1,
        "within retention: duplicate"
    );
    d.clock().advance(Duration::from_secs(31));
    assert_eq!(d.expire().unwrap(), 1);
    assert_eq!(d.disk(0).entries(), 0);
    d.pipe(TestRecord::with_id("a").value("1"));
    d.run_until_idle().unwrap();
    assert_eq!(
        d.committed_outputs("out").len(),
        2,
        "after retention the ID is new again"
    );
}

#[test]
fn expired_changelog_entries_are_not_restored() {
    let mut d = one_minute_retention();
    d.pipe(TestRecord::with_id("old").value("1"));
    d.run_until_idle().unwrap();
    d.clock().advance(Duration::from_secs(50));
    d.pipe(TestRecord::with_id("new").value("1"));
    d.run_until_idle().unwrap();
    d.clock().advance(Duration::from_secs(20));
    d.disk(0).lose();
    d.restart().unwrap();
    assert_eq!(
        d.stats().restored_records,
        1,
        "only 'new' is within the retention"
    );
}

#[test]
fn a_restore_whose_tail_retention_deleted_after_it_was_planned_completes() {
    let mut d = one_minute_retention();
    d.pipe(TestRecord::with_id("a").value("1").partition(0));
    d.run_until_idle().unwrap();
    // A crash between the commit and the store apply: the store's checkpoint lies before
    // the changelog record of "b"'s transaction.
    d.pipe(TestRecord::with_id("b").value("1").partition(0));
    d.step_and_crash(CrashPoint::AfterCommitBeforeApply)
        .unwrap();
    assert_eq!(d.committed_outputs("out").len(), 2);
    // The instance stays down longer than the retention. The restart plans the tail from
    // the checkpoint; the broker deletes it (retention) before the restore's first fetch,
    // which resets to the log start with nothing to read, so the consumer's position never
    // reaches the end the plan saw.
    d.clock().advance(Duration::from_secs(61));
    d.restart().unwrap();
    assert_eq!(d.stats().restored_records, 0, "the tail is gone");
    assert_eq!(d.committed_offset(0), Some(2));
    // "b" expired with its changelog record: a resend is new again, as after any expiry.
    d.pipe(TestRecord::with_id("c").value("1").partition(0));
    d.pipe(TestRecord::with_id("c").value("1").partition(0));
    d.run_until_idle().unwrap();
    assert_eq!(d.committed_outputs("out").len(), 3);
    assert_eq!(d.committed_offset(0), Some(4));
}
