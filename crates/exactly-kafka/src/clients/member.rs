//! The group consumer: rebalance callbacks become engine events, and fetched messages a
//! borrowed record batch.
//!
//! librdkafka calls the rebalance callback inside `poll` and then waits (join state
//! `WAIT_ASSIGN_CALL` / `WAIT_UNASSIGN_CALL`) until the application assigns or unassigns. The
//! callback here only records the event; `poll` returns it to the engine, which commits or
//! aborts the open transaction and closes or opens tasks, and then completes the rebalance
//! (`complete_assign` / `complete_revoke`) in the same loop turn. At close, when no engine
//! serves events any more, the callback completes rebalances itself.

use exactly_core::engine::{GroupEvent, RecordBatch, TopicPartition};
use exactly_core::{HeaderRef, Record};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Consumer context of the group member: records rebalances for the engine.
#[derive(Default)]
pub(crate) struct MemberContext {
    event: Mutex<Option<GroupEvent>>,
    /// Set at close: rebalances are completed in the callback.
    closing: AtomicBool,
}

impl MemberContext {
    /// The rebalance recorded by the last poll, if any.
    pub(crate) fn take_event(&self) -> Option<GroupEvent> {
        self.event.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn has_event(&self) -> bool {
        self.event
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// From now on the callback completes rebalances itself (the engine has stopped).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }
}

pub(crate) fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

pub(crate) fn tpl_of(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

/// Completes a rebalance: the partitions start or stop fetching.
pub(crate) fn complete(
    consumer: &BaseConsumer<MemberContext>,
    assign: bool,
    partitions: &[TopicPartition],
) -> KafkaResult<()> {
    let tpl = tpl_of(partitions);
    match (consumer.rebalance_protocol(), assign) {
        (RebalanceProtocol::Cooperative, true) => consumer.incremental_assign(&tpl),
        (RebalanceProtocol::Cooperative, false) => consumer.incremental_unassign(&tpl),
        (_, true) => consumer.assign(&tpl),
        (_, false) => consumer.unassign(),
    }
}

impl ClientContext for MemberContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::log_librdkafka("consumer", level, fac, msg);
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                GroupEvent::Assigned(partitions(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if consumer.assignment_lost() => {
                GroupEvent::Lost(partitions(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                GroupEvent::Revoked(partitions(tpl))
            }
            other => {
                // librdkafka asks for `assign(NULL)` to resynchronise after a failed rebalance.
                tracing::warn!(error = ?other, "rebalance error; unassigning");
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign after a rebalance error failed");
                }
                return;
            }
        };
        if self.closing.load(Ordering::SeqCst) {
            let (assign, parts) = match &event {
                GroupEvent::Assigned(p) => (true, p),
                GroupEvent::Revoked(p) | GroupEvent::Lost(p) => (false, p),
            };
            if let Err(e) = complete(consumer, assign, parts) {
                tracing::warn!(error = %e, "completing a rebalance at close failed");
            }
            return;
        }
        let mut slot = self.event.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = slot.replace(event) {
            // Cannot happen: a poll stops at the first event and the engine completes it
            // before polling again.
            tracing::error!(
                ?previous,
                "a rebalance event was not handled before the next"
            );
        }
    }

    /// The outcome of an asynchronous offset commit (at least once): a failed one is logged,
    /// and the next commit covers its offsets.
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; the next commit covers its offsets");
        }
    }
}

/// Context of auxiliary clients: routes librdkafka logs to `tracing`.
pub(crate) struct LogContext;
impl ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::log_librdkafka("aux", level, fac, msg);
    }
}
impl ConsumerContext for LogContext {}

/// Messages borrowed from a consumer until its next poll.
pub struct KafkaBatch<'c> {
    pub(crate) messages: Vec<BorrowedMessage<'c>>,
}

impl RecordBatch for KafkaBatch<'_> {
    fn len(&self) -> usize {
        self.messages.len()
    }

    fn with_records<R>(&self, f: impl FnOnce(&[Record<'_>]) -> R) -> R {
        // Headers of all messages in one buffer: no allocation per record.
        let mut headers: Vec<HeaderRef<'_>> = Vec::new();
        let mut spans = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let start = headers.len();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hh = h.get(i);
                    headers.push(HeaderRef {
                        key: hh.key,
                        value: hh.value,
                    });
                }
            }
            spans.push(start..headers.len());
        }
        let records: Vec<Record<'_>> = self
            .messages
            .iter()
            .zip(&spans)
            .map(|(m, span)| Record {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key(),
                value: m.payload(),
                headers: &headers[span.clone()],
            })
            .collect();
        f(&records)
    }
}

/// A position the consumer reports, if it has one.
pub(crate) fn offset_of(tpl: &TopicPartitionList, tp: &TopicPartition) -> Option<i64> {
    tpl.find_partition(&tp.topic, tp.partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        })
}

/// Whether a consumer error means the input topic is gone.
pub(crate) fn is_missing_topic(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic)
    )
}
