//! Topic checks and creation before any processing: inputs and outputs must exist, the dedup
//! changelogs are created with the input's partition count and `cleanup.policy=compact,delete`,
//! and an existing changelog that does not match is refused.

use crate::config::{
    changelog_topic, repartition_topic, state_changelogs, DedupScope, RuntimeConfig,
};
use crate::error::RuntimeError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;

/// How an internal topic the runtime creates is cleaned up.
enum Cleanup {
    /// The broker's default (the dead-letter topic).
    Default,
    /// `compact` (a state store without TTL).
    Compact,
    /// `compact,delete` with this `retention.ms` (dedup changelogs, stores with a TTL).
    CompactDelete(String),
    /// A state store's changelog: `compact` or `compact,delete` with this `retention.ms`,
    /// and an explicit `delete.retention.ms`.
    State(Option<String>),
    /// `delete` with this `retention.ms` (repartition topics).
    Delete(String),
}

/// Partition counts of the topics that exist (`None` for a missing one).
fn partition_counts(
    client: &BaseConsumer,
    topics: &[String],
    config: &RuntimeConfig,
) -> Result<BTreeMap<String, Option<i32>>, RuntimeError> {
    Ok(counts(&shapes(client, topics, config)?))
}

/// The partition counts of `shapes`.
fn counts(shapes: &BTreeMap<String, Option<Shape>>) -> BTreeMap<String, Option<i32>> {
    shapes
        .iter()
        .map(|(t, shape)| (t.clone(), shape.map(|s| s.partitions)))
        .collect()
}

/// What the metadata says of an existing topic.
#[derive(Debug, Clone, Copy)]
struct Shape {
    partitions: i32,
    /// Replicas of its least replicated partition.
    replicas: usize,
}

/// The shapes of the topics that exist (`None` for a missing one).
fn shapes(
    client: &BaseConsumer,
    topics: &[String],
    config: &RuntimeConfig,
) -> Result<BTreeMap<String, Option<Shape>>, RuntimeError> {
    let md = client
        .fetch_metadata(None, config.startup_timeout)
        .map_err(|e| RuntimeError::Unreachable {
            bootstrap: config.bootstrap.clone(),
            timeout_s: config.startup_timeout.as_secs(),
            source: e,
        })?;
    let mut out = BTreeMap::new();
    for t in topics {
        let shape = md
            .topics()
            .iter()
            .find(|mt| mt.name() == t && mt.error().is_none())
            .filter(|mt| !mt.partitions().is_empty())
            .map(|mt| Shape {
                partitions: mt.partitions().len() as i32,
                replicas: mt
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0),
            });
        out.insert(t.clone(), shape);
    }
    Ok(out)
}

fn admin_config(config: &RuntimeConfig) -> ClientConfig {
    config.client_config(&format!("{}-{}-admin", config.app_id, config.instance_id))
}

/// A metadata client and an admin client, made from the same config.
fn admin_clients(
    config: &RuntimeConfig,
) -> Result<(BaseConsumer, AdminClient<DefaultClientContext>), RuntimeError> {
    let cc = admin_config(config);
    let kafka = |e| RuntimeError::Kafka {
        during: "creating an admin client",
        source: e,
    };
    Ok((cc.create().map_err(kafka)?, cc.create().map_err(kafka)?))
}

/// The partition count the missing-input error suggests (an example: the user chooses).
const SUGGESTED_INPUT_PARTITIONS: i32 = 6;

/// The command that creates a topic of an app (an input or an output) with the `exactly` CLI,
/// as the errors about a missing topic suggest it. (`crates/exactly-cli` tests that running it
/// lets the app start.)
pub fn create_topic_command(topic: &str, partitions: i32, bootstrap: &str) -> String {
    format!("exactly topics create {topic} --partitions {partitions} --bootstrap {bootstrap}")
}

/// What [`create_topics`] did with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// It was created.
    Created,
    /// It existed already, with the partition count asked for.
    Existed,
}

