//! [`Metrics`]: every metric of an exactly app, in a registry the app owns.

use crate::error::MetricsError;
use crate::labels::{
    AbortReason, DeadLetterReason, ProcessorErrorKind, ProductionAction, StoreWipeReason,
};
use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::collections::HashMap;

/// Buckets of `exactly_transaction_commit_seconds`: 1 ms to 10 s, 1-2.5-5 steps.
pub const COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `exactly_transaction_batch_records`: 1 to 100 000 records, 1-2-5 steps.
pub const BATCH_RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
    20_000.0, 50_000.0, 100_000.0,
];

/// Buckets of `exactly_restore_seconds`: 10 ms to 10 min.
pub const RESTORE_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Every metric of an exactly app, registered in a [`Registry`] this value owns (never the
/// process-wide default registry, so two apps, or two tests, in one process do not clash).
///
/// Every series carries the constant labels `app` and `instance`. Each field is named after its
/// metric without the `exactly_` prefix. Label sets are bounded: counters are split by `topic`
/// (and a fixed-set `reason`/`kind`, see [`crate::labels`]), only gauges that describe one
/// partition carry `partition`; call [`Metrics::forget_partition`] when a partition is revoked.
///
/// On a hot path, look a labelled child up once (`records_consumed_total.with_label_values(..)`
/// returns an [`IntCounter`] handle, cheap to clone) and keep it, instead of looking it up per
/// record.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,

    /// `exactly_records_consumed_total{topic}`: records polled from an input topic, duplicates
    /// included.
    pub records_consumed_total: IntCounterVec,
    /// `exactly_records_processed_total{topic}`: records handed to `Processor::process` that
    /// succeeded.
    pub records_processed_total: IntCounterVec,
    /// `exactly_records_produced_total{topic}`: output records sent, by output topic (counted
    /// when sent inside a transaction; an aborted transaction's outputs are counted too).
    pub records_produced_total: IntCounterVec,
    /// `exactly_duplicates_dropped_total{topic}`: input records dropped because their message ID
    /// was already seen.
    pub duplicates_dropped_total: IntCounterVec,
    /// `exactly_dead_lettered_total{topic,reason}`: input records sent to the dead-letter topic;
    /// `reason` is a [`DeadLetterReason`]. Use [`Metrics::dead_lettered`].
    pub dead_lettered_total: IntCounterVec,
    /// `exactly_processor_errors_total{kind}`: errors returned (or panics raised) by
    /// `Processor::process`; `kind` is a [`ProcessorErrorKind`]. Use [`Metrics::processor_error`].
    pub processor_errors_total: IntCounterVec,
    /// `exactly_production_errors_total{topic,action}`: transactions refused by the broker
    /// because of an output of one input record of `topic` (too large, invalid for its topic,
    /// not authorized); `action` is a [`ProductionAction`]. Use [`Metrics::production_error`].
    pub production_errors_total: IntCounterVec,
    /// `exactly_ids_without_dedup_total{topic}`: records processed without dedup because their
    /// ID was missing, empty or oversized and the ID policy is `process`.
    pub ids_without_dedup_total: IntCounterVec,

    /// `exactly_transactions_committed_total`: Kafka transactions committed.
    pub transactions_committed_total: IntCounter,
    /// `exactly_transactions_aborted_total{reason}`: Kafka transactions aborted; `reason` is an
    /// [`AbortReason`]. Use [`Metrics::transaction_aborted`].
    pub transactions_aborted_total: IntCounterVec,
    /// `exactly_transaction_commit_seconds`: time `commit_transaction` took (including sending
    /// the offsets), 1 ms to 10 s buckets.
    pub transaction_commit_seconds: Histogram,
    /// `exactly_transaction_batch_records`: input records handled per committed transaction,
    /// 1 to 100 000 buckets.
    pub transaction_batch_records: Histogram,

    /// `exactly_consumer_lag_records{topic,partition}`: records between the last committed
    /// offset and the partition's high watermark of the consumer's last fetch response.
    pub consumer_lag_records: IntGaugeVec,
    /// `exactly_assigned_tasks`: tasks (input partitions) assigned to this instance.
    pub assigned_tasks: IntGauge,
    /// `exactly_tasks_restoring`: assigned tasks still restoring their store.
    pub tasks_restoring: IntGauge,
    /// `exactly_rebalances_total`: consumer-group rebalances this instance took part in.
    pub rebalances_total: IntCounter,
    /// `exactly_fenced_total`: times a producer of this instance was fenced (zombie detected).
    pub fenced_total: IntCounter,
    /// `exactly_fetch_restarts_total`: running tasks whose fetch had stalled (no record for
    /// 30 s although committed records wait past the consumer's position), resumed and
    /// sought again.
    pub fetch_restarts_total: IntCounter,

    /// `exactly_store_entries{topic,partition}`: message IDs in a task's dedup store (RocksDB's
    /// estimate).
    pub store_entries: IntGaugeVec,
    /// `exactly_store_bytes{topic,partition}`: bytes of a task's dedup store on disk.
    pub store_bytes: IntGaugeVec,
    /// `exactly_records_repartitioned_total{topic}`: records forwarded to the repartition topic
    /// by message ID (`dedup.scope = "global"`, stage 1; `topic` is the input topic).
    pub records_repartitioned_total: IntCounterVec,
    /// `exactly_timers_fired_total{topic}`: timers whose callback succeeded (committed;
    /// `topic` is the input topic of the task that scheduled them).
    pub timers_fired_total: IntCounterVec,
    /// `exactly_state_store_entries{topic,partition,store}`: entries in a task's state store.
    pub state_store_entries: IntGaugeVec,
    /// `exactly_state_store_bytes{topic,partition,store}`: bytes of a task's state store.
    pub state_store_bytes: IntGaugeVec,
    /// `exactly_state_store_writes_total{topic,store}`: committed puts and deletes.
    pub state_store_writes_total: IntCounterVec,
    /// `exactly_state_store_restored_total{topic,store}`: changelog records replayed into state
    /// stores.
    pub state_store_restored_total: IntCounterVec,
    /// `exactly_state_store_expired_total{topic,store}`: entries removed after the store's TTL.
    pub state_store_expired_total: IntCounterVec,
    /// `exactly_store_expired_total`: message IDs removed from stores after the dedup retention.
    pub store_expired_total: IntCounter,
    /// `exactly_store_wipes_total{reason}`: stores wiped and restored from the start of their
    /// changelog; `reason` is a [`StoreWipeReason`]. Use [`Metrics::store_wiped`].
    pub store_wipes_total: IntCounterVec,

    /// `exactly_restore_records_total`: changelog records replayed into stores.
    pub restore_records_total: IntCounter,
    /// `exactly_restore_remaining_records{topic,partition}`: changelog records a restoring task
    /// still has to replay (`topic` is the input topic); 0 once restored.
    pub restore_remaining_records: IntGaugeVec,
    /// `exactly_restore_seconds`: time one task's restore took, 10 ms to 10 min buckets.
    pub restore_seconds: Histogram,
}

