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
//!    runs the processor; and hands outputs, state changelog records and dead letters to the
//!    transaction's [`TxnWriter`]. IDs are only *staged* in the overlay.
//! 3. Right before the commit, [`Task::write_changelog`] sends the IDs the transaction staged
//!    as one dedup changelog record ([`crate::changelog`]), and [`Task::flush`] runs the
//!    processor's pre-commit hook (external sinks commit there, before Kafka does).
//! 4. After the transaction committed, [`Task::on_committed`] applies the overlay and the
//!    changelog checkpoint to the store in one atomic batch. Invariant: the store is never
//!    ahead of the committed changelog.
//! 5. After an abort, [`Task::on_aborted`] drops the overlay, tells the processor to discard
//!    its buffered effects, and says where to rewind.

use crate::changelog::{
    batch_record_key, decode_record, encode_batch_into, entries_per_batch_value,
};
use crate::clock::Clock;
use crate::error::{panic_message, ErrorPolicy, ProcessError, RetryPolicy, TaskError};
use crate::id::{IdKey, IdKeyHasher, IdPolicy, InvalidId, InvalidIdPolicy};
use crate::processor::{Context, FlushContext, InitContext, Processor};
use crate::record::{Output, Record, RecordKind, TaskId};
use crate::state::{decode_state_value, KvStore, StateSlot, StoreSpec, TaskStores};
use crate::store::{
    ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError, StoreStats,
};
use indexmap::IndexMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

mod counters;
mod process;
mod restore;
mod timers;

pub use counters::TaskCounters;
pub use restore::{RestorePlan, WipeReason};

/// Default dedup retention: 7 days.
pub const DEFAULT_DEDUP_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Default largest dedup changelog value: 512 KiB, about 29,000 IDs at the least (usually
/// 18 bytes an ID: 29,000 is the worst case), well below the 1 MB a topic and a producer
/// accept by default. The Kafka runtime lowers it to what the changelog topic and the
/// producer accept.
pub const DEFAULT_CHANGELOG_RECORD_BYTES: usize = 512 << 10;

/// Header names written on dead-letter records.
pub mod dlq_headers {
    /// Human-readable error.
    pub const ERROR: &str = "exactly.error";
    /// Stable error label (`processor_error`, `retries_exhausted`, `panic`, `missing_id`,
    /// `production`, ...).
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
    /// What happens to an input record whose outputs the broker refuses for good (too large,
    /// invalid for the topic, not authorized) in `production_attempts` transactions in a row:
    /// dead-letter it (`exactly.error.kind = production`, in the transaction that commits its
    /// offset) or stop the app with an error naming the record.
    pub on_production_error: ErrorPolicy,
    /// Transactions refused because of one input record's outputs before
    /// `on_production_error` applies (at least 1).
    pub production_attempts: u32,
    /// The largest dedup changelog value: a transaction's IDs are split into records of at
    /// most this many bytes (at least [`crate::changelog::MIN_BATCH_VALUE_BYTES`]).
    pub changelog_record_bytes: usize,
    /// How long (ms) after a state store last matched its changelog it is still restored
    /// from its checkpoint instead of whole: half the state changelogs' `delete.retention.ms`
    /// (see [`Task::state_restore_plan`]). `None`: never (their `delete.retention.ms` is not
    /// known).
    pub state_trust_ms: Option<i64>,
}

/// Kafka's default `delete.retention.ms`: one day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 3600 * 1000;

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            ids: IdPolicy::default(),
            retry: RetryPolicy::default(),
            on_error: ErrorPolicy::default(),
            dedup_retention_ms: DEFAULT_DEDUP_RETENTION_MS,
            dead_letter_topic: None,
            stores: Vec::new(),
            on_production_error: ErrorPolicy::DeadLetter,
            production_attempts: 3,
            changelog_record_bytes: DEFAULT_CHANGELOG_RECORD_BYTES,
            state_trust_ms: Some(DEFAULT_DELETE_RETENTION_MS / 2),
        }
    }
}

/// Receives the records of the open transaction. The Kafka runtime sends them with its
/// transactional producer; the `TestDriver` appends them to its simulated log.
pub trait TxnWriter {
    /// Sends `record` in the current transaction.
    fn send(&mut self, kind: RecordKind, record: &Output) -> Result<(), String>;
    /// The records sent from now on come from the input record at `offset` (so that a record
    /// the broker refuses can be traced to its input).
    fn source(&mut self, offset: i64) {
        let _ = offset;
    }
    /// The records sent from now on come from a timer's callback (see [`crate::timer`]).
    fn timer_source(&mut self) {}
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

/// The IDs handled in the open transaction (`StagedIds`), in the order they were handled.
type StagedIds = IndexMap<IdKey, SeenEntry, IdKeyHasher>;

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
    /// IDs handled in the open transaction, in the order they were handled: checked before
    /// the store, written to the changelog at the commit, applied to the store only after it.
    overlay: StagedIds,
    /// How many of the overlay's IDs were sent to the changelog in the open transaction.
    overlay_written: usize,
    /// Next input offset of the last committed transaction (`None`: the group has none yet).
    committed_offset: Option<i64>,
    /// Next input offset after the last record handled in the open transaction.
    pending_offset: Option<i64>,
    counters: TaskCounters,
    outputs: Vec<Output>,
    /// The dedup changelog record, reused for each of its sends.
    changelog_record: Output,
    dead_letter_count: u64,
    stores: TaskStores,
    /// Input records whose outputs the broker refused for good, by offset: when one is
    /// handled next it is dead-lettered with this reason instead of processed (until a
    /// transaction past it commits).
    poison: std::collections::BTreeMap<i64, String>,
    /// The largest record timestamp seen, in committed and open transactions.
    stream_time: Option<i64>,
    /// The stream time the open transaction wrote to the timer store (or the committed one).
    stream_time_written: Option<i64>,
    /// The stream time of the last committed transaction.
    stream_time_committed: Option<i64>,
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
            overlay: StagedIds::default(),
            overlay_written: 0,
            committed_offset: None,
            pending_offset: None,
            counters: TaskCounters::default(),
            outputs: Vec::new(),
            changelog_record,
            dead_letter_count: 0,
            stores: TaskStores::default(),
            poison: std::collections::BTreeMap::new(),
            stream_time: None,
            stream_time_written: None,
            stream_time_committed: None,
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
    /// The next input offset this task accepts: after the last record handled in the open
    /// transaction, else its committed offset (`None`: no committed offset, any is accepted).
    pub fn position(&self) -> Option<i64> {
        self.pending_offset.or(self.committed_offset)
    }

