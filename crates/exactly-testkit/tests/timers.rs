//! Timers through the TestDriver: stream-time and wall-clock timers fire once, inside the
//! transaction, across crashes at every crash point and after a task move; failed callbacks are
//! dead-lettered; an app without the timer store gets a clear error.

use exactly_core::task::dlq_headers;
use exactly_core::timer::timer_headers;
use exactly_core::{
    Context, FlushContext, Output, ProcessError, Processor, ProcessorFactory, Record, StoreSpec,
    TaskConfig, TaskError, TaskId, Timer, TimerKind,
};
use exactly_testkit::sim::SimDisk;
use exactly_testkit::{CrashPoint, StepOutcome, TestDriver, TestRecord};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A session ends after this much stream time without a record of its key.
const GAP: i64 = 5_000;
const START: i64 = 1_700_000_000_000;

/// Per key (account), alerts when no record came for `GAP` of stream time; a key `bad`
/// makes its timer's callback fail, a key `tick` schedules a wall-clock timer every second.
struct Sessions;

impl Processor for Sessions {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let key = r.key.unwrap_or_default().to_vec();
        if key == b"tick" {
            let at = ctx.wall_clock_ms() + 1_000;
            return ctx.schedule(TimerKind::Wall, key, at);
        }
        let ts = r.timestamp.expect("the test's records have timestamps");
        ctx.schedule(TimerKind::Stream, &key, ts + GAP)?;
        ctx.send(
            Output::to("seen")
                .key(key)
                .value(ctx.stream_time().unwrap().to_string()),
        );
        Ok(())
    }

    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if timer.key == b"bad" {
            return Err(ProcessError::dead_letter("cannot alert for `bad`"));
        }
        if timer.kind == TimerKind::Wall {
            let n = ctx.wall_clock_ms();
            ctx.schedule(TimerKind::Wall, &timer.key, timer.due_ms + 1_000)?;
            ctx.send(Output::to("ticks").value(format!("{}@{}", timer.due_ms - START, n - START)));
            return Ok(());
        }
        ctx.send(
            Output::to("alerts")
                .key(timer.key.clone())
                .value(format!("{}", timer.due_ms - START)),
        );
        Ok(())
    }
}

fn config() -> TaskConfig {
    TaskConfig {
        stores: vec![StoreSpec::timers()],
        dead_letter_topic: Some("dlq".into()),
        ..TaskConfig::default()
    }
}

fn driver(max_batch: usize) -> TestDriver<fn(&TaskId) -> Sessions> {
    TestDriver::builder((|_: &TaskId| Sessions) as fn(&TaskId) -> Sessions)
        .config(config())
        .max_batch(max_batch)
        .start_ms(START)
        .build()
}

/// `(key, stream-time offset from START)` records, each with its own message ID.
fn pipe<F: ProcessorFactory>(d: &mut TestDriver<F>, id: &str, key: &str, at: i64) {
    d.pipe(TestRecord::with_id(id).key(key).timestamp(START + at));
}

/// The committed records of `topic` as `key=value` (or `value`) strings, with their
/// message IDs.
fn read<F: ProcessorFactory>(d: &TestDriver<F>, topic: &str) -> Vec<(String, String)> {
    d.committed_outputs(topic)
        .iter()
        .map(|r| {
            let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            let text = match &r.key {
                Some(k) => format!("{}={v}", String::from_utf8_lossy(k)),
                None => v,
            };
            let id = String::from_utf8_lossy(r.header("message-id").unwrap_or(b"-")).into_owned();
            (text, id)
        })
        .collect()
}

/// Sessions of a, b, c with gaps, a resend, and records out of order.
fn sessions_input(d: &mut TestDriver<fn(&TaskId) -> Sessions>) {
    pipe(d, "1", "a", 1_000);
    pipe(d, "2", "b", 2_000);
    pipe(d, "3", "a", 3_000); // moves a's timer to 8_000
    pipe(d, "3", "a", 3_000); // a resend: dropped, a's timer stays at 8_000
    pipe(d, "4", "c", 7_000); // stream time 7_000: b's session (due 7_000) ends
    pipe(d, "5", "c", 6_000); // late: stream time stays 7_000; c's timer moves back to 11_000
    pipe(d, "6", "b", 9_500); // stream time 9_500: a's session (8_000) ends; b's new one
    pipe(d, "7", "d", 20_000); // c (11_000) and b (14_500) end
}

fn expected_alerts() -> Vec<(String, String)> {
    [("b", 7_000), ("a", 8_000), ("c", 11_000), ("b", 14_500)]
        .iter()
        .map(|(k, at)| {
            (
                format!("{k}={at}"),
                format!("timer/stream/{k}@{}", START + at),
            )
        })
        .collect()
}

