//! The worker side of a pipeline run: each mode runs in its own child process (the pipeline
//! binary re-executed with the hidden `worker` subcommand), so its peak RSS and CPU time are
//! its own.

use crate::fixtures::{bench_identity, now_ms};
use crate::ids::{absent_id, stored_id};
use crate::procfs;
use anyhow::Context as _;
use exactly::processors::Forward;
use exactly::{App, Guarantee};
use exactly_core::{DedupStore, IdKey, SeenEntry, StoreBatch};
use exactly_state::{RocksDedupStore, SharedRocksResources};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a worker process runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerMode {
    /// (a) rdkafka consume→produce copy, at least once, no dedup: the ceiling.
    Raw,
    /// (b) exactly's `Forward` processor, at-least-once mode.
    AtLeastOnce,
    /// (c) exactly's `Forward` processor, exactly-once mode (Kafka transactions).
    ExactlyOnce,
    /// Fill RocksDB stores directly and report the process's memory.
    StoreFill,
}

impl WorkerMode {
    /// Name in reports and topic names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw-copy",
            Self::AtLeastOnce => "at-least-once",
            Self::ExactlyOnce => "exactly-once",
            Self::StoreFill => "store-fill",
        }
    }
}

/// How the raw copy waits for its outputs to be acknowledged before committing offsets.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawFlush {
    /// Poll delivery reports in 1 ms slices until nothing is in flight.
    Drain,
    /// `Producer::flush` (rdkafka 0.39 polls in 100 ms slices: at least 100 ms per commit).
    Rdkafka,
}

/// Arguments of a worker process (set by the parent, not by hand).
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// What to run.
    #[arg(long, value_enum)]
    pub mode: WorkerMode,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:29092")]
    pub bootstrap: String,
    /// Input topic.
    #[arg(long, default_value = "")]
    pub input: String,
    /// Output topic.
    #[arg(long, default_value = "")]
    pub output: String,
    /// Consumer group / app id.
    #[arg(long, default_value = "")]
    pub group: String,
    /// Instance id (exactly's transactional id part).
    #[arg(long, default_value = "0")]
    pub instance_id: String,
    /// State directory.
    #[arg(long, default_value = "state")]
    pub state_dir: PathBuf,
    /// Commit interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Where exactly serves /metrics.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where the worker writes its result (JSON) when it ends.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
    /// Records per transaction / commit at most (exactly's `max_batch_records`; the raw copy
    /// uses the same bound).
    #[arg(long, default_value_t = 2000)]
    pub max_batch_records: usize,
    /// librdkafka property for every client, `key=value` (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
    /// raw: how to wait for outputs before committing offsets.
    #[arg(long, value_enum, default_value_t = RawFlush::Drain)]
    pub raw_flush: RawFlush,
    /// store-fill: IDs to store.
    #[arg(long, default_value_t = 1_000_000)]
    pub ids: u64,
    /// store-fill: stores (one per partition, like tasks).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

/// What the raw copy reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawResult {
    /// Records copied.
    pub records: u64,
    /// Every commit (flush, then offset commit).
    pub commits: Vec<RawCommit>,
}

/// One commit of the raw copy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RawCommit {
    /// When it ended, Unix milliseconds.
    pub ended_unix_ms: f64,
    /// How long it took, milliseconds.
    pub ms: f64,
}

/// What a store fill reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreFillResult {
    /// IDs stored (over all stores).
    pub ids: u64,
    /// Stores (partitions) they were spread over.
    pub stores: i32,
    /// Resident set size before the first store was opened, bytes.
    pub rss_before_bytes: u64,
    /// Peak resident set size (`VmHWM`) after filling and a lookup pass, bytes.
    pub peak_rss_bytes: u64,
    /// Resident set size at the end, bytes.
    pub rss_end_bytes: u64,
    /// Disk usage of the stores after a flush, bytes.
    pub store_bytes: u64,
    /// IDs inserted per second (batches of 2000 per store, as commits apply them).
    pub insert_per_s: f64,
    /// Batched lookups per second during the lookup pass (half hits, half misses).
    pub lookups_per_s: f64,
}

