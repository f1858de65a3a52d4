//! [`KafkaClients`]: the engine's [`StreamClients`] on rdkafka — one stream thread's group
//! consumer, transactional producer, restore consumer and watermark client. Every method is
//! one client request; the protocol is the engine's.

mod member;
mod producer;
mod restore;

pub use member::KafkaBatch;

use crate::config::{all_changelogs, subscribed_topics, Guarantee, RuntimeConfig};
use crate::error::RuntimeError;
#[cfg(feature = "failpoints")]
use crate::failpoint;
use crate::writer::DeliveryTracker;
use exactly_core::engine::{
    ClientError, ClientErrorKind, Delivered, Isolation, Polled, SeekTo, Step, StreamClients,
    TopicPartition,
};
use exactly_core::{Output, RecordKind};
use member::{is_missing_topic, offset_of, tpl_of, LogContext, MemberContext};
use producer::{ProducerMaker, REQUEST_TIMEOUT};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use restore::RestoreReader;
use std::cell::RefCell;
use std::time::Duration;

/// Serves the events waiting in `consumer`'s queue: its logs (librdkafka hands a client's
/// logs to the app only when its queue is polled, and keeps them until then), error events
/// (logged at debug) and, for a consumer with nothing assigned, stale records (dropped).
/// Call it for clients nothing else polls, and before dropping a short-lived one.
pub fn serve_events<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    // One event per poll; events arriving meanwhile wait for the next call.
    for _ in 0..pending_events(consumer.client()) {
        if let Some(Err(e)) = consumer.poll(Duration::ZERO) {
            tracing::debug!(error = %e, "client error event");
        }
    }
}

/// How many events wait in the main queue of `client` (or the queue it is forwarded to).
fn pending_events<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>) -> usize {
    // SAFETY: the handle is valid while `client` lives; the queue reference taken here is
    // released before returning.
    unsafe {
        let queue = rdkafka::bindings::rd_kafka_queue_get_main(client.native_ptr());
        let n = rdkafka::bindings::rd_kafka_queue_length(queue);
        rdkafka::bindings::rd_kafka_queue_destroy(queue);
        n
    }
}

/// The base config of a stream thread's clients: [`RuntimeConfig::client_config`] (bootstrap
/// and the `[kafka]` table) and a client id `{txn_id}-{role}` ([`RuntimeConfig::client_id`]).
fn client_config(config: &RuntimeConfig, txn_id: &str, role: &str) -> ClientConfig {
    let mut c = config.client_config(&format!("{txn_id}-{role}"));
    // The test broker ignores fetch.max.bytes; a high receive limit keeps big fetches legal
    // (unless the `[kafka]` table sets it).
    if !config.kafka.contains_key("receive.message.max.bytes") {
        c.set("receive.message.max.bytes", "1000000000");
    }
    c
}

/// What a client error means to the engine. `otherwise` is the kind of an error no rule
/// names (retriable for reads, abortable for the transaction's writes).
fn classify(during: &'static str, e: KafkaError, otherwise: ClientErrorKind) -> ClientError {
    use ClientErrorKind as K;
    let code = e.rdkafka_error_code();
    let fenced = matches!(
        code,
        Some(Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch)
    );
    let kind = match &e {
        KafkaError::Transaction(t) if t.is_fatal() => {
            if fenced {
                K::ProducerFenced
            } else if producer_state_broke(code) {
                K::ProducerFailed
            } else {
                K::Fatal
            }
        }
        KafkaError::Transaction(t) if t.txn_requires_abort() => match code {
            Some(Code::FencedInstanceId) => K::FencedInstance,
            Some(Code::IllegalGeneration | Code::UnknownMemberId) => K::StaleMember,
            _ => K::Abortable,
        },
        KafkaError::Transaction(t) if t.is_retriable() => K::Retriable,
        // `commit_transaction` flushes first; a flush that timed out has not started the
        // commit, and the records still in flight either arrive or fail (then the
        // transaction requires an abort).
        KafkaError::Flush(Code::OperationTimedOut) => K::Retriable,
        _ if fenced => K::ProducerFenced,
        _ => match code {
            Some(Code::FencedInstanceId) => K::FencedInstance,
            Some(Code::IllegalGeneration | Code::UnknownMemberId) => K::StaleMember,
            Some(Code::UnknownTopicOrPartition | Code::UnknownTopic) => K::UnknownTopic,
            Some(
                Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::TransactionalIdAuthorizationFailed
                | Code::ClusterAuthorizationFailed,
            ) => K::Fatal,
            _ => otherwise,
        },
    };
    ClientError::new(kind, during, e)
}

