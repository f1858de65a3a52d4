//! The PostgreSQL sink: effects and their message IDs in one database transaction.
//!
//! [`PgSink`] owns a connection pool (deadpool + tokio-postgres) and a small tokio runtime of
//! its own, so that synchronous stream threads can block on it (a processor never runs inside
//! a tokio runtime). Each task buffers its effects in a [`PgBatch`]; at the runtime's
//! pre-commit hook ([`exactly_core::Processor::flush`]) the batch runs **one** database
//! transaction:
//!
//! ```sql
//! BEGIN;
//! INSERT INTO <dedup table> (consumer, message_id, ...) SELECT ... ORDER BY message_id
//!     ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id;   -- the new IDs
//! -- the application's SQL for the effects of the new IDs only (PgApply::apply)
//! COMMIT;
//! ```
//!
//! and only then does the runtime commit the Kafka transaction. A conflict means "already
//! applied": the effect is skipped. See `docs/sinks.md` for the crash table.
//!
//! [`PgSinkProcessor`] wraps this into a [`Processor`](exactly_core::Processor) from a
//! [`PgHandler`] (turn a record into an effect; apply effects in a transaction).

mod batch;
mod processor;

pub use batch::{FlushReport, PgApply, PgBatch};
pub use processor::{PgHandler, PgSinkProcessor};

use crate::error::SinkError;
use crate::metrics::SinkMetrics;
use crate::retry::SinkRetry;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

/// Default retention of message IDs in the dedup table: 7 days, the runtime's default dedup
/// retention.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How to reach PostgreSQL and where the sink keeps its message IDs.
#[derive(Debug, Clone)]
pub struct PgSinkConfig {
    /// Connection string, URL (`postgres://user@host:5432/db`) or key-value form
    /// (`host=127.0.0.1 user=postgres dbname=test`).
    pub url: String,
    /// The sink's name: the `sink` label of its metrics and part of its connections'
    /// `application_name`.
    pub name: String,
    /// Who applies the effects: the app id (consumer group). Part of the dedup key, so apps
    /// sharing a dedup table do not see each other's IDs.
    pub consumer: String,
    /// The dedup table (`name` or `schema.name`; letters, digits, `_`).
    pub dedup_table: String,
    /// Pooled connections (default 4).
    pub pool_size: usize,
    /// Connect timeout, also the pool's wait and create timeout (default 2 s).
    pub connect_timeout: Duration,
    /// `lock_timeout` of the sink's sessions (default 5 s): a batch waiting for rows another
    /// (e.g. frozen) instance holds gives up and is retried.
    pub lock_timeout: Duration,
    /// `idle_in_transaction_session_timeout` of the sink's sessions (default 10 s): the server
    /// ends the transaction of an instance that stopped in the middle of one (SIGSTOP, a
    /// hung host), releasing its locks.
    pub idle_in_transaction_timeout: Duration,
    /// `application_name` of the sink's connections (default `exactly-sink-{name}`), e.g. to
    /// find them in `pg_stat_activity`.
    pub application_name: Option<String>,
    /// How transient database errors are retried within one flush.
    pub retry: SinkRetry,
    /// How long message IDs are kept ([`PgSink::delete_expired`]).
    pub ttl: Duration,
    /// How long [`PgSink::migrate`] and [`PgSink::run_migration`] retry a transient error
    /// (default 60 s): a database still starting, a lock another session holds on the
    /// tables longer than `lock_timeout`. Then the migration fails and says why.
    pub migration_timeout: Duration,
}

impl PgSinkConfig {
    /// A config for `consumer` (the app id) writing to the dedup table `exactly_sink_ids`,
    /// with the defaults above.
    pub fn new(url: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: "postgres".to_owned(),
            consumer: consumer.into(),
            dedup_table: "exactly_sink_ids".to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
            application_name: None,
            retry: SinkRetry::default(),
            ttl: DEFAULT_TTL,
            migration_timeout: Duration::from_secs(60),
        }
    }
    /// Sets the sink's name (metrics label).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the dedup table.
    pub fn dedup_table(mut self, table: impl Into<String>) -> Self {
        self.dedup_table = table.into();
        self
    }
    /// Sets the pool size.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, retry: SinkRetry) -> Self {
        self.retry = retry;
        self
    }
    /// Sets the message-ID retention.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets how long the start-up migration retries transient errors.
    pub fn migration_timeout(mut self, within: Duration) -> Self {
        self.migration_timeout = within;
        self
    }
    /// Sets the `lock_timeout` of the sink's sessions.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }
    /// Sets the connections' `application_name`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    fn app_name(&self) -> String {
        self.application_name
            .clone()
            .unwrap_or_else(|| format!("exactly-sink-{}", self.name))
    }
}

/// `name` or `schema.name`, each part `[A-Za-z_][A-Za-z0-9_]*` and at most 63 bytes: the
/// table name is put into SQL text, so only plain identifiers are accepted.
pub fn check_identifier(name: &str) -> Result<(), SinkError> {
    let parts: Vec<&str> = name.split('.').collect();
    let ok = parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 63
                && p.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(SinkError::Config(format!(
            "`{name}` is not a plain table name (letters, digits and `_`, optionally `schema.`)"
        )))
    }
}

