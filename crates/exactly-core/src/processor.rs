//! The `Processor` trait: what an application implements.

use crate::error::ProcessError;
use crate::record::{Output, Record, TaskId};
use crate::state::{StateStore, TaskStores};
use crate::timer::{by_due, by_key, decode_i64, Timer, TimerKind, TIMER_STORE};
use std::time::Duration;

/// Application logic, one instance per task (input partition).
///
/// `process` is synchronous: it runs inside an open Kafka transaction on the task's stream
/// thread, so it must not block for long and must not spawn work that outlives the call.
/// Everything it sends through [`Context::send`] becomes visible if and only if the
/// transaction that carries the record's offset commits.
///
/// ```
/// use exactly_core::{Context, Output, ProcessError, Processor, Record};
///
/// struct Upper;
/// impl Processor for Upper {
///     fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
///         let value = record.value.ok_or_else(|| ProcessError::dead_letter("empty value"))?;
///         ctx.send(Output::to("upper").value(value.to_ascii_uppercase()));
///         Ok(())
///     }
/// }
/// ```
pub trait Processor: Send + 'static {
    /// Called when the task starts running (after its dedup store is restored), and again
    /// after every restart of the task. A processor's own in-memory state is not rolled back
    /// when a transaction aborts; rebuild it here if it matters.
    fn init(&mut self, _ctx: &mut InitContext<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Handles one record that has not been seen before (by message ID).
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError>;

    /// Called by the runtime for each running task right before the Kafka transaction that
    /// carries this task's records commits: in exactly-once mode before the offsets are sent
    /// to the transaction and `commit_transaction`, in at-least-once mode before the flush.
    ///
    /// This is the pre-commit hook of external sinks (see `exactly-sinks`): a processor that
    /// buffers effects during [`process`](Self::process) makes them durable here, e.g. in one
    /// database transaction that also records their message IDs, so that the external commit
    /// always happens before the Kafka commit. A crash between the two redelivers the records,
    /// and the sink recognises their IDs.
    ///
    /// `Err` aborts the Kafka transaction and rewinds the tasks to their committed offsets,
    /// like a failed commit, with backoff: [`ProcessError::Fatal`] stops the app, any other
    /// error is retried by redelivery. [`abort`](Self::abort) is called on every task then.
    /// It may be called with nothing buffered (a task with no new record in this transaction).
    fn flush(&mut self, _ctx: &mut FlushContext<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called when the open transaction is aborted (a failed flush or commit, a task error, a
    /// fenced producer): the records of the transaction are delivered again, so effects
    /// buffered since the last [`flush`](Self::flush) must be discarded here.
    fn abort(&mut self) {}

    /// Called when the task is closed (revoked, shut down).
    fn close(&mut self) {}

    /// Called when a timer this task scheduled ([`Context::schedule`]) is due, inside the
    /// open transaction, like [`process`](Self::process) for a record: what it sends and
    /// writes commits with the transaction, exactly once, and the timer is removed with it.
    /// `ctx.message_id()` is the timer's ([`Timer::message_id`]); it may schedule again. See
    /// [`crate::timer`].
    fn on_timer(&mut self, _timer: &Timer, _ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// Creates one [`Processor`] per task. Implemented for every `Fn(&TaskId) -> P`.
pub trait ProcessorFactory: Send + Sync + 'static {
    /// The processor type.
    type Processor: Processor;
    /// A processor for `task`.
    fn create(&self, task: &TaskId) -> Self::Processor;
}

impl<P: Processor, F: Fn(&TaskId) -> P + Send + Sync + 'static> ProcessorFactory for F {
    type Processor = P;
    fn create(&self, task: &TaskId) -> P {
        self(task)
    }
}

/// What a processor sees of its task at `init`.
#[derive(Debug)]
pub struct InitContext<'a> {
    pub(crate) task: &'a TaskId,
}

impl<'a> InitContext<'a> {
    /// A context for `task` (used by runtimes and tests).
    pub fn new(task: &'a TaskId) -> Self {
        Self { task }
    }
    /// The task being started.
    pub fn task(&self) -> &TaskId {
        self.task
    }
}

/// What a processor sees of its task at [`Processor::flush`].
#[derive(Debug)]
pub struct FlushContext<'a> {
    pub(crate) task: &'a TaskId,
    pub(crate) next_offset: Option<i64>,
    pub(crate) time_left: Option<Duration>,
}

