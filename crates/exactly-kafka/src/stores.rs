//! The tasks' local stores: one RocksDB per task for its dedup store and one per task and
//! state store, under the instance's state directory, sharing one block cache and write
//! buffer budget.

use crate::config::RuntimeConfig;
use exactly_core::engine::StoreFactory;
use exactly_core::{DedupStore, KvStore, StoreError, StoreSpec, TaskId};
use exactly_state::{
    state_store_dir, task_dir, RocksDedupStore, RocksKvStore, SharedRocksResources, StateError,
    StoreIdentity, StoreOptions,
};
use std::path::PathBuf;

/// Opens RocksDB stores for the engine.
pub(crate) struct RocksStores {
    state_dir: PathBuf,
    app_id: String,
    rocks: SharedRocksResources,
}

impl RocksStores {
    pub(crate) fn new(config: &RuntimeConfig, rocks: SharedRocksResources) -> Self {
        Self {
            state_dir: config.state_dir.clone(),
            app_id: config.app_id.clone(),
            rocks,
        }
    }
}

/// A store that could not be opened: its directory is locked by a store still open (a
/// sibling thread closing the task), or the disk failed. Retried by the engine.
fn open_failed(e: StateError) -> StoreError {
    StoreError::Io(e.to_string())
}

impl StoreFactory for RocksStores {
    fn open_dedup(
        &self,
        task: &TaskId,
        changelog: &str,
    ) -> Result<(Box<dyn DedupStore>, Option<String>), StoreError> {
        let dir = task_dir(&self.state_dir, &self.app_id, &task.topic, task.partition);
        let identity = StoreIdentity::new(changelog, task.partition);
        let (store, recreated) =
            RocksDedupStore::open_or_recreate(&dir, &self.rocks, &identity).map_err(open_failed)?;
        Ok((Box::new(store), recreated.map(|r| r.to_string())))
    }

    fn open_state(
        &self,
        task: &TaskId,
        spec: &StoreSpec,
        changelog: &str,
    ) -> Result<Box<dyn KvStore>, StoreError> {
        let dir = state_store_dir(
            &self.state_dir,
            &self.app_id,
            &task.topic,
            task.partition,
            &spec.name,
        );
        let identity = StoreIdentity::new(changelog, task.partition);
        let store = RocksKvStore::open(&dir, &self.rocks, &identity, &StoreOptions::default())
            .map_err(open_failed)?;
        Ok(Box::new(store))
    }
}
