//! A simulated deployment: app instances (processes with 1-2 stream threads each, their own
//! state directories) running the production engine on one simulated cluster, and the chaos
//! that happens to them.

use crate::apps::{self, AppKind, Factory, Input};
use exactly_core::engine::{
    changelog_topic, repartition_topic, subscribed_topics, DedupScope, EngineConfig, FenceCause,
    RestoreFrom, Step,
};
use exactly_core::state::state_changelog_topic;
use exactly_core::Clock;
use exactly_core::{Engine, EngineEnv, EngineError, RuntimeObserver, TaskConfig};
use exactly_testkit::sim::{
    lock, partition_of, GroupProtocol, KillPoint, SharedCluster, SimClientConfig, SimClients,
    SimCluster, SimConfig, SimDisk, SimProcess, SimStores, TopicConfig,
};
use exactly_testkit::{Fault, FaultKind, ManualClock, Request, SimRecord};
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub const APP: &str = "sim";
pub const INPUT: &str = "in";
const HEARTBEAT_MS: i64 = 300;
const SESSION_MS: i64 = 3_000;
const TXN_TIMEOUT_MS: i64 = 5_000;
/// Records a producer queues while no broker answers (a send beyond waits for room).
pub const PRODUCER_QUEUE: usize = 64;

/// The topic whose tasks dedup and run the app: the input, or its repartition topic.
fn task_topic(global: bool) -> String {
    if global {
        repartition_topic(APP, INPUT)
    } else {
        INPUT.to_owned()
    }
}

struct Thread {
    clients: SimClients,
    engine: Engine<Factory>,
    /// The readiness its engine last reported.
    ready: Arc<std::sync::atomic::AtomicBool>,
}

/// What the engines of a schedule reported, as the metrics would count it.
#[derive(Debug, Default)]
pub struct Tally {
    pub commits: AtomicU64,
    pub aborts: AtomicU64,
    pub fences: AtomicU64,
    pub rebalances: AtomicU64,
    pub restores: AtomicU64,
    pub wipes: AtomicU64,
    /// Running tasks whose stalled fetch the engine resumed and sought again.
    pub fetch_restarts: AtomicU64,
    /// Turns that ended with the thread reporting itself ready, and not ready.
    pub ready_turns: AtomicU64,
    pub unready_turns: AtomicU64,
    /// Refused transactions by what followed (`retried`, `dead_lettered`, `stopped`).
    pub production_errors: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// One thread's observer: counts into the world's [`Tally`] and keeps the thread's readiness
/// (what `/ready` answers from).
struct ThreadObserver {
    tally: Arc<Tally>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl RuntimeObserver for ThreadObserver {
    fn committed(&self, s: f64, n: usize, d: &std::collections::HashMap<String, u64>) {
        self.tally.committed(s, n, d);
    }
    fn aborted(&self, reason: &'static str) {
        self.tally.aborted(reason);
    }
    fn fenced(&self) {
        self.tally.fenced();
    }
    fn rebalance(&self) {
        self.tally.rebalance();
    }
    fn restore_done(&self, topic: &str, partition: i32, seconds: f64) {
        self.tally.restore_done(topic, partition, seconds);
    }
    fn store_wiped(&self, topic: &str, partition: i32, reason: &'static str) {
        self.tally.store_wiped(topic, partition, reason);
    }
    fn fetch_restarted(&self, topic: &str, partition: i32) {
        self.tally.fetch_restarted(topic, partition);
    }
    fn ready(&self, _: usize, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    fn production_error(&self, topic: &str, action: &'static str) {
        self.tally.production_error(topic, action);
    }
}

impl RuntimeObserver for Tally {
    fn committed(&self, _: f64, _: usize, _: &std::collections::HashMap<String, u64>) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
    fn aborted(&self, _: &'static str) {
        self.aborts.fetch_add(1, Ordering::Relaxed);
    }
    fn fenced(&self) {
        self.fences.fetch_add(1, Ordering::Relaxed);
    }
    fn rebalance(&self) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
    }
    fn restore_done(&self, _: &str, _: i32, _: f64) {
        self.restores.fetch_add(1, Ordering::Relaxed);
    }
    fn store_wiped(&self, _: &str, _: i32, _: &'static str) {
        self.wipes.fetch_add(1, Ordering::Relaxed);
    }
    fn fetch_restarted(&self, _: &str, _: i32) {
        self.fetch_restarts.fetch_add(1, Ordering::Relaxed);
    }
    fn production_error(&self, _: &str, action: &'static str) {
        *self
            .production_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(action)
            .or_default() += 1;
    }
}

/// One process of an instance.
struct Run {
    /// Index of its instance.
    instance: usize,
    /// Which start of its instance it is (1-based).
    start: u32,
    process: Arc<SimProcess>,
    /// Its state directory.
    disk: SimDisk,
    /// `None`: stopped, or taken out while it runs.
    threads: Vec<Option<Thread>>,
    /// A newer process with this instance id started: this one is a zombie and must stop
    /// without effect.
    zombie: bool,
}

struct Instance {
    id: String,
    disk: SimDisk,
    run: Option<Run>,
    starts: u32,
}

/// Settings of one schedule.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kind: AppKind,
    pub partitions: i32,
    pub instances: usize,
    pub threads: usize,
    pub protocol: GroupProtocol,
    pub static_membership: bool,
    pub max_batch: usize,
    pub restore_from: RestoreFrom,
    pub commit_interval_ms: u64,
    /// Share of new inputs that are poison ([`Input::poison`]).
    pub poison_rate: f64,
    /// `dedup.scope = "global"`: stage 1 repartitions by message ID, stage 2 dedups and runs
    /// the app (Fanout only: per-key totals need a key's records in one task).
    pub global: bool,
    /// Stores write to disk every this many writes; a killed process loses the writes since
    /// (its stores restore the tail from an older checkpoint).
    pub persist_every: u32,
    /// The largest dedup changelog value (small ones split a transaction's IDs into several
    /// records).
    pub changelog_record_bytes: usize,
}

/// The world of one schedule.
pub struct World {
    pub rng: StdRng,
    pub setup: Setup,
    clock: Arc<ManualClock>,
    cluster: SharedCluster,
    engine: Arc<EngineConfig>,
    factory: Arc<Factory>,
    /// The processor's retries per message ID (see [`apps::Flaky`]).
    pub flaky: Arc<apps::Flaky>,
    instances: Vec<Instance>,
    /// Processes that lived on when their instance started a newer one (`None` once
    /// promoted back or gone).
    zombies: Vec<Option<Run>>,
    pub inputs: Vec<Input>,
    pub trace: Vec<String>,
    /// Engine errors that must not happen.
    pub failures: Vec<String>,
    pub kills: u64,
    pub freezes: u64,
    /// Threads that stopped because a newer member took their instance id.
    pub zombie_stops: u64,
    pub tally: Arc<Tally>,
    /// How deep freezes are nested right now (a freeze does not freeze again).
    depth: u32,
    /// The committed outputs of earlier creations of the output topic, read before each
    /// deletion: with the current topic's, every committed output.
    deleted_outputs: Vec<(i32, i64, SimRecord)>,
}

pub type Shared = Arc<Mutex<World>>;

pub fn lock_world(w: &Shared) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which thread of which process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Instance(usize, usize),
    Zombie(usize, usize),
}

