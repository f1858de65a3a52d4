//! The narrow interface between the engine and Kafka: the clients of one stream thread.
//!
//! A stream thread owns a group consumer (a member of the app's consumer group), a
//! transactional producer, a restore consumer (read_committed, no group) for changelogs, and
//! metadata access (watermarks). [`StreamClients`] is everything the engine asks of them, and
//! nothing it could decide itself: there is no protocol logic behind it. `exactly-kafka`
//! implements it with rdkafka; `exactly-testkit` with a simulated cluster that follows Apache
//! Kafka's rules.
//!
//! Rebalances are events: [`StreamClients::poll`] returns the records it fetched and, last, at
//! most one [`GroupEvent`]. The engine handles the records, then the event, and then completes
//! the rebalance ([`StreamClients::complete_assign`], [`StreamClients::complete_revoke`]), so a
//! revoke always commits or aborts the open transaction before the partitions move.

use crate::record::{Output, Record, RecordKind, TaskId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

impl From<&TaskId> for TopicPartition {
    fn from(t: &TaskId) -> Self {
        Self {
            topic: t.topic.clone(),
            partition: t.partition,
        }
    }
}

impl From<&TopicPartition> for TaskId {
    fn from(tp: &TopicPartition) -> Self {
        TaskId::new(tp.topic.clone(), tp.partition)
    }
}

/// Where to move a consumer's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// This offset.
    Offset(i64),
    /// The partition's first offset (no committed offset: `auto.offset.reset = earliest`).
    Beginning,
}

/// Which end of a partition a watermark query reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The last stable offset: what a read_committed consumer can reach.
    ReadCommitted,
    /// The high watermark, open transactions included.
    ReadUncommitted,
}

/// A rebalance of the consumer group, as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// Partitions assigned to this member (eager: the whole new assignment; cooperative: the
    /// partitions added).
    Assigned(Vec<TopicPartition>),
    /// Partitions taken away in an orderly rebalance: the member may still commit them.
    Revoked(Vec<TopicPartition>),
    /// Partitions lost: the member left the group (session timed out, fenced from the group),
    /// and the partitions may already run elsewhere. Its offsets would be rejected.
    Lost(Vec<TopicPartition>),
}

/// A batch of fetched records, borrowed from the client's buffers until the next poll.
pub trait RecordBatch {
    /// Number of records.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f` with the records, in the order they were fetched (offset order within a
    /// partition).
    fn with_records<R>(&self, f: impl FnOnce(&[Record<'_>]) -> R) -> R;
}

/// What a poll of the group consumer returned.
#[derive(Debug)]
pub struct Polled<B> {
    /// Records fetched before the event (if any).
    pub records: B,
    /// A rebalance that must be handled before the next poll.
    pub event: Option<GroupEvent>,
}

/// What the delivery reports of a finished transaction (or flush) said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Per changelog partition written in the transaction: the offset after its last record.
    pub changelog_next: HashMap<(String, i32), i64>,
    /// Outputs and dead letters delivered, per topic.
    pub records: HashMap<String, u64>,
}

impl Delivered {
    /// The offset after the last record written to `changelog`/`partition`, if any.
    pub fn next_offset(&self, changelog: &str, partition: i32) -> Option<i64> {
        self.changelog_next
            .get(&(changelog.to_owned(), partition))
            .copied()
    }
}

/// How a client call failed, which decides what the engine does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// Transient (coordinator moved, request timed out, broker down): call again. For
    /// `commit_transaction` the outcome is not known yet and the call must be resumed, never
    /// replaced by an abort.
    Retriable,
    /// The open transaction cannot commit (a failed delivery, a refused request): abort it.
    Abortable,
    /// The group coordinator refused this member's offsets: its generation is stale or it is no
    /// longer a member (KIP-447). Abort; the group takes the partitions away.
    StaleMember,
    /// A newer member joined with this member's `group.instance.id`: this process is a zombie.
    FencedInstance,
    /// The producer's epoch is stale: another producer with the same `transactional.id`
    /// initialised, or the coordinator aborted a transaction that outlived
    /// `transaction.timeout.ms` and bumped the epoch. This producer can do nothing more.
    ProducerFenced,
    /// The broker (or the client, before sending) refused one record for good: larger than the
    /// topic's `max.message.bytes`, invalid for the topic (no key for a compacted topic, a
    /// timestamp out of range), or the topic is not authorized. Sending it again fails again.
    /// The transaction must abort; [`ClientError::record`] names the send.
    Rejected,
    /// A topic or partition does not exist. About a sent record ([`ClientError::record`] set):
    /// its output topic is missing (deleted while the app runs; the clients must not create
    /// it with the broker's defaults), and the transaction must abort; the engine retries
    /// until the topic is back. Otherwise (an input or changelog) it stops the thread.
    UnknownTopic,
    /// The producer failed for good on its own state, not because of a newer producer:
    /// librdkafka's idempotence sequence broke (`OUT_OF_ORDER_SEQUENCE_NUMBER` after an output
    /// partition was deleted and created again, `UNKNOWN_PRODUCER_ID`). Nothing of its open
    /// transaction can commit; a new producer with the same `transactional.id` can go on.
    ProducerFailed,
    /// A fatal error that no retry fixes (authorization, invalid configuration).
    Fatal,
    /// The process is being killed (the simulation's SIGKILL): stop at once, touching nothing.
    Terminated,
}

/// A failed client call.
#[derive(Debug, Clone)]
pub struct ClientError {
    /// What kind of failure it is.
    pub kind: ClientErrorKind,
    /// The call (e.g. `"commit_transaction"`).
    pub during: &'static str,
    /// The client's own message.
    pub message: Arc<str>,
    /// For an error about one sent record: its number among the sends of the transaction (or
    /// of the at-least-once batch), as passed to [`StreamClients::send`].
    pub record: Option<u64>,
}

impl ClientError {
    /// A `kind` failure of `during` with `message`.
    pub fn new(kind: ClientErrorKind, during: &'static str, message: impl fmt::Display) -> Self {
        Self {
            kind,
            during,
            message: Arc::from(message.to_string()),
            record: None,
        }
    }
    /// This error, about the record sent as number `seq`.
    pub fn about_record(mut self, seq: u64) -> Self {
        self.record = Some(seq);
        self
    }
    /// Whether the process is being killed.
    pub fn is_terminated(&self) -> bool {
        self.kind == ClientErrorKind::Terminated
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({:?}): {}",
            self.during, self.kind, self.message
        )
    }
}

