//! [`SimClients`]: one stream thread's clients on the simulated cluster — a group member, a
//! transactional producer, a restore consumer — as librdkafka would behave on Apache Kafka.

use super::group::{GroupProtocol, MemberId, MemberView};
use super::log::SimRecord;
use super::process::SimProcess;
use super::{lock, FaultKind, Request, SharedCluster, SimCluster, SimError};
use exactly_core::engine::{
    ClientError, ClientErrorKind, Delivered, Isolation, Polled, RecordBatch, SeekTo, Step,
    StreamClients, TopicPartition,
};
use exactly_core::{HeaderRef, Output, Record, RecordKind};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Records fetched from the simulated cluster (copies).
#[derive(Debug, Default)]
pub struct SimBatch {
    records: Vec<(Arc<str>, i32, i64, SimRecord)>,
}

impl RecordBatch for SimBatch {
    fn len(&self) -> usize {
        self.records.len()
    }
    fn with_records<R>(&self, f: impl FnOnce(&[Record<'_>]) -> R) -> R {
        let headers: Vec<Vec<HeaderRef<'_>>> = self
            .records
            .iter()
            .map(|(_, _, _, r)| {
                r.headers
                    .iter()
                    .map(|(k, v)| HeaderRef {
                        key: k,
                        value: v.as_deref(),
                    })
                    .collect()
            })
            .collect();
        let records: Vec<Record<'_>> = self
            .records
            .iter()
            .zip(&headers)
            .map(|((topic, p, o, r), h)| Record {
                topic,
                partition: *p,
                offset: *o,
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: h,
            })
            .collect();
        f(&records)
    }
}

#[derive(Debug, Clone, Copy)]
struct Fetch {
    /// `None` until the first fetch, which starts at the committed offset (or the start).
    position: Option<i64>,
    paused: bool,
}

#[derive(Debug, Default)]
struct State {
    member: MemberId,
    /// A `Lost` event was returned; the member rejoins when the engine completes it.
    lost: bool,
    /// A newer member took this member's `group.instance.id`: the consumer is done.
    fenced: bool,
    assigned: BTreeMap<TopicPartition, Fetch>,
    /// Round-robin start of fetches.
    cursor: usize,
    epoch: u32,
    /// librdkafka makes a fenced producer fatal: every call fails until it is replaced.
    producer_fenced: bool,
    delivered: Delivered,
    /// A delivery failed (the first): the transaction can only abort.
    delivery_failed: Option<ClientError>,
    /// The first send of the transaction to each output partition: as a broker fails a
    /// produce batch as a whole, a refused record fails every record of its partition's
    /// batch, and the client reports the first of them.
    batches: HashMap<(String, i32), u64>,
    /// Records sent while no broker answered, in send order: delivered when one does.
    queued: Vec<Queued>,
    /// The restore consumer's changelog partitions.
    restore: BTreeMap<TopicPartition, RestorePosition>,
}

/// Where the restore consumer reads a changelog partition, as librdkafka tracks it.
#[derive(Debug, Clone, Copy)]
struct RestorePosition {
    /// The next offset to fetch. A fetch below the log start (retention or DeleteRecords
    /// removed records since) resets it to the log start (`auto.offset.reset=earliest`).
    fetch: i64,
    /// The application position `position()` reports: moved only by what the consumer
    /// reads (records and transaction markers), not by a reset, as librdkafka's.
    app: i64,
}

/// A record in the producer's queue.
#[derive(Debug)]
struct Queued {
    kind: RecordKind,
    topic: String,
    partition: Option<i32>,
    record: SimRecord,
    seq: u64,
}

impl State {
    /// Ends the producer's transaction (or at-least-once batch): returns what its deliveries
    /// said and forgets its batches, queued records and failed delivery.
    fn end_txn(&mut self) -> Delivered {
        self.batches.clear();
        self.queued.clear();
        self.delivery_failed = None;
        std::mem::take(&mut self.delivered)
    }
}

/// How a stream thread's clients are set up on the simulated cluster.
#[derive(Debug, Clone)]
pub struct SimClientConfig {
    /// The consumer group (the app id).
    pub group: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// `transactional.id`; also the `group.instance.id` with static membership.
    pub transactional_id: String,
    /// Transactional producer (exactly-once) or not (at-least-once).
    pub transactional: bool,
    /// Static group membership.
    pub static_membership: bool,
    /// Rebalance protocol of the group.
    pub protocol: GroupProtocol,
}

/// One stream thread's clients on the simulated cluster.
pub struct SimClients {
    cluster: SharedCluster,
    process: Arc<SimProcess>,
    cfg: SimClientConfig,
    state: RefCell<State>,
}

impl std::fmt::Debug for SimClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimClients")
            .field("transactional_id", &self.cfg.transactional_id)
            .field("process", &self.process.name())
            .finish()
    }
}

