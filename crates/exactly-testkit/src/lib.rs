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
#[cfg(feature = "broker")]
pub mod ids;
pub mod oracle;
#[cfg(feature = "services")]
pub mod services;
pub mod sim;

pub use driver::{
    CrashPoint, DriverStats, ManualClock, StepOutcome, TestDriver, TestDriverBuilder, TestRecord,
    Zombie,
};
pub use oracle::{check_exactly_once, ExactlyOnceReport};
pub use sim::{DiskStore, Fault, FaultKind, Request, SimCluster, SimError, SimRecord};

/// `{prefix}{sep}{pid}{sep}{ms}{sep}{n}`: a name unique to this process and call (topics,
/// tables, key prefixes of one test, so tests can run in parallel).
#[cfg(any(feature = "broker", feature = "services"))]
pub(crate) fn unique(prefix: &str, sep: char) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 100_000_000)
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{sep}{}{sep}{ms}{sep}{n}", std::process::id())
}