/// Set by SIGTERM / SIGINT in the raw worker.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Runs a worker until it is told to stop (SIGTERM) or, for `store-fill`, until done.
pub fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    match args.mode {
        WorkerMode::Raw => {
            let result = raw_copy(args)?;
            write_result(args, &result)
        }
        WorkerMode::AtLeastOnce | WorkerMode::ExactlyOnce => run_exactly(args),
        WorkerMode::StoreFill => {
            let result = store_fill(args)?;
            write_result(args, &result)
        }
    }
}

fn write_result<T: Serialize>(args: &WorkerArgs, result: &T) -> anyhow::Result<()> {
    if let Some(path) = &args.result_file {
        std::fs::write(path, serde_json::to_vec(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// (b) and (c): what `dedup-forward` runs, in this process.
fn run_exactly(args: &WorkerArgs) -> anyhow::Result<()> {
    exactly::logging::init();
    let guarantee = if args.mode == WorkerMode::ExactlyOnce {
        Guarantee::ExactlyOnce
    } else {
        Guarantee::AtLeastOnce
    };
    let mut app = App::new(args.group.clone())
        .bootstrap(args.bootstrap.clone())
        .instance_id(args.instance_id.clone())
        .state_dir(args.state_dir.clone())
        .commit_interval(Duration::from_millis(args.commit_interval_ms))
        .guarantee(guarantee)
        .input(args.input.clone())
        .output(args.output.clone());
    if let Some(addr) = args.metrics_addr {
        app = app.metrics_addr(addr);
    }
    for (k, v) in kafka_properties(args)? {
        app = app.kafka(k, v);
    }
    app.config_mut().max_batch_records = args.max_batch_records;
    let output = args.output.clone();
    app.run(move |_| Forward::to(output.clone()))?;
    Ok(())
}

fn kafka_properties(args: &WorkerArgs) -> anyhow::Result<Vec<(String, String)>> {
    args.kafka
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("--kafka expects KEY=VALUE, got `{kv}`"))
        })
        .collect()
}

/// (a): copies input to output with a plain consumer and producer, committing offsets after
/// its outputs are acknowledged (at least once, no dedup). Same producer settings as
/// exactly's stream threads and the same commit policy (every commit interval or every
/// `max_batch_records` records, whichever comes first), so the difference to (b) and (c) is
/// what exactly adds.
fn raw_copy(args: &WorkerArgs) -> anyhow::Result<RawResult> {
    let handler: extern "C" fn(libc::c_int) = request_stop;
    // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
    let mut common = ClientConfig::new();
    common.set("bootstrap.servers", &args.bootstrap);
    for (k, v) in kafka_properties(args)? {
        common.set(k, v);
    }
    let consumer: BaseConsumer = common
        .clone()
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("receive.message.max.bytes", "1000000000")
        .create()
        .context("creating the raw consumer")?;
    let producer: BaseProducer = common
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the raw producer")?;
    consumer
        .subscribe(&[args.input.as_str()])
        .context("subscribing")?;
    let interval = Duration::from_millis(args.commit_interval_ms);
    let mut result = RawResult::default();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut stopping = false;
    let mut uncommitted = 0usize;
    loop {
        if STOP.load(Ordering::SeqCst) {
            stopping = true;
        }
        let mut wait = Duration::from_millis(20);
        while !stopping && uncommitted < args.max_batch_records {
            let Some(m) = consumer.poll(wait) else { break };
            wait = Duration::ZERO;
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("raw copy: consumer error: {e} (retrying)");
                    continue;
                }
            };
            uncommitted += 1;
            let headers: Option<OwnedHeaders> =
                m.headers().map(rdkafka::message::BorrowedHeaders::detach);
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&args.output);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            if let Some(h) = headers {
                record = record.headers(h);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e).context("raw copy: producing"),
                }
            }
            result.records += 1;
            pending.insert(m.partition(), m.offset() + 1);
        }
        producer.poll(Duration::ZERO);
        // Exactly's commit policy: every commit interval or every `max_batch_records`
        // records, whichever comes first.
        let due = last_commit.elapsed() >= interval || uncommitted >= args.max_batch_records;
        if !pending.is_empty() && (stopping || due) {
            let started = Instant::now();
            match args.raw_flush {
                RawFlush::Rdkafka => producer
                    .flush(Duration::from_secs(30))
                    .context("raw copy: flushing")?,
                RawFlush::Drain => {
                    let deadline = started + Duration::from_secs(30);
                    while producer.in_flight_count() > 0 {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "raw copy: outputs not acknowledged within 30 s"
                        );
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &pending {
                tpl.add_partition_offset(&args.input, *p, Offset::Offset(*o))?;
            }
            consumer
                .commit(&tpl, CommitMode::Sync)
                .context("raw copy: committing offsets")?;
            result.commits.push(RawCommit {
                ended_unix_ms: now_ms() as f64,
                ms: started.elapsed().as_secs_f64() * 1e3,
            });
            pending.clear();
            uncommitted = 0;
            last_commit = Instant::now();
        } else if pending.is_empty() {
            last_commit = Instant::now();
        }
        if stopping {
            return Ok(result);
        }
    }
}

