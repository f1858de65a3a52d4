//! The stream thread's producer: transactional (exactly-once) or idempotent (at-least-once),
//! with delivery reports collected for the changelog checkpoints.

use crate::writer::{DeliveryState, DeliveryTracker};
use exactly_core::engine::Delivered;
use exactly_core::Output;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::{Duration, Instant};

/// How long a request the producer makes waits at most.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes producers of one stream thread (the first, and replacements after a fence).
pub(crate) struct ProducerMaker {
    pub(crate) config: ClientConfig,
    pub(crate) changelogs: Vec<String>,
    pub(crate) transactional: bool,
    pub(crate) init_timeout: Duration,
}

impl ProducerMaker {
    /// A producer; a transactional one is initialised (`init_transactions`), which fences any
    /// older producer with its `transactional.id` and aborts its open transaction.
    pub(crate) fn make(&self) -> KafkaResult<BaseProducer<DeliveryTracker>> {
        let producer: BaseProducer<DeliveryTracker> = self
            .config
            .create_with_context(DeliveryTracker::new(self.changelogs.iter().cloned()))?;
        if self.transactional {
            producer.init_transactions(self.init_timeout)?;
        }
        Ok(producer)
    }
}

/// What [`send`] could not do.
pub(crate) enum SendError {
    /// The producer refused the record.
    Kafka(KafkaError),
    /// The local queue stayed full for the whole wait allowed.
    QueueFull(Duration),
}

/// Sends a record (send number `seq` of its transaction, which its delivery report carries),
/// serving delivery reports while the local queue is full, for `within()` at most.
pub(crate) fn send(
    producer: &BaseProducer<DeliveryTracker>,
    out: &Output,
    seq: u64,
    within: &dyn Fn() -> Duration,
) -> Result<(), SendError> {
    let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
    for (k, v) in &out.headers {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(&out.topic, seq as usize).headers(headers);
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
    let mut deadline = None;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                let (deadline, within) = *deadline.get_or_insert_with(|| {
                    let within = within();
                    (Instant::now() + within, within)
                });
                if Instant::now() >= deadline {
                    return Err(SendError::QueueFull(within));
                }
                record = r;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(SendError::Kafka(e)),
        }
    }
}

/// Serves delivery reports until nothing is in flight or `within` passes; returns whether
/// every record sent was delivered (or failed). rdkafka's `flush`, which `commit_transaction`
/// also calls, waits in 100 ms poll slices once the first check finds messages in flight, so
/// every commit took at least 100 ms; 1 ms steps let it start as soon as the last report is
/// in.
///
/// Each step waits in librdkafka's own `rd_kafka_flush`, not in a poll: while a flush runs,
/// librdkafka sends what it queued at once instead of after `linger.ms`, so the commit does not
/// wait for the last batches to linger. (With rdkafka's event-based delivery reports that
/// flush returns after its 1 ms, since the reports wait for this thread to serve them.)
pub(crate) fn drain_deliveries(producer: &BaseProducer<DeliveryTracker>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        // SAFETY: the pointer is the live producer's; librdkafka's flush only reads its state
        // and waits (it serves no callbacks in event mode).
        unsafe {
            rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), 1);
        }
        producer.poll(Duration::ZERO);
    }
    true
}

/// Aborts the producer's transaction. librdkafka's abort purges the queued messages and then
/// waits for their delivery reports, which a `BaseProducer` only gets while polled: abort in
/// short resumable steps (a timed-out abort is retried by calling it again) and poll between.
pub(crate) fn abort_transaction(producer: &BaseProducer<DeliveryTracker>) -> KafkaResult<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        producer.poll(Duration::ZERO);
        match producer.abort_transaction(Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the delivery reports of the finished transaction said.
pub(crate) fn delivered(state: DeliveryState) -> Delivered {
    Delivered {
        changelog_next: state
            .changelog_last
            .into_iter()
            .map(|(k, last)| (k, last + 1))
            .collect(),
        records: state.delivered,
    }
}
