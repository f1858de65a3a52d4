//! Serdes: how keys and values become bytes and back.
//!
//! A [`Serializer<T>`] encodes one type, a [`Deserializer<T>`] decodes it, and a [`Serde<T>`]
//! does both. The built-ins cover what most apps read and
//! write: [`Bytes`] (`Vec<u8>`, as is), [`Utf8`] (`String`), [`Text`] (numbers and other
//! `Display`/`FromStr` types as text), [`Json`] (any `serde` type) and [`Bincode`] (any
//! `bincode` 2 type, the standard configuration). They are zero-sized and
//! `Default`, so a [`Topic`](crate::topic::Topic) or a
//! [`TypedStore`](crate::state::TypedStore) names its serdes by type alone. A serde of your own
//! (Avro with a schema registry client, Protobuf) is a type that implements the trait; it may
//! hold state, e.g. a schema.
//!
//! Decoding an input record can fail for reasons no retry fixes (the producer wrote something
//! else): [`Topic::decode`](crate::topic::Topic::decode) turns that into
//! [`ProcessError::Deserialization`](crate::ProcessError::Deserialization), and the record goes
//! to the dead-letter topic with `exactly.error.kind = deserialization`.
//!
//! ```
//! use exactly_core::codec::{Bincode, Deserializer, Json, Serializer, Utf8};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Payment { account: String, cents: i64 }
//!
//! let p = Payment { account: "acc-1".into(), cents: 250 };
//! let bytes = Json.encode(&p).unwrap();
//! assert_eq!(bytes, br#"{"account":"acc-1","cents":250}"#);
//! assert_eq!(Json.decode(&bytes), Ok(p));
//! assert_eq!(Utf8.decode(b"\xff").unwrap_err().to_string(), "not UTF-8: invalid utf-8 sequence of 1 bytes from index 0");
//! assert_eq!(Bincode.decode(&Bincode.encode(&7i64).unwrap()), Ok(7i64));
//! ```

use std::fmt;

/// Why a value could not be encoded or decoded: the serde's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerdeError(pub String);

impl fmt::Display for SerdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SerdeError {}

impl SerdeError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// Encodes values of type `T` (an output topic's side of a serde).
///
/// Implementations must be deterministic: a value encodes to the same bytes every time.
pub trait Serializer<T>: Clone + Send + Sync + 'static {
    /// The bytes of `value`.
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError>;
}

/// Decodes values of type `T` (an input topic's side of a serde).
///
/// Implementations must be deterministic: a record that fails to decode once fails every time
/// (it is dead-lettered, not retried).
pub trait Deserializer<T>: Clone + Send + Sync + 'static {
    /// The value of `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError>;
}

/// Both directions: what a state store needs, implemented for every type that is a
/// [`Serializer`] and a [`Deserializer`] of `T`.
pub trait Serde<T>: Serializer<T> + Deserializer<T> {}

impl<T, S: Serializer<T> + Deserializer<T>> Serde<T> for S {}

/// Bytes as they are (`Vec<u8>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes;

impl Serializer<Vec<u8>> for Bytes {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, SerdeError> {
        Ok(value.clone())
    }
}

impl Deserializer<Vec<u8>> for Bytes {
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, SerdeError> {
        Ok(bytes.to_vec())
    }
}

/// UTF-8 text (`String`). Byte order is the strings' order, so it suits store keys too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8;

impl Serializer<String> for Utf8 {
    fn encode(&self, value: &String) -> Result<Vec<u8>, SerdeError> {
        Ok(value.as_bytes().to_vec())
    }
}

impl Deserializer<String> for Utf8 {
    fn decode(&self, bytes: &[u8]) -> Result<String, SerdeError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| SerdeError::new(format_args!("not UTF-8: {}", e.utf8_error())))
    }
}

/// Text through `Display` and `FromStr` (`i64`, `u32`, `f64`, `bool`, ...): a number as
/// decimal text, say. Decoding requires UTF-8 and ignores surrounding whitespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text;

impl<T: std::fmt::Display> Serializer<T> for Text {
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        Ok(value.to_string().into_bytes())
    }
}

