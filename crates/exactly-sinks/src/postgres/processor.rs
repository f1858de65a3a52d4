//! [`PgSinkProcessor`]: a [`Processor`] made of a [`PgHandler`] and a [`PgBatch`].

use super::batch::{PgApply, PgBatch};
use super::PgSink;
use exactly_core::{Context, FlushContext, InitContext, ProcessError, Processor, Record};

/// The application side of a PostgreSQL sink: what effect a record has, and how effects are
/// applied in the sink's transaction ([`PgApply`]).
pub trait PgHandler: PgApply + Send + 'static {
    /// The effect of `record` (`None`: nothing to apply for it). Runs inside the Kafka
    /// transaction like any `process`: dead-letter invalid input here
    /// (`ProcessError::dead_letter`); outputs sent with `ctx.send` commit with the Kafka
    /// transaction, after the sink's database transaction.
    fn effect(
        &mut self,
        record: &Record<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Self::Effect>, ProcessError>;

    /// Called when the task starts (see [`Processor::init`]).
    fn init(&mut self, _ctx: &mut InitContext<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// A processor that applies each record's effect to PostgreSQL exactly once: effects are
/// buffered during the Kafka transaction, applied with their message IDs in one database
/// transaction at the pre-commit flush, and discarded on abort.
///
/// ```no_run
/// use exactly_core::{Context, ProcessError, Record, TaskId};
/// use exactly_sinks::postgres::{PgApply, PgHandler, PgSink, PgSinkConfig, PgSinkProcessor};
/// use exactly_sinks::{SinkError, SinkMetrics};
/// use tokio_postgres::Transaction;
///
/// struct CountEvents;
/// impl PgApply for CountEvents {
///     type Effect = i64;
///     async fn apply(&mut self, txn: &Transaction<'_>, effects: &[&i64]) -> Result<(), SinkError> {
///         let total: i64 = effects.iter().copied().sum();
///         txn.execute("UPDATE counter SET n = n + $1", &[&total]).await?;
///         Ok(())
///     }
/// }
/// impl PgHandler for CountEvents {
///     fn effect(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<Option<i64>, ProcessError> {
///         Ok(Some(1))
///     }
/// }
///
/// let sink = PgSink::new(
///     PgSinkConfig::new("host=127.0.0.1 user=postgres dbname=test", "my-app"),
///     SinkMetrics::unregistered(),
/// )?;
/// sink.migrate()?;
/// let factory = move |task: &TaskId| PgSinkProcessor::new(sink.clone(), task, CountEvents);
/// # let _ = factory;
/// # Ok::<(), SinkError>(())
/// ```
pub struct PgSinkProcessor<H: PgHandler> {
    handler: H,
    batch: PgBatch<H::Effect>,
}

impl<H: PgHandler> PgSinkProcessor<H> {
    /// A processor for `task` applying effects through `sink`.
    pub fn new(sink: PgSink, task: &exactly_core::TaskId, handler: H) -> Self {
        Self {
            handler,
            batch: PgBatch::new(sink, task.topic.to_string()),
        }
    }
    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

impl<H: PgHandler> Processor for PgSinkProcessor<H>
where
    H::Effect: Send + 'static,
{
    fn init(&mut self, ctx: &mut InitContext<'_>) -> Result<(), ProcessError> {
        self.batch.discard();
        self.handler.init(ctx)
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if let Some(effect) = self.handler.effect(record, ctx)? {
            // Without an ID the sink cannot deduplicate: never apply such an effect blindly.
            self.batch
                .stage(ctx, effect)
                .map_err(|e| ProcessError::dead_letter(e.to_string()))?;
        }
        Ok(())
    }

    fn flush(&mut self, ctx: &mut FlushContext<'_>) -> Result<(), ProcessError> {
        self.batch
            .flush_within(&mut self.handler, ctx.time_left())
            .map(drop)
            .map_err(|e| e.into_process_error())
    }

    fn abort(&mut self) {
        self.batch.discard();
    }
}
