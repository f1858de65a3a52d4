//! The per-task state machine of the exactly-once protocol (DESIGN.md, "The exactly-once
//! protocol"), independent of Kafka and of the store engine.
//!
//! A runtime drives a [`Task`] through `Restoring → Running → Closed`:
//!
//! 1. [`Task::restore_plan`] checks the store's checkpoint against the changelog partition and
//!    says where to replay from (wiping the store when it cannot be trusted);
//!    [`Task::restore_records`] applies changelog records; [`Task::restore_complete`] starts the
//!    processor.
//! 2. [`Task::handle_batch`] dedups each record against the uncommitted overlay, then the store;
//!    runs the processor; and hands outputs, changelog records and dead letters to the
//!    transaction's [`TxnWriter`]. IDs are only *staged* in the overlay.
//! 3. Right before the commit, [`Task::flush`] runs the processor's pre-commit hook (external
//!    sinks commit there, before Kafka does).
//! 4. After the transaction committed, [`Task::on_committed`] applies the overlay and the
//!    changelog checkpoint to the store in one atomic batch. Invariant: the store is never
//!    ahead of the committed changelog.
//! 5. After an abort, [`Task::on_aborted`] drops the overlay, tells the processor to discard
//!    its buffered effects, and says where to rewind.

use crate::changelog::{decode_entry, encode_entry_into};
use crate::clock::Clock;
use crate::error::{ErrorPolicy, ProcessError, RetryPolicy, TaskError};
use crate::id::{IdPolicy, InvalidId, InvalidIdPolicy};
use crate::processor::{Context, FlushContext, InitContext, Processor};
use crate::record::{Output, Record, RecordKind, TaskId};
use crate::state::{decode_state_value, KvStore, StateSlot, StoreCounters, StoreSpec, TaskStores};
use crate::store::{
    ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError, StoreStats,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Default dedup retention: 7 days.
pub const DEFAULT_DEDUP_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Header names written on dead-letter records.
pub mod dlq_headers {
    /// Human-readable error.
    pub const ERROR: &str = "exactly.error";
    /// Stable error label (`processor_error`, `retries_exhausted`, `panic`, `missing_id`, ...).
    pub const ERROR_KIND: &str = "exactly.error.kind";
    /// Source topic.
    pub const SOURCE_TOPIC: &str = "exactly.source.topic";
    /// Source partition (decimal).
    pub const SOURCE_PARTITION: &str = "exactly.source.partition";
    /// Source offset (decimal).
    pub const SOURCE_OFFSET: &str = "exactly.source.offset";
}

/// Header names a repartitioning task adds to the records it forwards.
pub mod repartition_headers {
    /// The input topic the record was read from.
    pub const SOURCE_TOPIC: &str = "exactly.repartition.source.topic";
    /// Its input partition (decimal).
    pub const SOURCE_PARTITION: &str = "exactly.repartition.source.partition";
    /// Its input offset (decimal).
    pub const SOURCE_OFFSET: &str = "exactly.repartition.source.offset";
}

/// Where a repartitioning task forwards to.
#[derive(Debug, Clone)]
struct Repartition {
    topic: String,
    partitions: i32,
}

/// The partition of the repartition topic that a message ID goes to: 64-bit FNV-1a of the ID
/// bytes, modulo `partitions`. Stable across processes, versions and platforms (it is part of
/// the on-topic layout: changing it would split an ID's copies across tasks).
pub fn id_partition(id: &[u8], partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % partitions.max(1) as u64) as i32
}

/// Settings shared by the tasks of an app.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Message-ID extraction and validation.
    pub ids: IdPolicy,
    /// Backoff for `ProcessError::Retry`.
    pub retry: RetryPolicy,
    /// What happens when retries are exhausted or the processor panics.
    pub on_error: ErrorPolicy,
    /// How long an ID is remembered (and the changelog's `retention.ms`).
    pub dedup_retention_ms: i64,
    /// Dead-letter topic; `None` makes every dead-letter decision a task error.
    pub dead_letter_topic: Option<String>,
    /// State stores every task gets (see [`crate::state`]).
    pub stores: Vec<StoreSpec>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            ids: IdPolicy::default(),
            retry: RetryPolicy::default(),
            on_error: ErrorPolicy::default(),
            dedup_retention_ms: DEFAULT_DEDUP_RETENTION_MS,
            dead_letter_topic: None,
            stores: Vec::new(),
        }
    }
}

/// Receives the records of the open transaction. The Kafka runtime sends them with its
/// transactional producer; the `TestDriver` appends them to its simulated log.
pub trait TxnWriter {
    /// Sends `record` in the current transaction.
    fn send(&mut self, kind: RecordKind, record: &Output) -> Result<(), String>;
}

/// Lifecycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Replaying the changelog into the store; the input partition is paused.
    Restoring,
    /// Processing records.
    Running,
    /// Closed; the processor's `close` has run.
    Closed,
}