impl World {
    pub fn new(rng: StdRng, setup: Setup) -> Self {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let sim = SimConfig {
            heartbeat_interval_ms: HEARTBEAT_MS,
            session_timeout_ms: SESSION_MS,
            transaction_timeout_ms: TXN_TIMEOUT_MS,
            delete_retention_ms: 86_400_000,
            // Small, so that outages fill it.
            producer_queue_records: PRODUCER_QUEUE,
            // As the runtime's producers (`allow.auto.create.topics=false`).
            auto_create_topics: false,
        };
        let mut cluster = SimCluster::new(clock.clone(), sim, setup.partitions);
        let compacted = TopicConfig {
            compact: true,
            retention_ms: None,
            ..TopicConfig::default()
        };
        cluster.create_topic(INPUT, setup.partitions, TopicConfig::default());
        cluster.create_topic(apps::OUTPUT, setup.partitions, output_topic_config());
        cluster.create_topic(apps::DEAD_LETTERS, setup.partitions, TopicConfig::default());
        let task_topic = task_topic(setup.global);
        if setup.global {
            // Kept until read: stage 2 purges what it committed past.
            let kept = TopicConfig {
                retention_ms: None,
                ..TopicConfig::default()
            };
            cluster.create_topic(&task_topic, setup.partitions, kept);
        }
        cluster.create_topic(
            &changelog_topic(APP, &task_topic),
            setup.partitions,
            compacted,
        );
        for s in apps::stores(setup.kind) {
            cluster.create_topic(
                &state_changelog_topic(APP, &task_topic, &s.name),
                setup.partitions,
                compacted,
            );
        }
        let mut engine = EngineConfig::new(APP, vec![INPUT.to_owned()]);
        engine
            .input_partitions
            .insert(INPUT.to_owned(), setup.partitions);
        engine.max_batch_records = setup.max_batch;
        engine.commit_interval = Duration::from_millis(setup.commit_interval_ms);
        engine.transaction_timeout = Duration::from_millis(TXN_TIMEOUT_MS as u64);
        engine.fence_check = Duration::from_millis(2 * HEARTBEAT_MS as u64 + 200);
        engine.restore_from = setup.restore_from;
        if setup.global {
            engine.dedup_scope = DedupScope::Global;
        }
        engine.purge_interval = Duration::from_secs(1);
        engine.task = Arc::new(TaskConfig {
            stores: apps::stores(setup.kind),
            dead_letter_topic: Some(apps::DEAD_LETTERS.to_owned()),
            changelog_record_bytes: setup.changelog_record_bytes,
            ..TaskConfig::default()
        });
        let instances = (0..setup.instances)
            .map(|i| Instance {
                id: i.to_string(),
                disk: SimDisk::persisting_every(setup.persist_every),
                run: None,
                starts: 0,
            })
            .collect();
        let flaky = Arc::new(apps::Flaky::default());
        Self {
            rng,
            factory: Arc::new(apps::factory(setup.kind, flaky.clone())),
            flaky,
            setup,
            clock,
            cluster: Arc::new(Mutex::new(cluster)),
            engine: Arc::new(engine),
            instances,
            zombies: Vec::new(),
            inputs: Vec::new(),
            trace: Vec::new(),
            failures: Vec::new(),
            kills: 0,
            freezes: 0,
            zombie_stops: 0,
            tally: Arc::default(),
            depth: 0,
            deleted_outputs: Vec::new(),
        }
    }