impl<T: std::str::FromStr> Deserializer<T> for Text
where
    T::Err: fmt::Display,
{
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| SerdeError::new(format_args!("not UTF-8: {e}")))?;
        text.trim()
            .parse()
            .map_err(|e| SerdeError::new(format_args!("{text:?} does not parse: {e}")))
    }
}

/// JSON through `serde` (`serde_json`), for types that derive `Serialize`/`Deserialize`:
/// readable on the topic, larger and slower than [`Bincode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl<T: serde::Serialize> Serializer<T> for Json {
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        serde_json::to_vec(value).map_err(SerdeError::new)
    }
}

impl<T: serde::de::DeserializeOwned> Deserializer<T> for Json {
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| SerdeError::new(format_args!("invalid JSON: {e}")))
    }
}

/// bincode 2, standard configuration, for types that derive `bincode::Encode`/`Decode`:
/// compact and fast, not self-describing (both sides must agree on the type). Trailing bytes
/// are an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bincode;

impl<T: bincode::Encode> Serializer<T> for Bincode {
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        bincode::encode_to_vec(value, bincode::config::standard()).map_err(SerdeError::new)
    }
}

impl<T: bincode::Decode<()>> Deserializer<T> for Bincode {
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        let (v, used) = bincode::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| SerdeError::new(format_args!("invalid bincode: {e}")))?;
        if used != bytes.len() {
            return Err(SerdeError::new(format_args!(
                "invalid bincode: {} trailing bytes",
                bytes.len() - used
            )));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(
        Debug, PartialEq, serde::Serialize, serde::Deserialize, bincode::Encode, bincode::Decode,
    )]
    struct Order {
        id: String,
        quantity: i64,
    }

    fn order() -> Order {
        Order {
            id: "o-1".into(),
            quantity: -3,
        }
    }

    #[test]
    fn each_builtin_round_trips() {
        let raw = vec![0u8, 255, 7];
        assert_eq!(Bytes.decode(&Bytes.encode(&raw).unwrap()), Ok(raw));
        let text = "grüße".to_owned();
        assert_eq!(Utf8.encode(&text).unwrap(), text.as_bytes());
        assert_eq!(Utf8.decode(&Utf8.encode(&text).unwrap()), Ok(text));
        let json = Json.encode(&order()).unwrap();
        assert_eq!(json, br#"{"id":"o-1","quantity":-3}"#);
        assert_eq!(Json.decode(&json), Ok(order()));
        assert_eq!(Text.encode(&-250i64).unwrap(), b"-250");
        assert_eq!(Deserializer::<i64>::decode(&Text, b" -250\n"), Ok(-250));
        assert_eq!(
            Deserializer::<i64>::decode(&Text, b"12x").unwrap_err().0,
            "\"12x\" does not parse: invalid digit found in string"
        );
        let bin = Bincode.encode(&order()).unwrap();
        assert_eq!(
            bin.len(),
            5,
            "1 length byte, 3 bytes of id, 1 zigzag varint"
        );
        assert_eq!(Bincode.decode(&bin), Ok(order()));
    }

    #[test]
    fn bad_input_names_the_format() {
        let e = <Json as Deserializer<Order>>::decode(&Json, b"{\"id\":1}").unwrap_err();
        assert!(
            e.0.starts_with("invalid JSON: invalid type: integer `1`"),
            "{e}"
        );
        let mut bin = Bincode.encode(&order()).unwrap();
        bin.push(0);
        let e = <Bincode as Deserializer<Order>>::decode(&Bincode, &bin).unwrap_err();
        assert_eq!(e.0, "invalid bincode: 1 trailing bytes");
        let e = <Bincode as Deserializer<Order>>::decode(&Bincode, &bin[..2]).unwrap_err();
        assert!(e.0.starts_with("invalid bincode: "), "{e}");
        assert_eq!(
            Utf8.decode(&[b'a', 0xc3]).unwrap_err().0,
            "not UTF-8: incomplete utf-8 byte sequence from index 1"
        );
    }
}
