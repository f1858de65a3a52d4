//! The task manager: one task per assigned input partition, its lifecycle, and opening,
//! closing, rewinding and expiring tasks.

use super::client::{Isolation, SeekTo, StreamClients, TopicPartition};
use super::error::Fault;
use super::Engine;
use crate::mem_store::MemDedupStore;
use crate::processor::{Processor, ProcessorFactory};
use crate::record::TaskId;
use crate::store::{DedupStore, StoreError};
use crate::task::Task;
use std::time::Duration;

/// A running task that got no record for this long, and in [`FETCH_STALL_POLLS`] polls, is
/// checked for a stalled fetch.
pub(crate) const FETCH_STALL_AFTER: Duration = Duration::from_secs(30);
/// Polls of the group consumer that a stalled task got no record in: a turn that was busy
/// for long (a slow sink's flush) is not taken for a stalled fetch, since the records
/// fetched meanwhile arrive within a few polls.
const FETCH_STALL_POLLS: u64 = 100;
/// How often the running tasks are looked at for a stalled fetch.
pub(crate) const FETCH_STALL_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long the stall check's watermark request waits at most.
const FETCH_STALL_WAIT: Duration = Duration::from_secs(2);

/// Where a task is in its life: it restores its stores, then runs (and is closed by being
/// removed from the task manager).
pub(crate) enum Phase {
    /// Replaying changelogs; the input partition is paused.
    Restoring(Restore),
    /// Processing records.
    Running,
}

/// One task and what the engine keeps for it.
pub(crate) struct Slot<P: Processor> {
    pub(crate) task: Task<P, Box<dyn DedupStore>>,
    /// The task's changelog topics (its partition): the dedup changelog first, then one per
    /// state store. Empty for a repartitioning task.
    pub(crate) changelogs: Vec<String>,
    pub(crate) phase: Phase,
    /// The engine's seek count at the last seek of this partition: records polled before it
    /// are dropped (they are fetched again from the new position).
    pub(crate) sought_at: u64,
    /// When (monotonic time, and the engine's poll count) the running task last got records,
    /// started fetching (its seek), or was checked for a stalled fetch.
    pub(crate) fetched: (Duration, u64),
}

impl<P: Processor> Slot<P> {
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }
}

/// The restore of one changelog partition of a task.
#[derive(Debug)]
pub(crate) struct Part {
    /// The partition's low watermark when the restore was planned.
    pub(crate) low: i64,
    /// First changelog offset to read, used until the restore consumer has a position.
    pub(crate) from: i64,
    /// Read-committed end of the changelog partition at the last check.
    pub(crate) end: i64,
    /// The high watermark when the restore was planned, if it was asked for (the dedup
    /// changelog with [`RestoreFrom::Start`](super::RestoreFrom::Start)).
    pub(crate) hw: Option<i64>,
}

/// A task's restore: one part per changelog, in the order of the task's changelogs.
#[derive(Debug)]
pub(crate) struct Restore {
    /// Unique per restore: a task closed and opened again restores anew, and its changelog
    /// partitions are assigned again from its own start.
    pub(crate) id: u64,
    pub(crate) started: Duration,
    pub(crate) parts: Vec<Part>,
    pub(crate) last_check: Option<Duration>,
    pub(crate) last_wait_log: Duration,
    /// The restore consumer's positions at the last check: a restore behind its end whose
    /// positions stopped moving asks the broker why (records deleted before it read them).
    pub(crate) last_pos: Vec<i64>,
    /// After a request of this restore failed transiently: when it is checked again, and how
    /// many checks failed in a row.
    pub(crate) retry: Option<(Duration, u32)>,
}

impl Restore {
    /// Restore `id` of changelogs with these (low, read_committed end, high watermark)
    /// bounds, from their starts.
    pub(crate) fn new(id: u64, now: Duration, bounds: Vec<(i64, i64, Option<i64>)>) -> Self {
        let parts = bounds
            .into_iter()
            .map(|(low, end, hw)| Part {
                low,
                from: low,
                end,
                hw,
            })
            .collect();
        Self {
            id,
            started: now,
            parts,
            last_check: None,
            last_wait_log: now,
            last_pos: Vec::new(),
            retry: None,
        }
    }
}