/// Creates `topics` (an app's inputs or outputs) with `partitions` partitions each, the
/// config's replication factor and the topic-level `properties` (e.g. `retention.ms`), as
/// `exactly topics create` does. A topic that exists with the same partition count is left
/// alone; one with another count is an error (the tool never changes an existing topic).
pub fn create_topics(
    config: &RuntimeConfig,
    topics: &[String],
    partitions: i32,
    properties: &[(String, String)],
) -> Result<Vec<(String, Created)>, RuntimeError> {
    if partitions < 1 {
        return Err(RuntimeError::Config(format!(
            "--partitions {partitions}: a topic needs at least one partition"
        )));
    }
    let (client, admin) = admin_clients(config)?;
    let result =
        (|| {
            let before = partition_counts(&client, topics, config)?;
            let mut new = Vec::new();
            let mut done = Vec::new();
            for topic in topics {
                match before[topic] {
                    Some(n) if n == partitions => done.push((topic.clone(), Created::Existed)),
                    Some(n) => {
                        return Err(RuntimeError::Topic(format!(
                    "topic `{topic}` exists with {n} partitions, not {partitions}; left unchanged"
                )))
                    }
                    None => {
                        let replication = TopicReplication::Fixed(config.replication_factor);
                        let mut t = NewTopic::new(topic, partitions, replication);
                        for (k, v) in properties {
                            t = t.set(k, v);
                        }
                        new.push(t);
                    }
                }
            }
            if !new.is_empty() {
                let opts = AdminOptions::new().operation_timeout(Some(config.startup_timeout));
                let results = futures_executor::block_on(admin.create_topics(&new, &opts))
                    .map_err(|e| RuntimeError::Kafka {
                        during: "creating topics",
                        source: e,
                    })?;
                for r in results {
                    match r {
                        Ok(name) => done.push((name, Created::Created)),
                        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            done.push((name, Created::Existed))
                        }
                        Err((name, code)) => {
                            return Err(RuntimeError::Topic(format!(
                                "could not create topic `{name}`: {code}"
                            )))
                        }
                    }
                }
                let created: Vec<(String, i32, Cleanup)> = done
                    .iter()
                    .map(|(t, _)| (t.clone(), partitions, Cleanup::Default))
                    .collect();
                wait_for_topics(&client, &created, config)?;
            }
            Ok(done)
        })();
    crate::clients::serve_events(&client);
    result
}

/// What the topic checks found out for the stream threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedTopics {
    /// The partition count of each input.
    pub inputs: BTreeMap<String, i32>,
    /// The smallest `max.message.bytes` of the existing dedup changelogs, if any could be
    /// read: the largest record the broker takes there (a changelog record holds the IDs of
    /// one transaction, and is split to fit).
    pub dedup_changelog_max_bytes: Option<usize>,
    /// The smallest `delete.retention.ms` of the state stores' changelogs (those created now
    /// get Kafka's default, one day, set explicitly); `None` if one could not be read or there
    /// are none. A state store is restored from its checkpoint only within half of it.
    pub state_changelog_delete_retention_ms: Option<i64>,
}

/// The `delete.retention.ms` given to the state store changelogs exactly creates: Kafka's
/// default, set explicitly so that the restores know it.
const STATE_CHANGELOG_DELETE_RETENTION_MS: i64 = exactly_core::task::DEFAULT_DELETE_RETENTION_MS;

/// What the config of an existing internal topic says, as far as it could be read.
#[derive(Debug, Clone, Copy, Default)]
struct TopicFacts {
    max_message_bytes: Option<usize>,
    delete_retention_ms: Option<i64>,
}

/// Checks inputs and outputs, creates missing internal topics (changelogs, DLQ) and refuses
/// mismatching ones.
pub fn ensure_topics(config: &RuntimeConfig) -> Result<CheckedTopics, RuntimeError> {
    let (client, admin) = admin_clients(config)?;
    let checked = check_and_create(config, &client, &admin);
    // librdkafka hands a client's logs over only when its queue is polled: serve them
    // (connection errors explain a failed check) before the client is dropped.
    crate::clients::serve_events(&client);
    checked
}

