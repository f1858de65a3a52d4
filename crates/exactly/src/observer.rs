//! [`MetricsObserver`]: turns runtime events into the Prometheus metrics of
//! `exactly-metrics` and the `/ready` state.

use exactly_core::TaskCounters;
use exactly_kafka::RuntimeObserver;
use exactly_metrics::{
    AbortReason, DeadLetterReason, Health, Metrics, ProcessorErrorKind, ProductionAction,
    StoreWipeReason,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Counts what the runtime reports into an app-owned [`Metrics`] registry and keeps
/// [`Health`] ready while every stream thread reports itself ready (its assignment received,
/// every assigned partition's task restored and running).
pub struct MetricsObserver {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    threads: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tasks_by_thread: HashMap<usize, usize>,
    ready_threads: BTreeSet<usize>,
    restoring: BTreeSet<(String, i32)>,
    /// State store series reported per task, removed with the task's other series.
    state_stores: BTreeSet<(String, i32, String)>,
}

impl MetricsObserver {
    /// An observer for an instance with `threads` stream threads.
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>, threads: usize) -> Self {
        Self {
            metrics,
            health,
            threads,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_readiness(&self, s: &State) {
        self.metrics.tasks_restoring.set(s.restoring.len() as i64);
        self.metrics
            .assigned_tasks
            .set(s.tasks_by_thread.values().sum::<usize>() as i64);
        self.health.set_ready(s.ready_threads.len() >= self.threads);
    }
}

impl RuntimeObserver for MetricsObserver {
    fn task_counters(&self, topic: &str, c: &TaskCounters) {
        let m = &self.metrics;
        m.records_consumed_total
            .with_label_values(&[topic])
            .inc_by(c.consumed);
        m.records_processed_total
            .with_label_values(&[topic])
            .inc_by(c.processed);
        m.duplicates_dropped_total
            .with_label_values(&[topic])
            .inc_by(c.duplicates);
        m.ids_without_dedup_total
            .with_label_values(&[topic])
            .inc_by(c.without_dedup);
        for (label, n) in &c.dead_lettered {
            match DeadLetterReason::from_label(label) {
                Some(reason) => m.dead_lettered(topic, reason).inc_by(*n),
                None => tracing::warn!(label, "dead-letter reason without a metric label"),
            }
        }
        if c.timers_fired > 0 {
            m.timers_fired_total
                .with_label_values(&[topic])
                .inc_by(c.timers_fired);
        }
        if c.repartitioned > 0 {
            m.records_repartitioned_total
                .with_label_values(&[topic])
                .inc_by(c.repartitioned);
        }
        for (store, sc) in &c.stores {
            let labels = [topic, store.as_str()];
            m.state_store_writes_total
                .with_label_values(&labels)
                .inc_by(sc.writes);
            m.state_store_restored_total
                .with_label_values(&labels)
                .inc_by(sc.restored);
            m.state_store_expired_total
                .with_label_values(&labels)
                .inc_by(sc.expired);
        }
        for (label, n) in &c.processor_errors {
            match ProcessorErrorKind::from_label(label) {
                Some(kind) => m.processor_error(kind).inc_by(*n),
                None => tracing::warn!(label, "processor error kind without a metric label"),
            }
        }
        m.store_expired_total.inc_by(c.expired);
    }

    fn committed(&self, seconds: f64, records: usize, delivered: &HashMap<String, u64>) {
        let m = &self.metrics;
        m.transactions_committed_total.inc();
        m.transaction_commit_seconds.observe(seconds);
        m.transaction_batch_records.observe(records as f64);
        for (topic, n) in delivered {
            m.records_produced_total
                .with_label_values(&[topic])
                .inc_by(*n);
        }
    }

    fn aborted(&self, reason: &'static str) {
        match AbortReason::from_label(reason) {
            Some(r) => self.metrics.transaction_aborted(r).inc(),
            None => tracing::warn!(reason, "abort reason without a metric label"),
        }
    }

    fn production_error(&self, topic: &str, action: &'static str) {
        match ProductionAction::from_label(action) {
            Some(a) => self.metrics.production_error(topic, a).inc(),
            None => tracing::warn!(action, "production error action without a metric label"),
        }
    }

    fn rebalance(&self) {
        self.metrics.rebalances_total.inc();
    }

    fn fenced(&self) {
        self.metrics.fenced_total.inc();
        self.metrics.transaction_aborted(AbortReason::Fenced).inc();
    }

    fn fetch_restarted(&self, _topic: &str, _partition: i32) {
        self.metrics.fetch_restarts_total.inc();
    }

    fn ready(&self, thread: usize, ready: bool) {
        let mut s = self.state();
        if ready {
            s.ready_threads.insert(thread);
        } else {
            s.ready_threads.remove(&thread);
        }
        self.update_readiness(&s);
    }

    fn tasks(&self, thread: usize, tasks: usize) {
        let mut s = self.state();
        s.tasks_by_thread.insert(thread, tasks);
        self.update_readiness(&s);
    }

    fn store_wiped(&self, _topic: &str, _partition: i32, reason: &'static str) {
        match StoreWipeReason::from_label(reason) {
            Some(r) => self.metrics.store_wiped(r).inc(),
            None => tracing::warn!(reason, "store wipe reason without a metric label"),
        }
    }

    fn restored(&self, _topic: &str, _partition: i32, read: u64, _applied: u64) {
        self.metrics.restore_records_total.inc_by(read);
    }

    fn restore_remaining(&self, topic: &str, partition: i32, remaining: i64) {
        self.metrics
            .restore_remaining_records
            .with_label_values(&[topic, &partition.to_string()])
            .set(remaining);
        let mut s = self.state();
        if s.restoring.insert((topic.to_owned(), partition)) {
            self.update_readiness(&s);
        }
    }

    fn restore_done(&self, topic: &str, partition: i32, seconds: f64) {
        self.metrics.restore_seconds.observe(seconds);
        self.metrics
            .restore_remaining_records
            .with_label_values(&[topic, &partition.to_string()])
            .set(0);
        let mut s = self.state();
        s.restoring.remove(&(topic.to_owned(), partition));
        self.update_readiness(&s);
    }

    fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.metrics
            .consumer_lag_records
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    fn store(&self, topic: &str, partition: i32, entries: u64, bytes: u64) {
        let p = partition.to_string();
        self.metrics
            .store_entries
            .with_label_values(&[topic, &p])
            .set(entries as i64);
        self.metrics
            .store_bytes
            .with_label_values(&[topic, &p])
            .set(bytes as i64);
    }

    fn state_store(&self, topic: &str, partition: i32, store: &str, entries: u64, bytes: u64) {
        let p = partition.to_string();
        let labels = [topic, p.as_str(), store];
        self.metrics
            .state_store_entries
            .with_label_values(&labels)
            .set(entries as i64);
        self.metrics
            .state_store_bytes
            .with_label_values(&labels)
            .set(bytes as i64);
        self.state()
            .state_stores
            .insert((topic.to_owned(), partition, store.to_owned()));
    }

    fn forget_partition(&self, topic: &str, partition: i32) {
        self.metrics.forget_partition(topic, partition);
        let mut s = self.state();
        let stores: Vec<_> = s
            .state_stores
            .iter()
            .filter(|(t, p, _)| t == topic && *p == partition)
            .cloned()
            .collect();
        for key in stores {
            self.metrics.forget_state_store(topic, partition, &key.2);
            s.state_stores.remove(&key);
        }
        s.restoring.remove(&(topic.to_owned(), partition));
        self.update_readiness(&s);
    }
}