impl TaskState {
    fn name(self) -> &'static str {
        match self {
            Self::Restoring => "restoring",
            Self::Running => "running",
            Self::Closed => "closed",
        }
    }
}

/// Why a store was wiped before a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WipeReason {
    /// The store reported itself corrupt.
    Corrupt(String),
    /// Its checkpoint names another changelog topic or partition.
    WrongIdentity {
        /// What the checkpoint says.
        found: String,
        /// What this task expects.
        expected: String,
    },
    /// Its checkpoint is beyond the end of the changelog (the changelog was recreated or
    /// the store belongs to an older cluster).
    CheckpointBeyondEnd {
        /// Checkpoint offset.
        checkpoint: i64,
        /// Changelog end offset.
        end: i64,
    },
}

impl WipeReason {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Corrupt(_) => "corrupt",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::CheckpointBeyondEnd { .. } => "checkpoint_beyond_end",
        }
    }
}

impl std::fmt::Display for WipeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(why) => write!(f, "store is corrupt ({why})"),
            Self::WrongIdentity { found, expected } => {
                write!(
                    f,
                    "store was built from changelog {found}, expected {expected}"
                )
            }
            Self::CheckpointBeyondEnd { checkpoint, end } => write!(
                f,
                "store checkpoint {checkpoint} is beyond the changelog end {end}"
            ),
        }
    }
}

/// Where to replay the changelog from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// First changelog offset to read.
    pub from: i64,
    /// Set when the store was wiped first (logged and counted by the runtime).
    pub wiped: Option<WipeReason>,
}

/// Counters since the task was created; runtimes turn them into metrics with
/// [`TaskCounters::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounters {
    /// Records handed to `handle_batch`.
    pub consumed: u64,
    /// Records processed successfully (each attempt that reached a new ID; aborted batches
    /// are counted again when reprocessed).
    pub processed: u64,
    /// Records dropped as duplicates.
    pub duplicates: u64,
    /// Outputs sent.
    pub outputs: u64,
    /// Dead letters by reason label.
    pub dead_lettered: HashMap<&'static str, u64>,
    /// Processor errors by kind (`retry`, `dead_letter`, `fatal`, `panic`).
    pub processor_errors: HashMap<&'static str, u64>,
    /// Records processed without dedup (ID policy `process`).
    pub without_dedup: u64,
    /// Changelog records replayed during restore.
    pub restored: u64,
    /// IDs removed by TTL expiry.
    pub expired: u64,
    /// Records forwarded to the repartition topic (stage 1 of `dedup.scope = "global"`).
    pub repartitioned: u64,
    /// State store counters by store name.
    pub stores: std::collections::BTreeMap<String, StoreCounters>,
}

impl TaskCounters {
    /// Returns the counters and resets them.
    pub fn take(&mut self) -> TaskCounters {
        std::mem::take(self)
    }

    /// The counters of state store `store` (created at zero; no allocation once it exists).
    pub fn store_mut(&mut self, store: &str) -> &mut StoreCounters {
        if !self.stores.contains_key(store) {
            self.stores
                .insert(store.to_owned(), StoreCounters::default());
        }
        self.stores.get_mut(store).expect("inserted above")
    }

    /// Adds `other` to these counters.
    pub fn merge(&mut self, other: TaskCounters) {
        self.consumed += other.consumed;
        self.processed += other.processed;
        self.duplicates += other.duplicates;
        self.outputs += other.outputs;
        for (k, v) in other.dead_lettered {
            *self.dead_lettered.entry(k).or_default() += v;
        }
        for (k, v) in other.processor_errors {
            *self.processor_errors.entry(k).or_default() += v;
        }
        self.without_dedup += other.without_dedup;
        self.restored += other.restored;
        self.expired += other.expired;
        self.repartitioned += other.repartitioned;
        for (name, c) in other.stores {
            let mine = self.stores.entry(name).or_default();
            mine.writes += c.writes;
            mine.restored += c.restored;
            mine.expired += c.expired;
        }
    }
}

/// How one record's processing ended.
enum Attempt {
    Done,
    DeadLetter { kind: &'static str, reason: String },
}

/// One task: a processor, its dedup store, and the uncommitted overlay of staged IDs.
pub struct Task<P: Processor, S: DedupStore> {
    id: TaskId,
    changelog_topic: String,
    state: TaskState,
    /// `None` for a repartitioning task, which never runs the processor.
    processor: Option<P>,
    /// Set for a repartitioning task (`dedup.scope = "global"`, stage 1).
    repartition: Option<Repartition>,
    store: S,
    config: std::sync::Arc<TaskConfig>,
    /// IDs handled in the open transaction (`StagedIds`): checked before the store, applied
    /// to it only after commit.
    overlay: HashMap<Vec<u8>, SeenEntry>,
    /// Next input offset of the last committed transaction (`None`: the group has none yet).
    committed_offset: Option<i64>,
    /// Next input offset after the last record handled in the open transaction.
    pending_offset: Option<i64>,
    counters: TaskCounters,
    outputs: Vec<Output>,
    changelog_record: Output,
    dead_letter_count: u64,
    stores: TaskStores,
}

impl<P: Processor, S: DedupStore> std::fmt::Debug for Task<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("staged_ids", &self.overlay.len())
            .field("committed_offset", &self.committed_offset)
            .field("pending_offset", &self.pending_offset)
            .finish()
    }
}

