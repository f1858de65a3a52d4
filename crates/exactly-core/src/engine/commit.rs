//! The transaction: begin, send, commit, abort and rewind, and the one place where failures
//! are turned into recovery.

use super::client::{ClientError, ClientErrorKind, Step, StreamClients, TopicPartition};
use super::error::{EngineError, Fault};
use super::{Engine, Mode};
use crate::clock::Clock;
use crate::error::{ErrorPolicy, TaskError};
use crate::processor::ProcessorFactory;
use crate::record::{Output, Record, RecordKind};
use crate::task::{TaskCounters, TxnWriter};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The task type of an engine's slots.
type TaskOf<F> =
    crate::task::Task<<F as ProcessorFactory>::Processor, Box<dyn crate::store::DedupStore>>;

/// Abort reason (metric label) when the group took this member's partitions away.
pub(crate) const ABORT_LOST: &str = "assignment_lost";

/// The stream thread's transaction.
#[derive(Debug)]
pub(crate) enum Txn {
    /// No transaction is open.
    Idle,
    /// A transaction is open (at-least-once: a batch is being produced).
    Open {
        /// When it began (monotonic).
        started: Duration,
        /// Input records handed to tasks in it.
        records: usize,
        /// Task counters of the transaction, by input topic: reported when it commits,
        /// dropped when it aborts (its records are handled again), so metrics count effects.
        counters: BTreeMap<Arc<str>, TaskCounters>,
    },
}

impl Txn {
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }
    pub(crate) fn records(&self) -> usize {
        match self {
            Self::Idle => 0,
            Self::Open { records, .. } => *records,
        }
    }
}

/// Where the records sent in the open transaction came from: the number of each send (see
/// [`StreamClients::send`]) maps to the task and input offset that sent it, so that a record
/// the broker refuses is traced to its input record. Two pushes per input record that sends
/// anything at most; kept across transactions to reuse its memory.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    sends: u64,
    /// First send and task of each run of sends by one task.
    runs: Vec<(u64, TopicPartition)>,
    /// First send and origin of each input record, changelog write or timer that sent
    /// something.
    records: Vec<(u64, Origin)>,
}

/// What sent a record of the open transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The input record at this offset (its outputs, dead letter or state writes).
    Input(i64),
    /// The task's dedup changelog record of the transaction.
    Changelog,
    /// A timer's callback (its outputs, dead letter or state writes).
    Timer,
}

impl Origins {
    fn clear(&mut self) {
        self.sends = 0;
        self.runs.clear();
        self.records.clear();
    }

    /// Numbers the next send, by `task` for `source` (`None`: the same as the send before).
    fn next(&mut self, task: &TopicPartition, source: Option<Origin>) -> u64 {
        let seq = self.sends;
        self.sends += 1;
        if self.runs.last().map(|(_, tp)| tp) != Some(task) {
            self.runs.push((seq, task.clone()));
        }
        if let Some(origin) = source {
            self.records.push((seq, origin));
        }
        seq
    }

    /// Input records that sent something.
    pub(crate) fn input_records(&self) -> usize {
        self.records
            .iter()
            .filter(|(_, o)| matches!(o, Origin::Input(_)))
            .count()
    }

    /// The task and origin of send `seq`.
    pub(crate) fn of(&self, seq: u64) -> Option<(TopicPartition, Origin)> {
        let run = self
            .runs
            .partition_point(|(s, _)| *s <= seq)
            .checked_sub(1)?;
        let record = self
            .records
            .partition_point(|(s, _)| *s <= seq)
            .checked_sub(1)?;
        let (run_start, task) = &self.runs[run];
        let (record_start, origin) = self.records[record];
        (seq < self.sends && record_start >= *run_start).then(|| (task.clone(), origin))
    }
}

