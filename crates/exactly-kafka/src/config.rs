//! Runtime configuration and the names the runtime derives from it.

use exactly_core::TaskConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use exactly_core::engine::{DedupScope, Guarantee, OffsetReset, RestoreFrom};

/// Everything a runtime needs to run an app. Its `Debug` shows secret `kafka` values
/// ([`is_secret_property`]) as `<redacted>`.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Application id: the consumer group id and the prefix of internal topics.
    pub app_id: String,
    /// Stable id of this instance (e.g. a StatefulSet ordinal); part of `transactional.id`, so
    /// a restarted instance fences its predecessor at once.
    pub instance_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Input topics.
    pub inputs: Vec<String>,
    /// Output topics the processor writes to; checked to exist before processing starts.
    pub outputs: Vec<String>,
    /// Root of the state directories.
    pub state_dir: PathBuf,
    /// Stream threads in this instance.
    pub threads: usize,
    /// Commit interval.
    pub commit_interval: Duration,
    /// Maximum input records in one transaction (default 10,000). Under load a transaction
    /// ends at this size before the commit interval; each commit costs a few broker round
    /// trips, so small caps cost throughput (see docs/performance.md), while larger ones make
    /// an aborted transaction's rework larger.
    pub max_batch_records: usize,
    /// Processing guarantee.
    pub guarantee: Guarantee,
    /// Static group membership: each stream thread's consumer uses its transactional id as
    /// `group.instance.id`, so a restarted instance gets its partitions back without a
    /// rebalance. A member that is gone for good (or shut down) keeps its partitions until
    /// `session.timeout.ms` passes.
    pub static_membership: bool,
    /// Task settings (IDs, retries, error policy, retention, DLQ topic, state stores).
    pub task: TaskConfig,
    /// Dedup within a partition (default) or across an input topic's partitions.
    pub dedup_scope: DedupScope,
    /// With the global scope: how often each stream thread deletes the repartition records
    /// its tasks committed past (default 30 s, as Kafka Streams'
    /// `repartition.purge.interval.ms`); a graceful stop purges once more.
    pub repartition_purge_interval: Duration,
    /// Create the dead-letter topic if it is missing.
    pub create_dead_letter_topic: bool,
    /// Replication factor for internal topics the runtime creates.
    pub replication_factor: i32,
    /// Transaction timeout (`transaction.timeout.ms`).
    pub transaction_timeout: Duration,
    /// Timeout for requests to the cluster at start (metadata, topic creation).
    pub startup_timeout: Duration,
    /// RocksDB block cache shared by the instance's stores (bytes).
    pub block_cache_bytes: usize,
    /// RocksDB write buffer budget shared by the instance's stores (bytes).
    pub write_buffer_bytes: usize,
    /// Check the config of existing internal topics at start (cleanup policy, retention);
    /// `false` skips it for clusters that cannot describe topic configs (librdkafka's mock
    /// cluster) — then nobody checks that the changelogs keep what restores need.
    pub verify_topic_configs: bool,
    /// Where a trusted dedup store's restore starts: its checkpoint (default) or, for brokers
    /// whose read_committed fetches after an aborted transaction skip records, the start.
    pub restore_from: RestoreFrom,
    /// Where a task starts whose committed input offset is gone although its restored store
    /// holds committed IDs: refuse (default), the input's start, or its end.
    pub offset_reset: OffsetReset,
    /// Start the next transaction with a new producer after all brokers were unreachable
    /// (default false). Only for brokers that, once restarted, no longer abort the open
    /// transaction of a producer initialised before the restart when its `transactional.id`
    /// is initialised again (the local test broker; its scripts set it). Never needed on
    /// Apache Kafka, whose coordinator keeps its state in `__transaction_state` and times
    /// transactions out.
    pub renew_producer_after_outage: bool,
    /// librdkafka properties passed to every client (secrets allowed; never logged).
    pub kafka: BTreeMap<String, String>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be left out of the debug output unnoticed.
        let Self {
            app_id,
            instance_id,
            bootstrap,
            inputs,
            outputs,
            state_dir,
            threads,
            commit_interval,
            max_batch_records,
            guarantee,
            static_membership,
            task,
            dedup_scope,
            repartition_purge_interval,
            create_dead_letter_topic,
            replication_factor,
            transaction_timeout,
            startup_timeout,
            block_cache_bytes,
            write_buffer_bytes,
            verify_topic_configs,
            restore_from,
            offset_reset,
            renew_producer_after_outage,
            kafka,
        } = self;
        let kafka: BTreeMap<&str, &str> = kafka
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    "<redacted>"
                } else {
                    v
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("RuntimeConfig")
            .field("app_id", app_id)
            .field("instance_id", instance_id)
            .field("bootstrap", bootstrap)
            .field("inputs", inputs)
            .field("outputs", outputs)
            .field("state_dir", state_dir)
            .field("threads", threads)
            .field("commit_interval", commit_interval)
            .field("max_batch_records", max_batch_records)
            .field("guarantee", guarantee)
            .field("static_membership", static_membership)
            .field("task", task)
            .field("dedup_scope", dedup_scope)
            .field("repartition_purge_interval", repartition_purge_interval)
            .field("create_dead_letter_topic", create_dead_letter_topic)
            .field("replication_factor", replication_factor)
            .field("transaction_timeout", transaction_timeout)
            .field("startup_timeout", startup_timeout)
            .field("block_cache_bytes", block_cache_bytes)
            .field("write_buffer_bytes", write_buffer_bytes)
            .field("verify_topic_configs", verify_topic_configs)
            .field("restore_from", restore_from)
            .field("offset_reset", offset_reset)
            .field("renew_producer_after_outage", renew_producer_after_outage)
            .field("kafka", &kafka)
            .finish()
    }
}

