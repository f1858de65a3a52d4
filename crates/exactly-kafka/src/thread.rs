//! A stream thread: one consumer (group member) and one transactional producer on a dedicated
//! OS thread, running the tasks of the partitions assigned to it.
//!
//! Rebalance callbacks run inside `consumer.poll` on this same thread; they reach the thread's
//! state through the consumer context (`Mutex<Core>`, never contended: the main loop releases
//! it before polling).

use crate::config::{
    all_changelogs, changelog_topic, repartition_topic, state_changelogs, subscribed_topics,
    DedupScope, Guarantee, RuntimeConfig,
};
use crate::error::RuntimeError;
use crate::failpoint;
use crate::observe::Observer;
use crate::writer::{DeliveryTracker, KafkaTxnWriter};
use exactly_core::{
    DedupStore, HeaderRef, MemDedupStore, ProcessorFactory, Record, SystemClock, Task, TaskConfig,
    TaskError, TaskId,
};
use exactly_state::{
    state_store_dir, task_dir, RocksDedupStore, RocksKvStore, SharedRocksResources, StoreIdentity,
    StoreOptions,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What every stream thread of an instance shares.
pub(crate) struct Shared<F: ProcessorFactory> {
    pub config: Arc<RuntimeConfig>,
    pub task_config: Arc<TaskConfig>,
    pub factory: Arc<F>,
    pub rocks: SharedRocksResources,
    /// Partition count of each input topic.
    pub input_partitions: BTreeMap<String, i32>,
    pub observer: Observer,
    pub shutdown: Arc<AtomicBool>,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transactional call that keeps failing with retriable errors is called again
/// before the thread gives up (and stops: a commit whose outcome is unknown cannot be aborted).
const TXN_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// How often running tasks drop IDs older than the dedup retention from their stores (the
/// changelog drops them by its own `retention.ms`).
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// How long a restore step waits for the first changelog record.
const RESTORE_POLL: Duration = Duration::from_millis(10);

/// Changelog records taken into one restore step at most (then processing of running tasks
/// and the group consumer's poll get their turn).
const RESTORE_BATCH_RECORDS: usize = 10_000;
/// How long a changelog partition stays out of the restore consumer after it left before it
/// is assigned again (its old fetch stops asynchronously).
const REASSIGN_DELAY: Duration = Duration::from_millis(100);
/// Abort reason (metric label) when the group took this member's partitions away.
const ABORT_LOST: &str = "assignment_lost";

type TaskKey = (Arc<str>, i32);

/// The restore of one changelog partition of a task.
struct ChangelogRestore {
    /// First changelog offset to read, used until the consumer has a position.
    from: i64,
    /// Read-committed end of the changelog partition at the last check.
    end: i64,
    /// Whether the restore consumer has this partition at `from` (or beyond) yet. Until then
    /// any position or record the consumer has for it belongs to an earlier assignment.
    assigned: bool,
}

struct Restoring {
    started: Instant,
    /// One per changelog of the task, in the order of `Slot::changelogs`.
    parts: Vec<ChangelogRestore>,
    last_check: Option<Instant>,
    last_wait_log: Instant,
}

struct Slot<P: exactly_core::Processor> {
    task: Task<P, Box<dyn DedupStore>>,
    /// The task's changelog topics (its partition): the dedup changelog first, then one per
    /// state store.
    changelogs: Vec<String>,
    restoring: Option<Restoring>,
}

impl<P: exactly_core::Processor> Slot<P> {
    /// The parts of a restoring task with their changelog topics.
    fn parts(&self) -> impl Iterator<Item = (&str, &ChangelogRestore)> {
        let parts = self.restoring.iter().flat_map(|r| r.parts.iter());
        self.changelogs.iter().map(String::as_str).zip(parts)
    }
}

/// The state of a stream thread that the rebalance callbacks need too.
pub(crate) struct Core<F: ProcessorFactory> {
    thread: usize,
    txn_id: String,
    shared: Arc<Shared<F>>,
    producer: BaseProducer<DeliveryTracker>,
    /// Reads changelogs during restore (read_committed, no group membership).
    restore_consumer: BaseConsumer<LogContext>,
    /// Asks for high watermarks (read_uncommitted), to see open transactions.
    watermark_client: BaseConsumer<LogContext>,
    tasks: BTreeMap<TaskKey, Slot<F::Processor>>,
    /// Changelog partitions in the restore consumer's assignment, changed only incrementally:
    /// a partition that stays keeps its fetch position (see `reconcile_restore_assignment`).
    restore_assigned: BTreeSet<(String, i32)>,
    /// When each changelog partition last left the restore consumer's assignment.
    restore_unassigned_at: HashMap<(String, i32), Instant>,
    txn_open: bool,
    txn_records: usize,
    txn_started: Instant,
    consecutive_failures: u32,
    /// Task counters of the open transaction, by input topic: reported when it commits,
    /// dropped when it aborts (its records are handled again), so metrics count effects.
    pending_counters: BTreeMap<Arc<str>, exactly_core::TaskCounters>,
    /// Set by a callback when the thread must stop.
    fatal: Option<RuntimeError>,
}

/// Consumer context of the group member.
pub(crate) struct MemberContext<F: ProcessorFactory> {
    core: Mutex<Option<Core<F>>>,
}

impl<F: ProcessorFactory> MemberContext<F> {
    fn lock(&self) -> MutexGuard<'_, Option<Core<F>>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Context of auxiliary clients: routes librdkafka logs to `tracing`.
pub(crate) struct LogContext;
impl ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::log_librdkafka("aux", level, fac, msg);
    }
}
impl ConsumerContext for LogContext {}

impl<F: ProcessorFactory> ClientContext for MemberContext<F> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::log_librdkafka("consumer", level, fac, msg);
    }
}

