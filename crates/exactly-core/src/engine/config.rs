//! What the engine of one stream thread needs to know, and the topic names derived from it.

use crate::task::TaskConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Kafka transactions (EOS v2): outputs, changelog and offsets commit atomically.
    #[default]
    ExactlyOnce,
    /// No transactions: flush outputs, then apply IDs to the store, then commit offsets.
    /// A crash between flush and store write can duplicate.
    AtLeastOnce,
}

/// Which copies of a message ID are recognised as duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupScope {
    /// Within an input partition (default): resends with the same key land in the same
    /// partition, so this catches producer retries and replays at no extra cost.
    #[default]
    Partition,
    /// Across the partitions of an input topic: records are first repartitioned by message
    /// ID through `{app}-{input}-by-id`, so copies of an ID with different keys (different
    /// partitions) reach the same task. Costs one more write and read of every record and one
    /// more commit interval of latency (docs/state.md).
    Global,
}

/// Where a trusted dedup store's restore starts reading its changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreFrom {
    /// From the store's checkpoint: only the tail the store has not applied (default; right on
    /// Apache Kafka, whose read_committed fetches are correct from any offset).
    #[default]
    Checkpoint,
    /// From the changelog's start, unless nothing but a transaction marker follows the
    /// checkpoint (then there is nothing to read); state stores are always wiped and replayed
    /// whole. For brokers whose read_committed fetches that start after an aborted transaction
    /// skip committed records (the local noida-db test broker): replaying IDs the store holds
    /// changes nothing.
    Start,
}

/// Where a task starts when its input partition has no committed offset although its restored
/// dedup store holds committed message IDs, i.e. it processed input before and the group's
/// offsets are gone (expired after `offsets.retention.minutes`, or deleted). A partition
/// without committed offset whose store holds no ID (never committed anything) always starts
/// at the beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Refuse to start the task: the thread stops with an error that says what happened and
    /// how to choose (default).
    #[default]
    Fail,
    /// Reprocess the input from its start: IDs still within the dedup retention are dropped,
    /// older ones are processed again.
    Earliest,
    /// Skip to the input's end (its last stable offset): records not yet processed are
    /// skipped.
    Latest,
}

/// Settings of one stream thread's engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Application id: the consumer group and the prefix of internal topics.
    pub app_id: String,
    /// Index of the stream thread in its instance.
    pub thread: usize,
    /// The producer's `transactional.id` (`{app}-{instance}-{thread}`).
    pub transactional_id: String,
    /// Processing guarantee.
    pub guarantee: Guarantee,
    /// Dedup scope.
    pub dedup_scope: DedupScope,
    /// Input topics.
    pub inputs: Vec<String>,
    /// Partition count of each input topic (the repartition topic of the global scope has as
    /// many).
    pub input_partitions: BTreeMap<String, i32>,
    /// A transaction is committed once it is this old ...
    pub commit_interval: Duration,
    /// ... or holds this many input records.
    pub max_batch_records: usize,
    /// `transaction.timeout.ms`: the coordinator aborts a transaction open for longer.
    pub transaction_timeout: Duration,
    /// After the producer was fenced, how long the group consumer is polled for a fence of its
    /// own (`FENCED_INSTANCE_ID`: a newer process runs with this instance id, so this one is a
    /// zombie) before a new producer is made. About two heartbeat intervals.
    pub fence_check: Duration,
    /// How long a transactional call that keeps failing retriably is called again before
    /// the engine gives up on it.
    pub txn_retry_limit: Duration,
    /// How often running tasks expire IDs (and state entries) older than their retention.
    pub expiry_interval: Duration,
    /// How often the records of repartition topics (global dedup scope) that the tasks
    /// reading them have committed past are deleted (DeleteRecords; Kafka Streams'
    /// `repartition.purge.interval.ms`).
    pub purge_interval: Duration,
    /// Where a trusted store's restore starts.
    pub restore_from: RestoreFrom,
    /// Where a task whose committed offset is gone starts (exactly-once mode; in at-least-once
    /// mode the changelog can run ahead of the offsets, so such a task starts at the
    /// beginning).
    pub offset_reset: OffsetReset,
    /// Task settings.
    pub task: Arc<TaskConfig>,
}

