//! The exactly-once protocol of `exactly`, as pure code: no Kafka client, no storage engine,
//! no async runtime.
//!
//! Applications implement [`Processor`]; runtimes (the Kafka one in `exactly-kafka`, the
//! in-memory `TestDriver` in `exactly-testkit`) drive one [`Task`] per input partition through
//! the protocol: dedup by message ID against staged IDs and a [`DedupStore`], send outputs and
//! changelog records in a transaction, apply staged IDs to the store only after the commit.
//!
//! ```
//! use exactly_core::{Context, Output, ProcessError, Processor, Record};
//!
//! /// Forwards each record once per message ID.
//! struct Forward { to: String }
//!
//! impl Processor for Forward {
//!     fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         ctx.send(Output::forward(self.to.clone(), record));
//!         Ok(())
//!     }
//! }
//! ```
#![warn(missing_docs)]

pub mod changelog;
pub mod clock;
pub mod codec;
pub mod engine;
pub mod error;
pub mod id;
pub mod mem_store;
pub mod observe;
pub mod processor;
pub mod record;
pub mod state;
pub mod store;
pub mod task;
pub mod timer;
pub mod topic;
pub mod window;

pub use clock::{Clock, SystemClock};
pub use codec::{Deserializer, Serde, SerdeError, Serializer};
pub use engine::{Engine, EngineConfig, EngineEnv, EngineError, StreamClients};
pub use error::{panic_message, ErrorPolicy, ProcessError, RetryPolicy, TaskError};
pub use id::{IdKey, IdPolicy, IdSource, InvalidId, InvalidIdPolicy};
pub use mem_store::MemDedupStore;
pub use observe::{NoopObserver, RuntimeObserver};
pub use processor::{Context, FlushContext, InitContext, Processor, ProcessorFactory};
pub use record::{HeaderRef, Output, Record, RecordKind, TaskId};
pub use state::{KvStore, MemKvStore, StateStore, StoreSpec, TypedStore};
pub use store::{ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch, StoreError, StoreStats};
pub use task::{
    id_partition, repartition_headers, RestorePlan, Task, TaskConfig, TaskCounters, TaskState,
    TxnWriter, WipeReason,
};
pub use timer::{Timer, TimerKind};
pub use topic::{Message, Topic};
pub use window::WindowStore;
