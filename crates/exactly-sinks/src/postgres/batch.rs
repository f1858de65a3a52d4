//! [`PgBatch`]: one task's buffered effects, flushed in one database transaction together
//! with their message IDs.

use super::{on_connection, PgSink};
use crate::error::SinkError;
use exactly_core::Context;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_postgres::Transaction;

/// Applies effects inside the sink's database transaction.
///
/// `apply` gets, in input order, the effects whose message ID is new to the sink (the others
/// were applied before and are skipped). It runs inside the same transaction as the insert of
/// those IDs: if it fails, nothing of the batch is applied and no ID is recorded. It may run
/// more than once for the same effects when an attempt fails transiently and is retried
/// (each attempt is a fresh transaction, so only the committed one counts).
///
/// Return [`SinkError::Postgres`] (via `?`) for database errors; they are classified as
/// transient or permanent. Validate input in `process` (dead-letter what can never apply), not
/// here: a permanent error here stops the app.
// The futures run on the sink's own runtime through `block_on` on the calling thread: they
// need not be `Send`, so plain `async fn` is the right signature.
#[allow(async_fn_in_trait)]
pub trait PgApply {
    /// One effect (e.g. a payment to book).
    type Effect;
    /// Applies `effects` with `txn`.
    async fn apply(
        &mut self,
        txn: &Transaction<'_>,
        effects: &[&Self::Effect],
    ) -> Result<(), SinkError>;
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Distinct message IDs in the batch.
    pub ids: usize,
    /// IDs new to the sink (inserted into the dedup table).
    pub new_ids: usize,
    /// IDs the sink had already applied (their effects were skipped).
    pub skipped_ids: usize,
    /// Effects applied.
    pub applied_effects: usize,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
}

struct Staged<E> {
    id: Vec<u8>,
    partition: i32,
    offset: i64,
    effect: E,
}

/// The effects one task buffered in the open Kafka transaction. Stage them in `process`,
/// [`flush`](Self::flush) them in `Processor::flush`, [`discard`](Self::discard) them in
/// `Processor::abort`.
///
/// Every effect is keyed by its record's message ID; effects staged under one ID apply
/// together or not at all.
pub struct PgBatch<E> {
    sink: PgSink,
    topic: String,
    staged: Vec<Staged<E>>,
}

impl<E> std::fmt::Debug for PgBatch<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBatch")
            .field("sink", &self.sink)
            .field("topic", &self.topic)
            .field("staged", &self.staged.len())
            .finish()
    }
}

impl<E> PgBatch<E> {
    /// An empty batch of `sink` for records of input `topic`.
    pub fn new(sink: PgSink, topic: impl Into<String>) -> Self {
        Self {
            sink,
            topic: topic.into(),
            staged: Vec::new(),
        }
    }

    /// Stages `effect` under the message ID of the record `ctx` belongs to.
    pub fn stage(&mut self, ctx: &Context<'_>, effect: E) -> Result<(), SinkError> {
        let id = ctx.message_id().ok_or(SinkError::MissingId {
            offset: ctx.offset(),
        })?;
        self.stage_with_id(id.to_vec(), ctx.partition(), ctx.offset(), effect);
        Ok(())
    }

    /// Stages `effect` under an explicit message ID (from `partition`/`offset` of the input).
    pub fn stage_with_id(&mut self, id: Vec<u8>, partition: i32, offset: i64, effect: E) {
        self.staged.push(Staged {
            id,
            partition,
            offset,
            effect,
        });
    }

