//! Where a record's message ID is, for checking an app's output per ID (`exactly verify --id`,
//! `exactly chaos --output-id`): a header, the key, or a field of a JSON value.

use crate::broker::{ReadRecord, TestMessage};
use std::fmt;
use std::str::FromStr;

/// Where a record carries its message ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdLocation {
    /// A header (`header:message-id`, the default: what exactly apps read and forward).
    Header(String),
    /// The record key (`key`), as UTF-8.
    Key,
    /// A field of the value, parsed as JSON: `json:id`, or a nested one as a JSON pointer,
    /// `json:/payment/id`. A string field is the ID as is; a number or other JSON value is
    /// its JSON text.
    Json(String),
}

impl Default for IdLocation {
    fn default() -> Self {
        Self::Header("message-id".to_owned())
    }
}

impl FromStr for IdLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an ID location: use `header:<name>` (e.g. header:message-id), `key`, \
                 or `json:<field>` / `json:/<JSON pointer>` (e.g. json:id, json:/payment/id)"
            )
        };
        match s.split_once(':') {
            None if s == "key" => Ok(Self::Key),
            Some(("header", name)) if !name.is_empty() => Ok(Self::Header(name.to_owned())),
            Some(("json", field)) if !field.is_empty() && field != "/" => {
                Ok(Self::Json(field.to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for IdLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Key => f.write_str("key"),
            Self::Json(field) => write!(f, "json:{field}"),
        }
    }
}

impl IdLocation {
    /// The ID of a record read back, or `None` if it has none there (no such header, no key,
    /// a value that is not JSON or lacks the field).
    pub fn of(&self, record: &ReadRecord) -> Option<String> {
        match self {
            Self::Header(name) => record
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            Self::Key => record
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            Self::Json(field) => json_field(record.value.as_deref()?, field),
        }
    }

    /// The ID of a message about to be produced (see [`IdLocation::of`]).
    pub fn of_message(&self, message: &TestMessage) -> Option<String> {
        match self {
            Self::Header(name) if name == "message-id" => message.id.clone(),
            Self::Header(_) => None,
            Self::Key => message
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            Self::Json(field) => json_field(&message.value, field),
        }
    }
}

fn json_field(value: &[u8], field: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    let found = if field.starts_with('/') {
        json.pointer(field)?
    } else {
        json.get(field)?
    };
    match found {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn record(key: Option<&str>, value: &str, headers: &[(&str, &str)]) -> ReadRecord {
        ReadRecord {
            partition: 0,
            offset: 0,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect::<HashMap<_, _>>(),
            timestamp: None,
        }
    }

    #[test]
    fn an_id_is_read_from_a_header_the_key_a_json_field_or_a_json_pointer() {
        let r = record(
            Some("k-1"),
            r#"{"id": "v-1", "n": 7, "payment": {"id": "p-1"}, "none": null}"#,
            &[("message-id", "h-1"), ("trace", "t")],
        );
        let of = |loc: &str| loc.parse::<IdLocation>().expect("valid").of(&r);
        assert_eq!(of("header:message-id").as_deref(), Some("h-1"));
        assert_eq!(of("header:trace").as_deref(), Some("t"));
        assert_eq!(of("header:absent"), None);
        assert_eq!(of("key").as_deref(), Some("k-1"));
        assert_eq!(of("json:id").as_deref(), Some("v-1"));
        assert_eq!(of("json:n").as_deref(), Some("7"));
        assert_eq!(of("json:/payment/id").as_deref(), Some("p-1"));
        assert_eq!(of("json:none"), None);
        assert_eq!(of("json:absent"), None);
        assert_eq!(
            IdLocation::Json("id".into()).of(&record(None, "not json", &[])),
            None
        );
        assert_eq!(IdLocation::default().to_string(), "header:message-id");
    }

    #[test]
    fn a_malformed_location_is_refused_with_the_forms_it_takes() {
        for bad in ["", "header:", "json:", "json:/", "value", "keys", "header"] {
            let e = bad.parse::<IdLocation>().expect_err(bad);
            assert!(e.contains("header:<name>") && e.contains("json:"), "{e}");
        }
    }
}