impl<'a> FlushContext<'a> {
    /// A context for `task` whose open transaction commits the input up to `next_offset`
    /// (used by runtimes and tests), with no time limit.
    pub fn new(task: &'a TaskId, next_offset: Option<i64>) -> Self {
        Self {
            task,
            next_offset,
            time_left: None,
        }
    }
    /// This context, for a transaction that must be ended within `time_left`.
    pub fn with_time_left(mut self, time_left: Option<Duration>) -> Self {
        self.time_left = time_left;
        self
    }
    /// How long the flush may take: the time until the runtime must end the open
    /// transaction (four fifths of `transaction.timeout.ms` after it began, so that its
    /// abort still reaches the coordinator), or `None` without such a limit (at-least-once).
    /// A sink bounds its retries and waits by it; a flush that fails when it runs out makes
    /// the transaction abort and its records come again, where a longer one would have the
    /// coordinator abort it and fence the producer.
    pub fn time_left(&self) -> Option<Duration> {
        self.time_left
    }
    /// The task being flushed.
    pub fn task(&self) -> &TaskId {
        self.task
    }
    /// The input offset the transaction commits for this task (the offset after the last
    /// record handled in it), or `None` if no record of this task is in it.
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }
}

/// What a processor can see and do while handling one record.
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) task: &'a TaskId,
    pub(crate) message_id: Option<&'a [u8]>,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
    pub(crate) outputs: &'a mut Vec<Output>,
    pub(crate) stores: Option<&'a mut TaskStores>,
    pub(crate) now_ms: i64,
    pub(crate) stream_time: Option<i64>,
    pub(crate) timer: Option<&'a Timer>,
}

impl<'a> Context<'a> {
    /// A context collecting outputs into `outputs` (used by runtimes and tests).
    pub fn new(
        task: &'a TaskId,
        record: &Record<'_>,
        message_id: Option<&'a [u8]>,
        outputs: &'a mut Vec<Output>,
    ) -> Self {
        Self {
            task,
            message_id,
            offset: record.offset,
            timestamp: record.timestamp,
            outputs,
            stores: None,
            now_ms: 0,
            stream_time: None,
            timer: None,
        }
    }

    /// A context for the callback of `timer` (`ctx.message_id()` is the timer's, the offset
    /// -1, the timestamp its due time).
    pub(crate) fn for_timer(
        task: &'a TaskId,
        timer: &'a Timer,
        message_id: &'a [u8],
        outputs: &'a mut Vec<Output>,
    ) -> Self {
        Self {
            task,
            message_id: Some(message_id),
            offset: -1,
            timestamp: Some(timer.due_ms),
            outputs,
            stores: None,
            now_ms: 0,
            stream_time: None,
            timer: Some(timer),
        }
    }

    pub(crate) fn with_stores(mut self, stores: &'a mut TaskStores, now_ms: i64) -> Self {
        self.stores = Some(stores);
        self.now_ms = now_ms;
        self
    }

    pub(crate) fn with_stream_time(mut self, stream_time: Option<i64>) -> Self {
        self.stream_time = stream_time;
        self
    }

    /// The task's state store named `name` (declared in the app's config, see
    /// [`StoreSpec`](crate::state::StoreSpec)). Its writes commit with this record's outputs;
    /// [`TypedStore`](crate::state::TypedStore) gives typed access.
    ///
    /// An undeclared name is a [`ProcessError::Fatal`]: a programming error no retry fixes.
    pub fn store(&mut self, name: &str) -> Result<StateStore<'_>, ProcessError> {
        let now_ms = self.now_ms;
        let declared = || -> String {
            match &self.stores {
                Some(s) if !s.slots.is_empty() => s
                    .slots
                    .iter()
                    .map(|s| s.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "none".to_owned(),
            }
        };
        let found = self
            .stores
            .as_ref()
            .and_then(|s| s.slots.iter().position(|s| s.spec.name == name));
        let Some(i) = found else {
            return Err(ProcessError::fatal(format!(
                "no state store named {name:?} (declared: {}); declare it with `App::store` (or in `TaskConfig::stores`)",
                declared()
            )));
        };
        let slot = &mut self.stores.as_mut().expect("found above").slots[i];
        Ok(StateStore::new(slot, now_ms))
    }