/// How long the `attempts`-th retry in a row of a failed task open or restore request waits:
/// 100 ms doubling up to 5 s.
pub(crate) fn retry_wait(attempts: u32) -> Duration {
    Duration::from_millis((50u64 << attempts.min(7)).min(5_000))
}

fn store_fault(task: &TaskId, e: StoreError) -> Fault {
    Fault::Task {
        task: task.into(),
        error: crate::error::TaskError::Store {
            task: task.to_string(),
            source: e,
        },
    }
}

impl<F: ProcessorFactory> Engine<F> {
    /// Opens the task of a newly assigned partition: its stores, its processor, and the plan of
    /// its restore. Its input partition stays paused until the restore completes.
    pub(crate) fn open_task<C: StreamClients>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
    ) -> Result<(), Fault> {
        let id = TaskId::from(tp);
        clients.pause(std::slice::from_ref(tp))?;
        let cfg = self.cfg.clone();
        let (task, changelogs) = if cfg.repartitions(&tp.topic) {
            // Stage 1 of the global scope: no store and no changelog, so it only waits for
            // its committed offset (the restore with no changelog parts).
            let to = super::repartition_topic(&cfg.app_id, &tp.topic);
            let partitions = cfg.input_partitions.get(&*tp.topic).copied().unwrap_or(1);
            tracing::info!(task = %id, to = %to, "repartitioning by message ID");
            let task = Task::repartitioner(
                id,
                to,
                partitions,
                Box::new(MemDedupStore::new()) as Box<dyn DedupStore>,
                cfg.task.clone(),
            );
            (task, Vec::new())
        } else {
            let changelogs = cfg.changelogs_of(&tp.topic);
            let (store, recreated) = self
                .env
                .stores
                .open_dedup(&id, &changelogs[0])
                .map_err(|e| store_fault(&id, e))?;
            if let Some(reason) = recreated {
                self.env
                    .observer
                    .store_wiped(&tp.topic, tp.partition, "corrupt");
                tracing::warn!(task = %id, %reason, "store recreated; restoring it from the changelog");
            }
            let processor = self.env.factory.create(&id);
            let mut task = Task::new(
                id.clone(),
                changelogs[0].clone(),
                processor,
                store,
                cfg.task.clone(),
            );
            for (spec, changelog) in cfg.task.stores.iter().zip(&changelogs[1..]) {
                let backend = self
                    .env
                    .stores
                    .open_state(&id, spec, changelog)
                    .map_err(|e| store_fault(&id, e))?;
                task.add_store(spec.clone(), changelog.clone(), backend)
                    .map_err(|error| Fault::Task {
                        task: tp.clone(),
                        error,
                    })?;
            }
            (task, changelogs)
        };
        let restore = self.plan_restore(clients, tp, &task, &changelogs)?;
        let mut slot = Slot {
            task,
            changelogs,
            phase: Phase::Restoring(restore),
            sought_at: self.seeks,
            fetched: (Duration::ZERO, 0),
        };
        self.apply_plan(tp, &mut slot)?;
        self.tasks.insert(tp.clone(), slot);
        self.env.observer.tasks(self.cfg.thread, self.tasks.len());
        Ok(())
    }

    /// Reads the changelogs' watermarks for a task's restore.
    fn plan_restore<C: StreamClients>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
        _task: &Task<F::Processor, Box<dyn DedupStore>>,
        changelogs: &[String],
    ) -> Result<Restore, Fault> {
        let mut bounds = Vec::with_capacity(changelogs.len());
        for (k, changelog) in changelogs.iter().enumerate() {
            let part = TopicPartition::new(changelog.as_str(), tp.partition);
            let within = self.restore_wait();
            let (low, end) = clients.watermarks(&part, Isolation::ReadCommitted, within)?;
            // Whether the dedup store's tail is empty (see `apply_plan`) needs the high
            // watermark too: an open transaction's records lie between the two.
            let hw = if k == 0 && self.cfg.restore_from == super::RestoreFrom::Start {
                Some(
                    clients
                        .watermarks(&part, Isolation::ReadUncommitted, within)?
                        .1,
                )
            } else {
                None
            };
            bounds.push((low, end, hw));
        }
        self.restores += 1;
        Ok(Restore::new(
            self.restores,
            self.env.clock.monotonic(),
            bounds,
        ))
    }

    /// Closes a task: its staged IDs were committed or aborted before; its stores keep their
    /// files so a quick re-assignment restores only the tail.
    pub(crate) fn close_task(&mut self, tp: &TopicPartition) {
        if !self.assignment.contains(tp) {
            self.open_retry.remove(tp);
        }
        if let Some(slot) = self.tasks.remove(tp) {
            drop(slot.task.close());
        }
        self.env.observer.tasks(self.cfg.thread, self.tasks.len());
        self.env.observer.forget_partition(&tp.topic, tp.partition);
    }

    /// Closes a task so that it restores anew: the next turn opens it again (a task whose
    /// store failed, or whose partition could not be rewound).
    pub(crate) fn restart_task(&mut self, tp: &TopicPartition) {
        self.close_task(tp);
    }

    /// Opens a task for every assigned partition that has none: its open failed (a transient
    /// error), or it was closed to restore anew. A transient failure (a store directory still
    /// locked by its previous owner, a request that timed out) is logged and retried with
    /// backoff, without touching the other tasks; any other failure is returned.
    pub(crate) fn open_missing<C: StreamClients>(&mut self, clients: &C) -> Result<(), Fault> {
        let now = self.env.clock.monotonic();
        let missing: Vec<TopicPartition> = self
            .assignment
            .iter()
            .filter(|tp| !self.tasks.contains_key(*tp))
            .filter(|tp| self.open_retry.get(*tp).is_none_or(|(at, _)| now >= *at))
            .cloned()
            .collect();
        for tp in missing {
            match self.open_task(clients, &tp) {
                Ok(()) => {
                    self.open_retry.remove(&tp);
                }
                Err(fault) if fault.is_transient() => {
                    let attempts = self.open_retry.get(&tp).map_or(0, |(_, n)| *n) + 1;
                    let wait = retry_wait(attempts);
                    tracing::warn!(task = %tp, attempt = attempts, retry_in_ms = wait.as_millis() as u64, error = ?fault, "could not open the task; retrying");
                    self.open_retry.insert(tp, (now + wait, attempts));
                }
                Err(fault) => return Err(fault),
            }
        }
        Ok(())
    }

    /// Closes every task.
    pub(crate) fn close_all(&mut self) {
        let all: Vec<TopicPartition> = self.tasks.keys().cloned().collect();
        for tp in all {
            self.close_task(&tp);
        }
    }

    /// Drops the staged IDs of every task and closes it without applying anything: what a
    /// zombie or a fenced producer does (it must write nothing more).
    pub(crate) fn drop_tasks_unapplied(&mut self) {
        for slot in self.tasks.values_mut() {
            slot.task.on_aborted();
        }
        self.close_all();
        self.txn = super::commit::Txn::Idle;
    }

    /// Moves a partition's fetch position; records fetched before are dropped.
    pub(crate) fn seek<C: StreamClients>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
        offset: Option<i64>,
    ) -> Result<(), super::ClientError> {
        self.seeks += 1;
        let fetched = (self.env.clock.monotonic(), self.polls);
        if let Some(slot) = self.tasks.get_mut(tp) {
            slot.sought_at = self.seeks;
            slot.fetched = fetched;
        }
        clients.seek(tp, offset.map_or(SeekTo::Beginning, SeekTo::Offset))
    }

    /// TTL expiry of every running task's stores; between transactions only. Returns how many
    /// IDs were removed.
    pub(crate) fn expire(&mut self) -> u64 {
        let clock = self.env.clock.clone();
        let mut total = 0;
        for slot in self.tasks.values_mut().filter(|s| s.is_running()) {
            // Between transactions a running task's stores hold everything its changelogs do.
            if let Err(e) = slot.task.mark_stores_synced(clock.now_ms()) {
                tracing::warn!(task = %slot.task.id(), error = %e, "could not record that the state stores are in sync; their next restore may be a full one");
            }
            match slot.task.expire(clock.as_ref()) {
                Ok(0) => {}
                Ok(n) => {
                    total += n;
                    tracing::info!(task = %slot.task.id(), expired = n, "expired message IDs older than the dedup retention")
                }
                // The store is left as is: a failed delete only keeps old IDs a little longer.
                Err(e) => {
                    tracing::warn!(task = %slot.task.id(), error = %e, "TTL expiry failed; will retry")
                }
            }
            let counters = slot.task.counters_mut().take();
            self.env
                .observer
                .task_counters(&slot.task.id().topic, &counters);
        }
        total
    }

    /// Restarts the fetch of each running task that got no record for [`FETCH_STALL_AFTER`]
    /// (and [`FETCH_STALL_POLLS`] polls) although its partition holds committed records past
    /// the consumer's position: it
    /// resumes the partition and seeks it to where the task goes on.
    ///
    /// librdkafka applies a pause, resume or seek asynchronously, and drops one that an op
    /// its own thread queued at the same moment made outdated (a rebalance pauses the whole
    /// assignment), without an error (librdkafka issues #5591, #2190). A resume dropped so
    /// as a restore ends leaves the partition paused for good. Resuming a partition that
    /// fetches changes nothing, and seeking to the task's position loses nothing: records
    /// fetched before the seek are dropped and fetched again. An idle partition costs one
    /// watermark request per [`FETCH_STALL_AFTER`]; a failed request is tried at the next.
    pub(crate) fn restart_stalled_fetches<C: StreamClients>(&mut self, clients: &C) {
        let (now, polls) = (self.env.clock.monotonic(), self.polls);
        let within = self.restore_wait().min(FETCH_STALL_WAIT);
        let idle: Vec<TopicPartition> = self
            .tasks
            .iter()
            .filter(|(_, s)| {
                let (at, at_poll) = s.fetched;
                s.is_running()
                    && now.saturating_sub(at) >= FETCH_STALL_AFTER
                    && polls.saturating_sub(at_poll) >= FETCH_STALL_POLLS
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in idle {
            let Some(slot) = self.tasks.get_mut(&tp) else {
                continue;
            };
            let idle_s = now.saturating_sub(slot.fetched.0).as_secs();
            slot.fetched = (now, polls);
            let (low, end) = match clients.watermarks(&tp, Isolation::ReadCommitted, within) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(task = %tp, error = %e, "stall check: no watermarks; checking again later");
                    continue;
                }
            };
            let goes_on = slot.task.position();
            let at = clients.position(&tp).or(goes_on).unwrap_or(low);
            if at >= end {
                continue;
            }
            tracing::warn!(thread = self.cfg.thread, task = %tp, position = at, end, idle_s, "the task got no record for {idle_s} s although its partition holds committed records past the consumer's position: resuming and seeking its fetch again (librdkafka drops a resume that races with a rebalance)");
            self.env.observer.fetch_restarted(&tp.topic, tp.partition);
            let restarted = clients
                .resume(std::slice::from_ref(&tp))
                .and_then(|()| self.seek(clients, &tp, goes_on));
            if let Err(e) = restarted {
                tracing::warn!(task = %tp, error = %e, "restarting the stalled fetch failed; checking again later");
            }
        }
    }

    /// Lag and store sizes of the running tasks.
    pub(crate) fn report<C: StreamClients>(&self, clients: &C) {
        for (tp, slot) in self.tasks.iter().filter(|(_, s)| s.is_running()) {
            if let Some(high) = clients.cached_high_watermark(tp) {
                let committed = slot.task.committed_offset().unwrap_or(0);
                self.env
                    .observer
                    .lag(&tp.topic, tp.partition, (high - committed).max(0));
            }
            let stats = slot.task.store_stats();
            self.env
                .observer
                .store(&tp.topic, tp.partition, stats.entries, stats.bytes);
            for (store, stats) in slot.task.state_store_stats() {
                self.env.observer.state_store(
                    &tp.topic,
                    tp.partition,
                    store,
                    stats.entries,
                    stats.bytes,
                );
            }
        }
    }
}
