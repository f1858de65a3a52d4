//! Windowed stores: values per key and event-time window, for windowed aggregations and
//! windowed dedup, with whole windows expiring by stream time.
//!
//! A [`WindowStore`] buckets each key by the window that holds a timestamp: tumbling windows
//! of `size`, aligned to the Unix epoch (`[n * size, (n + 1) * size)`). A window is kept until
//! stream time (the largest record timestamp the task has seen) passes its end by `grace`;
//! then it is closed: reads do not see it, writes to it are refused (a late record), and the
//! next writes delete its entries, oldest windows first. Everything a window store does is a
//! function of the input, so a restore after a crash or a task move rebuilds the same windows.
//!
//! It is a state store underneath (declare it with `App::store(&windows)`): its writes commit
//! with the outputs, it is changelogged and restored like any store. Its keys are
//! `window start (8 bytes, order-preserving) ++ key`, so that expiry deletes from the front.
//!
//! ```
//! use exactly_core::window::WindowStore;
//! use exactly_core::{Context, Output, ProcessError, Processor, Record};
//! use std::time::Duration;
//!
//! /// Payments per account per minute, emitted as each one comes in.
//! struct PerMinute { counts: WindowStore<String, u64> }
//!
//! impl Processor for PerMinute {
//!     fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         let account = String::from_utf8_lossy(r.key.unwrap_or_default()).into_owned();
//!         let at = r.timestamp.unwrap_or(0);
//!         let n = self.counts.get(ctx, &account, at)?.unwrap_or(0) + 1;
//!         if self.counts.put(ctx, &account, at, &n)? {
//!             let window = self.counts.window_of(at);
//!             ctx.send(Output::to("per-minute").key(format!("{account}@{window}")).value(n.to_string()));
//!         } // else: the minute closed (a record later than the grace)
//!         Ok(())
//!     }
//! }
//!
//! let counts: WindowStore<String, u64> =
//!     WindowStore::new("per-minute", Duration::from_secs(60), Duration::from_secs(30));
//! assert_eq!(counts.window_of(61_000), 60_000);
//! ```

use crate::codec::{Bincode, Serde};
use crate::error::ProcessError;
use crate::processor::Context;
use crate::state::{StoreKey, StoreSpec};
use std::marker::PhantomData;
use std::time::Duration;

/// Closed windows' entries deleted per write at most (the rest with the next writes).
const EXPIRE_BATCH: usize = 256;

/// A windowed store declared once (see the [module docs](self)): keys `K`, values `V`
/// encoded by `C`, tumbling windows of `size`, closed `grace` after they end.
pub struct WindowStore<K, V, C = Bincode> {
    spec: StoreSpec,
    size_ms: i64,
    grace_ms: i64,
    codec: C,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V, C: Clone> Clone for WindowStore<K, V, C> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            size_ms: self.size_ms,
            grace_ms: self.grace_ms,
            codec: self.codec.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V, C> std::fmt::Debug for WindowStore<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowStore")
            .field("spec", &self.spec)
            .field("size_ms", &self.size_ms)
            .field("grace_ms", &self.grace_ms)
            .finish()
    }
}