impl std::error::Error for ClientError {}

/// A named point of the protocol. Clients may act on it: the Kafka runtime's test builds
/// SIGKILL the process there (`TEST_FAILPOINT`), the simulation kills the simulated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A transaction is about to receive its first record.
    BeforeSend,
    /// Every record of the transaction was sent and every task flushed; the offsets are next.
    AfterSend,
    /// The offsets are in the transaction; `commit_transaction` is next.
    DuringCommit,
    /// The transaction committed; the stores have not applied it yet.
    AfterCommit,
}

/// The Kafka clients of one stream thread. Every method is a request to a client; none makes
/// a protocol decision. All take `&self`: the clients are used from the stream thread only.
pub trait StreamClients {
    /// Records returned by [`poll`](Self::poll).
    type Records<'a>: RecordBatch
    where
        Self: 'a;
    /// Changelog records returned by [`restore_poll`](Self::restore_poll).
    type ChangelogRecords<'a>: RecordBatch
    where
        Self: 'a;

    // The group consumer.

    /// Fetches up to `max` records of assigned, unpaused partitions, waiting up to `timeout`
    /// for the first. Stops early at a rebalance, which it returns last.
    fn poll(&self, max: usize, timeout: Duration)
        -> Result<Polled<Self::Records<'_>>, ClientError>;
    /// Completes an assignment the engine has handled (the partitions start fetching).
    fn complete_assign(&self, partitions: &[TopicPartition]) -> Result<(), ClientError>;
    /// Completes a revocation (or loss) the engine has handled (the partitions move).
    fn complete_revoke(&self, partitions: &[TopicPartition]) -> Result<(), ClientError>;
    /// Stops fetching `partitions`.
    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ClientError>;
    /// Resumes fetching `partitions`.
    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ClientError>;
    /// Moves the fetch position of a partition. Records fetched before the seek are never
    /// returned after it.
    fn seek(&self, partition: &TopicPartition, to: SeekTo) -> Result<(), ClientError>;
    /// The group consumer's position in an assigned partition: the offset after the last
    /// record or transaction marker it returned (`None` before the first since the
    /// assignment or the last seek).
    fn position(&self, partition: &TopicPartition) -> Option<i64>;
    /// The group's committed offsets of `partitions` (`None`: none committed). A stable read:
    /// while an open transaction holds offsets for one of them (KIP-447), or no broker
    /// answers, it waits, at most `within`, and then fails retriably.
    fn committed(
        &self,
        partitions: &[TopicPartition],
        within: Duration,
    ) -> Result<Vec<Option<i64>>, ClientError>;
    /// Commits consumer offsets outside any transaction (at-least-once mode). With `sync` it
    /// waits for the group coordinator's answer; otherwise it sends the commit and returns,
    /// and a commit that fails later is only logged (a later commit covers its offsets).
    fn commit_offsets(
        &self,
        offsets: &[(TopicPartition, i64)],
        sync: bool,
    ) -> Result<(), ClientError>;
    /// Whether the group took this member's assignment away (its offsets would be refused).
    fn assignment_lost(&self) -> bool;

