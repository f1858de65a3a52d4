//! `TestDriver`: runs a processor through the real task state machine against a simulated
//! transactional Kafka ([`SimCluster`]), with no broker. App authors pipe input records
//! (duplicates included), read what a read_committed consumer would see, and simulate a crash
//! at every crash point of the protocol followed by a restart with restore.
//!
//! ```
//! use exactly_core::{Context, Output, ProcessError, Processor, Record, TaskId};
//! use exactly_testkit::{TestDriver, TestRecord};
//!
//! struct Forward;
//! impl Processor for Forward {
//!     fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         ctx.send(Output::forward("out", r));
//!         Ok(())
//!     }
//! }
//!
//! let mut driver = TestDriver::builder(|_: &TaskId| Forward).input("in", 2).build();
//! driver.pipe(TestRecord::with_id("a").value("1"));
//! driver.pipe(TestRecord::with_id("a").value("1")); // a resend
//! driver.run_until_idle().unwrap();
//! assert_eq!(driver.committed_outputs("out").len(), 1);
//! ```

use crate::disk::DiskStore;
use crate::sim::{partition_of, SimCluster, SimError, SimRecord};
use exactly_core::state::{decode_state_value, state_changelog_topic, validate_specs};
use exactly_core::{
    Clock, HeaderRef, MemKvStore, Output, ProcessorFactory, Record, RecordKind, Task, TaskConfig,
    TaskError, TaskId, TxnWriter, WipeReason,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A clock that only moves when told to (sleeping advances it, so retry backoff is instant).
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
    fn sleep(&self, d: Duration) {
        self.advance(d);
    }
}

/// An input record to pipe into the driver.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    partition: Option<i32>,
    timestamp: Option<i64>,
    id: Option<Vec<u8>>,
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
    /// Sets the timestamp.
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
}

/// Where a simulated crash happens within one poll → process → commit cycle (the rows of the
/// crash table in docs/exactly-once.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Records were polled; nothing was sent.
    BeforeSend,
    /// Outputs and changelog records were sent in the open transaction and every processor
    /// was flushed (external sinks committed); no Kafka commit.
    AfterSendsBeforeCommit,
    /// The process died during `commit_transaction`; the coordinator completed the
    /// transaction (`committed: true`) or aborted it.
    DuringCommit {
        /// The coordinator's outcome.
        committed: bool,
    },
    /// The transaction committed; the staged IDs were not applied to the store.
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
    /// The process crashed at this point (call [`TestDriver::restart`] or run on).
    Crashed(CrashPoint),
    /// The instance found itself fenced and dropped its tasks without writing its stores.
    Fenced,
}

/// Counters of what the driver saw, for assertions.
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
    /// Changelog records applied during restores.
    pub restored_records: u64,
    /// State changelog records applied during restores.
    pub restored_state_records: u64,
    /// Records dropped as duplicates (across all instances).
    pub duplicates_dropped: u64,
    /// Task restarts after a store write failure.
    pub store_failures: u64,
}

struct Instance<P: exactly_core::Processor> {
    epoch: u32,
    tasks: BTreeMap<i32, Task<P, DiskStore>>,
    positions: BTreeMap<i32, i64>,
    /// Last changelog offset per changelog (topic, partition) written in the open
    /// transaction (what delivery reports tell the Kafka runtime).
    changelog_last: BTreeMap<(String, i32), i64>,
}

/// A fenced-off old instance, kept to show it can no longer write.
pub struct Zombie<P: exactly_core::Processor> {
    inst: Instance<P>,
}

/// Builder for [`TestDriver`].
pub struct TestDriverBuilder<F: ProcessorFactory> {
    factory: F,
    app: String,
    input: String,
    partitions: i32,
    config: TaskConfig,
    max_batch: usize,
    start_ms: i64,
}

