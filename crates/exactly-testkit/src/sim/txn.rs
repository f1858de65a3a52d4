//! The transaction coordinator: producer ids and epochs, open transactions, their timeouts,
//! and the transactional offset commits they carry.

use super::group::GroupMetadata;
use super::log::{SimRecord, Status};
use super::{FaultKind, Request, SimCluster, SimError};
use std::collections::{BTreeMap, BTreeSet};

/// An open transaction.
#[derive(Debug, Default)]
pub(crate) struct OpenTxn {
    pub(crate) seq: u64,
    started_ms: i64,
    touched: BTreeSet<(String, i32)>,
    /// Pending offsets by (group, topic, partition): committed with the transaction.
    pub(crate) offsets: BTreeMap<(String, String, i32), i64>,
}

/// A `transactional.id`'s state at the coordinator.
#[derive(Debug, Default)]
pub(crate) struct TxnProducer {
    pub(crate) producer_id: u64,
    pub(crate) epoch: u32,
    pub(crate) open: Option<OpenTxn>,
    /// The last `commit` applied while its response was lost: a repeated commit call of the
    /// same epoch succeeds (librdkafka resumes the commit in progress).
    committed_unseen: Option<u32>,
    /// Per topic this epoch of the producer wrote to: the topic's incarnation then. Its
    /// sequence numbers run on per partition; a partition deleted and created again starts
    /// over at the broker, which refuses the producer's next sequence number.
    written: BTreeMap<String, u64>,
}

impl SimCluster {
    /// Starts (or restarts) the transactional producer `txn_id`: aborts its open transaction
    /// and bumps its epoch, fencing older instances. Returns the new epoch.
    pub fn init_transactions(&mut self, txn_id: &str) -> u32 {
        self.expire_transactions();
        if !self.producers.contains_key(txn_id) {
            let producer_id = self.next_producer_id;
            self.next_producer_id += 1;
            self.producers.insert(
                txn_id.to_owned(),
                TxnProducer {
                    producer_id,
                    ..TxnProducer::default()
                },
            );
        }
        let state = self.producers.get_mut(txn_id).expect("inserted above");
        let open = state.open.take();
        state.epoch += 1;
        state.committed_unseen = None;
        state.written.clear();
        let epoch = state.epoch;
        if let Some(txn) = open {
            self.finish(txn, false);
        }
        epoch
    }

    /// Whether any transactional producer has a transaction open.
    pub fn has_open_transactions(&self) -> bool {
        self.producers.values().any(|p| p.open.is_some())
    }

    fn producer(&mut self, txn_id: &str, epoch: u32) -> Result<&mut TxnProducer, SimError> {
        match self.producers.get_mut(txn_id) {
            Some(s) if s.epoch == epoch => Ok(s),
            _ => Err(SimError::Fenced(txn_id.to_owned())),
        }
    }

