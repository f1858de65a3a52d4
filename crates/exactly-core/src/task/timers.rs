//! Timers of a task (see [`crate::timer`]): stream time, firing due timers inside the open
//! transaction, and the dead letter of a timer whose callback failed for good.

use super::process::Attempt;
use super::*;
use crate::state::StateStore;
use crate::timer::{
    by_due, by_key, decode_i64, due_prefix, first_due, parse_due, timer_headers, Timer, TimerKind,
    STREAM_TIME_KEY,
};

/// Due timers read from the store at a time.
const FIRE_BATCH: usize = 1_024;
/// Batches fired in one go: beyond it, timers that keep scheduling themselves at or before
/// the current time wait for the next record (stream time) or turn (wall clock).
const FIRE_ROUNDS: usize = 1_024;

impl<P: Processor, S: DedupStore> Task<P, S> {
    /// Whether this task fires timers: it runs a processor and the app declared the timer
    /// store.
    fn has_timers(&self) -> bool {
        self.processor.is_some() && self.stores.timers().is_some()
    }

    /// The task's stream time: the largest record timestamp it has seen (in committed and
    /// open transactions).
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// A record of the open transaction moves stream time to its timestamp if later (before
    /// it is processed: `Context::stream_time` includes it).
    pub(super) fn observe_timestamp(&mut self, timestamp: Option<i64>) {
        if let Some(ts) = timestamp {
            if self.stream_time.is_none_or(|t| ts > t) {
                self.stream_time = Some(ts);
            }
        }
    }

    /// After a record of the open transaction: fires the stream-time timers due by now.
    pub(super) fn after_record(
        &mut self,
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        match (
            self.stream_time,
            self.stores.next_timer[TimerKind::Stream.index()],
        ) {
            (Some(now), Some(next)) if next <= now && self.has_timers() => {
                self.fire_due(TimerKind::Stream, now, clock, writer)?;
                self.find_next_timer(TimerKind::Stream)
            }
            _ => Ok(()),
        }
    }

    /// When the earliest wall-clock timer is due, at the earliest (`None`: none is
    /// scheduled, or the task does not run).
    pub fn next_wall_timer(&self) -> Option<i64> {
        if self.state != TaskState::Running {
            return None;
        }
        self.stores.next_timer[TimerKind::Wall.index()]
    }

