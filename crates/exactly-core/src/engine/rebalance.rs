//! Rebalances (assigned, revoked, lost) and fencing (a fenced producer, a fenced member).

use super::client::{ClientError, ClientErrorKind, GroupEvent, StreamClients, TopicPartition};
use super::commit::ABORT_LOST;
use super::error::{EngineError, Fault, FenceCause};
use super::{Engine, Mode, SESSION_FENCE_WINDOW};
use crate::processor::ProcessorFactory;
use std::time::Duration;

/// More producer fences than this with no commit in between stop the thread: another process
/// keeps taking over its `transactional.id` before this one can commit anything. (A thread
/// whose transactions time out now and then commits between the fences.)
pub(crate) const MAX_FENCES: usize = 3;
/// How long one poll of the fence check waits.
const FENCE_CHECK_POLL: Duration = Duration::from_millis(100);

impl<F: ProcessorFactory> Engine<F> {
    /// Step 3: handles a rebalance event, then completes the rebalance.
    pub(crate) fn on_group_event<C: StreamClients>(
        &mut self,
        clients: &C,
        event: GroupEvent,
    ) -> Result<(), EngineError> {
        match event {
            GroupEvent::Assigned(partitions) => self.on_assigned(clients, partitions),
            GroupEvent::Revoked(partitions) => self.on_revoked(clients, partitions),
            GroupEvent::Lost(partitions) => self.on_lost(clients, partitions),
        }
    }

    /// New partitions: each gets a task that restores first (its input partition stays paused
    /// until then).
    fn on_assigned<C: StreamClients>(
        &mut self,
        clients: &C,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), EngineError> {
        self.joined = true;
        clients
            .complete_assign(&partitions)
            .map_err(|e| self.client_stop(e))?;
        self.assignment.extend(partitions.iter().cloned());
        if let Mode::FenceCheck { .. } = self.mode {
            // The tasks open when the fence check ends.
            return clients.pause(&partitions).map_err(|e| self.client_stop(e));
        }
        if let Err(fault) = self.open_missing(clients) {
            // The others are opened at the next turns.
            self.recover(clients, fault)?;
        }
        tracing::info!(
            thread = self.cfg.thread,
            assigned = partitions.len(),
            tasks = self.tasks.len(),
            "partitions assigned"
        );
        Ok(())
    }

    /// Partitions revoked in an orderly rebalance: the open transaction is finished before
    /// they move, so the next owner starts from committed offsets and a complete changelog.
    fn on_revoked<C: StreamClients>(
        &mut self,
        clients: &C,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), EngineError> {
        self.env.observer.rebalance();
        self.end_transaction(clients, "rebalance")?;
        self.release(clients, &partitions)?;
        tracing::info!(
            thread = self.cfg.thread,
            revoked = partitions.len(),
            "partitions revoked"
        );
        Ok(())
    }

    /// Partitions lost (the member left the group: session timed out, fenced from the group):
    /// they may already run elsewhere and the group rejects this member's offsets, so the
    /// open transaction is aborted, never committed.
    fn on_lost<C: StreamClients>(
        &mut self,
        clients: &C,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), EngineError> {
        self.env.observer.rebalance();
        self.lost_at = Some(self.env.clock.monotonic());
        tracing::warn!(
            thread = self.cfg.thread,
            lost = partitions.len(),
            "partitions lost (this member left the group): aborting the open transaction"
        );
        // Not ready until the group assigns this member partitions again.
        self.joined = false;
        if let Err(fault) = self.abort(clients, ABORT_LOST) {
            self.recover(clients, fault)?;
        }
        self.release(clients, &partitions)
    }

    /// Closes the tasks of partitions that leave and completes the revocation.
    fn release<C: StreamClients>(
        &mut self,
        clients: &C,
        partitions: &[TopicPartition],
    ) -> Result<(), EngineError> {
        for tp in partitions {
            self.close_task(tp);
            self.assignment.remove(tp);
        }
        clients
            .complete_revoke(partitions)
            .map_err(|e| self.client_stop(e))
    }

    /// The producer was fenced. Either a newer process runs with this instance id (this one
    /// is a zombie and must stop), or the coordinator aborted a transaction that outlived
    /// `transaction.timeout.ms` and bumped the epoch (this one must go on). librdkafka reports
    /// both the same way, so the open transaction's tasks are dropped without applying
    /// anything, and the group consumer is polled for `fence_check`: a zombie's member is
    /// fenced too (`FENCED_INSTANCE_ID`) once the newer process joined. If it is not, a new
    /// producer is made and the tasks restore again.
    pub(crate) fn on_producer_fenced<C: StreamClients>(
        &mut self,
        clients: &C,
        e: ClientError,
    ) -> Result<(), EngineError> {
        // The observer counts the fence as the open transaction's abort too.
        self.env.observer.fenced();
        if self.txn.is_open() {
            self.progress.aborted = Some("fenced".to_owned());
        }
        self.drop_tasks_unapplied();
        let now = self.env.clock.monotonic();
        self.fences_since_commit += 1;
        if self.fences_since_commit > MAX_FENCES {
            return Err(EngineError::Fenced {
                thread: self.cfg.thread,
                transactional_id: self.cfg.transactional_id.clone(),
                cause: FenceCause::RepeatedProducerFences,
                reason: format!(
                    "the producer was fenced {} times without a commit in between ({e})",
                    self.fences_since_commit
                ),
            });
        }
        tracing::warn!(thread = %self.cfg.transactional_id, error = %e, "producer fenced: dropped this thread's tasks without applying their open transaction; checking whether a newer process took over this instance id");
        let assigned: Vec<TopicPartition> = self.assignment.iter().cloned().collect();
        if let Err(e) = clients.pause(&assigned) {
            return self.recover(clients, Fault::Client(e));
        }
        self.mode = Mode::FenceCheck {
            until: now + self.cfg.fence_check,
        };
        Ok(())
    }

