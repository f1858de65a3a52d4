//! The exactly-once engine of one stream thread: the task manager, the transaction, the commit
//! sequence, abort and rewind, restores, rebalances, fencing and expiry, as pure code over
//! [`StreamClients`].
//!
//! Both runtimes run this engine: `exactly-kafka` on rdkafka clients, `exactly-testkit`'s
//! `TestDriver` and simulation on a simulated cluster with Apache Kafka's rules. Neither makes
//! a protocol decision of its own.
//!
//! [`Engine::run_once`] is one turn of the stream thread's loop:
//!
//! 1. poll the group consumer (records, then at most one rebalance event);
//! 2. hand the records to their running tasks, inside the open transaction;
//! 3. handle the rebalance: commit (revoked) or abort (lost) before the partitions move, open
//!    restoring tasks for new ones;
//! 4. step the restores (changelog records into the stores; finished tasks start running),
//!    opening tasks for assigned partitions that have none (a failed open is retried); then
//!    fire the wall-clock timers that are due (see [`crate::timer`]), in the transaction;
//! 5. commit when the transaction is old or big enough ([`Engine`]'s `commit`, whose steps are
//!    numbered in its doc);
//! 6. housekeeping: retention expiry between transactions, lag and store gauges, and the
//!    restart of a running task's fetch that stalled (see `restart_stalled_fetches`).
//!
//! Any failure goes to one place that decides what it means (abort and rewind, restore a task,
//! replace a fenced producer, stop), so the loop reads as the list above.

mod client;
mod commit;
mod config;
mod error;
mod rebalance;
mod restore;
mod stores;
mod tasks;

pub use client::{
    ClientError, ClientErrorKind, Delivered, GroupEvent, Isolation, Polled, RecordBatch, SeekTo,
    Step, StreamClients, TopicPartition,
};
pub use config::{
    changelog_topic, default_dead_letter_topic, repartition_topic, subscribed_topics, task_topics,
    transactional_id, DedupScope, EngineConfig, Guarantee, OffsetReset, RestoreFrom,
};
pub use error::{EngineError, FenceCause};
pub use stores::StoreFactory;

use crate::clock::Clock;
use crate::observe::RuntimeObserver;
use crate::processor::ProcessorFactory;
use crate::task::TaskCounters;
use commit::{Origins, Refused, Txn};
use error::Fault;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tasks::Slot;

/// How long a poll waits for records when nothing is restoring.
const POLL_WAIT: Duration = Duration::from_millis(20);
/// How often lag and store sizes are reported.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a client call waits when no open transaction bounds it.
const REQUEST_WAIT: Duration = Duration::from_secs(30);
/// How soon after this member lost its session a fence of its consumer may be librdkafka's
/// own rejoin being refused rather than a newer process (see `Engine::zombie`).
const SESSION_FENCE_WINDOW: Duration = Duration::from_secs(60);
/// How long a purge of repartition records waits for its answer (between transactions; the
/// next interval tries again).
const PURGE_WAIT: Duration = Duration::from_secs(2);

