//! The dedup changelog record codec (bincode 2, with a leading version byte).
//!
//! Key: the raw message ID bytes. Value: `[VERSION] ++ bincode(SeenEntry)`. The version byte
//! lets a future format be read side by side with this one; an unknown version is an error,
//! never a guess.
//!
//! It lives in `exactly-core` (not `exactly-state`) because the pure state machine writes these
//! records and the in-memory `TestDriver` restores from them; see docs/architecture.md.

use crate::store::{ChangelogCheckpoint, SeenEntry};
use thiserror::Error;

/// Current changelog value format.
pub const CHANGELOG_VALUE_VERSION: u8 = 1;

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
    #[error("unknown changelog value version {0} (this build reads version {CHANGELOG_VALUE_VERSION}); upgrade exactly")]
    UnknownVersion(u8),
    /// The payload is not valid bincode for the expected type.
    #[error("malformed changelog value: {0}")]
    Malformed(String),
}

/// Encodes a [`SeenEntry`] as a changelog value into `buf` (cleared first).
pub fn encode_entry_into(entry: &SeenEntry, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(CHANGELOG_VALUE_VERSION);
    bincode::encode_into_std_write(entry, buf, config())
        .expect("writing into a Vec<u8> cannot fail");
}

/// Encodes a [`SeenEntry`] as a changelog value.
pub fn encode_entry(entry: &SeenEntry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16);
    encode_entry_into(entry, &mut buf);
    buf
}

/// Decodes a changelog value.
pub fn decode_entry(value: &[u8]) -> Result<SeenEntry, CodecError> {
    decode_versioned(value)
}

/// Encodes a checkpoint (stores keep it next to the entries).
pub fn encode_checkpoint(cp: &ChangelogCheckpoint) -> Vec<u8> {
    let mut buf = vec![CHANGELOG_VALUE_VERSION];
    bincode::encode_into_std_write(cp, &mut buf, config())
        .expect("writing into a Vec<u8> cannot fail");
    buf
}

/// Decodes a checkpoint written by [`encode_checkpoint`].
pub fn decode_checkpoint(value: &[u8]) -> Result<ChangelogCheckpoint, CodecError> {
    decode_versioned(value)
}

fn decode_versioned<T: bincode::Decode<()>>(value: &[u8]) -> Result<T, CodecError> {
    let (&version, payload) = value.split_first().ok_or(CodecError::Empty)?;
    if version != CHANGELOG_VALUE_VERSION {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let e = SeenEntry {
            first_seen_ms: 1_700_000_000_123,
            source_offset: 42,
        };
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
        let mut v = encode_entry(&SeenEntry {
            first_seen_ms: 1,
            source_offset: 2,
        });
        v[0] = 9;
        assert_eq!(decode_entry(&v), Err(CodecError::UnknownVersion(9)));
    }

    #[test]
    fn empty_and_truncated_values_are_rejected() {
        assert_eq!(decode_entry(&[]), Err(CodecError::Empty));
        assert!(matches!(
            decode_entry(&[CHANGELOG_VALUE_VERSION]),
            Err(CodecError::Malformed(_))
        ));
        let mut v = encode_entry(&SeenEntry {
            first_seen_ms: 1,
            source_offset: 2,
        });
        v.push(0);
        assert!(matches!(decode_entry(&v), Err(CodecError::Malformed(_))));
    }
}
