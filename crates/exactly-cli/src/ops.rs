//! Operations subcommands: `verify`, `inspect`, `topics`.

use exactly::cli::ClusterArgs;
use exactly_core::DedupStore;
use exactly_kafka::config::{all_changelogs, repartition_topic};
use exactly_kafka::topics::Created;
use exactly_kafka::{changelog_topic, default_dead_letter_topic, DedupScope};
use exactly_state::{task_dir, RocksDedupStore, SharedRocksResources, StoreIdentity};
use exactly_testkit::broker;
use exactly_testkit::broker::ReadRecord;
use exactly_testkit::chaos::{count_by, Verification, NO_ID};
use exactly_testkit::ids::IdLocation;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `exactly verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Input topic: every message ID in it must reach the output once.
    #[arg(long)]
    input: String,
    /// Output topic.
    #[arg(long)]
    output: String,
    /// Where the input records carry their message ID: `header:<name>`, `key`,
    /// `json:<field>` (a field of a JSON value) or `json:/<pointer>` (a nested one).
    #[arg(
        long = "id",
        default_value = "header:message-id",
        value_name = "LOCATION"
    )]
    input_id: IdLocation,
    /// Where the output records carry their input's message ID (default: as --id).
    #[arg(long, value_name = "LOCATION")]
    output_id: Option<IdLocation>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// How many offending IDs to list.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

/// `partition:offset` of each of `records` whose ID at `at` is `id`.
fn offsets_of(records: &[ReadRecord], at: &IdLocation, id: &str) -> String {
    let places: Vec<String> = records
        .iter()
        .filter(|r| at.of(r).as_deref().unwrap_or(NO_ID) == id)
        .map(|r| format!("{}:{}", r.partition, r.offset))
        .collect();
    places.join(", ")
}

/// Reads both topics with isolation.level=read_committed and compares them per message ID
/// (the `message-id` header, or where `--id` and `--output-id` say). Exit code 1 on any
/// duplicate, missing or unexpected ID; each is listed with its partition:offset places.
pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let base = a.cluster.client_config("exactly-verify")?;
    let partitions = existing_topics(&base, &[&a.input, &a.output])?;
    println!(
        "reading {} ({} partitions) and {} ({} partitions), read_committed",
        a.input, partitions[0], a.output, partitions[1]
    );
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message(format!("reading {}", a.input));
    let read = |topic: &str| {
        broker::read_committed_with(&base, topic, READ_TIMEOUT).map_err(anyhow::Error::msg)
    };
    let inputs = read(&a.input)?;
    spinner.set_message(format!("reading {}", a.output));
    let outputs = read(&a.output)?;
    spinner.finish_and_clear();
    let output_id = a.output_id.clone().unwrap_or_else(|| a.input_id.clone());
    let v = Verification::compare_by(&inputs, &outputs, &a.input_id, &output_id);
    println!("IDs: input {}, output {output_id}", a.input_id);
    println!("| {:<20} | {:>10} |", "verify", "count");
    println!("|{:-<22}|{:->12}|", "", "");
    for (k, n) in [
        ("input records", v.inputs as u64),
        ("unique input IDs", v.unique_ids as u64),
        ("output records", v.outputs as u64),
        ("duplicates", v.duplicates),
        ("missing IDs", v.missing.len() as u64),
        ("unexpected IDs", v.unexpected.len() as u64),
    ] {
        println!("| {k:<20} | {n:>10} |");
    }
    if v.is_exact() {
        println!("OK: every input ID is in the output exactly once");
        return Ok(ExitCode::SUCCESS);
    }
    let mut duplicated: Vec<(String, u64)> = count_by(&outputs, &output_id)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    duplicated.sort();
    // (partition:offset places: where to start reading the app's logs.)
    for (id, n) in duplicated.iter().take(a.show) {
        println!(
            "duplicate: {id} appears {n} times in {} at {} (input at {})",
            a.output,
            offsets_of(&outputs, &output_id, id),
            offsets_of(&inputs, &a.input_id, id)
        );
    }
    for id in v.missing.iter().take(a.show) {
        println!(
            "missing: {id} (in {} at {}) is not in {}",
            a.input,
            offsets_of(&inputs, &a.input_id, id),
            a.output
        );
    }
    for id in v.unexpected.iter().take(a.show) {
        println!(
            "unexpected: {id} (in {} at {}) is not in {}",
            a.output,
            offsets_of(&outputs, &output_id, id),
            a.input
        );
    }
    println!(
        "FAILED: {} duplicates, {} missing, {} unexpected",
        v.duplicates,
        v.missing.len(),
        v.unexpected.len()
    );
    Ok(ExitCode::FAILURE)
}

/// How long `verify` reads a topic at most before it reports it could not reach the end.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The cluster's metadata, or an error saying how to reach it.
fn metadata(base: &ClientConfig) -> anyhow::Result<rdkafka::metadata::Metadata> {
    let client: BaseConsumer = base.create()?;
    let bs = base.get("bootstrap.servers").unwrap_or_default();
    let md = client.fetch_metadata(None, Duration::from_secs(10));
    exactly_kafka::serve_events(&client);
    md.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach Kafka at {bs}: {e}; start it (scripts/broker.sh up), or pass --bootstrap, \
             or --config with the app's config file (its [kafka] table: TLS, SASL), or --kafka KEY=VALUE"
        )
    })
}

/// Partition counts of `topics`, or an error naming the first missing one.
fn existing_topics(base: &ClientConfig, topics: &[&str]) -> anyhow::Result<Vec<usize>> {
    let md = metadata(base)?;
    let bs = base.get("bootstrap.servers").unwrap_or_default();
    topics
        .iter()
        .map(|t| {
            md.topics()
                .iter()
                .find(|m| m.name() == *t && !m.partitions().is_empty())
                .map(|m| m.partitions().len())
                .ok_or_else(|| anyhow::anyhow!("topic `{t}` does not exist at {bs}"))
        })
        .collect()
}

/// Options of `exactly inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The app's state dir (its `state_dir`).
    #[arg(long)]
    state_dir: PathBuf,
    /// Application id (default: every app found in the state dir).
    #[arg(long)]
    app_id: Option<String>,
    /// Look this message ID up in every task.
    #[arg(long)]
    id: Option<String>,
}

