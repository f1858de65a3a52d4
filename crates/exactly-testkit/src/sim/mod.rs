//! A simulated Kafka cluster with Apache Kafka's rules, in memory, deterministic.
//!
//! - **Logs** (`log`): offsets never change; transactional records are pending until their
//!   transaction's marker; the last stable offset (LSO) stops read_committed readers at the
//!   oldest open transaction; read_committed reads are correct from any offset; compaction
//!   and retention remove records, never offsets.
//! - **Transactions** (`txn`): producer ids and epochs per `transactional.id`;
//!   `init_transactions` aborts the open transaction and fences older producers; the
//!   coordinator aborts a transaction that outlives its timeout and bumps the epoch
//!   (librdkafka then reports the producer as fenced); transactional offsets stay pending until
//!   the commit.
//! - **Groups** (`group`): members with generations, eager and cooperative rebalances whose
//!   events reach members at their next heartbeat, revoked vs lost partitions, static
//!   membership (`group.instance.id` replaces the old member and fences it), session timeouts
//!   of members whose process is paused or dead, KIP-447: a `TxnOffsetCommit` of a member that
//!   left or was fenced is rejected, and a stable `committed()` fails retriably while a
//!   transaction holds pending offsets for the partition.
//! - **Faults** per request: retriable, abortable, fatal, or a commit whose outcome is unknown
//!   (applied, the response lost).
//!
//! [`SimClients`] is one stream thread's view of it: the engine's [`StreamClients`].
//!
//! [`StreamClients`]: exactly_core::StreamClients

mod clients;
mod group;
pub(crate) mod log;
mod process;
mod stores;
mod txn;

pub use clients::{SimBatch, SimClientConfig, SimClients};
pub use group::{GroupMetadata, GroupProtocol, MemberId};
pub use log::{SimRecord, TopicConfig};
pub use process::{KillPoint, SimProcess};
pub use stores::{DiskKvStore, DiskStore, SimDisk, SimStores};

use exactly_core::Clock;
use log::{PartitionLog, Status};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Errors the simulated broker returns, as librdkafka would classify them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The producer's epoch is stale (another `init_transactions`, or the coordinator timed
    /// the transaction out and bumped the epoch).
    #[error("producer fenced: transactional id {0} has a newer epoch")]
    Fenced(String),
    /// A retriable error: call again.
    #[error("retriable broker error on {0}")]
    Retriable(&'static str),
    /// The transaction must be aborted.
    #[error("{0}: the transaction must be aborted")]
    Abortable(String),
    /// A fatal error.
    #[error("fatal broker error on {0}")]
    Fatal(&'static str),
    /// The group does not know this member or its generation (UNKNOWN_MEMBER_ID,
    /// ILLEGAL_GENERATION).
    #[error("stale group member: {0}")]
    StaleMember(String),
    /// A newer member took this member's `group.instance.id` (FENCED_INSTANCE_ID).
    #[error("fenced instance: {0}")]
    FencedInstance(String),
    /// The topic does not exist.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The broker refused a record for good (MESSAGE_TOO_LARGE, INVALID_RECORD).
    #[error("{0}")]
    Rejected(String),
    /// The producer's own state broke for good (OUT_OF_ORDER_SEQUENCE_NUMBER): only a new
    /// producer can go on.
    #[error("{0}")]
    ProducerFailed(String),
    /// No broker answers (an outage, a restart): the request timed out. Retriable.
    #[error("{0}: all brokers down (request timed out)")]
    Unreachable(&'static str),
}

/// The requests a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A send refused by the client at once (e.g. a record over `message.max.bytes`).
    Send,
    /// A produce request that fails at the broker: the failed delivery surfaces when the
    /// transaction commits, as in librdkafka.
    Produce,
    /// `send_offsets_to_transaction`.
    TxnOffsetCommit,
    /// `commit_transaction`.
    EndTxn,
    /// A committed-offsets read.
    OffsetFetch,
    /// A watermark query.
    ListOffsets,
    /// A DeleteRecords request (the purge of repartition records).
    DeleteRecords,
    /// `abort_transaction`. Any fault kind fails it with a fatal error of the producer's own
    /// idempotence state, as librdkafka's abort did after an output topic was deleted and
    /// created again under records in flight ("sequence desynchronization"): nothing was
    /// aborted, and the producer can do nothing more.
    AbortTxn,
    /// A resume of group-consumer partitions. Any fault kind drops it: the call succeeds and
    /// the partitions stay paused, as when librdkafka discards a resume op outdated by an op
    /// its main thread queued at the same moment (a rebalance's library pause; librdkafka
    /// issue #5591).
    Resume,
}

/// What a fault does to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fails retriably; nothing happened.
    Retriable,
    /// Fails; the open transaction must be aborted.
    Abortable,
    /// Fails fatally.
    Fatal,
    /// The request is applied but its response is lost: the caller sees a retriable error
    /// (for `commit_transaction`: the outcome is unknown until it is called again).
    ResponseLost,
}