/// Registers collectors and remembers their names, so [`Metrics::metric_names`] can list the
/// families that have no series yet (the registry's `gather` omits those).
struct Definer {
    registry: Registry,
    names: Vec<String>,
}

impl Definer {
    fn register<C: Collector + Clone + 'static>(
        &mut self,
        name: &str,
        c: C,
    ) -> Result<C, MetricsError> {
        self.registry
            .register(Box::new(c.clone()))
            .map_err(|source| MetricsError::Define {
                metric: name.to_owned(),
                source,
            })?;
        self.names
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        Ok(c)
    }

    fn counter(&mut self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        let c = IntCounter::with_opts(Opts::new(name, help)).map_err(|e| define(name, e))?;
        self.register(name, c)
    }

    fn counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(|e| define(name, e))?;
        self.register(name, c)
    }

    fn gauge(&mut self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        let g = IntGauge::with_opts(Opts::new(name, help)).map_err(|e| define(name, e))?;
        self.register(name, g)
    }

    fn gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).map_err(|e| define(name, e))?;
        self.register(name, g)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let h = Histogram::with_opts(opts).map_err(|e| define(name, e))?;
        self.register(name, h)
    }
}

fn define(name: &str, source: prometheus::Error) -> MetricsError {
    MetricsError::Define {
        metric: name.to_owned(),
        source,
    }
}

