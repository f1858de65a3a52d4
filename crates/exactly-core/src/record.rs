//! Records in and out of a processor.

use std::fmt;
use std::sync::Arc;

/// Identifies a task: one input topic partition, processed by one `Processor` instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Input topic.
    pub topic: Arc<str>,
    /// Input partition.
    pub partition: i32,
}

impl TaskId {
    /// A task id for `topic`/`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A record header, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    /// Header name.
    pub key: &'a str,
    /// Header value (`None` is a null header).
    pub value: Option<&'a [u8]>,
}

/// An input record, borrowed from the consumer's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record timestamp in ms since the Unix epoch, if the record has one.
    pub timestamp: Option<i64>,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Record headers, in order.
    pub headers: &'a [HeaderRef<'a>],
}

impl<'a> Record<'a> {
    /// The value of the last header named `name` (Kafka allows repeated headers; the last wins).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .rev()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
    }
}

/// A record to produce. Built with [`Output::to`] and chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition; `None` lets the producer's partitioner choose (by key).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp in ms; `None` lets the producer set it.
    pub timestamp: Option<i64>,
    /// Whether the runtime adds the input record's message ID as a header when the output
    /// has none of that name (default `true`): the header the app reads IDs from (by default
    /// `message-id`), or `message-id` when IDs come from the key or a custom extractor. A
    /// downstream exactly app then dedups the output without code. When one input has several
    /// such outputs, the first carries the ID and the n-th after it `{id}#{n}`, so a fan-out
    /// is not mistaken for copies downstream. Cleared by
    /// [`without_message_id`](Self::without_message_id).
    pub propagate_message_id: bool,
}

impl Output {
    /// A new empty record for `topic`.
    pub fn to(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp: None,
            propagate_message_id: true,
        }
    }
    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the value.
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }
    /// Appends a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }
    /// Sets an explicit partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
    /// Sets the timestamp (ms since the Unix epoch).
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
    /// Does not add the input's message ID header (see
    /// [`propagate_message_id`](Self::propagate_message_id)): for an output that is not a
    /// consequence of one input alone, e.g. a window's aggregate, whose ID you set yourself.
    pub fn without_message_id(mut self) -> Self {
        self.propagate_message_id = false;
        self
    }
    /// Copies key, value and headers of `record` (a forward).
    pub fn forward(topic: impl Into<String>, record: &Record<'_>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: record.timestamp,
            propagate_message_id: true,
        }
    }
    /// The value of the last header named `name`.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// What kind of record the task asks the transactional writer to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An output of the processor.
    Output,
    /// A dedup changelog record (key = message id).
    Changelog,
    /// A dead-letter record.
    DeadLetter,
}