impl<F: ProcessorFactory> TestDriverBuilder<F> {
    /// The input topic and its partition count (default `input`, 1).
    pub fn input(mut self, topic: &str, partitions: i32) -> Self {
        self.input = topic.to_owned();
        self.partitions = partitions.max(1);
        self
    }
    /// The application id (names the changelog and transactional id).
    pub fn app(mut self, app: &str) -> Self {
        self.app = app.to_owned();
        self
    }
    /// Task settings (ID policy, retries, error policy, retention, DLQ).
    pub fn config(mut self, config: TaskConfig) -> Self {
        self.config = config;
        self
    }
    /// Maximum input records per transaction (default 100).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
    /// Initial clock time in ms (default 1_700_000_000_000).
    pub fn start_ms(mut self, ms: i64) -> Self {
        self.start_ms = ms;
        self
    }
    /// Builds the driver (no instance runs until the first step).
    pub fn build(self) -> TestDriver<F> {
        let mut cluster = SimCluster::new(self.partitions);
        cluster.create_topic(&self.input, self.partitions);
        let changelog = format!("{}-{}-dedup-changelog", self.app, self.input);
        cluster.create_topic(&changelog, self.partitions);
        if let Err(e) = validate_specs(&self.config.stores) {
            panic!("TestDriver: {e}");
        }
        let state_changelogs: Vec<String> = self
            .config
            .stores
            .iter()
            .map(|s| state_changelog_topic(&self.app, &self.input, &s.name))
            .collect();
        for topic in &state_changelogs {
            cluster.create_topic(topic, self.partitions);
        }
        TestDriver {
            app: self.app.clone(),
            state_changelogs,
            txn_id: format!("{}-0-0", self.app),
            cluster,
            disks: BTreeMap::new(),
            factory: self.factory,
            config: Arc::new(self.config),
            input: self.input,
            changelog,
            partitions: self.partitions,
            clock: Arc::new(ManualClock::new(self.start_ms)),
            instance: None,
            max_batch: self.max_batch,
            stats: DriverStats::default(),
        }
    }
}

/// Runs a processor factory against a simulated transactional Kafka. See the module docs.
pub struct TestDriver<F: ProcessorFactory> {
    app: String,
    cluster: SimCluster,
    disks: BTreeMap<i32, DiskStore>,
    factory: F,
    config: Arc<TaskConfig>,
    input: String,
    changelog: String,
    /// Changelog topic of each declared state store, in declaration order.
    state_changelogs: Vec<String>,
    partitions: i32,
    clock: Arc<ManualClock>,
    instance: Option<Instance<F::Processor>>,
    max_batch: usize,
    txn_id: String,
    stats: DriverStats,
}

/// Sends the task's records into the simulated open transaction and remembers the last
/// changelog offset per partition (what delivery reports tell the Kafka runtime).
struct SimWriter<'c> {
    cluster: &'c mut SimCluster,
    txn_id: &'c str,
    epoch: u32,
    changelog_last: BTreeMap<(String, i32), i64>,
    fenced: bool,
}

impl TxnWriter for SimWriter<'_> {
    fn send(&mut self, kind: RecordKind, out: &Output) -> Result<(), String> {
        let record = SimRecord {
            key: out.key.clone(),
            value: out.value.clone(),
            headers: out.headers.clone(),
            timestamp: out.timestamp,
        };
        match self
            .cluster
            .send(self.txn_id, self.epoch, &out.topic, out.partition, record)
        {
            Ok((p, offset)) => {
                if kind == RecordKind::Changelog {
                    self.changelog_last.insert((out.topic.clone(), p), offset);
                }
                Ok(())
            }
            Err(e) => {
                self.fenced |= matches!(e, SimError::Fenced(_));
                Err(e.to_string())
            }
        }
    }
}

impl<F: ProcessorFactory> TestDriver<F> {
    /// A builder for a driver running processors made by `factory`.
    pub fn builder(factory: F) -> TestDriverBuilder<F> {
        TestDriverBuilder {
            factory,
            app: "app".to_owned(),
            input: "input".to_owned(),
            partitions: 1,
            config: TaskConfig::default(),
            max_batch: 100,
            start_ms: 1_700_000_000_000,
        }
    }

