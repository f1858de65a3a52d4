//! Processor state stores: key-value state with the same guarantee as outputs.
//!
//! A store is declared once per app ([`StoreSpec`] in [`TaskConfig::stores`](crate::TaskConfig))
//! and every task gets its own instance, backed by a [`KvStore`] (RocksDB in the Kafka runtime,
//! [`MemKvStore`] in the `TestDriver`). A processor reads and writes it through
//! [`Context::store`](crate::Context::store) (bytes) or a [`TypedStore`] (typed keys and values).
//!
//! Writes are staged twice before they reach the backend:
//!
//! 1. while `process` runs, in the record's *pending* writes: a failed attempt (retry, dead
//!    letter, panic) drops them, so a record's state changes happen with its outputs or not at
//!    all;
//! 2. when `process` succeeds, each pending write becomes a changelog record of the store
//!    (`{app}-{input}-{store}-changelog`, the task's partition) in the open transaction, and
//!    joins the transaction's *staged* writes: later records of the transaction read them.
//!
//! After the transaction commits, the staged writes and the changelog checkpoint are applied to
//! the backend in one atomic batch; after an abort they are dropped, so an aborted transaction's
//! state changes are invisible once the input is rewound. Reads see pending, then staged, then
//! backend values; entries older than the store's TTL are invisible.
//!
//! The changelog value of a write is `[STATE_VALUE_VERSION] ++ written_ms (i64 big endian) ++
//! value bytes`; a delete is a tombstone (null value), so a compacted changelog keeps the latest
//! value of each key. Backends store the changelog value as it is.

use crate::codec::Serde;
use crate::processor::Context;
use crate::store::{ChangelogCheckpoint, StoreError, StoreStats};
use crate::ProcessError;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

/// Version byte of state changelog values.
pub const STATE_VALUE_VERSION: u8 = 1;

/// Longest store name (it is part of topic names, which Kafka limits to 249 characters).
pub const MAX_STORE_NAME_LEN: usize = 64;

/// The changelog topic of a state store: `{app}-{input}-{store}-changelog`.
///
/// Tasks are per input topic and partition, so the input topic is part of the name: with two
/// input topics, partition 3 of each has its own state, which must not share a changelog
/// partition.
pub fn state_changelog_topic(app: &str, input: &str, store: &str) -> String {
    format!("{app}-{input}-{store}-changelog")
}

/// A state store every task of the app gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// Name: `[A-Za-z0-9._-]`, 1 to [`MAX_STORE_NAME_LEN`] characters, not `dedup`.
    pub name: String,
    /// Entries not written for this long are invisible and removed (the changelog then gets
    /// `cleanup.policy=compact,delete` with this `retention.ms`). `None`: kept until deleted.
    pub ttl: Option<Duration>,
    /// A windowed store ([`WindowStore`](crate::window::WindowStore)): its windows close by
    /// stream time, so it keeps the task's stream time too (like the timer store).
    pub windowed: bool,
}

impl StoreSpec {
    /// A store named `name` without TTL. Call [`validate`](Self::validate) (the runtimes do).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            windowed: false,
        }
    }

    /// The timer store's declaration (see [`crate::timer`]).
    pub fn timers() -> Self {
        Self::new(crate::timer::TIMER_STORE)
    }

    /// Whether this is the timer store.
    pub fn is_timers(&self) -> bool {
        self.name == crate::timer::TIMER_STORE
    }

    /// Entries expire `ttl` after their last write (wall-clock time).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Checks the name and TTL; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty() || n.len() > MAX_STORE_NAME_LEN {
            return Err(format!(
                "state store name {n:?} must be 1 to {MAX_STORE_NAME_LEN} characters"
            ));
        }
        if !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "state store name {n:?} may only contain ASCII letters, digits, '.', '_' and '-' (it is part of a topic name)"
            ));
        }
        if n == "dedup" {
            return Err(
                "state store name \"dedup\" is reserved for the dedup changelog; choose another name"
                    .into(),
            );
        }
        if self.windowed && self.ttl.is_some() {
            return Err(format!(
                "state store {n:?} is a window store: its windows close by stream time; declare it without a ttl"
            ));
        }
        if self.is_timers() && self.ttl.is_some() {
            return Err(format!(
                "state store {n:?} is the timer store (see exactly_core::timer): timers must not expire; declare it without a ttl"
            ));
        }
        if self.ttl.is_some_and(|t| t.as_millis() == 0) {
            return Err(format!(
                "state store {n:?}: ttl must be positive (omit it to keep entries until deleted)"
            ));
        }
        Ok(())
    }

    /// The TTL in milliseconds, if any.
    pub fn ttl_ms(&self) -> Option<i64> {
        self.ttl
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
    }

    /// Entries written before this (ms since the Unix epoch) are expired at `now_ms`
    /// (`i64::MIN` without a TTL).
    pub fn cutoff(&self, now_ms: i64) -> i64 {
        self.ttl_ms()
            .map_or(i64::MIN, |ttl| now_ms.saturating_sub(ttl))
    }
}

