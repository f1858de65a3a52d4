//! The windowed store through the TestDriver: counts per key and window, late records refused
//! once their window closed, whole windows expired by stream time and gone from the committed
//! state, and the same windows after a crash at every crash point.

use exactly_core::window::WindowStore;
use exactly_core::{Context, Output, ProcessError, Processor, Record, TaskConfig, TaskId};
use exactly_testkit::{CrashPoint, StepOutcome, TestDriver, TestRecord};
use std::time::Duration;

const T0: i64 = 1_700_000_000_000; // a multiple of 10 s

/// Counts records per key and 10 s window (grace 5 s), emitting `key@window=count`, or
/// `key late` for a record whose window closed.
#[derive(Clone)]
struct Counts {
    windows: WindowStore<String, u64>,
}

impl Processor for Counts {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let key = String::from_utf8_lossy(r.key.unwrap_or_default()).into_owned();
        let at = r.timestamp.expect("timestamped");
        let n = self.windows.get(ctx, &key, at)?.unwrap_or(0) + 1;
        let out = if self.windows.put(ctx, &key, at, &n)? {
            format!("{key}@{}={n}", (self.windows.window_of(at) - T0) / 1_000)
        } else {
            format!("{key} late")
        };
        ctx.send(Output::to("counts").value(out));
        Ok(())
    }
}

fn driver(
    max_batch: usize,
) -> (
    TestDriver<impl exactly_core::ProcessorFactory>,
    WindowStore<String, u64>,
) {
    let windows = WindowStore::new("counts", Duration::from_secs(10), Duration::from_secs(5));
    let config = TaskConfig {
        stores: vec![windows.spec().clone()],
        ..TaskConfig::default()
    };
    let w = windows.clone();
    let d = TestDriver::builder(move |_: &TaskId| Counts { windows: w.clone() })
        .config(config)
        .max_batch(max_batch)
        .build();
    (d, windows)
}

/// `(id, key, seconds after T0)`.
const INPUT: [(&str, &str, i64); 9] = [
    ("1", "a", 1),
    ("2", "a", 4),
    ("3", "b", 9),
    ("4", "a", 12), // window 10
    ("5", "a", 3),  // late but open: window 0 closes at 15 s
    ("6", "b", 16), // stream time 16 s: window 0 closed
    ("7", "a", 2),  // late: refused
    ("8", "b", 31), // stream time 31 s: window 10 closed too (at 25 s)
    ("9", "a", 14), // refused
];

fn pipe_all(d: &mut TestDriver<impl exactly_core::ProcessorFactory>) {
    for (id, key, s) in INPUT {
        d.pipe(TestRecord::with_id(id).key(key).timestamp(T0 + s * 1_000));
    }
}

fn outputs(d: &TestDriver<impl exactly_core::ProcessorFactory>) -> Vec<String> {
    d.committed_outputs("counts")
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned())
        .collect()
}

const EXPECTED: [&str; 9] = [
    "a@0=1", "a@0=2", "b@0=1", "a@10=1", "a@0=3", "b@10=1", "a late", "b@30=1", "a late",
];

/// The committed entries' window starts (seconds after T0) and keys; the store's stream time
/// (its one short key) must be the last record's.
fn committed_windows(d: &TestDriver<impl exactly_core::ProcessorFactory>) -> Vec<(i64, String)> {
    let state = d.committed_state("counts", 0);
    let stream_time: Vec<_> = state.iter().filter(|(k, _)| k.len() < 8).collect();
    assert_eq!(stream_time.len(), 1, "the stream time entry");
    assert_eq!(
        stream_time[0].1,
        (T0 + 31_000).to_be_bytes(),
        "the stream time"
    );
    state
        .into_iter()
        .filter(|(k, _)| k.len() >= 8)
        .map(|(k, _)| {
            let start = (u64::from_be_bytes(k[..8].try_into().unwrap()) ^ (1 << 63)) as i64;
            (
                (start - T0) / 1_000,
                String::from_utf8(k[8..].to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn windows_count_per_key_refuse_late_records_and_expire_whole() {
    let (mut d, _) = driver(100);
    pipe_all(&mut d);
    d.run_until_idle().unwrap();
    assert_eq!(outputs(&d), EXPECTED);
    // Window 0 was deleted by b's write at 16 s, window 10 by b's at 31 s: only window 30
    // is left.
    assert_eq!(committed_windows(&d), [(30, "b".to_owned())]);
}

#[test]
fn windows_are_the_same_after_a_crash_at_every_point() {
    for point in [
        CrashPoint::BeforeSend,
        CrashPoint::AfterSendsBeforeCommit,
        CrashPoint::DuringCommit { committed: false },
        CrashPoint::DuringCommit { committed: true },
        CrashPoint::AfterCommitBeforeApply,
    ] {
        // Three records per transaction: the crash hits each of the three in turn.
        for crash_at in 0..3 {
            let (mut d, _) = driver(3);
            pipe_all(&mut d);
            for _ in 0..crash_at {
                assert!(matches!(d.step().unwrap(), StepOutcome::Committed { .. }));
            }
            assert_eq!(
                d.step_and_crash(point).unwrap(),
                StepOutcome::Crashed(point)
            );
            d.restart().unwrap();
            d.run_until_idle().unwrap();
            assert_eq!(outputs(&d), EXPECTED, "{point:?} at transaction {crash_at}");
            assert_eq!(
                committed_windows(&d),
                [(30, "b".to_owned())],
                "{point:?} at {crash_at}"
            );
        }
    }
}
