//! Errors of the RocksDB store, classified by what the caller does next.

use crate::layout::StoreIdentity;
use exactly_core::StoreError;
use std::path::PathBuf;
use thiserror::Error;

/// Errors opening or using a [`RocksDedupStore`](crate::RocksDedupStore).
///
/// What to do next: [`Corrupt`](Self::Corrupt) and [`WrongIdentity`](Self::WrongIdentity) →
/// wipe the directory and restore from the changelog
/// ([`RocksDedupStore::open_or_recreate`](crate::RocksDedupStore::open_or_recreate) does that);
/// [`Locked`](Self::Locked) → close the other owner, then retry; the rest → retry or fail the task.
#[derive(Debug, Error)]
pub enum StateError {
    /// The directory holds something that cannot be read as this store.
    #[error(
        "dedup store at {} is corrupt ({reason}); it will be wiped and restored from the changelog",
        .path.display()
    )]
    Corrupt {
        /// The task's store directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The directory holds a store built from another changelog partition.
    #[error(
        "dedup store at {} was built from changelog {found}, not {expected} (a directory of \
         another app, topic or partition); it will be wiped and restored from the changelog",
        .path.display()
    )]
    WrongIdentity {
        /// The task's store directory.
        path: PathBuf,
        /// The changelog this task's store must reflect.
        expected: StoreIdentity,
        /// The changelog named by the checkpoint found in the directory.
        found: StoreIdentity,
    },

    /// Another open store holds the directory's lock (in this process, e.g. the task's previous
    /// owner that has not closed yet, or in another process). Never wiped: its owner is live.
    #[error(
        "dedup store at {} is open elsewhere ({reason}); close the other store and retry",
        .path.display()
    )]
    Locked {
        /// The task's store directory.
        path: PathBuf,
        /// RocksDB's message.
        reason: String,
    },

    /// A batch's checkpoint names another changelog than the store's identity: a bug in the
    /// caller, refused so the store never claims IDs of another changelog.
    #[error("refusing to apply a batch checkpointed on changelog {found} to the dedup store of {expected}")]
    ForeignCheckpoint {
        /// The store's identity.
        expected: StoreIdentity,
        /// The changelog named by the batch.
        found: StoreIdentity,
    },

    /// A filesystem operation on the store directory failed.
    #[error("dedup store at {}: cannot {action}: {source}", .path.display())]
    Io {
        /// The task's store directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },

    /// RocksDB failed (I/O, out of space, shutdown in progress); may succeed on retry.
    #[error("dedup store at {}: RocksDB {action} failed: {source}", .path.display())]
    Rocks {
        /// The task's store directory.
        path: PathBuf,
        /// Which operation failed.
        action: &'static str,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
}

impl StateError {
    /// Whether the remedy is to wipe the directory and restore it from the changelog.
    pub fn requires_wipe(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::WrongIdentity { .. })
    }
}

impl From<StateError> for StoreError {
    fn from(err: StateError) -> Self {
        // `StoreError::Corrupt` adds "it will be wiped and restored" itself.
        match err {
            StateError::Corrupt { path, reason } => {
                StoreError::Corrupt(format!("{}: {reason}", path.display()))
            }
            StateError::WrongIdentity {
                path,
                expected,
                found,
            } => StoreError::Corrupt(format!(
                "{}: built from changelog {found}, not {expected}",
                path.display()
            )),
            other => StoreError::Io(other.to_string()),
        }
    }
}