/// Fills `partitions` RocksDB stores (one shared block cache and write-buffer budget, the
/// runtime's defaults) with `ids` IDs in batches of 2000 per store, then looks up as many IDs
/// (half stored, half not) in batches of 500, and reports the process's memory.
fn store_fill(args: &WorkerArgs) -> anyhow::Result<StoreFillResult> {
    const APPLY_BATCH: u64 = 2000;
    const LOOKUP_BATCH: u64 = 500;
    let pid = std::process::id();
    let rss_before_bytes = procfs::rss_bytes(pid).unwrap_or(0);
    let shared = SharedRocksResources::default();
    let parts = args.partitions.max(1);
    let mut stores = (0..parts)
        .map(|p| {
            let dir = args.state_dir.join(format!("bench-in-{p}"));
            RocksDedupStore::open(&dir, &shared, &bench_identity(p))
                .with_context(|| format!("opening {}", dir.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // ID n goes to store n % parts, like keys hashed to partitions.
    let first_seen_ms = now_ms();
    let started = Instant::now();
    let mut next = 0u64;
    let mut offsets = vec![0i64; parts as usize];
    while next < args.ids {
        let end = (next + APPLY_BATCH * parts as u64).min(args.ids);
        for (p, store) in stores.iter_mut().enumerate() {
            let entries: Vec<(IdKey, SeenEntry)> = (next..end)
                .filter(|n| n % parts as u64 == p as u64)
                .map(|n| {
                    (
                        IdKey::of(&stored_id(n)),
                        SeenEntry {
                            first_seen_ms,
                            source_offset: n as i64,
                        },
                    )
                })
                .collect();
            offsets[p] += entries.len() as i64;
            store.apply(&StoreBatch {
                entries,
                checkpoint: crate::fixtures::bench_checkpoint(p as i32, offsets[p]),
            })?;
        }
        next = end;
    }
    let insert_per_s = args.ids as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut found = Vec::new();
    let mut looked_up = 0u64;
    let lookups = args.ids.max(LOOKUP_BATCH);
    let mut n = 0u64;
    while looked_up < lookups {
        let ids: Vec<[u8; 32]> = (0..LOOKUP_BATCH)
            .map(|i| {
                let k = crate::ids::splitmix64(n + i) % args.ids.max(1);
                if i % 2 == 0 {
                    stored_id(k)
                } else {
                    absent_id(k)
                }
            })
            .collect();
        let keys: Vec<IdKey> = ids.iter().map(|id| IdKey::of(id)).collect();
        let store = &stores[(n / LOOKUP_BATCH) as usize % stores.len()];
        store.get_many(&keys, &mut found)?;
        looked_up += LOOKUP_BATCH;
        n += LOOKUP_BATCH;
    }
    let lookups_per_s = looked_up as f64 / started.elapsed().as_secs_f64();
    for store in &mut stores {
        store.flush()?;
    }
    let peak_rss_bytes = procfs::peak_rss_bytes(pid).unwrap_or(0);
    let rss_end_bytes = procfs::rss_bytes(pid).unwrap_or(0);
    let store_bytes = procfs::dir_bytes(&args.state_dir);
    drop(stores);
    Ok(StoreFillResult {
        ids: args.ids,
        stores: parts,
        rss_before_bytes,
        peak_rss_bytes,
        rss_end_bytes,
        store_bytes,
        insert_per_s,
        lookups_per_s,
    })
}