    /// Appends a record to the input topic (a plain, non-transactional produce). Returns its
    /// `(partition, offset)`.
    pub fn pipe(&mut self, record: TestRecord) -> (i32, i64) {
        let partition = record.partition.unwrap_or_else(|| {
            match record.key.as_deref().or(record.id.as_deref()) {
                Some(k) => partition_of(k, self.partitions),
                None => 0,
            }
        });
        let sim = SimRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp.or(Some(self.clock.now_ms())),
        };
        self.cluster.produce(&self.input, Some(partition), sim)
    }

    /// The simulated cluster (to inject faults or read topics).
    pub fn cluster(&mut self) -> &mut SimCluster {
        &mut self.cluster
    }
    /// The simulated store directory of a partition's task.
    pub fn disk(&mut self, partition: i32) -> DiskStore {
        self.disks.entry(partition).or_default().clone()
    }
    /// The clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }
    /// What the driver saw so far.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }
    /// The dedup changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.changelog
    }
    /// The changelog topic of the declared state store `store`.
    pub fn state_changelog_topic(&self, store: &str) -> String {
        state_changelog_topic(&self.app, &self.input, store)
    }

    /// The committed state of `store` in partition `partition`'s task, as a fresh restore
    /// would build it from the committed changelog: `(key, value)` in key order, expired
    /// entries left out.
    pub fn committed_state(&self, store: &str, partition: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let spec = self
            .config
            .stores
            .iter()
            .find(|s| s.name == store)
            .unwrap_or_else(|| panic!("TestDriver: no state store named {store:?}"));
        let cutoff = spec.cutoff(self.clock.now_ms());
        let topic = self.state_changelog_topic(store);
        let mut state = BTreeMap::new();
        for (p, _, r) in self.cluster.committed_records(&topic) {
            if p != partition {
                continue;
            }
            let key = r.key.clone().unwrap_or_default();
            match r.value.as_deref().map(decode_state_value) {
                Some(Ok((ts, v))) if ts >= cutoff => {
                    state.insert(key, v.to_vec());
                }
                Some(Err(e)) => panic!("TestDriver: bad state changelog value in {topic}: {e}"),
                _ => {
                    state.remove(&key);
                }
            }
        }
        state.into_iter().collect()
    }

    /// The input topic.
    pub fn input_topic(&self) -> &str {
        &self.input
    }
    /// Whether an instance is running.
    pub fn is_running(&self) -> bool {
        self.instance.is_some()
    }

    /// Records of `topic` a read_committed consumer sees.
    pub fn committed_outputs(&self, topic: &str) -> Vec<SimRecord> {
        self.cluster
            .committed_records(topic)
            .into_iter()
            .map(|(_, _, r)| r)
            .collect()
    }
    /// Committed dead letters (empty if no dead-letter topic is configured).
    pub fn dead_letters(&self) -> Vec<SimRecord> {
        match &self.config.dead_letter_topic {
            Some(t) => self.committed_outputs(t),
            None => Vec::new(),
        }
    }

    /// Starts a new instance (as after a process restart): fences the previous producer
    /// epoch, aborting its open transaction, and restores every task from its store
    /// checkpoint plus the changelog tail.
    pub fn restart(&mut self) -> Result<(), TaskError> {
        self.instance = None;
        let epoch = self.cluster.init_transactions(&self.txn_id);
        let mut inst = Instance {
            epoch,
            tasks: BTreeMap::new(),
            positions: BTreeMap::new(),
            changelog_last: BTreeMap::new(),
        };
        for p in 0..self.partitions {
            let task = self.start_task(p)?;
            inst.positions
                .insert(p, task.committed_offset().unwrap_or(0));
            inst.tasks.insert(p, task);
        }
        self.stats.starts += 1;
        self.instance = Some(inst);
        Ok(())
    }

    /// Starts a task, retrying (like the Kafka runtime) when its store fails during restore.
    fn start_task(&mut self, p: i32) -> Result<Task<F::Processor, DiskStore>, TaskError> {
        let mut attempt = 1;
        loop {
            match self.try_start_task(p) {
                Err(TaskError::Store { .. }) if attempt < 3 => {
                    self.stats.store_failures += 1;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn try_start_task(&mut self, p: i32) -> Result<Task<F::Processor, DiskStore>, TaskError> {
        let id = TaskId::new(self.input.as_str(), p);
        let store = self.disks.entry(p).or_default().clone();
        let processor = self.factory.create(&id);
        let mut task = Task::new(
            id,
            self.changelog.clone(),
            processor,
            store,
            self.config.clone(),
        );
        let end = self.cluster.last_stable_offset(&self.changelog, p);
        let plan = task.restore_plan(0, end)?;
        tracing::debug!(partition = p, end, ?plan, "task restore planned");
        if let Some(reason) = &plan.wiped {
            self.stats.wipes.push((p, WipeReason::label(reason)));
        }
        let mut pos = plan.from;
        while pos < end {
            let (recs, next) = self.cluster.read_committed(&self.changelog, p, pos, 1000);
            let n = task.restore_records(
                recs.iter()
                    .map(|(o, r)| (*o, r.key.as_deref().unwrap_or_default(), r.value.as_deref())),
                self.clock.as_ref(),
            )?;
            self.stats.restored_records += n as u64;
            pos = next;
        }
        // State stores: an empty store, restored from the start of its changelog (as the Kafka
        // runtime does).
        for (spec, topic) in self.config.stores.iter().zip(&self.state_changelogs) {
            task.add_store(spec.clone(), topic.clone(), Box::new(MemKvStore::new()))?;
        }
        for topic in &self.state_changelogs {
            let end = self.cluster.last_stable_offset(topic, p);
            let mut pos = 0;
            while pos < end {
                let (recs, next) = self.cluster.read_committed(topic, p, pos, 1000);
                let n = task.restore_state_records(
                    topic,
                    recs.iter().map(|(o, r)| {
                        (*o, r.key.as_deref().unwrap_or_default(), r.value.as_deref())
                    }),
                    self.clock.as_ref(),
                )?;
                self.stats.restored_state_records += n as u64;
                pos = next;
            }
        }
        task.restore_complete(self.cluster.committed_offset(&self.input, p))?;
        Ok(task)
    }

    /// One poll → process → commit cycle, starting an instance first if none runs.
    pub fn step(&mut self) -> Result<StepOutcome, TaskError> {
        self.cycle(None)
    }

    /// One cycle that crashes at `point`. The instance is gone afterwards; the next
    /// [`step`](Self::step) or [`restart`](Self::restart) starts a new one.
    pub fn step_and_crash(&mut self, point: CrashPoint) -> Result<StepOutcome, TaskError> {
        self.cycle(Some(point))
    }

    /// Steps until a cycle finds no input. Fails after 100_000 cycles (a livelock).
    pub fn run_until_idle(&mut self) -> Result<(), TaskError> {
        for _ in 0..100_000 {
            if self.step()? == StepOutcome::Idle {
                return Ok(());
            }
        }
        panic!("TestDriver::run_until_idle: no idle cycle after 100000 cycles (livelock)");
    }

    /// Removes IDs older than the retention from every running task's store.
    pub fn expire(&mut self) -> Result<u64, TaskError> {
        let mut n = 0;
        if let Some(inst) = &mut self.instance {
            for task in inst.tasks.values_mut() {
                n += task.expire(self.clock.as_ref())?;
            }
        }
        Ok(n)
    }

    /// Starts a replacement instance with the same transactional id while the current one
    /// is still "running" (paused, as with SIGSTOP). The old one is returned as a zombie.
    pub fn start_replacement(&mut self) -> Result<Zombie<F::Processor>, TaskError> {
        let old = self
            .instance
            .take()
            .expect("start_replacement needs a running instance");
        self.restart()?;
        Ok(Zombie { inst: old })
    }

    /// The zombie wakes up and tries to finish its cycle: process what it polled and commit.
    /// Returns [`StepOutcome::Fenced`] when the cluster refuses it (it then drops its tasks
    /// without writing its stores).
    pub fn zombie_step(
        &mut self,
        zombie: &mut Zombie<F::Processor>,
    ) -> Result<StepOutcome, TaskError> {
        let ctx = CycleEnv {
            input: &self.input,
            txn_id: &self.txn_id,
            clock: self.clock.as_ref(),
            max_batch: self.max_batch,
        };
        run_cycle(
            &mut self.cluster,
            &mut zombie.inst,
            &ctx,
            None,
            &mut self.stats,
        )
    }

    /// Processes one batch in the current instance and leaves its transaction open (as a
    /// process that is paused right after sending). Used with [`start_replacement`](Self::start_replacement).
    pub fn process_without_commit(&mut self) -> Result<StepOutcome, TaskError> {
        if self.instance.is_none() {
            self.restart()?;
        }
        let ctx = CycleEnv {
            input: &self.input,
            txn_id: &self.txn_id,
            clock: self.clock.as_ref(),
            max_batch: self.max_batch,
        };
        let inst = self.instance.as_mut().expect("started above");
        process_phase(&mut self.cluster, inst, &ctx, &mut self.stats).map(|r| match r {
            Ok(0) => StepOutcome::Idle,
            Ok(n) => StepOutcome::Committed { records: n },
            Err(o) => o,
        })
    }

    fn cycle(&mut self, crash: Option<CrashPoint>) -> Result<StepOutcome, TaskError> {
        if self.instance.is_none() {
            self.restart()?;
        }
        let ctx = CycleEnv {
            input: &self.input,
            txn_id: &self.txn_id,
            clock: self.clock.as_ref(),
            max_batch: self.max_batch,
        };
        let inst = self.instance.as_mut().expect("started above");
        let outcome = run_cycle(&mut self.cluster, inst, &ctx, crash, &mut self.stats);
        match &outcome {
            Ok(StepOutcome::Crashed(_)) | Ok(StepOutcome::Fenced) | Err(_) => self.instance = None,
            Ok(_) => {}
        }
        // A task whose store write failed after a commit is restarted from the changelog.
        if let Some(inst) = &self.instance {
            let broken: Vec<i32> = inst
                .positions
                .keys()
                .filter(|p| !inst.tasks.contains_key(p))
                .copied()
                .collect();
            for p in broken {
                let task = self.start_task(p)?;
                let inst = self.instance.as_mut().expect("checked above");
                inst.positions
                    .insert(p, task.committed_offset().unwrap_or(0));
                inst.tasks.insert(p, task);
            }
        }
        outcome
    }
}

struct CycleEnv<'a> {
    input: &'a str,
    txn_id: &'a str,
    clock: &'a ManualClock,
    max_batch: usize,
}

/// Polls and processes one batch into the open transaction. `Ok(n)`: n records handled;
/// `Err(outcome)`: the cycle ended early (aborted or fenced).
fn process_phase<P: exactly_core::Processor>(
    cluster: &mut SimCluster,
    inst: &mut Instance<P>,
    env: &CycleEnv<'_>,
    stats: &mut DriverStats,
) -> Result<Result<usize, StepOutcome>, TaskError> {
    let mut polled: BTreeMap<i32, (Vec<(i64, SimRecord)>, i64)> = BTreeMap::new();
    let mut budget = env.max_batch;
    for (p, pos) in &inst.positions {
        if budget == 0 {
            break;
        }
        let (recs, next) = cluster.read_committed(env.input, *p, *pos, budget);
        budget -= recs.len();
        if !recs.is_empty() {
            polled.insert(
                *p,
                (
                    recs.into_iter().map(|(o, r)| (o, r.clone())).collect(),
                    next,
                ),
            );
        }
    }
    let total: usize = polled.values().map(|(r, _)| r.len()).sum();
    let mut writer = SimWriter {
        cluster,
        txn_id: env.txn_id,
        epoch: inst.epoch,
        changelog_last: BTreeMap::new(),
        fenced: false,
    };
    for (p, (recs, next)) in &polled {
        let headers: Vec<Vec<HeaderRef<'_>>> = recs
            .iter()
            .map(|(_, r)| {
                r.headers
                    .iter()
                    .map(|(k, v)| HeaderRef {
                        key: k,
                        value: v.as_deref(),
                    })
                    .collect()
            })
            .collect();
        let records: Vec<Record<'_>> = recs
            .iter()
            .zip(&headers)
            .map(|((o, r), h)| Record {
                topic: env.input,
                partition: *p,
                offset: *o,
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: h,
            })
            .collect();
        let task = inst
            .tasks
            .get_mut(p)
            .expect("a task per assigned partition");
        let before = task.counters_mut().duplicates;
        let result = task.handle_batch(&records, env.clock, &mut writer);
        stats.duplicates_dropped += task.counters_mut().duplicates - before;
        if let Err(e) = result {
            let fenced = writer.fenced;
            let cluster = writer.cluster;
            if fenced {
                return Ok(Err(StepOutcome::Fenced));
            }
            abort_and_rewind(cluster, inst, env, stats);
            if e.is_fatal() {
                return Err(e);
            }
            return Ok(Err(StepOutcome::Aborted {
                reason: e.to_string(),
            }));
        }
        inst.positions.insert(*p, *next);
    }
    inst.changelog_last.extend(writer.changelog_last);
    Ok(Ok(total))
}

fn abort_and_rewind<P: exactly_core::Processor>(
    cluster: &mut SimCluster,
    inst: &mut Instance<P>,
    env: &CycleEnv<'_>,
    stats: &mut DriverStats,
) {
    // An abort by a fenced producer is refused; the coordinator already aborted for it.
    let _ = cluster.abort(env.txn_id, inst.epoch);
    inst.changelog_last.clear();
    for (p, task) in inst.tasks.iter_mut() {
        let rewind = task.on_aborted().unwrap_or(0);
        inst.positions.insert(*p, rewind);
    }
    stats.aborts += 1;
}

fn run_cycle<P: exactly_core::Processor>(
    cluster: &mut SimCluster,
    inst: &mut Instance<P>,
    env: &CycleEnv<'_>,
    crash: Option<CrashPoint>,
    stats: &mut DriverStats,
) -> Result<StepOutcome, TaskError> {
    if crash == Some(CrashPoint::BeforeSend) {
        // Polling has no side effect on the cluster: dying here loses only memory.
        return Ok(StepOutcome::Crashed(CrashPoint::BeforeSend));
    }
    let records = match process_phase(cluster, inst, env, stats)? {
        Ok(n) => n,
        Err(outcome) => return Ok(outcome),
    };
    let pending = inst.tasks.values().any(|t| t.offset_to_commit().is_some());
    if records == 0 && !pending {
        return Ok(StepOutcome::Idle);
    }
    // Pre-commit hook, as in the Kafka runtime: processors make buffered external effects
    // durable (sinks commit) before the transaction commits; a failure aborts and rewinds.
    for task in inst.tasks.values_mut() {
        if let Err(e) = task.flush() {
            abort_and_rewind(cluster, inst, env, stats);
            if e.is_fatal() {
                return Err(e);
            }
            return Ok(StepOutcome::Aborted {
                reason: e.to_string(),
            });
        }
    }
    if crash == Some(CrashPoint::AfterSendsBeforeCommit) {
        return Ok(StepOutcome::Crashed(CrashPoint::AfterSendsBeforeCommit));
    }
    let offsets: Vec<(String, i32, i64)> = inst
        .tasks
        .iter()
        .filter_map(|(p, t)| t.offset_to_commit().map(|o| (env.input.to_owned(), *p, o)))
        .collect();
    let changelog_last = std::mem::take(&mut inst.changelog_last);
    let mut result = cluster.send_offsets(env.txn_id, inst.epoch, &offsets);
    if let Some(CrashPoint::DuringCommit { committed }) = crash {
        if result.is_ok() {
            // The coordinator finishes the transaction on its own; the process never learns.
            let _ = if committed {
                cluster.commit(env.txn_id, inst.epoch)
            } else {
                cluster.abort(env.txn_id, inst.epoch)
            };
        }
        return Ok(StepOutcome::Crashed(CrashPoint::DuringCommit { committed }));
    }
    if result.is_ok() {
        result = cluster.commit(env.txn_id, inst.epoch);
    }
    match result {
        Ok(()) => {}
        Err(SimError::Fenced(_)) => return Ok(StepOutcome::Fenced),
        Err(e) => {
            abort_and_rewind(cluster, inst, env, stats);
            return Ok(StepOutcome::Aborted {
                reason: e.to_string(),
            });
        }
    }
    stats.commits += 1;
    if crash == Some(CrashPoint::AfterCommitBeforeApply) {
        return Ok(StepOutcome::Crashed(CrashPoint::AfterCommitBeforeApply));
    }
    let mut failed = Vec::new();
    for (p, task) in inst.tasks.iter_mut() {
        let next = |topic: &str| changelog_last.get(&(topic.to_owned(), *p)).map(|o| o + 1);
        if let Err(e) = task.on_committed(&next) {
            // The store is behind the committed changelog (allowed); restart the task so it
            // restores the tail before processing again.
            tracing::warn!(partition = p, error = %e, "store apply failed after commit; restoring the task");
            failed.push(*p);
        }
    }
    for p in failed {
        if let Some(task) = inst.tasks.remove(&p) {
            drop(task.close());
            stats.store_failures += 1;
        }
    }
    Ok(StepOutcome::Committed { records })
}
