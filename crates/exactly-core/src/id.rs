//! Message IDs: where they come from and what happens when one is missing or invalid.

use crate::record::Record;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Default header that carries the message ID.
pub const DEFAULT_ID_HEADER: &str = "message-id";
/// Default maximum ID length in bytes.
pub const DEFAULT_MAX_ID_LEN: usize = 256;

/// A user-supplied ID extractor.
pub type IdFn = dyn for<'r> Fn(&Record<'r>) -> Option<Cow<'r, [u8]>> + Send + Sync;

/// Where a record's message ID comes from.
#[derive(Clone)]
pub enum IdSource {
    /// The value of a header (default: `message-id`).
    Header(String),
    /// The record key.
    Key,
    /// A closure over the record (e.g. a field of the value, or a hash).
    Custom(Arc<IdFn>),
}

impl IdSource {
    /// A custom extractor.
    pub fn custom(
        f: impl for<'r> Fn(&Record<'r>) -> Option<Cow<'r, [u8]>> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom(Arc::new(f))
    }

    /// The header an output carries its input's message ID in (see
    /// [`Output::propagate_message_id`](crate::Output::propagate_message_id)): the header IDs
    /// are read from, or [`DEFAULT_ID_HEADER`] when they come from the key or a custom
    /// extractor.
    pub fn propagated_header(&self) -> &str {
        match self {
            Self::Header(name) => name,
            Self::Key | Self::Custom(_) => DEFAULT_ID_HEADER,
        }
    }

    /// Extracts the raw ID (not validated).
    pub fn extract<'r>(&self, record: &Record<'r>) -> Option<Cow<'r, [u8]>> {
        match self {
            Self::Header(name) => record.header(name).map(Cow::Borrowed),
            Self::Key => record.key.map(Cow::Borrowed),
            Self::Custom(f) => f(record),
        }
    }
}

impl Default for IdSource {
    fn default() -> Self {
        Self::Header(DEFAULT_ID_HEADER.to_owned())
    }
}

impl fmt::Debug for IdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(h) => write!(f, "Header({h:?})"),
            Self::Key => f.write_str("Key"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What to do with a record whose ID is missing, empty or too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidIdPolicy {
    /// Send it to the dead-letter topic (in the transaction) and go on. Default.
    #[default]
    DeadLetter,
    /// Process it without dedup (counted as `ids_without_dedup`).
    Process,
    /// Stop the task with an error; nothing of the batch is committed.
    Fail,
}

/// Why an ID was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidId {
    /// No ID found.
    Missing,
    /// The ID is zero bytes long.
    Empty,
    /// The ID is longer than the configured maximum.
    Oversized {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

impl InvalidId {
    /// A stable label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing_id",
            Self::Empty => "empty_id",
            Self::Oversized { .. } => "oversized_id",
        }
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("record has no message ID"),
            Self::Empty => f.write_str("record has an empty message ID"),
            Self::Oversized { len, max } => write!(
                f,
                "message ID is {len} bytes, longer than the maximum of {max} (raise `ids.max_len` or shorten the IDs)"
            ),
        }
    }
}

/// How IDs are extracted and validated.
#[derive(Debug, Clone)]
pub struct IdPolicy {
    /// Where the ID comes from.
    pub source: IdSource,
    /// Maximum ID length in bytes.
    pub max_len: usize,
    /// What to do with a missing, empty or oversized ID.
    pub on_invalid: InvalidIdPolicy,
}

impl Default for IdPolicy {
    fn default() -> Self {
        Self {
            source: IdSource::default(),
            max_len: DEFAULT_MAX_ID_LEN,
            on_invalid: InvalidIdPolicy::default(),
        }
    }
}

impl IdPolicy {
    /// Extracts and validates the ID of `record`.
    pub fn id_of<'r>(&self, record: &Record<'r>) -> Result<Cow<'r, [u8]>, InvalidId> {
        let id = self.source.extract(record).ok_or(InvalidId::Missing)?;
        if id.is_empty() {
            return Err(InvalidId::Empty);
        }
        if id.len() > self.max_len {
            return Err(InvalidId::Oversized {
                len: id.len(),
                max: self.max_len,
            });
        }
        Ok(id)
    }
}

/// The fixed-size key a message ID is remembered by: the first 16 bytes of the ID's BLAKE3
/// hash.
///
/// Dedup stores and the dedup changelog hold these keys, never the raw IDs: every key is 16
/// bytes whatever the ID's length (IDs may be up to `ids.max_len` bytes), so lookups compare
/// fixed-width keys and a changelog record fits thousands of them. BLAKE3 is
/// collision-resistant: two different IDs share a key with probability about n²/2¹²⁹ for n
/// stored IDs (below 10⁻¹⁴ at 10¹² IDs), and a producer cannot craft an ID whose key matches
/// another's. The key is part of the on-disk and on-topic format: changing it would make every
/// stored ID unknown.
///
/// ```
/// use exactly_core::IdKey;
/// let key = IdKey::of(b"order-17");
/// assert_eq!(key, IdKey::of(b"order-17"));
/// assert_ne!(key, IdKey::of(b"order-18"));
/// assert_eq!(key.to_string().len(), 32); // hex
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdKey([u8; IdKey::LEN]);

impl IdKey {
    /// Bytes in a key.
    pub const LEN: usize = 16;

    /// The key of message ID `id`.
    pub fn of(id: &[u8]) -> Self {
        let hash = blake3::hash(id);
        let mut key = [0u8; Self::LEN];
        key.copy_from_slice(&hash.as_bytes()[..Self::LEN]);
        Self(key)
    }

    /// A key read back from a store or changelog.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// A key read back from a store or changelog, if `bytes` has the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Display for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdKey({self})")
    }
}

/// Hashes [`IdKey`]s for in-memory tables: keyed per process (a producer that knows the
/// unkeyed BLAKE3 keys still cannot aim IDs at one bucket) and a few nanoseconds per key,
/// where the standard library's SipHash over the raw IDs cost tens.
pub type IdKeyHasher = foldhash::fast::RandomState;

/// An in-memory set of message-ID keys.
pub type IdKeySet = std::collections::HashSet<IdKey, IdKeyHasher>;

/// An in-memory map from message-ID keys.
pub type IdKeyMap<V> = std::collections::HashMap<IdKey, V, IdKeyHasher>;
