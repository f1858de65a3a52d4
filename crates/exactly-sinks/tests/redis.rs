//! The Redis guard against a real Redis (no mocks). Each test has its own key prefix.

use exactly_sinks::redis_guard::{GuardState, Guarded, RedisGuard, RedisGuardConfig};
use exactly_sinks::{SinkError, SinkMetrics};
use exactly_testkit::services::{require_redis, require_redis_at, unique_name, Probe};
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

fn guard(url: &str, prefix: &str, metrics: &SinkMetrics) -> RedisGuard {
    RedisGuard::new(
        RedisGuardConfig::new(url, "app")
            .key_prefix(prefix)
            .ttl(Duration::from_secs(600)),
        metrics.clone(),
    )
    .expect("guard")
}

fn count(m: &SinkMetrics, c: &prometheus::IntCounterVec) -> u64 {
    let _ = m;
    c.with_label_values(&["redis"]).get()
}

#[test]
fn each_id_runs_once_and_a_resend_is_skipped() {
    let Some(url) = require_redis("redis_once") else {
        return;
    };
    let prefix = format!("{}:", unique_name("redis_once"));
    let m = SinkMetrics::unregistered();
    let mut g = guard(&url, &prefix, &m);
    let mut runs = 0;
    for id in ["a", "b", "a", "c", "b", "a"] {
        g.run_once(id.as_bytes(), || {
            runs += 1;
            Ok::<_, String>(())
        })
        .expect("guarded");
    }
    assert_eq!(runs, 3);
    assert_eq!(count(&m, &m.effects_applied_total), 3);
    assert_eq!(count(&m, &m.duplicates_skipped_total), 3);
    assert_eq!(g.state(b"a").unwrap(), GuardState::Done);
    assert_eq!(g.state(b"zzz").unwrap(), GuardState::Free);
    // The key carries the TTL.
    let client = exactly_sinks::redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let key = g.key(b"a");
    let pttl: i64 = exactly_sinks::redis::cmd("PTTL")
        .arg(&key)
        .query(&mut c)
        .unwrap();
    assert!(pttl > 0 && pttl <= 600_000, "pttl {pttl}");
    assert!(key.starts_with(prefix.as_bytes()) && key.ends_with(b"app:a"));
}

#[test]
fn a_crash_between_guard_and_effect_skips_the_effect_as_uncertain() {
    let Some(url) = require_redis("redis_crash") else {
        return;
    };
    let prefix = format!("{}:", unique_name("redis_crash"));
    let m = SinkMetrics::unregistered();
    // The first process claims the ID and dies before the effect is confirmed.
    let mut first = guard(&url, &prefix, &m);
    assert!(first.claim(b"pay-1").unwrap().is_some());
    drop(first);
    // The redelivery cannot know whether the effect happened: it skips it (at most once).
    let mut second = guard(&url, &prefix, &m);
    let mut runs = 0;
    let outcome = second
        .run_once(b"pay-1", || {
            runs += 1;
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(outcome, Guarded::Uncertain);
    assert_eq!(runs, 0);
    assert_eq!(second.state(b"pay-1").unwrap(), GuardState::Pending);
    assert_eq!(count(&m, &m.uncertain_total), 1);
    assert_eq!(count(&m, &m.effects_applied_total), 0);
}

#[test]
fn a_failed_effect_releases_its_guard_so_the_redelivery_applies_it() {
    let Some(url) = require_redis("redis_fail") else {
        return;
    };
    let prefix = format!("{}:", unique_name("redis_fail"));
    let m = SinkMetrics::unregistered();
    let mut g = guard(&url, &prefix, &m);
    let err = g
        .run_once(b"pay-2", || Err::<(), _>("mail server said 451"))
        .expect_err("the effect failed");
    assert!(
        matches!(err, SinkError::Effect(ref r) if r.contains("451")),
        "{err}"
    );
    assert_eq!(g.state(b"pay-2").unwrap(), GuardState::Free);
    assert_eq!(
        g.run_once(b"pay-2", || Ok::<_, String>(7)).unwrap(),
        Guarded::Applied(7)
    );
    assert_eq!(g.state(b"pay-2").unwrap(), GuardState::Done);
}

#[test]
fn concurrent_guards_over_overlapping_ids_run_each_effect_once() {
    let Some(url) = require_redis("redis_race") else {
        return;
    };
    let prefix = format!("{}:", unique_name("redis_race"));
    let runs: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (url, prefix, runs, barrier) =
                (url.clone(), prefix.clone(), runs.clone(), barrier.clone());
            std::thread::spawn(move || {
                let m = SinkMetrics::unregistered();
                let mut g = guard(&url, &prefix, &m);
                // Thread t offers IDs t*100 .. t*100+300: every ID in 100..400 by 2-3 threads.
                let batch: Vec<(Vec<u8>, String)> = (t * 100..t * 100 + 300)
                    .map(|i| (format!("id-{i}").into_bytes(), format!("id-{i}")))
                    .collect();
                barrier.wait();
                g.run_batch(&batch, |id: &String| {
                    *runs.lock().unwrap().entry(id.clone()).or_default() += 1;
                    Ok::<_, String>(())
                })
                .expect("batch")
            })
        })
        .collect();
    let applied: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 600, "IDs 0..600");
    assert!(runs.values().all(|n| *n == 1), "an effect ran twice");
    assert_eq!(applied, 600);
}

