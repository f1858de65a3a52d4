//! `TestDriver`: runs a processor through the production engine against a simulated Kafka
//! cluster with Apache Kafka's rules ([`SimCluster`]), with no broker. App authors pipe input
//! records (duplicates included), read what a read_committed consumer would see, and crash the
//! instance (SIGKILL) at every crash point of the protocol, then restart it.
//!
//! The code under test is the code users run: [`exactly_core::Engine`], the same engine the
//! Kafka runtime drives with rdkafka clients.
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

mod parts;

pub use parts::{CrashPoint, DriverStats, ManualClock, StepOutcome, TestRecord};

use crate::sim::{
    lock, partition_of, DiskStore, GroupProtocol, KillPoint, SharedCluster, SimClientConfig,
    SimClients, SimCluster, SimConfig, SimDisk, SimProcess, SimRecord, SimStores, TopicConfig,
};
use exactly_core::codec::Deserializer;
use exactly_core::engine::{changelog_topic, EngineConfig, Step};
use exactly_core::state::{decode_state_value, state_changelog_topic, validate_specs};
use exactly_core::{
    Clock, Engine, EngineEnv, EngineError, Message, ProcessorFactory, TaskConfig, TaskError, Topic,
};
use parts::StatsObserver;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Turns of the engine a (re)start may take to restore every task.
const START_TURNS: usize = 1_000;

/// One running (simulated) process of the app: one stream thread.
struct Instance<F: ProcessorFactory> {
    process: Arc<SimProcess>,
    disk: SimDisk,
    clients: SimClients,
    engine: Engine<F>,
}

/// A fenced-off old instance, kept to show it can no longer write.
pub struct Zombie<F: ProcessorFactory> {
    inst: Instance<F>,
    input: String,
}

impl<F: ProcessorFactory> Zombie<F> {
    /// The zombie's own store directory of a partition's task (on its host).
    pub fn disk(&self, partition: i32) -> DiskStore {
        self.inst.disk.dedup(&self.input, partition)
    }

    /// The zombie's whole state directory (its host's); see [`TestDriver::use_state_dir`].
    pub fn state_dir(&self) -> SimDisk {
        self.inst.disk.clone()
    }
}

/// Builder for [`TestDriver`].
pub struct TestDriverBuilder<F: ProcessorFactory> {
    factory: F,
    app: String,
    /// Input topics with their partition counts; the first is the main one.
    inputs: Vec<(String, i32)>,
    /// Whether `inputs` still holds the default (`input`, 1), which the first
    /// [`input`](Self::input) call replaces.
    default_input: bool,
    config: TaskConfig,
    max_batch: usize,
    start_ms: i64,
}

