//! Per-task counters, turned into metrics by the runtimes.

use crate::state::StoreCounters;
use std::collections::HashMap;

/// Counters since the task was created; runtimes turn them into metrics with
/// [`TaskCounters::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounters {
    /// Records handed to `handle_batch`.
    pub consumed: u64,
    /// Records processed successfully (each attempt that reached a new ID; aborted batches
    /// are counted again when reprocessed).
    pub processed: u64,
    /// Records dropped as duplicates.
    pub duplicates: u64,
    /// Outputs sent.
    pub outputs: u64,
    /// Dead letters by reason label.
    pub dead_lettered: HashMap<&'static str, u64>,
    /// Processor errors by kind (`retry`, `dead_letter`, `fatal`, `panic`).
    pub processor_errors: HashMap<&'static str, u64>,
    /// Records processed without dedup (ID policy `process`).
    pub without_dedup: u64,
    /// IDs restored from the dedup changelog.
    pub restored: u64,
    /// IDs removed by TTL expiry.
    pub expired: u64,
    /// Records forwarded to the repartition topic (stage 1 of `dedup.scope = "global"`).
    pub repartitioned: u64,
    /// Records dropped before processing because they lie before the task's position
    /// (handled already, or fetched before a rewind).
    pub stale: u64,
    /// State store counters by store name.
    pub stores: std::collections::BTreeMap<String, StoreCounters>,
    /// Timers whose callback succeeded (see [`crate::timer`]).
    pub timers_fired: u64,
}

impl TaskCounters {
    /// Returns the counters and resets them.
    pub fn take(&mut self) -> TaskCounters {
        std::mem::take(self)
    }

    /// The counters of state store `store` (created at zero; no allocation once it exists).
    pub fn store_mut(&mut self, store: &str) -> &mut StoreCounters {
        if !self.stores.contains_key(store) {
            self.stores
                .insert(store.to_owned(), StoreCounters::default());
        }
        self.stores.get_mut(store).expect("inserted above")
    }

    /// Adds `other` to these counters.
    pub fn merge(&mut self, other: TaskCounters) {
        self.consumed += other.consumed;
        self.processed += other.processed;
        self.duplicates += other.duplicates;
        self.outputs += other.outputs;
        for (k, v) in other.dead_lettered {
            *self.dead_lettered.entry(k).or_default() += v;
        }
        for (k, v) in other.processor_errors {
            *self.processor_errors.entry(k).or_default() += v;
        }
        self.without_dedup += other.without_dedup;
        self.restored += other.restored;
        self.expired += other.expired;
        self.repartitioned += other.repartitioned;
        self.stale += other.stale;
        self.timers_fired += other.timers_fired;
        for (name, c) in other.stores {
            let mine = self.stores.entry(name).or_default();
            mine.writes += c.writes;
            mine.restored += c.restored;
            mine.expired += c.expired;
        }
    }
}
