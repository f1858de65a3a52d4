//! Errors of processors and of the task state machine, classified so the runtime's main loop
//! is a `match`, not string checks.

use crate::id::InvalidId;
use crate::store::StoreError;
use std::time::Duration;
use thiserror::Error;

/// What a processor reports when it cannot handle a record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProcessError {
    /// A transient failure: the record is retried with bounded backoff, then the
    /// [`ErrorPolicy`] applies.
    #[error("retriable processor error: {0}")]
    Retry(String),
    /// The record can never be processed: send it to the dead-letter topic.
    #[error("dead-letter: {0}")]
    DeadLetter(String),
    /// Stop: abort the transaction and stop the app with this reason. Nothing of the batch
    /// is committed.
    #[error("fatal processor error: {0}")]
    Fatal(String),
    /// The record's key or value is not what its topic carries (see
    /// [`Topic::decode`](crate::topic::Topic::decode)): it goes to the dead-letter topic with
    /// `exactly.error.kind = deserialization`, without retries and whatever the
    /// [`ErrorPolicy`].
    #[error("cannot deserialize: {0}")]
    Deserialization(String),
}

impl ProcessError {
    /// A retriable error.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry(reason.into())
    }
    /// A dead-letter error.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Self::DeadLetter(reason.into())
    }
    /// A fatal error.
    pub fn fatal(reason: impl Into<String>) -> Self {
        Self::Fatal(reason.into())
    }
    /// A record that does not decode.
    pub fn deserialization(reason: impl Into<String>) -> Self {
        Self::Deserialization(reason.into())
    }
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retry(_) => "retry",
            Self::DeadLetter(_) => "dead_letter",
            Self::Fatal(_) => "fatal",
            Self::Deserialization(_) => "deserialization",
        }
    }
}

/// What happens to a record whose processing failed for good (retries exhausted, or a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Dead-letter it and go on (default).
    #[default]
    DeadLetter,
    /// Stop the task; nothing of the batch is committed.
    Fail,
}

/// Bounded exponential backoff for [`ProcessError::Retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Upper bound of any delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based): doubles each time, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Errors that stop a task. The runtime aborts the open transaction on any of them.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The processor returned `Fatal`, or failed with policy `fail`.
    #[error("task {task}: processor failed at offset {offset}: {reason}. Nothing of this batch was committed; fix the processor or the input and restart")]
    Processor {
        /// The task.
        task: String,
        /// Offset of the failing record.
        offset: i64,
        /// What happened.
        reason: String,
    },
    /// A record had an invalid ID and the ID policy is `fail`.
    #[error("task {task}: record at offset {offset}: {reason}; the ID policy is `fail` (set `ids.on_invalid = \"dead-letter\"` to route such records to the DLQ)")]
    InvalidId {
        /// The task.
        task: String,
        /// Offset of the record.
        offset: i64,
        /// What is wrong with the ID.
        reason: InvalidId,
    },
    /// A record had to be dead-lettered but no dead-letter topic is configured.
    #[error("task {task}: record at offset {offset} must be dead-lettered ({reason}) but no dead-letter topic is configured")]
    NoDeadLetterTopic {
        /// The task.
        task: String,
        /// Offset of the record.
        offset: i64,
        /// Why it was to be dead-lettered.
        reason: String,
    },
    /// The dedup store failed.
    #[error("task {task}: {source}")]
    Store {
        /// The task.
        task: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// The transactional writer refused a record (e.g. fenced, or the queue is broken).
    #[error("task {task}: could not send a record: {reason}")]
    Write {
        /// The task.
        task: String,
        /// What the writer said.
        reason: String,
    },
    /// The processor's pre-commit [`flush`](crate::Processor::flush) failed (e.g. an external
    /// sink could not commit): the transaction is aborted and its records are redelivered.
    #[error("task {task}: flush before the commit failed: {reason}. The transaction is aborted and its records are delivered again")]
    Flush {
        /// The task.
        task: String,
        /// What the processor said.
        reason: String,
    },
    /// A changelog record does not decode: the changelog is exactly's own, so skipping the
    /// record could let a duplicate through or lose state.
    #[error("task {task}: {reason}. The changelog was written by something else or by an incompatible version; stop writing to it and restore it from a backup, or delete the app's internal topics and state to start over")]
    CorruptChangelog {
        /// The task.
        task: String,
        /// Which record and why.
        reason: String,
    },
    /// The task is not in the state the call needs (a runtime bug).
    #[error("task {task}: {what} called while {state}")]
    WrongState {
        /// The task.
        task: String,
        /// The call.
        what: &'static str,
        /// The state it was in.
        state: &'static str,
    },
}

impl TaskError {
    /// `true` for errors that should stop the app (as opposed to a task restart).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Processor { .. }
                | Self::InvalidId { .. }
                | Self::NoDeadLetterTopic { .. }
                | Self::CorruptChangelog { .. }
        )
    }
}

/// The text of a panic's payload (the `&str` or `String` that `panic!` was given), or a
/// placeholder for any other payload. Pass the payload itself (`panic.as_ref()`), not the
/// `Box` holding it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