/// A fault the next matching request will hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The request.
    pub request: Request,
    /// What happens to it.
    pub kind: FaultKind,
    /// Matching requests that pass before the one it hits.
    pub skip: u32,
}

impl Fault {
    /// A fault of `kind` on the next `request`.
    pub fn new(request: Request, kind: FaultKind) -> Self {
        Self {
            request,
            kind,
            skip: 0,
        }
    }

    /// The same fault on the request after the next `n` matching ones.
    pub fn after(self, n: u32) -> Self {
        Self { skip: n, ..self }
    }
}

/// Timing of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Members learn of rebalances and fences at their next heartbeat, every this often
    /// (0: at once).
    pub heartbeat_interval_ms: i64,
    /// A member whose process is paused or dead for this long is removed from its group.
    pub session_timeout_ms: i64,
    /// `transaction.timeout.ms` of every producer.
    pub transaction_timeout_ms: i64,
    /// Compaction keeps tombstones this long (`delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Records a producer holds while no broker answers (librdkafka's
    /// `queue.buffering.max.messages`): a send beyond waits for room.
    pub producer_queue_records: usize,
    /// Whether a send to a topic that does not exist creates it (with the cluster's default
    /// partition count), as a broker with `auto.create.topics.enable` does for a producer
    /// with `allow.auto.create.topics`. The runtime's producers turn it off: a send to a
    /// missing topic fails its delivery with UNKNOWN_TOPIC_OR_PARTITION.
    pub auto_create_topics: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 3_000,
            session_timeout_ms: 45_000,
            transaction_timeout_ms: 60_000,
            delete_retention_ms: 86_400_000,
            producer_queue_records: 100_000,
            auto_create_topics: true,
        }
    }
}

struct Topic {
    partitions: Vec<PartitionLog>,
    config: TopicConfig,
    /// Which creation of the topic this is (a topic deleted and created again is a new one).
    incarnation: u64,
}

/// The simulated cluster. Share it as [`SharedCluster`].
pub struct SimCluster {
    clock: Arc<dyn Clock>,
    config: SimConfig,
    topics: BTreeMap<String, Topic>,
    producers: HashMap<String, txn::TxnProducer>,
    next_producer_id: u64,
    next_txn: u64,
    /// Topics created so far (for [`Topic::incarnation`]).
    creations: u64,
    groups: BTreeMap<String, group::Group>,
    next_member: u64,
    faults: VecDeque<Fault>,
    default_partitions: i32,
    /// Until when (cluster time, ms) no broker answers.
    down_until_ms: i64,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("topics", &self.topics.keys().collect::<Vec<_>>())
            .field("faults", &self.faults)
            .finish()
    }
}

/// A cluster shared by the simulated clients and the test.
pub type SharedCluster = Arc<Mutex<SimCluster>>;

