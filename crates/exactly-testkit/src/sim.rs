//! A simulated Kafka cluster with the transactional semantics the protocol relies on:
//! transactional producers with epochs (fencing), pending / committed / aborted records with
//! control markers, read_committed reads up to the last stable offset, and transactional
//! offset commits for one consumer group. In memory, single-threaded, deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// A record stored in a simulated partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRecord {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp (ms).
    pub timestamp: Option<i64>,
}

impl SimRecord {
    /// The last header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Committed,
    Pending { txn: u64 },
    Aborted,
    Marker,
}

#[derive(Debug, Clone)]
struct Entry {
    record: Option<SimRecord>,
    status: Status,
}

/// Errors the simulated broker returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The producer's epoch is stale: another producer with the same transactional id started.
    #[error("producer fenced: transactional id {0} has a newer epoch")]
    Fenced(String),
    /// A retriable request error (injected); the transaction must be aborted.
    #[error("injected retriable broker error on {0}")]
    Retriable(&'static str),
    /// The topic does not exist.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
}

/// A fault the next matching request will hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next produce request fails (retriable).
    Produce,
    /// The next transactional offset commit fails (retriable).
    TxnOffsetCommit,
    /// The next end-transaction request fails (retriable); the transaction stays open.
    EndTxn,
}

#[derive(Debug, Default)]
struct OpenTxn {
    seq: u64,
    touched: BTreeSet<(String, i32)>,
    offsets: BTreeMap<(String, i32), i64>,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: u32,
    open: Option<OpenTxn>,
}

/// The simulated cluster.
#[derive(Debug, Default)]
pub struct SimCluster {
    topics: BTreeMap<String, Vec<Vec<Entry>>>,
    group_offsets: HashMap<(String, i32), i64>,
    producers: HashMap<String, ProducerState>,
    faults: VecDeque<Fault>,
    next_txn: u64,
    default_partitions: i32,
}

impl SimCluster {
    /// An empty cluster; auto-created topics get `default_partitions` partitions.
    pub fn new(default_partitions: i32) -> Self {
        Self {
            default_partitions: default_partitions.max(1),
            ..Self::default()
        }
    }

    /// Creates a topic (no-op if it exists).
    pub fn create_topic(&mut self, topic: &str, partitions: i32) {
        self.topics
            .entry(topic.to_owned())
            .or_insert_with(|| vec![Vec::new(); partitions.max(1) as usize]);
    }