impl Metrics {
    /// Defines every metric in a new registry whose series all carry `app="{app}"` and
    /// `instance="{instance}"`.
    pub fn new(app: &str, instance: &str) -> Result<Self, MetricsError> {
        if app.is_empty() {
            return Err(MetricsError::EmptyLabel { label: "app" });
        }
        if instance.is_empty() {
            return Err(MetricsError::EmptyLabel { label: "instance" });
        }
        let labels = HashMap::from([
            ("app".to_owned(), app.to_owned()),
            ("instance".to_owned(), instance.to_owned()),
        ]);
        let registry =
            Registry::new_custom(None, Some(labels)).map_err(|e| define("(registry)", e))?;
        let mut d = Definer {
            registry,
            names: Vec::new(),
        };
        const TOPIC: &[&str] = &["topic"];
        const TOPIC_PARTITION: &[&str] = &["topic", "partition"];
        const TOPIC_PARTITION_STORE: &[&str] = &["topic", "partition", "store"];
        const TOPIC_STORE: &[&str] = &["topic", "store"];

        let m = Metrics {
            records_consumed_total: d.counter_vec(
                "exactly_records_consumed_total",
                "Records polled from an input topic, duplicates included.",
                TOPIC,
            )?,
            records_processed_total: d.counter_vec(
                "exactly_records_processed_total",
                "Records processed successfully by the processor.",
                TOPIC,
            )?,
            records_produced_total: d.counter_vec(
                "exactly_records_produced_total",
                "Output records sent, by output topic.",
                TOPIC,
            )?,
            duplicates_dropped_total: d.counter_vec(
                "exactly_duplicates_dropped_total",
                "Input records dropped because their message ID was already seen.",
                TOPIC,
            )?,
            dead_lettered_total: d.counter_vec(
                "exactly_dead_lettered_total",
                "Input records sent to the dead-letter topic, by reason.",
                &["topic", "reason"],
            )?,
            processor_errors_total: d.counter_vec(
                "exactly_processor_errors_total",
                "Errors returned or panics raised by the processor, by kind.",
                &["kind"],
            )?,
            production_errors_total: d.counter_vec(
                "exactly_production_errors_total",
                "Transactions the broker refused because of one input record's output, by what was done about it.",
                &["topic", "action"],
            )?,
            ids_without_dedup_total: d.counter_vec(
                "exactly_ids_without_dedup_total",
                "Records processed without dedup: missing, empty or oversized message ID under ID policy `process`.",
                TOPIC,
            )?,
            transactions_committed_total: d.counter(
                "exactly_transactions_committed_total",
                "Kafka transactions committed.",
            )?,
            transactions_aborted_total: d.counter_vec(
                "exactly_transactions_aborted_total",
                "Kafka transactions aborted, by reason.",
                &["reason"],
            )?,
            transaction_commit_seconds: d.histogram(
                "exactly_transaction_commit_seconds",
                "Time to send offsets to and commit a Kafka transaction.",
                COMMIT_SECONDS_BUCKETS,
            )?,
            transaction_batch_records: d.histogram(
                "exactly_transaction_batch_records",
                "Input records handled per committed transaction.",
                BATCH_RECORDS_BUCKETS,
            )?,
            consumer_lag_records: d.gauge_vec(
                "exactly_consumer_lag_records",
                "Records between the consumer position and the high watermark of an input partition.",
                TOPIC_PARTITION,
            )?,
            assigned_tasks: d.gauge(
                "exactly_assigned_tasks",
                "Tasks (input partitions) assigned to this instance.",
            )?,
            tasks_restoring: d.gauge(
                "exactly_tasks_restoring",
                "Assigned tasks still restoring their dedup store.",
            )?,
            rebalances_total: d.counter(
                "exactly_rebalances_total",
                "Consumer group rebalances this instance took part in.",
            )?,
            fenced_total: d.counter(
                "exactly_fenced_total",
                "Times a producer of this instance was fenced by a newer one.",
            )?,
            fetch_restarts_total: d.counter(
                "exactly_fetch_restarts_total",
                "Running tasks whose stalled fetch was resumed and sought again.",
            )?,
            store_entries: d.gauge_vec(
                "exactly_store_entries",
                "Message IDs in a task's dedup store (estimate).",
                TOPIC_PARTITION,
            )?,
            store_bytes: d.gauge_vec(
                "exactly_store_bytes",
                "Bytes of a task's dedup store on disk.",
                TOPIC_PARTITION,
            )?,
            records_repartitioned_total: d.counter_vec(
                "exactly_records_repartitioned_total",
                "Records forwarded to the repartition topic by message ID (global dedup scope).",
                &["topic"],
            )?,
            timers_fired_total: d.counter_vec(
                "exactly_timers_fired_total",
                "Timers whose callback succeeded, in committed transactions.",
                &["topic"],
            )?,
            state_store_entries: d.gauge_vec(
                "exactly_state_store_entries",
                "Entries in a task's state store.",
                TOPIC_PARTITION_STORE,
            )?,
            state_store_bytes: d.gauge_vec(
                "exactly_state_store_bytes",
                "Bytes of a task's state store (on disk and in memtables).",
                TOPIC_PARTITION_STORE,
            )?,
            state_store_writes_total: d.counter_vec(
                "exactly_state_store_writes_total",
                "Puts and deletes of state stores, committed with their outputs.",
                TOPIC_STORE,
            )?,
            state_store_restored_total: d.counter_vec(
                "exactly_state_store_restored_total",
                "Changelog records replayed into state stores.",
                TOPIC_STORE,
            )?,
            state_store_expired_total: d.counter_vec(
                "exactly_state_store_expired_total",
                "State store entries removed after the store's TTL.",
                TOPIC_STORE,
            )?,
            store_expired_total: d.counter(
                "exactly_store_expired_total",
                "Message IDs removed from dedup stores after the dedup retention.",
            )?,
            store_wipes_total: d.counter_vec(
                "exactly_store_wipes_total",
                "Dedup stores wiped and restored from the start of their changelog, by reason.",
                &["reason"],
            )?,
            restore_records_total: d.counter(
                "exactly_restore_records_total",
                "Changelog records replayed into dedup stores.",
            )?,
            restore_remaining_records: d.gauge_vec(
                "exactly_restore_remaining_records",
                "Changelog records a restoring task still has to replay.",
                TOPIC_PARTITION,
            )?,
            restore_seconds: d.histogram(
                "exactly_restore_seconds",
                "Time one task's dedup store restore took.",
                RESTORE_SECONDS_BUCKETS,
            )?,
            registry: d.registry,
            names: d.names,
        };

        // Series whose labels come only from fixed sets exist from the start at 0, so that
        // `rate()` and "no aborts yet" panels work before the first event.
        for kind in ProcessorErrorKind::ALL {
            m.processor_error(*kind);
        }
        for reason in AbortReason::ALL {
            m.transaction_aborted(*reason);
        }
        for reason in StoreWipeReason::ALL {
            m.store_wiped(*reason);
        }
        Ok(m)
    }