/// What the engine needs besides its clients: where processors, stores, time and metrics come
/// from.
pub struct EngineEnv<F: ProcessorFactory> {
    /// Makes one processor per task.
    pub factory: Arc<F>,
    /// Opens the tasks' local stores.
    pub stores: Arc<dyn StoreFactory>,
    /// Receives what the engine reports.
    pub observer: Arc<dyn RuntimeObserver>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

impl<F: ProcessorFactory> Clone for EngineEnv<F> {
    fn clone(&self) -> Self {
        Self {
            factory: self.factory.clone(),
            stores: self.stores.clone(),
            observer: self.observer.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// What one [`Engine::run_once`] did (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records the poll returned.
    pub polled: usize,
    /// A transaction committed, with this many input records.
    pub committed: Option<usize>,
    /// A transaction was aborted, for this reason.
    pub aborted: Option<String>,
    /// Tasks that finished restoring (and started running).
    pub restored: usize,
    /// Assigned partitions whose task does not run yet, afterwards.
    pub restoring: usize,
}

/// Whether the engine is processing or replacing its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Processing,
    /// The producer was fenced, or could not abort its transaction (no broker answered): the
    /// tasks are dropped, and the group consumer is polled (a fence of its own shows a newer
    /// process with this instance id) until `until`; then a new producer is made, whose
    /// `init_transactions` ends the old producer's transaction, and the tasks restore.
    FenceCheck {
        until: Duration,
    },
}

/// The engine of one stream thread. See the module docs.
pub struct Engine<F: ProcessorFactory> {
    cfg: Arc<EngineConfig>,
    env: EngineEnv<F>,
    /// Tasks by input partition.
    tasks: BTreeMap<TopicPartition, Slot<F::Processor>>,
    /// What the group assigned to this member.
    assignment: BTreeSet<TopicPartition>,
    /// Whether the group has given this member an assignment (possibly empty) since it
    /// started or last lost its partitions.
    joined: bool,
    /// The readiness last reported to the observer.
    reported_ready: bool,
    txn: Txn,
    /// The task and input record of each send in the open transaction.
    origins: Origins,
    /// Per task, the input record whose outputs the broker refused in the last transactions.
    refused: BTreeMap<TopicPartition, Refused>,
    /// After a refusal that did not pin its input record: per task, the input offset to
    /// commit past one record per transaction (see `on_refused`).
    isolating: BTreeMap<TopicPartition, i64>,
    mode: Mode,
    /// Changelog partitions in the restore consumer's assignment, with the restore they serve.
    restore_assigned: BTreeMap<TopicPartition, u64>,
    /// Restores started so far (each gets the next number).
    restores: u64,
    /// Assigned partitions whose task failed to open: when to try again, and how often it
    /// failed.
    open_retry: BTreeMap<TopicPartition, (Duration, u32)>,
    /// When the restore consumer may be polled again after a failed poll, and how many
    /// polls failed in a row.
    restore_poll_retry: (Duration, u32),
    /// Number of seeks so far: a record polled before its partition's last seek is dropped.
    seeks: u64,
    /// Polls of the group consumer so far.
    polls: u64,
    consecutive_failures: u32,
    /// Producer fences since the last commit.
    fences_since_commit: usize,
    last_expiry: Duration,
    last_report: Duration,
    last_stall_check: Duration,
    /// Per repartition partition, the offset its task committed that its records are to be
    /// deleted up to; deleted every `purge_interval`.
    purge: BTreeMap<TopicPartition, i64>,
    last_purge: Duration,
    /// When this member last lost its partitions (its session ended).
    lost_at: Option<Duration>,
    /// An output topic was missing at the last attempt, and no commit delivered a record
    /// since: not ready.
    output_missing: bool,
    /// The progress of the current `run_once`.
    progress: Progress,
}

impl<F: ProcessorFactory> std::fmt::Debug for Engine<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("transactional_id", &self.cfg.transactional_id)
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("txn", &self.txn)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<F: ProcessorFactory> Engine<F> {
    /// An engine with no tasks; the group assigns them through [`run_once`](Self::run_once).
    pub fn new(cfg: Arc<EngineConfig>, env: EngineEnv<F>) -> Self {
        let now = env.clock.monotonic();
        Self {
            cfg,
            env,
            tasks: BTreeMap::new(),
            assignment: BTreeSet::new(),
            joined: false,
            reported_ready: false,
            txn: Txn::Idle,
            origins: Origins::default(),
            refused: BTreeMap::new(),
            isolating: BTreeMap::new(),
            mode: Mode::Processing,
            restore_assigned: BTreeMap::new(),
            restores: 0,
            open_retry: BTreeMap::new(),
            restore_poll_retry: (Duration::ZERO, 0),
            seeks: 0,
            polls: 0,
            consecutive_failures: 0,
            fences_since_commit: 0,
            last_expiry: now,
            last_report: now,
            last_stall_check: now,
            purge: BTreeMap::new(),
            last_purge: now,
            lost_at: None,
            output_missing: false,
            progress: Progress::default(),
        }
    }

    /// The config.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// One turn of the stream thread's loop (see the module docs). `Err` stops the thread;
    /// call [`stop`](Self::stop) then (unless it is [`EngineError::Terminated`]).
    pub fn run_once<C: StreamClients>(&mut self, clients: &C) -> Result<Progress, EngineError> {
        self.turn(clients, true)
    }

    /// [`run_once`](Self::run_once) without the commit: the transaction stays open, as in a
    /// process paused right after sending (tests of zombies and timeouts use it).
    pub fn run_once_without_commit<C: StreamClients>(
        &mut self,
        clients: &C,
    ) -> Result<Progress, EngineError> {
        self.turn(clients, false)
    }

    fn turn<C: StreamClients>(
        &mut self,
        clients: &C,
        commit: bool,
    ) -> Result<Progress, EngineError> {
        self.progress = Progress::default();
        if let Mode::FenceCheck { until } = self.mode {
            self.fence_check(clients, until)?;
        } else {
            // 1.-3. Poll, process, handle the rebalance.
            self.poll(clients)?;
            if let Mode::FenceCheck { .. } = self.mode {
                // The producer was fenced in this turn: no task may open until the check ends.
                return Ok(self.end_turn());
            }
            // 4. Restores (of assigned partitions without a task, too).
            if let Err(fault) = self
                .open_missing(clients)
                .and_then(|()| self.restore_step(clients))
            {
                self.recover(clients, fault)?;
            }
            // 4b. Wall-clock timers.
            if let Err(fault) = self.fire_wall_timers(clients) {
                self.recover(clients, fault)?;
            }
            // 5. Commit when due.
            if commit && self.commit_due() {
                if let Err(fault) = self.commit(clients) {
                    self.recover(clients, fault)?;
                }
            }
            // 6. Housekeeping.
            self.housekeeping(clients);
        }
        Ok(self.end_turn())
    }

    /// Reports the thread's readiness if it changed in this turn, and returns the turn's
    /// progress. Readiness is judged once the turn is done, never between the events of one
    /// (an assignment arrives before its tasks open and register as restoring).
    fn end_turn(&mut self) -> Progress {
        self.progress.restoring = self.restoring();
        self.report_ready(self.is_ready());
        std::mem::take(&mut self.progress)
    }

    fn report_ready(&mut self, ready: bool) {
        if ready != self.reported_ready {
            self.reported_ready = ready;
            self.env.observer.ready(self.cfg.thread, ready);
        }
    }

    /// Whether the thread serves its whole assignment: the group has assigned it partitions
    /// (possibly none), every one of them has a running task (restored, not waiting to open
    /// again), it is not checking for a newer process with its instance id, and no output
    /// topic it writes to is missing.
    pub fn is_ready(&self) -> bool {
        self.joined
            && self.mode == Mode::Processing
            && self.restoring() == 0
            && !self.output_missing
    }

    /// Steps 1-3: polls, hands the records to their tasks, handles the rebalance event.
    fn poll<C: StreamClients>(&mut self, clients: &C) -> Result<(), EngineError> {
        self.polls += 1;
        let room = self
            .cfg
            .max_batch_records
            .saturating_sub(self.txn.records())
            .max(1);
        // While tasks restore, the restore step does the waiting (on the changelog).
        let wait = if self.restoring() > 0 {
            Duration::ZERO
        } else {
            POLL_WAIT
        };
        let polled = match clients.poll(room, wait) {
            Ok(p) => p,
            Err(e) => return self.recover(clients, Fault::Client(e)),
        };
        self.progress.polled = polled.records.len();
        let fetched_at = self.seeks;
        let processed = self.process(clients, &polled.records, fetched_at);
        drop(polled.records);
        if let Err(fault) = processed {
            // The rebalance is still handled below: the partitions must move.
            self.recover(clients, fault)?;
        }
        match polled.event {
            Some(event) => self.on_group_event(clients, event),
            None => Ok(()),
        }
    }

    /// Step 2: runs the tasks on polled records, grouped in runs per partition (order within
    /// a partition is kept). A record of a task that is not running (restoring, or gone since)
    /// is skipped: the task seeks to its committed offset when it starts. A record fetched
    /// before its partition's last seek is dropped: it is fetched again from the new position.
    fn process<C: StreamClients>(
        &mut self,
        clients: &C,
        batch: &C::Records<'_>,
        fetched_at: u64,
    ) -> Result<(), Fault> {
        if batch.is_empty() {
            return Ok(());
        }
        let (now, polls) = (self.env.clock.monotonic(), self.polls);
        batch.with_records(|records| {
            let mut i = 0;
            while i < records.len() {
                let (topic, p) = (records[i].topic, records[i].partition);
                let mut j = i + 1;
                while j < records.len() && records[j].topic == topic && records[j].partition == p {
                    j += 1;
                }
                let run = &records[i..j];
                i = j;
                let tp = TopicPartition::new(topic, p);
                let Some(slot) = self.tasks.get_mut(&tp) else {
                    tracing::debug!(partition = %tp, records = run.len(), "records of a partition without a task skipped");
                    continue;
                };
                if !slot.is_running() || slot.sought_at > fetched_at {
                    tracing::debug!(partition = %tp, records = run.len(), running = slot.is_running(), "records skipped: the task restores, or was rewound after they were fetched");
                    continue;
                }
                slot.fetched = (now, polls);
                if self.isolating.is_empty() {
                    let mut k = 0;
                    while k < run.len() {
                        self.begin_if_needed(clients)?;
                        k += self.handle_run(clients, &tp, &run[k..])?;
                        if k < run.len() {
                            // The transaction reached its time bound mid-run: commit what it
                            // holds, and go on in the next one.
                            tracing::info!(thread = self.cfg.thread, task = %tp, left = run.len() - k, "the transaction reached half its timeout while processing: committing early");
                            self.commit(clients)?;
                        }
                    }
                    continue;
                }
                // One input record per transaction (see `on_refused`).
                if self.txn.records() > 0 {
                    self.commit(clients)?;
                }
                for k in 0..run.len() {
                    self.begin_if_needed(clients)?;
                    self.handle_run(clients, &tp, &run[k..=k])?;
                    self.commit(clients)?;
                }
            }
            Ok(())
        })
    }

    /// When the open transaction must stop taking records and commit: half its
    /// `transaction.timeout.ms` after it began, which leaves the commit the other half before
    /// the coordinator aborts it. (Records are taken one at a time past it: a processor that
    /// retries with backoff can make one batch outlast the timeout.)
    pub(crate) fn txn_time_bound(&self) -> Option<Duration> {
        match &self.txn {
            Txn::Idle => None,
            Txn::Open { started, .. } => Some(*started + self.cfg.transaction_timeout / 2),
        }
    }

    /// How long a client call made now may wait: until `until` (monotonic; `None`: no bound
    /// but [`REQUEST_WAIT`]), at most [`REQUEST_WAIT`].
    pub(crate) fn wait_until(&self, until: Option<Duration>) -> Duration {
        until.map_or(REQUEST_WAIT, |until| {
            until
                .saturating_sub(self.env.clock.monotonic())
                .min(REQUEST_WAIT)
        })
    }

    /// How long a request of a task's open or restore may wait now. Inside an open
    /// transaction: until its time bound, and at most one commit interval, since the running
    /// tasks wait meanwhile (the restore asks again at its next step). Otherwise
    /// [`REQUEST_WAIT`].
    pub(crate) fn restore_wait(&self) -> Duration {
        match self.txn_time_bound() {
            None => REQUEST_WAIT,
            Some(bound) => self.wait_until(Some(bound)).min(self.cfg.commit_interval),
        }
    }

    /// Whether the open transaction is due for a commit.
    fn commit_due(&self) -> bool {
        match &self.txn {
            Txn::Idle => false,
            Txn::Open {
                started, records, ..
            } => {
                self.env.clock.monotonic().saturating_sub(*started) >= self.cfg.commit_interval
                    || *records >= self.cfg.max_batch_records
            }
        }
    }

    /// Step 6: retention expiry between transactions; lag and store gauges; stalled fetches.
    fn housekeeping<C: StreamClients>(&mut self, clients: &C) {
        let now = self.env.clock.monotonic();
        if now.saturating_sub(self.last_report) >= REPORT_INTERVAL {
            self.last_report = now;
            self.report(clients);
        }
        if now.saturating_sub(self.last_stall_check) >= tasks::FETCH_STALL_CHECK_INTERVAL {
            self.last_stall_check = now;
            self.restart_stalled_fetches(clients);
        }
        if matches!(self.txn, Txn::Idle)
            && now.saturating_sub(self.last_expiry) >= self.cfg.expiry_interval
        {
            self.last_expiry = now;
            self.expire_now();
        }
        if matches!(self.txn, Txn::Idle)
            && !self.purge.is_empty()
            && now.saturating_sub(self.last_purge) >= self.cfg.purge_interval
        {
            self.last_purge = now;
            self.purge_repartition_records(clients);
        }
    }

    /// Deletes the repartition records the tasks reading them committed past (Kafka Streams'
    /// purge after commit): the repartition topic never holds more than its readers lag
    /// behind, and its records need no retention that a lagging reader could outrun. Only
    /// committed offsets are purged up to, so every owner of a partition, now or later,
    /// starts at or after the log start. A failure is logged and the next interval tries
    /// again.
    fn purge_repartition_records<C: StreamClients>(&mut self, clients: &C) {
        let offsets: Vec<(TopicPartition, i64)> =
            std::mem::take(&mut self.purge).into_iter().collect();
        match clients.delete_records(&offsets, PURGE_WAIT) {
            Ok(()) => {
                tracing::debug!(
                    thread = self.cfg.thread,
                    partitions = offsets.len(),
                    "repartition records purged up to the committed offsets"
                );
            }
            Err(e) if e.is_terminated() => {}
            Err(e) => {
                tracing::warn!(thread = self.cfg.thread, error = %e, "could not delete repartition records the tasks committed past; trying again in the next purge interval");
                for (tp, offset) in offsets {
                    self.purge_up_to(tp, offset);
                }
            }
        }
    }

    /// Notes offsets that committed: records of repartition topics before them are purged.
    fn note_committed(&mut self, offsets: &[(TopicPartition, i64)]) {
        for (tp, offset) in offsets {
            if self.cfg.is_repartition_topic(&tp.topic) {
                self.purge_up_to(tp.clone(), *offset);
            }
        }
    }

    /// Records of `tp` before `offset` are to be purged (a later offset wins).
    fn purge_up_to(&mut self, tp: TopicPartition, offset: i64) {
        let entry = self.purge.entry(tp).or_insert(offset);
        *entry = (*entry).max(offset);
    }

    /// Ends the thread's work: commits the open transaction (aborts it if that fails), purges
    /// the repartition records committed past (global scope), and closes the tasks; their
    /// stores keep their files.
    pub fn shutdown<C: StreamClients>(&mut self, clients: &C) -> Result<(), EngineError> {
        self.report_ready(false);
        let ended = self.end_transaction(clients, "shutdown");
        if ended.is_ok() && !self.purge.is_empty() {
            // What the last transactions committed past, so a stopped app leaves no read
            // repartition records behind.
            self.purge_repartition_records(clients);
        }
        self.close_all();
        ended
    }

    /// After an error: aborts the open transaction if it can and closes the tasks without
    /// applying anything.
    pub fn stop<C: StreamClients>(&mut self, clients: &C) {
        self.report_ready(false);
        if self.txn.is_open() && self.cfg.exactly_once() {
            if let Err(e) = clients.abort_transaction() {
                tracing::warn!(thread = self.cfg.thread, error = %e, "abort after a fatal error failed; the coordinator aborts the transaction when it times out, or the restart does");
            }
        }
        self.txn = Txn::Idle;
        self.drop_tasks_unapplied();
    }

    /// Expires IDs and state entries older than their retention in every running task now
    /// (the loop does it every `expiry_interval` between transactions). Returns how many IDs
    /// were removed.
    pub fn expire_now(&mut self) -> u64 {
        self.expire()
    }

    /// Tasks of this thread, by input partition, with whether each is running.
    pub fn tasks(&self) -> Vec<(TopicPartition, bool)> {
        self.tasks
            .iter()
            .map(|(tp, s)| (tp.clone(), s.is_running()))
            .collect()
    }

    /// Whether a transaction is open.
    pub fn transaction_open(&self) -> bool {
        self.txn.is_open()
    }

    /// Assigned partitions whose task is not running yet: it restores, or it is to open
    /// (again) at a next turn.
    pub fn restoring(&self) -> usize {
        let running = self.tasks.values().filter(|s| s.is_running()).count();
        self.assignment.len().saturating_sub(running)
    }

    /// Runs `f` on the task of `partition` (e.g. to read its store in a test).
    pub fn with_task<R>(
        &self,
        partition: &TopicPartition,
        f: impl FnOnce(&crate::task::Task<F::Processor, Box<dyn crate::store::DedupStore>>) -> R,
    ) -> Option<R> {
        self.tasks.get(partition).map(|s| f(&s.task))
    }

    /// Reports a committed transaction's counters by input topic.
    fn report_counters(&self, counters: BTreeMap<Arc<str>, TaskCounters>) {
        for (topic, c) in counters {
            self.env.observer.task_counters(&topic, &c);
        }
    }

    /// Backs off after a failure: doubling from 100 ms, at most 5 s.
    fn backoff(&mut self) {
        self.consecutive_failures += 1;
        let ms = (50u64 << self.consecutive_failures.min(7)).min(5_000);
        self.env.clock.sleep(Duration::from_millis(ms));
    }
}