    /// Number of partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.topics.get(topic).map(|p| p.len() as i32)
    }

    /// Queues a fault for the next matching request.
    pub fn inject(&mut self, fault: Fault) {
        self.faults.push_back(fault);
    }

    fn take_fault(&mut self, fault: Fault) -> bool {
        if let Some(i) = self.faults.iter().position(|f| *f == fault) {
            self.faults.remove(i);
            true
        } else {
            false
        }
    }

    fn partition_for(
        &mut self,
        topic: &str,
        explicit: Option<i32>,
        key: Option<&[u8]>,
    ) -> (usize, i32) {
        let default = self.default_partitions;
        let n = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| vec![Vec::new(); default as usize])
            .len() as i32;
        let p = explicit.unwrap_or_else(|| match key {
            Some(k) => partition_of(k, n),
            None => 0,
        });
        (p as usize, p)
    }

    /// A non-transactional produce (committed at once); returns `(partition, offset)`.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        record: SimRecord,
    ) -> (i32, i64) {
        let (pi, p) = self.partition_for(topic, partition, record.key.as_deref());
        let log = &mut self.topics.get_mut(topic).expect("created above")[pi];
        log.push(Entry {
            record: Some(record),
            status: Status::Committed,
        });
        (p, log.len() as i64 - 1)
    }

    /// Starts (or restarts) the transactional producer `txn_id`: aborts its open transaction
    /// and bumps its epoch, fencing older instances. Returns the new epoch.
    pub fn init_transactions(&mut self, txn_id: &str) -> u32 {
        let open = self
            .producers
            .entry(txn_id.to_owned())
            .or_default()
            .open
            .take();
        if let Some(txn) = open {
            self.finish(txn, false);
        }
        let state = self.producers.get_mut(txn_id).expect("inserted above");
        state.epoch += 1;
        state.epoch
    }

    fn check_epoch(&mut self, txn_id: &str, epoch: u32) -> Result<&mut ProducerState, SimError> {
        match self.producers.get_mut(txn_id) {
            Some(s) if s.epoch == epoch => Ok(s),
            _ => Err(SimError::Fenced(txn_id.to_owned())),
        }
    }

    fn open_txn(&mut self, txn_id: &str, epoch: u32) -> Result<&mut OpenTxn, SimError> {
        let next = &mut self.next_txn;
        let state = match self.producers.get_mut(txn_id) {
            Some(s) if s.epoch == epoch => s,
            _ => return Err(SimError::Fenced(txn_id.to_owned())),
        };
        Ok(state.open.get_or_insert_with(|| {
            *next += 1;
            OpenTxn {
                seq: *next,
                ..OpenTxn::default()
            }
        }))
    }

    /// A transactional send; returns `(partition, offset)`.
    pub fn send(
        &mut self,
        txn_id: &str,
        epoch: u32,
        topic: &str,
        partition: Option<i32>,
        record: SimRecord,
    ) -> Result<(i32, i64), SimError> {
        self.check_epoch(txn_id, epoch)?;
        if self.take_fault(Fault::Produce) {
            return Err(SimError::Retriable("Produce"));
        }
        let (pi, p) = self.partition_for(topic, partition, record.key.as_deref());
        let txn = self.open_txn(txn_id, epoch)?;
        txn.touched.insert((topic.to_owned(), p));
        let seq = txn.seq;
        let log = &mut self.topics.get_mut(topic).expect("created above")[pi];
        log.push(Entry {
            record: Some(record),
            status: Status::Pending { txn: seq },
        });
        Ok((p, log.len() as i64 - 1))
    }

    /// Adds consumer offsets to the open transaction (`send_offsets_to_transaction`).
    pub fn send_offsets(
        &mut self,
        txn_id: &str,
        epoch: u32,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), SimError> {
        self.check_epoch(txn_id, epoch)?;
        if self.take_fault(Fault::TxnOffsetCommit) {
            return Err(SimError::Retriable("TxnOffsetCommit"));
        }
        let txn = self.open_txn(txn_id, epoch)?;
        for (t, p, o) in offsets {
            txn.offsets.insert((t.clone(), *p), *o);
        }
        Ok(())
    }

    /// Commits the open transaction (no-op if none is open).
    pub fn commit(&mut self, txn_id: &str, epoch: u32) -> Result<(), SimError> {
        self.end(txn_id, epoch, true)
    }

    /// Aborts the open transaction (no-op if none is open).
    pub fn abort(&mut self, txn_id: &str, epoch: u32) -> Result<(), SimError> {
        self.end(txn_id, epoch, false)
    }

    fn end(&mut self, txn_id: &str, epoch: u32, commit: bool) -> Result<(), SimError> {
        self.check_epoch(txn_id, epoch)?;
        if commit && self.take_fault(Fault::EndTxn) {
            return Err(SimError::Retriable("EndTxn"));
        }
        let open = self.check_epoch(txn_id, epoch)?.open.take();
        if let Some(txn) = open {
            self.finish(txn, commit);
        }
        Ok(())
    }

    /// The coordinator completes a transaction: flips its records and writes markers.
    fn finish(&mut self, txn: OpenTxn, commit: bool) {
        for (topic, p) in &txn.touched {
            let log = &mut self.topics.get_mut(topic).expect("touched topics exist")[*p as usize];
            for e in log.iter_mut() {
                if e.status == (Status::Pending { txn: txn.seq }) {
                    e.status = if commit {
                        Status::Committed
                    } else {
                        Status::Aborted
                    };
                }
            }
            log.push(Entry {
                record: None,
                status: Status::Marker,
            });
        }
        if commit {
            self.group_offsets.extend(txn.offsets);
        }
    }

    /// Whether `txn_id` has an open transaction.
    pub fn has_open_transaction(&self, txn_id: &str) -> bool {
        self.producers.get(txn_id).is_some_and(|s| s.open.is_some())
    }

    /// The group's committed offset for a partition.
    pub fn committed_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.group_offsets
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// The last stable offset: what a read_committed consumer can reach.
    pub fn last_stable_offset(&self, topic: &str, partition: i32) -> i64 {
        let Some(log) = self.log(topic, partition) else {
            return 0;
        };
        log.iter()
            .position(|e| matches!(e.status, Status::Pending { .. }))
            .unwrap_or(log.len()) as i64
    }

    fn log(&self, topic: &str, partition: i32) -> Option<&Vec<Entry>> {
        self.topics
            .get(topic)
            .and_then(|ps| ps.get(partition as usize))
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
        let lso = self.last_stable_offset(topic, partition);
        let Some(log) = self.log(topic, partition) else {
            return (Vec::new(), from);
        };
        let mut out = Vec::new();
        let mut pos = from.max(0);
        while pos < lso && out.len() < max {
            let e = &log[pos as usize];
            if e.status == Status::Committed {
                out.push((
                    pos,
                    e.record.as_ref().expect("committed entries carry records"),
                ));
            }
            pos += 1;
        }
        (out, pos)
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
        self.topics.get(topic).map_or(0, |ps| {
            ps.iter().flatten().filter(|e| e.record.is_some()).count()
        })
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
