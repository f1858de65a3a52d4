//! Bounded exponential backoff for transient sink errors within one flush.

use std::time::Duration;

/// How a sink retries a transient error (connection lost, deadlock, serialization failure)
/// before it gives up and lets the runtime abort and redeliver the Kafka transaction.
///
/// The Kafka transaction stays open while the sink retries, so a flush also stops at the
/// time the transaction has left (`FlushContext::time_left`): no retry starts that would end
/// after it, and an attempt still running then is cancelled. The transaction then aborts and
/// its records come again (the dedup table skips what was applied), instead of the
/// coordinator timing it out and fencing the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkRetry {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Upper bound of any delay.
    pub max_backoff: Duration,
}

impl Default for SinkRetry {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl SinkRetry {
    /// The delay after failed attempt number `attempt` (1-based): doubles, capped; the same
    /// schedule as the processor's [`RetryPolicy`](exactly_core::RetryPolicy).
    pub fn backoff(&self, attempt: u32) -> Duration {
        exactly_core::RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
        }
        .backoff(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = SinkRetry {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let got: Vec<u128> = (1..=5).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
    }
}