/// Checks a list of store specs: each valid, names unique.
pub fn validate_specs(specs: &[StoreSpec]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for s in specs {
        s.validate()?;
        if !seen.insert(s.name.as_str()) {
            return Err(format!(
                "state store {:?} is declared twice; store names must be unique",
                s.name
            ));
        }
    }
    Ok(())
}

/// Encodes a state changelog value.
pub fn encode_state_value(written_ms: i64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + value.len());
    v.push(STATE_VALUE_VERSION);
    v.extend_from_slice(&written_ms.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// Decodes a state changelog value into `(written_ms, value)`.
pub fn decode_state_value(v: &[u8]) -> Result<(i64, &[u8]), String> {
    match v.split_first() {
        None => Err("empty state value".into()),
        Some((&STATE_VALUE_VERSION, rest)) if rest.len() >= 8 => {
            let (ts, value) = rest.split_at(8);
            Ok((
                i64::from_be_bytes(ts.try_into().expect("8 bytes")),
                value,
            ))
        }
        Some((&STATE_VALUE_VERSION, rest)) => Err(format!(
            "state value too short ({} bytes after the version byte, expected at least 8)",
            rest.len()
        )),
        Some((version, _)) => Err(format!(
            "unknown state value version {version} (this build reads version {STATE_VALUE_VERSION}); upgrade exactly"
        )),
    }
}

/// Live entries of a scan: `(key, value)` in ascending key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The type parameters a [`TypedStore`] carries (it holds no value of them).
type Types<K, V> = PhantomData<fn() -> (K, V)>;

/// One write of a batch: a key and its encoded changelog value, or `None` to delete it.
pub type KvWrite = (Vec<u8>, Option<Vec<u8>>);

/// The storage engine under one task's state store. Values are encoded changelog values
/// ([`encode_state_value`]); TTL and decoding are the task's business.
///
/// Implementations: [`MemKvStore`] (here), `RocksKvStore` (`exactly-state`).
pub trait KvStore: Send {
    /// The encoded value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Calls `f` with each entry whose key is `>= from` and `< to` (no upper bound if `to` is
    /// `None`), in ascending key order, until `f` returns `false`.
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Atomically applies the writes (in order) and records the checkpoint.
    fn apply(
        &mut self,
        writes: &[KvWrite],
        checkpoint: &ChangelogCheckpoint,
    ) -> Result<(), StoreError>;

    /// The checkpoint of the last applied batch, or `None` for an empty store.
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError>;

    /// When (wall-clock ms) the store last held exactly its changelog up to its checkpoint
    /// while nothing lay past the checkpoint ([`mark_synced`](Self::mark_synced)); `None` if
    /// unknown. A store synced less than half the changelog's `delete.retention.ms` ago is
    /// restored from its checkpoint: every tombstone written after the checkpoint is still in
    /// the changelog. An older one is wiped and restored whole. The default (`None`) makes a
    /// store always restore whole.
    fn synced_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    /// Records that the store matches its changelog's end as of `now_ms` (stored with the
    /// checkpoint, and lost with it: what survives a crash is a pair that held together).
    fn mark_synced(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let _ = now_ms;
        Ok(())
    }

    /// Deletes every entry and the checkpoint (before a full restore).
    fn wipe(&mut self) -> Result<(), StoreError>;

    /// Size counters (entries may be an estimate for on-disk stores).
    fn stats(&self) -> StoreStats;
}

impl<S: KvStore + ?Sized> KvStore for Box<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        (**self).scan(from, to, f)
    }
    fn apply(
        &mut self,
        writes: &[KvWrite],
        checkpoint: &ChangelogCheckpoint,
    ) -> Result<(), StoreError> {
        (**self).apply(writes, checkpoint)
    }
    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        (**self).checkpoint()
    }
    fn synced_ms(&self) -> Result<Option<i64>, StoreError> {
        (**self).synced_ms()
    }
    fn mark_synced(&mut self, now_ms: i64) -> Result<(), StoreError> {
        (**self).mark_synced(now_ms)
    }
    fn wipe(&mut self) -> Result<(), StoreError> {
        (**self).wipe()
    }
    fn stats(&self) -> StoreStats {
        (**self).stats()
    }
}

