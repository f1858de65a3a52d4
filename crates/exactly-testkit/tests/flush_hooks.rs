//! The pre-commit hooks `Processor::flush` and `Processor::abort` under the `TestDriver`: a
//! sink-style processor buffers effects in `process`, applies them to an external store in
//! `flush` (recording their IDs there, as a database sink does), and discards them in `abort`.
//! The external store here is a plain in-memory map shared with the test; the real sinks are
//! tested against PostgreSQL and Redis in `exactly-sinks`.

use exactly_core::{Context, FlushContext, ProcessError, Processor, Record, TaskError, TaskId};
use exactly_testkit::{CrashPoint, Fault, FaultKind, Request, StepOutcome, TestDriver, TestRecord};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The external system: applied amounts by message ID, and what the hooks did.
#[derive(Debug, Default)]
struct External {
    /// Times each ID's effect was applied.
    applied: BTreeMap<String, u32>,
    /// Sum of the applied amounts.
    balance: i64,
    /// IDs offered again after they were applied (skipped).
    skipped: u32,
    flushes: u32,
    aborts: u32,
    /// The next `fail_flushes` flushes fail with this error before touching anything.
    fail_flushes: u32,
    fail_with: Option<ProcessError>,
    /// What each flush was told of its transaction's time left.
    time_left: Vec<Option<std::time::Duration>>,
}

type Shared = Arc<Mutex<External>>;

struct SinkProcessor {
    external: Shared,
    buffer: Vec<(String, i64)>,
}

impl Processor for SinkProcessor {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let id = String::from_utf8_lossy(ctx.message_id().expect("records carry IDs")).into_owned();
        let amount = std::str::from_utf8(r.value.unwrap_or_default())
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ProcessError::dead_letter("not an amount"))?;
        self.buffer.push((id, amount));
        Ok(())
    }

    fn flush(&mut self, ctx: &mut FlushContext<'_>) -> Result<(), ProcessError> {
        let mut ext = self.external.lock().expect("external lock");
        ext.flushes += 1;
        ext.time_left.push(ctx.time_left());
        if ext.fail_flushes > 0 {
            ext.fail_flushes -= 1;
            return Err(ext
                .fail_with
                .clone()
                .unwrap_or_else(|| ProcessError::retry("external store unavailable")));
        }
        assert!(
            self.buffer.is_empty() || ctx.next_offset().is_some(),
            "a task with buffered effects has records in the transaction"
        );
        // One "transaction" of the external store: record the ID, apply only new ones.
        for (id, amount) in self.buffer.drain(..) {
            let n = ext.applied.entry(id).or_default();
            if *n == 0 {
                *n = 1;
                ext.balance += amount;
            } else {
                ext.skipped += 1;
            }
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.external.lock().expect("external lock").aborts += 1;
        self.buffer.clear();
    }
}

type Factory = Box<dyn Fn(&TaskId) -> SinkProcessor + Send + Sync>;

fn driver(partitions: i32, max_batch: usize) -> (TestDriver<Factory>, Shared) {
    let external: Shared = Arc::default();
    let ext = external.clone();
    let factory: Factory = Box::new(move |_: &TaskId| SinkProcessor {
        external: ext.clone(),
        buffer: Vec::new(),
    });
    let d = TestDriver::builder(factory)
        .input("payments", partitions)
        .max_batch(max_batch)
        .build();
    (d, external)
}

/// Pipes IDs p0..p{n-1} with amount i+1, and resends of every third ID. Returns the expected
/// balance.
fn pipe_payments(d: &mut TestDriver<Factory>, n: i64) -> i64 {
    for i in 0..n {
        d.pipe(TestRecord::with_id(format!("p{i}")).value((i + 1).to_string()));
        if i % 3 == 0 {
            d.pipe(TestRecord::with_id(format!("p{i}")).value((i + 1).to_string()));
        }
    }
    (1..=n).sum()
}

