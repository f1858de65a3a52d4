//! Typed topic handles: a topic's name with the serdes of its keys and values, declared once
//! and used by the app (to subscribe or check the topic) and by the processor (to decode its
//! input and encode its outputs).
//!
//! `Topic<V, K = String, VS = Json, KS = Utf8>` reads "a topic of `V` values, keyed by `K`":
//! `Topic<Order>` carries JSON orders with UTF-8 keys, `Topic<Total, String, Bincode>`
//! bincode values, `Topic<Vec<u8>, Vec<u8>, Bytes, Bytes>` raw bytes.
//!
//! ```
//! use exactly_core::topic::Topic;
//! use exactly_core::{Context, ProcessError, Processor, Record};
//!
//! #[derive(serde::Deserialize)]
//! struct Payment { account: String, cents: i64 }
//! #[derive(serde::Serialize)]
//! struct Charge { account: String, cents: i64 }
//!
//! struct Charges { payments: Topic<Payment>, charges: Topic<Charge> }
//!
//! impl Processor for Charges {
//!     fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         // Not JSON of a payment: dead-lettered with `exactly.error.kind = deserialization`.
//!         let p = self.payments.value(record)?;
//!         let charge = Charge { cents: p.cents * 2, account: p.account };
//!         ctx.send(self.charges.output(&charge.account, &charge)?);
//!         Ok(())
//!     }
//! }
//! ```

use crate::codec::{Deserializer, Json, SerdeError, Serializer, Utf8};
use crate::error::ProcessError;
use crate::record::{Output, Record};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A decoded input record: its key (if it has one) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<K, V> {
    /// The decoded key; `None` if the record has no key.
    pub key: Option<K>,
    /// The decoded value.
    pub value: V,
}

/// A topic with its key and value serdes. Cheap to clone: keep one in the processor.
pub struct Topic<V, K = String, VS = Json, KS = Utf8> {
    name: Arc<str>,
    value_serde: VS,
    key_serde: KS,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<V, K, VS: Clone, KS: Clone> Clone for Topic<V, K, VS, KS> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            value_serde: self.value_serde.clone(),
            key_serde: self.key_serde.clone(),
            _types: PhantomData,
        }
    }
}

impl<V, K, VS, KS> fmt::Debug for Topic<V, K, VS, KS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("value", &std::any::type_name::<V>())
            .field("value_serde", &std::any::type_name::<VS>())
            .field("key", &std::any::type_name::<K>())
            .field("key_serde", &std::any::type_name::<KS>())
            .finish()
    }
}

impl<V, K, VS: Default, KS: Default> Topic<V, K, VS, KS> {
    /// The topic `name` with the default-constructed serdes its type names.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::with_serdes(name, VS::default(), KS::default())
    }
}