#[test]
fn stream_timers_fire_once_when_stream_time_passes_them() {
    let mut d = driver(100);
    sessions_input(&mut d);
    d.run_until_idle().unwrap();
    assert_eq!(read(&d, "alerts"), expected_alerts());
    // `process` sees stream time with its own record's timestamp.
    let seen: Vec<String> = read(&d, "seen").into_iter().map(|(v, _)| v).collect();
    assert_eq!(
        seen,
        ["a=1000", "b=2000", "a=3000", "c=7000", "c=7000", "b=9500", "d=20000"].map(|s| {
            let (k, v) = s.split_once('=').unwrap();
            format!("{k}={}", START + v.parse::<i64>().unwrap())
        })
    );
    assert_eq!(d.stats().timers_fired, 4);
    // d's session (due 25_000) is still open, and its timer committed.
    pipe(&mut d, "8", "e", 25_000);
    d.run_until_idle().unwrap();
    assert_eq!(read(&d, "alerts").last().unwrap().0, "d=25000");
}

#[test]
fn stream_timers_fire_once_across_a_crash_at_every_point_and_batch_boundary() {
    let points = [
        CrashPoint::BeforeSend,
        CrashPoint::AfterSendsBeforeCommit,
        CrashPoint::DuringCommit { committed: false },
        CrashPoint::DuringCommit { committed: true },
        CrashPoint::AfterCommitBeforeApply,
    ];
    for point in points {
        // Two records per transaction: the crash hits each of the first transactions in turn.
        for crash_at in 0..4 {
            let mut d = driver(2);
            sessions_input(&mut d);
            for _ in 0..crash_at {
                assert!(matches!(d.step().unwrap(), StepOutcome::Committed { .. }));
            }
            assert_eq!(
                d.step_and_crash(point).unwrap(),
                StepOutcome::Crashed(point),
                "{point:?} at {crash_at}"
            );
            d.restart().unwrap();
            d.run_until_idle().unwrap();
            assert_eq!(
                read(&d, "alerts"),
                expected_alerts(),
                "{point:?} at transaction {crash_at}"
            );
        }
    }
}

#[test]
fn timers_and_stream_time_move_with_the_task_to_a_new_host() {
    let mut d = driver(100);
    pipe(&mut d, "1", "a", 1_000);
    pipe(&mut d, "2", "b", 4_000);
    d.run_until_idle().unwrap();
    // The task moves to a host with an empty state directory: it restores the timer store
    // (a's timer at 6_000, b's at 9_000, stream time 4_000) from its changelog.
    d.use_state_dir(SimDisk::new());
    d.restart().unwrap();
    // A late record does not move stream time back: nothing is due at 3_000.
    pipe(&mut d, "3", "c", 3_000);
    d.run_until_idle().unwrap();
    assert_eq!(read(&d, "alerts"), []);
    let seen = read(&d, "seen");
    assert_eq!(
        seen.last().unwrap().0,
        format!("c={}", START + 4_000),
        "stream time was restored"
    );
    pipe(&mut d, "4", "c", 6_000);
    d.run_until_idle().unwrap();
    assert_eq!(
        read(&d, "alerts"),
        [("a=6000".into(), format!("timer/stream/a@{}", START + 6_000))]
    );
}

#[test]
fn wall_clock_timers_fire_without_input_and_once_across_a_crash() {
    let mut d = driver(100);
    d.pipe(TestRecord::with_id("t").key("tick"));
    d.run_until_idle().unwrap();
    d.advance_wall_clock(Duration::from_millis(999)).unwrap();
    assert_eq!(read(&d, "ticks"), []);
    d.advance_wall_clock(Duration::from_millis(1)).unwrap();
    assert_eq!(
        read(&d, "ticks"),
        [(
            "1000@1000".into(),
            format!("timer/wall/tick@{}", START + 1_000)
        )]
    );
    // 3.5 s later: the callback rescheduled itself each second; the three due now fire in
    // one go, in order.
    d.advance_wall_clock(Duration::from_millis(3_500)).unwrap();
    let ticks: Vec<String> = read(&d, "ticks").into_iter().map(|(v, _)| v).collect();
    assert_eq!(ticks, ["1000@1000", "2000@4500", "3000@4500", "4000@4500"]);
    // A crash in the transaction that fires the next one: it fires once after the restart.
    for point in [
        CrashPoint::AfterSendsBeforeCommit,
        CrashPoint::DuringCommit { committed: true },
        CrashPoint::AfterCommitBeforeApply,
    ] {
        let before = read(&d, "ticks").len();
        d.clock().advance(Duration::from_millis(1_000));
        assert_eq!(
            d.step_and_crash(point).unwrap(),
            StepOutcome::Crashed(point)
        );
        d.restart().unwrap();
        d.run_until_idle().unwrap();
        assert_eq!(read(&d, "ticks").len(), before + 1, "{point:?}");
    }
    let ticks: Vec<String> = read(&d, "ticks").into_iter().map(|(v, _)| v).collect();
    assert_eq!(ticks[4..], ["5000@5500", "6000@6500", "7000@7500"]);
}

