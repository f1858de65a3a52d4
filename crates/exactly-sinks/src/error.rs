//! Sink errors, classified: a transient error is retried (in the sink with bounded backoff,
//! then by aborting the Kafka transaction and redelivering), a permanent one stops the app.

use exactly_core::ProcessError;
use thiserror::Error;

/// What went wrong in a sink.
#[derive(Debug, Error)]
pub enum SinkError {
    /// PostgreSQL answered with an error or the connection failed.
    #[cfg(feature = "postgres")]
    #[error("postgres: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled PostgreSQL connection could be had (server down, pool exhausted, timeout).
    #[error("postgres connection pool: {0}")]
    Pool(String),
    /// Redis answered with an error or the connection failed.
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The sink is configured in a way that cannot work (e.g. an invalid table name).
    #[error("sink configuration: {0}")]
    Config(String),
    /// The application's effect failed for good (it said so).
    #[error("effect failed: {0}")]
    Effect(String),
    /// The flush ran out of the time the Kafka transaction had left
    /// ([`FlushContext::time_left`](exactly_core::FlushContext::time_left)): the transaction
    /// aborts and its records come again; the dedup table skips what applied meanwhile.
    #[error("the sink's flush did not finish within the {time_left_ms} ms the Kafka transaction had left; the transaction aborts and is retried")]
    OutOfTime {
        /// The time the flush had, in ms.
        time_left_ms: u64,
    },
    /// The start-up migration failed transiently for its whole
    /// [`migration_timeout`](crate::postgres::PgSinkConfig::migration_timeout).
    #[error("the sink's migration did not succeed within {seconds:.0} s ({attempts} attempts); last error: {last}. Check that PostgreSQL is reachable and that no other session holds a lock on the sink's tables (see pg_locks), or raise migration_timeout to wait longer")]
    MigrationTimedOut {
        /// The time the migration had, in seconds.
        seconds: f64,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<SinkError>,
    },
    /// A staged effect has no message ID to deduplicate it by.
    #[error("record at offset {offset} has no message ID; a sink effect needs one (set the ID policy to `dead-letter` or `fail`)")]
    MissingId {
        /// Input offset of the record.
        offset: i64,
    },
}

impl SinkError {
    /// Whether retrying the same work may succeed: connection loss, server shutting down or
    /// not accepting connections yet, serialization failures, deadlocks, lock and statement
    /// timeouts, an exhausted pool.
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(e) => postgres_is_transient(e),
            Self::Pool(_) | Self::OutOfTime { .. } => true,
            #[cfg(feature = "redis")]
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::BusyLoadingError | redis::ErrorKind::TryAgain
                    )
            }
            Self::Config(_)
            | Self::Effect(_)
            | Self::MissingId { .. }
            | Self::MigrationTimedOut { .. } => false,
        }
    }

    /// An application error from an effect (permanent).
    pub fn effect(reason: impl Into<String>) -> Self {
        Self::Effect(reason.into())
    }

    /// The [`ProcessError`] a processor's `flush` returns for this error: `Retry` for a
    /// transient error (the Kafka transaction is aborted and redelivered, and the sink's
    /// dedup table makes the redelivery safe), `Fatal` for a permanent one (a missing table,
    /// a constraint the effect violates: retrying cannot help, so the app stops and says why).
    pub fn into_process_error(self) -> ProcessError {
        if self.is_transient() {
            ProcessError::retry(self.to_string())
        } else {
            ProcessError::fatal(self.to_string())
        }
    }
}

#[cfg(feature = "postgres")]
/// What PostgreSQL said (`tokio_postgres::Error`'s own text is only "db error" for an error
/// the server answered): the server's message and SQLSTATE, or the client's error with its
/// cause.
fn postgres_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

#[cfg(feature = "postgres")]
/// SQLSTATEs that mean "try again": class 08 (connection exception), 40001
/// (serialization_failure), 40P01 (deadlock_detected), 55P03 (lock_not_available, from
/// `lock_timeout`), 57014 (query_canceled, from `statement_timeout`), 57P01..57P03
/// (admin/crash shutdown, cannot connect now: `pg_terminate_backend`, a restart), 53300
/// (too_many_connections), 25P03 (idle_in_transaction_session_timeout).
fn postgres_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || matches!(
                    code,
                    "40001"
                        | "40P01"
                        | "55P03"
                        | "57014"
                        | "57P01"
                        | "57P02"
                        | "57P03"
                        | "53300"
                        | "25P03"
                )
        }
        // No SQLSTATE: the error is the client's own. I/O errors, connect errors and timeouts
        // are transient; conversion errors (a bug in the effect's SQL types) are not.
        None => {
            let text = e.to_string();
            !(text.starts_with("error serializing")
                || text.starts_with("error deserializing")
                || text.starts_with("invalid column"))
        }
    }
}