/// Whether a fatal producer error is about the producer's own idempotence state, which a new
/// producer starts afresh: the sequence numbers of a partition broke (it was deleted and
/// created again, or the broker lost the producer's state).
fn producer_state_broke(code: Option<Code>) -> bool {
    matches!(
        code,
        Some(
            Code::OutOfOrderSequenceNumber
                | Code::DuplicateSequenceNumber
                | Code::UnknownProducerId
                | Code::InvalidProducerIdMapping
                | Code::Inconsistent
        )
    )
}

/// Whether a send or delivery failed because its topic does not exist (any more).
fn topic_missing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition)
    )
}

/// Whether the broker (or librdkafka, before sending) refused a record for good: sending it
/// again fails again. Too large for the topic or the producer, invalid for the topic (no key
/// for a compacted topic, corrupt), a timestamp out of the topic's range, or not authorized.
fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::InvalidTimestamp
                | Code::TopicAuthorizationFailed
        )
    )
}

/// The [`record_error`] of a failed delivery.
fn delivery_error(failed: crate::writer::DeliveryError) -> ClientError {
    record_error("delivery", failed.error, failed.seq, &failed.topic)
}

/// The error of send `seq` to `topic` (when sent, or at its delivery): refused for good, or
/// its topic missing, about that record; anything else aborts the transaction.
fn record_error(during: &'static str, e: KafkaError, seq: u64, topic: &str) -> ClientError {
    if refused_for_good(&e) {
        ClientError::new(ClientErrorKind::Rejected, during, e).about_record(seq)
    } else if topic_missing(&e) {
        ClientError::new(
            ClientErrorKind::UnknownTopic,
            during,
            format!("output topic `{topic}` does not exist ({e}): create it again (with its partitions) or fix the output"),
        )
        .about_record(seq)
    } else {
        write(during)(e)
    }
}

/// The clients of one stream thread.
pub(crate) struct KafkaClients {
    consumer: BaseConsumer<MemberContext>,
    producer: RefCell<BaseProducer<DeliveryTracker>>,
    maker: ProducerMaker,
    /// [`RuntimeConfig::renew_producer_after_outage`](crate::RuntimeConfig).
    renew_after_outage: bool,
    restore: RestoreReader,
    /// Asks for high watermarks (read_uncommitted), to see open transactions.
    watermarks: BaseConsumer<LogContext>,
    /// Deletes purged repartition records; made at its first use (only the global dedup
    /// scope purges).
    admin: std::cell::OnceCell<AdminClient<DefaultClientContext>>,
    admin_config: ClientConfig,
    /// librdkafka's `commit_transaction` was called in the open transaction: a resumed
    /// commit (after "retry call to resume") may be in progress and is not drained again.
    /// Cleared when the next transaction begins.
    commit_called: std::cell::Cell<bool>,
    transaction_timeout: Duration,
}

fn created(during: &'static str) -> impl FnOnce(KafkaError) -> RuntimeError {
    move |source| RuntimeError::Kafka { during, source }
}

impl KafkaClients {
    /// Serves the queues of the clients nothing else polls now (the watermark client, the
    /// restore consumer between restores, the producer of a thread with nothing to send):
    /// librdkafka hands their logs and events to the app only when their queue is polled, and
    /// keeps them until then. The producer's delivery reports go to its tracker as in a flush.
    fn serve_idle_clients(&self) {
        serve_events(&self.watermarks);
        self.restore.serve_idle();
        let producer = self.producer.borrow();
        for _ in 0..pending_events(producer.client()) {
            producer.poll(Duration::ZERO);
        }
    }

