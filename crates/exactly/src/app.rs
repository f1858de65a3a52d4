//! The `App` builder: configure, then run until SIGTERM / Ctrl-C with a graceful shutdown
//! (commit the open transaction, close the stores).

use crate::observer::MetricsObserver;
use exactly_core::{IdSource, Processor, ProcessorFactory, TaskId};
use exactly_kafka::{
    default_dead_letter_topic, DedupScope, Guarantee, RuntimeConfig, RuntimeError,
};
use exactly_metrics::{Health, Metrics};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Builds and runs an exactly app.
pub struct App {
    config: RuntimeConfig,
    metrics: Option<Arc<Metrics>>,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl App {
    /// A new app named `app_id` (the consumer group id and internal topic prefix). The
    /// bootstrap servers default to `KAFKA_BOOTSTRAP`, else `127.0.0.1:29092`.
    pub fn new(app_id: impl Into<String>) -> Self {
        let app_id = app_id.into();
        let bootstrap =
            std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:29092".into());
        let mut config = RuntimeConfig::new(app_id.clone(), bootstrap);
        config.task.dead_letter_topic = Some(default_dead_letter_topic(&app_id));
        Self {
            config,
            metrics: None,
            metrics_addr: None,
        }
    }

    /// An app from a complete runtime config (e.g. loaded from a file).
    pub fn from_config(config: RuntimeConfig) -> Self {
        Self {
            config,
            metrics: None,
            metrics_addr: None,
        }
    }

    /// Kafka bootstrap servers.
    pub fn bootstrap(mut self, servers: impl Into<String>) -> Self {
        self.config.bootstrap = servers.into();
        self
    }
    /// Adds an input topic: its name, or its typed [`Topic`](exactly_core::Topic) handle
    /// (`.input(&orders)`).
    pub fn input(mut self, topic: impl Into<String>) -> Self {
        self.config.inputs.push(topic.into());
        self
    }
    /// Declares an output topic (checked to exist at start): its name, or its typed
    /// [`Topic`](exactly_core::Topic) handle.
    pub fn output(mut self, topic: impl Into<String>) -> Self {
        self.config.outputs.push(topic.into());
        self
    }
    /// Stable instance id (part of the transactional id).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = id.into();
        self
    }
    /// Root directory of the task stores.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }
    /// Stream threads.
    pub fn threads(mut self, n: usize) -> Self {
        self.config.threads = n;
        self
    }
    /// Commit interval.
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.config.commit_interval = d;
        self
    }
    /// Where message IDs come from.
    pub fn message_id(mut self, source: IdSource) -> Self {
        self.config.task.ids.source = source;
        self
    }
    /// Dead-letter topic (`None` turns dead-lettering into a task error).
    pub fn dead_letter_topic(mut self, topic: Option<String>) -> Self {
        self.config.task.dead_letter_topic = topic;
        self
    }
    /// Declares a state store every task gets (see `exactly_core::state`): its writes commit
    /// with the outputs, and it is changelogged to `{app}-{input}-{store}-changelog`. Pass the
    /// processor's [`TypedStore`](exactly_core::TypedStore) handle (`.store(&totals)`), so the
    /// app and the processor cannot name different stores, or a
    /// [`StoreSpec`](exactly_core::StoreSpec) for byte-level access through
    /// [`Context::store`](exactly_core::Context::store). Declared in code, not in the config
    /// file, because the processor's code uses it.
    pub fn store(mut self, store: impl Into<exactly_core::StoreSpec>) -> Self {
        self.config.task.stores.push(store.into());
        self
    }
    /// Lets the processor schedule timers (`Context::schedule`, `Processor::on_timer`; see
    /// `exactly_core::timer`): declares the timer store every task gets, changelogged to
    /// `{app}-{input}-timers-changelog`, which keeps each task's timers and stream time
    /// across crashes and task moves.
    pub fn timers(mut self) -> Self {
        if !self.config.task.stores.iter().any(|s| s.is_timers()) {
            self.config
                .task
                .stores
                .push(exactly_core::StoreSpec::timers());
        }
        self
    }
    /// Dedup scope: [`DedupScope::Partition`] (default) or [`DedupScope::Global`], which
    /// repartitions records by message ID so that copies with different keys are dropped too.
    pub fn dedup_scope(mut self, scope: DedupScope) -> Self {
        self.config.dedup_scope = scope;
        self
    }
    /// Processing guarantee.
    pub fn guarantee(mut self, g: Guarantee) -> Self {
        self.config.guarantee = g;
        self
    }
    /// Sets a librdkafka property on every client.
    pub fn kafka(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.kafka.insert(key.into(), value.into());
        self
    }
    /// Serves `/metrics`, `/health` and `/ready` on this address.
    pub fn metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }
    /// A [`TestDriver`](exactly_testkit::TestDriver) for this app, running processors made
    /// by `factory`: its input topics (one partition each; `.input(topic, n)` changes a
    /// count), app id, stores, timers, ID policy, retries, error policies and dead-letter
    /// topic, on a simulated cluster with Kafka's rules (feature `testkit`, for your
    /// dev-dependencies).
    ///
    /// It runs the exactly-once guarantee and the partition dedup scope: an app configured
    /// with `dedup_scope(Global)` is tested as if partition-scoped (the repartition stage is a
    /// runtime matter, tested by this project against the broker).
    #[cfg(feature = "testkit")]
    pub fn test_driver<F: ProcessorFactory>(
        &self,
        factory: F,
    ) -> exactly_testkit::TestDriverBuilder<F> {
        let mut builder = exactly_testkit::TestDriver::builder(factory)
            .app(&self.config.app_id)
            .config(self.config.task.clone());
        for input in &self.config.inputs {
            builder = builder.input(input, 1);
        }
        builder
    }

    /// The config so far, to adjust anything the builder does not cover.
    pub fn config_mut(&mut self) -> &mut RuntimeConfig {
        &mut self.config
    }
    /// An app configured by a TOML file plus `EXACTLY_*` environment overrides (see
    /// `docs/configuration.md`), serving metrics if the config sets `metrics_addr`.
    pub fn from_file(
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, crate::config::ConfigError> {
        let loaded = crate::config::load(Some(path.as_ref()))?;
        let mut app = Self::from_config(loaded.runtime);
        app.metrics_addr = loaded.metrics_addr;
        Ok(app)
    }
    /// An app configured by `EXACTLY_*` environment variables alone (see
    /// `docs/configuration.md`), serving metrics if they set `EXACTLY_METRICS_ADDR`.
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        let loaded = crate::config::load(None)?;
        let mut app = Self::from_config(loaded.runtime);
        app.metrics_addr = loaded.metrics_addr;
        Ok(app)
    }

    /// The app's metrics (an app-owned registry; register your own metrics in
    /// `metrics().registry()` and they are served at `/metrics` too).
    pub fn metrics(&mut self) -> Result<Arc<Metrics>, RuntimeError> {
        if self.metrics.is_none() {
            let m = Metrics::new(&self.config.app_id, &self.config.instance_id)
                .map_err(|e| RuntimeError::Config(format!("cannot define the metrics: {e}")))?;
            self.metrics = Some(Arc::new(m));
        }
        Ok(self.metrics.clone().expect("set above"))
    }

    /// Runs one processor per task, made by `factory` (a closure of the task: `.run(|_|
    /// Charge)`, no type annotation needed), until SIGTERM / SIGINT (graceful: commits the open
    /// transaction and closes the stores) or a fatal error. Serves `/metrics`, `/health` and
    /// `/ready` if a metrics address is set. [`run_factory`](Self::run_factory) takes any
    /// [`ProcessorFactory`], [`run_default`](Self::run_default) a `Processor + Default`.
    pub fn run<P, F>(self, factory: F) -> Result<(), RuntimeError>
    where
        P: Processor,
        F: Fn(&TaskId) -> P + Send + Sync + 'static,
    {
        self.run_factory(factory)
    }

    /// Runs `P::default()` for every task (see [`run`](Self::run)).
    ///
    /// ```no_run
    /// use exactly::{App, Context, Output, ProcessError, Processor, Record};
    ///
    /// #[derive(Default)]
    /// struct Forward;
    /// impl Processor for Forward {
    ///     fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
    ///         ctx.send(Output::forward("clean", r));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// App::new("dedup").input("raw").output("clean").run_default::<Forward>()?;
    /// # Ok::<(), exactly::RuntimeError>(())
    /// ```
    pub fn run_default<P: Processor + Default>(self) -> Result<(), RuntimeError> {
        self.run(|_| P::default())
    }

    /// [`run`](Self::run) with any [`ProcessorFactory`] (a type of your own that makes the
    /// processors).
    pub fn run_factory<F: ProcessorFactory>(mut self, factory: F) -> Result<(), RuntimeError> {
        let metrics = self.metrics()?;
        let health = Arc::new(Health::new());
        let observer = Arc::new(MetricsObserver::new(
            metrics.clone(),
            health.clone(),
            self.config.threads,
        ));
        let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                RuntimeError::Config(format!(
                    "cannot start the tokio runtime for signals and metrics: {e}"
                ))
            })?;
        let server = match self.metrics_addr {
            Some(addr) => {
                let (listener, local) = rt.block_on(exactly_metrics::bind(addr)).map_err(|e| {
                    RuntimeError::Config(format!("metrics address {addr}: {e}; choose a free port"))
                })?;
                tracing::info!(%local, "metrics at http://{local}/metrics");
                Some(rt.spawn(exactly_metrics::serve_listener(
                    listener,
                    metrics,
                    health.clone(),
                    async {
                        let _ = server_stopped.await;
                    },
                )))
            }
            None => None,
        };
        // Signals are handled from before the start, so a SIGTERM during start-up (topic checks,
        // joining the group) also stops the app gracefully.
        let stop_requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
        rt.spawn(wait_for_signal(stop_requested.clone()));
        let driver = std::thread::Builder::new()
            .name("exactly-io".into())
            .spawn(move || {
                rt.block_on(async move {
                    if let Some(server) = server {
                        match server.await {
                            Ok(Err(e)) => tracing::error!(error = %e, "metrics server failed"),
                            Err(e) => tracing::error!(error = %e, "metrics server panicked"),
                            Ok(Ok(())) => {}
                        }
                    } else {
                        std::future::pending::<()>().await;
                    }
                })
            })
            .map_err(|e| {
                RuntimeError::Config(format!("cannot spawn the signal/metrics thread: {e}"))
            })?;
        health.set_live(true);
        let handle = exactly_kafka::start(self.config, factory, observer)?;
        while !handle.is_finished() {
            if stop_requested.load(Ordering::SeqCst) {
                handle.shutdown();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let result = handle.join();
        health.set_ready(false);
        health.set_live(false);
        let _ = server_stop.send(());
        if self.metrics_addr.is_some() {
            let _ = driver.join();
        }
        result
    }
}

/// SIGTERM and SIGINT set the shutdown flag; the stream threads then commit and stop.
async fn wait_for_signal(stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down gracefully"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down gracefully"),
    }
    stop.store(true, Ordering::SeqCst);
}
