//! Timers (punctuators): a processor schedules a callback for a key at a time, on stream time
//! or on the wall clock, and [`Processor::on_timer`](crate::Processor::on_timer) runs when it
//! is due, inside the open transaction: its outputs and state writes commit exactly once, with
//! the input offsets.
//!
//! - **Stream time** is the largest record timestamp the task has seen (records without a
//!   timestamp do not move it). It only moves with the input: a stream-time timer fires right
//!   after the record that takes stream time to or past it, before the next record.
//! - **Wall-clock time** is the clock's. A wall-clock timer fires at the first turn of the
//!   stream thread at or after it, with or without input.
//!
//! Timers are keyed: one timer per kind and key (e.g. an account), and scheduling a key again
//! moves its timer. They live in the task's timer store (a state store named
//! [`TIMER_STORE`], changelogged to `{app}-{input}-timers-changelog`), with the task's stream
//! time, so they survive crashes and task moves: a timer fires exactly once, and its firing
//! (the callback's effects and the timer's removal) commits with the transaction or not at
//! all. Declare the store once per app: `App::timers()` (or
//! `TaskConfig::stores.push(StoreSpec::timers())`).
//!
//! Outputs of a timer carry a message ID of their own, `timer/{stream|wall}/{key}@{due_ms}`
//! (see [`Output::propagate_message_id`](crate::Output::propagate_message_id)), so a downstream
//! exactly app dedups them like any other output.
//!
//! A timer whose callback fails for good (`DeadLetter`, a panic with the dead-letter policy,
//! retries exhausted) is removed and written to the dead-letter topic: key = the timer's key,
//! no value, `exactly.error.kind` the error's, `exactly.timer.kind` and `exactly.timer.due`.
//! `Fatal` (or a panic with the `fail` policy) stops the app and keeps the timer.

/// The name of the timer store (reserved: a store of that name holds timers).
pub const TIMER_STORE: &str = "timers";

/// Dead-letter headers of a timer whose callback failed for good.
pub mod timer_headers {
    /// `stream` or `wall`.
    pub const KIND: &str = "exactly.timer.kind";
    /// When it was due (ms, decimal).
    pub const DUE: &str = "exactly.timer.due";
}

/// Which time a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// The largest record timestamp the task has seen.
    Stream,
    /// The wall clock.
    Wall,
}

impl TimerKind {
    /// `stream` or `wall`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Wall => "wall",
        }
    }

    /// 0 for stream, 1 for wall.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Stream => 0,
            Self::Wall => 1,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Stream => b's',
            Self::Wall => b'w',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b's' => Some(Self::Stream),
            b'w' => Some(Self::Wall),
            _ => None,
        }
    }
}

/// A timer that is due, as [`Processor::on_timer`](crate::Processor::on_timer) gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// Which time it follows.
    pub kind: TimerKind,
    /// The key it was scheduled for.
    pub key: Vec<u8>,
    /// When it was due (ms since the Unix epoch).
    pub due_ms: i64,
}

impl Timer {
    /// The message ID its outputs carry: `timer/{kind}/{key}@{due_ms}`.
    pub fn message_id(&self) -> Vec<u8> {
        let mut id = format!("timer/{}/", self.kind.as_str()).into_bytes();
        id.extend_from_slice(&self.key);
        id.extend_from_slice(format!("@{}", self.due_ms).as_bytes());
        id
    }
}

// The timer store's keys. Values are written through the state store (so they carry its
// changelog encoding).
//
// - `k` kind key        → due (8 bytes, big endian): a key's timer, to move or cancel it;
// - `d` kind due' key   → empty: the timers in due order (due' = due with the sign bit
//                          flipped, big endian, so byte order is time order);
// - `t`                 → the task's stream time (8 bytes, big endian).

/// The key of `key`'s timer of `kind`.
pub(crate) fn by_key(kind: TimerKind, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.push(b'k');
    k.push(kind.tag());
    k.extend_from_slice(key);
    k
}

/// The due-order index entry of `key`'s timer at `due`.
pub(crate) fn by_due(kind: TimerKind, due: i64, key: &[u8]) -> Vec<u8> {
    let mut k = due_prefix(kind, due);
    k.extend_from_slice(key);
    k
}

/// The start of the due-order entries of `kind` due at `due`.
pub(crate) fn due_prefix(kind: TimerKind, due: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(b'd');
    k.push(kind.tag());
    k.extend_from_slice(&((due as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The first due-order key of `kind`.
pub(crate) fn first_due(kind: TimerKind) -> Vec<u8> {
    vec![b'd', kind.tag()]
}

/// The key the stream time is kept under.
pub(crate) const STREAM_TIME_KEY: &[u8] = b"t";

/// A timer from its due-order entry key.
pub(crate) fn parse_due(entry: &[u8]) -> Option<Timer> {
    if entry.len() < 10 || entry[0] != b'd' {
        return None;
    }
    let kind = TimerKind::from_tag(entry[1])?;
    let due = (u64::from_be_bytes(entry[2..10].try_into().ok()?) ^ (1 << 63)) as i64;
    Some(Timer {
        kind,
        key: entry[10..].to_vec(),
        due_ms: due,
    })
}

/// An i64 value of the timer store.
pub(crate) fn decode_i64(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_sort_by_kind_then_time_then_key() {
        let mut keys = [
            by_due(TimerKind::Wall, -5, b"a"),
            by_due(TimerKind::Stream, 10, b"b"),
            by_due(TimerKind::Stream, -1, b"z"),
            by_due(TimerKind::Stream, 10, b"a"),
            by_due(TimerKind::Stream, i64::MAX, b""),
        ];
        keys.sort();
        let parsed: Vec<_> = keys
            .iter()
            .map(|k| {
                let t = parse_due(k).unwrap();
                (t.kind, t.due_ms, t.key)
            })
            .collect();
        assert_eq!(
            parsed,
            vec![
                (TimerKind::Stream, -1, b"z".to_vec()),
                (TimerKind::Stream, 10, b"a".to_vec()),
                (TimerKind::Stream, 10, b"b".to_vec()),
                (TimerKind::Stream, i64::MAX, b"".to_vec()),
                (TimerKind::Wall, -5, b"a".to_vec()),
            ]
        );
        assert!(due_prefix(TimerKind::Stream, 11) > by_due(TimerKind::Stream, 10, b"\xff\xff"));
        assert!(first_due(TimerKind::Stream) <= by_due(TimerKind::Stream, i64::MIN, b""));
        assert_eq!(parse_due(b"k"), None);
    }

    #[test]
    fn a_timers_message_id_names_kind_key_and_time() {
        let t = Timer {
            kind: TimerKind::Stream,
            key: b"acct-1".to_vec(),
            due_ms: 1_700_000_060_000,
        };
        assert_eq!(t.message_id(), b"timer/stream/acct-1@1700000060000");
    }
}