impl<F: ProcessorFactory> ConsumerContext for MemberContext<F> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut guard = self.lock();
        let Some(core) = guard.as_mut() else { return };
        match rebalance {
            Rebalance::Revoke(tpl) => {
                core.shared.observer.rebalance();
                let ended = if consumer.assignment_lost() {
                    // Lost, not revoked (session timed out, member fenced): the partitions
                    // may already run elsewhere. Kafka rejects this member's offsets now; a
                    // broker that accepted them would commit behind the new owner's back.
                    // Abort instead.
                    tracing::warn!(
                        thread = core.thread,
                        lost = tpl.count(),
                        "partitions lost (this member left the group): aborting the open transaction"
                    );
                    core.abort(consumer, ABORT_LOST)
                } else {
                    // Finish the open transaction before the partitions move, so the next
                    // owner starts from committed offsets and a complete changelog.
                    core.end_transaction(consumer, "rebalance")
                };
                if let Err(e) = ended {
                    core.fatal.get_or_insert(e);
                }
                for el in tpl.elements() {
                    core.close_task(&(Arc::from(el.topic()), el.partition()));
                }
                tracing::info!(
                    thread = core.thread,
                    revoked = tpl.count(),
                    "partitions revoked"
                );
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(thread = core.thread, error = %e, "rebalance error")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut guard = self.lock();
        let Some(core) = guard.as_mut() else { return };
        if let Rebalance::Assign(tpl) = rebalance {
            core.shared.observer.assigned(core.thread);
            // New tasks restore first: their input partitions stay paused until then.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "could not pause newly assigned partitions");
            }
            for el in tpl.elements() {
                let key: TaskKey = (Arc::from(el.topic()), el.partition());
                if core.tasks.contains_key(&key) {
                    continue;
                }
                if let Err(e) = core.open_task(key) {
                    core.fatal.get_or_insert(e);
                }
            }
            tracing::info!(
                thread = core.thread,
                assigned = tpl.count(),
                tasks = core.tasks.len(),
                "partitions assigned"
            );
        }
    }
}

fn client_config(config: &RuntimeConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap);
    // The test broker ignores fetch.max.bytes; a high receive limit keeps big fetches legal.
    c.set("receive.message.max.bytes", "1000000000");
    for (k, v) in &config.kafka {
        c.set(k, v);
    }
    c
}

/// Runs one stream thread until shutdown or a fatal error.
pub(crate) fn run<F: ProcessorFactory>(
    thread: usize,
    shared: Arc<Shared<F>>,
) -> Result<(), RuntimeError> {
    let config = shared.config.clone();
    let txn_id = config.transactional_id(thread);
    let changelogs = all_changelogs(&config);
    let mut pc = client_config(&config);
    pc.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("client.id", format!("{txn_id}-producer"));
    if config.guarantee == Guarantee::ExactlyOnce {
        pc.set("transactional.id", &txn_id).set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        );
    }
    let producer: BaseProducer<DeliveryTracker> = pc
        .create_with_context(DeliveryTracker::new(changelogs))
        .map_err(|e| RuntimeError::Kafka {
            during: "creating the producer",
            source: e,
        })?;
    if config.guarantee == Guarantee::ExactlyOnce {
        // Fences any previous producer with this transactional.id and aborts its open
        // transaction (crash point "after sends, before commit").
        producer
            .init_transactions(config.startup_timeout)
            .map_err(|e| RuntimeError::Kafka {
                during: "init_transactions",
                source: e,
            })?;
    }
    let mut rc = client_config(&config);
    rc.set("group.id", format!("{}-restore", config.app_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("client.id", format!("{txn_id}-restore"));
    let restore_consumer: BaseConsumer<LogContext> =
        rc.create_with_context(LogContext)
            .map_err(|e| RuntimeError::Kafka {
                during: "creating the restore consumer",
                source: e,
            })?;
    let mut wc = client_config(&config);
    wc.set("isolation.level", "read_uncommitted")
        .set("client.id", format!("{txn_id}-watermarks"));
    let watermark_client: BaseConsumer<LogContext> =
        wc.create_with_context(LogContext)
            .map_err(|e| RuntimeError::Kafka {
                during: "creating the watermark client",
                source: e,
            })?;

    let core = Core {
        thread,
        txn_id: txn_id.clone(),
        shared: shared.clone(),
        producer,
        restore_consumer,
        watermark_client,
        tasks: BTreeMap::new(),
        restore_assigned: BTreeSet::new(),
        restore_unassigned_at: HashMap::new(),
        txn_open: false,
        txn_records: 0,
        txn_started: Instant::now(),
        consecutive_failures: 0,
        pending_counters: BTreeMap::new(),
        fatal: None,
    };
    let ctx = MemberContext {
        core: Mutex::new(Some(core)),
    };
    let mut cc = client_config(&config);
    cc.set("group.id", &config.app_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("client.id", format!("{txn_id}-consumer"));
    if !config.kafka.contains_key("partition.assignment.strategy") {
        cc.set("partition.assignment.strategy", "cooperative-sticky");
    }
    if config.static_membership {
        // A restarted instance takes its partitions back at once, without a rebalance; one
        // that does not come back loses them after `session.timeout.ms`.
        cc.set("group.instance.id", &txn_id);
    }
    let consumer: BaseConsumer<MemberContext<F>> =
        cc.create_with_context(ctx)
            .map_err(|e| RuntimeError::Kafka {
                during: "creating the consumer",
                source: e,
            })?;
    let topics = subscribed_topics(&config);
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RuntimeError::Kafka {
            during: "subscribe",
            source: e,
        })?;
    tracing::info!(thread, transactional_id = %txn_id, inputs = ?config.inputs, "stream thread started");

    let result = main_loop(&consumer, &shared);
    // Shut down: finish the transaction, close the tasks (their stores keep their files).
    {
        let mut guard = consumer.context().lock();
        if let Some(core) = guard.as_mut() {
            if result.is_ok() {
                if let Err(e) = core.end_transaction(&consumer, "shutdown") {
                    tracing::warn!(thread, error = %e, "final commit failed");
                }
            } else if core.txn_open {
                let _ = abort_transaction(&core.producer);
            }
            let keys: Vec<TaskKey> = core.tasks.keys().cloned().collect();
            for k in keys {
                core.close_task(&k);
            }
        }
    }
    consumer.unsubscribe();
    // Leaving the group lets the others take over at once instead of after a session timeout.
    let _ = consumer.poll(Duration::from_millis(0));
    consumer.context().lock().take();
    tracing::info!(thread, ok = result.is_ok(), "stream thread stopped");
    result
}

fn main_loop<F: ProcessorFactory>(
    consumer: &BaseConsumer<MemberContext<F>>,
    shared: &Shared<F>,
) -> Result<(), RuntimeError> {
    let config = &shared.config;
    let mut msgs: Vec<BorrowedMessage<'_>> = Vec::with_capacity(config.max_batch_records);
    let mut last_lag = Instant::now();
    let mut last_expiry = Instant::now();
    while !shared.shutdown.load(Ordering::Relaxed) {
        // Poll without holding the core: rebalance callbacks take it.
        let (restoring, room) = {
            let guard = consumer.context().lock();
            let core = guard.as_ref().expect("core lives until the thread ends");
            (
                core.is_restoring(),
                config
                    .max_batch_records
                    .saturating_sub(core.txn_records)
                    .max(1),
            )
        };
        // While tasks restore, the restore step below does the waiting (on the changelog).
        let wait = if restoring {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        let mut polled = Ok(());
        if let Some(first) = consumer.poll(wait) {
            polled = push_message(first, &mut msgs);
            while polled.is_ok() && msgs.len() < room {
                match consumer.poll(Duration::ZERO) {
                    Some(m) => polled = push_message(m, &mut msgs),
                    None => break,
                }
            }
        }
        let mut guard = consumer.context().lock();
        let core = guard.as_mut().expect("core lives until the thread ends");
        match polled {
            Ok(()) => {}
            Err(Polled::Fenced) => {
                tracing::error!(
                    thread = core.thread,
                    "fenced: a newer member joined with this thread's group.instance.id"
                );
                if core.txn_open {
                    let _ = abort_transaction(&core.producer);
                }
                return Err(core.fenced_error());
            }
            Err(Polled::Failed(e)) => return Err(e),
        }
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        let processed = core.process(consumer, &msgs);
        msgs.clear();
        processed?;
        core.restore_step(consumer)?;
        if core.txn_open
            && (core.txn_started.elapsed() >= config.commit_interval
                || core.txn_records >= config.max_batch_records)
        {
            core.commit(consumer)?;
        }
        core.producer.poll(Duration::ZERO);
        if last_lag.elapsed() >= Duration::from_secs(1) {
            core.report_lag(consumer);
            last_lag = Instant::now();
        }
        if !core.txn_open && last_expiry.elapsed() >= EXPIRY_INTERVAL {
            core.expire();
            last_expiry = Instant::now();
        }
    }
    Ok(())
}

/// Why polling stopped the thread.
enum Polled {
    /// A newer member with the same `group.instance.id` took this member's place.
    Fenced,
    Failed(RuntimeError),
}

fn push_message<'c>(
    m: Result<BorrowedMessage<'c>, KafkaError>,
    msgs: &mut Vec<BorrowedMessage<'c>>,
) -> Result<(), Polled> {
    match m {
        Ok(m) => msgs.push(m),
        Err(KafkaError::PartitionEOF(_)) => {}
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId) => {
            return Err(Polled::Fenced)
        }
        Err(KafkaError::MessageConsumption(code)) if is_missing_topic(code) => {
            return Err(Polled::Failed(RuntimeError::Topic(format!(
                "an input topic disappeared while running ({code}); recreate it or fix `inputs`"
            ))))
        }
        Err(e) => tracing::warn!(error = %e, "consumer error (retrying)"),
    }
    Ok(())
}