impl EngineConfig {
    /// A config with defaults for thread 0 of instance `0` of `app_id` reading `inputs`.
    pub fn new(app_id: impl Into<String>, inputs: Vec<String>) -> Self {
        let app_id = app_id.into();
        Self {
            transactional_id: transactional_id(&app_id, "0", 0),
            app_id,
            thread: 0,
            guarantee: Guarantee::ExactlyOnce,
            dedup_scope: DedupScope::Partition,
            inputs,
            input_partitions: BTreeMap::new(),
            commit_interval: Duration::from_millis(100),
            max_batch_records: 10_000,
            transaction_timeout: Duration::from_secs(10),
            fence_check: Duration::from_secs(7),
            txn_retry_limit: Duration::from_secs(60),
            expiry_interval: Duration::from_secs(60),
            purge_interval: Duration::from_secs(30),
            restore_from: RestoreFrom::Checkpoint,
            offset_reset: OffsetReset::Fail,
            task: Arc::new(TaskConfig::default()),
        }
    }

    /// Whether this is the exactly-once mode.
    pub fn exactly_once(&self) -> bool {
        self.guarantee == Guarantee::ExactlyOnce
    }

    /// The topics whose tasks dedup and run the processor.
    pub fn task_topics(&self) -> Vec<String> {
        task_topics(&self.app_id, self.dedup_scope, &self.inputs)
    }

    /// The changelog topics of a task of `topic`: the dedup changelog, then one per state
    /// store in declaration order. None for a repartitioning task.
    pub fn changelogs_of(&self, topic: &str) -> Vec<String> {
        if self.repartitions(topic) {
            return Vec::new();
        }
        let mut out = vec![changelog_topic(&self.app_id, topic)];
        out.extend(
            self.task
                .stores
                .iter()
                .map(|s| crate::state::state_changelog_topic(&self.app_id, topic, &s.name)),
        );
        out
    }

    /// Whether `topic` is a repartition topic of this app (read by stage 2 of the global
    /// dedup scope).
    pub fn is_repartition_topic(&self, topic: &str) -> bool {
        self.dedup_scope == DedupScope::Global
            && self
                .inputs
                .iter()
                .any(|i| repartition_topic(&self.app_id, i) == topic)
    }

    /// Whether tasks of `topic` repartition (stage 1 of the global dedup scope).
    pub fn repartitions(&self, topic: &str) -> bool {
        self.dedup_scope == DedupScope::Global && self.inputs.iter().any(|i| i == topic)
    }
}

/// `transactional.id` of a stream thread: `{app}-{instance}-{thread}`.
pub fn transactional_id(app_id: &str, instance_id: &str, thread: usize) -> String {
    format!("{app_id}-{instance_id}-{thread}")
}

/// The dedup changelog topic of an input topic: `{app}-{input}-dedup-changelog`.
pub fn changelog_topic(app_id: &str, input: &str) -> String {
    format!("{app_id}-{input}-dedup-changelog")
}

/// The repartition topic of an input with `dedup.scope = "global"`: `{app}-{input}-by-id`.
pub fn repartition_topic(app_id: &str, input: &str) -> String {
    format!("{app_id}-{input}-by-id")
}

/// Default dead-letter topic of an app: `{app}-dlq`.
pub fn default_dead_letter_topic(app_id: &str) -> String {
    format!("{app_id}-dlq")
}

/// The topics whose tasks dedup and run the processor: the inputs, or with the global dedup
/// scope their repartition topics.
pub fn task_topics(app_id: &str, scope: DedupScope, inputs: &[String]) -> Vec<String> {
    match scope {
        DedupScope::Partition => inputs.to_vec(),
        DedupScope::Global => inputs
            .iter()
            .map(|i| repartition_topic(app_id, i))
            .collect(),
    }
}

/// The topics the group subscribes to: the inputs, plus the repartition topics with the
/// global dedup scope.
pub fn subscribed_topics(app_id: &str, scope: DedupScope, inputs: &[String]) -> Vec<String> {
    let mut topics = inputs.to_vec();
    if scope == DedupScope::Global {
        topics.extend(task_topics(app_id, scope, inputs));
    }
    topics
}