fn client_error(during: &'static str, e: SimError) -> ClientError {
    let kind = match &e {
        SimError::Fenced(_) => ClientErrorKind::ProducerFenced,
        SimError::Retriable(_) => ClientErrorKind::Retriable,
        SimError::Abortable(_) => ClientErrorKind::Abortable,
        SimError::Fatal(_) => ClientErrorKind::Fatal,
        SimError::StaleMember(_) => ClientErrorKind::StaleMember,
        SimError::FencedInstance(_) => ClientErrorKind::FencedInstance,
        SimError::UnknownTopic(_) => ClientErrorKind::UnknownTopic,
        SimError::Rejected(_) => ClientErrorKind::Rejected,
        SimError::ProducerFailed(_) => ClientErrorKind::ProducerFailed,
        SimError::Unreachable(_) => ClientErrorKind::Retriable,
    };
    ClientError::new(kind, during, e)
}

/// `d` in whole ms.
pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn tp_key(tp: &TopicPartition) -> (String, i32) {
    (tp.topic.to_string(), tp.partition)
}

impl SimClients {
    /// Starts a stream thread of `process`: initialises its transactional producer (fencing
    /// older ones with the same id, aborting their open transaction) and joins the group.
    pub fn start(cluster: SharedCluster, process: Arc<SimProcess>, cfg: SimClientConfig) -> Self {
        let (member, epoch) = {
            let mut c = lock(&cluster);
            let epoch = if cfg.transactional {
                c.init_transactions(&cfg.transactional_id)
            } else {
                0
            };
            let instance = cfg
                .static_membership
                .then_some(cfg.transactional_id.as_str());
            let member = c.join_group(
                &cfg.group,
                instance,
                &cfg.topics,
                cfg.protocol,
                process.clone(),
            );
            (member, epoch)
        };
        Self {
            cluster,
            process,
            cfg,
            state: RefCell::new(State {
                member,
                epoch,
                ..State::default()
            }),
        }
    }

    /// The process these clients belong to.
    pub fn process(&self) -> &Arc<SimProcess> {
        &self.process
    }

    /// The consumer's partitions: (partition, fetch position, paused).
    pub fn fetch_state(&self) -> Vec<(TopicPartition, Option<i64>, bool)> {
        self.state
            .borrow()
            .assigned
            .iter()
            .map(|(tp, f)| (tp.clone(), f.position, f.paused))
            .collect()
    }

    /// The group member id.
    pub fn member(&self) -> MemberId {
        self.state.borrow().member
    }

    /// The consumer's close: a dynamic member leaves the group (a static one's session times
    /// out).
    pub fn close(&self) {
        let member = self.state.borrow().member;
        lock(&self.cluster).leave_group(&self.cfg.group, member);
    }

    /// One operation: a kill point, then `f` on the cluster and the client state.
    fn op<T>(
        &self,
        during: &'static str,
        f: impl FnOnce(&mut SimCluster, &mut State) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let dies = self.process.begin_op(during)?;
        let out = {
            let mut c = lock(&self.cluster);
            let mut s = self.state.borrow_mut();
            f(&mut c, &mut s)
        };
        self.process.end_op(dies, during)?;
        out
    }