fn assert_applied_once(external: &Shared, n: i64, balance: i64) {
    let ext = external.lock().expect("external lock");
    assert_eq!(ext.applied.len(), n as usize, "IDs applied");
    assert!(
        ext.applied.values().all(|c| *c == 1),
        "an ID applied twice: {:?}",
        ext.applied
            .iter()
            .filter(|(_, c)| **c != 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(ext.balance, balance, "balance");
}

#[test]
fn flush_runs_before_every_commit_and_each_effect_applies_once() {
    let (mut d, external) = driver(2, 5);
    let balance = pipe_payments(&mut d, 20);
    d.run_until_idle().unwrap();
    assert_applied_once(&external, 20, balance);
    let ext = external.lock().unwrap();
    assert_eq!(ext.skipped, 0, "the Kafka-side dedup dropped every resend");
    assert_eq!(ext.aborts, 0);
    // Every commit flushed both tasks first.
    assert_eq!(u64::from(ext.flushes), 2 * d.stats().commits);
    assert_eq!(d.stats().duplicates_dropped, 7);
}

/// A flush is told how long its transaction has left: until four fifths of the driver's 60 s
/// `transaction.timeout.ms` after it began (the driver's clock does not move within a step).
#[test]
fn each_flush_is_told_the_time_its_transaction_has_left() {
    let (mut d, external) = driver(2, 5);
    pipe_payments(&mut d, 20);
    d.run_until_idle().unwrap();
    let ext = external.lock().unwrap();
    assert_eq!(ext.time_left.len(), ext.flushes as usize);
    assert!(ext.flushes > 0);
    assert!(
        ext.time_left
            .iter()
            .all(|t| *t == Some(std::time::Duration::from_secs(48))),
        "{:?}",
        ext.time_left
    );
}

#[test]
fn failed_flush_aborts_the_transaction_and_discards_buffered_effects() {
    let (mut d, external) = driver(1, 100);
    let balance = pipe_payments(&mut d, 10);
    external.lock().unwrap().fail_flushes = 1;
    match d.step().unwrap() {
        StepOutcome::Aborted { reason } => assert!(reason.contains("flush"), "{reason}"),
        other => panic!("expected an abort, got {other:?}"),
    }
    {
        let ext = external.lock().unwrap();
        assert_eq!(ext.aborts, 1, "abort called once");
        assert!(ext.applied.is_empty(), "nothing applied");
    }
    assert_eq!(d.stats().commits, 0);
    assert_eq!(d.committed_offset(0), None);
    d.run_until_idle().unwrap();
    assert_applied_once(&external, 10, balance);
    // The redelivered batch was buffered afresh, not on top of the discarded one.
    assert_eq!(external.lock().unwrap().skipped, 0);
}

#[test]
fn crash_after_flush_before_commit_redelivers_and_the_sink_skips_applied_ids() {
    let (mut d, external) = driver(1, 6);
    let balance = pipe_payments(&mut d, 10);
    assert_eq!(
        d.step_and_crash(CrashPoint::AfterSendsBeforeCommit)
            .unwrap(),
        StepOutcome::Crashed(CrashPoint::AfterSendsBeforeCommit)
    );
    // The first 6 records (p0 p0 p1 p2 p3 p3) hold 4 IDs: applied externally, not in Kafka.
    assert_eq!(external.lock().unwrap().applied.len(), 4);
    assert_eq!(d.committed_outputs("payments").len(), 14, "input untouched");
    d.run_until_idle().unwrap();
    assert_applied_once(&external, 10, balance);
    assert_eq!(
        external.lock().unwrap().skipped,
        4,
        "the redelivered, already applied IDs"
    );
}

#[test]
fn fatal_flush_error_stops_with_nothing_committed() {
    let (mut d, external) = driver(1, 100);
    pipe_payments(&mut d, 5);
    {
        let mut ext = external.lock().unwrap();
        ext.fail_flushes = 1;
        ext.fail_with = Some(ProcessError::fatal("ledger schema is missing"));
    }
    match d.step() {
        Err(e @ TaskError::Processor { .. }) => {
            assert!(e.is_fatal());
            assert!(e.to_string().contains("ledger schema is missing"), "{e}");
        }
        other => panic!("expected a fatal task error, got {other:?}"),
    }
    assert_eq!(d.stats().commits, 0);
    assert_eq!(external.lock().unwrap().aborts, 1);
}

#[test]
fn abort_after_a_failed_send_discards_buffered_effects() {
    let (mut d, external) = driver(1, 100);
    let balance = pipe_payments(&mut d, 8);
    // The client refuses the first send (e.g. a record over `message.max.bytes`): the batch
    // aborts after process buffered the first effect, before any flush.
    d.cluster()
        .inject(Fault::new(Request::Send, FaultKind::Abortable));
    assert!(matches!(d.step().unwrap(), StepOutcome::Aborted { .. }));
    {
        let ext = external.lock().unwrap();
        assert_eq!(ext.aborts, 1);
        assert_eq!(ext.flushes, 0, "no flush for an aborted transaction");
    }
    d.run_until_idle().unwrap();
    assert_applied_once(&external, 8, balance);
    assert_eq!(external.lock().unwrap().skipped, 0);
}