    /// Creates the clients of stream thread `txn_id`: the producer first (its
    /// `init_transactions` fences a predecessor and aborts its open transaction, crash point
    /// "after sends, before commit"), then the consumer, which subscribes.
    pub(crate) fn new(config: &RuntimeConfig, txn_id: &str) -> Result<Self, RuntimeError> {
        let exactly_once = config.guarantee == Guarantee::ExactlyOnce;
        let mut pc = client_config(config, txn_id, "producer");
        // A producer must not create a missing output topic with the broker's defaults (a
        // deleted topic would come back with `num.partitions` partitions and a stranger's
        // config); sends to it fail, and the engine waits until the topic is back.
        if !config.kafka.contains_key("allow.auto.create.topics") {
            pc.set("allow.auto.create.topics", "false");
        }
        pc.set("enable.idempotence", "true");
        // Throughput defaults, which the `[kafka]` table may change.
        for (key, value) in [
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "1000000"),
        ] {
            if !config.kafka.contains_key(key) {
                pc.set(key, value);
            }
        }
        if exactly_once {
            pc.set("transactional.id", txn_id).set(
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            );
        }
        let maker = ProducerMaker {
            config: pc,
            changelogs: all_changelogs(config),
            transactional: exactly_once,
            init_timeout: config.startup_timeout,
        };
        let producer = maker.make().map_err(created("creating the producer"))?;
        let mut rc = client_config(config, txn_id, "restore");
        rc.set("group.id", format!("{}-restore", config.app_id))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        let restore = rc
            .create_with_context(LogContext)
            .map_err(created("creating the restore consumer"))?;
        let mut wc = client_config(config, txn_id, "watermarks");
        wc.set("isolation.level", "read_uncommitted");
        let watermarks = wc
            .create_with_context(LogContext)
            .map_err(created("creating the watermark client"))?;
        let mut cc = client_config(config, txn_id, "consumer");
        cc.set("group.id", &config.app_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest");
        if !config.kafka.contains_key("partition.assignment.strategy") {
            cc.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if config.static_membership {
            // A restarted instance takes its partitions back at once, without a rebalance; one
            // that does not come back loses them after `session.timeout.ms`.
            cc.set("group.instance.id", txn_id);
        }
        let consumer: BaseConsumer<MemberContext> = cc
            .create_with_context(MemberContext::default())
            .map_err(created("creating the consumer"))?;
        let topics = subscribed_topics(config);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(created("subscribe"))?;
        Ok(Self {
            consumer,
            producer: RefCell::new(producer),
            maker,
            renew_after_outage: config.renew_producer_after_outage,
            restore: RestoreReader::new(restore),
            watermarks,
            admin: std::cell::OnceCell::new(),
            admin_config: client_config(config, txn_id, "admin"),
            commit_called: std::cell::Cell::new(false),
            transaction_timeout: config.transaction_timeout,
        })
    }

    /// Between transactions: replaces a producer that saw all brokers down with a new one
    /// (`renew_producer_after_outage`). A restarted local test broker no longer aborts the
    /// open transaction of a producer initialised before its restart when the
    /// `transactional.id` is initialised again, so a crash in such a transaction would leave
    /// it open for ever (that broker has no transaction timeout) and hold the last stable
    /// offset of every partition it wrote. A producer initialised after the restart does not
    /// have that problem. If the new producer cannot be made (the brokers are still down),
    /// this transaction runs on the old one and the next one tries again.
    fn renew_producer_after_outage(&self) {
        let producer = self.producer.borrow();
        producer.poll(Duration::ZERO); // serves the error events of the outage
        if !producer.context().saw_outage() {
            return;
        }
        drop(producer);
        match self.reset_producer() {
            Ok(()) => {
                tracing::info!("all brokers were down since this producer was made: the next transaction runs on a new one (renew_producer_after_outage)");
            }
            Err(e) => {
                tracing::warn!(error = %e, "making a new producer after the brokers were down failed; the next transaction tries again (renew_producer_after_outage)");
            }
        }
    }

    /// Leaves the group (a dynamic member at once; a static one's partitions wait for its
    /// session timeout or its restart). Rebalances from now on complete in the callback.
    pub(crate) fn leave(&self) {
        self.consumer.context().close();
        self.consumer.unsubscribe();
        let _ = self.consumer.poll(Duration::ZERO);
    }
}

fn read(during: &'static str) -> impl FnOnce(KafkaError) -> ClientError {
    move |e| classify(during, e, ClientErrorKind::Retriable)
}

fn write(during: &'static str) -> impl FnOnce(KafkaError) -> ClientError {
    move |e| classify(during, e, ClientErrorKind::Abortable)
}

fn offsets_tpl(offsets: &[(TopicPartition, i64)]) -> Result<TopicPartitionList, ClientError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, o) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
            .map_err(write("building offsets"))?;
    }
    Ok(tpl)
}

