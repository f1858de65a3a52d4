//! Delivery tracking for a stream thread's producer: the changelog checkpoints come from
//! delivery reports.

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// What the delivery reports of the current transaction said.
#[derive(Debug, Default)]
pub struct DeliveryState {
    /// Highest delivered offset per changelog (topic, partition).
    pub changelog_last: HashMap<(String, i32), i64>,
    /// Records delivered per topic (outputs and dead letters), for metrics.
    pub delivered: HashMap<String, u64>,
    /// The first delivery error, if any (the transaction must abort).
    pub error: Option<DeliveryError>,
}

/// A failed delivery.
#[derive(Debug, Clone)]
pub struct DeliveryError {
    /// What the client or broker said.
    pub error: KafkaError,
    /// The number of the send that failed.
    pub seq: u64,
    /// Its topic.
    pub topic: String,
}

/// Producer context: collects delivery reports. It runs on the stream thread inside
/// `poll`/`flush`, so the mutex is never contended.
#[derive(Debug)]
pub struct DeliveryTracker {
    changelog_topics: HashSet<String>,
    state: Mutex<DeliveryState>,
    /// librdkafka reported all brokers down since this producer was made.
    outage: std::sync::atomic::AtomicBool,
}

impl DeliveryTracker {
    /// A tracker that records offsets of the given changelog topics.
    pub fn new(changelog_topics: impl IntoIterator<Item = String>) -> Self {
        Self {
            changelog_topics: changelog_topics.into_iter().collect(),
            state: Mutex::default(),
            outage: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether librdkafka reported all brokers down since this producer was made.
    pub fn saw_outage(&self) -> bool {
        self.outage.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the state of the finished transaction and resets it.
    pub fn take(&self) -> DeliveryState {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the first delivery error of the current batch, if any.
    pub fn take_error(&self) -> Option<DeliveryError> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .take()
    }

    /// The first delivery error of the current transaction, if any.
    pub fn error(&self) -> Option<DeliveryError> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .clone()
    }
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::log_librdkafka("producer", level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.outage
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::error!(client = "producer", "librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryTracker {
    /// The send's number in its transaction ([`exactly_core::engine::StreamClients::send`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
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
            Err((e, msg)) => {
                if state.error.is_none() {
                    state.error = Some(DeliveryError {
                        error: e.clone(),
                        seq: seq as u64,
                        topic: msg.topic().to_owned(),
                    });
                }
            }
        }
    }
}
