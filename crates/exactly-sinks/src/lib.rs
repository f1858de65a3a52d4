//! Idempotent external sinks for `exactly`: effects outside Kafka (a database, a cache, an
//! API) applied once per message ID, even across crashes and rebalances.
//!
//! The Kafka runtime makes outputs, offsets and seen IDs atomic in one Kafka transaction. An
//! external system cannot join that transaction, so a sink records the message ID **in the
//! external system itself**, atomically with the effect, and commits **before** the Kafka
//! transaction (at the runtime's pre-commit hook, [`exactly_core::Processor::flush`]):
//!
//! - [`postgres`]: the effect and `INSERT INTO <dedup table> (consumer, message_id, ...)` run
//!   in one database transaction; a unique-key conflict means "already applied" and the
//!   effect is skipped. Exactly once.
//! - [`redis_guard`]: `SET key NX PX ttl` before the effect, for effects that cannot share a
//!   transaction. At most once in the window between guard and effect, bounded by a TTL.
//!
//! `docs/sinks.md` says when to use which, and what every crash point does. Each sink is a
//! feature (`postgres`, `redis`; both on by default; through the `exactly` facade, its
//! features of the same names).
//!
//! ```no_run
//! use exactly_sinks::postgres::{PgSink, PgSinkConfig};
//! use exactly_sinks::SinkMetrics;
//!
//! let sink = PgSink::new(
//!     PgSinkConfig::new("host=127.0.0.1 user=postgres dbname=test", "payments-ledger")
//!         .name("ledger")
//!         .dedup_table("ledger_applied_ids"),
//!     SinkMetrics::unregistered(), // or SinkMetrics::register(app.metrics()?.registry())
//! )?;
//! sink.migrate()?; // CREATE TABLE IF NOT EXISTS ledger_applied_ids ...
//! let _ttl = sink.spawn_ttl_cleanup(std::time::Duration::from_secs(600), 10_000);
//! # Ok::<(), exactly_sinks::SinkError>(())
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis_guard;
pub mod retry;

pub use error::SinkError;
pub use metrics::SinkMetrics;
#[cfg(feature = "postgres")]
pub use postgres::{PgApply, PgBatch, PgHandler, PgSink, PgSinkConfig, PgSinkProcessor};
#[cfg(feature = "redis")]
pub use redis;
#[cfg(feature = "redis")]
pub use redis_guard::{GuardState, Guarded, RedisGuard, RedisGuardConfig};
pub use retry::SinkRetry;
#[cfg(feature = "postgres")]
pub use tokio_postgres;
