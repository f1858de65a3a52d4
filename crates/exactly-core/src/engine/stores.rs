//! Where the engine gets its tasks' stores from.

use crate::record::TaskId;
use crate::state::{KvStore, StoreSpec};
use crate::store::{DedupStore, StoreError};

/// Opens the local stores of a task: RocksDB directories in the Kafka runtime, simulated
/// directories that survive simulated crashes in the test kit.
pub trait StoreFactory: Send + Sync + 'static {
    /// Opens the dedup store of `task`, built from partition `task.partition` of `changelog`.
    /// A directory that cannot be opened as it is (unreadable files, another changelog's
    /// store) is recreated empty; the reason comes back for the log and metrics.
    fn open_dedup(
        &self,
        task: &TaskId,
        changelog: &str,
    ) -> Result<(Box<dyn DedupStore>, Option<String>), StoreError>;

    /// Opens state store `spec` of `task`, built from partition `task.partition` of
    /// `changelog`.
    fn open_state(
        &self,
        task: &TaskId,
        spec: &StoreSpec,
        changelog: &str,
    ) -> Result<Box<dyn KvStore>, StoreError>;
}