/// Lists the task stores under a state dir: entries, bytes, checkpoint; optionally looks an ID
/// up. The app must be stopped (RocksDB allows one process per store).
pub fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let apps: Vec<String> = match &a.app_id {
        Some(app) => vec![app.clone()],
        None => subdirs(&a.state_dir)?,
    };
    anyhow::ensure!(
        !apps.is_empty(),
        "no app directories in {}",
        a.state_dir.display()
    );
    let shared = SharedRocksResources::new(16 << 20, 16 << 20);
    let mut found_any = false;
    println!(
        "| {:<40} | {:>10} | {:>12} | {:<40} |{}",
        "task",
        "entries",
        "bytes",
        "checkpoint (changelog next offset)",
        if a.id.is_some() { " id" } else { "" }
    );
    for app in apps {
        for task in subdirs(&a.state_dir.join(&app))? {
            let Some((topic, partition)) = task
                .rsplit_once('-')
                .and_then(|(t, p)| Some((t.to_owned(), p.parse::<i32>().ok()?)))
            else {
                println!("| {task:<40} | not a task directory (expected <topic>-<partition>)");
                continue;
            };
            let dir = task_dir(&a.state_dir, &app, &topic, partition);
            let identity = StoreIdentity::new(changelog_topic(&app, &topic), partition);
            let store = match RocksDedupStore::open(&dir, &shared, &identity) {
                Ok(s) => s,
                Err(e) => {
                    println!("| {:<40} | cannot open: {e}", format!("{app}/{task}"));
                    continue;
                }
            };
            let stats = store.stats();
            let checkpoint = match store.checkpoint() {
                Ok(Some(cp)) => format!("{}[{}] @ {}", cp.topic, cp.partition, cp.next_offset),
                Ok(None) => "none (restores from the start)".to_owned(),
                Err(e) => format!("unreadable: {e}"),
            };
            let lookup = match &a.id {
                Some(id) => match store.get(&exactly_core::IdKey::of(id.as_bytes())) {
                    Ok(Some(e)) => {
                        found_any = true;
                        format!(
                            " seen (first_seen_ms {}, source offset {})",
                            e.first_seen_ms, e.source_offset
                        )
                    }
                    Ok(None) => " not seen".to_owned(),
                    Err(e) => format!(" error: {e}"),
                },
                None => String::new(),
            };
            println!(
                "| {:<40} | {:>10} | {:>12} | {checkpoint:<40} |{lookup}",
                format!("{app}/{task}"),
                stats.entries,
                stats.bytes
            );
        }
    }
    if let Some(id) = &a.id {
        println!(
            "{id}: {}",
            if found_any {
                "seen"
            } else {
                "not seen in any task"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn subdirs(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?
    {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Options of `exactly topics`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TopicsArgs {
    #[command(subcommand)]
    action: Option<TopicsAction>,
    /// Application id (default: the config file's).
    #[arg(long)]
    app_id: Option<String>,
    /// Input topics of the app (repeatable; default: the config file's).
    #[arg(long = "input")]
    inputs: Vec<String>,
    /// Create missing internal topics (changelogs, dead-letter topic) and check existing ones.
    #[arg(long)]
    create: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `exactly topics` subcommands.
#[derive(clap::Subcommand, Debug)]
enum TopicsAction {
    /// Creates an app's own topics (inputs, outputs) that do not exist yet, with the config's
    /// replication factor; leaves existing ones alone (an existing topic with another
    /// partition count is an error). The app creates its internal topics itself.
    Create(CreateTopicsArgs),
}

/// Options of `exactly topics create`.
#[derive(clap::Args, Debug)]
struct CreateTopicsArgs {
    /// The topics to create.
    #[arg(required = true, value_name = "TOPIC")]
    topics: Vec<String>,
    /// Partitions of each topic (an input's count caps the app's parallelism).
    #[arg(long)]
    partitions: i32,
    /// Replicas of each partition (default: the config file's `replication_factor`, else 1;
    /// -1 for the broker's default).
    #[arg(long)]
    replication_factor: Option<i32>,
    /// A topic config property, `key=value` (repeatable), e.g. `retention.ms=604800000`.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    topic_config: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn create_topics(a: CreateTopicsArgs) -> anyhow::Result<ExitCode> {
    let mut config = a.cluster.runtime_config(Some("exactly-topics"))?;
    if let Some(n) = a.replication_factor {
        anyhow::ensure!(
            n > 0 || n == -1,
            "--replication-factor {n}: set it to a positive number of replicas, or -1 for the broker's default"
        );
        config.replication_factor = n;
    }
    let properties = a
        .topic_config
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--topic-config expects KEY=VALUE, got `{kv}`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    metadata(&config.client_config("exactly-topics"))?;
    let done = exactly_kafka::topics::create_topics(&config, &a.topics, a.partitions, &properties)?;
    for (topic, what) in done {
        match what {
            Created::Created => println!("created {topic} ({} partitions)", a.partitions),
            Created::Existed => println!("{topic} exists ({} partitions)", a.partitions),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Describes (and with `--create` creates) an app's internal topics; `topics create` creates
/// its own topics.
pub fn topics(a: TopicsArgs) -> anyhow::Result<ExitCode> {
    if let Some(TopicsAction::Create(c)) = a.action {
        return create_topics(c);
    }
    let mut config = a.cluster.runtime_config(a.app_id.as_deref())?;
    if !a.inputs.is_empty() {
        config.inputs = a.inputs.clone();
    }
    anyhow::ensure!(
        !config.inputs.is_empty(),
        "no input topics: pass --input (repeatable), or --config with the app's config file"
    );
    if a.cluster.config.is_none() {
        // Without the app's config, assume the default dead-letter topic.
        config.task.dead_letter_topic = Some(default_dead_letter_topic(&config.app_id));
    }
    if a.create {
        exactly_kafka::topics::ensure_topics(&config)?;
    }
    let mut internal = all_changelogs(&config);
    if config.dedup_scope == DedupScope::Global {
        internal.extend(
            config
                .inputs
                .iter()
                .map(|i| repartition_topic(&config.app_id, i)),
        );
    }
    internal.extend(config.task.dead_letter_topic.clone());
    let base = config.client_config("exactly-topics");
    let admin: AdminClient<DefaultClientContext> = base.create()?;
    let md = metadata(&base)?;
    println!(
        "| {:<50} | {:>10} | {:<16} | {:>14} |",
        "topic", "partitions", "cleanup.policy", "retention.ms"
    );
    let mut missing = 0;
    for t in config.inputs.iter().chain(internal.iter()) {
        let partitions = md
            .topics()
            .iter()
            .find(|m| m.name() == t.as_str())
            .map_or(0, |m| m.partitions().len());
        if partitions == 0 {
            missing += usize::from(internal.contains(t));
            println!("| {t:<50} | {:>10} | {:<16} | {:>14} |", "missing", "", "");
            continue;
        }
        let (policy, retention) = topic_config(&admin, t);
        println!("| {t:<50} | {partitions:>10} | {policy:<16} | {retention:>14} |");
    }
    if missing > 0 && !a.create {
        println!("{missing} internal topic(s) missing: run again with --create (the app also creates them at start)");
    }
    Ok(ExitCode::SUCCESS)
}

fn topic_config(admin: &AdminClient<DefaultClientContext>, topic: &str) -> (String, String) {
    let spec = [ResourceSpecifier::Topic(topic)];
    let res = futures_executor::block_on(admin.describe_configs(&spec, &AdminOptions::new()));
    let Ok(results) = res else {
        return ("?".into(), "?".into());
    };
    let Some(Ok(resource)) = results.into_iter().next() else {
        return ("?".into(), "?".into());
    };
    let get = |name: &str| {
        resource
            .get(name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "-".into())
    };
    (get("cleanup.policy"), get("retention.ms"))
}