/// An in-memory [`KvStore`] (the `TestDriver`'s, and the reference for `RocksKvStore`).
#[derive(Debug, Clone, Default)]
pub struct MemKvStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoint: Option<ChangelogCheckpoint>,
    synced_ms: Option<i64>,
    bytes: u64,
}

impl MemKvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvStore for MemKvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        for (k, v) in self
            .entries
            .range::<[u8], _>((Bound::Included(from), upper))
        {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        writes: &[KvWrite],
        checkpoint: &ChangelogCheckpoint,
    ) -> Result<(), StoreError> {
        for (k, v) in writes {
            let old = match v {
                Some(v) => {
                    self.bytes += (k.len() + v.len()) as u64;
                    self.entries.insert(k.clone(), v.clone())
                }
                None => self.entries.remove(k),
            };
            if let Some(old) = old {
                self.bytes -= (k.len() + old.len()) as u64;
            }
        }
        self.checkpoint = Some(checkpoint.clone());
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<ChangelogCheckpoint>, StoreError> {
        Ok(self.checkpoint.clone())
    }

    fn synced_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.synced_ms)
    }

    fn mark_synced(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.synced_ms = Some(now_ms);
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        *self = Self::default();
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
        }
    }
}

/// Per-store counters since the last [`TaskCounters::take`](crate::TaskCounters::take).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Puts and deletes committed with outputs (counted when the record's attempt succeeded;
    /// dropped with the transaction's other counters when it aborts).
    pub writes: u64,
    /// Changelog records replayed into the store.
    pub restored: u64,
    /// Entries removed by TTL expiry.
    pub expired: u64,
}

/// One task's instance of a declared store.
pub(crate) struct StateSlot {
    pub(crate) spec: StoreSpec,
    pub(crate) changelog: String,
    pub(crate) backend: Box<dyn KvStore>,
    /// Writes of the open transaction (applied after commit).
    pub(crate) staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Writes of the record being processed (staged when `process` succeeds).
    pub(crate) pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// A backend error seen by a read during `process`: the task fails with it.
    pub(crate) failure: Option<StoreError>,
}

impl StateSlot {
    pub(crate) fn new(spec: StoreSpec, changelog: String, backend: Box<dyn KvStore>) -> Self {
        Self {
            spec,
            changelog,
            backend,
            staged: BTreeMap::new(),
            pending: BTreeMap::new(),
            failure: None,
        }
    }

    /// The live value of an encoded entry (`None` if expired or undecodable; an undecodable
    /// one is reported as a failure).
    fn live<'v>(&mut self, encoded: &'v [u8], cutoff: i64) -> Option<&'v [u8]> {
        match decode_state_value(encoded) {
            Ok((ts, v)) if ts >= cutoff => Some(v),
            Ok(_) => None,
            Err(e) => {
                self.failure.get_or_insert(StoreError::Corrupt(format!(
                    "state store {:?}: {e}",
                    self.spec.name
                )));
                None
            }
        }
    }
}