    /// After a turn: a thread that reports itself ready (what `/ready` answers from) runs a
    /// restored task for every partition it holds, and it reports what its engine's state says.
    fn check_readiness(&mut self, who: Who, thread: &Thread) {
        let reported = thread.ready.load(Ordering::Relaxed);
        let restoring = thread.engine.restoring();
        let tasks = thread.engine.tasks();
        let not_running = tasks.iter().filter(|(_, running)| !running).count();
        if reported != thread.engine.is_ready() || (reported && (restoring > 0 || not_running > 0))
        {
            self.failures.push(format!(
                "{who:?} reported ready={reported} with {restoring} assigned partitions not running, {not_running} of {} tasks restoring",
                tasks.len()
            ));
        }
        let turns = if reported {
            &self.tally.ready_turns
        } else {
            &self.tally.unready_turns
        };
        turns.fetch_add(1, Ordering::Relaxed);
    }

    fn note(&mut self, what: String) {
        self.trace
            .push(format!("{:>6} ms {what}", self.clock.now_ms() % 10_000_000));
    }

    pub fn cluster(&self) -> MutexGuard<'_, SimCluster> {
        lock(&self.cluster)
    }

    /// The simulated wall clock, in ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn advance(&mut self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
        self.cluster().tick();
    }

    /// Produces `n` inputs, some of them resends of earlier ones, a few of them poison (see
    /// [`Input::poison`]).
    pub fn produce(&mut self, n: usize) {
        for _ in 0..n {
            if self.setup.poison_rate > 0.0 && self.rng.gen_bool(self.setup.poison_rate) {
                self.produce_poison(1);
                continue;
            }
            let input = if !self.inputs.is_empty() && self.rng.gen_bool(0.25) {
                self.inputs[self.rng.gen_range(0..self.inputs.len())].clone()
            } else {
                let value = match self.setup.kind {
                    AppKind::Fanout => self.rng.gen_range(0..=3),
                    AppKind::Totals => self.rng.gen_range(1..=9),
                };
                Input {
                    id: format!("m{}", self.inputs.len()),
                    key: format!("k{}", self.rng.gen_range(0..12)),
                    value,
                    poison: false,
                }
            };
            self.produce_input(input);
        }
    }

    /// Produces `n` poison inputs (new IDs, each with a key of its own).
    pub fn produce_poison(&mut self, n: usize) {
        for _ in 0..n {
            let id = format!("m{}", self.inputs.len());
            let value = self.rng.gen_range(1..=3);
            self.produce_input(Input {
                key: format!("poison-{id}-{}", "p".repeat(apps::OUTPUT_MAX_BYTES)),
                id,
                value,
                poison: true,
            });
        }
    }

    fn produce_input(&mut self, input: Input) {
        let now = self.clock.now_ms();
        let p = partition_of(input.key.as_bytes(), self.setup.partitions);
        self.cluster().produce(
            INPUT,
            Some(p),
            SimRecord {
                key: Some(input.key.clone().into_bytes()),
                value: Some(input.value.to_string().into_bytes()),
                headers: vec![("message-id".to_owned(), Some(input.id.clone().into_bytes()))],
                timestamp: Some(now),
            },
        );
        self.inputs.push(input);
    }

    /// Starts a process for instance `i`. If its previous process still lives (a zombie), the
    /// new one runs on another host: its own, empty state directory. Otherwise it reuses the
    /// instance's directory, as a restart on the same host does.
    pub fn start(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        inst.starts += 1;
        if inst.run.as_ref().is_some_and(|r| !r.process.is_killed()) {
            inst.disk = SimDisk::persisting_every(self.setup.persist_every);
        }
        let disk = inst.disk.clone();
        let process = Arc::new(SimProcess::new(format!(
            "instance {} start {}",
            inst.id, inst.starts
        )));
        let mut threads = Vec::new();
        for t in 0..self.setup.threads {
            let mut cfg = (*self.engine).clone();
            cfg.thread = t;
            cfg.transactional_id = exactly_core::engine::transactional_id(APP, &inst.id, t);
            let clients = SimClients::start(
                self.cluster.clone(),
                process.clone(),
                SimClientConfig {
                    group: APP.to_owned(),
                    topics: subscribed_topics(APP, self.engine.dedup_scope, &[INPUT.to_owned()]),
                    transactional_id: cfg.transactional_id.clone(),
                    transactional: true,
                    static_membership: self.setup.static_membership,
                    protocol: self.setup.protocol,
                },
            );
            let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let env = EngineEnv {
                factory: self.factory.clone(),
                stores: Arc::new(SimStores::new(disk.clone(), process.clone())),
                observer: Arc::new(ThreadObserver {
                    tally: self.tally.clone(),
                    ready: ready.clone(),
                }),
                clock: self.clock.clone(),
            };
            threads.push(Some(Thread {
                clients,
                engine: Engine::new(Arc::new(cfg), env),
                ready,
            }));
        }
        let start = inst.starts;
        let old = inst.run.replace(Run {
            instance: i,
            start,
            process,
            disk,
            threads,
            zombie: false,
        });
        let id = inst.id.clone();
        if let Some(mut old) = old {
            if !old.process.is_killed() {
                old.zombie = true;
                self.zombies.push(Some(old));
                self.note(format!(
                    "instance {id} restarted while its old process lives (zombie)"
                ));
                return;
            }
        }
        self.note(format!("instance {id} started"));
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.instances[i].run.is_some()
    }

    pub fn process(&self, i: usize) -> Option<Arc<SimProcess>> {
        self.instances[i].run.as_ref().map(|r| r.process.clone())
    }

    /// SIGKILL now.
    pub fn kill(&mut self, i: usize) {
        if let Some(run) = self.instances[i].run.take() {
            run.process.kill();
            self.kills += 1;
            let id = self.instances[i].id.clone();
            self.note(format!("instance {id} killed"));
        }
    }

    /// Arms a kill inside the protocol: at an operation some steps ahead, or a step.
    pub fn arm_kill(&mut self, i: usize) {
        let Some(process) = self.process(i) else {
            return;
        };
        let point = match self.rng.gen_range(0..6) {
            0 => KillPoint::Step(Step::BeforeSend),
            1 => KillPoint::Step(Step::AfterSend),
            2 => KillPoint::Step(Step::DuringCommit),
            3 => KillPoint::Step(Step::AfterCommit),
            4 => KillPoint::After(process.ops() + self.rng.gen_range(1..40)),
            _ => KillPoint::Before(process.ops() + self.rng.gen_range(1..40)),
        };
        process.arm(point);
        self.note(format!("instance {i} armed to die at {point:?}"));
    }

    /// SIGSTOP / SIGCONT.
    pub fn set_paused(&mut self, i: usize, paused: bool) {
        if let Some(p) = self.process(i) {
            p.set_paused(paused);
            self.note(format!(
                "instance {i} {}",
                if paused { "paused" } else { "resumed" }
            ));
        }
    }

    pub fn resume_zombies(&mut self) {
        for z in self.zombies.iter().flatten() {
            z.process.set_paused(false);
        }
    }

    /// A graceful shutdown (SIGTERM): commit, close the tasks, leave.
    pub fn shutdown(&mut self, i: usize) {
        let Some(mut run) = self.instances[i].run.take() else {
            return;
        };
        if run.process.is_killed() {
            return;
        }
        for t in run.threads.iter_mut().flatten() {
            match t.engine.shutdown(&t.clients) {
                Ok(()) | Err(EngineError::Terminated) => {}
                Err(e) if self.fenced_rightly(&e, run.instance, run.start) => {
                    self.zombie_stops += 1
                }
                Err(e) => self
                    .failures
                    .push(format!("shutdown of instance {i} failed: {e}")),
            }
            t.clients.close();
        }
        run.process.kill();
        self.note(format!("instance {i} shut down"));
    }

    /// Injects `fault`.
    pub fn inject(&mut self, fault: Fault) {
        self.cluster().inject(fault);
        self.note(format!("fault {fault:?}"));
    }

    /// The tasks of thread `t` of instance `i`'s current process, with whether each runs.
    pub fn tasks(&self, i: usize, t: usize) -> Vec<(i32, bool)> {
        self.instances[i]
            .run
            .as_ref()
            .and_then(|r| r.threads[t].as_ref())
            .map(|th| {
                th.engine
                    .tasks()
                    .into_iter()
                    .map(|(tp, running)| (tp.partition, running))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The partitions thread `t` of instance `i`'s consumer has paused.
    pub fn paused(&self, i: usize, t: usize) -> Vec<i32> {
        self.instances[i]
            .run
            .as_ref()
            .and_then(|r| r.threads[t].as_ref())
            .map(|th| {
                th.clients
                    .fetch_state()
                    .into_iter()
                    .filter(|(_, _, paused)| *paused)
                    .map(|(tp, _, _)| tp.partition)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether thread `t` of instance `i`'s current process has an open transaction.
    /// The group's committed input offsets expire (or are deleted); returns how many.
    pub fn delete_committed_offsets(&mut self) -> usize {
        lock(&self.cluster).delete_committed_offsets(APP, INPUT)
    }

    /// Engines started from now on use `offset_reset`.
    pub fn set_offset_reset(&mut self, reset: exactly_core::engine::OffsetReset) {
        let mut cfg = (*self.engine).clone();
        cfg.offset_reset = reset;
        self.engine = Arc::new(cfg);
    }

    /// Engines started from now on use this policy for outputs the broker refuses for good.
    pub fn set_on_production_error(&mut self, policy: exactly_core::ErrorPolicy) {
        let mut cfg = (*self.engine).clone();
        let mut task = (*cfg.task).clone();
        task.on_production_error = policy;
        cfg.task = Arc::new(task);
        self.engine = Arc::new(cfg);
    }

    /// The readiness thread `t` of instance `i` last reported (what `/ready` answers from).
    pub fn reported_ready(&self, i: usize, t: usize) -> bool {
        self.instances[i]
            .run
            .as_ref()
            .and_then(|r| r.threads[t].as_ref())
            .is_some_and(|th| th.ready.load(Ordering::Relaxed))
    }

    pub fn transaction_open(&self, i: usize, t: usize) -> bool {
        self.instances[i]
            .run
            .as_ref()
            .and_then(|r| r.threads[t].as_ref())
            .is_some_and(|th| th.engine.transaction_open())
    }

    pub fn inject_fault(&mut self) {
        let request = [
            Request::Send,
            Request::Produce,
            Request::TxnOffsetCommit,
            Request::EndTxn,
            Request::OffsetFetch,
            Request::ListOffsets,
            Request::DeleteRecords,
        ][self.rng.gen_range(0..6)];
        let kind = [
            FaultKind::Retriable,
            FaultKind::Abortable,
            FaultKind::ResponseLost,
        ][self.rng.gen_range(0..3)];
        self.cluster().inject(Fault::new(request, kind));
        self.note(format!("fault {kind:?} on the next {request:?}"));
    }

    /// No broker answers for `ms` (a cluster restart): see [`SimCluster::outage`].
    pub fn outage(&mut self, ms: i64) {
        self.cluster().outage(ms);
        self.note(format!("broker outage of {ms} ms"));
    }

    pub fn compact(&mut self) {
        let topics: Vec<String> = self
            .cluster()
            .topic_names()
            .into_iter()
            .filter(|t| t.ends_with("-changelog"))
            .collect();
        for t in topics {
            let removed = self.cluster().clean(&t);
            self.note(format!("compacted {t}: {removed} entries removed"));
        }
    }

    /// Damages a stopped instance's state directory.
    pub fn damage(&mut self, i: usize) {
        if self.is_running(i) {
            return;
        }
        let p = self.rng.gen_range(0..self.setup.partitions);
        let disk = self.instances[i].disk.dedup(INPUT, p);
        match self.rng.gen_range(0..3) {
            0 => disk.lose(),
            1 => disk.corrupt(),
            _ => disk.set_checkpoint(exactly_core::ChangelogCheckpoint {
                topic: changelog_topic(APP, INPUT),
                partition: p,
                next_offset: 1 << 40,
            }),
        }
        self.note(format!("instance {i}: store of partition {p} damaged"));
    }

    /// Every thread that can run now.
    pub fn runnable(&self) -> Vec<Who> {
        let mut out = Vec::new();
        for (i, inst) in self.instances.iter().enumerate() {
            if let Some(run) = &inst.run {
                if run.process.is_live() {
                    for (t, th) in run.threads.iter().enumerate() {
                        if th.is_some() {
                            out.push(Who::Instance(i, t));
                        }
                    }
                }
            }
        }
        for (z, run) in self.zombies.iter().enumerate() {
            let Some(run) = run else { continue };
            if run.process.is_live() {
                for (t, th) in run.threads.iter().enumerate() {
                    if th.is_some() {
                        out.push(Who::Zombie(z, t));
                    }
                }
            }
        }
        out
    }

    fn run_mut(&mut self, who: Who) -> Option<&mut Run> {
        match who {
            Who::Instance(i, _) => self.instances[i].run.as_mut(),
            Who::Zombie(z, _) => self.zombies.get_mut(z).and_then(Option::as_mut),
        }
    }

    /// The run of `process`, wherever it is now (an instance's, or a zombie since).
    fn run_of(&mut self, process: &Arc<SimProcess>) -> Option<&mut Run> {
        let found = self
            .instances
            .iter_mut()
            .filter_map(|i| i.run.as_mut())
            .chain(self.zombies.iter_mut().flatten())
            .find(|r| Arc::ptr_eq(&r.process, process));
        found
    }

    /// Index of the instance whose current run is `process`.
    fn instance_of(&self, process: &Arc<SimProcess>) -> Option<usize> {
        self.instances.iter().position(|i| {
            i.run
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(&r.process, process))
        })
    }

    pub fn zombies_alive(&self) -> usize {
        self.zombies
            .iter()
            .flatten()
            .filter(|z| !z.process.is_killed() && z.threads.iter().any(Option::is_some))
            .count()
    }

    /// Whether stopping with `e` is right for a thread of `run`: `FENCED_INSTANCE_ID` means
    /// another process joined with its instance id; repeated producer fences are right only
    /// with such a twin (alone, a thread whose transactions time out must go on).
    fn fenced_rightly(&self, e: &EngineError, instance: usize, start: u32) -> bool {
        match e {
            EngineError::Fenced {
                cause: FenceCause::NewerMember,
                ..
            } => true,
            EngineError::Fenced { .. } => self.has_twin_of(instance, start),
            _ => false,
        }
    }

    /// Another process took, or may take back, the instance id of `process`'s instance: one
    /// started after it (live or dead: its member may hold the id), or an older one alive.
    fn has_twin_of(&self, instance: usize, start: u32) -> bool {
        self.instances[instance].starts > start
            || self
                .zombies
                .iter()
                .flatten()
                .any(|z| z.instance == instance && z.start < start && !z.process.is_killed())
    }

    /// After a thread stopped: a process with no thread left is gone; if it was its
    /// instance's current one and an older process of the instance lives on (it took the
    /// instance id back by rejoining), that one is the instance's process again.
    fn settle(&mut self, process: &Arc<SimProcess>) {
        let Some(run) = self.run_of(process) else {
            return;
        };
        if run.threads.iter().any(Option::is_some) {
            return;
        }
        let instance = run.instance;
        run.process.kill();
        if let Some(i) = self.instance_of(process) {
            self.instances[i].run = None;
        }
        if self.instances[instance].run.is_some() {
            return;
        }
        let older = self.zombies.iter().rposition(|z| {
            z.as_ref().is_some_and(|z| {
                z.instance == instance
                    && !z.process.is_killed()
                    && z.threads.iter().any(Option::is_some)
            })
        });
        if let Some(z) = older {
            let mut run = self.zombies[z].take().expect("found above");
            run.zombie = false;
            self.instances[instance].disk = run.disk.clone();
            self.instances[instance].run = Some(run);
            self.note(format!(
                "instance {instance}: its older process goes on as the instance"
            ));
        }
    }

    /// Repartition records deleted (log start offsets of the repartition topic; 0 without the
    /// global scope).
    pub fn repartition_purged(&self) -> u64 {
        if !self.setup.global {
            return 0;
        }
        let c = self.cluster();
        let topic = task_topic(true);
        (0..self.setup.partitions)
            .map(|p| c.log_start_offset(&topic, p) as u64)
            .sum()
    }

    /// No transaction is open anywhere, the group's committed offsets have reached the end of
    /// every input partition, and with the global scope no committed repartition record lies
    /// at or after its partition's committed offset (stage 2 handled everything stage 1
    /// forwarded).
    pub fn drained(&self) -> bool {
        let c = self.cluster();
        let repartition = task_topic(true);
        // A transaction still open (a killed process's, until its restart or the
        // coordinator's timeout ends it) hides every committed record after its first one
        // from read_committed readers: the outputs are read once none is open.
        if c.has_open_transactions() {
            return false;
        }
        (0..self.setup.partitions).all(|p| {
            let input = c.committed_offset(APP, INPUT, p) == Some(c.high_watermark(INPUT, p))
                || c.high_watermark(INPUT, p) == 0;
            let forwarded = !self.setup.global || {
                let from = c.committed_offset(APP, &repartition, p).unwrap_or(0);
                c.last_stable_offset(&repartition, p) == c.high_watermark(&repartition, p)
                    && c.read_committed(&repartition, p, from, 1).0.is_empty()
            };
            input && forwarded
        })
    }

    /// Where every partition and thread stands (for a failure report).
    pub fn diagnose(&self) -> String {
        let mut out = Vec::new();
        {
            let c = self.cluster();
            for p in 0..self.setup.partitions {
                out.push(format!(
                    "partition {p}: committed {:?}, end {}, changelog lso {} hw {}",
                    c.committed_offset(APP, INPUT, p),
                    c.high_watermark(INPUT, p),
                    c.last_stable_offset(&changelog_topic(APP, INPUT), p),
                    c.high_watermark(&changelog_topic(APP, INPUT), p),
                ));
            }
            if self.setup.global {
                let repartition = task_topic(true);
                for p in 0..self.setup.partitions {
                    out.push(format!(
                        "repartition partition {p}: committed {:?}, log start {}, lso {}, hw {}",
                        c.committed_offset(APP, &repartition, p),
                        c.log_start_offset(&repartition, p),
                        c.last_stable_offset(&repartition, p),
                        c.high_watermark(&repartition, p),
                    ));
                }
            }
            out.push(format!("group assignment: {:?}", c.group_assignment(APP)));
        }
        let runs = self
            .instances
            .iter()
            .filter_map(|i| i.run.as_ref())
            .chain(self.zombies.iter().flatten());
        for r in runs {
            for (t, th) in r.threads.iter().enumerate() {
                if let Some(th) = th {
                    out.push(format!(
                        "{} thread {t} (member {}, zombie {}, live {}): tasks {:?}, txn open {}, fetch {:?}",
                        r.process.name(),
                        th.clients.member(),
                        r.zombie,
                        r.process.is_live(),
                        th.engine.tasks(),
                        th.engine.transaction_open(),
                        th.clients.fetch_state()
                    ));
                }
            }
        }
        out.join("\n")
    }

    /// Every committed output: of earlier creations of the output topic (see
    /// [`delete_output_topic`](Self::delete_output_topic)), then of the current one.
    pub fn outputs(&self) -> Vec<(i32, i64, SimRecord)> {
        let mut all = self.deleted_outputs.clone();
        all.extend(self.cluster().committed_records(apps::OUTPUT));
        all
    }

    /// Deletes the output topic (an operator's `kafka-topics --delete`), keeping its committed
    /// records for the oracle: an ID whose output was committed before the deletion and again
    /// after is a duplicate.
    pub fn delete_output_topic(&mut self) {
        let committed = self.cluster().committed_records(apps::OUTPUT);
        self.deleted_outputs.extend(committed);
        self.cluster().delete_topic(apps::OUTPUT);
    }

    /// Creates the output topic again, as the world first made it.
    pub fn create_output_topic(&mut self) {
        let partitions = self.setup.partitions;
        self.cluster()
            .create_topic(apps::OUTPUT, partitions, output_topic_config());
    }

    /// Sets the `max.message.bytes` of the dead-letter topic.
    pub fn limit_dead_letters(&mut self, max_bytes: usize) {
        self.cluster().alter_topic(
            apps::DEAD_LETTERS,
            TopicConfig {
                max_message_bytes: Some(max_bytes),
                ..TopicConfig::default()
            },
        );
    }

    pub fn dead_letters(&self) -> Vec<(i32, i64, SimRecord)> {
        self.cluster().committed_records(apps::DEAD_LETTERS)
    }

    /// The oracle's findings about the committed output and dead letters.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = apps::check(
            self.setup.kind,
            &self.inputs,
            &self.outputs(),
            &self.dead_letters(),
        );
        if self.setup.global && !problems.is_empty() {
            // Where the forwarded copies are, to tell stage 1 from stage 2.
            let c = self.cluster();
            let topic = task_topic(true);
            let forwarded: std::collections::HashSet<Vec<u8>> = c
                .committed_records(&topic)
                .iter()
                .filter_map(|(_, _, r)| r.header("message-id").map(<[u8]>::to_vec))
                .collect();
            for (p, o, r) in c.committed_records(INPUT) {
                let id = r.header("message-id").unwrap_or_default();
                if !forwarded.contains(id) {
                    problems.push(format!(
                        "never forwarded: {} at {INPUT}-{p}@{o} (committed offset {:?})",
                        String::from_utf8_lossy(id),
                        c.committed_offset(APP, INPUT, p)
                    ));
                }
            }
            for p in 0..self.setup.partitions {
                problems.push(format!(
                    "{topic}-{p}: lso {}, hw {}, open transactions anywhere: {}",
                    c.last_stable_offset(&topic, p),
                    c.high_watermark(&topic, p),
                    c.has_open_transactions()
                ));
            }
            for (p, o, r) in c.committed_records(&topic) {
                let id = String::from_utf8_lossy(r.header("message-id").unwrap_or_default())
                    .into_owned();
                problems.push(format!(
                    "forwarded {id} at {topic}-{p}@{o} (committed offset {:?}, log start {})",
                    c.committed_offset(APP, &topic, p),
                    c.log_start_offset(&topic, p)
                ));
            }
        }
        problems
    }
}

fn output_topic_config() -> TopicConfig {
    TopicConfig {
        max_message_bytes: Some(apps::OUTPUT_MAX_BYTES),
        ..TopicConfig::default()
    }
}

/// What the rest of the world does while a process is frozen in the middle of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Other threads take this many turns.
    Turns(u32),
    /// A replacement with the same instance id starts (the frozen one becomes a zombie), then
    /// other threads take turns.
    Replaced(u32),
    /// Its session and any transaction time out, then other threads take turns.
    Expired(u32),
}

/// One turn of thread `who`. With `freeze` (and the world not frozen already) the thread's
/// process freezes at its `at`-th next operation inside the turn while the world goes on: a
/// SIGSTOP in the middle of the protocol.
pub fn step(world: &Shared, who: Who, freeze: Option<(u64, Freeze)>) {
    let t = match who {
        Who::Instance(_, t) | Who::Zombie(_, t) => t,
    };
    let (mut thread, process) = {
        let mut w = lock_world(world);
        let Some(run) = w.run_mut(who) else { return };
        let Some(thread) = run.threads[t].take() else {
            return;
        };
        let process = run.process.clone();
        if let Some((ahead, what)) = freeze {
            if w.depth == 0 {
                w.freezes += 1;
                let frozen = world.clone();
                let at = process.ops() + ahead;
                let instance = w.instance_of(&process);
                process.freeze_at(at, move || {
                    let turns = {
                        let mut w = lock_world(&frozen);
                        w.depth += 1;
                        match (what, instance) {
                            (Freeze::Replaced(n), Some(i)) => {
                                w.start(i);
                                n
                            }
                            (Freeze::Expired(n), _) => {
                                w.advance((SESSION_MS.max(TXN_TIMEOUT_MS) + 1) as u64);
                                n
                            }
                            (Freeze::Turns(n) | Freeze::Replaced(n), _) => n,
                        }
                    };
                    for _ in 0..turns {
                        tick(&frozen);
                    }
                    lock_world(&frozen).depth -= 1;
                });
                w.note(format!("{who:?} freezes at op {at}: {what:?}"));
            }
        }
        (thread, process)
    };
    let result = thread.engine.run_once(&thread.clients);
    // A freeze belongs to this turn: later operations run with the world locked.
    process.thaw();
    let mut w = lock_world(world);
    match result {
        Ok(_) => {
            w.check_readiness(who, &thread);
            if let Some(run) = w.run_of(&process) {
                run.threads[t] = Some(thread);
            }
        }
        Err(EngineError::Terminated) => {
            // SIGKILL: the whole process is gone.
            if let Some(i) = w.instance_of(&process) {
                w.instances[i].run = None;
            }
            if let Some(run) = w.run_of(&process) {
                run.threads.iter_mut().for_each(|t| *t = None);
            }
            w.kills += 1;
            w.note(format!("{who:?} died at an armed kill point"));
        }
        Err(e) => {
            thread.engine.stop(&thread.clients);
            let legit = match w.run_of(&process).map(|r| (r.instance, r.start)) {
                Some((instance, start)) => w.fenced_rightly(&e, instance, start),
                None => false,
            };
            match legit {
                true => {
                    w.zombie_stops += 1;
                    w.note(format!("{who:?} stopped, fenced by a twin: {e}"));
                }
                false => {
                    w.failures.push(format!("{who:?} stopped: {e}"));
                    w.note(format!("{who:?} stopped: {e}"));
                }
            }
            w.settle(&process);
        }
    }
}

/// One turn of the world: a little time passes and a random runnable thread takes a turn.
pub fn tick(world: &Shared) {
    let who = {
        let mut w = lock_world(world);
        let ms = w.rng.gen_range(0..40);
        w.advance(ms);
        let runnable = w.runnable();
        if runnable.is_empty() {
            return;
        }
        let i = w.rng.gen_range(0..runnable.len());
        runnable[i]
    };
    step(world, who, None);
}