/// Sends a task's records through the clients, numbering them and noting their input record,
/// and keeping the client's own error (the task only sees its message) so that the engine can
/// tell a fenced producer from a full queue or a refused record.
struct ClientWriter<'c, C: StreamClients> {
    clients: &'c C,
    clock: &'c dyn Clock,
    /// When a send must stop waiting for room in the producer's queue (monotonic): the
    /// transaction's deadline (exactly-once).
    deadline: Option<Duration>,
    task: &'c TopicPartition,
    origins: &'c mut Origins,
    source: Option<Origin>,
    /// The number of the last send.
    seq: u64,
    failure: Option<ClientError>,
}

impl<C: StreamClients> TxnWriter for ClientWriter<'_, C> {
    fn send(&mut self, kind: RecordKind, record: &Output) -> Result<(), String> {
        let seq = self.origins.next(self.task, self.source.take());
        self.seq = seq;
        let (deadline, clock) = (self.deadline, self.clock);
        let within =
            || deadline.map_or(super::REQUEST_WAIT, |d| d.saturating_sub(clock.monotonic()));
        self.clients.send(kind, record, seq, &within).map_err(|e| {
            let message = e.to_string();
            self.failure = Some(e);
            message
        })
    }

    fn source(&mut self, offset: i64) {
        self.source = Some(Origin::Input(offset));
    }

    fn timer_source(&mut self) {
        self.source = Some(Origin::Timer);
    }
}

impl<'c, C: StreamClients> ClientWriter<'c, C> {
    /// A writer of `task`'s sends in the open transaction, the first from `source`.
    fn new(
        clients: &'c C,
        clock: &'c dyn Clock,
        deadline: Option<Duration>,
        task: &'c TopicPartition,
        origins: &'c mut Origins,
        source: Option<Origin>,
    ) -> Self {
        Self {
            clients,
            clock,
            deadline,
            task,
            origins,
            source,
            seq: 0,
            failure: None,
        }
    }

    /// The task's error as the fault it is: the client's own error if a send failed (so that
    /// a fenced producer, a full queue and a refused record are told apart).
    fn fault(self, error: TaskError) -> Fault {
        match self.failure {
            // The client refused this very record when it was sent: it is known exactly. (A
            // send refused because an earlier record's delivery failed names that record,
            // which may be an innocent neighbour in a refused produce batch.)
            Some(client)
                if client.kind == ClientErrorKind::Rejected && client.record == Some(self.seq) =>
            {
                Fault::RefusedAtSend(client)
            }
            Some(client) => Fault::Client(client),
            None => Fault::Task {
                task: self.task.clone(),
                error,
            },
        }
    }
}

/// Whether an at-least-once offset commit waits for the group coordinator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetCommit {
    Sync,
    Async,
}

/// Transactions refused because of one input record's outputs, in a row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused {
    offset: i64,
    times: u32,
}

impl<F: ProcessorFactory> Engine<F> {
    /// Opens a transaction before the first record of a batch is handed to a task.
    pub(crate) fn begin_if_needed<C: StreamClients>(&mut self, clients: &C) -> Result<(), Fault> {
        if self.txn.is_open() {
            return Ok(());
        }
        if self.cfg.exactly_once() {
            clients.begin_transaction()?;
        }
        self.origins.clear();
        self.txn = Txn::Open {
            started: self.env.clock.monotonic(),
            records: 0,
            counters: BTreeMap::new(),
        };
        clients.reached(Step::BeforeSend)?;
        Ok(())
    }

    /// Hands a run of one partition's records to its task in the open transaction.
    pub(crate) fn handle_run<C: StreamClients>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
        run: &[Record<'_>],
    ) -> Result<usize, Fault> {
        let until = self.txn_time_bound();
        self.in_transaction(
            clients,
            tp,
            |task, clock, writer| task.handle_batch_until(run, clock, writer, until),
            |taken| *taken.unwrap_or(&run.len()),
        )
    }

