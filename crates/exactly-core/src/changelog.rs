//! The dedup changelog codec (bincode 2, every value led by a version byte).
//!
//! # Format
//!
//! A task writes **one record per transaction** to its dedup changelog partition: the IDs the
//! transaction made seen, as [`IdKey`]s, in the order they were handled (split into several
//! records only when one would exceed the topic's `max.message.bytes`).
//!
//! - value: `[2] ++ bincode(first_seen_ms: i64, source_offset: i64, count: u32) ++ count ×
//!   (key: [u8; 16], Δfirst_seen_ms: i64, Δsource_offset: i64)`. Each delta is against the
//!   entry before (the first entry's are 0); bincode writes integers as zigzag varints, so an
//!   entry usually takes 18 bytes.
//! - key: the first 16 bytes of the value's BLAKE3 hash. Keys must differ between records,
//!   or compaction (`cleanup.policy=compact,delete`) would keep only the last record of a
//!   key and forget the IDs of the others; a key derived from the content can only repeat
//!   for the same content, whose loss loses nothing.
//!
//! Why not one record per ID, as before: dedup IDs are only ever inserted (and expire by
//! `retention.ms`), so per-ID keys gain nothing from compaction, while every ID cost the
//! broker a record beside the output it deduplicates, and a restore decoded a record per ID.
//!
//! Records of the per-ID format (value `[1] ++ bincode(SeenEntry)`, key = the raw ID) are
//! still read, so a changelog written by an older version restores; an unknown version is an
//! error, never a guess.
//!
//! It lives in `exactly-core` (not `exactly-state`) because the pure state machine writes these
//! records and the in-memory `TestDriver` restores from them; see docs/architecture.md.

use crate::id::IdKey;
use crate::store::{ChangelogCheckpoint, SeenEntry};
use thiserror::Error;

/// Version byte of a per-ID changelog value (key: the raw ID), read but no longer written.
pub const ENTRY_VALUE_VERSION: u8 = 1;
/// Version byte of a batch changelog value: the IDs one transaction of a task made seen.
pub const BATCH_VALUE_VERSION: u8 = 2;
/// Version byte of an encoded [`ChangelogCheckpoint`].
pub const CHECKPOINT_VERSION: u8 = 1;

/// Bytes of a batch value's header at most: version byte, two i64 and a u32 as varints.
const BATCH_HEADER_MAX: usize = 1 + 9 + 9 + 5;
/// Bytes of one batch entry at most: the key and two i64 deltas as varints.
const BATCH_ENTRY_MAX: usize = IdKey::LEN + 9 + 9;
/// Bytes of one batch entry at least: the key and two one-byte deltas.
const BATCH_ENTRY_MIN: usize = IdKey::LEN + 2;

/// The smallest record size limit a batch can be split for (one entry per record).
pub const MIN_BATCH_VALUE_BYTES: usize = BATCH_HEADER_MAX + BATCH_ENTRY_MAX;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Errors decoding a changelog or checkpoint value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The value was empty.
    #[error("empty changelog value")]
    Empty,
    /// The version byte is not one this build understands.
    #[error("unknown changelog value version {0} (this build reads versions {ENTRY_VALUE_VERSION} and {BATCH_VALUE_VERSION}); upgrade exactly")]
    UnknownVersion(u8),
    /// The payload is not valid bincode for the expected type.
    #[error("malformed changelog value: {0}")]
    Malformed(String),
}

/// Encodes a [`SeenEntry`] as a per-ID changelog value (version 1) into `buf` (cleared first).
/// Only tests and benchmarks write this format now; restores still read it.
pub fn encode_entry_into(entry: &SeenEntry, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(ENTRY_VALUE_VERSION);
    bincode::encode_into_std_write(entry, buf, config())
        .expect("writing into a Vec<u8> cannot fail");
}

/// Encodes a [`SeenEntry`] as a per-ID changelog value (version 1).
pub fn encode_entry(entry: &SeenEntry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16);
    encode_entry_into(entry, &mut buf);
    buf
}

/// Decodes a per-ID changelog value (version 1).
pub fn decode_entry(value: &[u8]) -> Result<SeenEntry, CodecError> {
    decode_versioned(value, ENTRY_VALUE_VERSION)
}

/// Encodes a checkpoint (stores keep it next to the entries).
pub fn encode_checkpoint(cp: &ChangelogCheckpoint) -> Vec<u8> {
    let mut buf = vec![CHECKPOINT_VERSION];
    bincode::encode_into_std_write(cp, &mut buf, config())
        .expect("writing into a Vec<u8> cannot fail");
    buf
}

/// Decodes a checkpoint written by [`encode_checkpoint`].
pub fn decode_checkpoint(value: &[u8]) -> Result<ChangelogCheckpoint, CodecError> {
    decode_versioned(value, CHECKPOINT_VERSION)
}

