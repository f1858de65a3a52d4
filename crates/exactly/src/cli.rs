//! Command-line options every exactly app takes, for binaries built with clap:
//! `#[command(flatten)] run: exactly::cli::RunArgs`, then `run.app(app_id)`.

use crate::App;
use exactly_kafka::{DedupScope, Guarantee, OffsetReset, RestoreFrom, RuntimeConfig, RuntimeError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to run an app instance: cluster, identity, state, threads, metrics, librdkafka options.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:29092")]
    pub bootstrap: String,
    /// Stable instance id (part of the transactional id: a restart with the same id fences its
    /// predecessor).
    #[arg(long, default_value = "0")]
    pub instance_id: String,
    /// Root of the task stores.
    #[arg(long, default_value = "state")]
    pub state_dir: PathBuf,
    /// Stream threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Commit interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Input records in one transaction at most (default: the runtime's, 10000).
    #[arg(long)]
    pub max_batch_records: Option<usize>,
    /// How long message IDs are remembered, in milliseconds (default 7 days); also the dedup
    /// changelog's `retention.ms`.
    #[arg(long)]
    pub dedup_retention_ms: Option<u64>,
    /// Serve /metrics, /health and /ready on this address (e.g. 0.0.0.0:9100).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// How long start-up waits for the cluster (metadata, topic creation), in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub startup_timeout_ms: u64,
    /// Processing guarantee.
    #[arg(long, value_enum, default_value_t = GuaranteeArg::ExactlyOnce)]
    pub guarantee: GuaranteeArg,
    /// Dedup scope: within an input partition, or across the input's partitions (records are
    /// repartitioned by message ID first; docs/state.md).
    #[arg(long, value_enum, default_value_t = DedupScopeArg::Partition)]
    pub dedup_scope: DedupScopeArg,
    /// With `--dedup-scope global`: how often the repartition records the tasks committed past
    /// are deleted, in milliseconds (as Kafka Streams' `repartition.purge.interval.ms`).
    #[arg(long, default_value_t = 30_000)]
    pub repartition_purge_interval_ms: u64,
    /// Where a trusted dedup store's restore starts reading its changelog: its checkpoint
    /// (only the tail), or the changelog's start (for the local test broker, whose
    /// read_committed fetches after an aborted transaction skip records; its scripts set it).
    #[arg(long, value_enum, env = "EXACTLY_RESTORE_FROM", default_value_t = RestoreFromArg::Checkpoint)]
    pub restore_from: RestoreFromArg,
    /// Where a task starts whose committed input offset is gone (expired after
    /// `offsets.retention.minutes`, or deleted) although its restored store holds committed
    /// IDs: refuse to start (default), reprocess from the input's start, or skip to its end.
    #[arg(long, value_enum, env = "EXACTLY_OFFSET_RESET", default_value_t = OffsetResetArg::Fail)]
    pub offset_reset: OffsetResetArg,
    /// Replicas of the internal topics the app creates (changelogs, repartition and
    /// dead-letter topics); existing ones with fewer are refused (default 1; -1: the broker's
    /// default).
    #[arg(long, allow_negative_numbers = true)]
    pub replication_factor: Option<i32>,
    /// Static group membership (`group.instance.id` per stream thread): a restarted instance
    /// gets its partitions back without a rebalance. `false`: every join and leave rebalances.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub static_membership: bool,
    /// Start the next transaction with a new producer after all brokers were down: only for
    /// the local test broker, which after a restart no longer aborts an older producer's open
    /// transaction when its transactional.id is initialised again (its scripts set it).
    #[arg(long, env = "EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub renew_producer_after_outage: bool,
    /// librdkafka property for every client, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
}

/// `--guarantee` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuaranteeArg {
    /// Kafka transactions: outputs, changelog and offsets commit atomically.
    ExactlyOnce,
    /// No transactions: flush, store, then offsets; a crash can duplicate a batch.
    AtLeastOnce,
}

/// `--dedup-scope` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupScopeArg {
    /// Duplicates are recognised within an input partition.
    Partition,
    /// Duplicates are recognised across the input's partitions (repartitioned by ID).
    Global,
}

/// `--restore-from` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreFromArg {
    /// From the store's checkpoint: only the changelog tail.
    Checkpoint,
    /// From the changelog's start.
    Start,
}

/// `--offset-reset` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetResetArg {
    /// Refuse to start the task, with an error that says what to choose.
    Fail,
    /// Reprocess the input from its start.
    Earliest,
    /// Skip to the input's end.
    Latest,
}