impl<P: Processor, S: DedupStore> Task<P, S> {
    /// A task in state `Restoring`. `changelog_topic` is the dedup changelog of the input
    /// topic; its partition is the task's partition.
    pub fn new(
        id: TaskId,
        changelog_topic: impl Into<String>,
        processor: P,
        store: S,
        config: std::sync::Arc<TaskConfig>,
    ) -> Self {
        Self::with_role(
            id,
            changelog_topic.into(),
            Some(processor),
            None,
            store,
            config,
        )
    }

    /// A repartitioning task (stage 1 of `dedup.scope = "global"`): it forwards each record
    /// to partition [`id_partition`]`(id, partitions)` of `topic` (key, value, timestamp and
    /// headers kept, plus the [`repartition_headers`]) in the open transaction, so that every
    /// copy of an ID reaches the same task of `topic`, which dedups and processes it.
    /// No processor, no dedup, no changelog: the transaction that carries the input offset
    /// carries the forwarded records, so each input record is forwarded exactly once.
    /// Records with an invalid ID follow the ID policy here (dead letter, fail; `process`
    /// forwards them to the input's partition number, where they are processed without dedup).
    pub fn repartitioner(
        id: TaskId,
        topic: impl Into<String>,
        partitions: i32,
        store: S,
        config: std::sync::Arc<TaskConfig>,
    ) -> Self {
        let repartition = Repartition {
            topic: topic.into(),
            partitions: partitions.max(1),
        };
        Self::with_role(id, String::new(), None, Some(repartition), store, config)
    }

    fn with_role(
        id: TaskId,
        changelog_topic: String,
        processor: Option<P>,
        repartition: Option<Repartition>,
        store: S,
        config: std::sync::Arc<TaskConfig>,
    ) -> Self {
        let changelog_record = Output::to(changelog_topic.clone()).partition(id.partition);
        Self {
            id,
            changelog_topic,
            state: TaskState::Restoring,
            processor,
            repartition,
            store,
            config,
            overlay: HashMap::new(),
            committed_offset: None,
            pending_offset: None,
            counters: TaskCounters::default(),
            outputs: Vec::new(),
            changelog_record,
            dead_letter_count: 0,
            stores: TaskStores::default(),
        }
    }

