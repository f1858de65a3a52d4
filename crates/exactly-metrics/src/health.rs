//! Liveness and readiness, as served at `/health` and `/ready`.

use std::sync::atomic::{AtomicBool, Ordering};

/// The app's liveness and readiness, shared (in an `Arc`) between the runtime that changes
/// them and the HTTP endpoint that reports them. Plain atomics: reading them costs nothing.
///
/// A new `Health` is live and not ready: an app becomes ready once its tasks are assigned and
/// restored, and stops being ready while it shuts down or has lost its brokers.
#[derive(Debug)]
pub struct Health {
    live: AtomicBool,
    ready: AtomicBool,
}

impl Health {
    /// Live, not ready.
    pub fn new() -> Self {
        Self {
            live: AtomicBool::new(true),
            ready: AtomicBool::new(false),
        }
    }

    /// Whether the process works at all (`/health` answers 200 while true, 503 otherwise).
    /// Set it false only for a state a restart fixes, since orchestrators restart on it.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// Whether the app processes records now (`/ready` answers 200 while true, 503 otherwise).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// See [`Health::set_live`].
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// See [`Health::set_ready`].
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn new_health_is_live_and_not_ready() {
        let h = Health::new();
        assert!(h.is_live());
        assert!(!h.is_ready());
        h.set_ready(true);
        h.set_live(false);
        assert!(h.is_ready());
        assert!(!h.is_live());
    }
}
