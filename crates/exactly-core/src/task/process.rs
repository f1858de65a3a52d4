//! Handling records in the open transaction: dedup, the processor, dead letters.

use super::*;
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// A record's message ID and its store key.
type KeyedId<'r> = (Cow<'r, [u8]>, IdKey);

/// Adds the input's message ID header to the outputs that want it and have no header of that
/// name: the first of them gets `id` itself, the n-th after it `id#n`, so that outputs of one
/// input (a fan-out) keep distinct IDs downstream while a resent copy of any of them has the
/// same. The numbering is stable: a transaction's outputs come from one run of `process`.
pub(super) fn propagate_id(outputs: &mut [Output], id: &[u8], header: &str) {
    let mut n = 0usize;
    for out in outputs {
        if !out.propagate_message_id || out.headers.iter().any(|(k, _)| k == header) {
            continue;
        }
        let value = if n == 0 {
            id.to_vec()
        } else {
            let mut v = id.to_vec();
            v.extend_from_slice(format!("#{n}").as_bytes());
            v
        };
        out.headers.push((header.to_owned(), Some(value)));
        n += 1;
    }
}

/// How one record's (or timer's) processing ended.
pub(super) enum Attempt {
    Done,
    DeadLetter { kind: &'static str, reason: String },
}

impl<P: Processor, S: DedupStore> Task<P, S> {
    /// Handles a batch of records of this task's partition, in offset order, inside the open
    /// transaction. On `Err` the runtime must abort the transaction.
    ///
    /// Only records at or after the task's [`position`](Self::position) are handled: one
    /// before it was handled in this transaction already, or was fetched before a rewind and
    /// is delivered again; it is dropped and counted as stale.
    pub fn handle_batch(
        &mut self,
        records: &[Record<'_>],
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        self.handle_batch_until(records, clock, writer, None)
            .map(|_| ())
    }

    /// [`handle_batch`](Self::handle_batch) that stops before the next record once the
    /// monotonic clock reached `until` (the transaction's time bound: a processor that retries
    /// with backoff can make a batch outlast the transaction timeout). At least one record is
    /// handled. Returns how many of `records` were taken (handled or dropped as stale); the
    /// rest must be handed again, in a later transaction.
    pub fn handle_batch_until(
        &mut self,
        records: &[Record<'_>],
        clock: &dyn Clock,
        writer: &mut dyn TxnWriter,
        until: Option<Duration>,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Running {
            return Err(self.wrong_state("handle_batch"));
        }
        let stale = match self.position() {
            Some(position) => records.iter().take_while(|r| r.offset < position).count(),
            None => 0,
        };
        self.counters.stale += stale as u64;
        let records = &records[stale..];
        if records.is_empty() {
            return Ok(stale);
        }
        if let Some(repartition) = &self.repartition {
            let repartition = repartition.clone();
            return self
                .forward_batch(&repartition, records, writer)
                .map(|()| stale + records.len());
        }
        let ids: Vec<Result<KeyedId<'_>, InvalidId>> = records
            .iter()
            .map(|r| {
                let id = self.config.ids.id_of(r)?;
                let key = IdKey::of(&id);
                Ok((id, key))
            })
            .collect();

        // One batched store lookup for the IDs not already staged (most lookups miss; a
        // RocksDB store answers them from bloom filters).
        let mut lookup_index = Vec::with_capacity(ids.len());
        let mut keys: Vec<IdKey> = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if let Ok((_, key)) = id {
                if !self.overlay.contains_key(key) {
                    lookup_index.push(i);
                    keys.push(*key);
                }
            }
        }
        let mut found = Vec::with_capacity(keys.len());
        self.store
            .get_many(&keys, &mut found)
            .map_err(|e| self.store_err(e))?;
        let mut in_store = vec![false; records.len()];
        // One wall-clock reading per batch: the retention cutoff and the IDs' first-seen time.
        let now_ms = clock.now_ms();
        let cutoff = now_ms - self.config.dedup_retention_ms;
        for (slot, entry) in lookup_index.iter().zip(found) {
            // An expired entry may still be on disk until compaction: it does not count.
            in_store[*slot] = entry.is_some_and(|e| e.first_seen_ms >= cutoff);
        }

        for (i, record) in records.iter().enumerate() {
            if i > 0 && until.is_some_and(|u| clock.monotonic_coarse() >= u) {
                return Ok(stale + i);
            }
            self.counters.consumed += 1;
            writer.source(record.offset);
            self.observe_timestamp(record.timestamp);
            match &ids[i] {
                Ok((id, key)) => {
                    if in_store[i] || self.overlay.contains_key(key) {
                        self.counters.duplicates += 1;
                    } else {
                        self.handle_new(record, Some(id.as_ref()), clock, writer)?;
                        self.stage_id(*key, record.offset, now_ms);
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
            self.after_record(clock, writer)?;
        }
        Ok(stale + records.len())
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
            writer.source(record.offset);
            if let Some(reason) = self.poison_reason(record.offset) {
                self.dead_letter(record, None, "production", &reason, writer)?;
                self.pending_offset = Some(record.offset + 1);
                continue;
            }
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
        if let Some(reason) = self.poison_reason(record.offset) {
            return self.dead_letter(record, id, "production", &reason, writer);
        }
        let attempt = self.run_processor(record, id, clock);
        self.check_stores_after_attempt()?;
        match attempt {
            Ok(Attempt::Done) => {
                self.counters.processed += 1;
                self.stage_state_writes(writer)?;
                self.send_outputs(id, writer)
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

    /// After an attempt: a state store that failed during it fails the task, and the
    /// attempt's outputs and writes are dropped.
    pub(super) fn check_stores_after_attempt(&mut self) -> Result<(), TaskError> {
        match self.stores.take_failure() {
            Some((store, source)) => {
                self.outputs.clear();
                self.stores.drop_pending();
                Err(self.state_err(&store, source))
            }
            None => Ok(()),
        }
    }

    /// Sends the successful attempt's outputs, with `id` propagated to them.
    pub(super) fn send_outputs(
        &mut self,
        id: Option<&[u8]>,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        if let Some(id) = id {
            propagate_id(
                &mut self.outputs,
                id,
                self.config.ids.source.propagated_header(),
            );
        }
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

    /// The reason to dead-letter the record at `offset` instead of processing it, if the
    /// broker refused its outputs for good ([`Task::dead_letter_at`]).
    fn poison_reason(&self, offset: i64) -> Option<String> {
        self.poison.get(&offset).cloned()
    }

    /// Sends the successful attempt's state writes as changelog records in the open
    /// transaction and stages them (applied to the stores after the commit).
    pub(super) fn stage_state_writes(
        &mut self,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
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
        self.run_attempts(record.offset, clock, |task, now_ms| {
            let mut ctx = Context::new(&task.id, record, id, &mut task.outputs)
                .with_stores(&mut task.stores, now_ms)
                .with_stream_time(task.stream_time);
            let processor = task
                .processor
                .as_mut()
                .expect("a processing task has a processor");
            catch_unwind(AssertUnwindSafe(|| processor.process(record, &mut ctx)))
        })
    }

    /// Runs `call` (the processor on one record or timer) with the retry and error policies:
    /// each attempt starts with no outputs and no pending state writes. `offset` names the
    /// input in errors.
    pub(super) fn run_attempts(
        &mut self,
        offset: i64,
        clock: &dyn Clock,
        mut call: impl FnMut(&mut Self, i64) -> std::thread::Result<Result<(), ProcessError>>,
    ) -> Result<Attempt, TaskError> {
        let retry: RetryPolicy = self.config.retry;
        let mut attempt = 1u32;
        loop {
            self.outputs.clear();
            self.stores.drop_pending();
            // State stores read their entries' TTL against it; processors read it as
            // `Context::wall_clock_ms` (e.g. to schedule wall-clock timers).
            let now_ms = clock.now_ms();
            let result = call(self, now_ms);
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
                Ok(Err(ProcessError::Deserialization(reason))) => {
                    self.count_error("deserialization");
                    return Ok(Attempt::DeadLetter {
                        kind: "deserialization",
                        reason,
                    });
                }
                Ok(Err(ProcessError::Fatal(reason))) => {
                    self.count_error("fatal");
                    return Err(TaskError::Processor {
                        task: self.id.to_string(),
                        offset,
                        reason,
                    });
                }
                Err(panic) => {
                    self.count_error("panic");
                    (
                        "panic",
                        format!("processor panicked: {}", panic_message(panic.as_ref())),
                    )
                }
            };
            return match self.config.on_error {
                ErrorPolicy::DeadLetter => Ok(Attempt::DeadLetter { kind, reason }),
                ErrorPolicy::Fail => Err(TaskError::Processor {
                    task: self.id.to_string(),
                    offset,
                    reason,
                }),
            };
        }
    }

    pub(super) fn count_error(&mut self, kind: &'static str) {
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
        self.send_dead_letter(&out, kind, writer)?;
        tracing::warn!(task = %self.id, offset = record.offset, kind, reason, "record dead-lettered");
        Ok(())
    }

    /// Sends a dead letter in the open transaction and counts it by `kind`.
    pub(super) fn send_dead_letter(
        &mut self,
        out: &Output,
        kind: &'static str,
        writer: &mut dyn TxnWriter,
    ) -> Result<(), TaskError> {
        writer
            .send(RecordKind::DeadLetter, out)
            .map_err(|reason| TaskError::Write {
                task: self.id.to_string(),
                reason,
            })?;
        *self.counters.dead_lettered.entry(kind).or_default() += 1;
        self.dead_letter_count += 1;
        Ok(())
    }

    /// Stages a handled ID in the overlay; [`write_changelog`](Self::write_changelog) sends
    /// it to the changelog with the transaction's other IDs.
    fn stage_id(&mut self, key: IdKey, source_offset: i64, first_seen_ms: i64) {
        let entry = SeenEntry {
            first_seen_ms,
            source_offset,
        };
        self.overlay.insert(key, entry);
    }
}
