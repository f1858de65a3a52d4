//! Prometheus metrics of an exactly app: the metric definitions in a registry the app owns
//! (no process-wide registry), and a small tokio HTTP endpoint serving `/metrics`, `/health`
//! and `/ready`.
//!
//! ```
//! use exactly_metrics::{DeadLetterReason, Health, Metrics};
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), exactly_metrics::MetricsError> {
//! let metrics = Arc::new(Metrics::new("orders-dedup", "0")?);
//! let health = Arc::new(Health::new());
//!
//! // The runtime counts what happens ...
//! metrics.records_consumed_total.with_label_values(&["orders"]).inc();
//! metrics.dead_lettered("orders", DeadLetterReason::MissingId).inc();
//! health.set_ready(true);
//!
//! // ... and the app serves it (port 0: any free port).
//! let (listener, addr) = exactly_metrics::bind("127.0.0.1:0".parse().expect("an address")).await?;
//! println!("metrics at http://{addr}/metrics");
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(exactly_metrics::serve_listener(listener, metrics, health, async {
//!     let _ = stopped.await;
//! }));
//! let _ = stop.send(());
//! server.await.expect("server task")?;
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().expect("runtime").block_on(run()).expect("example runs");
//! ```
//!
//! Every series carries the constant labels `app` and `instance`. A Prometheus scrape job adds
//! its own `instance` target label; with the default `honor_labels: false` the exposed one is
//! kept as `exported_instance`, so scrape exactly apps with `honor_labels: true` to keep ours.
#![warn(missing_docs)]

pub mod error;
pub mod health;
pub mod http;
pub mod labels;
pub mod metrics;

pub use error::MetricsError;
pub use health::Health;
pub use http::{bind, serve, serve_listener, METRICS_CONTENT_TYPE};
pub use labels::{
    AbortReason, DeadLetterReason, ProcessorErrorKind, ProductionAction, StoreWipeReason,
};
pub use metrics::Metrics;
pub use prometheus;
