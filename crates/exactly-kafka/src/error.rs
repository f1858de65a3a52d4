//! Runtime errors, classified by domain with a hint of what to do.

use exactly_core::EngineError;
use rdkafka::error::KafkaError;
use thiserror::Error;

/// Errors that stop a runtime (or fail its start).
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The configuration is unusable.
    #[error("configuration error: {0}")]
    Config(String),
    /// The cluster could not be reached within the startup timeout.
    #[error("cannot reach Kafka at {bootstrap} within {timeout_s} s: {source}. Check `bootstrap` / KAFKA_BOOTSTRAP and that the brokers are up")]
    Unreachable {
        /// Bootstrap servers.
        bootstrap: String,
        /// Timeout in seconds.
        timeout_s: u64,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// A topic is missing or does not match what the app needs.
    #[error("topic error: {0}")]
    Topic(String),
    /// A Kafka client error the runtime cannot recover from.
    #[error("kafka error during {during}: {source}")]
    Kafka {
        /// What the runtime was doing.
        during: &'static str,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// A stream thread's engine stopped (fenced, a fatal task error, a fatal client error).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A state store could not be opened or written.
    #[error("state error: {0}")]
    State(#[from] exactly_state::StateError),
    /// A stream thread panicked (a bug in exactly).
    #[error("stream thread {0} panicked: {1}")]
    ThreadPanic(usize, String),
}
