//! Time, injected so the state machine and the engine are deterministic in tests.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time, monotonic time and sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch (TTLs, `first_seen_ms`).
    fn now_ms(&self) -> i64;
    /// Monotonic time since an arbitrary start (intervals and deadlines).
    fn monotonic(&self) -> Duration;
    /// Blocks the calling (stream) thread for `d`.
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
    fn monotonic(&self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}