fn check_and_create(
    config: &RuntimeConfig,
    client: &BaseConsumer,
    admin: &AdminClient<DefaultClientContext>,
) -> Result<CheckedTopics, RuntimeError> {
    let mut all: Vec<String> = config.inputs.clone();
    all.extend(config.outputs.iter().cloned());
    // (input, changelog, retention.ms): the dedup changelog keeps IDs for the dedup
    // retention; a state store's keeps entries for its TTL, or forever (compact only).
    let dedup_retention = config.task.dedup_retention_ms.to_string();
    let mut dedup_changelogs = Vec::new();
    // With the global dedup scope the tasks that dedup read `{app}-{input}-by-id`, which has
    // the input's partition count; their changelogs are named after it.
    let mut changelogs: Vec<(String, String, Option<String>)> = Vec::new();
    let mut repartition: Vec<(String, String)> = Vec::new();
    for input in &config.inputs {
        let task_topic = match config.dedup_scope {
            DedupScope::Partition => input.clone(),
            DedupScope::Global => {
                let topic = repartition_topic(&config.app_id, input);
                repartition.push((input.clone(), topic.clone()));
                topic
            }
        };
        dedup_changelogs.push(changelog_topic(&config.app_id, &task_topic));
        changelogs.push((
            input.clone(),
            changelog_topic(&config.app_id, &task_topic),
            Some(dedup_retention.clone()),
        ));
        let stores = config.task.stores.iter();
        for (spec, topic) in stores.zip(state_changelogs(config, &task_topic)) {
            changelogs.push((input.clone(), topic, spec.ttl_ms().map(|t| t.to_string())));
        }
    }
    all.extend(changelogs.iter().map(|(_, c, _)| c.clone()));
    all.extend(repartition.iter().map(|(_, r)| r.clone()));
    let dlq = config.task.dead_letter_topic.clone();
    all.extend(dlq.iter().cloned());
    let shapes = shapes(client, &all, config)?;
    let counts = counts(&shapes);

    let mut inputs = BTreeMap::new();
    for input in &config.inputs {
        match counts[input] {
            Some(n) => {
                inputs.insert(input.clone(), n);
            }
            None => {
                return Err(RuntimeError::Topic(format!(
                    "input topic `{input}` does not exist; create it, e.g. `{}` (its partition count caps the app's parallelism), or fix `inputs`",
                    create_topic_command(input, SUGGESTED_INPUT_PARTITIONS, &config.bootstrap)
                )))
            }
        }
    }
    for output in &config.outputs {
        if counts[output].is_none() {
            let partitions = inputs.values().copied().max().unwrap_or(1);
            return Err(RuntimeError::Topic(format!(
                "output topic `{output}` does not exist; create it before starting the app, e.g. `{}` (outputs are not auto-created, so a typo cannot silently create a topic)",
                create_topic_command(output, partitions, &config.bootstrap)
            )));
        }
    }

    let mut to_create: Vec<(String, i32, Cleanup)> = Vec::new();
    for (input, topic) in &repartition {
        let want = inputs[input];
        match counts[topic] {
            Some(n) if n != want => {
                return Err(RuntimeError::Topic(format!(
                    "repartition topic `{topic}` has {n} partitions but input `{input}` has {want}; \
                     every copy of a message ID must go to one partition, so they must match. \
                     Delete it while the app is stopped and caught up, or restore the input's partition count"
                )))
            }
            Some(_) => {
                check_replication(topic, shapes[topic], config)?;
                check_topic_config(admin, Internal::Repartition, topic, Some(&dedup_retention), config)?;
            }
            // Kept until read: the tasks reading it delete what they committed past
            // (DeleteRecords every `purge_interval`), as Kafka Streams does, so a stage 2
            // stopped for longer than any retention loses nothing (docs/state.md).
            None => to_create.push((topic.clone(), want, Cleanup::Delete("-1".to_owned()))),
        }
    }
    let mut max_bytes: Option<usize> = None;
    // `Some(None)` while no state changelog was seen; `None` once one's is unknown.
    let mut state_delete_retention: Option<Option<i64>> = Some(None);
    let mut note_state_retention = |ms: Option<i64>| {
        state_delete_retention = match (state_delete_retention, ms) {
            (Some(seen), Some(ms)) => Some(Some(seen.map_or(ms, |s: i64| s.min(ms)))),
            _ => None,
        };
    };
    for (input, changelog, retention) in &changelogs {
        let want = inputs[input];
        match counts[changelog] {
            Some(n) if n != want => {
                return Err(RuntimeError::Topic(format!(
                    "changelog topic `{changelog}` has {n} partitions but input `{input}` has {want}; \
                     the store of task p lives in changelog partition p, so they must match. \
                     Delete the changelog (losing its dedup history or state) or restore the input's partition count"
                )))
            }
            Some(_) => {
                check_replication(changelog, shapes[changelog], config)?;
                let facts = check_topic_config(admin, Internal::Changelog, changelog, retention.as_deref(), config)?;
                if dedup_changelogs.contains(changelog) {
                    max_bytes = match (max_bytes, facts.max_message_bytes) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                } else {
                    note_state_retention(facts.delete_retention_ms);
                }
            }
            None if dedup_changelogs.contains(changelog) => {
                let cleanup = match retention {
                    Some(ms) => Cleanup::CompactDelete(ms.clone()),
                    None => Cleanup::Compact,
                };
                to_create.push((changelog.clone(), want, cleanup));
            }
            None => {
                note_state_retention(Some(STATE_CHANGELOG_DELETE_RETENTION_MS));
                to_create.push((changelog.clone(), want, Cleanup::State(retention.clone())));
            }
        }
    }
    if let Some(dlq) = &dlq {
        if counts[dlq].is_none() {
            if !config.create_dead_letter_topic {
                return Err(RuntimeError::Topic(format!(
                    "dead-letter topic `{dlq}` does not exist and `dead_letter.create` is off; create it"
                )));
            }
            let n = inputs.values().copied().max().unwrap_or(1);
            to_create.push((dlq.clone(), n, Cleanup::Default));
        }
    }
    let state_delete_retention_text = STATE_CHANGELOG_DELETE_RETENTION_MS.to_string();
    if !to_create.is_empty() {
        let new: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|(name, n, cleanup)| {
                let t = NewTopic::new(name, *n, TopicReplication::Fixed(config.replication_factor));
                match cleanup {
                    Cleanup::Default => t,
                    Cleanup::Compact => t.set("cleanup.policy", "compact"),
                    Cleanup::CompactDelete(ms) => t
                        .set("cleanup.policy", "compact,delete")
                        .set("retention.ms", ms),
                    Cleanup::State(retention) => {
                        let t = t.set("delete.retention.ms", &state_delete_retention_text);
                        match retention {
                            Some(ms) => t
                                .set("cleanup.policy", "compact,delete")
                                .set("retention.ms", ms),
                            None => t.set("cleanup.policy", "compact"),
                        }
                    }
                    Cleanup::Delete(ms) => t.set("retention.ms", ms),
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(config.startup_timeout));
        let results =
            futures_executor::block_on(admin.create_topics(&new, &opts)).map_err(|e| {
                RuntimeError::Kafka {
                    during: "creating internal topics",
                    source: e,
                }
            })?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = %name, "created internal topic"),
                // Another instance created it at the same time: fine, it is checked below.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(RuntimeError::Topic(format!(
                        "could not create internal topic `{name}`: {code}; create it with the partition count of its input and cleanup.policy=compact (compact,delete for the dedup changelog and stores with a TTL)"
                    )))
                }
            }
        }
        wait_for_topics(client, &to_create, config)?;
    }
    Ok(CheckedTopics {
        inputs,
        dedup_changelog_max_bytes: max_bytes,
        state_changelog_delete_retention_ms: state_delete_retention.flatten(),
    })
}