impl RunArgs {
    /// An [`App`] named `app_id` configured from these options.
    pub fn app(&self, app_id: impl Into<String>) -> Result<App, RuntimeError> {
        let mut app = App::new(app_id)
            .bootstrap(self.bootstrap.clone())
            .instance_id(self.instance_id.clone())
            .state_dir(self.state_dir.clone())
            .threads(self.threads)
            .commit_interval(Duration::from_millis(self.commit_interval_ms))
            .guarantee(match self.guarantee {
                GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce,
                GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
            })
            .dedup_scope(match self.dedup_scope {
                DedupScopeArg::Partition => DedupScope::Partition,
                DedupScopeArg::Global => DedupScope::Global,
            });
        app.config_mut().startup_timeout = Duration::from_millis(self.startup_timeout_ms);
        app.config_mut().static_membership = self.static_membership;
        app.config_mut().renew_producer_after_outage = self.renew_producer_after_outage;
        app.config_mut().repartition_purge_interval =
            Duration::from_millis(self.repartition_purge_interval_ms);
        app.config_mut().restore_from = match self.restore_from {
            RestoreFromArg::Checkpoint => RestoreFrom::Checkpoint,
            RestoreFromArg::Start => RestoreFrom::Start,
        };
        app.config_mut().offset_reset = match self.offset_reset {
            OffsetResetArg::Fail => OffsetReset::Fail,
            OffsetResetArg::Earliest => OffsetReset::Earliest,
            OffsetResetArg::Latest => OffsetReset::Latest,
        };
        if let Some(n) = self.replication_factor {
            if n == 0 || n < -1 {
                return Err(RuntimeError::Config(format!(
                    "--replication-factor {n}: set it to a positive number of replicas, or -1 for the broker's default"
                )));
            }
            app.config_mut().replication_factor = n;
        }
        if let Some(n) = self.max_batch_records {
            app.config_mut().max_batch_records = n;
        }
        if let Some(ms) = self.dedup_retention_ms {
            app.config_mut().task.dedup_retention_ms = i64::try_from(ms).map_err(|_| {
                RuntimeError::Config(format!("--dedup-retention-ms {ms} is too large"))
            })?;
        }
        for kv in &self.kafka {
            let (k, v) = kafka_property(kv)?;
            app = app.kafka(k, v);
        }
        if let Some(addr) = self.metrics_addr {
            app = app.metrics_addr(addr);
        }
        Ok(app)
    }
}

/// A `--kafka KEY=VALUE` argument.
fn kafka_property(kv: &str) -> Result<(&str, &str), RuntimeError> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| RuntimeError::Config(format!("--kafka expects KEY=VALUE, got `{kv}`")))?;
    Ok((k.trim(), v.trim()))
}

/// How an operations tool (`exactly verify`, `exactly topics`, or an app's own) reaches the
/// cluster, the way the app does: the app's config file (its `bootstrap` and `[kafka]` table:
/// TLS, SASL, ...), then `--bootstrap` and `--kafka` on top.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The app's config file (TOML, with its EXACTLY_* environment overrides): the tool
    /// connects with its `bootstrap` and `[kafka]` settings and reads its app id and topics.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the config file's; default `KAFKA_BOOTSTRAP`, else
    /// 127.0.0.1:29092).
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// librdkafka property for every client, `key=value` (repeatable; overrides the config
    /// file's `[kafka]` table).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
}

impl ClusterArgs {
    /// The app's runtime config: loaded from `--config` (whose app id `app_id` replaces, if
    /// given), or the defaults for `app_id`; then `--bootstrap` and `--kafka` applied.
    pub fn runtime_config(&self, app_id: Option<&str>) -> Result<RuntimeConfig, RuntimeError> {
        let mut config = match (&self.config, app_id) {
            (Some(path), _) => {
                let mut c = crate::config::load(Some(path))
                    .map_err(|e| RuntimeError::Config(e.to_string()))?
                    .runtime;
                if let Some(id) = app_id {
                    c.app_id = id.to_owned();
                }
                c
            }
            (None, Some(id)) => RuntimeConfig::new(
                id,
                std::env::var("KAFKA_BOOTSTRAP")
                    .unwrap_or_else(|_| crate::config::DEFAULT_BOOTSTRAP.to_owned()),
            ),
            (None, None) => {
                return Err(RuntimeError::Config(
                    "no app given: pass --app-id, or --config with the app's config file".into(),
                ))
            }
        };
        if let Some(bs) = &self.bootstrap {
            config.bootstrap = bs.clone();
        }
        for kv in &self.kafka {
            let (k, v) = kafka_property(kv)?;
            config.kafka.insert(k.to_owned(), v.to_owned());
        }
        Ok(config)
    }

    /// The librdkafka config of a tool's own clients, named `tool` (prefixed with the
    /// `kafka.client.id` if one is set).
    pub fn client_config(&self, tool: &str) -> Result<rdkafka::config::ClientConfig, RuntimeError> {
        Ok(self.runtime_config(Some(tool))?.client_config(tool))
    }
}