fn is_missing_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
    )
}

/// Whether a producer error means this producer is done for (fenced or fatal).
fn is_fatal_producer_error(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(err) => err.is_fatal(),
        _ => matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
            )
        ),
    }
}

impl<F: ProcessorFactory> Core<F> {
    fn is_restoring(&self) -> bool {
        self.tasks.values().any(|s| s.restoring.is_some())
    }

    fn exactly_once(&self) -> bool {
        self.shared.config.guarantee == Guarantee::ExactlyOnce
    }

    /// Opens the store of a newly assigned partition and starts its restore.
    fn open_task(&mut self, key: TaskKey) -> Result<(), RuntimeError> {
        let cfg = &self.shared.config;
        if cfg.dedup_scope == DedupScope::Global && cfg.inputs.iter().any(|i| **i == *key.0) {
            return self.open_repartitioner(key);
        }
        let changelog = changelog_topic(&cfg.app_id, &key.0);
        let dir = task_dir(&cfg.state_dir, &cfg.app_id, &key.0, key.1);
        let identity = StoreIdentity::new(changelog.clone(), key.1);
        let (store, recreated) =
            RocksDedupStore::open_or_recreate(&dir, &self.shared.rocks, &identity)?;
        if let Some(reason) = recreated {
            self.shared.observer.store_wiped(&key.0, key.1, "corrupt");
            tracing::warn!(task = %format!("{}-{}", key.0, key.1), %reason, "store recreated; restoring it from the changelog");
        }
        let id = TaskId::new(key.0.clone(), key.1);
        let processor = self.shared.factory.create(&id);
        let mut task = Task::new(
            id,
            changelog.clone(),
            processor,
            Box::new(store) as Box<dyn DedupStore>,
            self.shared.task_config.clone(),
        );
        let mut changelogs = vec![changelog.clone()];
        let options = StoreOptions::default();
        for (spec, topic) in cfg.task.stores.iter().zip(state_changelogs(cfg, &key.0)) {
            let dir = state_store_dir(&cfg.state_dir, &cfg.app_id, &key.0, key.1, &spec.name);
            let identity = StoreIdentity::new(topic.clone(), key.1);
            let backend = RocksKvStore::open(&dir, &self.shared.rocks, &identity, &options)?;
            task.add_store(spec.clone(), topic.clone(), Box::new(backend))?;
            changelogs.push(topic);
        }
        let (low, end) = changelog_watermarks(&self.restore_consumer, &changelog, key.1)?;
        let plan = task.restore_plan(low, end)?;
        if let Some(reason) = &plan.wiped {
            self.shared
                .observer
                .store_wiped(&key.0, key.1, reason.label());
            tracing::warn!(task = %task.id(), %reason, "store wiped; full restore from the changelog");
        }
        tracing::info!(task = %task.id(), checkpoint = plan.from, from = low, end, "restoring dedup store");
        // From the start of the changelog, not from the store's checkpoint: replaying records
        // the store already holds changes nothing, and a read_committed fetch that starts
        // after an aborted transaction of the same producer lost committed records on the test
        // broker (the restore reached the end without delivering them; see
        // docs/architecture.md). State stores were wiped by the plan and replay from the
        // start of their changelogs too.
        let mut parts = vec![ChangelogRestore {
            from: low,
            end,
            assigned: false,
        }];
        for topic in &changelogs[1..] {
            let (low, end) = changelog_watermarks(&self.restore_consumer, topic, key.1)?;
            parts.push(ChangelogRestore {
                from: low,
                end,
                assigned: false,
            });
        }
        let remaining = parts.iter().map(|p| (p.end - p.from).max(0)).sum();
        self.shared
            .observer
            .restore_remaining(&key.0, key.1, remaining);
        // The next restore step adds the changelog partitions to the restore consumer at the
        // plan's offsets, leaving the partitions already restoring alone.
        self.tasks.insert(
            key,
            Slot {
                task,
                changelogs,
                restoring: Some(Restoring {
                    started: Instant::now(),
                    parts,
                    last_check: None,
                    last_wait_log: Instant::now(),
                }),
            },
        );
        self.shared.observer.tasks(self.thread, self.tasks.len());
        Ok(())
    }