/// A task's state stores, in declaration order.
#[derive(Default)]
pub(crate) struct TaskStores {
    pub(crate) slots: Vec<StateSlot>,
    /// Per timer kind (stream, wall), the earliest timer may be due at or after this (a lower
    /// bound: `None` if there is none), so that no record or turn reads the timer store for
    /// nothing. Lowered when a processor schedules one; recomputed from the timer store after
    /// firing, restores and aborts.
    pub(crate) next_timer: [Option<i64>; 2],
}

impl std::fmt::Debug for TaskStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|s| &s.spec.name))
            .finish()
    }
}

impl TaskStores {
    pub(crate) fn drop_pending(&mut self) {
        for s in &mut self.slots {
            s.pending.clear();
        }
    }

    pub(crate) fn drop_staged(&mut self) {
        for s in &mut self.slots {
            s.pending.clear();
            s.staged.clear();
        }
    }

    /// Whether this store keeps the task's stream time (the timer store, window stores).
    pub(crate) fn keeps_stream_time(spec: &StoreSpec) -> bool {
        spec.is_timers() || spec.windowed
    }

    /// The index of the timer store's slot, if the app declared it.
    pub(crate) fn timers(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.spec.is_timers())
    }

    pub(crate) fn take_failure(&mut self) -> Option<(String, StoreError)> {
        self.slots
            .iter_mut()
            .find_map(|s| s.failure.take().map(|e| (s.spec.name.clone(), e)))
    }
}

/// One state store, as a processor sees it while handling a record (bytes in, bytes out).
/// Get it with [`Context::store`](crate::Context::store).
pub struct StateStore<'a> {
    slot: &'a mut StateSlot,
    now_ms: i64,
}

impl std::fmt::Debug for StateStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("name", &self.slot.spec.name)
            .finish()
    }
}

impl<'a> StateStore<'a> {
    pub(crate) fn new(slot: &'a mut StateSlot, now_ms: i64) -> Self {
        Self { slot, now_ms }
    }

    fn backend_error(&mut self, e: StoreError) -> ProcessError {
        let msg = format!("state store {:?} failed: {e}", self.slot.spec.name);
        self.slot.failure.get_or_insert(e);
        ProcessError::retry(msg)
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.slot.spec.name
    }

