//! [`SinkMetrics`]: what the sinks count, registered in the app's registry (served at
//! `/metrics` with the runtime's metrics). Every series has a `sink` label naming the sink
//! (a fixed name per sink in the app, e.g. `ledger`), plus the registry's `app` and `instance`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Buckets of `exactly_sink_commit_seconds`: 1 ms to 30 s.
pub const SINK_COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The sink metrics. Counters count committed work: a batch whose database transaction did
/// not commit adds nothing but a retry or a failure.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// `exactly_sink_batches_committed_total{sink}`: sink transactions committed (one per task
    /// and Kafka transaction that had effects).
    pub batches_committed_total: IntCounterVec,
    /// `exactly_sink_effects_applied_total{sink}`: effects applied (their message ID was new
    /// to the sink).
    pub effects_applied_total: IntCounterVec,
    /// `exactly_sink_duplicates_skipped_total{sink}`: message IDs the sink had already applied
    /// (redelivered after a crash between the sink commit and the Kafka commit, or applied
    /// concurrently by another instance); their effects were skipped.
    pub duplicates_skipped_total: IntCounterVec,
    /// `exactly_sink_commit_seconds{sink}`: time of one flush, from the first statement to the
    /// commit, retries included.
    pub commit_seconds: HistogramVec,
    /// `exactly_sink_retries_total{sink}`: attempts retried after a transient error.
    pub retries_total: IntCounterVec,
    /// `exactly_sink_flush_failures_total{sink}`: flushes that failed after their retries (the
    /// Kafka transaction was aborted and its records redelivered).
    pub flush_failures_total: IntCounterVec,
    /// `exactly_sink_expired_ids_total{sink}`: message IDs deleted by the TTL clean-up.
    pub expired_ids_total: IntCounterVec,
    /// `exactly_sink_uncertain_total{sink}`: Redis guards found claimed but never confirmed (a
    /// crash between guard and effect); their effects were skipped (at most once).
    pub uncertain_total: IntCounterVec,
}

impl SinkMetrics {
    /// Defines the sink metrics in `registry` (the app's: `App::metrics()?.registry()`).
    /// Fails if they are already registered there: define them once per app and clone.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &["sink"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "exactly_sink_commit_seconds",
                "Time of one sink flush, first statement to commit, retries included.",
            )
            .buckets(SINK_COMMIT_SECONDS_BUCKETS.to_vec()),
            &["sink"],
        )?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(Self {
            batches_committed_total: counter(
                "exactly_sink_batches_committed_total",
                "Sink transactions committed.",
            )?,
            effects_applied_total: counter(
                "exactly_sink_effects_applied_total",
                "Effects applied by a sink (message ID new to the sink).",
            )?,
            duplicates_skipped_total: counter(
                "exactly_sink_duplicates_skipped_total",
                "Message IDs a sink had already applied; their effects were skipped.",
            )?,
            commit_seconds,
            retries_total: counter(
                "exactly_sink_retries_total",
                "Sink attempts retried after a transient error.",
            )?,
            flush_failures_total: counter(
                "exactly_sink_flush_failures_total",
                "Sink flushes that failed after their retries (Kafka transaction aborted).",
            )?,
            expired_ids_total: counter(
                "exactly_sink_expired_ids_total",
                "Message IDs deleted from a sink's dedup table by the TTL clean-up.",
            )?,
            uncertain_total: counter(
                "exactly_sink_uncertain_total",
                "Redis guards claimed but never confirmed (crash between guard and effect); effect skipped.",
            )?,
        })
    }

    /// Metrics in a registry of their own (nothing serves them): for tests and for sinks used
    /// outside an `App`.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry has none of these names")
    }

    /// Creates every series of `sink` at 0, so dashboards show it before the first batch.
    #[cfg(any(feature = "postgres", feature = "redis"))]
    pub(crate) fn touch(&self, sink: &str) {
        for c in [
            &self.batches_committed_total,
            &self.effects_applied_total,
            &self.duplicates_skipped_total,
            &self.retries_total,
            &self.flush_failures_total,
            &self.expired_ids_total,
            &self.uncertain_total,
        ] {
            c.with_label_values(&[sink]);
        }
        self.commit_seconds.with_label_values(&[sink]);
    }
}