    /// [`op`](Self::op) for a request to a broker: it fails retriably while no broker
    /// answers ([`SimCluster::outage`]).
    fn request<T>(
        &self,
        during: &'static str,
        f: impl FnOnce(&mut SimCluster, &mut State) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.op(during, |c, s| {
            if !c.reachable() {
                return Err(client_error(during, SimError::Unreachable(during)));
            }
            f(c, s)
        })
    }

    /// [`request`](Self::request) that waits for the brokers, at most `within`, as
    /// librdkafka retries a request until its timeout.
    fn request_within<T>(
        &self,
        during: &'static str,
        within: Duration,
        f: impl FnOnce(&mut SimCluster, &mut State) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.op(during, |c, s| {
            if !c.wait_for_brokers(within) {
                return Err(client_error(during, SimError::Unreachable(during)));
            }
            f(c, s)
        })
    }

    /// Delivers the records queued while no broker answered, in order. A fenced producer
    /// drops them (its transaction is over); a failed delivery is kept for the commit.
    fn deliver_queued(&self, c: &mut SimCluster, s: &mut State) -> Result<(), ClientError> {
        for q in std::mem::take(&mut s.queued) {
            self.deliver(c, s, q)?;
        }
        Ok(())
    }

    /// Delivers one record to the cluster (in the open transaction, if transactional).
    fn deliver(&self, c: &mut SimCluster, s: &mut State, q: Queued) -> Result<(), ClientError> {
        let Queued {
            kind,
            topic,
            partition,
            record,
            seq,
        } = q;
        let key = record.key.clone();
        let sent = if self.cfg.transactional {
            c.send(
                &self.cfg.transactional_id,
                s.epoch,
                &topic,
                partition,
                record,
            )
        } else if c.take_fault(Request::Produce).is_some() {
            Err(SimError::Abortable(format!("delivery to {topic} failed")))
        } else {
            c.producible(&topic)
                .and_then(|()| c.accepts(&topic, &record))
                .map(|()| c.produce(&topic, partition, record))
        };
        match sent {
            Ok((p, offset)) => {
                s.batches.entry((topic.clone(), p)).or_insert(seq);
                if kind == RecordKind::Changelog {
                    s.delivered.changelog_next.insert((topic, p), offset + 1);
                } else {
                    *s.delivered.records.entry(topic).or_default() += 1;
                }
                Ok(())
            }
            // Like librdkafka, the send is queued; the failed delivery surfaces when the
            // transaction commits.
            // Like librdkafka's, the delivery fails once metadata says the topic is gone.
            Err(e @ (SimError::Abortable(_) | SimError::UnknownTopic(_))) => {
                s.delivery_failed
                    .get_or_insert_with(|| client_error("delivery", e).about_record(seq));
                Ok(())
            }
            Err(e @ SimError::Rejected(_)) => {
                let p = c.target_partition(&topic, partition, key.as_deref());
                let first = *s.batches.entry((topic, p)).or_insert(seq);
                s.delivery_failed
                    .get_or_insert_with(|| client_error("delivery", e).about_record(first));
                Ok(())
            }
            Err(SimError::Fenced(id)) => {
                s.producer_fenced = true;
                Err(client_error("send", SimError::Fenced(id)))
            }
            Err(e) => Err(client_error("send", e)),
        }
    }

    fn producer_ok(s: &State, during: &'static str) -> Result<(), ClientError> {
        if s.producer_fenced {
            return Err(ClientError::new(
                ClientErrorKind::ProducerFenced,
                during,
                "the producer was fenced; it must be replaced",
            ));
        }
        Ok(())
    }

