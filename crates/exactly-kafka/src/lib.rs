//! The Kafka adapter of `exactly`: runs the engine of `exactly-core` on stream threads, each
//! with rdkafka clients — a consumer-group member, a transactional producer (EOS v2,
//! KIP-447), a restore consumer — and RocksDB stores from `exactly-state`. It makes no
//! protocol decision: the engine does, through `exactly_core::StreamClients`.
//!
//! Most apps use the `exactly` facade's `App` builder instead of this crate directly.
//!
//! ```no_run
//! use exactly_core::{Context, Output, ProcessError, Processor, Record, TaskId};
//! use exactly_kafka::{start, NoopObserver, RuntimeConfig};
//! use std::sync::Arc;
//!
//! struct Forward;
//! impl Processor for Forward {
//!     fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         ctx.send(Output::forward("out", r));
//!         Ok(())
//!     }
//! }
//!
//! let mut config = RuntimeConfig::new("my-app", "127.0.0.1:29092");
//! config.inputs = vec!["in".into()];
//! config.outputs = vec!["out".into()];
//! let handle = start(config, |_: &TaskId| Forward, Arc::new(NoopObserver)).unwrap();
//! handle.join().unwrap();
//! ```
#![warn(missing_docs)]

mod clients;
pub mod config;
pub mod error;
#[cfg(feature = "failpoints")]
mod failpoint;
pub mod runtime;
mod stores;
mod thread;
pub mod topics;
pub mod writer;

/// What the runtime reports as it runs (the engine's observer, re-exported).
pub mod observe {
    pub use exactly_core::observe::{NoopObserver, RuntimeObserver};
}

pub use clients::serve_events;
pub use config::{
    changelog_topic, default_dead_letter_topic, repartition_topic, DedupScope, Guarantee,
    OffsetReset, RestoreFrom, RuntimeConfig,
};
pub use error::RuntimeError;
pub use observe::{NoopObserver, RuntimeObserver};
pub use runtime::{start, RuntimeHandle};

/// Routes librdkafka's own log lines to `tracing`.
pub(crate) fn log_librdkafka(
    client: &str,
    level: rdkafka::config::RDKafkaLogLevel,
    fac: &str,
    msg: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", client, fac, "{msg}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", client, fac, "{msg}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", client, fac, "{msg}"),
        L::Debug => tracing::debug!(target: "librdkafka", client, fac, "{msg}"),
    }
}