#[test]
fn a_missing_redis_fails_the_test_under_ci_with_a_clear_message() {
    let nowhere = "redis://127.0.0.1:1/";
    let dir = tempfile::tempdir().unwrap();
    let skip_log = dir.path().join("skipped.txt");
    let ci = Probe {
        ci: true,
        skip_log: Some(skip_log.clone()),
    };
    let panic = std::panic::catch_unwind(|| require_redis_at("probe", nowhere, &ci))
        .expect_err("must panic");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("no Redis at redis://127.0.0.1:1/"), "{msg}");
    assert!(msg.contains("CI=true"), "{msg}");
    assert!(!skip_log.exists(), "a failure under CI is not a skip");
    let local = Probe { ci: false, ..ci };
    assert_eq!(require_redis_at("probe", nowhere, &local), None);
    assert_eq!(
        std::fs::read_to_string(&skip_log).unwrap(),
        "probe: no Redis\n",
        "the skip is counted once"
    );
}

/// A processor that "sends a receipt" per record through the guard at flush time.
struct Receipts {
    guard: RedisGuard,
    staged: Vec<(Vec<u8>, String)>,
    sent: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl exactly_core::Processor for Receipts {
    fn process(
        &mut self,
        r: &exactly_core::Record<'_>,
        ctx: &mut exactly_core::Context<'_>,
    ) -> Result<(), exactly_core::ProcessError> {
        let id = ctx.message_id().unwrap_or_default().to_vec();
        let to = String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned();
        self.staged.push((id, to));
        Ok(())
    }

    fn flush(
        &mut self,
        _: &mut exactly_core::FlushContext<'_>,
    ) -> Result<(), exactly_core::ProcessError> {
        let sent = self.sent.clone();
        self.guard
            .run_batch(&self.staged, |to: &String| {
                *sent.lock().unwrap().entry(to.clone()).or_default() += 1;
                Ok::<_, String>(())
            })
            .map_err(|e| e.into_process_error())?;
        self.staged.clear();
        Ok(())
    }

    fn abort(&mut self) {
        self.staged.clear();
    }
}

#[test]
fn guard_in_flush_skips_the_redelivery_after_a_crash_between_the_guard_and_the_kafka_commit() {
    use exactly_testkit::{CrashPoint, StepOutcome, TestDriver, TestRecord};
    let Some(url) = require_redis("redis_driver") else {
        return;
    };
    let prefix = format!("{}:", unique_name("redis_driver"));
    let sent: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let m = SinkMetrics::unregistered();
    let (u, p, s, mm) = (url.clone(), prefix.clone(), sent.clone(), m.clone());
    let factory = move |_: &exactly_core::TaskId| Receipts {
        guard: guard(&u, &p, &mm),
        staged: Vec::new(),
        sent: s.clone(),
    };
    let mut d = TestDriver::builder(factory)
        .input("orders", 2)
        .max_batch(10)
        .build();
    for i in 0..30 {
        d.pipe(TestRecord::with_id(format!("o{i}")).value(format!("customer-{i}")));
    }
    assert_eq!(
        d.step_and_crash(CrashPoint::AfterSendsBeforeCommit)
            .unwrap(),
        StepOutcome::Crashed(CrashPoint::AfterSendsBeforeCommit)
    );
    let sent_before_restart = sent.lock().unwrap().len();
    assert_eq!(
        sent_before_restart, 10,
        "the first batch was sent, Kafka did not commit"
    );
    d.run_until_idle().unwrap();
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 30);
    assert!(sent.values().all(|n| *n == 1), "a receipt sent twice");
    assert_eq!(
        count(&m, &m.duplicates_skipped_total),
        10,
        "the redelivered batch"
    );
    assert_eq!(count(&m, &m.effects_applied_total), 30);
}
