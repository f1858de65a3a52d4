//! Helpers for tests against a real Kafka-compatible broker (feature `broker`).
//!
//! Tests call [`require_broker`] first: outside CI a missing broker skips the test with a
//! printed reason; under `CI=true` it fails the test loudly.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `KAFKA_BOOTSTRAP`, or the local test broker `127.0.0.1:29092`.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:29092".to_owned())
}

/// Returns the bootstrap servers if a broker answers. Otherwise: under `CI=true` panics with
/// how to start one; elsewhere prints why the test is skipped and returns `None`.
pub fn require_broker(test: &str) -> Option<String> {
    let bs = bootstrap();
    if reachable(&bs, Duration::from_secs(10)) {
        return Some(bs);
    }
    let how = "start it with `scripts/broker.sh up` or point KAFKA_BOOTSTRAP at a cluster";
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: no Kafka broker at {bs} and CI=true: this test must not be skipped; {how}");
    }
    eprintln!("SKIPPED {test}: no Kafka broker at {bs} ({how})");
    // The test runner reports the test as passed; `scripts/test.sh` counts these.
    // `TEST_SKIP_LOG`, not `EXACTLY_*`: that namespace configures the apps under test.
    if let Some(path) = std::env::var_os("TEST_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: no Kafka broker");
        }
    }
    None
}

/// Whether a cluster at `bs` answers a metadata request within `timeout`.
pub fn reachable(bs: &str, timeout: Duration) -> bool {
    let client: Result<BaseConsumer, _> = ClientConfig::new().set("bootstrap.servers", bs).create();
    client.is_ok_and(|c| c.fetch_metadata(None, timeout).is_ok())
}

/// A topic name unique to this process and call.
pub fn unique_name(prefix: &str) -> String {
    crate::unique(prefix, '-')
}

fn admin(bs: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bs)
        .create()
        .expect("admin client")
}

/// A topic to create: name, partition count, topic configs.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// Creates topics (panics on failure: this is test set-up).
pub fn create_topics(bs: &str, topics: &[(&str, i32)]) {
    let plain: Vec<TopicSpec<'_>> = topics.iter().map(|(t, n)| (*t, *n, &[][..])).collect();
    create_topics_with(bs, &plain);
}

