//! A stream thread: the engine of `exactly-core` on its own OS thread, with the thread's
//! Kafka clients. Blocking rdkafka calls stay here, never in async code.

use crate::clients::KafkaClients;
use crate::config::RuntimeConfig;
use crate::error::RuntimeError;
use crate::stores::RocksStores;
use exactly_core::engine::EngineConfig;
use exactly_core::{
    panic_message, Engine, EngineEnv, ProcessorFactory, RuntimeObserver, SystemClock,
};
use exactly_state::SharedRocksResources;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What every stream thread of an instance shares.
pub(crate) struct Shared<F: ProcessorFactory> {
    pub config: Arc<RuntimeConfig>,
    pub factory: Arc<F>,
    pub rocks: SharedRocksResources,
    /// Partition count of each input topic.
    pub input_partitions: BTreeMap<String, i32>,
    pub observer: Arc<dyn RuntimeObserver>,
    pub shutdown: Arc<AtomicBool>,
}

/// The engine's settings for stream thread `thread`.
fn engine_config(
    config: &RuntimeConfig,
    thread: usize,
    partitions: &BTreeMap<String, i32>,
) -> EngineConfig {
    let heartbeat_ms: u64 = config
        .kafka
        .get("heartbeat.interval.ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut e = EngineConfig::new(config.app_id.clone(), config.inputs.clone());
    e.thread = thread;
    e.transactional_id = config.transactional_id(thread);
    e.guarantee = config.guarantee;
    e.dedup_scope = config.dedup_scope;
    e.purge_interval = config.repartition_purge_interval;
    e.input_partitions = partitions.clone();
    e.commit_interval = config.commit_interval;
    e.max_batch_records = config.max_batch_records;
    e.transaction_timeout = config.transaction_timeout;
    // A member learns that a newer member took its instance id at a heartbeat: two heartbeat
    // intervals and a second for the join make sure one happened.
    e.fence_check = Duration::from_millis(2 * heartbeat_ms + 1_000);
    e.restore_from = config.restore_from;
    e.offset_reset = config.offset_reset;
    e.task = Arc::new(config.task.clone());
    e
}

/// Runs one stream thread until shutdown or a fatal error.
pub(crate) fn run<F: ProcessorFactory>(
    thread: usize,
    shared: Arc<Shared<F>>,
) -> Result<(), RuntimeError> {
    let config = &shared.config;
    let cfg = Arc::new(engine_config(config, thread, &shared.input_partitions));
    let clients = KafkaClients::new(config, &cfg.transactional_id)?;
    let env = EngineEnv {
        factory: shared.factory.clone(),
        stores: Arc::new(RocksStores::new(config, shared.rocks.clone())),
        observer: shared.observer.clone(),
        clock: Arc::new(SystemClock),
    };
    tracing::info!(thread, transactional_id = %cfg.transactional_id, inputs = ?config.inputs, "stream thread started");
    let mut engine = Engine::new(cfg, env);
    let result = loop {
        if shared.shutdown.load(Ordering::Relaxed) {
            // Finish the transaction, close the tasks (their stores keep their files).
            if let Err(e) = engine.shutdown(&clients) {
                tracing::warn!(thread, error = %e, "final commit failed");
            }
            break Ok(());
        }
        match catch_unwind(AssertUnwindSafe(|| engine.run_once(&clients))) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if !e.is_terminated() {
                    engine.stop(&clients);
                }
                break Err(RuntimeError::Engine(e));
            }
            Err(panic) => {
                // A bug outside the processor (whose panics the engine turns into task
                // errors): the turn's state cannot be trusted, so nothing of the open
                // transaction may commit. Abort it, drop the tasks unapplied, and stop the
                // instance; the restart restores from the changelogs.
                let message = panic_message(panic.as_ref());
                tracing::error!(thread, panic = %message, "stream thread panicked outside the processor: aborting the open transaction and stopping the instance (a bug: please report it with this log)");
                if catch_unwind(AssertUnwindSafe(|| engine.stop(&clients))).is_err() {
                    tracing::error!(thread, "aborting after the panic panicked too; the coordinator aborts the open transaction when it times out, or the restart does");
                }
                break Err(RuntimeError::ThreadPanic(thread, message));
            }
        }
    };
    // Leaving the group lets the others take over at once instead of after a session timeout.
    clients.leave();
    tracing::info!(thread, ok = result.is_ok(), "stream thread stopped");
    result
}