impl<V, K, VS, KS> Topic<V, K, VS, KS> {
    /// The topic `name` with these serde instances (for serdes that carry state, e.g. a
    /// schema).
    pub fn with_serdes(name: impl Into<Arc<str>>, value_serde: VS, key_serde: KS) -> Self {
        Self {
            name: name.into(),
            value_serde,
            key_serde,
            _types: PhantomData,
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `record` was read from this topic (with several inputs, the processor asks
    /// before decoding).
    pub fn matches(&self, record: &Record<'_>) -> bool {
        record.topic == &*self.name
    }
}

impl<V, K, VS: Deserializer<V>, KS: Deserializer<K>> Topic<V, K, VS, KS> {
    /// Decodes `record`'s key and value.
    ///
    /// A value or key that does not decode, or a record without a value (a tombstone), is a
    /// [`ProcessError::Deserialization`]: the record goes to the dead-letter topic with
    /// `exactly.error.kind = deserialization` and the serde's message, once per message ID. A
    /// record of another topic is a [`ProcessError::Fatal`] (a programming error: check
    /// [`matches`](Self::matches) first when the app reads several topics).
    pub fn decode(&self, record: &Record<'_>) -> Result<Message<K, V>, ProcessError> {
        if !self.matches(record) {
            return Err(ProcessError::fatal(format!(
                "a record of topic `{}` was decoded with the handle of topic `{}`; check `Topic::matches` first when the app reads several topics",
                record.topic, self.name
            )));
        }
        self.decode_parts(record.key, record.value)
    }

    /// Decodes a key and value of this topic (as [`decode`](Self::decode) does a record's),
    /// e.g. of a record read back in a test.
    pub fn decode_parts(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Message<K, V>, ProcessError> {
        let value = value.ok_or_else(|| {
            ProcessError::deserialization(format!(
                "the record has no value (a tombstone) but topic `{}` carries {} values; read tombstones from the raw record",
                self.name,
                short_type_name::<V>()
            ))
        })?;
        let value = self.value_serde.decode(value).map_err(|e| {
            ProcessError::deserialization(format!(
                "the value does not decode as {} ({}): {e}",
                short_type_name::<V>(),
                short_type_name::<VS>()
            ))
        })?;
        let key = match key {
            None => None,
            Some(k) => Some(self.key_serde.decode(k).map_err(|e| {
                ProcessError::deserialization(format!(
                    "the key does not decode as {} ({}): {e}",
                    short_type_name::<K>(),
                    short_type_name::<KS>()
                ))
            })?),
        };
        Ok(Message { key, value })
    }

    /// The decoded value of `record` (see [`decode`](Self::decode)).
    pub fn value(&self, record: &Record<'_>) -> Result<V, ProcessError> {
        self.decode(record).map(|m| m.value)
    }
}

impl<V, K, VS, KS: Serializer<K>> Topic<V, K, VS, KS> {
    /// The bytes of `key` (for tests that produce to this topic).
    pub fn encode_key(&self, key: &K) -> Result<Vec<u8>, SerdeError> {
        self.key_serde.encode(key)
    }
}

impl<V, K, VS: Serializer<V>, KS> Topic<V, K, VS, KS> {
    /// The bytes of `value` (for tests that produce to this topic).
    pub fn encode_value(&self, value: &V) -> Result<Vec<u8>, SerdeError> {
        self.value_serde.encode(value)
    }
}

impl<V, K, VS: Serializer<V>, KS: Serializer<K>> Topic<V, K, VS, KS> {
    /// An output record to this topic with `key` and `value` encoded. It carries the input's
    /// message ID header unless [`Output::without_message_id`] is called on it.
    ///
    /// A value the serde cannot encode (e.g. a JSON map with non-string keys) is a
    /// [`ProcessError::DeadLetter`]: the input record goes to the dead-letter topic.
    pub fn output(&self, key: &K, value: &V) -> Result<Output, ProcessError> {
        let key = self
            .key_serde
            .encode(key)
            .map_err(|e| self.encode_error("key", &e))?;
        Ok(self.output_unkeyed(value)?.key(key))
    }

    /// An output record to this topic without a key (the producer's partitioner spreads
    /// keyless records), with `value` encoded.
    pub fn output_unkeyed(&self, value: &V) -> Result<Output, ProcessError> {
        let value = self
            .encode_value(value)
            .map_err(|e| self.encode_error("value", &e))?;
        Ok(Output::to(&*self.name).value(value))
    }

    fn encode_error(&self, what: &str, e: &SerdeError) -> ProcessError {
        ProcessError::dead_letter(format!(
            "cannot encode the {what} of an output to topic `{}`: {e}",
            self.name
        ))
    }
}

/// The topic's name, so that the handle can be passed where a name is expected
/// (`App::input(&orders)`).
impl<V, K, VS, KS> From<&Topic<V, K, VS, KS>> for String {
    fn from(topic: &Topic<V, K, VS, KS>) -> String {
        topic.name.to_string()
    }
}

/// `my_app::Order` → `Order`, `alloc::string::String` → `String` (for error messages).
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    let start = base.rfind("::").map_or(0, |i| i + 2);
    &full[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Bincode, Bytes};
    use crate::record::HeaderRef;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        sku: String,
        quantity: i64,
    }

    fn record<'a>(topic: &'a str, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Record<'a> {
        const NO_HEADERS: &[HeaderRef<'static>] = &[];
        Record {
            topic,
            partition: 0,
            offset: 5,
            timestamp: None,
            key,
            value,
            headers: NO_HEADERS,
        }
    }

    fn kind_and_reason(e: ProcessError) -> (&'static str, String) {
        (e.kind(), e.to_string())
    }

    #[test]
    fn decodes_keys_and_values_and_encodes_outputs() {
        let orders: Topic<Order> = Topic::new("orders");
        let r = record(
            "orders",
            Some(b"c-1"),
            Some(br#"{"sku":"kb","quantity":2}"#),
        );
        let m = orders.decode(&r).unwrap();
        assert_eq!(m.key.as_deref(), Some("c-1"));
        assert_eq!(
            m.value,
            Order {
                sku: "kb".into(),
                quantity: 2
            }
        );
        let out = orders.output(&"c-2".to_owned(), &m.value).unwrap();
        assert_eq!(out.topic, "orders");
        assert_eq!(out.key.as_deref(), Some(&b"c-2"[..]));
        assert_eq!(
            out.value.as_deref(),
            Some(&br#"{"sku":"kb","quantity":2}"#[..])
        );
        assert!(out.propagate_message_id);
        let raw: Topic<Vec<u8>, Vec<u8>, Bytes, Bytes> = Topic::new("raw");
        let m = raw.decode(&record("raw", None, Some(&[0xff]))).unwrap();
        assert_eq!((m.key, m.value), (None, vec![0xff]));
        let totals: Topic<i64, String, Bincode> = Topic::new("totals");
        let out = totals.output_unkeyed(&-1).unwrap();
        assert_eq!(out.key, None);
        assert_eq!(
            totals.value(&record("totals", None, out.value.as_deref())),
            Ok(-1)
        );
        assert_eq!(String::from(&totals), "totals");
    }

    #[test]
    fn undecodable_records_are_deserialization_errors_naming_the_type() {
        let orders: Topic<Order> = Topic::new("orders");
        let (kind, reason) = kind_and_reason(
            orders
                .decode(&record("orders", None, Some(b"{\"sku\":1}")))
                .unwrap_err(),
        );
        assert_eq!(kind, "deserialization");
        assert!(
            reason.starts_with("cannot deserialize: the value does not decode as Order (Json): invalid JSON: invalid type: integer `1`"),
            "{reason}"
        );
        let (kind, reason) = kind_and_reason(
            orders
                .decode(&record("orders", Some(&[0xc3]), Some(b"{}")))
                .unwrap_err(),
        );
        assert_eq!(kind, "deserialization");
        assert!(
            reason.starts_with("cannot deserialize: the value does not decode as Order"),
            "the value is decoded first: {reason}"
        );
        let ok = br#"{"sku":"kb","quantity":1}"#;
        let (kind, reason) = kind_and_reason(
            orders
                .decode(&record("orders", Some(&[0xc3]), Some(ok)))
                .unwrap_err(),
        );
        assert_eq!(kind, "deserialization");
        assert_eq!(
            reason,
            "cannot deserialize: the key does not decode as String (Utf8): not UTF-8: incomplete utf-8 byte sequence from index 0"
        );
        let (kind, reason) =
            kind_and_reason(orders.decode(&record("orders", None, None)).unwrap_err());
        assert_eq!(kind, "deserialization");
        assert!(reason.contains("has no value (a tombstone)"), "{reason}");
        let (kind, reason) = kind_and_reason(
            orders
                .decode(&record("payments", None, Some(ok)))
                .unwrap_err(),
        );
        assert_eq!(kind, "fatal");
        assert!(
            reason.contains("topic `payments` was decoded with the handle of topic `orders`"),
            "{reason}"
        );
    }
}