    /// The registry holding every metric; register the app's own metrics here to have them
    /// served at `/metrics` too.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric family's name (histograms by their base name, without `_bucket`, `_sum`,
    /// `_count`), sorted, including families that have no series yet.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names = self.names.clone();
        names.sort();
        names
    }

    /// The Prometheus text exposition format (0.0.4) of every series, labels sorted by name.
    pub fn encode_text(&self) -> String {
        let mut families = self.registry.gather();
        // The registry appends its common labels (`app`, `instance`) from a HashMap, so
        // their order would change between processes; sorted names make every series line
        // stable (diffable, greppable, and the same in every scrape).
        for family in &mut families {
            for metric in family.mut_metric() {
                let mut labels = metric.take_label();
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                metric.set_label(labels);
            }
        }
        let mut text = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut text) {
            // Only malformed metric families fail to encode; serve what was encoded so far
            // rather than nothing, and say why the rest is missing.
            tracing::error!(error = %e, "encoding metrics failed; /metrics is incomplete");
        }
        text
    }

    /// The `exactly_dead_lettered_total` counter of `topic` and `reason`.
    pub fn dead_lettered(&self, topic: &str, reason: DeadLetterReason) -> IntCounter {
        self.dead_lettered_total
            .with_label_values(&[topic, reason.as_str()])
    }

    /// The `exactly_production_errors_total` counter of input `topic` and `action`.
    pub fn production_error(&self, topic: &str, action: ProductionAction) -> IntCounter {
        self.production_errors_total
            .with_label_values(&[topic, action.as_str()])
    }

    /// The `exactly_processor_errors_total` counter of `kind`.
    pub fn processor_error(&self, kind: ProcessorErrorKind) -> IntCounter {
        self.processor_errors_total
            .with_label_values(&[kind.as_str()])
    }

    /// The `exactly_transactions_aborted_total` counter of `reason`.
    pub fn transaction_aborted(&self, reason: AbortReason) -> IntCounter {
        self.transactions_aborted_total
            .with_label_values(&[reason.as_str()])
    }

    /// The `exactly_store_wipes_total` counter of `reason`.
    pub fn store_wiped(&self, reason: StoreWipeReason) -> IntCounter {
        self.store_wipes_total.with_label_values(&[reason.as_str()])
    }

    /// Removes the `{topic,partition,store}` series of one task's state store.
    pub fn forget_state_store(&self, topic: &str, partition: i32, store: &str) {
        let partition = partition.to_string();
        let labels = [topic, partition.as_str(), store];
        for gauge in [&self.state_store_entries, &self.state_store_bytes] {
            let _ = gauge.remove_label_values(&labels);
        }
    }

    /// Removes every `{topic,partition}` series of one partition (lag, store entries and bytes,
    /// restore remaining), so a revoked partition does not go on reporting its last values.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let partition = partition.to_string();
        let labels = [topic, partition.as_str()];
        for gauge in [
            &self.consumer_lag_records,
            &self.store_entries,
            &self.store_bytes,
            &self.restore_remaining_records,
        ] {
            // Err only means this partition never had that series: nothing to remove.
            let _ = gauge.remove_label_values(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_in_one_process_do_not_clash() {
        let a = Metrics::new("app-a", "0").expect("first metrics");
        let b = Metrics::new("app-b", "1").expect("second metrics, same names, own registry");
        a.duplicates_dropped_total
            .with_label_values(&["t"])
            .inc_by(2);
        b.duplicates_dropped_total.with_label_values(&["t"]).inc();

        let a_text = a.encode_text();
        let b_text = b.encode_text();
        assert!(a_text
            .contains(r#"exactly_duplicates_dropped_total{app="app-a",instance="0",topic="t"} 2"#));
        assert!(b_text
            .contains(r#"exactly_duplicates_dropped_total{app="app-b",instance="1",topic="t"} 1"#));
        assert!(!a_text.contains("app-b"));
        assert!(!b_text.contains("app-a"));
    }

    #[test]
    fn nothing_is_registered_in_the_default_registry() {
        let _m = Metrics::new("app", "0").expect("metrics");
        let global: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            global.iter().all(|n| !n.starts_with("exactly_")),
            "{global:?}"
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new("app", "0").expect("metrics");
        let names = m.metric_names();
        assert_eq!(names.len(), 32);
        for name in &names {
            assert!(
                name.starts_with("exactly_"),
                "{name} lacks the exactly_ prefix"
            );
        }
        let counters = [
            "records_consumed",
            "records_processed",
            "records_produced",
            "duplicates_dropped",
            "dead_lettered",
            "processor_errors",
            "production_errors",
            "ids_without_dedup",
            "transactions_committed",
            "transactions_aborted",
            "rebalances",
            "fenced",
            "store_expired",
            "store_wipes",
            "restore_records",
            "records_repartitioned",
            "state_store_writes",
            "state_store_restored",
            "state_store_expired",
        ];
        for c in counters {
            let name = format!("exactly_{c}_total");
            assert!(names.contains(&name), "missing counter {name}");
        }
    }

    #[test]
    fn metric_names_include_families_without_series() {
        let m = Metrics::new("app", "0").expect("metrics");
        assert!(m
            .metric_names()
            .contains(&"exactly_consumer_lag_records".to_owned()));
        assert!(!m.encode_text().contains("exactly_consumer_lag_records"));
    }

    #[test]
    fn fixed_set_series_start_at_zero() {
        let m = Metrics::new("app", "0").expect("metrics");
        let text = m.encode_text();
        assert!(text.contains(
            r#"exactly_transactions_aborted_total{app="app",instance="0",reason="fenced"} 0"#
        ));
        assert!(text
            .contains(r#"exactly_processor_errors_total{app="app",instance="0",kind="panic"} 0"#));
        assert!(text
            .contains(r#"exactly_store_wipes_total{app="app",instance="0",reason="corrupt"} 0"#));
    }

    #[test]
    fn typed_helpers_use_the_fixed_label_values() {
        let m = Metrics::new("app", "0").expect("metrics");
        m.dead_lettered("in", DeadLetterReason::OversizedId).inc();
        m.transaction_aborted(AbortReason::Rebalance).inc_by(2);
        let text = m.encode_text();
        assert!(text.contains(
            r#"exactly_dead_lettered_total{app="app",instance="0",reason="oversized_id",topic="in"} 1"#
        ));
        assert!(text.contains(
            r#"exactly_transactions_aborted_total{app="app",instance="0",reason="rebalance"} 2"#
        ));
    }

    #[test]
    fn forget_partition_removes_only_that_partitions_series() {
        let m = Metrics::new("app", "0").expect("metrics");
        m.consumer_lag_records
            .with_label_values(&["in", "0"])
            .set(5);
        m.consumer_lag_records
            .with_label_values(&["in", "1"])
            .set(7);
        m.store_entries.with_label_values(&["in", "0"]).set(100);
        m.forget_partition("in", 0);
        let text = m.encode_text();
        assert!(!text.contains(r#"partition="0""#), "{text}");
        assert!(text.contains(
            r#"exactly_consumer_lag_records{app="app",instance="0",partition="1",topic="in"} 7"#
        ));
    }

    #[test]
    fn histograms_have_the_documented_ranges() {
        assert_eq!(COMMIT_SECONDS_BUCKETS.first(), Some(&0.001));
        assert_eq!(COMMIT_SECONDS_BUCKETS.last(), Some(&10.0));
        assert_eq!(BATCH_RECORDS_BUCKETS.first(), Some(&1.0));
        assert_eq!(BATCH_RECORDS_BUCKETS.last(), Some(&100_000.0));
        let m = Metrics::new("app", "0").expect("metrics");
        m.transaction_commit_seconds.observe(0.003);
        let text = m.encode_text();
        assert!(text.contains(
            r#"exactly_transaction_commit_seconds_bucket{app="app",instance="0",le="0.005"} 1"#
        ));
        assert!(text.contains(
            r#"exactly_transaction_commit_seconds_bucket{app="app",instance="0",le="0.0025"} 0"#
        ));
    }

    #[test]
    fn empty_app_or_instance_is_rejected() {
        assert!(matches!(
            Metrics::new("", "0"),
            Err(MetricsError::EmptyLabel { label: "app" })
        ));
        assert!(matches!(
            Metrics::new("a", ""),
            Err(MetricsError::EmptyLabel { label: "instance" })
        ));
    }
}