    /// Effects staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }
    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }
    /// Drops the staged effects (the Kafka transaction aborted: they will be redelivered).
    pub fn discard(&mut self) {
        self.staged.clear();
    }

    /// Applies the staged effects of new message IDs in one database transaction (see the
    /// module docs), retrying transient errors with the sink's backoff. On `Ok` the batch is
    /// empty; on `Err` it keeps its effects (the runtime then aborts, and `discard` runs).
    /// An empty batch touches no database.
    pub fn flush<A: PgApply<Effect = E>>(
        &mut self,
        apply: &mut A,
    ) -> Result<FlushReport, SinkError> {
        self.flush_within(apply, None)
    }

    /// [`flush`](Self::flush) within `time_left` (the Kafka transaction's
    /// [`FlushContext::time_left`](exactly_core::FlushContext::time_left)): an attempt still
    /// running then is cancelled, and no retry starts that would end after it; the flush
    /// then fails transiently ([`SinkError::OutOfTime`], or the last attempt's error).
    pub fn flush_within<A: PgApply<Effect = E>>(
        &mut self,
        apply: &mut A,
        time_left: Option<Duration>,
    ) -> Result<FlushReport, SinkError> {
        if self.staged.is_empty() {
            return Ok(FlushReport::default());
        }
        let sink = self.sink.clone();
        let config = sink.config();
        let metrics = sink.metrics();
        let name = config.name.as_str();
        let started = Instant::now();
        let deadline = time_left.map(|d| started + d);
        let out_of_time = || SinkError::OutOfTime {
            time_left_ms: time_left.map_or(0, |d| d.as_millis() as u64),
        };
        let mut attempt = 1;
        loop {
            let once = flush_once(&sink, &self.topic, &self.staged, apply);
            let result = match deadline {
                None => sink.block_on(once),
                Some(deadline) => sink.block_on(async {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, once)
                        .await
                        .unwrap_or_else(|_| Err(out_of_time()))
                }),
            };
            match result {
                Ok(mut report) => {
                    report.attempts = attempt;
                    metrics
                        .commit_seconds
                        .with_label_values(&[name])
                        .observe(started.elapsed().as_secs_f64());
                    metrics
                        .batches_committed_total
                        .with_label_values(&[name])
                        .inc();
                    metrics
                        .effects_applied_total
                        .with_label_values(&[name])
                        .inc_by(report.applied_effects as u64);
                    metrics
                        .duplicates_skipped_total
                        .with_label_values(&[name])
                        .inc_by(report.skipped_ids as u64);
                    if report.skipped_ids > 0 {
                        tracing::info!(sink = name, topic = %self.topic, skipped = report.skipped_ids, "sink skipped message IDs it had applied before");
                    }
                    self.staged.clear();
                    return Ok(report);
                }
                Err(e)
                    if e.is_transient()
                        && attempt < config.retry.max_attempts
                        && deadline
                            .is_none_or(|d| Instant::now() + config.retry.backoff(attempt) < d) =>
                {
                    metrics.retries_total.with_label_values(&[name]).inc();
                    let delay = config.retry.backoff(attempt);
                    tracing::warn!(sink = name, attempt, error = %e, ?delay, "sink transaction failed; retrying");
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(e) => {
                    metrics
                        .flush_failures_total
                        .with_label_values(&[name])
                        .inc();
                    tracing::warn!(sink = name, attempt, error = %e, transient = e.is_transient(), "sink flush failed");
                    return Err(e);
                }
            }
        }
    }
}

/// One attempt: BEGIN; insert the IDs (new ones come back); apply the new IDs' effects;
/// COMMIT. Any error drops the transaction (rolled back with the connection or by the server).
async fn flush_once<E, A: PgApply<Effect = E>>(
    sink: &PgSink,
    topic: &str,
    staged: &[Staged<E>],
    apply: &mut A,
) -> Result<FlushReport, SinkError> {
    // Distinct IDs in byte order (the order the insert takes the index entries in), each with
    // the source of its first record.
    let mut order: Vec<usize> = (0..staged.len()).collect();
    order.sort_by(|a, b| staged[*a].id.cmp(&staged[*b].id).then(a.cmp(b)));
    order.dedup_by(|a, b| staged[*a].id == staged[*b].id);
    let ids: Vec<&[u8]> = order.iter().map(|i| staged[*i].id.as_slice()).collect();
    let partitions: Vec<i32> = order.iter().map(|i| staged[*i].partition).collect();
    let offsets: Vec<i64> = order.iter().map(|i| staged[*i].offset).collect();

    let inner = &sink.inner;
    on_connection(&inner.pool, async |client| {
        let txn = client.transaction().await?;
        let insert = txn.prepare_cached(&inner.sql.insert_ids).await?;
        let rows = txn
            .query(
                &insert,
                &[&inner.config.consumer, &topic, &ids, &partitions, &offsets],
            )
            .await?;
        let mut new_ids: HashSet<Vec<u8>> = HashSet::with_capacity(rows.len());
        for row in &rows {
            new_ids.insert(row.try_get::<_, Vec<u8>>(0)?);
        }
        let effects: Vec<&E> = staged
            .iter()
            .filter(|s| new_ids.contains(&s.id))
            .map(|s| &s.effect)
            .collect();
        if !effects.is_empty() {
            apply.apply(&txn, &effects).await?;
        }
        txn.commit().await?;
        Ok(FlushReport {
            ids: ids.len(),
            new_ids: new_ids.len(),
            skipped_ids: ids.len() - new_ids.len(),
            applied_effects: effects.len(),
            attempts: 0,
        })
    })
    .await
}
