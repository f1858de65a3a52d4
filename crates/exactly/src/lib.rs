//! `exactly`: Kafka stream processors that act on every message exactly once.
//!
//! Implement [`Processor`]; run it with [`App`]. Each input partition becomes a task with a
//! local RocksDB store of the message IDs it handled, changelogged to a compacted topic; outputs,
//! input offsets and seen IDs commit together in one Kafka transaction.
//!
//! ```no_run
//! use exactly::{App, Context, Output, ProcessError, Processor, Record};
//!
//! struct Forward;
//! impl Processor for Forward {
//!     fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         ctx.send(Output::forward("payments-clean", r));
//!         Ok(())
//!     }
//! }
//!
//! App::new("payments-dedup")
//!     .input("payments")
//!     .output("payments-clean")
//!     .run(|_| Forward)
//!     .unwrap();
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `logging` (default) | `logging::init`: a `tracing-subscriber` set-up driven by `RUST_LOG` |
//! | `cli` | `cli::RunArgs` and `cli::ClusterArgs`: the options an app binary takes, for clap |
//! | `postgres` | `sinks::postgres`: effects in PostgreSQL, deduplicated by message ID |
//! | `redis` | `sinks::redis_guard`: a Redis `SET NX` guard per message ID |
//! | `testkit` | `App::test_driver`: a `TestDriver` with the app's own topics, stores and policies (dev-dependencies) |
//! | `failpoints` | crash-injection points (`TEST_FAILPOINT`) for process-level tests; never in production |
//!
//! The `exactly` command line (demo, chaos harness, verifier, store and topic tools) is the
//! `exactly-cli` crate.
#![warn(missing_docs)]

pub mod app;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
#[cfg(feature = "logging")]
pub mod logging;
pub mod observer;
pub mod processors;

pub use app::App;
/// Serdes of keys and values: `Bytes`, `Utf8`, `Json`, `Bincode`, or your own `Serde`.
pub use exactly_core::codec;
/// State stores: typed key-value state committed with the outputs (see `docs/state.md`).
pub use exactly_core::state;
/// Timers (punctuators) on stream time and wall-clock time.
pub use exactly_core::timer;
pub use exactly_core::{
    Context, ErrorPolicy, FlushContext, IdPolicy, IdSource, InitContext, InvalidIdPolicy, Message,
    Output, ProcessError, Processor, ProcessorFactory, Record, RetryPolicy, Serde, SerdeError,
    StoreSpec, TaskConfig, TaskId, Timer, TimerKind, Topic, TypedStore, WindowStore,
};
pub use exactly_kafka::{DedupScope, Guarantee, RuntimeConfig, RuntimeError};
pub use exactly_metrics::{Health, Metrics};
/// Idempotent external sinks: PostgreSQL (feature `postgres`) and a Redis guard (feature
/// `redis`); see `docs/sinks.md`.
pub use exactly_sinks as sinks;

/// The README's code compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// docs/api.md's processor and its TestDriver test compile and pass (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/api.md")]
struct ApiDoctests;
