//! Where a task's store lives on disk and what it contains: directory naming, column families,
//! meta keys, and the changelog identity a store belongs to.

use std::fmt;
use std::path::{Path, PathBuf};

/// Column family holding one key per handled message ID: key = the raw ID bytes, value =
/// `exactly_core::changelog::encode_entry` of its [`SeenEntry`](exactly_core::SeenEntry)
/// (the same bytes as the changelog record value).
pub const IDS_COLUMN_FAMILY: &str = "ids";

/// Column family holding the store's metadata: the checkpoint (key [`CHECKPOINT_KEY`]) and the
/// exact number of stored IDs (key [`ENTRY_COUNT_KEY`]).
pub const META_COLUMN_FAMILY: &str = "meta";

/// Meta key of the changelog checkpoint (`exactly_core::changelog::encode_checkpoint`).
pub const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// Meta key of the number of keys in the ids column family (`u64`, little endian).
pub const ENTRY_COUNT_KEY: &[u8] = b"entries";

/// The directory of one task's store: `{state_dir}/{app}/{topic}-{partition}`, where `topic`
/// is the input topic and `partition` the input partition the task consumes.
///
/// ```
/// use std::path::Path;
/// let dir = exactly_state::task_dir(Path::new("/var/lib/exactly"), "billing", "payments", 3);
/// assert_eq!(dir, Path::new("/var/lib/exactly/billing/payments-3"));
/// ```
pub fn task_dir(state_dir: &Path, app: &str, topic: &str, partition: i32) -> PathBuf {
    state_dir.join(app).join(format!("{topic}-{partition}"))
}

/// The changelog partition a store is a cache of.
///
/// A store records it in its checkpoint; opening a directory whose checkpoint names another
/// changelog (a directory copied from another app, or a renamed topic) fails with
/// [`StateError::WrongIdentity`](crate::StateError::WrongIdentity) instead of trusting IDs
/// that were never in this task's changelog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreIdentity {
    /// Changelog topic, `{app}-{input}-dedup-changelog`.
    pub changelog_topic: String,
    /// Changelog partition (equal to the input partition).
    pub partition: i32,
}

impl StoreIdentity {
    /// The identity of the store built from `changelog_topic`, partition `partition`.
    pub fn new(changelog_topic: impl Into<String>, partition: i32) -> Self {
        Self {
            changelog_topic: changelog_topic.into(),
            partition,
        }
    }

    /// Whether `checkpoint` was written by a store of this identity.
    pub fn owns(&self, checkpoint: &exactly_core::ChangelogCheckpoint) -> bool {
        checkpoint.topic == self.changelog_topic && checkpoint.partition == self.partition
    }

    pub(crate) fn of_checkpoint(checkpoint: &exactly_core::ChangelogCheckpoint) -> Self {
        Self::new(checkpoint.topic.clone(), checkpoint.partition)
    }
}

impl fmt::Display for StoreIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.changelog_topic, self.partition)
    }
}