    /// Opens a task of an input topic with the global dedup scope: it forwards records to
    /// their ID's partition of the repartition topic. No store and no changelog, so it only
    /// waits for its committed offset (the "restore" with no changelog parts).
    fn open_repartitioner(&mut self, key: TaskKey) -> Result<(), RuntimeError> {
        let cfg = &self.shared.config;
        let topic = repartition_topic(&cfg.app_id, &key.0);
        let partitions = self
            .shared
            .input_partitions
            .get(&*key.0)
            .copied()
            .ok_or_else(|| {
                RuntimeError::Config(format!("no partition count known for input `{}`", key.0))
            })?;
        let id = TaskId::new(key.0.clone(), key.1);
        let task = Task::repartitioner(
            id,
            topic.clone(),
            partitions,
            Box::new(MemDedupStore::new()) as Box<dyn DedupStore>,
            self.shared.task_config.clone(),
        );
        tracing::info!(task = %task.id(), to = %topic, "repartitioning by message ID");
        self.tasks.insert(
            key,
            Slot {
                task,
                changelogs: Vec::new(),
                restoring: Some(Restoring {
                    started: Instant::now(),
                    parts: Vec::new(),
                    last_check: None,
                    last_wait_log: Instant::now(),
                }),
            },
        );
        self.shared.observer.tasks(self.thread, self.tasks.len());
        Ok(())
    }

    /// Closes a task: its staged IDs were committed or aborted before; its store keeps its
    /// files so a quick re-assignment restores only the tail.
    fn close_task(&mut self, key: &TaskKey) {
        if let Some(slot) = self.tasks.remove(key) {
            drop(slot.task.close());
        }
        self.shared.observer.tasks(self.thread, self.tasks.len());
        self.shared.observer.forget_partition(&key.0, key.1);
    }