    fn fetch(&self, c: &mut SimCluster, s: &mut State, max: usize) -> SimBatch {
        let mut out = SimBatch::default();
        let partitions: Vec<TopicPartition> = s.assigned.keys().cloned().collect();
        let n = partitions.len();
        let mut budget = max;
        for k in 0..n {
            if budget == 0 {
                break;
            }
            let tp = &partitions[(s.cursor + k) % n];
            let fetch = s.assigned.get_mut(tp).expect("listed above");
            if fetch.paused {
                continue;
            }
            let from = match fetch.position {
                Some(p) => p,
                None => {
                    let key = tp_key(tp);
                    match c.committed(&self.cfg.group, std::slice::from_ref(&key), true) {
                        Ok(v) => v[0].unwrap_or_else(|| {
                            c.log(&tp.topic, tp.partition).map_or(0, |l| l.start())
                        }),
                        // Not stable yet: this partition starts fetching at a later poll.
                        Err(_) => continue,
                    }
                }
            };
            let (recs, next) = c.read_committed(&tp.topic, tp.partition, from, budget);
            budget -= recs.len();
            if !recs.is_empty() {
                tracing::debug!(member = s.member, partition = %tp, from, next, n = recs.len(), "sim fetch");
            }
            out.records.extend(
                recs.into_iter()
                    .map(|(o, r)| (tp.topic.clone(), tp.partition, o, r.clone())),
            );
            fetch.position = Some(next);
        }
        s.cursor = s.cursor.wrapping_add(1);
        out
    }
}

impl StreamClients for SimClients {
    type Records<'a> = SimBatch;
    type ChangelogRecords<'a> = SimBatch;

    fn poll(&self, max: usize, _timeout: Duration) -> Result<Polled<SimBatch>, ClientError> {
        let group = self.cfg.group.clone();
        self.op("poll", |c, s| {
            // The coordinator aborts timed-out transactions on its own clock, whether or not
            // anyone calls it: a transaction left open by a dead producer must not hold the
            // last stable offset of its partitions for ever.
            c.expire_transactions();
            if !c.reachable() {
                // librdkafka logs the transport errors; the poll returns nothing.
                return Ok(Polled {
                    records: SimBatch::default(),
                    event: None,
                });
            }
            if s.fenced {
                return Err(client_error(
                    "poll",
                    SimError::FencedInstance("this member was fenced".into()),
                ));
            }
            let event = match c.member_poll(&group, s.member) {
                MemberView::Fenced => {
                    s.fenced = true;
                    return Err(client_error(
                        "poll",
                        SimError::FencedInstance(format!(
                            "a newer member joined with group.instance.id {}",
                            self.cfg.transactional_id
                        )),
                    ));
                }
                MemberView::Lost if !s.lost => {
                    s.lost = true;
                    Some(exactly_core::engine::GroupEvent::Lost(
                        s.assigned.keys().cloned().collect(),
                    ))
                }
                MemberView::Lost | MemberView::Nothing => None,
                MemberView::Event(e) => Some(e),
            };
            let records = if s.lost {
                SimBatch::default()
            } else {
                self.fetch(c, s, max)
            };
            Ok(Polled { records, event })
        })
    }

    fn complete_assign(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        self.op("assign", |_, s| {
            for tp in partitions {
                s.assigned.insert(
                    tp.clone(),
                    Fetch {
                        position: None,
                        paused: false,
                    },
                );
            }
            Ok(())
        })
    }