    /// Runs `work` on `tp`'s task with a writer into the open transaction, then adds the
    /// task's counters, and the input records `records` says it took, to the transaction's.
    fn in_transaction<C: StreamClients, R>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
        work: impl FnOnce(&mut TaskOf<F>, &dyn Clock, &mut dyn TxnWriter) -> Result<R, TaskError>,
        records: impl FnOnce(Option<&R>) -> usize,
    ) -> Result<R, Fault> {
        let deadline = self.coordinator_deadline();
        let slot = self.tasks.get_mut(tp).expect("the caller found the task");
        let mut writer = ClientWriter::new(
            clients,
            self.env.clock.as_ref(),
            deadline,
            tp,
            &mut self.origins,
            None,
        );
        let result = work(&mut slot.task, self.env.clock.as_ref(), &mut writer);
        let taken = records(result.as_ref().ok());
        let counters = slot.task.counters_mut().take();
        if let Txn::Open {
            records,
            counters: pending,
            ..
        } = &mut self.txn
        {
            *records += taken;
            pending.entry(tp.topic.clone()).or_default().merge(counters);
        }
        result.map_err(|error| writer.fault(error))
    }

    /// Step 4b: fires the wall-clock timers that are due, in the open transaction (opened
    /// for them if no record opened it).
    pub(crate) fn fire_wall_timers<C: StreamClients>(&mut self, clients: &C) -> Result<(), Fault> {
        let now = self.env.clock.now_ms();
        let due: Vec<TopicPartition> = self
            .tasks
            .iter()
            .filter(|(_, s)| s.is_running() && s.task.next_wall_timer().is_some_and(|t| t <= now))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in due {
            self.begin_if_needed(clients)?;
            self.in_transaction(
                clients,
                &tp,
                |task, clock, writer| task.fire_wall_timers(clock, writer),
                |_| 0,
            )?;
        }
        Ok(())
    }

    /// Commits the open transaction, in this order:
    ///
    /// 1. **Write the changelogs, flush the tasks**: each task sends the IDs it staged as its
    ///    dedup changelog record, then `Processor::flush` runs (external sinks commit here,
    ///    before Kafka).
    /// 2. **Collect the input offsets**: per task, the offset after the last record handled.
    /// 3. **Check the assignment**: if the group took it away, abort (the offsets would be
    ///    rejected; a broker that accepted them would commit behind the new owner's back).
    /// 4. **Commit**: exactly-once sends the offsets to the transaction with the group
    ///    metadata (KIP-447) and commits it, resuming a retriable failure (the outcome is not
    ///    known yet, so it must not be replaced by an abort); at-least-once flushes.
    /// 5. **Report** the transaction's counters: metrics count effects, not attempts.
    /// 6. **Apply the stores**: each task's staged IDs and state writes with their changelog
    ///    checkpoints, one atomic batch per store, only now (a store is never ahead of the
    ///    committed changelog). A store that fails is restored from its changelog.
    /// 7. **At-least-once only: commit the offsets**, last, after outputs and IDs are durable.
    pub(crate) fn commit<C: StreamClients>(&mut self, clients: &C) -> Result<(), Fault> {
        // At least once, the offsets of a running thread go out without waiting for the
        // coordinator: the records before them are delivered and their IDs stored, so a
        // commit that is lost (a crash, an error) only makes their redelivery a duplicate the
        // stores drop. With the global scope the offsets of repartition topics decide what is
        // purged, so they are waited for.
        let offsets = if self.cfg.dedup_scope == super::DedupScope::Global {
            OffsetCommit::Sync
        } else {
            OffsetCommit::Async
        };
        self.commit_then(clients, offsets)
    }

    /// [`commit`](Self::commit) whose at-least-once offset commit waits for the coordinator
    /// or not: the last commit before partitions move or the thread stops waits, so that the
    /// next owner starts where this one stopped.
    pub(crate) fn commit_then<C: StreamClients>(
        &mut self,
        clients: &C,
        offset_commit: OffsetCommit,
    ) -> Result<(), Fault> {
        if !self.txn.is_open() {
            return Ok(());
        }
        // 1.
        let deadline = self.coordinator_deadline();
        let clock = self.env.clock.clone();
        for (tp, slot) in self.tasks.iter_mut().filter(|(_, s)| s.is_running()) {
            let mut writer = ClientWriter::new(
                clients,
                clock.as_ref(),
                deadline,
                tp,
                &mut self.origins,
                Some(Origin::Changelog),
            );
            let written = slot.task.write_changelog(&mut writer);
            written.map_err(|error| writer.fault(error))?;
            // The sink commits last: a send that fails fails before it.
            let time_left = deadline.map(|d| d.saturating_sub(clock.monotonic()));
            slot.task.flush(time_left).map_err(|error| Fault::Task {
                task: tp.clone(),
                error,
            })?;
        }
        // 2.
        let offsets: Vec<(TopicPartition, i64)> = self
            .tasks
            .iter()
            .filter(|(_, s)| s.is_running())
            .filter_map(|(tp, s)| s.task.offset_to_commit().map(|o| (tp.clone(), o)))
            .collect();
        // 3.
        if self.cfg.exactly_once() && clients.assignment_lost() {
            return Err(Fault::Client(ClientError::new(
                ClientErrorKind::StaleMember,
                "commit",
                "the group took this member's partitions away before the commit",
            )));
        }
        // 4.
        let started = self.env.clock.monotonic();
        let delivered = if self.cfg.exactly_once() {
            clients.reached(Step::AfterSend)?;
            if !offsets.is_empty() {
                // Still retriable when the transaction is about to time out: abort (nothing
                // is committed yet) while the coordinator still takes the abort, rather than
                // retry until it aborts the transaction itself and fences the producer.
                let limit = started + self.cfg.txn_retry_limit;
                let deadline = self.txn_deadline().map_or(limit, |d| d.min(limit));
                self.retrying(deadline, || clients.send_offsets_to_transaction(&offsets))
                    .map_err(|e| match e.kind {
                        ClientErrorKind::Retriable => Fault::Client(ClientError {
                            kind: ClientErrorKind::Abortable,
                            ..e
                        }),
                        _ => Fault::Client(e),
                    })?;
            }
            clients.reached(Step::DuringCommit)?;
            // Deliveries are awaited until the transaction's deadline at most: the abort
            // that follows a failed wait still reaches the coordinator in time.
            self.retrying(started + self.cfg.txn_retry_limit, || {
                clients.commit_transaction(self.wait_until(self.txn_deadline()))
            })
            .map_err(|e| match e.kind {
                ClientErrorKind::Retriable => Fault::OutcomeUnknown(e),
                _ => Fault::Client(e),
            })?
        } else {
            clients.flush()?
        };
        // 5.
        let Txn::Open {
            records, counters, ..
        } = std::mem::replace(&mut self.txn, Txn::Idle)
        else {
            unreachable!("checked open above");
        };
        self.consecutive_failures = 0;
        self.fences_since_commit = 0;
        if self.output_missing && delivered.records.values().any(|n| *n > 0) {
            self.output_missing = false;
            tracing::info!(
                thread = self.cfg.thread,
                "outputs are delivered again: the missing output topic is back"
            );
        }
        if self.cfg.exactly_once() {
            self.note_committed(&offsets);
        }
        for (tp, next) in &offsets {
            if self.refused.get(tp).is_some_and(|r| r.offset < *next) {
                self.refused.remove(tp);
            }
            if self.isolating.get(tp).is_some_and(|bound| bound <= next) {
                self.isolating.remove(tp);
            }
        }
        let tasks = &self.tasks;
        self.isolating.retain(|tp, _| tasks.contains_key(tp));
        let seconds = self
            .env
            .clock
            .monotonic()
            .saturating_sub(started)
            .as_secs_f64();
        self.env
            .observer
            .committed(seconds, records, &delivered.records);
        self.report_counters(counters);
        self.progress.committed = Some(records);
        clients.reached(Step::AfterCommit)?;
        // 6.
        let mut failed = Vec::new();
        for (tp, slot) in self.tasks.iter_mut().filter(|(_, s)| s.is_running()) {
            let next = |changelog: &str| delivered.next_offset(changelog, tp.partition);
            if let Err(e) = slot.task.on_committed(&next) {
                tracing::warn!(task = %tp, error = %e, "store apply failed after commit; restoring the task from the changelog");
                failed.push(tp.clone());
            }
        }
        for tp in failed {
            self.env.observer.store_failed(&tp.topic, tp.partition);
            self.restart_task(&tp);
        }
        // 7.
        if !self.cfg.exactly_once() && !offsets.is_empty() {
            // A crash before this line re-delivers records whose IDs the stores now hold.
            match clients.commit_offsets(&offsets, offset_commit == OffsetCommit::Sync) {
                Ok(()) => self.note_committed(&offsets),
                Err(e) if e.is_terminated() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(thread = self.cfg.thread, error = %e, "offset commit failed; the next commit covers these records");
                }
            }
        }
        Ok(())
    }

    /// Calls a transactional API again while it fails with a retriable error (for
    /// `commit_transaction`, the documented way to resume a commit whose outcome is not known
    /// yet), until `deadline` (monotonic). Returns the last error.
    fn retrying<T>(
        &self,
        deadline: Duration,
        mut call: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(e) if e.kind == ClientErrorKind::Retriable => {
                    if self.env.clock.monotonic() >= deadline {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "retriable transaction error; calling again");
                    self.env.clock.sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// When the open transaction must be ended by, at the latest, for the coordinator to
    /// take it: four fifths of `transaction.timeout.ms` after it began (the rest is for the
    /// commit or abort request itself). `None` if no transaction is open.
    pub(crate) fn txn_deadline(&self) -> Option<Duration> {
        match &self.txn {
            Txn::Open { started, .. } => Some(*started + self.cfg.transaction_timeout * 4 / 5),
            Txn::Idle => None,
        }
    }

    /// [`txn_deadline`](Self::txn_deadline) where a coordinator times transactions out
    /// (exactly-once); `None` in at-least-once mode, whose batches have no timeout.
    fn coordinator_deadline(&self) -> Option<Duration> {
        self.cfg
            .exactly_once()
            .then(|| self.txn_deadline())
            .flatten()
    }

    /// Aborts the open transaction and rewinds every running task to its committed offset.
    pub(crate) fn abort<C: StreamClients>(
        &mut self,
        clients: &C,
        reason: &'static str,
    ) -> Result<(), Fault> {
        let was_open = self.txn.is_open();
        if was_open && self.cfg.exactly_once() {
            clients.abort_transaction()?;
        }
        self.txn = Txn::Idle;
        if was_open {
            tracing::info!(thread = self.cfg.thread, reason, "transaction aborted");
            self.env.observer.aborted(reason);
            self.progress.aborted = Some(reason.to_owned());
        }
        let running: Vec<TopicPartition> = self
            .tasks
            .iter()
            .filter(|(_, s)| s.is_running())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in running {
            let slot = self.tasks.get_mut(&tp).expect("listed above");
            let target = slot.task.on_aborted();
            match self.seek(clients, &tp, target) {
                Ok(()) => {}
                Err(e) if e.is_terminated() => return Err(e.into()),
                // A lost partition's task closes with the lost assignment. Any other task
                // that cannot be rewound restores anew (its restore ends with a seek to the
                // committed offset): it must never go on from where it is.
                Err(e) => {
                    tracing::warn!(task = %tp, error = %e, "rewind failed; the task restores anew");
                    self.restart_task(&tp);
                }
            }
        }
        Ok(())
    }

    /// Commits (or, if that fails, aborts) the open transaction: before a revoke and at
    /// shutdown.
    pub(crate) fn end_transaction<C: StreamClients>(
        &mut self,
        clients: &C,
        reason: &'static str,
    ) -> Result<(), EngineError> {
        if !self.txn.is_open() {
            return Ok(());
        }
        if let Err(fault) = self.commit_then(clients, OffsetCommit::Sync) {
            self.recover(clients, fault)?;
        }
        if self.txn.is_open() {
            if let Err(fault) = self.abort(clients, reason) {
                self.recover(clients, fault)?;
            }
        }
        Ok(())
    }

    /// Turns a failure into recovery: abort and rewind, restore a broken task, replace a
    /// fenced producer, or stop. `Err` stops the thread.
    pub(crate) fn recover<C: StreamClients>(
        &mut self,
        clients: &C,
        fault: Fault,
    ) -> Result<(), EngineError> {
        if fault.is_terminated() {
            return Err(EngineError::Terminated);
        }
        let cause = match &fault {
            Fault::Task { error, .. } => error.to_string(),
            Fault::Client(e) | Fault::OutcomeUnknown(e) | Fault::RefusedAtSend(e) => e.to_string(),
            Fault::MissingOffset { task, .. } => format!("no committed offset for {task}"),
        };
        let result = self.recover_from(clients, fault);
        if let Some(label) = &mut self.progress.aborted {
            if !label.contains(": ") {
                *label = format!("{label}: {cause}");
            }
        }
        result
    }

    fn recover_from<C: StreamClients>(
        &mut self,
        clients: &C,
        fault: Fault,
    ) -> Result<(), EngineError> {
        let thread = self.cfg.thread;
        match fault {
            Fault::MissingOffset {
                task,
                changelog,
                ids,
            } => {
                let error = EngineError::MissingOffset {
                    task,
                    changelog,
                    ids,
                };
                tracing::error!(thread, %error, "stopping");
                self.abort_or_stop(clients, "error")?;
                Err(error)
            }
            Fault::RefusedAtSend(e) => self.on_refused(clients, e, true),
            Fault::OutcomeUnknown(e) => {
                tracing::error!(thread, error = %e, "commit still unresolved after retrying; stopping the thread");
                Err(EngineError::CommitOutcomeUnknown {
                    seconds: self.cfg.txn_retry_limit.as_secs(),
                    source: e,
                })
            }
            Fault::Task { task, error } => {
                if error.is_fatal() {
                    tracing::error!(thread, error = %error, "fatal task error: aborting and stopping");
                    self.abort_or_stop(clients, "error")?;
                    return Err(EngineError::Task(error));
                }
                tracing::warn!(thread, error = %error, "task error: aborting the transaction and retrying");
                self.abort_or_stop(clients, "error")?;
                if matches!(error, TaskError::Store { .. }) {
                    // Do not go on with a store that failed: restore it from the changelog.
                    self.env.observer.store_failed(&task.topic, task.partition);
                    self.restart_task(&task);
                }
                self.backoff();
                Ok(())
            }
            Fault::Client(e) => match e.kind {
                ClientErrorKind::Terminated => Err(EngineError::Terminated),
                ClientErrorKind::ProducerFenced => self.on_producer_fenced(clients, e),
                ClientErrorKind::FencedInstance => Err(self.zombie(clients, e)),
                ClientErrorKind::Rejected => self.on_refused(clients, e, false),
                ClientErrorKind::StaleMember => {
                    tracing::warn!(thread, error = %e, "this member's generation is stale: aborting; the group reassigns the partitions");
                    self.abort_or_stop(clients, ABORT_LOST)
                }
                ClientErrorKind::Retriable | ClientErrorKind::Abortable => {
                    tracing::warn!(thread, error = %e, "aborting the transaction and retrying");
                    self.abort_or_stop(clients, "error")?;
                    self.backoff();
                    Ok(())
                }
                ClientErrorKind::UnknownTopic if e.record.is_some() => {
                    self.on_missing_output(clients, e)
                }
                ClientErrorKind::ProducerFailed => self.on_producer_failed(clients, e),
                ClientErrorKind::UnknownTopic | ClientErrorKind::Fatal => {
                    tracing::error!(thread, error = %e, "fatal client error: stopping the thread without committing anything more");
                    self.drop_tasks_unapplied();
                    Err(EngineError::Client(e))
                }
            },
        }
    }

    /// A record of the transaction went to an output topic that does not exist (deleted while
    /// the app runs; the producer does not create it). Nothing of the transaction may commit:
    /// abort and rewind, report not ready, and try again after the backoff until the topic is
    /// back. The thread keeps its tasks and its group membership meanwhile; stopping would
    /// only make the instance's restart refuse to start over the same missing topic.
    ///
    /// Each retry starts with a new producer: librdkafka's producer holds a topic it found
    /// missing as missing until its next periodic metadata refresh (5 minutes by default),
    /// and its sequence numbers for the old partitions would be refused by the new ones
    /// (OUT_OF_ORDER_SEQUENCE_NUMBER); a new producer (a new epoch) starts both afresh.
    fn on_missing_output<C: StreamClients>(
        &mut self,
        clients: &C,
        e: ClientError,
    ) -> Result<(), EngineError> {
        let thread = self.cfg.thread;
        if let Some((task, _)) = e.record.and_then(|seq| self.origins.of(seq)) {
            self.env
                .observer
                .production_error(&task.topic, "output_missing");
        }
        if self.output_missing {
            tracing::warn!(thread, error = %e, "the output topic is still missing: aborting the transaction and retrying");
        } else {
            tracing::error!(thread, error = %e, "an output topic is missing: aborting the transaction; not ready and retrying until it exists again (nothing is committed or skipped meanwhile)");
        }
        self.output_missing = true;
        self.abort_or_stop(clients, "error")?;
        if self.mode == Mode::Processing && !self.txn.is_open() {
            match clients.reset_producer() {
                Ok(()) => {}
                Err(e) if e.kind == ClientErrorKind::Retriable => {
                    tracing::warn!(thread, error = %e, "making a new producer failed; the next attempt tries again");
                }
                Err(e) => return Err(self.client_stop(e)),
            }
        }
        self.backoff();
        Ok(())
    }

    /// The producer failed on its own state (see [`ClientErrorKind::ProducerFailed`]): its
    /// open transaction can never commit. Drop the tasks without applying it and make a new
    /// producer, whose `init_transactions` aborts it; the tasks restore and go on. Bounded
    /// like fences: a producer that fails again and again without a commit stops the thread.
    fn on_producer_failed<C: StreamClients>(
        &mut self,
        clients: &C,
        e: ClientError,
    ) -> Result<(), EngineError> {
        self.fences_since_commit += 1;
        if self.fences_since_commit > super::rebalance::MAX_FENCES {
            tracing::error!(thread = self.cfg.thread, error = %e, "the producer failed again without a commit in between: stopping the thread");
            return Err(self.client_stop(e));
        }
        tracing::warn!(thread = %self.cfg.transactional_id, error = %e, "the producer failed for good on its own state: dropped this thread's tasks without applying its open transaction; a new producer aborts it, then the tasks restore");
        self.replace_producer_then_restore(clients, "error")
    }

    /// The broker refused a record of the transaction for good (too large, invalid for its
    /// topic, not authorized): abort, and trace it to its input record. The same input
    /// record refused `production_attempts` times in a row is dead-lettered when it is handled
    /// next (`exactly.error.kind = production`), or stops the thread with policy `fail`, so
    /// that one poison output never blocks its thread's tasks for good. A dead letter that is
    /// refused too stops the thread: nothing is skipped without a record of it.
    ///
    /// A refusal pins its input record only when the client refused the record as it was
    /// sent (`exact`), or when the transaction held the sends of one input record. A broker
    /// fails a produce batch as a whole (records of any task of the thread, to one output
    /// partition), so otherwise the first failed delivery may be an innocent neighbour: the
    /// thread then isolates, one input record per transaction, until every task has
    /// committed past what the refused transaction held, and the next refusal names its
    /// record.
    fn on_refused<C: StreamClients>(
        &mut self,
        clients: &C,
        e: ClientError,
        exact: bool,
    ) -> Result<(), EngineError> {
        let thread = self.cfg.thread;
        let origin = e.record.and_then(|seq| self.origins.of(seq));
        let held: Vec<(TopicPartition, i64)> = self
            .tasks
            .iter()
            .filter_map(|(tp, s)| s.task.offset_to_commit().map(|o| (tp.clone(), o)))
            .collect();
        // With nothing to isolate (no task holds records in the transaction) the first failed
        // record is all there is to go on.
        let pinned = exact || self.origins.input_records() == 1 || held.is_empty();
        self.abort_or_stop(clients, "error")?;
        let (task, offset) = match origin {
            Some((task, Origin::Input(offset))) => (task, offset),
            // Sending it again fails again, and no input record can be skipped for it.
            Some((task, Origin::Changelog)) => {
                let error = EngineError::ChangelogRefused { task, source: e };
                tracing::error!(thread, %error, "stopping");
                return Err(error);
            }
            Some((task, Origin::Timer)) => {
                let error = EngineError::TimerOutputRefused { task, source: e };
                tracing::error!(thread, %error, "stopping");
                return Err(error);
            }
            None => {
                tracing::warn!(thread, error = %e, "the broker refused a record whose input is unknown: aborting and retrying");
                self.backoff();
                return Ok(());
            }
        };
        if !pinned {
            self.env.observer.production_error(&task.topic, "retried");
            tracing::warn!(thread, error = %e, records = held.len(), "the broker refused a produce batch of this transaction: aborted; processing one input record per transaction until the refused record is found");
            self.isolating.extend(held);
            return Ok(());
        }
        let refused = self
            .refused
            .entry(task.clone())
            .or_insert(Refused { offset, times: 0 });
        if refused.offset != offset {
            *refused = Refused { offset, times: 0 };
        }
        refused.times += 1;
        let times = refused.times;
        let observer = self.env.observer.clone();
        let dead_lettering = self
            .tasks
            .get(&task)
            .is_some_and(|s| s.task.dead_letters_at(offset));
        let policy = self.cfg.task.on_production_error;
        if dead_lettering || policy == ErrorPolicy::Fail && times >= self.production_attempts() {
            observer.production_error(&task.topic, "stopped");
            let error = EngineError::Production {
                task,
                offset,
                times,
                dead_letter_refused: dead_lettering,
                source: e,
            };
            tracing::error!(thread, %error, "stopping");
            return Err(error);
        }
        if times < self.production_attempts() {
            observer.production_error(&task.topic, "retried");
            tracing::warn!(thread, %task, offset, times, error = %e, "the broker refused an output of this input record: aborted; trying again");
            self.backoff();
            return Ok(());
        }
        observer.production_error(&task.topic, "dead_lettered");
        tracing::warn!(thread, %task, offset, times, error = %e, "the broker refused an output of this input record again: it goes to the dead-letter topic");
        if let Some(slot) = self.tasks.get_mut(&task) {
            slot.task.dead_letter_at(
                offset,
                format!(
                    "the broker refused an output of this record in {times} transactions: {}",
                    e.message
                ),
            );
        }
        Ok(())
    }

    fn production_attempts(&self) -> u32 {
        self.cfg.task.production_attempts.max(1)
    }

    /// Aborts; if even the abort fails, the producer's failure decides (fenced, killed, or
    /// stop).
    fn abort_or_stop<C: StreamClients>(
        &mut self,
        clients: &C,
        reason: &'static str,
    ) -> Result<(), EngineError> {
        match self.abort(clients, reason) {
            Ok(()) => Ok(()),
            Err(Fault::Client(e)) => match e.kind {
                ClientErrorKind::Terminated => Err(EngineError::Terminated),
                ClientErrorKind::ProducerFenced => self.on_producer_fenced(clients, e),
                ClientErrorKind::FencedInstance => Err(self.zombie(clients, e)),
                ClientErrorKind::Retriable => self.on_abort_unreachable(clients, e, reason),
                ClientErrorKind::ProducerFailed => self.on_producer_failed(clients, e),
                _ => {
                    tracing::error!(thread = self.cfg.thread, error = %e, "abort failed: stopping the thread");
                    self.drop_tasks_unapplied();
                    Err(EngineError::Client(e))
                }
            },
            Err(other) => self.recover(clients, other),
        }
    }
}
