//! The data of a pipeline run: the input backlog (with duplicate IDs), the paced stream the
//! latency phase sends, and the reader that timestamps when outputs become visible.

use crate::ids::id;
use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the input backlog was made and how fast the broker took it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SeedStats {
    /// Records produced.
    pub messages: u64,
    /// Distinct message IDs among them.
    pub unique_ids: u64,
    /// Records whose ID was sent before (redeliveries / resends).
    pub duplicates: u64,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    /// Records acknowledged per second: the broker's ingest rate for one idempotent producer.
    pub msgs_per_s: f64,
}

fn send_retrying(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
}

/// Produces `messages` records of `value_bytes` to `topic`: key = message ID = header
/// `message-id`, so a resent ID lands on the partition of its original. A share `dup_share`
/// of the records resend an earlier ID: half of them within 50 IDs of the newest one (a
/// producer retry), half any earlier ID (a replay from upstream).
pub fn seed_input(
    bootstrap: &str,
    topic: &str,
    messages: u64,
    value_bytes: usize,
    dup_share: f64,
    seed: u64,
) -> anyhow::Result<SeedStats> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .context("creating the seeding producer")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let value: Vec<u8> = (0..value_bytes)
        .map(|_| rng.gen_range(b'a'..=b'z'))
        .collect();
    let started = Instant::now();
    let mut unique = 0u64;
    let mut duplicates = 0u64;
    for _ in 0..messages {
        let n = if unique > 0 && rng.gen_bool(dup_share) {
            duplicates += 1;
            if rng.gen_bool(0.5) {
                unique - rng.gen_range(1..=unique.min(50))
            } else {
                rng.gen_range(0..unique)
            }
        } else {
            unique += 1;
            unique - 1
        };
        let message_id = id(seed, n);
        let record = BaseRecord::to(topic)
            .key(&message_id[..])
            .payload(value.as_slice())
            .headers(OwnedHeaders::new().insert(Header {
                key: "message-id",
                value: Some(&message_id[..]),
            }));
        send_retrying(&producer, record)?;
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(300))
        .context("flushing the seeding producer")?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(SeedStats {
        messages,
        unique_ids: unique,
        duplicates,
        value_bytes,
        seconds,
        msgs_per_s: messages as f64 / seconds,
    })
}

/// Milliseconds since the Unix epoch, with sub-millisecond precision.
fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// End-to-end latency samples of the paced phase.
#[derive(Debug, Clone, Default)]
pub struct LatencySamples {
    /// Paced records sent.
    pub sent: u64,
    /// Milliseconds from each paced record's producer timestamp (`CreateTime`, set when it
    /// was sent and carried unchanged into the output record) to the moment a read_committed
    /// consumer of the output topic received it.
    pub latencies_ms: Vec<f64>,
}

/// Sends `rate` records per second for `seconds` to `input` (fresh IDs `{label}-{n}`, so a
/// deduplicating pipeline forwards every one) while a read_committed consumer of `output`
/// timestamps their arrival. Waits up to `drain` after the last send for stragglers.
#[allow(clippy::too_many_arguments)]
pub fn measure_latency(
    bootstrap: &str,
    input: &str,
    output: &str,
    partitions: i32,
    label: &str,
    rate: u64,
    seconds: f64,
    value_bytes: usize,
    drain: Duration,
) -> anyhow::Result<LatencySamples> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Assigned, never subscribed or committed: the group only satisfies the client.
        .set(
            "group.id",
            exactly_testkit::broker::unique_name("bench-reader"),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        // Ask again soon when nothing is there: the reader's own wait adds to what it measures.
        .set("fetch.wait.max.ms", "10")
        .set("receive.message.max.bytes", "1000000000")
        .create()
        .context("creating the latency reader")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, end) = reader
            .fetch_watermarks(output, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {output}-{p}"))?;
        tpl.add_partition_offset(output, p, Offset::Offset(end))?;
    }
    reader
        .assign(&tpl)
        .context("assigning the latency reader")?;
    // Let the reader settle on its offsets before the first paced send.
    let _ = reader.poll(Duration::from_millis(200));

    let total = (rate as f64 * seconds).round() as u64;
    let prefix = format!("{label}-");
    let sender_input = input.to_owned();
    let sender_bootstrap = bootstrap.to_owned();
    let sender_prefix = prefix.clone();
    let sender = std::thread::spawn(move || -> anyhow::Result<u64> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &sender_bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .context("creating the paced producer")?;
        let value = vec![b'l'; value_bytes];
        // Warm up first: an idempotent producer cannot send before it has its producer id,
        // and the first records of a fresh producer wait for that (about 0.5 s on the test
        // broker), which would show up as a latency tail that is not the pipeline's.
        let warm_id = format!("warmup-{sender_prefix}");
        send_retrying(
            &producer,
            BaseRecord::to(&sender_input)
                .key(warm_id.as_bytes())
                .payload(value.as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "message-id",
                    value: Some(warm_id.as_bytes()),
                })),
        )?;
        producer
            .flush(Duration::from_secs(30))
            .context("flushing the paced producer's warm-up record")?;
        let started = Instant::now();
        for n in 0..total {
            // Send record n at its scheduled time (started + n / rate).
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let message_id = format!("{sender_prefix}{n:012}");
            let record = BaseRecord::to(&sender_input)
                .key(message_id.as_bytes())
                .payload(value.as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "message-id",
                    value: Some(message_id.as_bytes()),
                }));
            send_retrying(&producer, record)?;
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(60))
            .context("flushing the paced producer")?;
        Ok(total)
    });

    let mut latencies_ms = Vec::with_capacity(total as usize);
    let mut sender = Some(sender);
    let mut sent = 0;
    let mut drain_deadline: Option<Instant> = None;
    while (latencies_ms.len() as u64) < total {
        if let Some(m) = reader.poll(Duration::from_millis(5)) {
            let received = now_ms_f64();
            let m = m.context("reading the output")?;
            let is_paced = m.key().is_some_and(|k| k.starts_with(prefix.as_bytes()));
            if let (true, Some(ts)) = (is_paced, m.timestamp().to_millis()) {
                latencies_ms.push(received - ts as f64);
            }
        }
        if sender
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            let handle = sender.take().expect("checked above");
            sent = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the paced producer panicked"))??;
            drain_deadline = Some(Instant::now() + drain);
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            eprintln!(
                "latency phase: {} of {total} paced records arrived within {drain:?} after the last send",
                latencies_ms.len()
            );
            break;
        }
    }
    if let Some(handle) = sender {
        sent = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the paced producer panicked"))??;
    }
    Ok(LatencySamples { sent, latencies_ms })
}