    fn open_txn(&mut self, txn_id: &str, epoch: u32) -> Result<&mut OpenTxn, SimError> {
        let now = self.now_ms();
        let next = &mut self.next_txn;
        let state = match self.producers.get_mut(txn_id) {
            Some(s) if s.epoch == epoch => s,
            _ => return Err(SimError::Fenced(txn_id.to_owned())),
        };
        state.committed_unseen = None;
        Ok(state.open.get_or_insert_with(|| {
            *next += 1;
            OpenTxn {
                seq: *next,
                started_ms: now,
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
        self.expire_transactions();
        self.producer(txn_id, epoch)?;
        match self.take_fault(Request::Produce) {
            None => {}
            Some(FaultKind::Retriable | FaultKind::Abortable | FaultKind::ResponseLost) => {
                return Err(SimError::Abortable(format!("delivery to {topic} failed")))
            }
            Some(FaultKind::Fatal) => return Err(SimError::Fatal("Produce")),
        }
        self.producible(topic)?;
        self.accepts(topic, &record)?;
        let p = self.partition_for(topic, partition, record.key.as_deref());
        let incarnation = self.incarnation(topic).expect("created above");
        let producer = self.producer(txn_id, epoch)?;
        match producer.written.insert(topic.to_owned(), incarnation) {
            Some(before) if before != incarnation => {
                return Err(SimError::ProducerFailed(format!(
                    "OUT_OF_ORDER_SEQUENCE_NUMBER: {topic} was deleted and created again since this producer wrote to it"
                )))
            }
            _ => {}
        }
        let txn = self.open_txn(txn_id, epoch)?;
        txn.touched.insert((topic.to_owned(), p));
        let seq = txn.seq;
        let log = self.log_mut(topic, p)?;
        Ok((p, log.append(record, Status::Pending { txn: seq })))
    }

    /// Adds consumer offsets to the open transaction (`send_offsets_to_transaction`). The
    /// group checks the member first (KIP-447).
    pub fn send_offsets(
        &mut self,
        txn_id: &str,
        epoch: u32,
        member: &GroupMetadata,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), SimError> {
        self.expire_transactions();
        self.producer(txn_id, epoch)?;
        match self.take_fault(Request::TxnOffsetCommit) {
            None => {}
            Some(FaultKind::Retriable) => return Err(SimError::Retriable("TxnOffsetCommit")),
            Some(FaultKind::Abortable) => {
                return Err(SimError::Abortable("TxnOffsetCommit".into()))
            }
            Some(FaultKind::Fatal) => return Err(SimError::Fatal("TxnOffsetCommit")),
            Some(FaultKind::ResponseLost) => {
                self.add_offsets(txn_id, epoch, member, offsets)?;
                return Err(SimError::Retriable("TxnOffsetCommit"));
            }
        }
        self.add_offsets(txn_id, epoch, member, offsets)
    }

    fn add_offsets(
        &mut self,
        txn_id: &str,
        epoch: u32,
        member: &GroupMetadata,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), SimError> {
        self.check_member(member)?;
        let txn = self.open_txn(txn_id, epoch)?;
        for (t, p, o) in offsets {
            txn.offsets
                .insert((member.group.clone(), t.clone(), *p), *o);
        }
        Ok(())
    }

    /// Commits the open transaction (no-op if none is open).
    pub fn commit(&mut self, txn_id: &str, epoch: u32) -> Result<(), SimError> {
        self.expire_transactions();
        let fault = self.take_fault(Request::EndTxn);
        if fault == Some(FaultKind::Retriable) {
            // The request never reached the coordinator.
            return Err(SimError::Retriable("EndTxn"));
        }
        if self
            .producers
            .get(txn_id)
            .is_some_and(|s| s.epoch == epoch && s.committed_unseen == Some(epoch))
        {
            // A repeated call resumes the commit whose response was lost: it completed (and
            // its response may be lost again).
            return match fault {
                Some(FaultKind::ResponseLost) => Err(SimError::Retriable("EndTxn")),
                _ => Ok(()),
            };
        }
        self.producer(txn_id, epoch)?;
        match fault {
            None | Some(FaultKind::Retriable) => {}
            Some(FaultKind::Abortable) => return Err(SimError::Abortable("EndTxn".into())),
            Some(FaultKind::Fatal) => return Err(SimError::Fatal("EndTxn")),
            Some(FaultKind::ResponseLost) => {
                self.end(txn_id, epoch, true)?;
                self.producer(txn_id, epoch)?.committed_unseen = Some(epoch);
                return Err(SimError::Retriable("EndTxn"));
            }
        }
        self.end(txn_id, epoch, true)
    }

    /// Aborts the open transaction (no-op if none is open).
    pub fn abort(&mut self, txn_id: &str, epoch: u32) -> Result<(), SimError> {
        self.expire_transactions();
        self.end(txn_id, epoch, false)
    }

    fn end(&mut self, txn_id: &str, epoch: u32, commit: bool) -> Result<(), SimError> {
        let open = self.producer(txn_id, epoch)?.open.take();
        if let Some(txn) = open {
            self.finish(txn, commit);
        }
        Ok(())
    }

    /// The coordinator completes a transaction: flips its records, writes markers, and
    /// commits its offsets.
    fn finish(&mut self, txn: OpenTxn, commit: bool) {
        for (topic, p) in &txn.touched {
            if let Ok(log) = self.log_mut(topic, *p) {
                log.finish(txn.seq, commit);
            }
        }
        if commit {
            for ((group, topic, p), o) in txn.offsets {
                self.group_mut(&group).committed.insert((topic, p), o);
            }
        }
    }

    /// Aborts every transaction that outlived the transaction timeout and bumps its
    /// producer's epoch (KIP-360): the producer's next request is refused as fenced.
    pub(crate) fn expire_transactions(&mut self) {
        let now = self.now_ms();
        let timeout = self.config.transaction_timeout_ms;
        let expired: Vec<String> = self
            .producers
            .iter()
            .filter(|(_, s)| {
                s.open
                    .as_ref()
                    .is_some_and(|t| now - t.started_ms > timeout)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let state = self.producers.get_mut(&id).expect("listed above");
            let txn = state.open.take().expect("listed as open");
            state.epoch += 1;
            tracing::debug!(transactional_id = %id, "coordinator aborted a timed-out transaction and bumped the epoch");
            self.finish(txn, false);
        }
    }

    /// Whether `txn_id` has an open transaction.
    pub fn has_open_transaction(&self, txn_id: &str) -> bool {
        self.producers.get(txn_id).is_some_and(|s| s.open.is_some())
    }

    /// Whether an open transaction holds offsets of `group` for the partition.
    pub(crate) fn has_pending_offsets(&self, group: &str, topic: &str, partition: i32) -> bool {
        let key = (group.to_owned(), topic.to_owned(), partition);
        self.producers
            .values()
            .filter_map(|s| s.open.as_ref())
            .any(|t| t.offsets.contains_key(&key))
    }

    /// The producer id of `txn_id` (it stays across epochs).
    pub fn producer_id(&self, txn_id: &str) -> Option<u64> {
        self.producers.get(txn_id).map(|s| s.producer_id)
    }

    /// The current epoch of `txn_id` (0 if it never initialised).
    pub fn epoch(&self, txn_id: &str) -> u32 {
        self.producers.get(txn_id).map_or(0, |s| s.epoch)
    }
}