impl<F: ProcessorFactory> TestDriverBuilder<F> {
    /// An input topic and its partition count (default: one topic `input` with 1
    /// partition). The first call replaces the default; later calls add more input topics (or
    /// set the partition count of one already added). The first is the main input, which the
    /// single-input methods ([`pipe`](TestDriver::pipe) without [`TestRecord::topic`],
    /// [`committed_offset`](TestDriver::committed_offset), ...) mean.
    pub fn input(mut self, topic: &str, partitions: i32) -> Self {
        if std::mem::take(&mut self.default_input) {
            self.inputs.clear();
        }
        let partitions = partitions.max(1);
        match self.inputs.iter_mut().find(|(t, _)| t == topic) {
            Some(input) => input.1 = partitions,
            None => self.inputs.push((topic.to_owned(), partitions)),
        }
        self
    }
    /// The application id (names the changelog and transactional id).
    pub fn app(mut self, app: &str) -> Self {
        self.app = app.to_owned();
        self
    }
    /// Task settings (ID policy, retries, error policy, retention, DLQ, state stores).
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
        if let Err(e) = validate_specs(&self.config.stores) {
            panic!("TestDriver: {e}");
        }
        let clock = Arc::new(ManualClock::new(self.start_ms));
        let sim = SimConfig {
            // One member, stepped by the test: it learns of everything at once.
            heartbeat_interval_ms: 0,
            ..SimConfig::default()
        };
        let (input, partitions) = self.inputs[0].clone();
        let mut cluster = SimCluster::new(clock.clone(), sim, partitions);
        let compacted = TopicConfig {
            compact: true,
            retention_ms: None,
            ..TopicConfig::default()
        };
        // The dedup changelog is `compact,delete` with `retention.ms` = the dedup retention,
        // as the runtime creates it.
        let dedup_changelog = TopicConfig {
            retention_ms: Some(self.config.dedup_retention_ms),
            ..compacted
        };
        let topics: Vec<String> = self.inputs.iter().map(|(t, _)| t.clone()).collect();
        let mut engine = EngineConfig::new(self.app.clone(), topics);
        for (topic, n) in &self.inputs {
            cluster.create_topic(topic, *n, TopicConfig::default());
            cluster.create_topic(&changelog_topic(&self.app, topic), *n, dedup_changelog);
            for s in &self.config.stores {
                let store = state_changelog_topic(&self.app, topic, &s.name);
                cluster.create_topic(&store, *n, compacted);
            }
            engine.input_partitions.insert(topic.clone(), *n);
        }
        let changelog = changelog_topic(&self.app, &input);
        // Every step commits what it handled (one step, one transaction).
        engine.commit_interval = Duration::ZERO;
        engine.max_batch_records = self.max_batch;
        engine.transaction_timeout = Duration::from_millis(sim.transaction_timeout_ms as u64);
        // The simulated member learns of a newer member with its instance id at its next poll.
        engine.fence_check = Duration::ZERO;
        // Expiry runs when the test calls `expire`.
        engine.expiry_interval = Duration::MAX;
        engine.task = Arc::new(self.config);
        TestDriver {
            cluster: Arc::new(Mutex::new(cluster)),
            clock,
            factory: Arc::new(self.factory),
            engine: Arc::new(engine),
            input,
            changelog,
            inputs: self.inputs,
            disk: SimDisk::new(),
            instance: None,
            stats: Arc::new(StatsObserver::default()),
            starts: 0,
        }
    }
}

/// Runs a processor factory through the production engine against a simulated Kafka cluster.
/// See the module docs.
pub struct TestDriver<F: ProcessorFactory> {
    cluster: SharedCluster,
    clock: Arc<ManualClock>,
    factory: Arc<F>,
    engine: Arc<EngineConfig>,
    /// The main input topic and its dedup changelog.
    input: String,
    changelog: String,
    /// Every input topic with its partition count.
    inputs: Vec<(String, i32)>,
    /// The instance's state directory: it outlives crashes.
    disk: SimDisk,
    instance: Option<Instance<F>>,
    stats: Arc<StatsObserver>,
    starts: u64,
}

impl<F: ProcessorFactory> TestDriver<F> {
    /// A builder for a driver running processors made by `factory`.
    pub fn builder(factory: F) -> TestDriverBuilder<F> {
        TestDriverBuilder {
            factory,
            app: "app".to_owned(),
            inputs: vec![("input".to_owned(), 1)],
            default_input: true,
            config: TaskConfig::default(),
            max_batch: 100,
            start_ms: 1_700_000_000_000,
        }
    }