    /// One turn of the fence check: poll (dropping records: there are no tasks), handle
    /// rebalances; once `until` passed without the member being fenced, make a new producer
    /// (retried while no broker answers) and open the tasks of the assignment again.
    pub(crate) fn fence_check<C: StreamClients>(
        &mut self,
        clients: &C,
        until: Duration,
    ) -> Result<(), EngineError> {
        match clients.poll(1, FENCE_CHECK_POLL) {
            Ok(polled) => {
                drop(polled.records);
                if let Some(event) = polled.event {
                    self.on_group_event(clients, event)?;
                }
            }
            Err(e) if e.kind == ClientErrorKind::FencedInstance => {
                return Err(self.zombie(clients, e))
            }
            Err(e) if e.is_terminated() => return Err(EngineError::Terminated),
            Err(e) => {
                tracing::warn!(thread = self.cfg.thread, error = %e, "poll failed during the fence check");
            }
        }
        if self.env.clock.monotonic() < until {
            return Ok(());
        }
        match clients.reset_producer() {
            Ok(()) => {}
            Err(e) if e.kind == ClientErrorKind::Retriable => {
                tracing::warn!(thread = self.cfg.thread, error = %e, "making a new producer failed; retrying");
                self.backoff();
                return Ok(());
            }
            Err(e) => return Err(self.client_stop(e)),
        }
        tracing::info!(
            thread = %self.cfg.transactional_id,
            tasks = self.assignment.len(),
            "new producer ready (not a zombie); restoring the tasks"
        );
        self.mode = Mode::Processing;
        // Every task restores anew and so starts at its committed offset: the records the
        // check polled and dropped are fetched again.
        self.close_all();
        match self.open_missing(clients) {
            Ok(()) => Ok(()),
            Err(fault) => self.recover(clients, fault),
        }
    }

    /// The open transaction could not be aborted because no broker answered (a cluster
    /// restart): nothing of it was committed, and it must never be. The tasks are dropped
    /// without applying it, and a new producer is made as soon as the brokers answer: its
    /// `init_transactions` aborts the old producer's transaction (or finds it timed out), and
    /// the tasks restore from their changelogs and committed offsets. The group consumer is
    /// polled meanwhile, as after a fence.
    pub(crate) fn on_abort_unreachable<C: StreamClients>(
        &mut self,
        clients: &C,
        e: ClientError,
        reason: &'static str,
    ) -> Result<(), EngineError> {
        tracing::warn!(thread = %self.cfg.transactional_id, error = %e, "the open transaction could not be aborted (no broker answered): dropped this thread's tasks without applying it; a new producer ends it once the brokers answer, then the tasks restore");
        self.replace_producer_then_restore(clients, reason)
    }

    /// Drops the tasks without applying the open transaction (counted as aborted for
    /// `reason`) and pauses the assignment; the next turn makes a new producer, whose
    /// `init_transactions` ends that transaction, and the tasks restore. The group consumer
    /// is polled meanwhile, as after a fence.
    pub(crate) fn replace_producer_then_restore<C: StreamClients>(
        &mut self,
        clients: &C,
        reason: &'static str,
    ) -> Result<(), EngineError> {
        tracing::info!(thread = self.cfg.thread, reason, "transaction aborted");
        self.env.observer.aborted(reason);
        self.progress.aborted = Some(reason.to_owned());
        self.drop_tasks_unapplied();
        let assigned: Vec<TopicPartition> = self.assignment.iter().cloned().collect();
        if let Err(e) = clients.pause(&assigned) {
            return Err(self.client_stop(e));
        }
        self.mode = Mode::FenceCheck {
            until: self.env.clock.monotonic(),
        };
        Ok(())
    }

    /// A newer member joined with this member's `group.instance.id`: this process is a zombie.
    /// It writes nothing more.
    pub(crate) fn zombie<C: StreamClients>(&mut self, clients: &C, e: ClientError) -> EngineError {
        tracing::error!(thread = self.cfg.thread, error = %e, "fenced: the group refused this thread's group.instance.id");
        self.env.observer.fenced();
        self.stop(clients);
        let now = self.env.clock.monotonic();
        let after_loss = self
            .lost_at
            .is_some_and(|t| now.saturating_sub(t) < SESSION_FENCE_WINDOW);
        let reason = if after_loss {
            // librdkafka answers a session that timed out (the process was paused or cut off
            // longer than `session.timeout.ms`) by rejoining, and then takes the refusal of
            // its own stale member id as a fence of the consumer (librdkafka issue #3437).
            format!("the group refused this thread's group.instance.id as fenced right after this member lost its session ({e}): either a newer member joined with this thread's group.instance.id (another process runs with this instance id), or this process was paused or cut off longer than session.timeout.ms and librdkafka's own rejoin was refused (its consumer cannot go on; a restart resumes from the committed offsets)")
        } else {
            format!("a newer member joined with this thread's group.instance.id ({e})")
        };
        EngineError::Fenced {
            thread: self.cfg.thread,
            transactional_id: self.cfg.transactional_id.clone(),
            cause: FenceCause::NewerMember,
            reason,
        }
    }

    /// A client failure that stops the thread.
    pub(crate) fn client_stop(&mut self, e: ClientError) -> EngineError {
        if e.is_terminated() {
            return EngineError::Terminated;
        }
        self.drop_tasks_unapplied();
        EngineError::Client(e)
    }
}