    fn complete_revoke(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        let cfg = self.cfg.clone();
        let process = self.process.clone();
        self.op("revoke", |c, s| {
            for tp in partitions {
                s.assigned.remove(tp);
            }
            if s.lost {
                // The member was removed: it rejoins as a new member.
                s.assigned.clear();
                s.lost = false;
                let instance = cfg
                    .static_membership
                    .then_some(cfg.transactional_id.as_str());
                s.member = c.join_group(&cfg.group, instance, &cfg.topics, cfg.protocol, process);
            } else {
                let list: Vec<(String, i32)> = partitions.iter().map(tp_key).collect();
                c.ack_revoke(&cfg.group, s.member, &list);
            }
            Ok(())
        })
    }

    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        self.op("pause", |_, s| {
            for tp in partitions {
                if let Some(f) = s.assigned.get_mut(tp) {
                    f.paused = true;
                }
            }
            Ok(())
        })
    }

    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        self.op("resume", |c, s| {
            if c.take_fault(Request::Resume).is_some() {
                tracing::debug!(member = s.member, ?partitions, "sim resume dropped");
                return Ok(());
            }
            for tp in partitions {
                if let Some(f) = s.assigned.get_mut(tp) {
                    f.paused = false;
                }
            }
            Ok(())
        })
    }

    fn seek(&self, tp: &TopicPartition, to: SeekTo) -> Result<(), ClientError> {
        self.op("seek", |c, s| {
            let start = c.log(&tp.topic, tp.partition).map_or(0, |l| l.start());
            let Some(f) = s.assigned.get_mut(tp) else {
                return Err(ClientError::new(
                    ClientErrorKind::Retriable,
                    "seek",
                    format!("{tp} is not assigned"),
                ));
            };
            f.position = Some(match to {
                SeekTo::Offset(o) => o.max(start),
                SeekTo::Beginning => start,
            });
            tracing::debug!(member = s.member, partition = %tp, position = ?f.position, "sim seek");
            Ok(())
        })
    }

    fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.state
            .borrow()
            .assigned
            .get(tp)
            .and_then(|f| f.position)
    }

    fn committed(
        &self,
        partitions: &[TopicPartition],
        within: Duration,
    ) -> Result<Vec<Option<i64>>, ClientError> {
        self.request_within("committed", within, |c, _| {
            let keys: Vec<(String, i32)> = partitions.iter().map(tp_key).collect();
            // librdkafka asks again (every `retry.backoff.ms`, 100 ms) while the broker answers
            // UNSTABLE_OFFSET_COMMIT, until the call's timeout.
            let until = c.now_ms() + ms(within);
            loop {
                c.expire_transactions();
                let pending = keys
                    .iter()
                    .any(|(t, p)| c.has_pending_offsets(&self.cfg.group, t, *p));
                if !pending || c.now_ms() >= until {
                    break;
                }
                c.sleep_until((c.now_ms() + 100).min(until));
            }
            c.committed(&self.cfg.group, &keys, true)
                .map_err(|e| client_error("committed", e))
        })
    }

    fn commit_offsets(
        &self,
        offsets: &[(TopicPartition, i64)],
        _sync: bool,
    ) -> Result<(), ClientError> {
        self.request("commit_offsets", |c, s| {
            let meta = c.member_metadata(&self.cfg.group, s.member);
            let list: Vec<(String, i32, i64)> = offsets
                .iter()
                .map(|(tp, o)| (tp.topic.to_string(), tp.partition, *o))
                .collect();
            c.commit_offsets(&meta, &list)
                .map_err(|e| client_error("commit_offsets", e))
        })
    }

    fn assignment_lost(&self) -> bool {
        let s = self.state.borrow();
        s.lost || lock(&self.cluster).member_lost(&self.cfg.group, s.member)
    }

    fn begin_transaction(&self) -> Result<(), ClientError> {
        self.op("begin_transaction", |_, s| {
            Self::producer_ok(s, "begin_transaction")?;
            s.end_txn();
            Ok(())
        })
    }

    fn send(
        &self,
        kind: RecordKind,
        out: &Output,
        seq: u64,
        within: &dyn Fn() -> Duration,
    ) -> Result<(), ClientError> {
        self.op("send", |c, s| {
            Self::producer_ok(s, "send")?;
            // Like librdkafka's, a transaction whose delivery failed takes no more records;
            // like the Kafka clients, the send then reports that delivery's error.
            if self.cfg.transactional {
                if let Some(failed) = &s.delivery_failed {
                    return Err(failed.clone());
                }
            }
            if let Some(kind) = c.take_fault(Request::Send) {
                let why = format!("the client refused a record for {}", out.topic);
                return Err(client_error(
                    "send",
                    match kind {
                        FaultKind::Fatal => SimError::Fatal("send"),
                        _ => SimError::Abortable(why),
                    },
                ));
            }
            let q = Queued {
                kind,
                topic: out.topic.clone(),
                partition: out.partition,
                record: SimRecord {
                    key: out.key.clone(),
                    value: out.value.clone(),
                    headers: out.headers.clone(),
                    timestamp: out.timestamp.or(Some(c.now_ms())),
                },
                seq,
            };
            if !c.reachable() {
                if s.queued.len() < c.config().producer_queue_records {
                    s.queued.push(q);
                    return Ok(());
                }
                // The queue is full: librdkafka's produce fails with QUEUE_FULL, and the
                // client serves deliveries and tries again until `within` has passed.
                let within = within();
                if !c.wait_for_brokers(within) {
                    return Err(ClientError::new(
                        ClientErrorKind::Abortable,
                        "send",
                        format!(
                            "the producer's queue stayed full for {} ms (no broker answered)",
                            within.as_millis()
                        ),
                    ));
                }
            }
            self.deliver_queued(c, s)?;
            self.deliver(c, s, q)
        })
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), ClientError> {
        let txn_id = self.cfg.transactional_id.clone();
        self.request("send_offsets_to_transaction", |c, s| {
            Self::producer_ok(s, "send_offsets_to_transaction")?;
            self.deliver_queued(c, s)?;
            if let Some(failed) = &s.delivery_failed {
                return Err(failed.clone());
            }
            let meta = c.member_metadata(&self.cfg.group, s.member);
            let list: Vec<(String, i32, i64)> = offsets
                .iter()
                .map(|(tp, o)| (tp.topic.to_string(), tp.partition, *o))
                .collect();
            c.send_offsets(&txn_id, s.epoch, &meta, &list).map_err(|e| {
                if matches!(e, SimError::Fenced(_)) {
                    s.producer_fenced = true;
                }
                client_error("send_offsets_to_transaction", e)
            })
        })
    }

    fn commit_transaction(&self, within: Duration) -> Result<Delivered, ClientError> {
        let txn_id = self.cfg.transactional_id.clone();
        self.op("commit_transaction", |c, s| {
            Self::producer_ok(s, "commit_transaction")?;
            // The client waits for its queued records' deliveries before it asks the
            // coordinator to commit: if they do not come within the wait, nothing was asked.
            if !s.queued.is_empty() && !c.wait_for_brokers(within) {
                return Err(ClientError::new(
                    ClientErrorKind::Abortable,
                    "commit_transaction",
                    format!(
                        "{} records were not delivered within {} ms (no broker answered)",
                        s.queued.len(),
                        within.as_millis()
                    ),
                ));
            }
            if !c.reachable() {
                return Err(client_error(
                    "commit_transaction",
                    SimError::Unreachable("commit_transaction"),
                ));
            }
            self.deliver_queued(c, s)?;
            if let Some(failed) = &s.delivery_failed {
                return Err(failed.clone());
            }
            match c.commit(&txn_id, s.epoch) {
                Ok(()) => Ok(s.end_txn()),
                Err(e) => {
                    if matches!(e, SimError::Fenced(_)) {
                        s.producer_fenced = true;
                    }
                    Err(client_error("commit_transaction", e))
                }
            }
        })
    }

    fn abort_transaction(&self) -> Result<(), ClientError> {
        let txn_id = self.cfg.transactional_id.clone();
        self.request("abort_transaction", |c, s| {
            Self::producer_ok(s, "abort_transaction")?;
            if c.take_fault(Request::AbortTxn).is_some() {
                return Err(client_error(
                    "abort_transaction",
                    SimError::ProducerFailed(
                        "sequence desynchronization with the broker (OUT_OF_ORDER_SEQUENCE_NUMBER)"
                            .into(),
                    ),
                ));
            }
            s.end_txn();
            c.abort(&txn_id, s.epoch).map_err(|e| {
                if matches!(e, SimError::Fenced(_)) {
                    s.producer_fenced = true;
                }
                client_error("abort_transaction", e)
            })
        })
    }

    fn flush(&self) -> Result<Delivered, ClientError> {
        self.request("flush", |c, s| {
            self.deliver_queued(c, s)?;
            if let Some(failed) = s.delivery_failed.take() {
                s.end_txn();
                return Err(failed);
            }
            Ok(s.end_txn())
        })
    }

    fn reset_producer(&self) -> Result<(), ClientError> {
        let txn_id = self.cfg.transactional_id.clone();
        self.request("reset_producer", |c, s| {
            s.epoch = c.init_transactions(&txn_id);
            s.producer_fenced = false;
            s.end_txn();
            Ok(())
        })
    }

    fn restore_assign(&self, tp: &TopicPartition, from: i64) -> Result<(), ClientError> {
        self.op("restore_assign", |_, s| {
            s.restore.insert(
                tp.clone(),
                RestorePosition {
                    fetch: from,
                    app: from,
                },
            );
            Ok(())
        })
    }

    fn restore_unassign(&self, tp: &TopicPartition) -> Result<(), ClientError> {
        self.op("restore_unassign", |_, s| {
            s.restore.remove(tp);
            Ok(())
        })
    }

    fn restore_poll(&self, max: usize, _timeout: Duration) -> Result<SimBatch, ClientError> {
        self.op("restore_poll", |c, s| {
            let mut out = SimBatch::default();
            if !c.reachable() {
                return Ok(out);
            }
            let mut budget = max;
            for (tp, pos) in s.restore.iter_mut() {
                if budget == 0 {
                    break;
                }
                // The broker deletes segments past `retention.ms` whenever its cleaner runs;
                // the latest moment that can surprise a restore is its fetch.
                c.apply_retention(&tp.topic, tp.partition);
                let start = c.log_start_offset(&tp.topic, tp.partition).max(pos.fetch);
                let (recs, next) = c.read_committed(&tp.topic, tp.partition, start, budget);
                budget -= recs.len();
                out.records.extend(
                    recs.into_iter()
                        .map(|(o, r)| (tp.topic.clone(), tp.partition, o, r.clone())),
                );
                pos.fetch = next;
                if next > start {
                    pos.app = next;
                }
            }
            Ok(out)
        })
    }

    fn restore_position(&self, tp: &TopicPartition) -> Option<i64> {
        self.state.borrow().restore.get(tp).map(|p| p.app)
    }

    fn watermarks(
        &self,
        tp: &TopicPartition,
        isolation: Isolation,
        within: Duration,
    ) -> Result<(i64, i64), ClientError> {
        self.request_within("watermarks", within, |c, _| {
            c.expire_transactions();
            c.read_fault(Request::ListOffsets, "ListOffsets")
                .map_err(|e| client_error("watermarks", e))?;
            let Some(log) = c.log(&tp.topic, tp.partition) else {
                return Err(client_error(
                    "watermarks",
                    SimError::UnknownTopic(tp.to_string()),
                ));
            };
            let end = match isolation {
                Isolation::ReadCommitted => log.last_stable_offset(),
                Isolation::ReadUncommitted => log.end(),
            };
            Ok((log.start(), end))
        })
    }

    fn delete_records(
        &self,
        offsets: &[(TopicPartition, i64)],
        within: Duration,
    ) -> Result<(), ClientError> {
        self.request_within("delete_records", within, |c, _| {
            c.read_fault(Request::DeleteRecords, "DeleteRecords")
                .map_err(|e| client_error("delete_records", e))?;
            for (tp, offset) in offsets {
                c.delete_records(&tp.topic, tp.partition, *offset)
                    .map_err(|e| client_error("delete_records", e))?;
            }
            Ok(())
        })
    }

    fn cached_high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        let c = lock(&self.cluster);
        c.log(&tp.topic, tp.partition).map(|l| l.end())
    }

    fn reached(&self, step: Step) -> Result<(), ClientError> {
        self.process.reached(step)
    }
}