    /// The value of `key`: this record's own writes first, then the open transaction's, then
    /// the committed ones. `None` if absent, deleted or expired.
    ///
    /// A backend error fails the record with [`ProcessError::Retry`]; return it with `?`
    /// (the task then restores its stores from the changelogs).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcessError> {
        let cutoff = self.slot.spec.cutoff(self.now_ms);
        let overlay = self
            .slot
            .pending
            .get(key)
            .or_else(|| self.slot.staged.get(key))
            .cloned();
        let encoded = match overlay {
            Some(v) => v,
            None => match self.slot.backend.get(key) {
                Ok(v) => v,
                Err(e) => return Err(self.backend_error(e)),
            },
        };
        let Some(encoded) = encoded else {
            return Ok(None);
        };
        let live = self.slot.live(&encoded, cutoff).map(<[u8]>::to_vec);
        if let Some(e) = self.slot.failure.take() {
            return Err(self.backend_error(e));
        }
        Ok(live)
    }

    /// Sets `key` to `value` (committed with this record's outputs).
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: &[u8]) {
        self.slot
            .pending
            .insert(key.into(), Some(encode_state_value(self.now_ms, value)));
    }

    /// Deletes `key` (committed with this record's outputs).
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.slot.pending.insert(key.into(), None);
    }

    /// The live entries with keys in `[from, to)` (`to = None`: no upper bound), in ascending
    /// key order, with this record's and the open transaction's writes applied.
    pub fn range(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<Entries, ProcessError> {
        self.range_limit(from, to, usize::MAX)
    }

    /// The first `limit` live entries of [`range`](Self::range), reading no more of the
    /// backend than it takes.
    pub(crate) fn range_limit(
        &mut self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, ProcessError> {
        use std::ops::Bound;
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        let overlays = [&self.slot.staged, &self.slot.pending];
        // The writes of the open transaction and of this record can hide at most this many of
        // the backend's live entries.
        let hidden: usize = overlays
            .iter()
            .map(|l| l.range::<[u8], _>((Bound::Included(from), upper)).count())
            .sum();
        let wanted = limit.saturating_add(hidden);
        let cutoff = self.slot.spec.cutoff(self.now_ms);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut live = 0usize;
        let scanned = self.slot.backend.scan(from, to, &mut |k, v| {
            if decode_state_value(v).is_ok_and(|(ts, _)| ts >= cutoff) {
                live += 1;
            }
            merged.insert(k.to_vec(), Some(v.to_vec()));
            live < wanted
        });
        if let Err(e) = scanned {
            return Err(self.backend_error(e));
        }
        // When the scan stopped early, entries past its last key are not known: overlay
        // entries there must not be taken before them.
        let scanned_to = (live >= wanted)
            .then(|| merged.keys().next_back().cloned())
            .flatten();
        for layer in [&self.slot.staged, &self.slot.pending] {
            for (k, v) in layer.range::<[u8], _>((Bound::Included(from), upper)) {
                if scanned_to.as_ref().is_some_and(|last| k > last) {
                    break;
                }
                merged.insert(k.clone(), v.clone());
            }
        }
        let mut out = Vec::with_capacity(merged.len().min(limit));
        for (k, v) in merged {
            if out.len() == limit {
                break;
            }
            if let Some(v) = v.as_deref().and_then(|v| self.slot.live(v, cutoff)) {
                out.push((k, v.to_vec()));
            }
        }
        if let Some(e) = self.slot.failure.take() {
            return Err(self.backend_error(e));
        }
        Ok(out)
    }

    /// The live entries whose key starts with `prefix`, in ascending key order.
    pub fn scan_prefix(&mut self, prefix: &[u8]) -> Result<Entries, ProcessError> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref())
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// How a [`TypedStore`] turns keys into bytes. The encodings keep the order of the values
/// (big endian, sign bit flipped for signed integers), so range scans follow it.
pub trait StoreKey: Sized {
    /// The key bytes.
    fn to_key(&self) -> Vec<u8>;
    /// Back from key bytes (`None`: not a key of this type).
    fn from_key(bytes: &[u8]) -> Option<Self>;
}

impl StoreKey for Vec<u8> {
    fn to_key(&self) -> Vec<u8> {
        self.clone()
    }
    fn from_key(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl StoreKey for String {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_key(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl StoreKey for u64 {
    fn to_key(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_key(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl StoreKey for i64 {
    fn to_key(&self) -> Vec<u8> {
        ((*self as u64) ^ (1 << 63)).to_be_bytes().to_vec()
    }
    fn from_key(bytes: &[u8]) -> Option<Self> {
        Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
    }
}

pub use crate::codec::{Bincode, Json};

/// A typed store, declared once: its [`StoreSpec`] (name, TTL) with keys `K` ([`StoreKey`],
/// order-preserving) and values `V` encoded by the serde `C` ([`Bincode`] by default, or
/// [`Json`], or any [`Serde`]). The app declares the store from the handle
/// (`App::store(&totals)`, or `TaskConfig::stores.push(totals.spec().clone())`) and the
/// processor keeps a clone, so the two cannot name different stores.
///
/// ```
/// use exactly_core::state::TypedStore;
/// use exactly_core::topic::Topic;
/// use exactly_core::{Context, ProcessError, Processor, Record};
///
/// /// Emits each account's running total.
/// struct Totals { totals: TypedStore<String, i64>, out: Topic<i64> }
///
/// impl Processor for Totals {
///     fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
///         let account = String::from_utf8_lossy(record.key.unwrap_or_default()).into_owned();
///         let total = self.totals.get(ctx, &account)?.unwrap_or(0) + 1;
///         self.totals.put(ctx, &account, &total)?;
///         ctx.send(self.out.output(&account, &total)?);
///         Ok(())
///     }
/// }
/// ```
pub struct TypedStore<K, V, C = Bincode> {
    spec: StoreSpec,
    codec: C,
    _types: Types<K, V>,
}

impl<K, V, C> std::fmt::Debug for TypedStore<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedStore")
            .field("spec", &self.spec)
            .field("value", &std::any::type_name::<V>())
            .finish()
    }
}

impl<K, V, C: Clone> Clone for TypedStore<K, V, C> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            codec: self.codec.clone(),
            _types: PhantomData,
        }
    }
}

/// The store's declaration (`App::store(&handle)`).
impl<K, V, C> From<&TypedStore<K, V, C>> for StoreSpec {
    fn from(store: &TypedStore<K, V, C>) -> StoreSpec {
        store.spec.clone()
    }
}

impl<K: StoreKey, V, C: Serde<V> + Default> TypedStore<K, V, C> {
    /// A store named `name`, entries kept until deleted.
    pub fn new(name: impl Into<String>) -> Self {
        Self::from_spec(StoreSpec::new(name), C::default())
    }
}

impl<K: StoreKey, V, C: Serde<V>> TypedStore<K, V, C> {
    /// A store declared by `spec`, values encoded by `codec`.
    pub fn from_spec(spec: StoreSpec, codec: C) -> Self {
        Self {
            spec,
            codec,
            _types: PhantomData,
        }
    }

    /// Entries expire `ttl` after their last write (see [`StoreSpec::ttl`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.spec = self.spec.ttl(ttl);
        self
    }

    /// The store's declaration.
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, ProcessError> {
        self.codec.decode(bytes).map_err(|e| {
            ProcessError::fatal(format!(
                "state store {:?}: a stored value does not decode as this store's value type ({e}); was the type changed without migrating the store?",
                self.spec.name
            ))
        })
    }

    /// The value of `key`, if present and not expired.
    pub fn get(&self, ctx: &mut Context<'_>, key: &K) -> Result<Option<V>, ProcessError> {
        match ctx.store(&self.spec.name)?.get(&key.to_key())? {
            Some(bytes) => self.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&self, ctx: &mut Context<'_>, key: &K, value: &V) -> Result<(), ProcessError> {
        let bytes = self.codec.encode(value).map_err(|e| {
            ProcessError::dead_letter(format!(
                "state store {:?}: cannot encode the value: {e}",
                self.spec.name
            ))
        })?;
        ctx.store(&self.spec.name)?.put(key.to_key(), &bytes);
        Ok(())
    }

    /// Deletes `key`.
    pub fn delete(&self, ctx: &mut Context<'_>, key: &K) -> Result<(), ProcessError> {
        ctx.store(&self.spec.name)?.delete(key.to_key());
        Ok(())
    }

    /// The live entries whose key bytes start with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        ctx: &mut Context<'_>,
        prefix: &[u8],
    ) -> Result<Vec<(K, V)>, ProcessError> {
        self.collect(ctx.store(&self.spec.name)?.scan_prefix(prefix)?)
    }

    /// The live entries with keys in `[from, to)`, in key order.
    pub fn range(
        &self,
        ctx: &mut Context<'_>,
        from: &K,
        to: Option<&K>,
    ) -> Result<Vec<(K, V)>, ProcessError> {
        let to = to.map(StoreKey::to_key);
        self.collect(
            ctx.store(&self.spec.name)?
                .range(&from.to_key(), to.as_deref())?,
        )
    }

    fn collect(&self, raw: Entries) -> Result<Vec<(K, V)>, ProcessError> {
        raw.into_iter()
            .map(|(k, v)| {
                let key = K::from_key(&k).ok_or_else(|| {
                    ProcessError::fatal(format!(
                        "state store {:?}: key {k:?} is not a key of this store's key type",
                        self.spec.name
                    ))
                })?;
                Ok((key, self.decode(&v)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_rejects_bad_versions() {
        let v = encode_state_value(1_700_000_000_123, b"abc");
        assert_eq!(decode_state_value(&v), Ok((1_700_000_000_123, &b"abc"[..])));
        assert!(decode_state_value(&[]).is_err());
        assert!(decode_state_value(&[STATE_VALUE_VERSION, 1, 2]).is_err());
        let mut bad = v.clone();
        bad[0] = 7;
        assert!(decode_state_value(&bad).unwrap_err().contains("version 7"));
    }

    #[test]
    fn integer_keys_keep_their_order() {
        let mut ints = vec![-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut keys: Vec<Vec<u8>> = ints.iter().map(StoreKey::to_key).collect();
        ints.sort();
        keys.sort();
        let back: Vec<i64> = keys.iter().map(|k| i64::from_key(k).unwrap()).collect();
        assert_eq!(back, ints);
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn specs_are_validated() {
        assert!(StoreSpec::new("totals").validate().is_ok());
        assert!(StoreSpec::new("dedup")
            .validate()
            .unwrap_err()
            .contains("reserved"));
        assert!(StoreSpec::new("a b").validate().is_err());
        assert!(StoreSpec::new("").validate().is_err());
        assert!(StoreSpec::new("x".repeat(65)).validate().is_err());
        assert!(StoreSpec::new("w").ttl(Duration::ZERO).validate().is_err());
        let twice = [StoreSpec::new("a"), StoreSpec::new("a")];
        assert!(validate_specs(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_limited_range_merges_the_open_writes_like_the_whole_range() {
        let mut backend = MemKvStore::new();
        let cp = ChangelogCheckpoint {
            topic: "t".into(),
            partition: 0,
            next_offset: 1,
        };
        let writes: Vec<KvWrite> = (1..=6)
            .map(|i| {
                (
                    format!("a{i}").into_bytes(),
                    Some(encode_state_value(0, b"b")),
                )
            })
            .collect();
        backend.apply(&writes, &cp).unwrap();
        let mut slot = StateSlot::new(StoreSpec::new("s"), "c".into(), Box::new(backend));
        slot.staged.insert(b"a1".to_vec(), None);
        slot.staged.insert(b"a2".to_vec(), None);
        slot.pending
            .insert(b"a0".to_vec(), Some(encode_state_value(0, b"p")));
        slot.pending
            .insert(b"a3".to_vec(), Some(encode_state_value(0, b"p")));
        slot.pending
            .insert(b"a9".to_vec(), Some(encode_state_value(0, b"p")));
        let mut store = StateStore::new(&mut slot, 0);
        let whole = store.range(b"a", None).unwrap();
        let keys = |e: &Entries| {
            e.iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&whole),
            ["a0=p", "a3=p", "a4=b", "a5=b", "a6=b", "a9=p"]
        );
        for limit in 0..8 {
            let limited = store.range_limit(b"a", None, limit).unwrap();
            assert_eq!(
                keys(&limited),
                keys(&whole)[..limit.min(whole.len())],
                "limit {limit}"
            );
        }
    }

    #[test]
    fn mem_store_scans_ranges_and_tracks_bytes() {
        let mut s = MemKvStore::new();
        let cp = ChangelogCheckpoint {
            topic: "t".into(),
            partition: 0,
            next_offset: 3,
        };
        s.apply(
            &[
                (b"a1".to_vec(), Some(b"x".to_vec())),
                (b"a2".to_vec(), Some(b"y".to_vec())),
                (b"b1".to_vec(), Some(b"z".to_vec())),
            ],
            &cp,
        )
        .unwrap();
        s.apply(&[(b"a2".to_vec(), None)], &cp).unwrap();
        let mut seen = Vec::new();
        s.scan(b"a", Some(b"b"), &mut |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen, vec![b"a1".to_vec()]);
        assert_eq!(s.stats().entries, 2);
        assert_eq!(s.stats().bytes, 6);
    }
}