    /// Adds a state store (before the restore starts): `backend` holds its committed entries,
    /// `changelog` is its changelog topic (the task's partition). Add the stores of
    /// [`TaskConfig::stores`] in their order.
    pub fn add_store(
        &mut self,
        spec: StoreSpec,
        changelog: impl Into<String>,
        backend: Box<dyn KvStore>,
    ) -> Result<(), TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("add_store"));
        }
        self.stores
            .slots
            .push(StateSlot::new(spec, changelog.into(), backend));
        Ok(())
    }

    /// Size counters of each state store: `(name, stats)`.
    pub fn state_store_stats(&self) -> Vec<(&str, StoreStats)> {
        self.stores
            .slots
            .iter()
            .map(|s| (s.spec.name.as_str(), s.backend.stats()))
            .collect()
    }

    /// The task id.
    pub fn id(&self) -> &TaskId {
        &self.id
    }
    /// Current state.
    pub fn state(&self) -> TaskState {
        self.state
    }
    /// The dedup changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.changelog_topic
    }
    /// The store (read-only), e.g. for stats.
    pub fn store(&self) -> &S {
        &self.store
    }
    /// Store size counters.
    pub fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }
    /// Counters (take them with [`TaskCounters::take`]).
    pub fn counters_mut(&mut self) -> &mut TaskCounters {
        &mut self.counters
    }
    /// Number of IDs staged in the open transaction.
    pub fn staged_ids(&self) -> usize {
        self.overlay.len()
    }
    /// Next input offset of the last committed transaction.
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed_offset
    }
    /// The offset to commit with the open transaction, if any record was handled in it.
    pub fn offset_to_commit(&self) -> Option<i64> {
        self.pending_offset
    }

    fn wrong_state(&self, what: &'static str) -> TaskError {
        TaskError::WrongState {
            task: self.id.to_string(),
            what,
            state: self.state.name(),
        }
    }

    fn store_err(&self, source: StoreError) -> TaskError {
        TaskError::Store {
            task: self.id.to_string(),
            source,
        }
    }

    fn expected_identity(&self) -> String {
        format!("{}-{}", self.changelog_topic, self.id.partition)
    }

    /// Decides where to replay the changelog from, given the changelog partition's low and
    /// end offsets (end = what a read_committed consumer can reach). Wipes the store when it
    /// cannot be trusted: corrupt, built from another changelog, or ahead of the changelog.
    pub fn restore_plan(&mut self, low: i64, end: i64) -> Result<RestorePlan, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_plan"));
        }
        let wiped = match self.store.checkpoint() {
            Err(StoreError::Corrupt(why)) => Some(WipeReason::Corrupt(why)),
            Err(e) => return Err(self.store_err(e)),
            Ok(None) => None,
            Ok(Some(cp))
                if cp.topic != self.changelog_topic || cp.partition != self.id.partition =>
            {
                Some(WipeReason::WrongIdentity {
                    found: format!("{}-{}", cp.topic, cp.partition),
                    expected: self.expected_identity(),
                })
            }
            Ok(Some(cp)) if cp.next_offset > end => Some(WipeReason::CheckpointBeyondEnd {
                checkpoint: cp.next_offset,
                end,
            }),
            Ok(Some(cp)) => {
                self.wipe_state_stores()?;
                return Ok(RestorePlan {
                    from: cp.next_offset.max(low),
                    wiped: None,
                });
            }
        };
        if let Some(reason) = &wiped {
            tracing::warn!(task = %self.id, %reason, "wiping dedup store; restoring it from the changelog");
            self.store.wipe().map_err(|e| self.store_err(e))?;
        }
        self.wipe_state_stores()?;
        Ok(RestorePlan { from: low, wiped })
    }

    /// State stores are always restored from the start of their changelogs: a key whose
    /// tombstone compaction removed would otherwise survive in a store that missed the delete.
    fn wipe_state_stores(&mut self) -> Result<(), TaskError> {
        for i in 0..self.stores.slots.len() {
            let slot = &mut self.stores.slots[i];
            if let Err(e) = slot.backend.wipe() {
                let name = slot.spec.name.clone();
                return Err(self.state_err(&name, e));
            }
        }
        Ok(())
    }

    fn state_err(&self, store: &str, source: StoreError) -> TaskError {
        TaskError::Store {
            task: format!("{} (state store {store:?})", self.id),
            source,
        }
    }

    /// Applies replayed records `(offset, key, value)` of a state store's changelog (from its
    /// start, after [`restore_plan`](Self::restore_plan) wiped the store) in one batch whose
    /// checkpoint is the offset after the last one. Entries older than the store's TTL are
    /// skipped. A value that does not decode is an error, as for the dedup changelog.
    pub fn restore_state_records<'r>(
        &mut self,
        changelog: &str,
        records: impl IntoIterator<Item = (i64, &'r [u8], Option<&'r [u8]>)>,
        clock: &dyn Clock,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_state_records"));
        }
        let Some(i) = self
            .stores
            .slots
            .iter()
            .position(|s| s.changelog == changelog)
        else {
            return Err(TaskError::WrongState {
                task: self.id.to_string(),
                what: "restore_state_records for a changelog of no state store of this task",
                state: self.state.name(),
            });
        };
        let slot = &self.stores.slots[i];
        let cutoff = slot.spec.cutoff(clock.now_ms());
        let mut writes = Vec::new();
        let mut last = None;
        let mut bad = None;
        for (offset, key, value) in records {
            last = Some(offset);
            let write = match value {
                None => None,
                Some(v) => match decode_state_value(v) {
                    Ok((ts, _)) if ts < cutoff => None,
                    Ok(_) => Some(v.to_vec()),
                    Err(e) => {
                        bad = Some(format!(
                            "changelog {changelog}-{} record at offset {offset}: {e}",
                            self.id.partition
                        ));
                        break;
                    }
                },
            };
            writes.push((key.to_vec(), write));
        }
        let name = slot.spec.name.clone();
        if let Some(why) = bad {
            return Err(self.state_err(&name, StoreError::Corrupt(why)));
        }
        let Some(last) = last else { return Ok(0) };
        let checkpoint = ChangelogCheckpoint {
            topic: changelog.to_owned(),
            partition: self.id.partition,
            next_offset: last + 1,
        };
        let n = writes.len();
        let result = self.stores.slots[i].backend.apply(&writes, &checkpoint);
        result.map_err(|e| self.state_err(&name, e))?;
        self.counters.store_mut(&name).restored += n as u64;
        Ok(n)
    }

    /// Applies replayed changelog records `(offset, key, value)` in one store batch whose
    /// checkpoint is the offset after the last one. Entries older than the retention are
    /// skipped. A record that does not decode is an error (the changelog is ours; skipping it
    /// could let a duplicate through).
    pub fn restore_records<'r>(
        &mut self,
        records: impl IntoIterator<Item = (i64, &'r [u8], Option<&'r [u8]>)>,
        clock: &dyn Clock,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_records"));
        }
        let cutoff = clock.now_ms() - self.config.dedup_retention_ms;
        let mut entries = Vec::new();
        let mut last = None;
        for (offset, key, value) in records {
            last = Some(offset);
            let Some(value) = value else { continue };
            let entry = decode_entry(value).map_err(|e| {
                self.store_err(StoreError::Corrupt(format!(
                    "changelog {} record at offset {offset}: {e}",
                    self.expected_identity()
                )))
            })?;
            if entry.first_seen_ms >= cutoff {
                entries.push((key.to_vec(), entry));
            }
        }
        let Some(last) = last else { return Ok(0) };
        let n = entries.len();
        let batch = StoreBatch {
            entries,
            checkpoint: ChangelogCheckpoint {
                topic: self.changelog_topic.clone(),
                partition: self.id.partition,
                next_offset: last + 1,
            },
        };
        self.store.apply(&batch).map_err(|e| self.store_err(e))?;
        self.counters.restored += n as u64;
        Ok(n)
    }

    /// Ends the restore: records the group's committed input offset (`None` if the group
    /// has none) and calls the processor's `init`. The task is `Running` afterwards.
    pub fn restore_complete(&mut self, committed_offset: Option<i64>) -> Result<(), TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_complete"));
        }
        self.committed_offset = committed_offset;
        self.pending_offset = None;
        self.overlay.clear();
        self.stores.drop_staged();
        let Some(processor) = self.processor.as_mut() else {
            self.state = TaskState::Running;
            return Ok(());
        };
        let id = &self.id;
        let result = catch_unwind(AssertUnwindSafe(|| {
            processor.init(&mut InitContext::new(id))
        }));
        match result {
            Ok(Ok(())) => {
                self.state = TaskState::Running;
                Ok(())
            }
            Ok(Err(e)) => Err(TaskError::Processor {
                task: self.id.to_string(),
                offset: committed_offset.unwrap_or(0),
                reason: format!("init failed: {e}"),
            }),
            Err(panic) => Err(TaskError::Processor {
                task: self.id.to_string(),
                offset: committed_offset.unwrap_or(0),
                reason: format!("init panicked: {}", panic_message(&panic)),
            }),
        }
    }

    /// Handles a batch of records of this task's partition, in offset order, inside the open
    /// transaction. On `Err` the runtime must abort the transaction.
    pub fn handle_batch(
        &mut self,
        records: &[Record<'_>],
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("handle_batch"));
        }
        if records.is_empty() {
            return Ok(());
        }
        if let Some(repartition) = &self.repartition {
            let repartition = repartition.clone();
            return self.forward_batch(&repartition, records, writer);
        }
        let ids: Vec<Result<Cow<'_, [u8]>, InvalidId>> =
            records.iter().map(|r| self.config.ids.id_of(r)).collect();

        // One batched store lookup for the IDs not already staged (most lookups miss; a
        // RocksDB store answers them from bloom filters).
        let mut lookup_index = Vec::with_capacity(ids.len());
        let mut keys: Vec<&[u8]> = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if let Ok(id) = id {
                if !self.overlay.contains_key(id.as_ref()) {
                    lookup_index.push(i);
                    keys.push(id.as_ref());
                }
            }
        }
        let mut found = Vec::with_capacity(keys.len());
        self.store
            .get_many(&keys, &mut found)
            .map_err(|e| self.store_err(e))?;
        let mut in_store = vec![false; records.len()];
        let cutoff = clock.now_ms() - self.config.dedup_retention_ms;
        for (slot, entry) in lookup_index.iter().zip(found) {
            // An expired entry may still be on disk until compaction: it does not count.
            in_store[*slot] = entry.is_some_and(|e| e.first_seen_ms >= cutoff);
        }

        for (i, record) in records.iter().enumerate() {
            self.counters.consumed += 1;
            match &ids[i] {
                Ok(id) => {
                    if in_store[i] || self.overlay.contains_key(id.as_ref()) {
                        self.counters.duplicates += 1;
                    } else {
                        self.handle_new(record, Some(id.as_ref()), clock, writer)?;
                        self.stage_id(id.as_ref(), record.offset, clock, writer)?;
                    }
                }
                Err(invalid) => {
                    if self.on_invalid_id(record, *invalid, writer)? {
                        self.counters.without_dedup += 1;
                        self.handle_new(record, None, clock, writer)?;
                    }
                }
            }
            self.pending_offset = Some(record.offset + 1);
        }
        Ok(())
    }

    /// Applies the ID policy to a record without a valid ID: dead-letters it (`Ok(false)`),
    /// fails the task, or says to process it without dedup (`Ok(true)`).
    fn on_invalid_id(
        &mut self,
        record: &Record<'_>,
        invalid: InvalidId,
        writer: &mut dyn TxnWriter,
    ) -> Result<bool, TaskError> {
        match self.config.ids.on_invalid {
            InvalidIdPolicy::DeadLetter => {
                let reason = invalid.to_string();
                self.dead_letter(record, None, invalid.reason(), &reason, writer)?;
                Ok(false)
            }
            InvalidIdPolicy::Process => Ok(true),
            InvalidIdPolicy::Fail => Err(TaskError::InvalidId {
                task: self.id.to_string(),
                offset: record.offset,
                reason: invalid,
            }),
        }
    }

    /// Stage 1 of the global dedup scope: forwards each record to its ID's partition of the
    /// repartition topic.
    fn forward_batch(
        &mut self,
        repartition: &Repartition,
        records: &[Record<'_>],
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        for record in records {
            self.counters.consumed += 1;
            let partition = match self.config.ids.id_of(record) {
                Ok(id) => id_partition(&id, repartition.partitions),
                Err(invalid) => {
                    if !self.on_invalid_id(record, invalid, writer)? {
                        self.pending_offset = Some(record.offset + 1);
                        continue;
                    }
                    record.partition % repartition.partitions
                }
            };
            let mut out = Output::forward(repartition.topic.clone(), record)
                .header(repartition_headers::SOURCE_TOPIC, record.topic)
                .header(
                    repartition_headers::SOURCE_PARTITION,
                    record.partition.to_string(),
                )
                .header(
                    repartition_headers::SOURCE_OFFSET,
                    record.offset.to_string(),
                );
            out.partition = Some(partition);
            writer
                .send(RecordKind::Output, &out)
                .map_err(|reason| TaskError::Write {
                    task: self.id.to_string(),
                    reason,
                })?;
            self.counters.repartitioned += 1;
            self.pending_offset = Some(record.offset + 1);
        }
        Ok(())
    }

    /// Runs the processor on a new record (with retries) and sends its outputs, or
    /// dead-letters it.
    fn handle_new(
        &mut self,
        record: &Record<'_>,
        id: Option<&[u8]>,
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        let attempt = self.run_processor(record, id, clock);
        if let Some((store, source)) = self.stores.take_failure() {
            self.outputs.clear();
            self.stores.drop_pending();
            return Err(self.state_err(&store, source));
        }
        match attempt {
            Ok(Attempt::Done) => {
                self.counters.processed += 1;
                self.stage_state_writes(writer)?;
                for out in &self.outputs {
                    writer
                        .send(RecordKind::Output, out)
                        .map_err(|reason| TaskError::Write {
                            task: self.id.to_string(),
                            reason,
                        })?;
                }
                self.counters.outputs += self.outputs.len() as u64;
                self.outputs.clear();
                Ok(())
            }
            Ok(Attempt::DeadLetter { kind, reason }) => {
                self.outputs.clear();
                self.stores.drop_pending();
                self.dead_letter(record, id, kind, &reason, writer)
            }
            Err(e) => {
                self.outputs.clear();
                self.stores.drop_pending();
                Err(e)
            }
        }
    }

    /// Sends the successful attempt's state writes as changelog records in the open
    /// transaction and stages them (applied to the stores after the commit).
    fn stage_state_writes(&mut self, writer: &mut dyn TxnWriter) -> Result<(), TaskError> {
        for slot in &mut self.stores.slots {
            if slot.pending.is_empty() {
                continue;
            }
            self.counters.store_mut(&slot.spec.name).writes += slot.pending.len() as u64;
            let mut rec = Output::to(slot.changelog.clone()).partition(self.id.partition);
            for (key, value) in std::mem::take(&mut slot.pending) {
                rec.key = Some(key);
                rec.value = value;
                writer
                    .send(RecordKind::Changelog, &rec)
                    .map_err(|reason| TaskError::Write {
                        task: self.id.to_string(),
                        reason,
                    })?;
                slot.staged
                    .insert(rec.key.take().expect("set above"), rec.value.take());
            }
        }
        Ok(())
    }

    fn run_processor(
        &mut self,
        record: &Record<'_>,
        id: Option<&[u8]>,
        clock: &dyn Clock,
    ) -> Result<Attempt, TaskError> {
        let retry: RetryPolicy = self.config.retry;
        let mut attempt = 1u32;
        loop {
            self.outputs.clear();
            self.stores.drop_pending();
            let mut ctx = Context::new(&self.id, record, id, &mut self.outputs)
                .with_stores(&mut self.stores, clock.now_ms());
            let processor = self
                .processor
                .as_mut()
                .expect("a processing task has a processor");
            let result = catch_unwind(AssertUnwindSafe(|| processor.process(record, &mut ctx)));
            let (kind, reason) = match result {
                Ok(Ok(())) => return Ok(Attempt::Done),
                Ok(Err(e @ ProcessError::Retry(_))) => {
                    self.count_error("retry");
                    if attempt < retry.max_attempts.max(1) {
                        clock.sleep(retry.backoff(attempt));
                        attempt += 1;
                        continue;
                    }
                    (
                        "retries_exhausted",
                        format!("{e} (gave up after {attempt} attempts)"),
                    )
                }
                Ok(Err(ProcessError::DeadLetter(reason))) => {
                    self.count_error("dead_letter");
                    return Ok(Attempt::DeadLetter {
                        kind: "processor_error",
                        reason,
                    });
                }
                Ok(Err(ProcessError::Fatal(reason))) => {
                    self.count_error("fatal");
                    return Err(TaskError::Processor {
                        task: self.id.to_string(),
                        offset: record.offset,
                        reason,
                    });
                }
                Err(panic) => {
                    self.count_error("panic");
                    (
                        "panic",
                        format!("processor panicked: {}", panic_message(&panic)),
                    )
                }
            };
            return match self.config.on_error {
                ErrorPolicy::DeadLetter => Ok(Attempt::DeadLetter { kind, reason }),
                ErrorPolicy::Fail => Err(TaskError::Processor {
                    task: self.id.to_string(),
                    offset: record.offset,
                    reason,
                }),
            };
        }
    }

    fn count_error(&mut self, kind: &'static str) {
        *self.counters.processor_errors.entry(kind).or_default() += 1;
    }

    /// Sends the record to the dead-letter topic with the error headers.
    fn dead_letter(
        &mut self,
        record: &Record<'_>,
        id: Option<&[u8]>,
        kind: &'static str,
        reason: &str,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        let Some(topic) = self.config.dead_letter_topic.as_deref() else {
            return Err(TaskError::NoDeadLetterTopic {
                task: self.id.to_string(),
                offset: record.offset,
                reason: reason.to_owned(),
            });
        };
        let _ = id;
        let mut out = Output::forward(topic, record)
            .header(dlq_headers::ERROR, reason)
            .header(dlq_headers::ERROR_KIND, kind)
            .header(dlq_headers::SOURCE_TOPIC, record.topic)
            .header(dlq_headers::SOURCE_PARTITION, record.partition.to_string())
            .header(dlq_headers::SOURCE_OFFSET, record.offset.to_string());
        // Keep the source partitioning (by key) unless there is no key: then the source
        // partition keeps dead letters of one task together.
        if record.key.is_none() {
            out.partition = None;
        }
        writer
            .send(RecordKind::DeadLetter, &out)
            .map_err(|reason| TaskError::Write {
                task: self.id.to_string(),
                reason,
            })?;
        *self.counters.dead_lettered.entry(kind).or_default() += 1;
        self.dead_letter_count += 1;
        tracing::warn!(task = %self.id, offset = record.offset, kind, reason, "record dead-lettered");
        Ok(())
    }

    /// Stages a handled ID: overlay plus changelog record in the open transaction.
    fn stage_id(
        &mut self,
        id: &[u8],
        source_offset: i64,
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        let entry = SeenEntry {
            first_seen_ms: clock.now_ms(),
            source_offset,
        };
        let rec = &mut self.changelog_record;
        let key = rec.key.get_or_insert_with(Vec::new);
        key.clear();
        key.extend_from_slice(id);
        encode_entry_into(&entry, rec.value.get_or_insert_with(Vec::new));
        writer
            .send(RecordKind::Changelog, rec)
            .map_err(|reason| TaskError::Write {
                task: self.id.to_string(),
                reason,
            })?;
        self.overlay.insert(id.to_vec(), entry);
        Ok(())
    }

    /// Called after the transaction committed. `next_offset(changelog)` is the offset after
    /// the last record this task wrote to that changelog topic (its partition) in the
    /// transaction (`None` if it wrote none); it is asked for the dedup changelog and for each
    /// state store's. Applies the staged IDs and state writes with their checkpoints, one
    /// atomic batch per store.
    ///
    /// On `Err` a store is behind its changelog (allowed) but the task cannot go on with it:
    /// the runtime must close the task and restore it.
    pub fn on_committed(
        &mut self,
        next_offset: &dyn Fn(&str) -> Option<i64>,
    ) -> Result<(), TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("on_committed"));
        }
        if let Some(next) = self.pending_offset.take() {
            self.committed_offset = Some(next);
        }
        self.apply_state_writes(next_offset)?;
        if self.overlay.is_empty() {
            return Ok(());
        }
        let Some(next_offset) = next_offset(&self.changelog_topic) else {
            return Err(TaskError::WrongState {
                task: self.id.to_string(),
                what: "on_committed without a changelog offset for staged IDs",
                state: self.state.name(),
            });
        };
        let batch = StoreBatch {
            entries: self.overlay.drain().collect(),
            checkpoint: ChangelogCheckpoint {
                topic: self.changelog_topic.clone(),
                partition: self.id.partition,
                next_offset,
            },
        };
        // Every overlay ID was looked up in the store (absent or expired) when it was staged,
        // and only this task writes the store.
        self.store
            .apply_unseen(&batch)
            .map_err(|e| self.store_err(e))
    }

    fn apply_state_writes(
        &mut self,
        next_offset: &dyn Fn(&str) -> Option<i64>,
    ) -> Result<(), TaskError> {
        for i in 0..self.stores.slots.len() {
            let slot = &mut self.stores.slots[i];
            if slot.staged.is_empty() {
                continue;
            }
            let name = slot.spec.name.clone();
            let Some(next) = next_offset(&slot.changelog) else {
                slot.staged.clear();
                return Err(TaskError::WrongState {
                    task: format!("{} (state store {name:?})", self.id),
                    what: "on_committed without a changelog offset for staged state writes",
                    state: self.state.name(),
                });
            };
            let writes: Vec<_> = std::mem::take(&mut slot.staged).into_iter().collect();
            let checkpoint = ChangelogCheckpoint {
                topic: slot.changelog.clone(),
                partition: self.id.partition,
                next_offset: next,
            };
            let result = slot.backend.apply(&writes, &checkpoint);
            result.map_err(|e| self.state_err(&name, e))?;
        }
        Ok(())
    }

    /// Runs the processor's pre-commit [`Processor::flush`] (external sinks commit here). The
    /// runtime calls it for every running task right before it commits the transaction; on
    /// `Err` it must abort the transaction instead. `ProcessError::Fatal` (or a panic with
    /// the error policy `fail`) is a fatal [`TaskError::Processor`]; anything else is a
    /// retriable [`TaskError::Flush`].
    pub fn flush(&mut self) -> Result<(), TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("flush"));
        }
        let mut ctx = FlushContext::new(&self.id, self.pending_offset);
        let Some(processor) = self.processor.as_mut() else {
            return Ok(());
        };
        let result = catch_unwind(AssertUnwindSafe(|| processor.flush(&mut ctx)));
        let offset = self.pending_offset.or(self.committed_offset).unwrap_or(0);
        let (kind, reason) = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(ProcessError::Fatal(reason))) => {
                return Err(TaskError::Processor {
                    task: self.id.to_string(),
                    offset,
                    reason: format!("flush failed: {reason}"),
                });
            }
            Ok(Err(e)) => (e.kind(), e.to_string()),
            Err(panic) => (
                "panic",
                format!("flush panicked: {}", panic_message(&panic)),
            ),
        };
        // Not counted as processor errors: the abort is counted by the runtime, and a sink
        // counts its own failures.
        if kind == "panic" && self.config.on_error == ErrorPolicy::Fail {
            return Err(TaskError::Processor {
                task: self.id.to_string(),
                offset,
                reason,
            });
        }
        Err(TaskError::Flush {
            task: self.id.to_string(),
            reason,
        })
    }

    /// Called after the transaction aborted: drops the staged IDs, tells the processor to
    /// discard what it buffered for the transaction ([`Processor::abort`]), and returns the
    /// offset to rewind the input to (`None`: the group has no committed offset; use the
    /// reset policy's start).
    pub fn on_aborted(&mut self) -> Option<i64> {
        self.overlay.clear();
        self.stores.drop_staged();
        self.pending_offset = None;
        if let (TaskState::Running, Some(processor)) = (self.state, self.processor.as_mut()) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| processor.abort())) {
                tracing::error!(task = %self.id, "processor abort panicked: {}", panic_message(&panic));
            }
        }
        self.committed_offset
    }

    /// Removes IDs older than the retention from the store.
    pub fn expire(&mut self, clock: &dyn Clock) -> Result<u64, TaskError> {
        let cutoff = clock.now_ms() - self.config.dedup_retention_ms;
        let n = self
            .store
            .expire_before(cutoff)
            .map_err(|e| self.store_err(e))?;
        self.counters.expired += n;
        self.expire_state(clock)?;
        Ok(n)
    }

    /// Removes state entries older than their store's TTL (they are invisible already). The
    /// deletes carry the store's current checkpoint: the changelog drops the same entries by
    /// its `retention.ms`, and a restore skips them.
    fn expire_state(&mut self, clock: &dyn Clock) -> Result<(), TaskError> {
        const CHUNK: usize = 10_000;
        for i in 0..self.stores.slots.len() {
            let slot = &mut self.stores.slots[i];
            if slot.spec.ttl.is_none() {
                continue;
            }
            let name = slot.spec.name.clone();
            let cutoff = slot.spec.cutoff(clock.now_ms());
            let checkpoint = match slot.backend.checkpoint() {
                Ok(Some(cp)) => cp,
                Ok(None) => continue,
                Err(e) => return Err(self.state_err(&name, e)),
            };
            let mut expired: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            let mut from = Vec::new();
            loop {
                expired.clear();
                let mut next = None;
                let scanned = slot.backend.scan(&from, None, &mut |k, v| {
                    if expired.len() == CHUNK {
                        next = Some(k.to_vec());
                        return false;
                    }
                    if decode_state_value(v).is_ok_and(|(ts, _)| ts < cutoff) {
                        expired.push((k.to_vec(), None));
                    }
                    true
                });
                if let Err(e) = scanned.and_then(|()| slot.backend.apply(&expired, &checkpoint)) {
                    return Err(self.state_err(&name, e));
                }
                self.counters.store_mut(&name).expired += expired.len() as u64;
                match next {
                    Some(k) => from = k,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Closes the task (calls the processor's `close` if it was running) and returns the
    /// store, whose files stay for a quick re-assignment. Staged IDs are dropped: the caller
    /// has committed or aborted the transaction before.
    pub fn close(mut self) -> S {
        if let (TaskState::Running, Some(processor)) = (self.state, self.processor.as_mut()) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| processor.close())) {
                tracing::error!(task = %self.id, "processor close panicked: {}", panic_message(&panic));
            }
        }
        self.state = TaskState::Closed;
        self.store
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
