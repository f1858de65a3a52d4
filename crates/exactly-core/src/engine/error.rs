//! Why an engine stops, and the faults it recovers from.

use super::client::{ClientError, ClientErrorKind, TopicPartition};
use crate::error::TaskError;
use thiserror::Error;

/// Why a stream thread's engine stopped.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A task failed in a way that stops the app (fatal processor error, ID policy `fail`).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A Kafka client failed in a way no retry fixes (authorization, a missing topic, an
    /// abort that failed).
    #[error("kafka error: {0}. Nothing more is committed; check the cluster and the configuration, then restart")]
    Client(ClientError),
    /// This thread is a zombie: a newer process runs with its instance id.
    #[error("stream thread {thread} was fenced: {reason}. If another process runs with transactional.id {transactional_id}, each instance needs its own stable `instance_id`. This process stops without committing anything more")]
    Fenced {
        /// Thread index.
        thread: usize,
        /// The transactional id.
        transactional_id: String,
        /// What showed it.
        cause: FenceCause,
        /// The details.
        reason: String,
    },
    /// A commit stayed unresolved (retriable) for the whole retry limit: it may still complete,
    /// so it cannot be aborted.
    #[error("commit still unresolved after retrying for {seconds} s ({source}); outcome unknown, so this thread stops and a restart resolves the transaction")]
    CommitOutcomeUnknown {
        /// How long it was retried.
        seconds: u64,
        /// The last error.
        source: ClientError,
    },
    /// A task's committed input offset is gone although its restored dedup store holds
    /// committed IDs (with [`OffsetReset::Fail`](super::OffsetReset::Fail)).
    #[error("task {task} has no committed input offset, but its dedup store, restored from {changelog}, holds {ids} committed message IDs: it processed input before and the group's offsets are gone (expired after the broker's offsets.retention.minutes, or deleted). Refusing to guess where to resume. Set `offset_reset = \"earliest\"` to reprocess the input from its start (IDs still within the dedup retention are dropped, older ones processed again) or `\"latest\"` to skip to its end (what was not processed is skipped), then restart")]
    MissingOffset {
        /// The task's input partition.
        task: TopicPartition,
        /// Its dedup changelog topic.
        changelog: String,
        /// Message IDs its restored store holds.
        ids: u64,
    },
    /// The broker refused an output of one input record for good, and the policy stops the
    /// app (`errors.on_production_error = "fail"`), or refused its dead letter too.
    #[error("{}", production_message(.task, *.offset, *.times, *.dead_letter_refused, .source))]
    Production {
        /// The input record's partition.
        task: TopicPartition,
        /// Its offset.
        offset: i64,
        /// Transactions refused because of it, in a row.
        times: u32,
        /// Whether its dead letter was refused too.
        dead_letter_refused: bool,
        /// The broker's (or client's) error.
        source: ClientError,
    },
    /// The broker refused a task's dedup changelog record for good.
    #[error("the broker refused the dedup changelog record of task {task} ({source}): nothing was committed. The record holds the message IDs of one transaction and is never larger than the changelog topic's max.message.bytes that exactly read at start-up: if the topic's config or ACLs changed since, restore them (max.message.bytes at least 64 KiB, write access for this app), then restart")]
    ChangelogRefused {
        /// The task.
        task: TopicPartition,
        /// The broker's (or client's) error.
        source: ClientError,
    },
    /// The broker refused an output (or state write, or dead letter) of a timer's callback for
    /// good.
    #[error("the broker refused a record that a timer of task {task} sent ({source}): nothing was committed, and the timer fires again after a restart. Make the callback's outputs fit their topic (max.message.bytes, ACLs, the topic exists), then restart")]
    TimerOutputRefused {
        /// The task.
        task: TopicPartition,
        /// The broker's (or client's) error.
        source: ClientError,
    },
    /// The process is being killed (the simulation's SIGKILL).
    #[error("the process is being terminated")]
    Terminated,
}

fn production_message(
    task: &TopicPartition,
    offset: i64,
    times: u32,
    dead_letter_refused: bool,
    source: &ClientError,
) -> String {
    if dead_letter_refused {
        format!("the broker refused the dead letter of input record {task} offset {offset} ({source}), after refusing its outputs: nothing was committed for it. Make the dead-letter topic accept it (its max.message.bytes, ACLs), then restart")
    } else {
        format!("the broker refused an output of input record {task} offset {offset} in {times} transactions in a row ({source}); errors.on_production_error = \"fail\" stops here, nothing was committed for it. Fix the output (under the topic's max.message.bytes, a key for a compacted topic, a valid timestamp) or the topic's config and ACLs, or set errors.on_production_error = \"dead_letter\" to dead-letter such records, then restart")
    }
}

/// How a thread learnt it is a zombie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceCause {
    /// A newer member joined with its `group.instance.id` (`FENCED_INSTANCE_ID`).
    NewerMember,
    /// Its producer was fenced again and again with no commit in between: another process
    /// keeps initialising its `transactional.id`.
    RepeatedProducerFences,
}

impl EngineError {
    /// Whether the process is being killed.
    pub fn is_terminated(&self) -> bool {
        matches!(self, Self::Terminated)
    }
}

/// A failure the engine handles by aborting, rewinding, restoring or stopping.
#[derive(Debug)]
pub(crate) enum Fault {
    /// A task failed.
    Task {
        task: TopicPartition,
        error: TaskError,
    },
    /// A client call failed.
    Client(ClientError),
    /// A commit stayed retriable past the retry limit.
    OutcomeUnknown(ClientError),
    /// The client refused a record for good as it was sent ([`ClientErrorKind::Rejected`]):
    /// its input record is known exactly.
    RefusedAtSend(ClientError),
    /// A task's committed offset is gone and the policy says to stop.
    MissingOffset {
        task: TopicPartition,
        changelog: String,
        ids: u64,
    },
}

impl From<ClientError> for Fault {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

impl Fault {
    pub(crate) fn is_terminated(&self) -> bool {
        matches!(self, Self::Client(e) if e.kind == ClientErrorKind::Terminated)
    }

    /// A failure that retrying may fix: a store I/O error (e.g. a directory still locked by
    /// its previous owner) or a retriable request.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Task {
                error: TaskError::Store { source, .. },
                ..
            } => matches!(source, crate::store::StoreError::Io(_)),
            Self::Client(e) => e.kind == ClientErrorKind::Retriable,
            _ => false,
        }
    }
}