/// Locks a shared cluster (a panic while it was held is a test failure already).
pub fn lock(cluster: &SharedCluster) -> MutexGuard<'_, SimCluster> {
    cluster.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimCluster {
    /// An empty cluster on `clock`; auto-created topics get `default_partitions` partitions.
    pub fn new(clock: Arc<dyn Clock>, config: SimConfig, default_partitions: i32) -> Self {
        Self {
            clock,
            config,
            topics: BTreeMap::new(),
            producers: HashMap::new(),
            next_producer_id: 1,
            next_txn: 0,
            creations: 0,
            groups: BTreeMap::new(),
            next_member: 1,
            faults: VecDeque::new(),
            default_partitions: default_partitions.max(1),
            down_until_ms: 0,
        }
    }

    /// The cluster's timing.
    pub fn config(&self) -> SimConfig {
        self.config
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Creates a topic (no-op if it exists).
    pub fn create_topic(&mut self, topic: &str, partitions: i32, config: TopicConfig) {
        if !self.topics.contains_key(topic) {
            self.creations += 1;
            let topic_state = Topic {
                partitions: vec![PartitionLog::default(); partitions.max(1) as usize],
                config,
                incarnation: self.creations,
            };
            self.topics.insert(topic.to_owned(), topic_state);
        }
    }

    /// Deletes a topic with its records (`kafka-topics --delete`). Transactions that wrote to
    /// it still end (the coordinator skips the markers of deleted partitions), as on Apache
    /// Kafka.
    pub fn delete_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Which creation of `topic` exists now.
    pub(crate) fn incarnation(&self, topic: &str) -> Option<u64> {
        self.topics.get(topic).map(|t| t.incarnation)
    }

    /// Changes the config of an existing topic (`kafka-configs --alter`).
    pub fn alter_topic(&mut self, topic: &str, config: TopicConfig) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.config = config;
        }
    }

    /// Number of partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.topics.get(topic).map(|t| t.partitions.len() as i32)
    }

    /// Queues a fault for the next matching request.
    pub fn inject(&mut self, fault: Fault) {
        self.faults.push_back(fault);
    }

    /// Faults not hit yet.
    pub fn pending_faults(&self) -> usize {
        self.faults.len()
    }

    /// Drops every fault not yet hit.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// No broker answers for the next `ms` (a restart of the cluster, an outage): every
    /// request fails retriably as if timed out (committed offsets, watermarks, the
    /// transaction's offsets, commit and abort, `init_transactions`), polls return nothing and
    /// no group event. Sends are queued by the client and reach the log (uncommitted records of
    /// the open transaction, which cannot commit meanwhile). The coordinator's clocks go on:
    /// transactions time out, and a member's session is judged by its process as before, so
    /// keep outages shorter than the session timeout.
    pub fn outage(&mut self, ms: i64) {
        self.down_until_ms = self.now_ms() + ms;
    }

    /// Whether the brokers answer (no [`outage`](Self::outage) now).
    pub fn reachable(&self) -> bool {
        self.now_ms() >= self.down_until_ms
    }

    /// A client call that blocks until the brokers answer, for `within` at most: time passes
    /// (for every process, as in any blocking call of the simulation). Returns whether they
    /// answer.
    pub(crate) fn wait_for_brokers(&mut self, within: std::time::Duration) -> bool {
        let until = self.now_ms() + clients::ms(within);
        self.sleep_until(self.down_until_ms.min(until));
        self.reachable()
    }

    /// Lets time pass until `ms` (nothing if that is not later than now).
    pub(crate) fn sleep_until(&self, ms: i64) {
        let now = self.now_ms();
        if ms > now {
            self.clock
                .sleep(std::time::Duration::from_millis((ms - now) as u64));
        }
    }

    /// An injected fault on a read-only request (`name` in the error): a fatal one fails
    /// fatally, any other retriably; nothing happened either way.
    pub(crate) fn read_fault(
        &mut self,
        request: Request,
        name: &'static str,
    ) -> Result<(), SimError> {
        match self.take_fault(request) {
            None => Ok(()),
            Some(FaultKind::Fatal) => Err(SimError::Fatal(name)),
            Some(_) => Err(SimError::Retriable(name)),
        }
    }

    pub(crate) fn take_fault(&mut self, request: Request) -> Option<FaultKind> {
        let i = self.faults.iter().position(|f| f.request == request)?;
        if self.faults[i].skip > 0 {
            self.faults[i].skip -= 1;
            return None;
        }
        self.faults.remove(i).map(|f| f.kind)
    }

    pub(crate) fn log(&self, topic: &str, partition: i32) -> Option<&PartitionLog> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
    }

    fn log_mut(&mut self, topic: &str, partition: i32) -> Result<&mut PartitionLog, SimError> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .ok_or_else(|| SimError::UnknownTopic(format!("{topic}-{partition}")))
    }

    /// The partition a record goes to: `explicit`, else by key (FNV-1a), else 0. Auto-creates
    /// the topic.
    fn partition_for(&mut self, topic: &str, explicit: Option<i32>, key: Option<&[u8]>) -> i32 {
        self.create_topic(topic, self.default_partitions, TopicConfig::default());
        self.target_partition(topic, explicit, key)
    }

    /// A send to `topic` can go ahead: it exists, or sends create it.
    pub(crate) fn producible(&self, topic: &str) -> Result<(), SimError> {
        if self.config.auto_create_topics || self.topics.contains_key(topic) {
            Ok(())
        } else {
            Err(SimError::UnknownTopic(format!(
                "UNKNOWN_TOPIC_OR_PARTITION: output topic `{topic}` does not exist"
            )))
        }
    }

    /// The partition a record for `topic` goes to ([`partition_for`](Self::partition_for)),
    /// without creating the topic (one that does not exist yet would get the default count).
    pub(crate) fn target_partition(
        &self,
        topic: &str,
        explicit: Option<i32>,
        key: Option<&[u8]>,
    ) -> i32 {
        let n = self.partitions(topic).unwrap_or(self.default_partitions);
        explicit.unwrap_or_else(|| key.map_or(0, |k| partition_of(k, n)))
    }

    /// Whether `topic` accepts `record` as Apache Kafka's broker checks it: no record over the
    /// topic's `max.message.bytes`, none without a key on a compacted topic.
    pub fn accepts(&self, topic: &str, record: &SimRecord) -> Result<(), SimError> {
        let Some(config) = self.topics.get(topic).map(|t| t.config) else {
            return Ok(());
        };
        if let Some(max) = config.max_message_bytes {
            if record.size() > max {
                return Err(SimError::Rejected(format!(
                    "MESSAGE_TOO_LARGE: a record of {} bytes for {topic}, whose max.message.bytes is {max}",
                    record.size()
                )));
            }
        }
        if config.compact && record.key.is_none() {
            return Err(SimError::Rejected(format!(
                "INVALID_RECORD: compacted topic {topic} cannot accept a record without a key"
            )));
        }
        Ok(())
    }

    /// A non-transactional produce (committed at once); returns `(partition, offset)`.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        record: SimRecord,
    ) -> (i32, i64) {
        let p = self.partition_for(topic, partition, record.key.as_deref());
        let log = self.log_mut(topic, p).expect("created above");
        (p, log.append(record, Status::Committed))
    }

    /// The last stable offset: what a read_committed consumer can reach.
    pub fn last_stable_offset(&self, topic: &str, partition: i32) -> i64 {
        self.log(topic, partition)
            .map_or(0, PartitionLog::last_stable_offset)
    }

    /// The log start offset (moved by retention and DeleteRecords).
    pub fn log_start_offset(&self, topic: &str, partition: i32) -> i64 {
        self.log(topic, partition).map_or(0, PartitionLog::start)
    }

    /// The high watermark.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> i64 {
        self.log(topic, partition).map_or(0, PartitionLog::end)
    }

    /// Reads committed records of a partition from `from` up to the last stable offset, at
    /// most `max` of them. Returns `(offset, record)` pairs and the next position.
    pub fn read_committed(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> (Vec<(i64, &SimRecord)>, i64) {
        match self.log(topic, partition) {
            Some(log) => log.read_committed(from, max),
            None => (Vec::new(), from),
        }
    }

    /// Every committed record of a topic, partition by partition.
    pub fn committed_records(&self, topic: &str) -> Vec<(i32, i64, SimRecord)> {
        let n = self.partitions(topic).unwrap_or(0);
        let mut out = Vec::new();
        for p in 0..n {
            let (recs, _) = self.read_committed(topic, p, 0, usize::MAX);
            out.extend(recs.into_iter().map(|(o, r)| (p, o, r.clone())));
        }
        out
    }

    /// Number of records (of any status) in a topic, markers excluded.
    pub fn record_count_any_status(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |t| {
            t.partitions
                .iter()
                .map(PartitionLog::records_any_status)
                .sum()
        })
    }

    /// Whether a transaction is open on any partition of `topic`.
    pub fn has_open_transaction_on(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| t.partitions.iter().any(PartitionLog::has_pending))
    }

    /// Runs compaction (on compacted topics) and retention (where `retention.ms` is set) on
    /// every partition of `topic`. Returns how many entries were removed.
    pub fn clean(&mut self, topic: &str) -> usize {
        let now = self.now_ms();
        let delete_retention = self.config.delete_retention_ms;
        let Some(t) = self.topics.get_mut(topic) else {
            return 0;
        };
        let config = t.config;
        let mut removed = 0;
        for log in &mut t.partitions {
            if config.compact {
                removed += log.compact(now, delete_retention);
            }
            if let Some(ms) = config.retention_ms {
                removed += log.apply_retention(now, ms);
            }
        }
        removed
    }

    /// Retention (where `retention.ms` is set) on one partition. Returns how many entries
    /// were removed.
    pub fn apply_retention(&mut self, topic: &str, partition: i32) -> usize {
        let now = self.now_ms();
        let Some(t) = self.topics.get_mut(topic) else {
            return 0;
        };
        match (
            t.config.retention_ms,
            t.partitions.get_mut(partition as usize),
        ) {
            (Some(ms), Some(log)) => log.apply_retention(now, ms),
            _ => 0,
        }
    }

    /// DeleteRecords: the records of `topic`/`partition` before `offset` are deleted (an
    /// offset beyond the high watermark is refused, as Kafka does). Returns the new log start.
    pub fn delete_records(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64, SimError> {
        let log = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .ok_or_else(|| SimError::UnknownTopic(format!("{topic}-{partition}")))?;
        if offset > log.end() {
            return Err(SimError::Fatal("DeleteRecords (OFFSET_OUT_OF_RANGE)"));
        }
        Ok(log.delete_before(offset))
    }

    /// Names of all topics.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// Expires what timed out: transactions past their timeout (aborted, epoch bumped) and
    /// members whose process was paused or dead for a session timeout (removed, rebalance).
    pub fn tick(&mut self) {
        self.expire_transactions();
        self.expire_members();
    }
}

/// The partition for a key: FNV-1a, like a stable hash partitioner.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}