/// The store's declaration (`App::store(&handle)`).
impl<K, V, C> From<&WindowStore<K, V, C>> for StoreSpec {
    fn from(store: &WindowStore<K, V, C>) -> StoreSpec {
        store.spec.clone()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The order-preserving bytes of a window start.
fn start_bytes(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

impl<K: StoreKey, V, C: Serde<V> + Default> WindowStore<K, V, C> {
    /// A store named `name` of tumbling windows of `size` (at least 1 ms), each closed once
    /// stream time passes its end by `grace`.
    pub fn new(name: impl Into<String>, size: Duration, grace: Duration) -> Self {
        let mut spec = StoreSpec::new(name);
        spec.windowed = true;
        Self {
            spec,
            size_ms: millis(size).max(1),
            grace_ms: millis(grace),
            codec: C::default(),
            _types: PhantomData,
        }
    }
}

impl<K: StoreKey, V, C: Serde<V>> WindowStore<K, V, C> {
    /// The store's declaration.
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// The start of the window that holds `timestamp`.
    pub fn window_of(&self, timestamp: i64) -> i64 {
        timestamp - timestamp.rem_euclid(self.size_ms)
    }

    /// Whether the window that holds `timestamp` is closed at stream time `stream_time`.
    fn closed(&self, timestamp: i64, stream_time: Option<i64>) -> bool {
        let end = self.window_of(timestamp).saturating_add(self.size_ms);
        stream_time.is_some_and(|now| now >= end.saturating_add(self.grace_ms))
    }

    fn entry_key(&self, window: i64, key: &K) -> Vec<u8> {
        let mut k = start_bytes(window).to_vec();
        k.extend_from_slice(&key.to_key());
        k
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, ProcessError> {
        self.codec.decode(bytes).map_err(|e| {
            ProcessError::fatal(format!(
                "window store {:?}: a stored value does not decode as this store's value type ({e}); was the type changed without migrating the store?",
                self.spec.name
            ))
        })
    }

    /// The value of `key` in the window that holds `timestamp`; `None` if absent or the
    /// window is closed.
    pub fn get(
        &self,
        ctx: &mut Context<'_>,
        key: &K,
        timestamp: i64,
    ) -> Result<Option<V>, ProcessError> {
        if self.closed(timestamp, ctx.stream_time()) {
            return Ok(None);
        }
        let k = self.entry_key(self.window_of(timestamp), key);
        match ctx.store(&self.spec.name)?.get(&k)? {
            Some(bytes) => self.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` in the window that holds `timestamp`. Returns `false`, writing
    /// nothing, if that window is closed (a record later than the grace). Deletes entries of
    /// closed windows first, oldest first.
    pub fn put(
        &self,
        ctx: &mut Context<'_>,
        key: &K,
        timestamp: i64,
        value: &V,
    ) -> Result<bool, ProcessError> {
        if self.closed(timestamp, ctx.stream_time()) {
            return Ok(false);
        }
        let bytes = self.codec.encode(value).map_err(|e| {
            ProcessError::dead_letter(format!(
                "window store {:?}: cannot encode the value: {e}",
                self.spec.name
            ))
        })?;
        self.expire(ctx)?;
        let k = self.entry_key(self.window_of(timestamp), key);
        ctx.store(&self.spec.name)?.put(k, &bytes);
        Ok(true)
    }

    /// Deletes `key` from the window that holds `timestamp`.
    pub fn delete(
        &self,
        ctx: &mut Context<'_>,
        key: &K,
        timestamp: i64,
    ) -> Result<(), ProcessError> {
        let k = self.entry_key(self.window_of(timestamp), key);
        ctx.store(&self.spec.name)?.delete(k);
        Ok(())
    }

    /// `key`'s values in the open windows that overlap `[from, to]`, as `(window start,
    /// value)` in time order.
    pub fn fetch(
        &self,
        ctx: &mut Context<'_>,
        key: &K,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, V)>, ProcessError> {
        let mut out = Vec::new();
        let mut window = self.window_of(from);
        while window <= to {
            if !self.closed(window, ctx.stream_time()) {
                let k = self.entry_key(window, key);
                if let Some(bytes) = ctx.store(&self.spec.name)?.get(&k)? {
                    out.push((window, self.decode(&bytes)?));
                }
            }
            match window.checked_add(self.size_ms) {
                Some(next) => window = next,
                None => break,
            }
        }
        Ok(out)
    }

    /// Deletes up to [`EXPIRE_BATCH`] entries of closed windows (at stream time).
    fn expire(&self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(now) = ctx.stream_time() else {
            return Ok(());
        };
        // Windows starting before this are closed: start + size + grace <= now.
        let open_from = now
            .saturating_sub(self.grace_ms)
            .saturating_sub(self.size_ms)
            .saturating_add(1);
        let first_open = self.window_of(open_from);
        let first_open = if first_open < open_from {
            first_open.saturating_add(self.size_ms)
        } else {
            first_open
        };
        let mut store = ctx.store(&self.spec.name)?;
        let closed = store.range_limit(
            &start_bytes(i64::MIN),
            Some(&start_bytes(first_open)),
            EXPIRE_BATCH,
        )?;
        // Window entries' keys are 8 bytes of start and the key; shorter ones (the stream
        // time the store keeps for the task) are not entries.
        for (k, _) in closed.into_iter().filter(|(k, _)| k.len() >= 8) {
            store.delete(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> WindowStore<String, u64> {
        WindowStore::new("w", Duration::from_secs(10), Duration::from_secs(5))
    }

    #[test]
    fn windows_are_aligned_to_the_epoch_and_close_after_their_grace() {
        let w = store();
        assert_eq!(w.window_of(0), 0);
        assert_eq!(w.window_of(9_999), 0);
        assert_eq!(w.window_of(10_000), 10_000);
        assert_eq!(w.window_of(-1), -10_000);
        // [0, 10 s) closes at stream time 15 s.
        assert!(!w.closed(3_000, None));
        assert!(!w.closed(3_000, Some(14_999)));
        assert!(w.closed(3_000, Some(15_000)));
        assert!(!w.closed(10_000, Some(15_000)));
        assert!(start_bytes(-1) < start_bytes(0));
        assert!(start_bytes(i64::MIN) < start_bytes(i64::MAX));
    }
}
