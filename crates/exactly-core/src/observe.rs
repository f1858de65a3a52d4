//! What the engine reports as it runs. The `exactly` facade turns these calls into Prometheus
//! metrics, the `TestDriver` into its statistics; the default methods do nothing.

use crate::task::TaskCounters;
use std::collections::HashMap;

/// Receives engine events. Called from stream threads: implementations must be cheap and must
/// not block.
#[allow(unused_variables)]
pub trait RuntimeObserver: Send + Sync + 'static {
    /// Task counters (consumed, processed, duplicates, dead letters, errors) of a committed
    /// transaction, per input topic. Counters of aborted transactions are not reported.
    fn task_counters(&self, topic: &str, counters: &TaskCounters) {}
    /// A transaction (or at-least-once commit) succeeded.
    fn committed(&self, seconds: f64, records: usize, delivered: &HashMap<String, u64>) {}
    /// A transaction was aborted (`error`, `rebalance`, `shutdown`, `assignment_lost`, `fenced`).
    fn aborted(&self, reason: &'static str) {}
    /// The broker refused an output of an input record of `topic` for good, and the
    /// transaction was aborted; `action` says what follows (`retried`, `dead_lettered`,
    /// `stopped`).
    fn production_error(&self, topic: &str, action: &'static str) {}
    /// A rebalance revoked partitions of this thread.
    fn rebalance(&self) {}
    /// The producer was fenced.
    fn fenced(&self) {}
    /// A stream thread became ready (`true`: it has its assignment from the group, possibly
    /// empty, and every assigned partition's task is restored and running) or stopped being
    /// ready (`false`: a task restores or waits to open, the thread lost its partitions,
    /// checks for a fence, stopped or shuts down). Called when the value changes, at the end
    /// of a turn of the thread's loop; a thread starts not ready.
    fn ready(&self, thread: usize, ready: bool) {}
    /// Number of tasks of a stream thread.
    fn tasks(&self, thread: usize, tasks: usize) {}
    /// A store was wiped before restore (`corrupt`, `wrong_identity`, `checkpoint_beyond_end`).
    fn store_wiped(&self, topic: &str, partition: i32, reason: &'static str) {}
    /// Changelog records read during restore, and how many were applied (not expired).
    fn restored(&self, topic: &str, partition: i32, read: u64, applied: u64) {}
    /// State changelog records applied during restore.
    fn restored_state(&self, topic: &str, partition: i32, applied: u64) {}
    /// Changelog records left to restore.
    fn restore_remaining(&self, topic: &str, partition: i32, remaining: i64) {}
    /// A restore finished after `seconds`.
    fn restore_done(&self, topic: &str, partition: i32, seconds: f64) {}
    /// A task's store failed after a commit and the task is restored from its changelog.
    fn store_failed(&self, topic: &str, partition: i32) {}
    /// Consumer lag of a partition (high watermark minus committed offset).
    fn lag(&self, topic: &str, partition: i32, lag: i64) {}
    /// A running task's fetch had stalled and was resumed and sought again.
    fn fetch_restarted(&self, topic: &str, partition: i32) {}
    /// Store size of a task.
    fn store(&self, topic: &str, partition: i32, entries: u64, bytes: u64) {}
    /// Size of a task's state store.
    fn state_store(&self, topic: &str, partition: i32, store: &str, entries: u64, bytes: u64) {}
    /// A partition left this thread: drop its per-partition series.
    fn forget_partition(&self, topic: &str, partition: i32) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;
impl RuntimeObserver for NoopObserver {}