impl KafkaClients {
    /// The failed delivery of the open transaction, if the broker refused the record for good
    /// or its topic is missing.
    fn refused_delivery(&self, p: &BaseProducer<DeliveryTracker>) -> Option<ClientError> {
        let failed = p.context().error()?;
        (refused_for_good(&failed.error) || topic_missing(&failed.error))
            .then(|| delivery_error(failed))
    }
}

impl StreamClients for KafkaClients {
    type Records<'a> = KafkaBatch<'a>;
    type ChangelogRecords<'a> = KafkaBatch<'a>;

    fn poll(&self, max: usize, timeout: Duration) -> Result<Polled<KafkaBatch<'_>>, ClientError> {
        self.serve_idle_clients();
        let context = self.consumer.context();
        let mut messages = Vec::new();
        let mut wait = timeout;
        // A rebalance ends the batch: it is handled before the next poll.
        while messages.len() < max && !context.has_event() {
            match self.consumer.poll(wait) {
                Some(Ok(m)) => messages.push(m),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if e.rdkafka_error_code() == Some(Code::FencedInstanceId) => {
                    return Err(ClientError::new(ClientErrorKind::FencedInstance, "poll", e))
                }
                Some(Err(e)) if is_missing_topic(&e) => {
                    return Err(ClientError::new(
                        ClientErrorKind::UnknownTopic,
                        "poll",
                        format!("an input topic disappeared while running ({e}); recreate it or fix `inputs`"),
                    ))
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error (retrying)"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        Ok(Polled {
            records: KafkaBatch { messages },
            event: context.take_event(),
        })
    }

    fn complete_assign(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        member::complete(&self.consumer, true, partitions).map_err(read("assign"))
    }

