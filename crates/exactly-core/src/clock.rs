//! Time, injected so the state machine and the engine are deterministic in tests.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time, monotonic time and sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch (TTLs, `first_seen_ms`).
    fn now_ms(&self) -> i64;
    /// Monotonic time since an arbitrary start (intervals and deadlines).
    fn monotonic(&self) -> Duration;
    /// [`monotonic`](Self::monotonic), cheaper and a few milliseconds coarse: for bounds
    /// checked once per record (a precise clock read per record showed in profiles).
    fn monotonic_coarse(&self) -> Duration {
        self.monotonic()
    }
    /// Blocks the calling (stream) thread for `d`.
    fn sleep(&self, d: Duration);
}

/// The start of [`SystemClock::monotonic`]: an `Instant`, and the coarse clock's reading then.
fn start() -> &'static (Instant, Duration) {
    static START: OnceLock<(Instant, Duration)> = OnceLock::new();
    START.get_or_init(|| (Instant::now(), coarse_now()))
}

#[cfg(target_os = "linux")]
fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC_COARSE exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn coarse_now() -> Duration {
    Duration::ZERO
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
        start().0.elapsed()
    }
    #[cfg(target_os = "linux")]
    fn monotonic_coarse(&self) -> Duration {
        // The coarse clock is CLOCK_MONOTONIC as of the last tick: the same timeline as
        // `Instant`, read from the vDSO without the time counter.
        coarse_now().saturating_sub(start().1)
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}