    // The producer.

    /// Starts a transaction.
    fn begin_transaction(&self) -> Result<(), ClientError>;
    /// Sends a record (in the open transaction, if one is open). `seq` numbers the sends of a
    /// transaction (or at-least-once batch) from 0: an error about this record, now or when
    /// the transaction commits, carries it as [`ClientError::record`]. While the producer's
    /// local queue is full (the brokers take records slower than they come, or none answers)
    /// it waits for room at most `within()` (asked only then: most sends never wait, and
    /// reading the clock per record showed in profiles), and then fails as
    /// [`Abortable`](ClientErrorKind::Abortable). Once an earlier send's delivery failed, the
    /// transaction takes no more records: the send fails with that delivery's error, about
    /// the earlier record.
    fn send(
        &self,
        kind: RecordKind,
        record: &Output,
        seq: u64,
        within: &dyn Fn() -> Duration,
    ) -> Result<(), ClientError>;
    /// Adds consumer offsets to the open transaction, with the group consumer's metadata
    /// (member id, generation: KIP-447).
    fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), ClientError>;
    /// Commits the open transaction, after every record was delivered; returns what the
    /// delivery reports said. It waits for the deliveries at most `within`: records still
    /// undelivered then fail the call as [`Abortable`](ClientErrorKind::Abortable), before the
    /// commit is requested (nothing is committed). A [`Retriable`](ClientErrorKind::Retriable)
    /// failure means the commit was requested and its outcome is not known yet.
    fn commit_transaction(&self, within: Duration) -> Result<Delivered, ClientError>;
    /// Aborts the open transaction (its records are discarded by read_committed readers).
    fn abort_transaction(&self) -> Result<(), ClientError>;
    /// Waits until every record sent is delivered (at-least-once mode).
    fn flush(&self) -> Result<Delivered, ClientError>;
    /// Replaces a fenced producer with a new one with the same `transactional.id`
    /// (`init_transactions`: a new epoch).
    fn reset_producer(&self) -> Result<(), ClientError>;

    // The restore consumer and metadata.

    /// Starts reading changelog `partition` at `from`. Until the client really reads it there,
    /// [`restore_position`](Self::restore_position) is `None` and no record of it is returned.
    fn restore_assign(&self, partition: &TopicPartition, from: i64) -> Result<(), ClientError>;
    /// Stops reading changelog `partition`.
    fn restore_unassign(&self, partition: &TopicPartition) -> Result<(), ClientError>;
    /// Fetches changelog records (read_committed) of the assigned changelog partitions.
    fn restore_poll(
        &self,
        max: usize,
        timeout: Duration,
    ) -> Result<Self::ChangelogRecords<'_>, ClientError>;
    /// The restore consumer's position in a changelog partition, once it reads it.
    fn restore_position(&self, partition: &TopicPartition) -> Option<i64>;
    /// The (low, end) offsets of a partition; the end per `isolation`. Waits for an answer at
    /// most `within`.
    fn watermarks(
        &self,
        partition: &TopicPartition,
        isolation: Isolation,
        within: Duration,
    ) -> Result<(i64, i64), ClientError>;

    /// Deletes the records of each partition before its offset (DeleteRecords: the log start
    /// moves there), waiting for the answer at most `within`.
    fn delete_records(
        &self,
        offsets: &[(TopicPartition, i64)],
        within: Duration,
    ) -> Result<(), ClientError>;

    /// The high watermark of an assigned input partition as the group consumer's last fetch
    /// response reported it: no request, so that reporting lag never waits on the broker
    /// while a transaction is open. `None` before the first fetch of the partition.
    fn cached_high_watermark(&self, partition: &TopicPartition) -> Option<i64>;

    /// The protocol reached `step` (see [`Step`]).
    fn reached(&self, step: Step) -> Result<(), ClientError> {
        let _ = step;
        Ok(())
    }
}
