//! The restore consumer: reads changelog partitions (read_committed, no group) for the
//! engine's restores.
//!
//! Its assignment changes only incrementally: a partition that stays keeps its fetch position.
//! Re-assigning with `assign()` and the full list restarts every fetch mid-log, and on the
//! local test broker a read_committed fetch that starts after an aborted transaction loses
//! every later record of that producer (docs/architecture.md). A partition that left is added
//! back only after [`REASSIGN_DELAY`], once its old fetch has stopped; until then its records
//! and position are ignored.

use super::member::{offset_of, KafkaBatch, LogContext};
use exactly_core::engine::TopicPartition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a changelog partition stays out of the restore consumer after it left before it
/// is assigned again (its old fetch stops asynchronously).
const REASSIGN_DELAY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Assignment {
    /// In the consumer's assignment.
    assigned: BTreeSet<TopicPartition>,
    /// Wanted, waiting for [`REASSIGN_DELAY`]: partition → first offset.
    waiting: BTreeMap<TopicPartition, i64>,
    /// When each partition last left the assignment.
    left_at: HashMap<TopicPartition, Instant>,
}

/// The restore consumer and its assignment.
pub(crate) struct RestoreReader {
    pub(crate) consumer: BaseConsumer<LogContext>,
    state: RefCell<Assignment>,
}

impl RestoreReader {
    pub(crate) fn new(consumer: BaseConsumer<LogContext>) -> Self {
        Self {
            consumer,
            state: RefCell::default(),
        }
    }

    pub(crate) fn assign(&self, tp: &TopicPartition, from: i64) -> KafkaResult<()> {
        self.state.borrow_mut().waiting.insert(tp.clone(), from);
        self.add_settled()
    }

    pub(crate) fn unassign(&self, tp: &TopicPartition) -> KafkaResult<()> {
        let mut s = self.state.borrow_mut();
        s.waiting.remove(tp);
        if s.assigned.remove(tp) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.topic, tp.partition);
            self.consumer.incremental_unassign(&tpl)?;
            s.left_at.insert(tp.clone(), Instant::now());
        }
        Ok(())
    }

    /// Adds the waiting partitions whose old fetch has stopped.
    fn add_settled(&self) -> KafkaResult<()> {
        let mut s = self.state.borrow_mut();
        let settled: Vec<(TopicPartition, i64)> = s
            .waiting
            .iter()
            .filter(|(tp, _)| {
                s.left_at
                    .get(*tp)
                    .is_none_or(|t| t.elapsed() >= REASSIGN_DELAY)
            })
            .map(|(tp, from)| (tp.clone(), *from))
            .collect();
        if settled.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, from) in &settled {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*from))?;
        }
        self.consumer.incremental_assign(&tpl)?;
        for (tp, _) in settled {
            s.waiting.remove(&tp);
            s.left_at.remove(&tp);
            s.assigned.insert(tp);
        }
        Ok(())
    }

    /// Blocks up to `wait` for the first changelog record, then takes what is buffered, up to
    /// `max`. Records of partitions not (yet) assigned are dropped.
    pub(crate) fn poll(&self, max: usize, wait: Duration) -> KafkaResult<KafkaBatch<'_>> {
        self.add_settled()?;
        let mut messages = Vec::new();
        let mut wait = wait;
        while messages.len() < max {
            match self.consumer.poll(wait) {
                Some(Ok(m)) => messages.push(m),
                Some(Err(e)) => tracing::warn!(error = %e, "restore consumer error (retrying)"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        let s = self.state.borrow();
        messages.retain(|m| {
            s.assigned
                .contains(&TopicPartition::new(m.topic(), m.partition()))
        });
        Ok(KafkaBatch { messages })
    }

    /// Serves the consumer's queue while it restores nothing (its logs and error events would
    /// otherwise pile up in it until the next restore); a stale record is dropped.
    pub(crate) fn serve_idle(&self) {
        let s = self.state.borrow();
        if s.assigned.is_empty() && s.waiting.is_empty() {
            super::serve_events(&self.consumer);
        }
    }

    /// The position in an assigned partition, once the consumer has one.
    pub(crate) fn position(&self, tp: &TopicPartition) -> Option<i64> {
        if !self.state.borrow().assigned.contains(tp) {
            return None;
        }
        let positions = self.consumer.position().ok()?;
        offset_of(&positions, tp)
    }
}
