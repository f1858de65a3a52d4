//! Test tools for `exactly`: run processors with no broker, check stores, check outputs.
//!
//! - [`TestDriver`]: the real task state machine against a simulated transactional Kafka,
//!   with crashes at every crash point, zombies, broker faults and store faults.
//! - [`conformance`]: the suite every `DedupStore` must pass.
//! - [`oracle`]: per-message-ID duplicate/loss accounting.
#![warn(missing_docs)]

#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "broker")]
pub mod chaos;
pub mod conformance;
pub mod disk;
pub mod driver;
pub mod oracle;
pub mod sim;

pub use disk::DiskStore;
pub use driver::{
    CrashPoint, DriverStats, ManualClock, StepOutcome, TestDriver, TestDriverBuilder, TestRecord,
    Zombie,
};
pub use oracle::{check_exactly_once, ExactlyOnceReport};
pub use sim::{Fault, SimCluster, SimError, SimRecord};
