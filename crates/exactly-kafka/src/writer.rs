//! The producer side of a stream thread: delivery tracking (changelog checkpoints come from
//! delivery reports) and the [`TxnWriter`] the task state machine sends through.

use exactly_core::{Output, RecordKind, TxnWriter};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// What the delivery reports of the current transaction said.
#[derive(Debug, Default)]
pub struct DeliveryState {
    /// Highest delivered offset per changelog (topic, partition).
    pub changelog_last: HashMap<(String, i32), i64>,
    /// Records delivered per topic (outputs and dead letters), for metrics.
    pub delivered: HashMap<String, u64>,
    /// The first delivery error, if any (the transaction must abort).
    pub error: Option<KafkaError>,
}

/// Producer context: collects delivery reports. It runs on the stream thread inside
/// `poll`/`flush`, so the mutex is never contended.
#[derive(Debug)]
pub struct DeliveryTracker {
    changelog_topics: HashSet<String>,
    state: Mutex<DeliveryState>,
}

impl DeliveryTracker {
    /// A tracker that records offsets of the given changelog topics.
    pub fn new(changelog_topics: impl IntoIterator<Item = String>) -> Self {
        Self {
            changelog_topics: changelog_topics.into_iter().collect(),
            state: Mutex::default(),
        }
    }

    /// Takes the state of the finished transaction and resets it.
    pub fn take(&self) -> DeliveryState {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the first delivery error of the current batch, if any.
    pub fn take_error(&self) -> Option<KafkaError> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .take()
    }

    /// Whether a delivery failed in the current transaction.
    pub fn has_error(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .is_some()
    }
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::log_librdkafka("producer", level, fac, log_message);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(msg) => {
                let topic = msg.topic();
                if self.changelog_topics.contains(topic) {
                    let slot = state
                        .changelog_last
                        .entry((topic.to_owned(), msg.partition()))
                        .or_insert(-1);
                    *slot = (*slot).max(msg.offset());
                } else if let Some(n) = state.delivered.get_mut(topic) {
                    *n += 1;
                } else {
                    state.delivered.insert(topic.to_owned(), 1);
                }
            }
            Err((e, _)) => {
                if state.error.is_none() {
                    state.error = Some(e.clone());
                }
            }
        }
    }
}

/// Sends task records with the stream thread's producer.
pub struct KafkaTxnWriter<'p> {
    /// The producer.
    pub producer: &'p BaseProducer<DeliveryTracker>,
    /// Records sent through this writer.
    pub sent: u64,
}

impl TxnWriter for KafkaTxnWriter<'_> {
    fn send(&mut self, _kind: RecordKind, out: &Output) -> Result<(), String> {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (k, v) in &out.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&out.topic).headers(headers);
        if let Some(k) = &out.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &out.value {
            record = record.payload(v.as_slice());
        }
        if let Some(p) = out.partition {
            record = record.partition(p);
        }
        if let Some(ts) = out.timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: serve delivery reports to make room.
                    record = r;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("send to {} failed: {e}", out.topic)),
            }
        }
    }
}

/// Flushes with a timeout (helper used by the at-least-once path).
pub fn flush(
    producer: &BaseProducer<DeliveryTracker>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    producer.flush(timeout)
}