/// The SQL of one dedup table.
#[derive(Debug)]
struct Statements {
    create: Vec<String>,
    insert_ids: String,
    delete_expired: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        let bare = table.rsplit('.').next().unwrap_or(table);
        let index = match table.rsplit_once('.') {
            Some((schema, _)) => format!("{schema}.{bare}_applied_at_idx"),
            None => format!("{bare}_applied_at_idx"),
        };
        Self {
            create: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (
                        consumer text NOT NULL,
                        message_id bytea NOT NULL,
                        source_topic text NOT NULL,
                        source_partition integer NOT NULL,
                        source_offset bigint NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now(),
                        PRIMARY KEY (consumer, message_id)
                    )"
                ),
                // Only when the index is missing: CREATE INDEX takes a SHARE lock on the table
                // before it looks whether the index exists, so an instance starting while
                // another session writes to or locks the table would wait (up to
                // `lock_timeout`) for nothing.
                format!(
                    "DO $$ BEGIN
                         IF to_regclass('{index}') IS NULL THEN
                             CREATE INDEX IF NOT EXISTS {bare}_applied_at_idx ON {table} (consumer, applied_at);
                         END IF;
                     END $$"
                ),
            ],
            // Sorted: concurrent batches (two instances around a rebalance) take the unique
            // index entries in one order, so they wait for each other instead of deadlocking.
            insert_ids: format!(
                "INSERT INTO {table} (consumer, message_id, source_topic, source_partition, source_offset)
                 SELECT $1, u.id, $2, u.p, u.o
                 FROM unnest($3::bytea[], $4::int4[], $5::int8[]) AS u(id, p, o)
                 ORDER BY u.id
                 ON CONFLICT (consumer, message_id) DO NOTHING
                 RETURNING message_id"
            ),
            delete_expired: format!(
                "DELETE FROM {table} WHERE consumer = $1 AND message_id IN (
                     SELECT message_id FROM {table}
                     WHERE consumer = $1 AND applied_at < now() - $2::float8 * interval '1 second'
                     LIMIT $3)"
            ),
        }
    }
}

struct Inner {
    // Declared before the runtime: the pool's connections are dropped while it still runs.
    pool: Pool,
    config: PgSinkConfig,
    metrics: SinkMetrics,
    sql: Statements,
    runtime: tokio::runtime::Runtime,
}

/// A PostgreSQL sink shared by the tasks of an app (cheap to clone): pool, runtime, config,
/// metrics. Make one per app at start, run [`migrate`](Self::migrate), and give each task a
/// [`PgBatch`] (or a [`PgSinkProcessor`]).
#[derive(Clone)]
pub struct PgSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("name", &self.inner.config.name)
            .field("consumer", &self.inner.config.consumer)
            .field("dedup_table", &self.inner.config.dedup_table)
            .finish()
    }
}