fn decode_versioned<T: bincode::Decode<()>>(value: &[u8], expected: u8) -> Result<T, CodecError> {
    let (&version, payload) = value.split_first().ok_or(CodecError::Empty)?;
    if version != expected {
        return Err(CodecError::UnknownVersion(version));
    }
    let (decoded, used) = bincode::decode_from_slice(payload, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(decoded)
}

/// The key of a batch record with value `value` (see the module docs).
pub fn batch_record_key(value: &[u8]) -> [u8; IdKey::LEN] {
    let mut key = [0u8; IdKey::LEN];
    key.copy_from_slice(&blake3::hash(value).as_bytes()[..IdKey::LEN]);
    key
}

/// How many entries fit a batch value of at most `max_value_bytes`, whatever their deltas.
pub fn entries_per_batch_value(max_value_bytes: usize) -> usize {
    (max_value_bytes.saturating_sub(BATCH_HEADER_MAX) / BATCH_ENTRY_MAX).max(1)
}

/// Encodes `entries` (in the order they were handled) as one batch value into `buf`
/// (cleared first). Split a transaction's entries with [`entries_per_batch_value`] first.
pub fn encode_batch_into(
    entries: impl ExactSizeIterator<Item = (IdKey, SeenEntry)>,
    buf: &mut Vec<u8>,
) {
    buf.clear();
    buf.reserve(BATCH_HEADER_MAX + entries.len() * (BATCH_ENTRY_MIN + 1));
    buf.push(BATCH_VALUE_VERSION);
    let count = u32::try_from(entries.len()).expect("a batch value holds fewer than 2^32 IDs");
    let mut entries = entries.peekable();
    let (first_seen, first_offset) = entries
        .peek()
        .map_or((0, 0), |(_, e)| (e.first_seen_ms, e.source_offset));
    encode_next(&(first_seen, first_offset, count), buf);
    let (mut seen, mut offset) = (first_seen, first_offset);
    for (key, entry) in entries {
        buf.extend_from_slice(key.as_bytes());
        let deltas = (
            entry.first_seen_ms.wrapping_sub(seen),
            entry.source_offset.wrapping_sub(offset),
        );
        encode_next(&deltas, buf);
        (seen, offset) = (entry.first_seen_ms, entry.source_offset);
    }
}

fn encode_next(value: &impl bincode::Encode, buf: &mut Vec<u8>) {
    bincode::encode_into_std_write(value, buf, config())
        .expect("writing into a Vec<u8> cannot fail");
}

/// Decodes a dedup changelog record (`key`, `value`) of either format and hands each ID it
/// records to `f`, in order. Returns how many it handed over; on `Err` some may have been.
pub fn decode_record(
    key: &[u8],
    value: &[u8],
    mut f: impl FnMut(IdKey, SeenEntry),
) -> Result<usize, CodecError> {
    match value.first() {
        None => Err(CodecError::Empty),
        Some(&ENTRY_VALUE_VERSION) => {
            f(IdKey::of(key), decode_entry(value)?);
            Ok(1)
        }
        Some(&BATCH_VALUE_VERSION) => decode_batch(&value[1..], f),
        Some(&other) => Err(CodecError::UnknownVersion(other)),
    }
}

fn decode_batch(payload: &[u8], mut f: impl FnMut(IdKey, SeenEntry)) -> Result<usize, CodecError> {
    let mut rest = payload;
    let (mut seen, mut offset, count) = decode_next::<(i64, i64, u32)>(&mut rest)?;
    let count = count as usize;
    if rest.len() < count.saturating_mul(BATCH_ENTRY_MIN) {
        return Err(CodecError::Malformed(format!(
            "{count} IDs announced in {} bytes",
            rest.len()
        )));
    }
    for _ in 0..count {
        let (key, d_seen, d_offset) = decode_next::<([u8; IdKey::LEN], i64, i64)>(&mut rest)?;
        seen = seen.wrapping_add(d_seen);
        offset = offset.wrapping_add(d_offset);
        f(
            IdKey::from_bytes(key),
            SeenEntry {
                first_seen_ms: seen,
                source_offset: offset,
            },
        );
    }
    match rest.len() {
        0 => Ok(count),
        n => Err(CodecError::Malformed(format!("{n} trailing bytes"))),
    }
}

/// Decodes one `T` from the front of `rest` and moves `rest` past it.
fn decode_next<T: bincode::Decode<()>>(rest: &mut &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::decode_from_slice(rest, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    *rest = &rest[used..];
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first_seen_ms: i64, source_offset: i64) -> SeenEntry {
        SeenEntry {
            first_seen_ms,
            source_offset,
        }
    }

    fn decode_all(key: &[u8], value: &[u8]) -> Result<Vec<(IdKey, SeenEntry)>, CodecError> {
        let mut out = Vec::new();
        decode_record(key, value, |k, e| out.push((k, e)))?;
        Ok(out)
    }

    #[test]
    fn entry_round_trips() {
        let e = entry(1_700_000_000_123, 42);
        assert_eq!(decode_entry(&encode_entry(&e)), Ok(e));
    }

    #[test]
    fn checkpoint_round_trips() {
        let cp = ChangelogCheckpoint {
            topic: "a-in-dedup-changelog".into(),
            partition: 3,
            next_offset: 9,
        };
        assert_eq!(decode_checkpoint(&encode_checkpoint(&cp)), Ok(cp));
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut v = encode_entry(&entry(1, 2));
        v[0] = 9;
        assert_eq!(decode_entry(&v), Err(CodecError::UnknownVersion(9)));
        assert_eq!(decode_all(b"k", &v), Err(CodecError::UnknownVersion(9)));
    }

    #[test]
    fn empty_and_truncated_values_are_rejected() {
        assert_eq!(decode_entry(&[]), Err(CodecError::Empty));
        assert!(matches!(
            decode_entry(&[ENTRY_VALUE_VERSION]),
            Err(CodecError::Malformed(_))
        ));
        let mut v = encode_entry(&entry(1, 2));
        v.push(0);
        assert!(matches!(decode_entry(&v), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn a_per_id_record_decodes_to_the_key_of_its_raw_id() {
        let value = encode_entry(&entry(5, 6));
        assert_eq!(
            decode_all(b"order-1", &value),
            Ok(vec![(IdKey::of(b"order-1"), entry(5, 6))])
        );
    }

    #[test]
    fn a_batch_round_trips_in_order_with_any_deltas() {
        let entries = vec![
            (IdKey::of(b"a"), entry(1_700_000_000_000, 10)),
            (IdKey::of(b"b"), entry(1_700_000_000_000, 11)),
            (IdKey::of(b"c"), entry(1_699_999_999_000, 12)), // the wall clock went back
            (IdKey::of(b"d"), entry(i64::MAX, i64::MIN)),
            (IdKey::of(b"e"), entry(i64::MIN, i64::MAX)),
        ];
        let mut value = Vec::new();
        encode_batch_into(entries.iter().copied(), &mut value);
        assert_eq!(value[0], BATCH_VALUE_VERSION);
        assert_eq!(decode_all(&batch_record_key(&value), &value), Ok(entries));
    }

    #[test]
    fn an_empty_batch_round_trips() {
        let mut value = Vec::new();
        encode_batch_into(std::iter::empty(), &mut value);
        assert_eq!(decode_all(&batch_record_key(&value), &value), Ok(vec![]));
    }

    #[test]
    fn consecutive_ids_take_eighteen_bytes_each() {
        let entries: Vec<_> = (0..1000)
            .map(|i: i64| {
                (
                    IdKey::of(&i.to_le_bytes()),
                    entry(1_700_000_000_000 + i / 100, i),
                )
            })
            .collect();
        let mut value = Vec::new();
        encode_batch_into(entries.iter().copied(), &mut value);
        assert!(
            value.len() <= BATCH_HEADER_MAX + 1000 * 18,
            "{}",
            value.len()
        );
    }

    #[test]
    fn a_full_batch_stays_within_its_limit_whatever_its_deltas() {
        let limit = 10_000;
        let n = entries_per_batch_value(limit);
        let entries: Vec<_> = (0..n)
            .map(|i| {
                let far = if i % 2 == 0 { i64::MIN } else { i64::MAX };
                (IdKey::of(&i.to_le_bytes()), entry(far, far))
            })
            .collect();
        let mut value = Vec::new();
        encode_batch_into(entries.iter().copied(), &mut value);
        assert!(value.len() <= limit, "{} > {limit}", value.len());
        assert_eq!(entries_per_batch_value(MIN_BATCH_VALUE_BYTES), 1);
    }

    #[test]
    fn damaged_batches_are_rejected() {
        let entries = [
            (IdKey::of(b"a"), entry(1, 2)),
            (IdKey::of(b"b"), entry(3, 4)),
        ];
        let mut value = Vec::new();
        encode_batch_into(entries.iter().copied(), &mut value);
        for cut in 1..value.len() {
            assert!(
                matches!(
                    decode_all(b"", &value[..cut]),
                    Err(CodecError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(matches!(
            decode_all(b"", &longer),
            Err(CodecError::Malformed(_))
        ));
        // A count far beyond the bytes present is refused before anything is decoded.
        let mut huge = vec![BATCH_VALUE_VERSION];
        bincode::encode_into_std_write((0i64, 0i64, u32::MAX), &mut huge, config()).unwrap();
        let mut handed = 0;
        assert!(matches!(
            decode_record(b"", &huge, |_, _| handed += 1),
            Err(CodecError::Malformed(_))
        ));
        assert_eq!(handed, 0);
    }
}