    /// Fires the wall-clock timers due by the clock's time in the open transaction; returns
    /// how many fired. The runtime calls it when [`next_wall_timer`](Self::next_wall_timer)
    /// has passed.
    pub fn fire_wall_timers(
        &mut self,
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("fire_wall_timers"));
        }
        let now = clock.now_ms();
        let next = self.stores.next_timer[TimerKind::Wall.index()];
        if !self.has_timers() || next.is_none_or(|t| t > now) {
            return Ok(0);
        }
        let fired = self.fire_due(TimerKind::Wall, now, clock, writer)?;
        // The callbacks may have scheduled timers of the other kind too: their hints are
        // lower bounds, kept as they are.
        self.find_next_timer(TimerKind::Wall)?;
        Ok(fired)
    }

    /// Reads the earliest timer of each kind into the hints (after a restore or an abort).
    pub(super) fn find_next_timers(&mut self) -> Result<(), TaskError> {
        self.find_next_timer(TimerKind::Stream)?;
        self.find_next_timer(TimerKind::Wall)
    }

    /// Reads the earliest timer of `kind` into its hint.
    fn find_next_timer(&mut self, kind: TimerKind) -> Result<(), TaskError> {
        self.stores.next_timer[kind.index()] = None;
        if !self.has_timers() {
            return Ok(());
        }
        let first = self.due_timers(kind, i64::MAX, 1)?;
        self.stores.next_timer[kind.index()] = first.first().map(|t| t.due_ms);
        Ok(())
    }

    /// Reads the stream time the timer store holds (at the end of a restore, after an abort).
    pub(super) fn load_stream_time(&mut self) -> Result<(), TaskError> {
        self.stream_time = None;
        for i in self.stream_time_slots() {
            let read = self.with_slot(i, 0, |s| s.get(STREAM_TIME_KEY))?;
            let stored = read.as_deref().and_then(decode_i64);
            self.stream_time = self.stream_time.max(stored);
        }
        self.stream_time_written = self.stream_time;
        Ok(())
    }

    /// The stores that keep the task's stream time (the timer store, window stores).
    fn stream_time_slots(&self) -> Vec<usize> {
        if self.processor.is_none() {
            return Vec::new();
        }
        (0..self.stores.slots.len())
            .filter(|i| TaskStores::keeps_stream_time(&self.stores.slots[*i].spec))
            .collect()
    }

    /// Before the commit: writes the stream time to the stores that keep it (the timer store,
    /// window stores) if it moved in the open transaction (once per transaction, not per
    /// record).
    pub(super) fn write_stream_time(
        &mut self,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        let Some(now) = self.stream_time else {
            return Ok(());
        };
        if self.stream_time_written == Some(now) {
            return Ok(());
        }
        let slots = self.stream_time_slots();
        if slots.is_empty() {
            return Ok(());
        }
        for i in slots {
            let slot = &mut self.stores.slots[i];
            StateStore::new(slot, 0).put(STREAM_TIME_KEY.to_vec(), &now.to_be_bytes());
        }
        self.stage_state_writes(writer)?;
        self.stream_time_written = Some(now);
        Ok(())
    }

    /// Runs `f` on the timer store (which the caller checked exists); a store failure is the
    /// task's error.
    fn with_timer_store<R>(
        &mut self,
        now_ms: i64,
        f: impl FnOnce(&mut StateStore<'_>) -> Result<R, ProcessError>,
    ) -> Result<R, TaskError> {
        let i = self.stores.timers().expect("the timer store is declared");
        self.with_slot(i, now_ms, f)
    }

    /// Runs `f` on the task's state store number `i`; a store failure is the task's error.
    fn with_slot<R>(
        &mut self,
        i: usize,
        now_ms: i64,
        f: impl FnOnce(&mut StateStore<'_>) -> Result<R, ProcessError>,
    ) -> Result<R, TaskError> {
        let result = f(&mut StateStore::new(&mut self.stores.slots[i], now_ms));
        if let Some((store, source)) = self.stores.take_failure() {
            return Err(self.state_err(&store, source));
        }
        result.map_err(|e| {
            let name = self.stores.slots[i].spec.name.clone();
            self.state_err(&name, StoreError::Io(e.to_string()))
        })
    }

    /// Up to `limit` timers of `kind` due at or before `now`, in due order.
    fn due_timers(
        &mut self,
        kind: TimerKind,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Timer>, TaskError> {
        let from = first_due(kind);
        let to = match now.checked_add(1) {
            Some(after) => Some(due_prefix(kind, after)),
            None => crate::state::prefix_end(&from),
        };
        let entries = self.with_timer_store(0, |s| s.range_limit(&from, to.as_deref(), limit))?;
        Ok(entries.iter().filter_map(|(k, _)| parse_due(k)).collect())
    }

    /// Fires the timers of `kind` due at or before `now`, in due order, including those
    /// their callbacks schedule at or before `now`.
    fn fire_due(
        &mut self,
        kind: TimerKind,
        now: i64,
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<usize, TaskError> {
        let mut fired = 0;
        for _ in 0..FIRE_ROUNDS {
            let due = self.due_timers(kind, now, FIRE_BATCH)?;
            if due.is_empty() {
                return Ok(fired);
            }
            for timer in due {
                self.fire(&timer, clock, writer)?;
                fired += 1;
            }
        }
        tracing::warn!(task = %self.id, kind = kind.as_str(), fired, "timers keep scheduling themselves at or before the current time; the rest fire later");
        Ok(fired)
    }

    /// Deletes `timer` among the pending writes of the timer store.
    fn remove_pending(&mut self, timer: &Timer, now_ms: i64) {
        let i = self.stores.timers().expect("the timer store is declared");
        let mut store = StateStore::new(&mut self.stores.slots[i], now_ms);
        store.delete(by_key(timer.kind, &timer.key));
        store.delete(by_due(timer.kind, timer.due_ms, &timer.key));
    }

    /// Runs the processor's callback for one due timer and commits its effects and its
    /// removal in the open transaction, or dead-letters it.
    fn fire(
        &mut self,
        timer: &Timer,
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        writer.timer_source();
        let id = timer.message_id();
        let attempt = self.run_attempts(-1, clock, |task, now_ms| {
            // The timer goes with a successful callback (which may schedule its key again).
            task.remove_pending(timer, now_ms);
            let mut ctx = Context::for_timer(&task.id, timer, &id, &mut task.outputs)
                .with_stores(&mut task.stores, now_ms)
                .with_stream_time(task.stream_time);
            let processor = task
                .processor
                .as_mut()
                .expect("a task with timers has a processor");
            catch_unwind(AssertUnwindSafe(|| processor.on_timer(timer, &mut ctx)))
        });
        let attempt = attempt.map_err(|e| match e {
            TaskError::Processor { task, reason, .. } => TaskError::Processor {
                task,
                offset: -1,
                reason: format!(
                    "timer {} {:?} due at {}: {reason}",
                    timer.kind.as_str(),
                    String::from_utf8_lossy(&timer.key),
                    timer.due_ms
                ),
            },
            e => e,
        });
        self.check_stores_after_attempt()?;
        match attempt {
            Ok(Attempt::Done) => {
                self.counters.timers_fired += 1;
                self.stage_state_writes(writer)?;
                self.send_outputs(Some(&id), writer)
            }
            Ok(Attempt::DeadLetter { kind, reason }) => {
                self.outputs.clear();
                self.stores.drop_pending();
                self.remove_pending(timer, clock.now_ms());
                self.stage_state_writes(writer)?;
                self.dead_letter_timer(timer, &id, kind, &reason, writer)
            }
            Err(e) => {
                self.outputs.clear();
                self.stores.drop_pending();
                Err(e)
            }
        }
    }

    /// Sends a timer whose callback failed for good to the dead-letter topic.
    fn dead_letter_timer(
        &mut self,
        timer: &Timer,
        id: &[u8],
        kind: &'static str,
        reason: &str,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        let Some(topic) = self.config.dead_letter_topic.as_deref() else {
            return Err(TaskError::NoDeadLetterTopic {
                task: self.id.to_string(),
                offset: -1,
                reason: format!(
                    "timer {} due at {}: {reason}",
                    timer.kind.as_str(),
                    timer.due_ms
                ),
            });
        };
        let out = Output::to(topic)
            .key(timer.key.clone())
            .header(self.config.ids.source.propagated_header(), id.to_vec())
            .header(dlq_headers::ERROR, reason)
            .header(dlq_headers::ERROR_KIND, kind)
            .header(timer_headers::KIND, timer.kind.as_str())
            .header(timer_headers::DUE, timer.due_ms.to_string())
            .header(dlq_headers::SOURCE_TOPIC, &*self.id.topic)
            .header(dlq_headers::SOURCE_PARTITION, self.id.partition.to_string());
        self.send_dead_letter(&out, kind, writer)?;
        tracing::warn!(task = %self.id, timer = timer.kind.as_str(), due = timer.due_ms, kind, reason, "timer dead-lettered");
        Ok(())
    }
}