fn wait_for_topics(
    client: &BaseConsumer,
    topics: &[(String, i32, Cleanup)],
    config: &RuntimeConfig,
) -> Result<(), RuntimeError> {
    let names: Vec<String> = topics.iter().map(|t| t.0.clone()).collect();
    let deadline = std::time::Instant::now() + config.startup_timeout;
    loop {
        let counts = partition_counts(client, &names, config)?;
        if topics.iter().all(|(n, p, _)| counts[n] == Some(*p)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(RuntimeError::Topic(format!(
                "topics {names:?} did not appear within the startup timeout ({} ms); check the broker (its log) and raise startup_timeout_ms if it is slow", config.startup_timeout.as_millis()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kinds of internal topic whose config is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
    /// A dedup or state-store changelog.
    Changelog,
    /// The global dedup scope's `{app}-{input}-by-id`.
    Repartition,
}

impl Internal {
    fn name(self) -> &'static str {
        match self {
            Self::Changelog => "changelog",
            Self::Repartition => "repartition",
        }
    }
}

/// An existing internal topic must have at least `replication_factor` replicas (it holds
/// the dedup history, the state, or records not processed yet); one with a single replica is
/// allowed with a warning (losing one broker disk loses it).
fn check_replication(
    topic: &str,
    shape: Option<Shape>,
    config: &RuntimeConfig,
) -> Result<(), RuntimeError> {
    // A broker that lists no replicas tells nothing.
    let Some(Shape { replicas, .. }) = shape.filter(|s| s.replicas > 0) else {
        return Ok(());
    };
    let want = config.replication_factor;
    if want > 0 && replicas < want as usize {
        return Err(RuntimeError::Topic(format!(
            "internal topic `{topic}` has {replicas} replica(s) per partition, fewer than replication_factor = {want}: \
             it holds the app's dedup history, state or unprocessed records, which a broker failure must not lose. \
             Raise its replication (kafka-reassign-partitions) or lower `replication_factor`"
        )));
    }
    if replicas == 1 {
        tracing::warn!(topic, "internal topic has a single replica: losing that broker's disk loses the app's dedup history or state (fine for a test cluster)");
    }
    Ok(())
}

/// An existing changelog must be compacted (with `delete` alone, entries older than the
/// segment retention would vanish from restores however long they should live), and one with
/// a retention (`compact,delete`) must keep its records at least `retention_ms` (the dedup
/// retention or the store's TTL): otherwise a restore forgets IDs that are still within their
/// dedup retention and their resends are processed again. A repartition topic must keep its
/// records for the dedup retention: the tasks that dedup may lag behind the ones that forward,
/// and what the broker deleted before they read it is lost. With more than one replica,
/// `min.insync.replicas` below 2 is warned about (a write acknowledged by one replica is lost
/// with it). Returns what else the restores need to know of it.
fn check_topic_config(
    admin: &AdminClient<DefaultClientContext>,
    kind: Internal,
    topic: &str,
    retention_ms: Option<&str>,
    config: &RuntimeConfig,
) -> Result<TopicFacts, RuntimeError> {
    let what = kind.name();
    let opts = AdminOptions::new().request_timeout(Some(config.startup_timeout));
    let res = futures_executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
    );
    let resource = match res {
        Ok(mut v) => match v.pop() {
            Some(Ok(resource)) => Ok(resource),
            Some(Err(code)) => Err(code.to_string()),
            None => Err("no answer".to_owned()),
        },
        Err(e) => Err(e.to_string()),
    };
    let resource = match resource {
        Ok(r) => r,
        Err(why) if config.verify_topic_configs => {
            return Err(RuntimeError::Topic(format!(
                "cannot read the config of {what} topic `{topic}` ({why}); exactly checks that changelogs are compacted and that internal topics keep their records for the dedup retention. \
                 Grant the app DescribeConfigs on its internal topics, or check the topic yourself and set `verify_topic_configs = false`"
            )))
        }
        Err(why) => {
            tracing::warn!(topic, error = %why, "verify_topic_configs is off: not checking the {what} topic's config");
            return Ok(TopicFacts::default());
        }
    };
    let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
    let policy = value("cleanup.policy").unwrap_or_else(|| "delete".to_owned());
    let has = |p: &str| policy.split(',').any(|x| x.trim() == p);
    if kind == Internal::Changelog && !has("compact") {
        return Err(RuntimeError::Topic(format!(
            "changelog topic `{topic}` has cleanup.policy={policy}; it must include `compact` (set cleanup.policy=compact,delete)"
        )));
    }
    if let (true, Some(want), Some(have)) = (has("delete"), retention_ms, value("retention.ms")) {
        let (want, have): (i64, i64) = (
            want.parse().unwrap_or(i64::MAX),
            have.parse().unwrap_or(i64::MAX),
        );
        if have >= 0 && have < want {
            let why = match kind {
                Internal::Changelog => format!("the {want} ms its entries must live (the dedup retention, or the store's TTL): restores would forget IDs still within their retention"),
                Internal::Repartition => format!("the dedup retention ({want} ms): the tasks that dedup may lag behind the ones that forward, and records the broker deletes before they are read are lost"),
            };
            return Err(RuntimeError::Topic(format!(
                "{what} topic `{topic}` has retention.ms={have}, shorter than {why}. Raise its retention.ms to at least {want}"
            )));
        }
    }
    if let Some(isr) = value("min.insync.replicas").and_then(|v| v.parse::<i64>().ok()) {
        if isr < 2 && config.replication_factor > 1 {
            tracing::warn!(topic, min_insync_replicas = isr, "internal topic has min.insync.replicas below 2: a write acknowledged by one replica is lost with that broker");
        }
    }
    Ok(TopicFacts {
        max_message_bytes: value("max.message.bytes").and_then(|v| v.parse().ok()),
        delete_retention_ms: value("delete.retention.ms").and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::admin_config;
    use crate::RuntimeConfig;

    #[test]
    fn the_admin_clients_get_the_kafka_table_and_a_prefixed_client_id() {
        let mut c = RuntimeConfig::new("shop", "broker:9092");
        c.kafka
            .insert("security.protocol".into(), "sasl_ssl".into());
        c.kafka.insert("client.id".into(), "billing".into());
        let admin = admin_config(&c);
        assert_eq!(admin.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(admin.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(admin.get("client.id"), Some("billing-shop-0-admin"));
    }
}