    /// The timer store, or the error that says how to declare it.
    fn timer_store(&mut self) -> Result<StateStore<'_>, ProcessError> {
        let declared = self
            .stores
            .as_ref()
            .is_some_and(|s| s.slots.iter().any(|s| s.spec.is_timers()));
        if !declared {
            return Err(ProcessError::fatal(
                "this app uses timers but does not declare them: call `App::timers()` (or add `StoreSpec::timers()` to `TaskConfig::stores`)",
            ));
        }
        self.store(TIMER_STORE)
    }

    /// Schedules the timer of `kind` for `key` at `due_ms` (ms since the Unix epoch),
    /// replacing the key's earlier one of that kind: [`Processor::on_timer`] runs when it is
    /// due (see [`crate::timer`]). Committed with this record's effects, or not at all. A time
    /// already passed fires right after this call's record (stream time) or at the next turn
    /// (wall clock).
    pub fn schedule(
        &mut self,
        kind: TimerKind,
        key: impl AsRef<[u8]>,
        due_ms: i64,
    ) -> Result<(), ProcessError> {
        let key = key.as_ref();
        let mut store = self.timer_store()?;
        let by_key = by_key(kind, key);
        if let Some(old) = store.get(&by_key)?.as_deref().and_then(decode_i64) {
            store.delete(by_due(kind, old, key));
        }
        store.put(by_key, &due_ms.to_be_bytes());
        store.put(by_due(kind, due_ms, key), &[]);
        let next = &mut self
            .stores
            .as_mut()
            .expect("the timer store exists")
            .next_timer[kind.index()];
        *next = Some(next.map_or(due_ms, |t| t.min(due_ms)));
        Ok(())
    }

    /// Cancels `key`'s timer of `kind`, if it has one. Returns when it was due.
    pub fn cancel(
        &mut self,
        kind: TimerKind,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<i64>, ProcessError> {
        let key = key.as_ref();
        let mut store = self.timer_store()?;
        let by_key = by_key(kind, key);
        let old = store.get(&by_key)?.as_deref().and_then(decode_i64);
        if let Some(old) = old {
            store.delete(by_due(kind, old, key));
            store.delete(by_key);
        }
        Ok(old)
    }

    /// When `key`'s timer of `kind` is due, if it has one.
    pub fn scheduled(
        &mut self,
        kind: TimerKind,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<i64>, ProcessError> {
        let by_key = by_key(kind, key.as_ref());
        Ok(self
            .timer_store()?
            .get(&by_key)?
            .as_deref()
            .and_then(decode_i64))
    }

    /// The wall clock (ms since the Unix epoch) when this attempt began: the time wall-clock
    /// timers follow.
    pub fn wall_clock_ms(&self) -> i64 {
        self.now_ms
    }

    /// The task's stream time: the largest record timestamp it has seen, this record's
    /// included (`None` before any record with a timestamp).
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// The timer whose callback this is ([`Processor::on_timer`]), `None` in `process`.
    pub fn timer(&self) -> Option<&Timer> {
        self.timer
    }

    /// Queues an output. It is sent only if `process` returns `Ok`; outputs of a failed
    /// attempt are discarded.
    pub fn send(&mut self, output: Output) {
        self.outputs.push(output);
    }
    /// The record's message ID (`None` when processed without one by the ID policy `process`).
    pub fn message_id(&self) -> Option<&[u8]> {
        self.message_id
    }
    /// The task (input topic and partition).
    pub fn task(&self) -> &TaskId {
        self.task
    }
    /// Input partition.
    pub fn partition(&self) -> i32 {
        self.task.partition
    }
    /// Input offset (-1 in [`Processor::on_timer`]).
    pub fn offset(&self) -> i64 {
        self.offset
    }
    /// Record timestamp (ms since the Unix epoch).
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}
