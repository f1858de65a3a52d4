//! The RocksDB dedup store of `exactly`: one RocksDB instance per task, holding 16-byte ID
//! keys ([`exactly_core::IdKey`]). Recent IDs live in an in-memory table; spills write them as
//! one sorted SST file that RocksDB ingests, then the changelog checkpoint they reach. Pinned
//! whole-key filters, TTL expiry, and one block cache, write-buffer and recent-ID budget shared
//! by every store of the process.
//!
//! [`RocksDedupStore`] implements [`exactly_core::DedupStore`] and passes the conformance
//! suite of `exactly-testkit`. It is a cache of the task's changelog partition: it may lag the
//! changelog (the restore replays the tail from its checkpoint) but never leads it.
//!
//! ```no_run
//! use exactly_core::{ChangelogCheckpoint, DedupStore, IdKey, SeenEntry, StoreBatch};
//! use exactly_state::{task_dir, RocksDedupStore, SharedRocksResources, StoreIdentity};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shared = SharedRocksResources::default(); // one per process
//! let identity = StoreIdentity::new("billing-payments-dedup-changelog", 3);
//! let dir = task_dir(Path::new("/var/lib/exactly"), "billing", "payments", 3);
//!
//! // A corrupt or foreign directory is wiped; the task then restores from the changelog.
//! let (mut store, wiped_because) = RocksDedupStore::open_or_recreate(&dir, &shared, &identity)?;
//! if let Some(reason) = wiped_because {
//!     eprintln!("restoring from scratch: {reason}");
//! }
//!
//! // After the Kafka transaction committed: the IDs it made seen, and the checkpoint.
//! let id = IdKey::of(b"order-17");
//! store.apply(&StoreBatch {
//!     entries: vec![(id, SeenEntry { first_seen_ms: 1_700_000_000_000, source_offset: 42 })],
//!     checkpoint: ChangelogCheckpoint {
//!         topic: identity.changelog_topic.clone(),
//!         partition: identity.partition,
//!         next_offset: 1,
//!     },
//! })?;
//! assert!(store.get(&id)?.is_some());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod kv;
pub mod layout;
mod resources;
mod store;
mod tuning;

pub use error::StateError;
pub use kv::{state_store_dir, RocksKvStore, STATE_COLUMN_FAMILY};
pub use layout::{task_dir, StoreIdentity};
pub use resources::{SharedRocksResources, StoreOptions};
pub use store::RocksDedupStore;