    /// Dead-letters the input record at `offset` with `exactly.error.kind = production` and
    /// `reason` when it is handled next, instead of running the processor on it: the broker
    /// refused its outputs for good. Holds across aborts, until a transaction past it commits.
    pub fn dead_letter_at(&mut self, offset: i64, reason: String) {
        self.poison.insert(offset, reason);
    }

    /// Whether the record at `offset` is to be dead-lettered ([`dead_letter_at`](Self::dead_letter_at)).
    pub fn dead_letters_at(&self, offset: i64) -> bool {
        self.poison.contains_key(&offset)
    }

    fn wrong_state(&self, what: &'static str) -> TaskError {
        TaskError::WrongState {
            task: self.id.to_string(),
            what,
            state: self.state.name(),
        }
    }

    fn state_err(&self, store: &str, source: StoreError) -> TaskError {
        TaskError::Store {
            task: format!("{} (state store {store:?})", self.id),
            source,
        }
    }

    fn store_err(&self, source: StoreError) -> TaskError {
        TaskError::Store {
            task: self.id.to_string(),
            source,
        }
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
            self.poison = self.poison.split_off(&next);
        }
        self.stream_time_committed = self.stream_time_written;
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
        self.overlay_written = 0;
        let batch = StoreBatch {
            entries: self.overlay.drain(..).collect(),
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
    /// retriable [`TaskError::Flush`]. `time_left` is what the processor sees as
    /// [`FlushContext::time_left`].
    pub fn flush(&mut self, time_left: Option<Duration>) -> Result<(), TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("flush"));
        }
        let mut ctx = FlushContext::new(&self.id, self.pending_offset).with_time_left(time_left);
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
                format!("flush panicked: {}", panic_message(panic.as_ref())),
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

    /// Sends the IDs staged in the open transaction since the last call as dedup changelog
    /// records, [`TaskConfig::changelog_record_bytes`] each at most ([`crate::changelog`]).
    /// The runtime calls it for every running task right before it commits (before
    /// [`flush`](Self::flush)); [`on_committed`](Self::on_committed) then applies the IDs with
    /// the offset after the last record as checkpoint.
    pub fn write_changelog(&mut self, writer: &mut dyn TxnWriter) -> Result<(), TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("write_changelog"));
        }
        self.write_stream_time(writer)?;
        let per_record = entries_per_batch_value(self.config.changelog_record_bytes);
        while self.overlay_written < self.overlay.len() {
            let end = (self.overlay_written + per_record).min(self.overlay.len());
            let chunk = &self.overlay.as_slice()[self.overlay_written..end];
            let rec = &mut self.changelog_record;
            let value = rec.value.get_or_insert_with(Vec::new);
            encode_batch_into(chunk.iter().map(|(k, e)| (*k, *e)), value);
            rec.key = Some(batch_record_key(value).to_vec());
            writer
                .send(RecordKind::Changelog, rec)
                .map_err(|reason| TaskError::Write {
                    task: self.id.to_string(),
                    reason,
                })?;
            self.overlay_written = end;
        }
        Ok(())
    }

    /// Called after the transaction aborted: drops the staged IDs, tells the processor to
    /// discard what it buffered for the transaction ([`Processor::abort`]), and returns the
    /// offset to rewind the input to (`None`: the group has no committed offset; use the
    /// reset policy's start).
    pub fn on_aborted(&mut self) -> Option<i64> {
        self.overlay.clear();
        self.overlay_written = 0;
        self.stores.drop_staged();
        self.pending_offset = None;
        // The records since the commit come again, and move stream time again.
        self.stream_time = self.stream_time_committed;
        self.stream_time_written = self.stream_time_committed;
        if self.state == TaskState::Running && self.find_next_timers().is_err() {
            // Unknown: the next record or turn looks (and finds the store's error again).
            self.stores.next_timer = [Some(i64::MIN); 2];
        }
        if let (TaskState::Running, Some(processor)) = (self.state, self.processor.as_mut()) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| processor.abort())) {
                tracing::error!(task = %self.id, "processor abort panicked: {}", panic_message(panic.as_ref()));
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
                tracing::error!(task = %self.id, "processor close panicked: {}", panic_message(panic.as_ref()));
            }
        }
        self.state = TaskState::Closed;
        self.store
    }
}