impl PgSink {
    /// Creates the pool and the sink's runtime. Connects lazily: the first statement (e.g.
    /// [`migrate`](Self::migrate)) says whether the database is reachable.
    pub fn new(config: PgSinkConfig, metrics: SinkMetrics) -> Result<Self, SinkError> {
        check_identifier(&config.dedup_table)?;
        if config.consumer.is_empty() {
            return Err(SinkError::Config("the consumer (app id) is empty".into()));
        }
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| SinkError::Config(format!("PostgreSQL connection string: {e}")))?;
        pg.connect_timeout(config.connect_timeout)
            .application_name(config.app_name())
            .options(format!(
                "-c lock_timeout={} -c idle_in_transaction_session_timeout={}",
                config.lock_timeout.as_millis(),
                config.idle_in_transaction_timeout.as_millis()
            ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("exactly-sink-{}", config.name))
            .enable_all()
            .build()
            .map_err(|e| SinkError::Config(format!("cannot start the sink's runtime: {e}")))?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                // `Fast` reuses a connection unless the client saw it close; a connection
                // whose statement failed is never reused (`on_connection`), and an idle one
                // killed on the server side fails its next statement, which is retried on a
                // fresh one.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| SinkError::Config(format!("cannot build the connection pool: {e}")))?;
        metrics.touch(&config.name);
        let sql = Statements::new(&config.dedup_table);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                config,
                metrics,
                sql,
                runtime,
            }),
        })
    }

    /// The config.
    pub fn config(&self) -> &PgSinkConfig {
        &self.inner.config
    }
    /// The metrics.
    pub fn metrics(&self) -> &SinkMetrics {
        &self.inner.metrics
    }
    /// The connection pool (for the app's own queries; run them with [`block_on`](Self::block_on)).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Runs `fut` on the sink's runtime from synchronous code (a stream thread, `main`).
    /// Refuses to run inside a tokio runtime, where blocking would stall its workers.
    pub fn block_on<T>(
        &self,
        fut: impl Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(SinkError::Config(
                "a PgSink blocks on its own runtime: call it from a stream thread or main, not from async code".into(),
            ));
        }
        self.inner.runtime.block_on(fut)
    }

    /// Creates the dedup table and its index if they do not exist (the migration an app runs
    /// at start; idempotent, and serialised between instances by an advisory lock).
    pub fn migrate(&self) -> Result<(), SinkError> {
        let statements: Vec<&str> = self.inner.sql.create.iter().map(String::as_str).collect();
        self.run_migration(&statements)
    }

    /// Runs the app's own schema statements (`CREATE TABLE IF NOT EXISTS ...`) in one
    /// transaction, under the same advisory lock as [`migrate`](Self::migrate), so instances
    /// starting together do not race on the catalog. A transient error (the database not up
    /// yet, a lock held past `lock_timeout`) is logged and retried with the sink's backoff for
    /// up to [`PgSinkConfig::migration_timeout`]; a permanent one (a syntax error, no
    /// permission) fails at once.
    pub fn run_migration(&self, statements: &[&str]) -> Result<(), SinkError> {
        let config = &self.inner.config;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pool = self.inner.pool.clone();
            let e = match self.block_on(on_connection(&pool, async |client| {
                let txn = client.transaction().await?;
                txn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('exactly-sinks migration'))",
                    &[],
                )
                .await?;
                for s in statements {
                    txn.batch_execute(s).await?;
                }
                txn.commit().await?;
                Ok(())
            })) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            let delay = config.retry.backoff(attempt);
            if started.elapsed() + delay > config.migration_timeout {
                return Err(SinkError::MigrationTimedOut {
                    seconds: config.migration_timeout.as_secs_f64(),
                    attempts: attempt,
                    last: Box::new(e),
                });
            }
            tracing::warn!(sink = %config.name, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "the sink's migration failed transiently (the database not up yet, or another session holding a lock on its tables); retrying");
            std::thread::sleep(delay);
        }
    }

    /// Deletes this consumer's message IDs older than the TTL, at most `batch` rows per
    /// statement (short transactions, no long locks), and returns how many went.
    pub fn delete_expired(&self, batch: i64) -> Result<u64, SinkError> {
        let expiry = self.expiry(batch);
        self.block_on(async move { expiry.run().await })
    }

    /// Runs [`delete_expired`](Self::delete_expired) every `every` on the sink's runtime (off
    /// the stream threads) until the returned handle is dropped (or the sink with its
    /// runtime). Failures are logged and retried at the next round.
    pub fn spawn_ttl_cleanup(&self, every: Duration, batch: i64) -> TtlCleanup {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let expiry = self.expiry(batch);
        self.inner.runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match expiry.run().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "sink TTL clean-up deleted expired message IDs"),
                    Err(e) => tracing::warn!(error = %e, "sink TTL clean-up failed; retrying at the next round"),
                }
            }
        });
        TtlCleanup { _stop: stop }
    }

    fn expiry(&self, batch: i64) -> Expiry {
        let inner = &self.inner;
        Expiry {
            pool: inner.pool.clone(),
            sql: inner.sql.delete_expired.clone(),
            consumer: inner.config.consumer.clone(),
            ttl_secs: inner.config.ttl.as_secs_f64(),
            batch: batch.max(1),
            counter: inner
                .metrics
                .expired_ids_total
                .with_label_values(&[&inner.config.name]),
        }
    }
}

/// Stops the TTL clean-up when dropped.
#[derive(Debug)]
pub struct TtlCleanup {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// What the TTL clean-up needs, without the sink itself (a task holding the sink could end
/// up dropping its runtime from inside it).
struct Expiry {
    pool: Pool,
    sql: String,
    consumer: String,
    ttl_secs: f64,
    batch: i64,
    counter: prometheus::IntCounter,
}

impl Expiry {
    async fn run(&self) -> Result<u64, SinkError> {
        on_connection(&self.pool, async |client| {
            let stmt = client.prepare_cached(&self.sql).await?;
            let mut total = 0;
            loop {
                let n = client
                    .execute(&stmt, &[&self.consumer, &self.ttl_secs, &self.batch])
                    .await?;
                total += n;
                self.counter.inc_by(n);
                if n < self.batch as u64 {
                    return Ok(total);
                }
            }
        })
        .await
    }
}

/// Runs `work` on a pooled connection. A connection whose work failed is closed instead of
/// going back to the pool: a terminated backend sends its error before its socket closes
/// (it exits first), so the client may not see the connection closed yet, and the pool's
/// `Fast` recycling would hand the dead connection to the retry, which then fails a second
/// time. The retry gets a live pooled connection or a new one.
pub(crate) async fn on_connection<T>(
    pool: &Pool,
    work: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, SinkError>,
) -> Result<T, SinkError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let result = work(&mut client).await;
    if result.is_err() {
        drop(deadpool_postgres::Client::take(client));
    }
    result
}

fn pool_error(e: deadpool_postgres::PoolError) -> SinkError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => SinkError::Postgres(e),
        other => SinkError::Pool(other.to_string()),
    }
}
