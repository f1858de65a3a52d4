//! Randomized schedules of crashes (at every crash point), broker faults, store loss and
//! corruption, store write failures, zombies and duplicate injection. After each schedule
//! every input message ID must have produced its outputs exactly once in the committed
//! output. Seeded: a failure prints the seed, and `TEST_SEED=<seed>` replays it alone.

mod common;
use common::{fanout, oracle, Fanout};
use exactly_core::ChangelogCheckpoint;
use exactly_testkit::{CrashPoint, Fault, FaultKind, Request, TestDriver, TestRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_SCHEDULES: u64 = 1000;

fn run_schedule(seed: u64) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let partitions = rng.gen_range(1..=4);
    let mut d = TestDriver::builder(fanout as fn(&exactly_core::TaskId) -> Fanout)
        .input("in", partitions)
        .max_batch(rng.gen_range(1..=8))
        .build();
    let mut inputs: Vec<(String, u64)> = Vec::new();
    let mut crashes = 0u64;
    let ops = rng.gen_range(20..60);
    let trace = std::env::var("TEST_TRACE").is_ok();
    if trace {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    for _ in 0..ops {
        let op = rng.gen_range(0..100);
        if trace {
            eprintln!("op {op} stats {:?}", d.stats());
        }
        match op {
            0..=34 => {
                for _ in 0..rng.gen_range(1..6) {
                    // Re-send an earlier ID (same fanout: a resend carries the same payload).
                    let (id, fan) = if !inputs.is_empty() && rng.gen_bool(0.3) {
                        inputs[rng.gen_range(0..inputs.len())].clone()
                    } else {
                        (format!("m{}", inputs.len()), rng.gen_range(0..=3))
                    };
                    let at = d.pipe(TestRecord::with_id(id.clone()).value(fan.to_string()));
                    if trace {
                        eprintln!("  pipe {id} fan {fan} at {at:?}");
                    }
                    inputs.push((id, fan));
                }
            }
            35..=64 => {
                let o = d.step().expect("no fatal errors in this schedule");
                if trace {
                    eprintln!("  step {o:?}");
                }
            }
            65..=79 => {
                let point = match rng.gen_range(0..5) {
                    0 => CrashPoint::BeforeSend,
                    1 => CrashPoint::AfterSendsBeforeCommit,
                    2 => CrashPoint::DuringCommit { committed: true },
                    3 => CrashPoint::DuringCommit { committed: false },
                    _ => CrashPoint::AfterCommitBeforeApply,
                };
                let o = d.step_and_crash(point).expect("crash");
                if trace {
                    eprintln!("  crash {point:?} {o:?}");
                }
                crashes += 1;
                // While the process is down its disk may be lost or damaged. (A cycle with
                // no input ends before the crash point: then the process still runs.)
                let p = rng.gen_range(0..partitions);
                let damage = if d.is_running() {
                    9
                } else {
                    rng.gen_range(0..10)
                };
                if trace && damage < 3 {
                    eprintln!("  damage {damage} on partition {p}");
                }
                match damage {
                    0 => d.disk(p).lose(),
                    1 => d.disk(p).corrupt(),
                    2 => {
                        let topic = d.changelog_topic().to_owned();
                        d.disk(p).set_checkpoint(ChangelogCheckpoint {
                            topic,
                            partition: p,
                            next_offset: 1 << 40,
                        });
                    }
                    _ => {}
                }
            }
            80..=87 => {
                let request = [
                    Request::Send,
                    Request::Produce,
                    Request::TxnOffsetCommit,
                    Request::EndTxn,
                ][rng.gen_range(0..4)];
                let kind = [
                    FaultKind::Retriable,
                    FaultKind::Abortable,
                    FaultKind::ResponseLost,
                ][rng.gen_range(0..3)];
                let fault = Fault::new(request, kind);
                if trace {
                    eprintln!("  inject {fault:?}");
                }
                d.cluster().inject(fault);
            }
            88..=92 => {
                let p = rng.gen_range(0..partitions);
                if trace {
                    eprintln!("  fail next apply on partition {p}");
                }
                d.disk(p).fail_next_apply();
            }
            93..=96 => {
                if d.is_running() {
                    d.process_without_commit().expect("process");
                    let mut zombie = d.start_replacement().expect("replacement starts");
                    d.step().expect("step");
                    let outcome = d.zombie_step(&mut zombie).expect("zombie step");
                    assert!(
                        matches!(
                            outcome,
                            exactly_testkit::StepOutcome::Fenced
                                | exactly_testkit::StepOutcome::Idle
                        ),
                        "seed {seed}: zombie must be fenced, got {outcome:?}"
                    );
                }
            }
            _ => d
                .clock()
                .advance(std::time::Duration::from_secs(rng.gen_range(1..600))),
        }
    }
    d.run_until_idle().expect("final run");
    let outputs = d.committed_outputs("out");
    let report = oracle(&inputs, &outputs);
    assert!(
        report.is_exact(),
        "seed {seed} (replay with TEST_SEED={seed}):\n{report}"
    );
    (crashes, report.unique_ids)
}

#[test]
fn every_message_id_produces_its_outputs_exactly_once_under_random_crash_schedules() {
    let (seeds, base): (Vec<u64>, u64) = match std::env::var("TEST_SEED") {
        Ok(s) => {
            let seed: u64 = s.parse().expect("TEST_SEED must be a number");
            (vec![seed], seed)
        }
        Err(_) => {
            let n = match std::env::var("TEST_SCHEDULES") {
                Ok(v) => v
                    .parse()
                    .expect("TEST_SCHEDULES must be a number of schedules"),
                Err(_) => DEFAULT_SCHEDULES,
            };
            assert!(n >= 1, "TEST_SCHEDULES must be at least 1");
            let base = 0x5eed_0000u64;
            ((base..base + n).collect(), base)
        }
    };
    let mut crashes = 0;
    let mut ids = 0;
    for seed in &seeds {
        let seed = *seed;
        let (c, u) = std::panic::catch_unwind(|| run_schedule(seed)).unwrap_or_else(|_| {
            panic!("schedule with seed {seed} failed; replay with TEST_SEED={seed}")
        });
        crashes += c;
        ids += u;
    }
    println!(
        "{} schedules from seed {base:#x}: {crashes} crashes, {ids} unique IDs, 0 duplicates, 0 losses",
        seeds.len()
    );
}
