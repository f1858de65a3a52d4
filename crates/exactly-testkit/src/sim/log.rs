//! Partition logs as Apache Kafka keeps them: offsets that never change, transactional records
//! pending until their transaction's marker, read_committed reads correct from any offset,
//! compaction and retention that remove records but keep offsets.

use std::collections::BTreeMap;

/// A record stored in a simulated partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRecord {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp (ms).
    pub timestamp: Option<i64>,
}

impl SimRecord {
    /// Bytes the record takes in a batch, roughly as the broker counts it against
    /// `max.message.bytes`: key, value, header names and values.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }

    /// The last header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Where an entry's transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Visible to read_committed readers.
    Committed,
    /// In transaction `txn`, not resolved yet.
    Pending { txn: u64 },
    /// In an aborted transaction: never visible to read_committed readers.
    Aborted,
    /// A transaction marker (commit or abort): takes an offset, carries no record.
    Marker,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) record: Option<SimRecord>,
    pub(crate) status: Status,
}

/// How a topic's old records are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicConfig {
    /// `cleanup.policy` contains `compact`: only the latest record of each key is kept.
    pub compact: bool,
    /// `retention.ms` (`None`: kept forever). Records older than this are deleted.
    pub retention_ms: Option<i64>,
    /// `max.message.bytes` (`None`: no limit): a larger record is refused (MESSAGE_TOO_LARGE).
    pub max_message_bytes: Option<usize>,
}

/// One partition's log.
#[derive(Debug, Default, Clone)]
pub(crate) struct PartitionLog {
    /// Entry at offset `i`; `None` once compaction or retention removed it.
    entries: Vec<Option<Entry>>,
    /// Log start offset (retention moved it).
    start: i64,
    /// First offset of each open transaction on this partition: the LSO is the least.
    open: BTreeMap<u64, i64>,
}

impl PartitionLog {
    /// The high watermark: the offset the next entry gets.
    pub(crate) fn end(&self) -> i64 {
        self.entries.len() as i64
    }

    /// The log start offset.
    pub(crate) fn start(&self) -> i64 {
        self.start
    }

    /// The last stable offset: the first offset of the oldest open transaction, else the end.
    pub(crate) fn last_stable_offset(&self) -> i64 {
        self.open
            .values()
            .copied()
            .min()
            .unwrap_or_else(|| self.end())
    }

    /// Appends an entry; returns its offset.
    pub(crate) fn append(&mut self, record: SimRecord, status: Status) -> i64 {
        let offset = self.end();
        if let Status::Pending { txn } = status {
            self.open.entry(txn).or_insert(offset);
        }
        self.entries.push(Some(Entry {
            record: Some(record),
            status,
        }));
        offset
    }

    /// Resolves transaction `txn` on this partition and writes its marker.
    pub(crate) fn finish(&mut self, txn: u64, commit: bool) {
        if let Some(first) = self.open.remove(&txn) {
            for e in self.entries[first as usize..].iter_mut().flatten() {
                if e.status == (Status::Pending { txn }) {
                    e.status = if commit {
                        Status::Committed
                    } else {
                        Status::Aborted
                    };
                }
            }
        }
        self.entries.push(Some(Entry {
            record: None,
            status: Status::Marker,
        }));
    }

    /// Committed records from `from` (clamped to the log start) up to the last stable
    /// offset, at most `max`: `(offset, record)` pairs and the position after the last entry
    /// scanned. Aborted records, markers and removed entries are skipped wherever the read
    /// starts (Apache Kafka sends the aborted-transaction index of the fetched range).
    pub(crate) fn read_committed(&self, from: i64, max: usize) -> (Vec<(i64, &SimRecord)>, i64) {
        let lso = self.last_stable_offset();
        let mut out = Vec::new();
        let mut pos = from.max(self.start);
        while pos < lso && out.len() < max {
            if let Some(Entry {
                record: Some(r),
                status: Status::Committed,
            }) = &self.entries[pos as usize]
            {
                out.push((pos, r));
            }
            pos += 1;
        }
        (out, pos.max(from))
    }

    /// Number of records of any status (markers and removed entries excluded).
    pub(crate) fn records_any_status(&self) -> usize {
        self.entries
            .iter()
            .flatten()
            .filter(|e| e.record.is_some())
            .count()
    }

    /// Whether any entry (of any status) lies at or after `offset`.
    pub(crate) fn has_pending(&self) -> bool {
        !self.open.is_empty()
    }

    /// Compaction of the stable part of the log (below the LSO): keeps the latest committed
    /// record of each key, drops aborted records and markers, and drops tombstones older than
    /// `delete_retention_ms`. Offsets do not change. Returns how many entries it removed.
    pub(crate) fn compact(&mut self, now_ms: i64, delete_retention_ms: i64) -> usize {
        let lso = self.last_stable_offset() as usize;
        let mut latest: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        for (i, e) in self.entries[..lso].iter().enumerate() {
            if let Some(Entry {
                record: Some(r),
                status: Status::Committed,
            }) = e
            {
                latest.insert(r.key.clone().unwrap_or_default(), i);
            }
        }
        let mut removed = 0;
        for i in 0..lso {
            let drop = match &self.entries[i] {
                None => false,
                Some(Entry {
                    record: Some(r),
                    status: Status::Committed,
                }) => {
                    let key = r.key.clone().unwrap_or_default();
                    latest[&key] != i
                        || (r.value.is_none()
                            && r.timestamp.unwrap_or(0) < now_ms - delete_retention_ms)
                }
                // Aborted records and markers below the LSO carry nothing for readers.
                Some(_) => true,
            };
            if drop {
                self.entries[i] = None;
                removed += 1;
            }
        }
        removed
    }

    /// DeleteRecords: removes every entry before `offset` (at most up to the high
    /// watermark); the log start moves there. Returns the new log start.
    pub(crate) fn delete_before(&mut self, offset: i64) -> i64 {
        let to = offset.min(self.end());
        while self.start < to {
            self.entries[self.start as usize] = None;
            self.start += 1;
        }
        self.start
    }

    /// Retention: removes the oldest entries whose records are older than `retention_ms`
    /// (only below the LSO, like Kafka's segment deletion); the log start moves past them.
    pub(crate) fn apply_retention(&mut self, now_ms: i64, retention_ms: i64) -> usize {
        let lso = self.last_stable_offset();
        let mut removed = 0;
        while self.start < lso {
            let old = match &self.entries[self.start as usize] {
                None => true,
                Some(e) => match &e.record {
                    Some(r) => r.timestamp.unwrap_or(0) < now_ms - retention_ms,
                    None => true,
                },
            };
            if !old {
                break;
            }
            if self.entries[self.start as usize].take().is_some() {
                removed += 1;
            }
            self.start += 1;
        }
        removed
    }
}