    fn complete_revoke(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        member::complete(&self.consumer, false, partitions).map_err(read("unassign"))
    }

    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        self.consumer
            .pause(&tpl_of(partitions))
            .map_err(read("pause"))
    }

    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        self.consumer
            .resume(&tpl_of(partitions))
            .map_err(read("resume"))
    }

    fn seek(&self, tp: &TopicPartition, to: SeekTo) -> Result<(), ClientError> {
        let offset = match to {
            SeekTo::Offset(o) => Offset::Offset(o),
            SeekTo::Beginning => Offset::Beginning,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, offset)
            .map_err(read("seek"))?;
        let result = self
            .consumer
            .seek_partitions(tpl, REQUEST_TIMEOUT)
            .map_err(read("seek"))?;
        match result.elements().iter().find_map(|e| e.error().err()) {
            Some(e) => Err(read("seek")(e)),
            None => Ok(()),
        }
    }

    fn position(&self, tp: &TopicPartition) -> Option<i64> {
        // librdkafka's application position: it moves past transaction markers too.
        let positions = self.consumer.position().ok()?;
        offset_of(&positions, tp)
    }

    fn committed(
        &self,
        partitions: &[TopicPartition],
        within: Duration,
    ) -> Result<Vec<Option<i64>>, ClientError> {
        // With `isolation.level=read_committed` librdkafka asks for stable offsets: the broker
        // answers only once no open transaction holds offsets for the partition (KIP-447);
        // librdkafka asks again until the timeout.
        let committed = self
            .consumer
            .committed_offsets(tpl_of(partitions), within.min(REQUEST_TIMEOUT))
            .map_err(read("committed offsets"))?;
        if let Some(e) = committed.elements().iter().find_map(|e| e.error().err()) {
            return Err(read("committed offsets")(e));
        }
        Ok(partitions
            .iter()
            .map(|tp| offset_of(&committed, tp))
            .collect())
    }

    fn commit_offsets(
        &self,
        offsets: &[(TopicPartition, i64)],
        sync: bool,
    ) -> Result<(), ClientError> {
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.consumer
            .commit(&offsets_tpl(offsets)?, mode)
            .map_err(read("commit offsets"))
    }

    fn assignment_lost(&self) -> bool {
        self.consumer.assignment_lost()
    }

    fn begin_transaction(&self) -> Result<(), ClientError> {
        self.commit_called.set(false);
        if self.renew_after_outage {
            self.renew_producer_after_outage();
        }
        self.producer
            .borrow()
            .begin_transaction()
            .map_err(write("begin_transaction"))
    }

    fn send(
        &self,
        _kind: RecordKind,
        record: &Output,
        seq: u64,
        within: &dyn Fn() -> Duration,
    ) -> Result<(), ClientError> {
        let p = self.producer.borrow();
        producer::send(&p, record, seq, within).map_err(|e| match e {
            producer::SendError::Kafka(e) => {
                let error = record_error("send", e, seq, &record.topic);
                if error.record.is_some() {
                    return error;
                }
                // librdkafka refuses to produce once the transaction is abortable (`_STATE`),
                // which an earlier record's failed delivery makes it: say which record that
                // was, so that the engine can set it aside instead of retrying in vain.
                producer::drain_deliveries(&p, within().min(REQUEST_TIMEOUT));
                self.refused_delivery(&p).unwrap_or(error)
            }
            producer::SendError::QueueFull(waited) => ClientError::new(
                ClientErrorKind::Abortable,
                "send",
                format!(
                    "the producer's queue stayed full for {} ms (the brokers take records slower than the app sends them, or none answers): the transaction aborts before it times out",
                    waited.as_millis()
                ),
            ),
        })
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), ClientError> {
        let metadata = self.consumer.group_metadata().ok_or_else(|| {
            ClientError::new(
                ClientErrorKind::Retriable,
                "send_offsets_to_transaction",
                "the consumer has no group metadata yet",
            )
        })?;
        let p = self.producer.borrow();
        p.send_offsets_to_transaction(&offsets_tpl(offsets)?, &metadata, REQUEST_TIMEOUT)
            .map_err(|e| {
                // A failed delivery makes the transaction abortable: say which record it was.
                producer::drain_deliveries(&p, REQUEST_TIMEOUT);
                self.refused_delivery(&p)
                    .unwrap_or_else(|| write("send_offsets_to_transaction")(e))
            })
    }

    fn commit_transaction(&self, within: Duration) -> Result<Delivered, ClientError> {
        let p = self.producer.borrow();
        if !self.commit_called.get() {
            let drained = producer::drain_deliveries(&p, within);
            if let Some(refused) = self.refused_delivery(&p) {
                return Err(refused);
            }
            // librdkafka's commit is not called yet: aborting is safe, and leaves the abort
            // the rest of the transaction's time. (A resumed commit is not drained first: its
            // own requests count as in flight.)
            if !drained {
                return Err(ClientError::new(
                    ClientErrorKind::Abortable,
                    "commit_transaction",
                    format!(
                        "{} messages were still in flight after {} ms, at the transaction's deadline: aborting it before it times out",
                        p.in_flight_count(),
                        within.as_millis()
                    ),
                ));
            }
        }
        // Each call waits at most the transaction timeout: librdkafka recommends the remaining
        // transaction time, and no record can wait longer than that (`message.timeout.ms` <=
        // `transaction.timeout.ms`). A retriable failure leaves the commit going on: the engine
        // resumes it by calling again.
        self.commit_called.set(true);
        p.commit_transaction(self.transaction_timeout)
            .map_err(write("commit_transaction"))?;
        Ok(producer::delivered(p.context().take()))
    }

    fn abort_transaction(&self) -> Result<(), ClientError> {
        let p = self.producer.borrow();
        let result = producer::abort_transaction(&p).map_err(write("abort_transaction"));
        let _ = p.context().take();
        result
    }

    fn flush(&self) -> Result<Delivered, ClientError> {
        let p = self.producer.borrow();
        producer::drain_deliveries(&p, REQUEST_TIMEOUT);
        let flushed = p.flush(REQUEST_TIMEOUT).map_err(write("flush"));
        if let Some(failed) = p.context().take_error() {
            let _ = p.context().take();
            return Err(delivery_error(failed));
        }
        flushed?;
        Ok(producer::delivered(p.context().take()))
    }

    fn reset_producer(&self) -> Result<(), ClientError> {
        let fresh = self
            .maker
            .make()
            .map_err(read("making a new producer (init_transactions)"))?;
        *self.producer.borrow_mut() = fresh;
        Ok(())
    }

    fn restore_assign(&self, tp: &TopicPartition, from: i64) -> Result<(), ClientError> {
        self.restore
            .assign(tp, from)
            .map_err(read("assigning changelog partitions"))
    }

    fn restore_unassign(&self, tp: &TopicPartition) -> Result<(), ClientError> {
        self.restore.unassign(tp).map_err(read(
            "removing changelog partitions from the restore consumer",
        ))
    }

    fn restore_poll(&self, max: usize, timeout: Duration) -> Result<KafkaBatch<'_>, ClientError> {
        self.restore
            .poll(max, timeout)
            .map_err(read("reading changelogs"))
    }

    fn restore_position(&self, tp: &TopicPartition) -> Option<i64> {
        self.restore.position(tp)
    }

    fn watermarks(
        &self,
        tp: &TopicPartition,
        isolation: Isolation,
        within: Duration,
    ) -> Result<(i64, i64), ClientError> {
        // The read_committed restore consumer reports the last stable offset as the end, the
        // read_uncommitted client the high watermark.
        let client = match isolation {
            Isolation::ReadCommitted => &self.restore.consumer,
            Isolation::ReadUncommitted => &self.watermarks,
        };
        client
            .fetch_watermarks(&tp.topic, tp.partition, within.min(REQUEST_TIMEOUT))
            .map_err(read("reading watermarks"))
    }

    fn delete_records(
        &self,
        offsets: &[(TopicPartition, i64)],
        within: Duration,
    ) -> Result<(), ClientError> {
        let admin = match self.admin.get() {
            Some(admin) => admin,
            None => {
                let admin = self
                    .admin_config
                    .create()
                    .map_err(read("creating an admin client"))?;
                self.admin.get_or_init(|| admin)
            }
        };
        let opts = AdminOptions::new().request_timeout(Some(within.min(REQUEST_TIMEOUT)));
        let deleted =
            futures_executor::block_on(admin.delete_records(&offsets_tpl(offsets)?, &opts))
                .map_err(read("deleting records"))?;
        match deleted.elements().iter().find_map(|e| e.error().err()) {
            Some(e) => Err(read("deleting records")(e)),
            None => Ok(()),
        }
    }

    fn cached_high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        let topic = std::ffi::CString::new(&*tp.topic).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the handle is the group consumer's, alive as long as `self`; the call only
        // reads the partition's watermarks cached from its last fetch response (no request).
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                tp.partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    fn reached(&self, step: Step) -> Result<(), ClientError> {
        // Crash points exist only in builds for process-level tests (feature `failpoints`).
        #[cfg(feature = "failpoints")]
        failpoint::hit(match step {
            Step::BeforeSend => failpoint::Point::BeforeSend,
            Step::AfterSend => failpoint::Point::AfterSend,
            Step::DuringCommit => failpoint::Point::DuringCommit,
            Step::AfterCommit => failpoint::Point::AfterCommit,
        });
        #[cfg(not(feature = "failpoints"))]
        let _ = step;
        Ok(())
    }
}