/// [`create_topics`] with topic configs (`cleanup.policy`, `retention.ms`, ...).
pub fn create_topics_with(bs: &str, topics: &[TopicSpec<'_>]) {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, n, configs)| {
            configs.iter().fold(
                NewTopic::new(t, *n, TopicReplication::Fixed(1)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let res = futures_executor::block_on(admin(bs).create_topics(&new, &AdminOptions::new()))
        .expect("create_topics request");
    for r in res {
        if let Err((name, code)) = r {
            panic!("creating topic {name}: {code}");
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .create()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    for (t, n, _) in topics {
        loop {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5));
            if md.is_ok_and(|m| {
                m.topics()
                    .first()
                    .is_some_and(|mt| mt.partitions().len() as i32 == *n)
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "topic {t} did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The names of the cluster's topics (a metadata request for all of them, which creates none).
pub fn list_topics(bs: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("listing the topics of {bs}: {e}"));
    md.topics().iter().map(|t| t.name().to_owned()).collect()
}

/// Deletes topics, ignoring errors (clean-up: the test broker keeps all data in memory).
pub fn delete_topics(bs: &str, topics: &[&str]) {
    let _ = futures_executor::block_on(admin(bs).delete_topics(topics, &AdminOptions::new()));
}

/// A record to produce in tests.
#[derive(Debug, Clone)]
pub struct TestMessage {
    /// Message ID (header `message-id`), if any.
    pub id: Option<String>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Timestamp (ms since the Unix epoch); `None`: the producer's clock.
    pub timestamp: Option<i64>,
}

/// Produces messages with an idempotent producer and waits for all acks.
pub fn produce(bs: &str, topic: &str, messages: &[TestMessage]) {
    produce_to(bs, topic, None, messages);
}

/// [`produce`] into one partition (`Some`), or by the key as usual (`None`).
pub fn produce_to(bs: &str, topic: &str, partition: Option<i32>, messages: &[TestMessage]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .expect("producer");
    send_all(&producer, topic, partition, messages);
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Produces `messages` to `topic` in one Kafka transaction, then commits it (`commit`) or
/// aborts it: an aborted transaction's records stay in the log, marked aborted, and a
/// read_committed reader skips them.
pub fn produce_in_transaction(bs: &str, topic: &str, messages: &[TestMessage], commit: bool) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("transactional.id", unique_name("test-txn"))
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer");
    let t = Duration::from_secs(30);
    producer.init_transactions(t).expect("init_transactions");
    producer.begin_transaction().expect("begin_transaction");
    send_all(&producer, topic, None, messages);
    producer.flush(t).expect("flush");
    if commit {
        producer.commit_transaction(t).expect("commit_transaction");
    } else {
        producer.abort_transaction(t).expect("abort_transaction");
    }
}

fn send_all(
    producer: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    messages: &[TestMessage],
) {
    for m in messages {
        let mut headers = OwnedHeaders::new();
        if let Some(id) = &m.id {
            headers = headers.insert(Header {
                key: "message-id",
                value: Some(id.as_bytes()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .payload(m.value.as_slice())
            .headers(headers);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(ts) = m.timestamp {
            rec = rec.timestamp(ts);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: HashMap<String, Vec<u8>>,
    /// Timestamp (ms).
    pub timestamp: Option<i64>,
}

impl ReadRecord {
    /// The `message-id` header as a string.
    pub fn id(&self) -> Option<String> {
        self.headers
            .get("message-id")
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every record of `topic` a read_committed consumer sees, up to the current end
/// (last stable offset) of each partition.
pub fn read_committed(bs: &str, topic: &str) -> Vec<ReadRecord> {
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", bs);
    read_committed_with(&base, topic, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"))
}

/// [`read_committed`] with the clients' base config `base` (bootstrap, TLS, SASL, ...): an
/// error says what failed, e.g. when the end is not reached within `timeout` (a transaction
/// still open holds a read_committed reader before it).
pub fn read_committed_with(
    base: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, String> {
    read_all(base, topic, "read_committed", timeout)
}

/// The message IDs (as [`IdKey`](exactly_core::IdKey)s) that dedup changelog records hold,
/// with each record's partition: one record holds the IDs of one transaction of a task
/// (`exactly_core::changelog`). Panics on a record that does not decode.
pub fn changelog_ids(records: &[ReadRecord]) -> Vec<(i32, exactly_core::IdKey)> {
    let mut ids = Vec::new();
    for r in records {
        let Some(value) = r.value.as_deref() else {
            continue;
        };
        exactly_core::changelog::decode_record(
            r.key.as_deref().unwrap_or_default(),
            value,
            |id, _| ids.push((r.partition, id)),
        )
        .unwrap_or_else(|e| panic!("changelog record {}@{}: {e}", r.partition, r.offset));
    }
    ids
}

/// Reads every record of `topic`, of aborted and open transactions too, up to the current
/// high watermark of each partition (to see what a read_committed reader does not).
pub fn read_uncommitted(bs: &str, topic: &str) -> Vec<ReadRecord> {
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", bs);
    read_all(&base, topic, "read_uncommitted", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every record of `topic` a consumer with `isolation` (`isolation.level`) sees, up to the end
/// it reports for each partition when the read starts.
fn read_all(
    base: &ClientConfig,
    topic: &str,
    isolation: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, String> {
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", unique_name("reader"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .set("receive.message.max.bytes", "1000000000")
        .create()
        .map_err(|e| format!("creating a reader of {topic}: {e}"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("reading the metadata of {topic}: {e}"))?;
    let partitions = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (_, end) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| format!("reading the end offset of {topic}[{p}]: {e}"))?;
        ends.insert(p, end);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| format!("{e}"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| format!("assigning {topic}: {e}"))?;
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let pos = consumer.position().map_err(|e| format!("position: {e}"))?;
        let done = (0..partitions).all(|p| {
            let end = ends[&p];
            end == 0
                || pos
                    .find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .is_some_and(|o| o >= end)
        });
        if done {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "reading {topic} did not reach its end offsets {ends:?} within {timeout:?} \
                 (a transaction still open holds read_committed readers back)"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hh in h.iter() {
                        headers.insert(hh.key.to_owned(), hh.value.unwrap_or_default().to_vec());
                    }
                }
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp: m.timestamp().to_millis(),
                });
            }
            Some(Err(e)) => eprintln!("{isolation} {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// The group's committed offsets of a topic (read_committed), by partition; a partition with
/// no committed offset is absent.
pub fn committed_offsets(bs: &str, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .expect("client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    (0..partitions)
        .filter_map(|p| {
            c.find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
                .map(|o| (p, o))
        })
        .collect()
}

/// Log start offsets (low watermarks) of every partition of `topic`: where retention or
/// DeleteRecords moved them.
pub fn start_offsets(bs: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    watermark_of(bs, topic, partitions, |(low, _)| low)
}

/// High watermarks of every partition of `topic`.
pub fn end_offsets(bs: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    watermark_of(bs, topic, partitions, |(_, high)| high)
}

fn watermark_of(
    bs: &str,
    topic: &str,
    partitions: i32,
    pick: fn((i64, i64)) -> i64,
) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("client");
    (0..partitions)
        .map(|p| {
            (
                p,
                pick(
                    consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .expect("watermarks"),
                ),
            )
        })
        .collect()
}

/// Whether a transaction is open on some partition of `topic`: its last stable offset (what a
/// read_committed consumer can reach) is behind its high watermark.
pub fn has_open_transaction(bs: &str, topic: &str, partitions: i32) -> bool {
    let stable: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("isolation.level", "read_committed")
        .create()
        .expect("client");
    let high = end_offsets(bs, topic, partitions);
    (0..partitions).any(|p| {
        let (_, lso) = stable
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        lso < high[&p]
    })
}

/// The config of `topic` as the broker describes it (`cleanup.policy`, `retention.ms`, ...).
pub fn topic_config(bs: &str, topic: &str) -> HashMap<String, String> {
    use rdkafka::admin::ResourceSpecifier;
    let res = futures_executor::block_on(admin(bs).describe_configs(
        &[ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("describe_configs");
    let resource = res
        .into_iter()
        .next()
        .expect("one resource")
        .unwrap_or_else(|e| panic!("describing {topic}: {e}"));
    resource
        .entries
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect()
}

/// A noida-db broker of one test's own (its own port and data dir), started and stopped with
/// `scripts/broker.sh`: for tests that stop and restart the broker, which the shared one
/// cannot do (other tests use it meanwhile). Stopped on drop (gracefully: a SIGKILLed
/// noida-db loses its data).
pub struct PrivateBroker {
    /// Its bootstrap address.
    pub bs: String,
    port: u16,
    data_dir: std::path::PathBuf,
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl PrivateBroker {
    /// Starts one on a free port. `None` (the test is skipped, with a printed reason) when
    /// `KAFKA_BOOTSTRAP` names another cluster (its brokers cannot be restarted from here),
    /// or, outside CI, when the broker cannot be started; under `CI=true` that fails loudly.
    pub fn start(test: &str, data_dir: &std::path::Path) -> Option<Self> {
        if let Ok(bs) = std::env::var("KAFKA_BOOTSTRAP") {
            if !bs.starts_with("127.0.0.1:") && !bs.starts_with("localhost:") {
                eprintln!("SKIPPED {test}: KAFKA_BOOTSTRAP={bs} names another cluster; this test restarts a local noida-db broker of its own");
                return None;
            }
        }
        let port = crate::chaos::free_port();
        let b = Self {
            bs: format!("127.0.0.1:{port}"),
            port,
            data_dir: data_dir.to_owned(),
        };
        if let Err(e) = b.script("up") {
            if ci() {
                panic!("{test}: could not start a private test broker and CI=true: {e}");
            }
            eprintln!("SKIPPED {test}: could not start a private test broker: {e}");
            return None;
        }
        Some(b)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Stops it gracefully and waits until the server process exited (its data is kept).
    pub fn down(&self) {
        self.script("down").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts it again on the same port and data dir; returns once it accepts connections.
    pub fn up(&self) {
        self.script("up").unwrap_or_else(|e| panic!("{e}"));
    }

    fn script(&self, command: &str) -> Result<(), String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/broker.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(command)
            .env("BROKER_PORT", self.port.to_string())
            .env("BROKER_DATA_DIR", &self.data_dir)
            .env_remove("KAFKA_BOOTSTRAP")
            .output()
            .map_err(|e| format!("cannot run {script}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`scripts/broker.sh {command}` (port {}, data dir {}) failed with {}: {}",
                self.port,
                self.data_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Err(e) = self.script("down") {
            eprintln!("{e}");
        }
    }
}
