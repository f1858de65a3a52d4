//! Test tools for `exactly`: run processors with no broker, check stores, check outputs.
//!
//! - [`TestDriver`]: the production engine against a simulated Kafka cluster with Apache
//!   Kafka's rules, with crashes at every crash point, zombies, broker faults and store faults.
//! - [`sim`]: that simulated cluster, and the clients through which an engine runs on it.
//! - [`conformance`]: the suite every `DedupStore` must pass.
//! - [`oracle`]: per-message-ID duplicate/loss accounting.
#![warn(missing_docs)]

#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "broker")]
pub mod chaos;
pub mod conformance;
pub mod driver;
pub mod oracle;
pub mod sim;

pub use driver::{
    CrashPoint, DriverStats, ManualClock, StepOutcome, TestDriver, TestDriverBuilder, TestRecord,
    Zombie,
};
pub use oracle::{check_exactly_once, ExactlyOnceReport};
pub use sim::{DiskStore, Fault, FaultKind, Request, SimCluster, SimError, SimRecord};
