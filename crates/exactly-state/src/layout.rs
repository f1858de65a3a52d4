//! Where a task's store lives on disk and what it contains: directory naming, column families,
//! meta keys, and the changelog identity a store belongs to.

use std::fmt;
use std::path::{Path, PathBuf};

/// Column family holding one key per handled message ID: key = its
/// [`IdKey`](exactly_core::IdKey) (16 bytes), value = [`encode_stored_entry`] of its
/// [`SeenEntry`](exactly_core::SeenEntry) (16 bytes).
pub const IDS_COLUMN_FAMILY: &str = "ids";

/// Column family holding the store's metadata: the checkpoint (key [`CHECKPOINT_KEY`]), the
/// exact number of stored IDs (key [`ENTRY_COUNT_KEY`]) and the format (key [`FORMAT_KEY`]).
pub const META_COLUMN_FAMILY: &str = "meta";

/// Meta key of a state store's synced time (`i64` ms, little endian): see
/// `exactly_core::KvStore::synced_ms`.
pub const SYNCED_KEY: &[u8] = b"synced_ms";

/// Meta key of the store's format version (one byte, [`STORE_FORMAT`]).
pub const FORMAT_KEY: &[u8] = b"format";

/// The format of the ids column family written by this version: 2 = 16-byte ID keys and
/// 16-byte values. Format 1 (no [`FORMAT_KEY`]) kept the raw IDs; such a store is wiped and
/// restored from the changelog, whose records of either format restore into this one.
pub const STORE_FORMAT: u8 = 2;

/// Bytes of a stored entry.
pub const STORED_ENTRY_LEN: usize = 16;

/// The value of an ID in the ids column family: `first_seen_ms` then `source_offset`, both
/// little-endian `i64`. Fixed width, so that lookups and the retention compaction filter read
/// it without decoding.
pub fn encode_stored_entry(entry: &exactly_core::SeenEntry) -> [u8; STORED_ENTRY_LEN] {
    let mut out = [0u8; STORED_ENTRY_LEN];
    out[..8].copy_from_slice(&entry.first_seen_ms.to_le_bytes());
    out[8..].copy_from_slice(&entry.source_offset.to_le_bytes());
    out
}

/// Reads a value written by [`encode_stored_entry`]; `None` if it has the wrong length.
pub fn decode_stored_entry(value: &[u8]) -> Option<exactly_core::SeenEntry> {
    let value: &[u8; STORED_ENTRY_LEN] = value.try_into().ok()?;
    let (seen, offset) = value.split_at(8);
    Some(exactly_core::SeenEntry {
        first_seen_ms: i64::from_le_bytes(seen.try_into().expect("8 bytes")),
        source_offset: i64::from_le_bytes(offset.try_into().expect("8 bytes")),
    })
}

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
