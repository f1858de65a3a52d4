//! The pieces of the `TestDriver`'s API: its clock, input records, crash points, outcomes and
//! statistics (gathered by observing the engine, as the metrics are).

use exactly_core::codec::Serializer;
use exactly_core::{Clock, RuntimeObserver, TaskCounters, Topic};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A clock that only moves when told to (sleeping advances it, so backoff is instant).
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        Self {
            now: AtomicI64::new(start_ms),
        }
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.now_ms().max(0) as u64)
    }
    fn sleep(&self, d: Duration) {
        self.advance(d);
    }
}

/// An input record to pipe into the driver.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) partition: Option<i32>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) id: Option<Vec<u8>>,
    pub(crate) topic: Option<String>,
}

impl TestRecord {
    /// A record with message ID `id` in the default `message-id` header.
    pub fn with_id(id: impl Into<Vec<u8>>) -> Self {
        let id = id.into();
        Self {
            headers: vec![(
                exactly_core::id::DEFAULT_ID_HEADER.to_owned(),
                Some(id.clone()),
            )],
            id: Some(id),
            ..Self::default()
        }
    }
    /// A record with no message ID.
    pub fn without_id() -> Self {
        Self::default()
    }
    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the value.
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }
    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }
    /// Sets the partition (default: by key, else by ID, else 0).
    pub fn partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }
    /// Sets the timestamp (ms since the Unix epoch; default: the driver's clock). It moves
    /// the task's stream time.
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
    /// The input topic to pipe it to (default: the driver's main input).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
    /// Sets the key, encoded by `topic`'s key serde, and pipes it to `topic`.
    pub fn typed_key<V, K, VS, KS: Serializer<K>>(
        mut self,
        topic: &Topic<V, K, VS, KS>,
        key: &K,
    ) -> Self {
        let bytes = topic.encode_key(key).unwrap_or_else(|e| {
            panic!(
                "TestRecord: the key does not encode for topic {}: {e}",
                topic.name()
            )
        });
        self.key = Some(bytes);
        self.topic(topic.name())
    }
    /// Sets the value, encoded by `topic`'s value serde, and pipes it to `topic`.
    pub fn typed_value<V, K, VS: Serializer<V>, KS>(
        mut self,
        topic: &Topic<V, K, VS, KS>,
        value: &V,
    ) -> Self {
        let bytes = topic.encode_value(value).unwrap_or_else(|e| {
            panic!(
                "TestRecord: the value does not encode for topic {}: {e}",
                topic.name()
            )
        });
        self.value = Some(bytes);
        self.topic(topic.name())
    }
}

/// Where a simulated crash (SIGKILL) happens within one poll → process → commit cycle (the
/// rows of the crash table in docs/exactly-once.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Records were polled; nothing was sent.
    BeforeSend,
    /// Outputs and changelog records were sent in the open transaction and every processor
    /// was flushed (external sinks committed); no offsets, no commit.
    AfterSendsBeforeCommit,
    /// The process died during `commit_transaction`: the coordinator completed the
    /// transaction (`committed: true`, the response was lost) or never got the request
    /// (`false`: the transaction, offsets included, stays open until the restart's
    /// `init_transactions` aborts it).
    DuringCommit {
        /// The coordinator's outcome.
        committed: bool,
    },
    /// The transaction committed; the stores did not apply it.
    AfterCommitBeforeApply,
}

/// What one cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// No input was available.
    Idle,
    /// A transaction committed with this many input records.
    Committed {
        /// Input records in the transaction.
        records: usize,
    },
    /// The transaction was aborted and the tasks rewound.
    Aborted {
        /// Why.
        reason: String,
    },
    /// The process crashed at this point (call [`TestDriver::restart`](super::TestDriver::restart)
    /// or run on).
    Crashed(CrashPoint),
    /// The instance found itself fenced and dropped its tasks without writing its stores.
    Fenced,
    /// Tasks restored (or still restore): their records wait until the restore completes.
    Restoring,
    /// The instance stopped on an error that no retry fixes (a fatal broker error, a commit
    /// whose outcome stayed unknown); it committed nothing more. Restart it to go on.
    Stopped {
        /// The error.
        reason: String,
    },
}

/// Counters of what the driver saw, for assertions. They come from the engine's observer
/// calls, like the runtime's metrics: counters of aborted transactions are not included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Committed transactions.
    pub commits: u64,
    /// Aborted transactions.
    pub aborts: u64,
    /// Instance (re)starts.
    pub starts: u64,
    /// Store wipes before restore, with reason labels.
    pub wipes: Vec<(i32, &'static str)>,
    /// Dedup changelog records applied during restores.
    pub restored_records: u64,
    /// State changelog records applied during restores.
    pub restored_state_records: u64,
    /// Records dropped as duplicates in committed transactions.
    pub duplicates_dropped: u64,
    /// Records dropped as stale (before their task's position) in committed transactions.
    pub stale_dropped: u64,
    /// Task restores after a store failure.
    pub store_failures: u64,
    /// Times the producer was fenced.
    pub fenced: u64,
    /// Timers whose callback succeeded, in committed transactions.
    pub timers_fired: u64,
}

/// Gathers [`DriverStats`] from the engine's reports.
#[derive(Debug, Default)]
pub(crate) struct StatsObserver {
    pub(crate) stats: Mutex<DriverStats>,
}

impl StatsObserver {
    fn with(&self, f: impl FnOnce(&mut DriverStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }
    pub(crate) fn snapshot(&self) -> DriverStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl RuntimeObserver for StatsObserver {
    fn task_counters(&self, _topic: &str, c: &TaskCounters) {
        self.with(|s| {
            s.duplicates_dropped += c.duplicates;
            s.stale_dropped += c.stale;
            s.timers_fired += c.timers_fired;
        });
    }
    fn committed(&self, _: f64, _: usize, _: &HashMap<String, u64>) {
        self.with(|s| s.commits += 1);
    }
    fn aborted(&self, _reason: &'static str) {
        self.with(|s| s.aborts += 1);
    }
    fn fenced(&self) {
        self.with(|s| s.fenced += 1);
    }
    fn store_wiped(&self, _topic: &str, partition: i32, reason: &'static str) {
        self.with(|s| s.wipes.push((partition, reason)));
    }
    fn restored(&self, _topic: &str, _partition: i32, _read: u64, applied: u64) {
        self.with(|s| s.restored_records += applied);
    }
    fn restored_state(&self, _topic: &str, _partition: i32, applied: u64) {
        self.with(|s| s.restored_state_records += applied);
    }
    fn store_failed(&self, _topic: &str, _partition: i32) {
        self.with(|s| s.store_failures += 1);
    }
}