impl RuntimeConfig {
    /// A config with defaults for everything but the names.
    pub fn new(app_id: impl Into<String>, bootstrap: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            instance_id: "0".into(),
            bootstrap: bootstrap.into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            state_dir: PathBuf::from("state"),
            threads: 1,
            commit_interval: Duration::from_millis(100),
            max_batch_records: 10_000,
            guarantee: Guarantee::ExactlyOnce,
            static_membership: true,
            task: TaskConfig::default(),
            dedup_scope: DedupScope::Partition,
            repartition_purge_interval: Duration::from_secs(30),
            create_dead_letter_topic: true,
            replication_factor: 1,
            transaction_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 64 << 20,
            restore_from: RestoreFrom::Checkpoint,
            offset_reset: OffsetReset::Fail,
            renew_producer_after_outage: false,
            verify_topic_configs: true,
            kafka: BTreeMap::new(),
        }
    }

    /// The `client.id` of one of the runtime's clients: `{name}`, prefixed with the
    /// `kafka.client.id` the user set (`{client.id}-{name}`), so broker quotas and logs keyed
    /// on the user's id still match, while each client stays distinguishable.
    pub fn client_id(&self, name: &str) -> String {
        match self.kafka.get("client.id") {
            Some(prefix) => format!("{prefix}-{name}"),
            None => name.to_owned(),
        }
    }

    /// The librdkafka config every client starts from (the runtime's, and the CLI's
    /// `verify` and `topics`): `bootstrap.servers`, the `[kafka]` table (TLS, SASL, ...) and
    /// the client id [`client_id`](Self::client_id)`(name)`.
    pub fn client_config(&self, name: &str) -> rdkafka::config::ClientConfig {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.kafka {
            c.set(k, v);
        }
        c.set("client.id", self.client_id(name));
        c
    }

    /// `transactional.id` of a stream thread: `{app}-{instance}-{thread}`.
    pub fn transactional_id(&self, thread: usize) -> String {
        format!("{}-{}-{}", self.app_id, self.instance_id, thread)
    }
}

pub use exactly_core::engine::{changelog_topic, default_dead_letter_topic, repartition_topic};

/// The changelog topics of the state stores of an input topic's tasks, in declaration order:
/// `{app}-{input}-{store}-changelog`.
pub fn state_changelogs(config: &RuntimeConfig, input: &str) -> Vec<String> {
    config
        .task
        .stores
        .iter()
        .map(|s| exactly_core::state::state_changelog_topic(&config.app_id, input, &s.name))
        .collect()
}

/// Every changelog topic of the app's tasks: per task topic, the dedup changelog and the
/// state store changelogs.
pub fn all_changelogs(config: &RuntimeConfig) -> Vec<String> {
    let mut out = Vec::new();
    for topic in task_topics(config) {
        out.push(changelog_topic(&config.app_id, &topic));
        out.extend(state_changelogs(config, &topic));
    }
    out
}

/// The topics whose tasks dedup and run the processor: the inputs, or with the global dedup
/// scope their repartition topics.
pub fn task_topics(config: &RuntimeConfig) -> Vec<String> {
    exactly_core::engine::task_topics(&config.app_id, config.dedup_scope, &config.inputs)
}

/// The topics the group subscribes to: the inputs, plus the repartition topics with the
/// global dedup scope.
pub fn subscribed_topics(config: &RuntimeConfig) -> Vec<String> {
    exactly_core::engine::subscribed_topics(&config.app_id, config.dedup_scope, &config.inputs)
}

/// librdkafka properties the runtime sets itself: overriding them would break the protocol.
pub const MANAGED_KAFKA_PROPERTIES: [&str; 6] = [
    "transactional.id",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "isolation.level",
    "enable.idempotence",
];

/// librdkafka property names whose values must never be logged.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password")
        || n.contains("secret")
        || n.contains("key.pem")
        || n.ends_with(".key")
        || n.contains("token")
        || n.contains("credentials")
}

#[cfg(test)]
mod tests {
    use super::RuntimeConfig;

    #[test]
    fn debug_output_redacts_secret_kafka_values_and_shows_the_rest() {
        let mut c = RuntimeConfig::new("app", "broker:9092");
        for (k, v) in [
            ("sasl.password", "hunter2-sasl"),
            ("ssl.key.password", "hunter2-key"),
            ("sasl.oauthbearer.client.secret", "hunter2-oauth"),
            ("security.protocol", "sasl_ssl"),
        ] {
            c.kafka.insert(k.into(), v.into());
        }
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 3, "{shown}");
        assert!(
            shown.contains(r#""security.protocol": "sasl_ssl""#),
            "{shown}"
        );
        assert!(shown.contains(r#"bootstrap: "broker:9092""#), "{shown}");
    }

    #[test]
    fn client_ids_carry_the_users_client_id_as_a_prefix() {
        let mut c = RuntimeConfig::new("app", "broker:9092");
        assert_eq!(c.client_id("app-0-0-consumer"), "app-0-0-consumer");
        c.kafka.insert("client.id".into(), "billing".into());
        assert_eq!(c.client_id("app-0-0-consumer"), "billing-app-0-0-consumer");
        let base = c.client_config("app-0-admin");
        assert_eq!(base.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(base.get("client.id"), Some("billing-app-0-admin"));
    }
}