    /// Appends a record to its input topic ([`TestRecord::topic`], else the main input) with a
    /// plain, non-transactional produce. Returns its `(partition, offset)`.
    pub fn pipe(&mut self, record: parts::TestRecord) -> (i32, i64) {
        let topic = record.topic.clone().unwrap_or_else(|| self.input.clone());
        let Some(&(_, partitions)) = self.inputs.iter().find(|(t, _)| *t == topic) else {
            panic!(
                "TestDriver::pipe: {topic:?} is not an input topic (inputs: {:?}); add it with TestDriverBuilder::input",
                self.inputs.iter().map(|(t, _)| t).collect::<Vec<_>>()
            );
        };
        let partition = record.partition.unwrap_or_else(|| {
            match record.key.as_deref().or(record.id.as_deref()) {
                Some(k) => partition_of(k, partitions),
                None => 0,
            }
        });
        let sim = SimRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp.or(Some(self.clock.now_ms())),
        };
        lock(&self.cluster).produce(&topic, Some(partition), sim)
    }

    /// The simulated cluster (to inject faults or read topics).
    pub fn cluster(&self) -> MutexGuard<'_, SimCluster> {
        lock(&self.cluster)
    }
    /// The simulated store directory of a partition's task.
    pub fn disk(&mut self, partition: i32) -> DiskStore {
        self.disk.dedup(&self.input, partition)
    }
    /// The clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }
    /// What the driver saw so far.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            starts: self.starts,
            ..self.stats.snapshot()
        }
    }
    /// The dedup changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.changelog
    }
    /// The changelog topic of the declared state store `store` (of the main input's tasks).
    pub fn state_changelog_topic(&self, store: &str) -> String {
        state_changelog_topic(&self.engine.app_id, &self.input, store)
    }
    /// Every input topic with its partition count, the main one first.
    pub fn input_topics(&self) -> &[(String, i32)] {
        &self.inputs
    }
    /// The input topic.
    pub fn input_topic(&self) -> &str {
        &self.input
    }
    /// The transactional id of the driver's instance.
    pub fn transactional_id(&self) -> &str {
        &self.engine.transactional_id
    }
    /// Whether an instance is running.
    pub fn is_running(&self) -> bool {
        self.instance.is_some()
    }

    /// The committed state of `store` in partition `partition`'s task, as a fresh restore
    /// would build it from the committed changelog: `(key, value)` in key order, expired
    /// entries left out.
    pub fn committed_state(&self, store: &str, partition: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.committed_state_of(&self.input, store, partition)
    }

    /// [`committed_state`](Self::committed_state) of the task of `input`'s partition
    /// `partition`.
    pub fn committed_state_of(
        &self,
        input: &str,
        store: &str,
        partition: i32,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let spec = self
            .engine
            .task
            .stores
            .iter()
            .find(|s| s.name == store)
            .unwrap_or_else(|| panic!("TestDriver: no state store named {store:?}"));
        let cutoff = spec.cutoff(self.clock.now_ms());
        let topic = state_changelog_topic(&self.engine.app_id, input, store);
        let mut state = BTreeMap::new();
        for (p, _, r) in self.cluster().committed_records(&topic) {
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

    /// The app's committed offset of input partition `partition` (`None`: none yet).
    pub fn committed_offset(&self, partition: i32) -> Option<i64> {
        self.committed_offset_of(&self.input, partition)
    }

    /// The app's committed offset of partition `partition` of input topic `input`.
    pub fn committed_offset_of(&self, input: &str, partition: i32) -> Option<i64> {
        self.cluster()
            .committed_offset(&self.engine.app_id, input, partition)
    }

    /// Records of `topic` a read_committed consumer sees.
    pub fn committed_outputs(&self, topic: &str) -> Vec<SimRecord> {
        self.cluster()
            .committed_records(topic)
            .into_iter()
            .map(|(_, _, r)| r)
            .collect()
    }
    /// The committed records of `topic`, decoded by its serdes (panics, naming the record, if
    /// one does not decode): what a typed read_committed consumer sees.
    pub fn read_output<V, K, VS, KS>(&self, topic: &Topic<V, K, VS, KS>) -> Vec<Message<K, V>>
    where
        VS: Deserializer<V>,
        KS: Deserializer<K>,
    {
        self.committed_outputs(topic.name())
            .iter()
            .enumerate()
            .map(|(i, r)| {
                topic
                    .decode_parts(r.key.as_deref(), r.value.as_deref())
                    .unwrap_or_else(|e| {
                        panic!(
                            "TestDriver::read_output: record {i} of {} does not decode: {e}",
                            topic.name()
                        )
                    })
            })
            .collect()
    }

    /// Committed dead letters (empty if no dead-letter topic is configured).
    pub fn dead_letters(&self) -> Vec<SimRecord> {
        match &self.engine.task.dead_letter_topic {
            Some(t) => self.committed_outputs(t),
            None => Vec::new(),
        }
    }

    /// A new process with its stream thread's clients and engine (not yet turned).
    fn spawn(&mut self) -> Instance<F> {
        self.starts += 1;
        let process = Arc::new(SimProcess::new(format!(
            "instance-0 (start {})",
            self.starts
        )));
        let clients = SimClients::start(
            self.cluster.clone(),
            process.clone(),
            SimClientConfig {
                group: self.engine.app_id.clone(),
                topics: self.engine.inputs.clone(),
                transactional_id: self.engine.transactional_id.clone(),
                transactional: self.engine.exactly_once(),
                static_membership: true,
                protocol: GroupProtocol::Cooperative,
            },
        );
        let env = EngineEnv {
            factory: self.factory.clone(),
            stores: Arc::new(SimStores::new(self.disk.clone(), process.clone())),
            observer: self.stats.clone(),
            clock: self.clock.clone(),
        };
        Instance {
            process,
            disk: self.disk.clone(),
            clients,
            engine: Engine::new(self.engine.clone(), env),
        }
    }

    /// Starts a new instance (as after a process restart; the old one, if any, is gone as
    /// after SIGKILL): its producer's `init_transactions` fences the previous epoch and aborts
    /// its open transaction, its consumer takes the old member's place (static membership),
    /// and every task restores from its store and the changelog. Returns once every task runs.
    pub fn restart(&mut self) -> Result<(), TaskError> {
        self.instance = None;
        let mut inst = self.spawn();
        for _ in 0..START_TURNS {
            let running = inst.engine.tasks();
            let tasks: i32 = self.inputs.iter().map(|(_, n)| n).sum();
            if running.len() == tasks as usize && running.iter().all(|(_, r)| *r) {
                self.instance = Some(inst);
                return Ok(());
            }
            match inst.engine.run_once(&inst.clients) {
                Ok(_) => {}
                Err(EngineError::Task(e)) => return Err(e),
                Err(e) => panic!("TestDriver: the restarted instance stopped: {e}"),
            }
        }
        panic!("TestDriver::restart: tasks not restored after {START_TURNS} turns");
    }

    /// One poll → process → commit cycle, starting an instance first if none runs.
    pub fn step(&mut self) -> Result<StepOutcome, TaskError> {
        self.cycle(None)
    }

    /// One cycle that crashes (SIGKILL) at `point`. The instance is gone afterwards; the next
    /// [`step`](Self::step) or [`restart`](Self::restart) starts a new one. A cycle with no
    /// input ends before the crash point: then the instance still runs.
    pub fn step_and_crash(&mut self, point: CrashPoint) -> Result<StepOutcome, TaskError> {
        self.cycle(Some(point))
    }

    /// Steps until a cycle finds no input and no task restores. Fails after 100_000 cycles
    /// (a livelock).
    pub fn run_until_idle(&mut self) -> Result<(), TaskError> {
        for _ in 0..100_000 {
            if self.step()? == StepOutcome::Idle {
                return Ok(());
            }
        }
        panic!("TestDriver::run_until_idle: no idle cycle after 100000 cycles (livelock)");
    }

    /// Moves the wall clock forward by `d` and steps until idle: the wall-clock timers due
    /// by then fire (see `exactly_core::timer`). Stream time moves only with records: pipe a
    /// record with a later [`TestRecord::timestamp`] to move it, as on a real cluster.
    pub fn advance_wall_clock(&mut self, d: Duration) -> Result<(), TaskError> {
        self.clock.advance(d);
        self.run_until_idle()
    }

    /// Removes IDs older than the retention from every running task's store; returns how
    /// many.
    pub fn expire(&mut self) -> Result<u64, TaskError> {
        Ok(self
            .instance
            .as_mut()
            .map_or(0, |inst| inst.engine.expire_now()))
    }

    /// Starts a replacement instance with the same instance id while the current one is
    /// still "running" (paused, as with SIGSTOP). The replacement runs on another host: an
    /// empty state directory, which [`disk`](Self::disk) shows from now on (the old process
    /// holds its own). The old one is returned as a zombie.
    pub fn start_replacement(&mut self) -> Result<Zombie<F>, TaskError> {
        let old = self
            .instance
            .take()
            .expect("start_replacement needs a running instance");
        old.process.set_paused(true);
        self.disk = SimDisk::new();
        self.restart()?;
        Ok(Zombie {
            inst: old,
            input: self.input.clone(),
        })
    }

    /// The instances started from now on run on state directory `dir`: a task moving back to
    /// a host whose directory still holds its old stores (e.g. a zombie's,
    /// [`Zombie::state_dir`], once the zombie is gone).
    pub fn use_state_dir(&mut self, dir: SimDisk) {
        self.disk = dir;
    }

    /// The zombie wakes up (SIGCONT) and goes on: it finds itself fenced and stops, writing
    /// nothing ([`StepOutcome::Fenced`]), or has nothing to do ([`StepOutcome::Idle`]).
    pub fn zombie_step(&mut self, zombie: &mut Zombie<F>) -> Result<StepOutcome, TaskError> {
        zombie.inst.process.set_paused(false);
        for _ in 0..START_TURNS {
            match zombie.inst.engine.run_once(&zombie.inst.clients) {
                Ok(p) if p.polled == 0 && p.committed.is_none() && p.aborted.is_none() => {
                    return Ok(StepOutcome::Idle)
                }
                Ok(_) => {}
                Err(EngineError::Fenced { .. }) => return Ok(StepOutcome::Fenced),
                Err(EngineError::Task(e)) => return Err(e),
                Err(e) => panic!("TestDriver: the zombie stopped with {e}"),
            }
        }
        panic!("TestDriver::zombie_step: the zombie neither stopped nor went idle");
    }

    /// Processes one batch in the current instance and leaves its transaction open (as a
    /// process that is paused right after sending). Used with
    /// [`start_replacement`](Self::start_replacement).
    pub fn process_without_commit(&mut self) -> Result<StepOutcome, TaskError> {
        if self.instance.is_none() {
            self.restart()?;
        }
        let inst = self.instance.as_mut().expect("started above");
        match inst.engine.run_once_without_commit(&inst.clients) {
            Ok(p) if p.polled == 0 => Ok(StepOutcome::Idle),
            Ok(p) => Ok(StepOutcome::Committed { records: p.polled }),
            Err(EngineError::Task(e)) => Err(e),
            Err(e) => panic!("TestDriver: the instance stopped with {e}"),
        }
    }

    fn cycle(&mut self, crash: Option<CrashPoint>) -> Result<StepOutcome, TaskError> {
        if self.instance.is_none() {
            self.restart()?;
        }
        let inst = self.instance.as_mut().expect("started above");
        if let Some(point) = crash {
            inst.process.arm(match point {
                CrashPoint::BeforeSend => KillPoint::Step(Step::BeforeSend),
                CrashPoint::AfterSendsBeforeCommit => KillPoint::Step(Step::AfterSend),
                CrashPoint::DuringCommit { committed: true } => {
                    KillPoint::AfterCall("commit_transaction")
                }
                CrashPoint::DuringCommit { committed: false } => {
                    KillPoint::Step(Step::DuringCommit)
                }
                CrashPoint::AfterCommitBeforeApply => KillPoint::Step(Step::AfterCommit),
            });
        }
        let result = inst.engine.run_once(&inst.clients);
        inst.process.disarm();
        let progress = match result {
            Ok(p) => p,
            Err(EngineError::Terminated) => {
                // SIGKILL: the process is gone, its member stays in the group until its
                // session times out or the restart takes its place.
                self.instance = None;
                return Ok(StepOutcome::Crashed(
                    crash.expect("only an armed kill kills"),
                ));
            }
            Err(EngineError::Fenced { .. }) => {
                self.instance = None;
                return Ok(StepOutcome::Fenced);
            }
            Err(EngineError::Task(e)) => {
                self.instance = None;
                return Err(e);
            }
            Err(e) => {
                self.instance = None;
                return Ok(StepOutcome::Stopped {
                    reason: e.to_string(),
                });
            }
        };
        Ok(match (progress.committed, progress.aborted) {
            (Some(records), _) => StepOutcome::Committed { records },
            (None, Some(reason)) => StepOutcome::Aborted { reason },
            (None, None) if progress.restoring > 0 || progress.restored > 0 => {
                StepOutcome::Restoring
            }
            (None, None) => StepOutcome::Idle,
        })
    }
}