    /// Replays changelog records into restoring tasks; completes restores that reached the
    /// end of a changelog partition with no open transaction on it.
    fn restore_step(
        &mut self,
        consumer: &BaseConsumer<MemberContext<F>>,
    ) -> Result<(), RuntimeError> {
        self.reconcile_restore_assignment()?;
        if !self.is_restoring() {
            return Ok(());
        }
        let clock = SystemClock;
        // Block here (not on the group consumer, whose restoring partitions are paused) until
        // changelog records arrive, then take what is buffered: one store batch per partition.
        let mut records: Vec<BorrowedMessage<'_>> = Vec::new();
        let mut wait = RESTORE_POLL;
        while records.len() < RESTORE_BATCH_RECORDS {
            match self.restore_consumer.poll(wait) {
                Some(Ok(m)) => records.push(m),
                Some(Err(e)) => tracing::warn!(error = %e, "restore consumer error (retrying)"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        let mut partitions: Vec<(&str, i32)> =
            records.iter().map(|m| (m.topic(), m.partition())).collect();
        partitions.sort_unstable();
        partitions.dedup();
        for (changelog, p) in partitions {
            let found = self.tasks.values_mut().find_map(|s| {
                if s.task.id().partition != p {
                    return None;
                }
                let i = s.changelogs.iter().position(|c| c == changelog)?;
                let assigned = s.restoring.as_ref().is_some_and(|r| r.parts[i].assigned);
                assigned.then_some((s, i))
            });
            let Some((slot, i)) = found else {
                continue;
            };
            let mine = || {
                records
                    .iter()
                    .filter(move |m| m.partition() == p && m.topic() == changelog)
            };
            let replay = mine().map(|m| (m.offset(), m.key().unwrap_or_default(), m.payload()));
            let n = if i == 0 {
                slot.task.restore_records(replay, &clock)?
            } else {
                slot.task.restore_state_records(changelog, replay, &clock)?
            };
            self.shared.observer.restored(
                &slot.task.id().topic,
                p,
                mine().count() as u64,
                n as u64,
            );
        }
        drop(records);
        // Which restores may be complete?
        let positions = self.restore_consumer.position().unwrap_or_default();
        let keys: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, s)| s.restoring.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let slot = self.tasks.get_mut(&key).expect("listed above");
            let r = slot.restoring.as_mut().expect("listed above");
            // No position yet (nothing read, or not assigned yet): the plan's start.
            let pos: Vec<i64> = slot
                .changelogs
                .iter()
                .zip(&r.parts)
                .map(|(changelog, part)| {
                    positions
                        .find_partition(changelog, key.1)
                        .and_then(|e| e.offset().to_raw())
                        .filter(|o| part.assigned && *o >= 0)
                        .unwrap_or(part.from)
                })
                .collect();
            let remaining = r
                .parts
                .iter()
                .zip(&pos)
                .map(|(p, pos)| (p.end - pos).max(0));
            self.shared
                .observer
                .restore_remaining(&key.0, key.1, remaining.sum());
            // Behind the end seen at the last check: more records are there, no round trip.
            if r.parts.iter().zip(&pos).any(|(p, pos)| *pos < p.end) {
                continue;
            }
            let due = r
                .last_check
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if !due {
                continue;
            }
            r.last_check = Some(Instant::now());
            let clients = (&self.restore_consumer, &self.watermark_client);
            match changelogs_at_end(clients, &slot.changelogs, key.1, &pos, &mut r.parts)? {
                AtEnd::Behind => continue,
                AtEnd::OpenTransaction { changelog, lso, hw } => {
                    // A predecessor's transaction on this changelog partition is still open.
                    // Its offsets may still commit: wait for it to end before reading
                    // committed offsets.
                    if r.last_wait_log.elapsed() >= Duration::from_secs(5) {
                        r.last_wait_log = Instant::now();
                        tracing::info!(task = %slot.task.id(), changelog, lso, hw, "restore waits for an open transaction on the changelog to finish");
                    }
                    continue;
                }
                AtEnd::Yes => {}
            }
            // The committed offsets first, then the changelogs' ends once more: a
            // read_committed `committed()` waits for a predecessor's transaction that holds
            // offsets for this partition (KIP-447), and that transaction wrote its changelog
            // records before it committed. If an end moved, the stores are not complete for
            // those offsets yet.
            let offset = committed_offset(consumer, &key)?;
            match changelogs_at_end(clients, &slot.changelogs, key.1, &pos, &mut r.parts)? {
                AtEnd::Yes => {}
                AtEnd::Behind | AtEnd::OpenTransaction { .. } => {
                    tracing::info!(task = %slot.task.id(), "a changelog grew while reading committed offsets; restoring on");
                    continue;
                }
            }
            self.finish_restore(consumer, &key, offset)?;
        }
        Ok(())
    }

    fn finish_restore(
        &mut self,
        consumer: &BaseConsumer<MemberContext<F>>,
        key: &TaskKey,
        offset: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let slot = self.tasks.get_mut(key).expect("restoring task exists");
        slot.task.restore_complete(offset)?;
        let r = slot.restoring.take().expect("was restoring");
        let secs = r.started.elapsed().as_secs_f64();
        self.shared.observer.restore_done(&key.0, key.1, secs);
        tracing::info!(task = %slot.task.id(), committed = ?offset, seconds = secs, entries = slot.task.store_stats().entries, "task restored; running");
        let mut resume = TopicPartitionList::new();
        resume.add_partition(&key.0, key.1);
        consumer.resume(&resume).map_err(|e| RuntimeError::Kafka {
            during: "resuming a partition",
            source: e,
        })?;
        let target = offset.map_or(Offset::Beginning, Offset::Offset);
        seek(consumer, &key.0, key.1, target)
    }

    /// Brings the restore consumer's assignment in line with the restoring tasks, by
    /// `incremental_unassign` / `incremental_assign` only: a partition that stays is never
    /// re-assigned, so its fetch goes on where it is. Re-assigning (as `assign()` with the full
    /// list did) restarts the fetch mid-log, and a read_committed fetch that starts after an
    /// aborted transaction lost every later record of that producer on the test broker: the
    /// restore reached the end with IDs missing, and their resends were processed again.
    /// A partition that left the assignment is added back only after `REASSIGN_DELAY`, so its
    /// old fetch has stopped and the consumer reports no stale position for it.
    fn reconcile_restore_assignment(&mut self) -> Result<(), RuntimeError> {
        let mut remove = TopicPartitionList::new();
        let keep: BTreeSet<(String, i32)> = self
            .tasks
            .values()
            .flat_map(|s| {
                s.parts()
                    .filter(|(_, part)| part.assigned)
                    .map(|(changelog, _)| (changelog.to_owned(), s.task.id().partition))
            })
            .collect();
        for tp in self.restore_assigned.difference(&keep) {
            remove.add_partition(&tp.0, tp.1);
        }
        if remove.count() > 0 {
            self.restore_consumer
                .incremental_unassign(&remove)
                .map_err(|e| RuntimeError::Kafka {
                    during: "removing changelog partitions from the restore consumer",
                    source: e,
                })?;
            let now = Instant::now();
            for el in remove.elements() {
                let tp = (el.topic().to_owned(), el.partition());
                self.restore_assigned.remove(&tp);
                self.restore_unassigned_at.insert(tp, now);
            }
        }
        let mut add = TopicPartitionList::new();
        for slot in self.tasks.values() {
            for (changelog, part) in slot.parts() {
                let tp = (changelog.to_owned(), slot.task.id().partition);
                let settled = self
                    .restore_unassigned_at
                    .get(&tp)
                    .is_none_or(|t| t.elapsed() >= REASSIGN_DELAY);
                if part.assigned || !settled || self.restore_assigned.contains(&tp) {
                    continue;
                }
                add.add_partition_offset(&tp.0, tp.1, Offset::Offset(part.from))
                    .map_err(|e| RuntimeError::Kafka {
                        during: "assigning changelog partitions",
                        source: e,
                    })?;
            }
        }
        if add.count() == 0 {
            return Ok(());
        }
        self.restore_consumer
            .incremental_assign(&add)
            .map_err(|e| RuntimeError::Kafka {
                during: "assigning changelog partitions",
                source: e,
            })?;
        for el in add.elements() {
            let tp = (el.topic().to_owned(), el.partition());
            self.restore_unassigned_at.remove(&tp);
            self.restore_assigned.insert(tp);
        }
        for slot in self.tasks.values_mut() {
            let p = slot.task.id().partition;
            if let Some(r) = &mut slot.restoring {
                for (changelog, part) in slot.changelogs.iter().zip(r.parts.iter_mut()) {
                    if add.find_partition(changelog, p).is_some() {
                        part.assigned = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the tasks on polled records. A record of a task that is not running (restoring,
    /// or revoked since it was polled) is skipped: the task seeks to its committed offset when
    /// it starts.
    fn process(
        &mut self,
        consumer: &BaseConsumer<MemberContext<F>>,
        msgs: &[BorrowedMessage<'_>],
    ) -> Result<(), RuntimeError> {
        if msgs.is_empty() {
            return Ok(());
        }
        // Headers of all messages in one buffer: no allocation per record.
        let mut headers: Vec<HeaderRef<'_>> = Vec::new();
        let mut spans = Vec::with_capacity(msgs.len());
        for m in msgs {
            let start = headers.len();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hh = h.get(i);
                    headers.push(HeaderRef {
                        key: hh.key,
                        value: hh.value,
                    });
                }
            }
            spans.push(start..headers.len());
        }
        let records: Vec<Record<'_>> = msgs
            .iter()
            .zip(&spans)
            .map(|(m, span)| Record {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key(),
                value: m.payload(),
                headers: &headers[span.clone()],
            })
            .collect();
        // Group consecutive runs of one partition (order within a partition is kept).
        let mut i = 0;
        let clock = SystemClock;
        while i < records.len() {
            let (topic, p) = (records[i].topic, records[i].partition);
            let mut j = i + 1;
            while j < records.len() && records[j].topic == topic && records[j].partition == p {
                j += 1;
            }
            let run = &records[i..j];
            i = j;
            let key: TaskKey = (Arc::from(topic), p);
            let running = self.tasks.get(&key).is_some_and(|s| s.restoring.is_none());
            if !running {
                continue;
            }
            self.begin_if_needed()?;
            let slot = self.tasks.get_mut(&key).expect("checked above");
            // Skip records before the task's position (a fetch that raced a seek).
            let mut writer = KafkaTxnWriter {
                producer: &self.producer,
                sent: 0,
            };
            let result = slot.task.handle_batch(run, &clock, &mut writer);
            self.txn_records += run.len();
            let counters = slot.task.counters_mut().take();
            self.pending_counters
                .entry(key.0.clone())
                .or_default()
                .merge(counters);
            if let Err(e) = result {
                return self.on_task_error(consumer, &key, e);
            }
        }
        Ok(())
    }

    fn on_task_error(
        &mut self,
        consumer: &BaseConsumer<MemberContext<F>>,
        key: &TaskKey,
        e: TaskError,
    ) -> Result<(), RuntimeError> {
        if e.is_fatal() {
            tracing::error!(thread = self.thread, error = %e, "fatal task error: aborting and stopping");
            self.abort(consumer, "error")?;
            return Err(RuntimeError::Task(e));
        }
        tracing::warn!(thread = self.thread, error = %e, "task error: aborting the transaction and retrying");
        self.abort(consumer, "error")?;
        if matches!(e, TaskError::Store { .. }) {
            // Do not go on with a store that failed: restore it from the changelog.
            self.close_task(key);
            self.open_task(key.clone())?;
            pause(consumer, &key.0, key.1);
        }
        self.backoff();
        Ok(())
    }

    fn begin_if_needed(&mut self) -> Result<(), RuntimeError> {
        if self.txn_open {
            return Ok(());
        }
        if self.exactly_once() {
            if let Err(e) = self.producer.begin_transaction() {
                if is_fatal_producer_error(&e) {
                    return Err(self.producer_failed("begin_transaction (fatal)", e));
                }
                return Err(RuntimeError::Kafka {
                    during: "begin_transaction",
                    source: e,
                });
            }
        }
        self.txn_open = true;
        self.txn_records = 0;
        self.txn_started = Instant::now();
        failpoint::hit(failpoint::Point::BeforeSend);
        Ok(())
    }

    fn fenced_error(&mut self) -> RuntimeError {
        self.shared.observer.fenced();
        // A zombie writes nothing more: drop staged IDs, close tasks without applying.
        self.drop_tasks_unapplied();
        RuntimeError::Fenced {
            thread: self.thread,
            transactional_id: self.txn_id.clone(),
        }
    }

    /// The producer failed fatally during `during`: fenced by a newer producer with this
    /// transactional.id, or another fatal error (e.g. the transactional.id is no longer
    /// authorized), which must be reported as itself, not as fencing.
    fn producer_failed(&mut self, during: &'static str, e: KafkaError) -> RuntimeError {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
            )
        );
        if fenced {
            return self.fenced_error();
        }
        tracing::error!(thread = self.thread, during, error = %e, "fatal producer error: stopping the thread without committing anything more");
        self.drop_tasks_unapplied();
        RuntimeError::Kafka { during, source: e }
    }

    /// Drops the staged IDs of every task and closes it without applying anything.
    fn drop_tasks_unapplied(&mut self) {
        let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
        for k in keys {
            if let Some(slot) = self.tasks.get_mut(&k) {
                slot.task.on_aborted();
            }
            self.close_task(&k);
        }
        self.txn_open = false;
    }

    /// Commits the open transaction (or, at least once: flush, apply, commit offsets).
    fn commit(&mut self, consumer: &BaseConsumer<MemberContext<F>>) -> Result<(), RuntimeError> {
        if !self.txn_open {
            return Ok(());
        }
        // Pre-commit hook: processors make buffered external effects durable (sinks commit
        // their database transaction) before Kafka commits; a failure aborts and rewinds.
        if let Err((key, e)) = self.flush_tasks() {
            return self.on_task_error(consumer, &key, e);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, p), slot) in &self.tasks {
            if let Some(o) = slot.task.offset_to_commit() {
                offsets
                    .add_partition_offset(topic, *p, Offset::Offset(o))
                    .map_err(|e| RuntimeError::Kafka {
                        during: "building offsets",
                        source: e,
                    })?;
            }
        }
        if self.exactly_once() && consumer.assignment_lost() {
            // The group took the partitions away (the rebalance callback that closes the
            // tasks comes with the next poll): these offsets would be rejected.
            tracing::warn!(
                thread = self.thread,
                "assignment lost before the commit: aborting"
            );
            return self.abort(consumer, ABORT_LOST);
        }
        let started = Instant::now();
        let result = if self.exactly_once() {
            self.commit_transaction(consumer, &offsets)
        } else {
            self.flush_at_least_once()
        };
        let deliveries = self.producer.context().take();
        match result {
            Ok(()) => {
                let records = self.txn_records;
                self.txn_open = false;
                self.txn_records = 0;
                self.consecutive_failures = 0;
                self.shared.observer.committed(
                    started.elapsed().as_secs_f64(),
                    records,
                    &deliveries.delivered,
                );
                for (topic, counters) in std::mem::take(&mut self.pending_counters) {
                    self.shared.observer.task_counters(&topic, &counters);
                }
                failpoint::hit(failpoint::Point::AfterCommit);
                // Apply staged IDs + checkpoint to each store, only now (store never ahead of
                // the committed changelog).
                let mut failed = Vec::new();
                for (key, slot) in self.tasks.iter_mut() {
                    let next = |changelog: &str| {
                        deliveries
                            .changelog_last
                            .get(&(changelog.to_owned(), key.1))
                            .map(|o| o + 1)
                    };
                    if slot.restoring.is_none() {
                        if let Err(e) = slot.task.on_committed(&next) {
                            tracing::warn!(task = %slot.task.id(), error = %e, "store apply failed after commit; restoring the task from the changelog");
                            failed.push(key.clone());
                        }
                    }
                }
                for key in failed {
                    self.close_task(&key);
                    self.open_task(key.clone())?;
                    pause(consumer, &key.0, key.1);
                }
                if !self.exactly_once() && offsets.count() > 0 {
                    // At least once: offsets last, after outputs and IDs are durable. A crash
                    // before this line re-delivers records whose IDs the stores now hold.
                    if let Err(e) = consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync) {
                        tracing::warn!(thread = self.thread, error = %e, "offset commit failed; the next commit covers these records");
                    }
                }
                Ok(())
            }
            Err(e) if is_fatal_producer_error(&e) => {
                Err(self.producer_failed("commit (fatal; nothing more is committed)", e))
            }
            Err(e) if self.exactly_once() && is_resumable(&e) => {
                // Still retriable after TXN_RETRY_LIMIT: the commit may yet complete, so it
                // cannot be aborted. Stop; the restarted producer's init_transactions
                // resolves the transaction (commits or aborts it) before anything else.
                tracing::error!(thread = self.thread, error = %e, "commit still unresolved after retrying; stopping the thread");
                Err(RuntimeError::Kafka {
                    during: "commit (still unresolved after retrying for 60 s; outcome unknown, so this thread stops and a restart resolves the transaction)",
                    source: e,
                })
            }
            Err(e) => {
                tracing::warn!(thread = self.thread, error = %e, "commit failed: aborting and rewinding");
                self.abort(consumer, "error")?;
                self.backoff();
                Ok(())
            }
        }
    }

    /// Runs [`Task::flush`] on every running task; the first failure stops it.
    fn flush_tasks(&mut self) -> Result<(), (TaskKey, TaskError)> {
        for (key, slot) in self.tasks.iter_mut() {
            if slot.restoring.is_none() {
                slot.task.flush().map_err(|e| (key.clone(), e))?;
            }
        }
        Ok(())
    }

    fn commit_transaction(
        &self,
        consumer: &BaseConsumer<MemberContext<F>>,
        offsets: &TopicPartitionList,
    ) -> Result<(), KafkaError> {
        failpoint::hit(failpoint::Point::AfterSend);
        if offsets.count() > 0 {
            let metadata = consumer.group_metadata().ok_or_else(|| {
                KafkaError::Subscription("the consumer has no group metadata yet".into())
            })?;
            // A retriable error (coordinator moved or loading, request timed out) leaves the
            // transaction open; librdkafka asks for the same call again, with the same offsets.
            retry_while_retriable(&self.producer, "send_offsets_to_transaction", || {
                self.producer
                    .send_offsets_to_transaction(offsets, &metadata, REQUEST_TIMEOUT)
            })?;
        }
        failpoint::hit(failpoint::Point::DuringCommit);
        drain_deliveries(&self.producer);
        // A retriable error here means the commit goes on in the background with an unknown
        // outcome: it must be resumed by calling commit again. Aborting instead is refused
        // ("Conflicting commit_transaction API call is already in progress"), which used to
        // stop the thread whenever a commit outlasted one call (EndTxn retried for a long
        // time, broker down during the commit). Each call waits at most the transaction
        // timeout: librdkafka recommends the remaining transaction time, and no record can
        // wait longer than that (`message.timeout.ms` <= `transaction.timeout.ms`).
        let step = self.shared.config.transaction_timeout;
        retry_while_retriable(&self.producer, "commit_transaction", || {
            self.producer.commit_transaction(step)
        })
    }

    /// At least once: every output and changelog record is delivered (or the error is
    /// returned).
    fn flush_at_least_once(&self) -> Result<(), KafkaError> {
        drain_deliveries(&self.producer);
        self.producer.flush(REQUEST_TIMEOUT)?;
        match self.producer.context().take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Aborts the open transaction and rewinds every running task to its committed offset.
    fn abort(
        &mut self,
        consumer: &BaseConsumer<MemberContext<F>>,
        reason: &'static str,
    ) -> Result<(), RuntimeError> {
        if self.txn_open && self.exactly_once() {
            if let Err(e) = abort_transaction(&self.producer) {
                if is_fatal_producer_error(&e) {
                    return Err(self.producer_failed("abort_transaction (fatal)", e));
                }
                return Err(RuntimeError::Kafka {
                    during: "abort_transaction",
                    source: e,
                });
            }
        }
        let _ = self.producer.context().take();
        self.pending_counters.clear();
        if self.txn_open {
            self.shared.observer.aborted(reason);
        }
        self.txn_open = false;
        self.txn_records = 0;
        for (key, slot) in self.tasks.iter_mut() {
            if slot.restoring.is_some() {
                continue;
            }
            let target = slot
                .task
                .on_aborted()
                .map_or(Offset::Beginning, Offset::Offset);
            match seek(consumer, &key.0, key.1, target) {
                Ok(()) => {}
                // Lost partitions are closed by the rebalance callback that follows; if they
                // come back, the new task seeks to the committed offset after its restore.
                Err(e) if reason == ABORT_LOST => {
                    tracing::warn!(task = %slot.task.id(), error = %e, "rewind of a lost partition failed; its task closes with the lost assignment");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Commits (or, if that fails, aborts) the open transaction; used before a revoke and at
    /// shutdown.
    fn end_transaction(
        &mut self,
        consumer: &BaseConsumer<MemberContext<F>>,
        reason: &'static str,
    ) -> Result<(), RuntimeError> {
        if !self.txn_open {
            return Ok(());
        }
        self.commit(consumer)?;
        if self.txn_open {
            self.abort(consumer, reason)?;
        }
        Ok(())
    }

    fn backoff(&mut self) {
        self.consecutive_failures += 1;
        let ms = (50u64 << self.consecutive_failures.min(7)).min(5_000);
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// TTL expiry of every running task's store; between transactions only.
    fn expire(&mut self) {
        let clock = SystemClock;
        for slot in self.tasks.values_mut() {
            if slot.restoring.is_some() {
                continue;
            }
            match slot.task.expire(&clock) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(task = %slot.task.id(), expired = n, "expired message IDs older than the dedup retention")
                }
                // The store is left as is: a failed delete only keeps old IDs a little longer.
                Err(e) => {
                    tracing::warn!(task = %slot.task.id(), error = %e, "TTL expiry failed; will retry")
                }
            }
            let counters = slot.task.counters_mut().take();
            self.shared
                .observer
                .task_counters(&slot.task.id().topic, &counters);
        }
    }

    fn report_lag(&self, consumer: &BaseConsumer<MemberContext<F>>) {
        for ((topic, p), slot) in &self.tasks {
            if slot.restoring.is_some() {
                continue;
            }
            if let Ok((_, high)) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(1)) {
                let committed = slot.task.committed_offset().unwrap_or(0);
                self.shared
                    .observer
                    .lag(topic, *p, (high - committed).max(0));
            }
            let stats = slot.task.store_stats();
            self.shared
                .observer
                .store(topic, *p, stats.entries, stats.bytes);
            for (store, stats) in slot.task.state_store_stats() {
                self.shared
                    .observer
                    .state_store(topic, *p, store, stats.entries, stats.bytes);
            }
        }
    }
}

/// Serves delivery reports until nothing is in flight (or `REQUEST_TIMEOUT` passes; the flush
/// that follows then reports what is still missing). rdkafka's `flush`, which
/// `commit_transaction` also calls, waits in 100 ms poll slices once the first check finds
/// messages in flight, so every commit took at least 100 ms; 1 ms steps let it start as soon as
/// the last report is in.
fn drain_deliveries(producer: &BaseProducer<DeliveryTracker>) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
}

/// Calls a transactional producer API again while it fails with a retriable error that
/// requires no abort (for `commit_transaction`, the documented way to resume a commit whose
/// outcome is not known yet), for up to [`TXN_RETRY_LIMIT`]. Serves delivery reports between
/// calls.
fn retry_while_retriable(
    producer: &BaseProducer<DeliveryTracker>,
    what: &'static str,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + TXN_RETRY_LIMIT;
    loop {
        let err = match call() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !is_resumable(&err) || Instant::now() >= deadline {
            return Err(err);
        }
        tracing::warn!(what, error = %err, "retriable transaction error; calling again");
        producer.poll(Duration::from_millis(100));
    }
}

/// Whether a transactional call failed with an error that is retried by calling it again
/// (not an abortable or fatal one).
fn is_resumable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(err) => {
            err.is_retriable() && !err.txn_requires_abort() && !err.is_fatal()
        }
        // `BaseProducer::commit_transaction` flushes first; a flush that timed out has not
        // started the commit, and the records still in flight either arrive or fail (then the
        // transaction requires an abort).
        KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => true,
        _ => false,
    }
}

/// Aborts the producer's transaction. librdkafka's abort purges the queued messages and then
/// waits for their delivery reports, which a `BaseProducer` only gets while polled: abort in
/// short resumable steps (a timed-out abort is retried by calling it again) and poll between.
fn abort_transaction(producer: &BaseProducer<DeliveryTracker>) -> Result<(), KafkaError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        producer.poll(Duration::ZERO);
        match producer.abort_transaction(Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

fn seek<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    p: i32,
    offset: Offset,
) -> Result<(), RuntimeError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, offset)
        .map_err(|e| RuntimeError::Kafka {
            during: "seek",
            source: e,
        })?;
    match consumer.seek_partitions(tpl, REQUEST_TIMEOUT) {
        Ok(res) => {
            if let Some(e) = res.elements().iter().find_map(|e| e.error().err()) {
                return Err(RuntimeError::Kafka {
                    during: "seek",
                    source: e,
                });
            }
            Ok(())
        }
        Err(e) => Err(RuntimeError::Kafka {
            during: "seek",
            source: e,
        }),
    }
}

