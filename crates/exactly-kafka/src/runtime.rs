//! Starting and stopping the stream threads of an instance.

use crate::config::RuntimeConfig;
use crate::error::RuntimeError;
use crate::observe::RuntimeObserver;
use crate::thread::{self, Shared};
use crate::topics::ensure_topics;
use exactly_core::ProcessorFactory;
use exactly_state::SharedRocksResources;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running instance: its stream threads.
pub struct RuntimeHandle {
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), RuntimeError>>>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl RuntimeHandle {
    /// Asks every stream thread to commit, close its tasks and stop.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    /// A flag that stops the runtime when set (for signal handlers).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Whether every stream thread has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every stream thread; returns the first error.
    pub fn join(self) -> Result<(), RuntimeError> {
        let mut result = Ok(());
        for (i, t) in self.threads.into_iter().enumerate() {
            let r = match t.join() {
                Ok(r) => r,
                Err(panic) => Err(RuntimeError::ThreadPanic(
                    i,
                    exactly_core::panic_message(panic.as_ref()),
                )),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

fn validate(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    let bad = |what: &str| Err(RuntimeError::Config(what.to_owned()));
    if config.app_id.trim().is_empty() {
        return bad("`app_id` is empty; set it to a stable name (it is the consumer group id)");
    }
    if config.instance_id.trim().is_empty() {
        return bad(
            "`instance_id` is empty; set a stable id per instance (e.g. the StatefulSet ordinal)",
        );
    }
    if config.inputs.is_empty() {
        return bad("no input topics; set `inputs`");
    }
    if config.threads == 0 {
        return bad("`threads` must be at least 1");
    }
    if config.max_batch_records == 0 {
        return bad("`max_batch_records` must be at least 1");
    }
    if config.commit_interval.is_zero() {
        return bad("`commit_interval_ms` must be at least 1");
    }
    if config.repartition_purge_interval.is_zero() {
        return bad("the repartition purge interval must be at least 1 ms");
    }
    if config.task.dedup_retention_ms <= 0 {
        return bad("`dedup.retention_ms` must be positive");
    }
    if let Err(e) = exactly_core::state::validate_specs(&config.task.stores) {
        return Err(RuntimeError::Config(e));
    }
    for key in crate::config::MANAGED_KAFKA_PROPERTIES {
        if config.kafka.contains_key(key) {
            return Err(RuntimeError::Config(format!(
                "`kafka.{key}` is managed by exactly and cannot be overridden (it is part of the exactly-once protocol)"
            )));
        }
    }
    Ok(())
}

/// Room left in a produce request for a record's batch header, key and framing.
const RECORD_OVERHEAD_BYTES: usize = 1 << 10;

/// The largest dedup changelog value: `wanted`, lowered to fit the changelog topic's
/// `max.message.bytes` and the producer's `message.max.bytes` (librdkafka's default is
/// 1,000,000) with room for the record's framing.
fn changelog_record_bytes(
    wanted: usize,
    topic_max: Option<usize>,
    producer_max: Option<usize>,
) -> usize {
    let broker_limit = topic_max
        .unwrap_or(usize::MAX)
        .min(producer_max.unwrap_or(1_000_000));
    wanted
        .min(broker_limit.saturating_sub(RECORD_OVERHEAD_BYTES))
        .max(exactly_core::changelog::MIN_BATCH_VALUE_BYTES)
}

/// Checks the configuration and topics, then starts `config.threads` stream threads running
/// processors made by `factory`.
pub fn start<F: ProcessorFactory>(
    config: RuntimeConfig,
    factory: F,
    observer: Arc<dyn RuntimeObserver>,
) -> Result<RuntimeHandle, RuntimeError> {
    validate(&config)?;
    let checked = ensure_topics(&config)?;
    let partitions = checked.inputs;
    let mut config = config;
    config.task.changelog_record_bytes = changelog_record_bytes(
        config.task.changelog_record_bytes,
        checked.dedup_changelog_max_bytes,
        config
            .kafka
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok()),
    );
    tracing::info!(app = %config.app_id, instance = %config.instance_id, ?partitions, threads = config.threads, guarantee = ?config.guarantee, "starting");
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        RuntimeError::Config(format!(
            "cannot create state dir {}: {e}",
            config.state_dir.display()
        ))
    })?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        rocks: SharedRocksResources::new(config.block_cache_bytes, config.write_buffer_bytes),
        input_partitions: partitions.clone(),
        config: Arc::new(config),
        factory: Arc::new(factory),
        observer,
        shutdown: shutdown.clone(),
    });
    let first_error = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for i in 0..shared.config.threads {
        let shared = shared.clone();
        let stop = shutdown.clone();
        let first = first_error.clone();
        let handle = std::thread::Builder::new()
            .name(format!("exactly-stream-{i}"))
            .spawn(move || {
                // A panic while the thread sets up or leaves (its turns catch their own) stops
                // the instance like an error: the thread's partitions must move.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    thread::run(i, shared)
                }))
                .unwrap_or_else(|panic| {
                    Err(RuntimeError::ThreadPanic(
                        i,
                        exactly_core::panic_message(panic.as_ref()),
                    ))
                });
                if let Err(e) = &result {
                    tracing::error!(thread = i, error = %e, "stream thread failed; stopping the instance");
                    first.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
                    // One failed thread stops the instance: its partitions must move to a
                    // healthy member, which needs this process to leave the group.
                    stop.store(true, Ordering::SeqCst);
                }
                result
            })
            .map_err(|e| RuntimeError::Config(format!("cannot spawn a stream thread: {e}")))?;
        threads.push(handle);
    }
    Ok(RuntimeHandle {
        shutdown,
        threads,
        first_error,
    })
}

impl RuntimeHandle {
    /// The first error a stream thread stopped with, if any (while still running).
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::changelog_record_bytes;
    use exactly_core::changelog::MIN_BATCH_VALUE_BYTES;

    #[test]
    fn changelog_records_fit_the_topic_and_the_producer() {
        let wanted = 512 << 10;
        // Kafka's defaults take the wanted size as it is.
        assert_eq!(
            changelog_record_bytes(wanted, Some(1_048_588), None),
            wanted
        );
        assert_eq!(changelog_record_bytes(wanted, None, None), wanted);
        // A smaller topic or producer limit lowers it, with room for the framing.
        assert_eq!(
            changelog_record_bytes(wanted, Some(100_000), None),
            100_000 - 1024
        );
        assert_eq!(
            changelog_record_bytes(wanted, None, Some(200_000)),
            200_000 - 1024
        );
        assert_eq!(
            changelog_record_bytes(wanted, Some(300_000), Some(200_000)),
            200_000 - 1024
        );
        // Never below one ID per record.
        assert_eq!(
            changelog_record_bytes(wanted, Some(10), None),
            MIN_BATCH_VALUE_BYTES
        );
    }
}
