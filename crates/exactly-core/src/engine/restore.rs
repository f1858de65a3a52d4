//! Restore orchestration: replaying each restoring task's changelogs into its stores, and
//! starting the task once its stores are complete for its committed input offset.

use super::client::{Isolation, RecordBatch, StreamClients, TopicPartition};
use super::error::Fault;
use super::tasks::{retry_wait, Part, Phase, Slot};
use super::Engine;
use crate::processor::ProcessorFactory;
use crate::task::WipeReason;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a restore step waits for the first changelog record.
const RESTORE_POLL: Duration = Duration::from_millis(10);
/// Changelog records taken into one restore step at most (then processing of running tasks
/// and the group consumer's poll get their turn).
const RESTORE_BATCH_RECORDS: usize = 10_000;
/// How often a restore that reached the end it knows asks the broker for the ends again.
const END_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often a restore that waits for an open transaction says so.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

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

impl<F: ProcessorFactory> Engine<F> {
    /// Checks a new task's stores against their changelogs and sets where each changelog is
    /// replayed from:
    ///
    /// - the dedup store: from its checkpoint (only the tail) unless it cannot be trusted
    ///   (corrupt, of another changelog, ahead of the changelog: wiped, replayed whole); with
    ///   [`RestoreFrom::Start`](super::RestoreFrom::Start) from the changelog's start, unless
    ///   nothing but a transaction marker lies past the checkpoint;
    /// - each state store: from its checkpoint if it matched its changelog recently enough
    ///   that no tombstone written since can be compacted away ([`Task::state_restore_plan`]),
    ///   else wiped and replayed whole; with `RestoreFrom::Start` always wiped and replayed
    ///   whole.
    ///
    /// [`Task::state_restore_plan`]: crate::Task::state_restore_plan
    pub(crate) fn apply_plan(
        &self,
        tp: &TopicPartition,
        slot: &mut Slot<F::Processor>,
    ) -> Result<(), Fault> {
        let Phase::Restoring(restore) = &mut slot.phase else {
            return Ok(());
        };
        let Some((dedup, states)) = restore.parts.split_first_mut() else {
            return Ok(());
        };
        let fault = |error| Fault::Task {
            task: tp.clone(),
            error,
        };
        let from_start = self.cfg.restore_from == super::RestoreFrom::Start;
        let plan = slot
            .task
            .restore_plan(dedup.low, dedup.end)
            .map_err(fault)?;
        self.report_wipe(tp, &slot.changelogs[0], plan.wiped.as_ref());
        // With nothing past the checkpoint but a transaction's marker (and no transaction
        // open), a replay from the start would only rewrite what the store holds.
        let tail_empty =
            plan.wiped.is_none() && dedup.hw == Some(dedup.end) && dedup.end - plan.from <= 1;
        dedup.from = if from_start && !tail_empty {
            dedup.low
        } else {
            plan.from
        };
        let now_ms = self.env.clock.now_ms();
        for (k, part) in states.iter_mut().enumerate() {
            let plan = if from_start {
                slot.task.wipe_state_store(k).map_err(fault)?;
                crate::task::RestorePlan {
                    from: part.low,
                    wiped: None,
                }
            } else {
                slot.task
                    .state_restore_plan(k, part.low, part.end, now_ms)
                    .map_err(fault)?
            };
            self.report_wipe(tp, &slot.changelogs[k + 1], plan.wiped.as_ref());
            part.from = plan.from;
        }
        let ranges: Vec<String> = slot
            .changelogs
            .iter()
            .zip(&restore.parts)
            .map(|(c, p)| format!("{c}: {}..{}", p.from, p.end))
            .collect();
        tracing::info!(thread = %self.cfg.transactional_id, task = %tp, ?ranges, "restoring stores");
        let remaining = restore.parts.iter().map(|p| (p.end - p.from).max(0)).sum();
        self.env
            .observer
            .restore_remaining(&tp.topic, tp.partition, remaining);
        Ok(())
    }