/// Whether a restoring task's changelog partitions are all read to their ends.
enum AtEnd {
    Yes,
    /// A changelog's read_committed end is beyond the position (its `end` was updated).
    Behind,
    /// A transaction is open on a changelog partition (high watermark beyond the stable end).
    OpenTransaction {
        changelog: String,
        lso: i64,
        hw: i64,
    },
}

/// Asks the broker for each changelog partition's ends (`restore`: read_committed, the last
/// stable offset; `uncommitted`: the high watermark) and compares them with the positions
/// `pos`; updates each part's `end`.
fn changelogs_at_end(
    (restore, uncommitted): (&BaseConsumer<LogContext>, &BaseConsumer<LogContext>),
    changelogs: &[String],
    partition: i32,
    pos: &[i64],
    parts: &mut [ChangelogRestore],
) -> Result<AtEnd, RuntimeError> {
    for ((changelog, pos), part) in changelogs.iter().zip(pos).zip(parts.iter_mut()) {
        let (_, lso) = changelog_watermarks(restore, changelog, partition)?;
        part.end = lso;
        if *pos < lso {
            return Ok(AtEnd::Behind);
        }
        let (_, hw) = changelog_watermarks(uncommitted, changelog, partition)?;
        if hw > lso {
            return Ok(AtEnd::OpenTransaction {
                changelog: changelog.clone(),
                lso,
                hw,
            });
        }
    }
    Ok(AtEnd::Yes)
}

/// The (low, end) watermarks of a changelog partition: with the read_committed restore
/// consumer the end is the last stable offset, with the read_uncommitted watermark client the
/// high watermark.
fn changelog_watermarks(
    client: &BaseConsumer<LogContext>,
    changelog: &str,
    partition: i32,
) -> Result<(i64, i64), RuntimeError> {
    client
        .fetch_watermarks(changelog, partition, REQUEST_TIMEOUT)
        .map_err(|e| RuntimeError::Kafka {
            during: "reading changelog watermarks",
            source: e,
        })
}

/// The group's committed offset of an input partition (`None` if none). With
/// `isolation.level=read_committed` librdkafka asks for stable offsets: the broker answers only
/// once no open transaction holds offsets for the partition.
fn committed_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    key: &TaskKey,
) -> Result<Option<i64>, RuntimeError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    let committed = consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map_err(|e| RuntimeError::Kafka {
            during: "reading committed offsets",
            source: e,
        })?;
    Ok(committed
        .find_partition(&key.0, key.1)
        .and_then(|e| e.offset().to_raw())
        .filter(|o| *o >= 0))
}

fn pause<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, p: i32) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(topic, partition = p, error = %e, "pause failed");
    }
}