#[test]
fn a_timer_whose_callback_fails_is_dead_lettered_once_and_removed() {
    let mut d = driver(100);
    pipe(&mut d, "1", "bad", 1_000);
    pipe(&mut d, "2", "x", 6_000);
    pipe(&mut d, "3", "y", 30_000);
    d.run_until_idle().unwrap();
    let dl = d.dead_letters();
    assert_eq!(dl.len(), 1);
    let h = |n: &str| String::from_utf8_lossy(dl[0].header(n).unwrap()).into_owned();
    assert_eq!(dl[0].key.as_deref(), Some(&b"bad"[..]));
    assert_eq!(dl[0].value, None);
    assert_eq!(h(dlq_headers::ERROR_KIND), "processor_error");
    assert_eq!(h(dlq_headers::ERROR), "cannot alert for `bad`");
    assert_eq!(h(timer_headers::KIND), "stream");
    assert_eq!(h(timer_headers::DUE), (START + 6_000).to_string());
    assert_eq!(
        h("message-id"),
        format!("timer/stream/bad@{}", START + 6_000)
    );
    // x's session ended; the failed timer is gone and does not fire again.
    assert_eq!(
        read(&d, "alerts"),
        [(
            "x=11000".into(),
            format!("timer/stream/x@{}", START + 11_000)
        )]
    );
    assert_eq!(d.stats().timers_fired, 1);
}

#[test]
fn scheduling_without_the_timer_store_says_how_to_declare_it() {
    let mut d = TestDriver::builder(|_: &TaskId| Sessions)
        .start_ms(START)
        .build();
    d.pipe(TestRecord::with_id("1").key("a").timestamp(START));
    let err = d.run_until_idle().unwrap_err();
    let TaskError::Processor { reason, .. } = &err else {
        panic!("expected a processor error, got {err}");
    };
    assert!(reason.contains("call `App::timers()`"), "{reason}");
    assert_eq!(d.committed_outputs("seen"), []);
}

#[test]
fn the_timer_store_may_not_expire() {
    let err = StoreSpec::timers()
        .ttl(Duration::from_secs(1))
        .validate()
        .unwrap_err();
    assert!(err.contains("timers must not expire"), "{err}");
}

/// [`Sessions`] whose first `n` pre-commit flushes fail, so that their transactions abort
/// and their records come again in the same instance.
struct FailingFlushes {
    inner: Sessions,
    left: Arc<AtomicU32>,
}

impl Processor for FailingFlushes {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.inner.process(r, ctx)
    }
    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        self.inner.on_timer(timer, ctx)
    }
    fn flush(&mut self, _: &mut FlushContext<'_>) -> Result<(), ProcessError> {
        match self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(ProcessError::retry("flush fails on purpose")),
            Err(_) => Ok(()),
        }
    }
}

#[test]
fn an_aborted_transaction_rewinds_stream_time_and_its_fired_timers() {
    let left = Arc::new(AtomicU32::new(1));
    let l = left.clone();
    let mut d = TestDriver::builder(move |_: &TaskId| FailingFlushes {
        inner: Sessions,
        left: l.clone(),
    })
    .config(config())
    .start_ms(START)
    .build();
    pipe(&mut d, "1", "a", 1_000);
    pipe(&mut d, "2", "b", 10_000); // fires a's timer (6_000) in the transaction that aborts
    assert!(matches!(d.step().unwrap(), StepOutcome::Aborted { .. }));
    assert_eq!(left.load(Ordering::SeqCst), 0);
    d.run_until_idle().unwrap();
    let seen: Vec<String> = read(&d, "seen").into_iter().map(|(v, _)| v).collect();
    assert_eq!(
        seen,
        [
            format!("a={}", START + 1_000),
            format!("b={}", START + 10_000)
        ],
        "stream time as if the aborted transaction never ran"
    );
    assert_eq!(
        read(&d, "alerts"),
        [("a=6000".into(), format!("timer/stream/a@{}", START + 6_000))]
    );
}
