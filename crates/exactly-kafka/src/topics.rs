//! Topic checks and creation before any processing: inputs and outputs must exist, the dedup
//! changelogs are created with the input's partition count and `cleanup.policy=compact,delete`,
//! and an existing changelog that does not match is refused.

use crate::config::{changelog_topic, RuntimeConfig};
use crate::error::RuntimeError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;

/// Partition counts of the topics that exist (`None` for a missing one).
fn partition_counts(
    client: &BaseConsumer,
    topics: &[String],
    config: &RuntimeConfig,
) -> Result<BTreeMap<String, Option<i32>>, RuntimeError> {
    let md = client
        .fetch_metadata(None, config.startup_timeout)
        .map_err(|e| RuntimeError::Unreachable {
            bootstrap: config.bootstrap.clone(),
            timeout_s: config.startup_timeout.as_secs(),
            source: e,
        })?;
    let mut out = BTreeMap::new();
    for t in topics {
        let n = md
            .topics()
            .iter()
            .find(|mt| mt.name() == t && mt.error().is_none())
            .map(|mt| mt.partitions().len() as i32)
            .filter(|n| *n > 0);
        out.insert(t.clone(), n);
    }
    Ok(out)
}

fn admin_config(config: &RuntimeConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap);
    for (k, v) in &config.kafka {
        c.set(k, v);
    }
    c
}

/// Checks inputs and outputs, creates missing internal topics (changelogs, DLQ) and refuses
/// mismatching ones. Returns the partition count of each input.
pub fn ensure_topics(config: &RuntimeConfig) -> Result<BTreeMap<String, i32>, RuntimeError> {
    let cc = admin_config(config);
    let client: BaseConsumer = cc.create().map_err(|e| RuntimeError::Kafka {
        during: "creating an admin client",
        source: e,
    })?;
    let admin: AdminClient<DefaultClientContext> =
        cc.create().map_err(|e| RuntimeError::Kafka {
            during: "creating an admin client",
            source: e,
        })?;

    let mut all: Vec<String> = config.inputs.clone();
    all.extend(config.outputs.iter().cloned());
    let changelogs: Vec<(String, String)> = config
        .inputs
        .iter()
        .map(|i| (i.clone(), changelog_topic(&config.app_id, i)))
        .collect();
    all.extend(changelogs.iter().map(|(_, c)| c.clone()));
    let dlq = config.task.dead_letter_topic.clone();
    all.extend(dlq.iter().cloned());
    let counts = partition_counts(&client, &all, config)?;

    let mut inputs = BTreeMap::new();
    for input in &config.inputs {
        match counts[input] {
            Some(n) => {
                inputs.insert(input.clone(), n);
            }
            None => {
                return Err(RuntimeError::Topic(format!(
                    "input topic `{input}` does not exist; create it (e.g. `exactly topics create`) or fix `inputs`"
                )))
            }
        }
    }
    for output in &config.outputs {
        if counts[output].is_none() {
            return Err(RuntimeError::Topic(format!(
                "output topic `{output}` does not exist; create it before starting the app (outputs are not auto-created, so a typo cannot silently create a topic)"
            )));
        }
    }

    let retention = config.task.dedup_retention_ms.to_string();
    let mut to_create: Vec<(String, i32, bool)> = Vec::new();
    for (input, changelog) in &changelogs {
        let want = inputs[input];
        match counts[changelog] {
            Some(n) if n != want => {
                return Err(RuntimeError::Topic(format!(
                    "changelog topic `{changelog}` has {n} partitions but input `{input}` has {want}; \
                     the dedup store of partition p lives in changelog partition p, so they must match. \
                     Delete the changelog (losing dedup history) or restore the input's partition count"
                )))
            }
            Some(_) => check_cleanup_policy(&admin, changelog, config)?,
            None => to_create.push((changelog.clone(), want, true)),
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
            to_create.push((dlq.clone(), n, false));
        }
    }
    if !to_create.is_empty() {
        let new: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|(name, n, compact)| {
                let t = NewTopic::new(name, *n, TopicReplication::Fixed(config.replication_factor));
                if *compact {
                    t.set("cleanup.policy", "compact,delete")
                        .set("retention.ms", &retention)
                } else {
                    t
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
                        "could not create internal topic `{name}`: {code}; create it with the partition count of its input and cleanup.policy=compact,delete"
                    )))
                }
            }
        }
        wait_for_topics(&client, &to_create, config)?;
    }
    Ok(inputs)
}

fn wait_for_topics(
    client: &BaseConsumer,
    topics: &[(String, i32, bool)],
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
                "internal topics {names:?} did not appear within the startup timeout"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An existing changelog must be compacted: with `delete` alone, IDs older than the segment
/// retention would vanish from restores before their dedup retention ends.
fn check_cleanup_policy(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    config: &RuntimeConfig,
) -> Result<(), RuntimeError> {
    let opts = AdminOptions::new().request_timeout(Some(config.startup_timeout));
    let res = futures_executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
    );
    let policy = match res {
        Ok(mut v) => match v.pop() {
            Some(Ok(resource)) => resource.get("cleanup.policy").and_then(|e| e.value.clone()),
            _ => None,
        },
        Err(e) => {
            tracing::warn!(topic, error = %e, "could not describe the changelog's config; not checking cleanup.policy");
            return Ok(());
        }
    };
    match policy {
        Some(p) if p.split(',').any(|x| x.trim() == "compact") => Ok(()),
        Some(p) => Err(RuntimeError::Topic(format!(
            "changelog topic `{topic}` has cleanup.policy={p}; it must include `compact` (set cleanup.policy=compact,delete)"
        ))),
        None => Ok(()),
    }
}