    /// Logs (and, for a damaged or foreign store, counts) a store wiped before its restore.
    fn report_wipe(&self, tp: &TopicPartition, changelog: &str, wiped: Option<&WipeReason>) {
        let Some(reason) = wiped else {
            return;
        };
        if reason.is_fault() {
            self.env
                .observer
                .store_wiped(&tp.topic, tp.partition, reason.label());
            tracing::warn!(task = %tp, changelog, %reason, "store wiped; full restore from the changelog");
        } else {
            tracing::info!(task = %tp, changelog, %reason, "full restore from the changelog");
        }
    }

    /// Step 4: replays changelog records into restoring tasks; completes restores that
    /// reached the end of every changelog partition with no open transaction on it.
    pub(crate) fn restore_step<C: StreamClients>(&mut self, clients: &C) -> Result<(), Fault> {
        self.reconcile_restore_assignment(clients)?;
        if self.tasks.values().all(|s| s.is_running()) {
            return Ok(());
        }
        let now = self.env.clock.monotonic();
        let (poll_at, failed_polls) = self.restore_poll_retry;
        if now < poll_at {
            return Ok(());
        }
        let batch = match clients.restore_poll(RESTORE_BATCH_RECORDS, RESTORE_POLL) {
            Ok(batch) => {
                self.restore_poll_retry = (Duration::ZERO, 0);
                batch
            }
            Err(e) if e.kind == super::ClientErrorKind::Retriable => {
                let wait = retry_wait(failed_polls + 1);
                tracing::warn!(thread = self.cfg.thread, attempt = failed_polls + 1, retry_in_ms = wait.as_millis() as u64, error = %e, "reading the changelogs failed; the restores retry");
                self.restore_poll_retry = (now + wait, failed_polls + 1);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        // Each task's records go to its own stores; one that fails does not keep the others
        // from theirs (the restore consumer has moved past all of them).
        let mut failed = Vec::new();
        batch.with_records(|records| {
            let mut i = 0;
            while i < records.len() {
                let (changelog, p) = (records[i].topic, records[i].partition);
                let mut j = i + 1;
                while j < records.len()
                    && records[j].topic == changelog
                    && records[j].partition == p
                {
                    j += 1;
                }
                let run = &records[i..j];
                i = j;
                let found = self.tasks.iter_mut().find_map(|(tp, s)| {
                    if tp.partition != p || s.is_running() {
                        return None;
                    }
                    let k = s.changelogs.iter().position(|c| c == changelog)?;
                    Some((tp.clone(), s, k))
                });
                let Some((tp, slot, k)) = found else {
                    continue;
                };
                if failed.iter().any(|(f, _)| *f == tp) {
                    continue;
                }
                let replay = run
                    .iter()
                    .map(|r| (r.offset, r.key.unwrap_or_default(), r.value));
                let clock = self.env.clock.as_ref();
                let applied = if k == 0 {
                    slot.task.restore_records(replay, clock)
                } else {
                    slot.task.restore_state_records(changelog, replay, clock)
                };
                match applied {
                    Ok(n) if k == 0 => {
                        self.env
                            .observer
                            .restored(&tp.topic, p, run.len() as u64, n as u64)
                    }
                    Ok(n) => self.env.observer.restored_state(&tp.topic, p, n as u64),
                    Err(error) => failed.push((tp, error)),
                }
            }
        });
        drop(batch);
        for (task, error) in failed {
            self.restore_failed(task, error)?;
        }
        let restoring: Vec<TopicPartition> = self
            .tasks
            .iter()
            .filter(|(_, s)| !s.is_running())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in restoring {
            match self.check_restore(clients, &tp) {
                Ok(()) => {}
                // A request that may succeed later; a store that failed restores anew
                // (through recovery), as before.
                Err(Fault::Client(e)) if e.kind == super::ClientErrorKind::Retriable => {
                    self.retry_restore_check(&tp, e)
                }
                Err(fault) => return Err(fault),
            }
        }
        Ok(())
    }

    /// A restore's request failed transiently (a broker restarting, a request timed out):
    /// only this task waits, with backoff, and checks again; the thread's other tasks and its
    /// open transaction go on.
    fn retry_restore_check(&mut self, tp: &TopicPartition, error: super::ClientError) {
        let now = self.env.clock.monotonic();
        let Some(Phase::Restoring(r)) = self.tasks.get_mut(tp).map(|s| &mut s.phase) else {
            return;
        };
        let attempts = r.retry.map_or(0, |(_, n)| n) + 1;
        let wait = retry_wait(attempts);
        r.retry = Some((now + wait, attempts));
        tracing::warn!(task = %tp, attempt = attempts, retry_in_ms = wait.as_millis() as u64, %error, "a request of the task's restore failed; retrying");
    }

    /// A task's restore failed: a store error restores the task anew (it opens again, with
    /// backoff); anything else (an undecodable changelog record) stops the thread.
    fn restore_failed(
        &mut self,
        task: TopicPartition,
        error: crate::error::TaskError,
    ) -> Result<(), Fault> {
        if !matches!(error, crate::error::TaskError::Store { .. }) {
            return Err(Fault::Task { task, error });
        }
        tracing::warn!(task = %task, error = %error, "restore failed; restoring the task anew");
        self.env.observer.store_failed(&task.topic, task.partition);
        self.restart_task(&task);
        self.backoff();
        Ok(())
    }

    /// Completes a task's restore if its stores are complete: every changelog read to its last
    /// stable offset, no transaction open on it, and no end moved while the committed input
    /// offset was read.
    fn check_restore<C: StreamClients>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
    ) -> Result<(), Fault> {
        let now = self.env.clock.monotonic();
        let observer = self.env.observer.clone();
        // This check's requests wait at most until then, together.
        let wait_end = now + self.restore_wait();
        let clock = self.env.clock.clone();
        let within = move || wait_end.saturating_sub(clock.monotonic());
        let slot = self.tasks.get_mut(tp).expect("listed by the caller");
        let Phase::Restoring(r) = &mut slot.phase else {
            return Ok(());
        };
        if r.retry.is_some_and(|(at, _)| now < at) {
            return Ok(());
        }
        // The restore consumer's position counts only where it reads for this restore; no
        // position yet (nothing read, or not assigned yet): the part's start. (The start
        // moves to the log start when records were deleted before the consumer read them.)
        let assigned = &self.restore_assigned;
        let mut pos: Vec<i64> = slot
            .changelogs
            .iter()
            .zip(&r.parts)
            .map(|(changelog, part)| {
                let cp = TopicPartition::new(changelog.as_str(), tp.partition);
                match assigned.get(&cp) {
                    Some(id) if *id == r.id => clients
                        .restore_position(&cp)
                        .map_or(part.from, |p| p.max(part.from)),
                    _ => part.from,
                }
            })
            .collect();
        let remaining = r
            .parts
            .iter()
            .zip(&pos)
            .map(|(p, pos)| (p.end - pos).max(0));
        observer.restore_remaining(&tp.topic, tp.partition, remaining.sum());
        // Behind the end seen at the last check and reading on: more records are there, no
        // round trip. A position that stopped moving below the end is checked against the
        // broker: retention or DeleteRecords may have removed what it was to read (the
        // consumer then resets to the log start, but librdkafka's position stays put until
        // it reads something).
        let behind = r.parts.iter().zip(&pos).any(|(p, pos)| *pos < p.end);
        let moved = r.last_pos != pos;
        r.last_pos.clone_from(&pos);
        if behind && moved {
            return Ok(());
        }
        if r.last_check
            .is_some_and(|t| now.saturating_sub(t) < END_CHECK_INTERVAL)
        {
            return Ok(());
        }
        r.last_check = Some(now);
        let at_end = changelogs_at_end(
            clients,
            (tp, &slot.changelogs),
            &mut pos,
            &mut r.parts,
            &within,
        )?;
        r.retry = None;
        match at_end {
            AtEnd::Behind => return Ok(()),
            AtEnd::OpenTransaction { changelog, lso, hw } => {
                // A predecessor's transaction on this changelog partition is still open. Its
                // offsets may still commit: wait for it to end before reading committed offsets.
                if now.saturating_sub(r.last_wait_log) >= WAIT_LOG_INTERVAL {
                    r.last_wait_log = now;
                    tracing::info!(task = %tp, changelog, lso, hw, "restore waits for an open transaction on the changelog to finish");
                }
                return Ok(());
            }
            AtEnd::Yes => {}
        }
        // The committed offsets first, then the changelogs' ends once more: a read_committed
        // `committed()` waits for a predecessor's transaction that holds offsets for this
        // partition (KIP-447), and that transaction wrote its changelog records before it
        // committed. If an end moved, the stores are not complete for those offsets yet.
        let offset = match clients.committed(std::slice::from_ref(tp), within()) {
            Ok(offsets) => offsets.into_iter().next().flatten(),
            // Pending transactional offsets (a stable read not possible yet): try again.
            Err(e) if e.kind == super::ClientErrorKind::Retriable => {
                tracing::debug!(task = %tp, error = %e, "committed offset not stable yet");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        match changelogs_at_end(
            clients,
            (tp, &slot.changelogs),
            &mut pos,
            &mut r.parts,
            &within,
        )? {
            AtEnd::Yes => {}
            AtEnd::Behind | AtEnd::OpenTransaction { .. } => {
                tracing::info!(task = %tp, "a changelog grew while reading committed offsets; restoring on");
                return Ok(());
            }
        }
        let offset = match offset {
            Some(o) => Some(o),
            None => self.start_without_offset(clients, tp)?,
        };
        self.finish_restore(clients, tp, offset)
    }

    /// Where a restored task without a committed offset starts (`None`: at the beginning).
    /// A task whose restored dedup store holds no ID never committed anything (or only what
    /// the retention expired since): the beginning. One whose store holds IDs committed input
    /// before, in the transactions that committed its offsets, so its offsets are gone:
    /// [`OffsetReset`](super::OffsetReset). (Changelog offsets do not tell: an aborted first
    /// transaction leaves records and a marker in an otherwise empty changelog.)
    fn start_without_offset<C: StreamClients>(
        &self,
        clients: &C,
        tp: &TopicPartition,
    ) -> Result<Option<i64>, Fault> {
        let slot = &self.tasks[tp];
        let ids = slot.task.store_stats().entries;
        if ids == 0 || !self.cfg.exactly_once() {
            return Ok(None);
        }
        let changelog = slot.changelogs.first().cloned().unwrap_or_default();
        match self.cfg.offset_reset {
            super::OffsetReset::Fail => Err(Fault::MissingOffset {
                task: tp.clone(),
                changelog,
                ids,
            }),
            super::OffsetReset::Earliest => {
                tracing::warn!(task = %tp, changelog, ids, "no committed offset although the restored store holds committed IDs: reprocessing the input from its start (offset_reset = earliest)");
                Ok(None)
            }
            super::OffsetReset::Latest => {
                let (_, end) =
                    clients.watermarks(tp, Isolation::ReadCommitted, self.restore_wait())?;
                tracing::warn!(task = %tp, changelog, ids, end, "no committed offset although the restored store holds committed IDs: skipping to the input's end (offset_reset = latest)");
                Ok(Some(end))
            }
        }
    }

    fn finish_restore<C: StreamClients>(
        &mut self,
        clients: &C,
        tp: &TopicPartition,
        offset: Option<i64>,
    ) -> Result<(), Fault> {
        let now = self.env.clock.monotonic();
        let now_ms = self.env.clock.now_ms();
        let slot = self.tasks.get_mut(tp).expect("restoring task exists");
        slot.task
            .mark_stores_synced(now_ms)
            .and_then(|()| slot.task.restore_complete(offset))
            .map_err(|error| Fault::Task {
                task: tp.clone(),
                error,
            })?;
        let Phase::Restoring(r) = std::mem::replace(&mut slot.phase, Phase::Running) else {
            unreachable!("the caller checked the task restores");
        };
        self.progress.restored += 1;
        let secs = now.saturating_sub(r.started).as_secs_f64();
        self.env
            .observer
            .restore_done(&tp.topic, tp.partition, secs);
        // The store's size now, not at the next periodic report: dashboards (and the
        // pipeline benchmark's restore rate) read the restored store from the gauge.
        let stats = slot.task.store_stats();
        self.env
            .observer
            .store(&tp.topic, tp.partition, stats.entries, stats.bytes);
        tracing::info!(thread = %self.cfg.transactional_id, task = %tp, committed = ?offset, seconds = secs, entries = stats.entries, "task restored; running");
        let started = clients
            .resume(std::slice::from_ref(tp))
            .and_then(|()| self.seek(clients, tp, offset));
        match started {
            Ok(()) => Ok(()),
            Err(e) if e.is_terminated() => Err(e.into()),
            // It must not run from anywhere but its committed offset: restore anew.
            Err(e) => {
                let attempts = self.open_retry.get(tp).map_or(0, |(_, n)| *n) + 1;
                let wait = retry_wait(attempts);
                tracing::warn!(task = %tp, error = %e, attempt = attempts, retry_in_ms = wait.as_millis() as u64, "could not move the restored task to its committed offset; it restores anew");
                self.restart_task(tp);
                self.open_retry.insert(tp.clone(), (now + wait, attempts));
                Ok(())
            }
        }
    }

    /// Brings the restore consumer's assignment in line with the restoring tasks: their
    /// changelog partitions are added once (at the part's start) and removed when the task
    /// finished or closed; the others keep their fetch position. A partition whose task was
    /// reopened (a new restore) is removed and added again at the new restore's start.
    fn reconcile_restore_assignment<C: StreamClients>(&mut self, clients: &C) -> Result<(), Fault> {
        let mut wanted: BTreeMap<TopicPartition, (u64, i64)> = BTreeMap::new();
        for (tp, slot) in &self.tasks {
            let Phase::Restoring(r) = &slot.phase else {
                continue;
            };
            for (changelog, part) in slot.changelogs.iter().zip(&r.parts) {
                let cp = TopicPartition::new(changelog.as_str(), tp.partition);
                wanted.insert(cp, (r.id, part.from));
            }
        }
        let stale: Vec<TopicPartition> = self
            .restore_assigned
            .iter()
            .filter(|(cp, id)| wanted.get(*cp).is_none_or(|(w, _)| w != *id))
            .map(|(cp, _)| cp.clone())
            .collect();
        for cp in stale {
            clients.restore_unassign(&cp)?;
            self.restore_assigned.remove(&cp);
        }
        for (cp, (id, from)) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                self.restore_assigned.entry(cp)
            {
                clients.restore_assign(slot.key(), from)?;
                slot.insert(id);
            }
        }
        Ok(())
    }
}

/// Asks for each changelog partition's ends (the last stable offset and the high watermark)
/// and compares them with the positions `pos`; updates each part's `end`.
fn changelogs_at_end<C: StreamClients>(
    clients: &C,
    (task, changelogs): (&TopicPartition, &[String]),
    pos: &mut [i64],
    parts: &mut [Part],
    within: &dyn Fn() -> Duration,
) -> Result<AtEnd, Fault> {
    for (k, ((changelog, pos), part)) in changelogs
        .iter()
        .zip(pos.iter_mut())
        .zip(parts.iter_mut())
        .enumerate()
    {
        let cp = TopicPartition::new(changelog.as_str(), task.partition);
        let (low, lso) = clients.watermarks(&cp, Isolation::ReadCommitted, within())?;
        part.end = lso;
        if *pos < low {
            // Deleted before the restore read them. The dedup changelog loses records only
            // to its retention, which the store would expire them by anyway; a state store
            // misses whatever updates they held, wherever it restores from.
            if k == 0 {
                tracing::info!(task = %task, changelog, from = *pos, low, "changelog records past the dedup retention were deleted before the restore read them; restoring from the log start");
            } else {
                tracing::warn!(task = %task, changelog, from = *pos, low, "state changelog records were deleted (DeleteRecords or retention) before the restore read them; their updates are lost; restoring from the log start");
            }
            part.from = low;
            *pos = low;
        }
        if *pos < lso {
            return Ok(AtEnd::Behind);
        }
        let (_, hw) = clients.watermarks(&cp, Isolation::ReadUncommitted, within())?;
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
