//! The typed API through the TestDriver: serdes on topics, decode failures dead-lettered once
//! per message ID, the message ID carried to outputs, stores declared from their handle.

use exactly_core::codec::{Bincode, Bytes, Deserializer, Json, Serializer, Utf8};
use exactly_core::state::TypedStore;
use exactly_core::task::dlq_headers;
use exactly_core::{
    Context, IdPolicy, IdSource, Output, ProcessError, Processor, Record, StoreSpec, TaskConfig,
    TaskId, Topic,
};
use exactly_testkit::{CrashPoint, SimRecord, StepOutcome, TestDriver, TestRecord};
use std::time::Duration;

#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, bincode::Encode, bincode::Decode,
)]
struct Order {
    sku: String,
    quantity: i64,
}

fn config() -> TaskConfig {
    TaskConfig {
        dead_letter_topic: Some("dlq".into()),
        ..TaskConfig::default()
    }
}

fn header(r: &SimRecord, name: &str) -> Option<String> {
    r.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Decodes an order (JSON value, UTF-8 key) and writes its quantity doubled.
#[derive(Clone)]
struct Double {
    orders: Topic<Order>,
    doubled: Topic<Order>,
}

impl Processor for Double {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let m = self.orders.decode(record)?;
        let order = Order {
            quantity: m.value.quantity * 2,
            ..m.value
        };
        ctx.send(self.doubled.output(&m.key.unwrap_or_default(), &order)?);
        Ok(())
    }
}

fn double() -> Double {
    Double {
        orders: Topic::new("orders"),
        doubled: Topic::new("doubled"),
    }
}

const GOOD: &str = r#"{"sku":"kb","quantity":2}"#;

/// The bad records of the test: (message ID, key, value, the error's start).
/// A record that does not decode: message ID, key, value, the start of its error.
type BadRecord = (
    &'static str,
    Option<&'static [u8]>,
    Option<&'static [u8]>,
    &'static str,
);

fn bad_records() -> Vec<BadRecord> {
    vec![
        (
            "not-json",
            None,
            Some(b"{\"sku\":"),
            "the value does not decode as Order (Json): invalid JSON: EOF",
        ),
        (
            "wrong-type",
            None,
            Some(b"{\"sku\":\"kb\",\"quantity\":\"2\"}"),
            "the value does not decode as Order (Json): invalid JSON: invalid type: string \"2\"",
        ),
        (
            "bad-key",
            Some(b"\xff"),
            Some(GOOD.as_bytes()),
            "the key does not decode as String (Utf8): not UTF-8",
        ),
        (
            "tombstone",
            None,
            None,
            "the record has no value (a tombstone)",
        ),
    ]
}

fn pipe_bad(d: &mut TestDriver<impl exactly_core::ProcessorFactory>) {
    for (id, key, value, _) in bad_records() {
        let mut r = TestRecord::with_id(id);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.value(v);
        }
        d.pipe(r);
    }
}

#[test]
fn records_that_do_not_decode_are_dead_lettered_once_with_their_kind() {
    let mut d = TestDriver::builder(|_: &TaskId| double())
        .input("orders", 1)
        .config(config())
        .build();
    d.pipe(TestRecord::with_id("good").key("c-1").value(GOOD));
    pipe_bad(&mut d);
    // Every bad record again: resent copies are dropped by ID, not dead-lettered again.
    pipe_bad(&mut d);
    d.run_until_idle().unwrap();

    let out = d.committed_outputs("doubled");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.as_deref(), Some(&b"c-1"[..]));
    assert_eq!(
        Deserializer::<Order>::decode(&Json, out[0].value.as_deref().unwrap()),
        Ok(Order {
            sku: "kb".into(),
            quantity: 4
        })
    );
    let dl = d.dead_letters();
    assert_eq!(dl.len(), 4, "one dead letter per bad message ID");
    for (r, (id, key, value, reason)) in dl.iter().zip(bad_records()) {
        assert_eq!(header(r, "message-id").as_deref(), Some(id));
        assert_eq!(
            header(r, dlq_headers::ERROR_KIND).as_deref(),
            Some("deserialization")
        );
        let error = header(r, dlq_headers::ERROR).unwrap();
        assert!(error.starts_with(reason), "{id}: {error}");
        assert_eq!(r.key.as_deref(), key, "the dead letter keeps the raw key");
        assert_eq!(
            r.value.as_deref(),
            value,
            "the dead letter keeps the raw value"
        );
    }
    assert_eq!(d.stats().duplicates_dropped, 4);
}

#[test]
fn a_dead_letter_for_a_bad_record_commits_once_across_a_crash_at_every_point() {
    let points = [
        CrashPoint::BeforeSend,
        CrashPoint::AfterSendsBeforeCommit,
        CrashPoint::DuringCommit { committed: false },
        CrashPoint::DuringCommit { committed: true },
        CrashPoint::AfterCommitBeforeApply,
    ];
    for point in points {
        let mut d = TestDriver::builder(|_: &TaskId| double())
            .input("orders", 1)
            .config(config())
            .build();
        pipe_bad(&mut d);
        d.pipe(TestRecord::with_id("good").value(GOOD));
        assert_eq!(
            d.step_and_crash(point).unwrap(),
            StepOutcome::Crashed(point)
        );
        d.restart().unwrap();
        // A producer's resend of everything, after the crash.
        pipe_bad(&mut d);
        d.run_until_idle().unwrap();
        let kinds: Vec<_> = d
            .dead_letters()
            .iter()
            .map(|r| {
                (
                    header(r, "message-id").unwrap(),
                    header(r, dlq_headers::ERROR_KIND).unwrap(),
                )
            })
            .collect();
        let expected: Vec<_> = bad_records()
            .iter()
            .map(|(id, ..)| (id.to_string(), "deserialization".to_owned()))
            .collect();
        assert_eq!(kinds, expected, "{point:?}");
        assert_eq!(d.committed_outputs("doubled").len(), 1, "{point:?}");
    }
}

/// Decodes with `serde` from topic `in` and encodes the same value to topic `out`.
struct Echo<V, S> {
    input: Topic<V, String, S>,
    output: Topic<V, String, S>,
}

impl<V: Send + 'static, S: Serializer<V> + Deserializer<V>> Processor for Echo<V, S> {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let m = self.input.decode(record)?;
        ctx.send(self.output.output(&m.key.unwrap_or_default(), &m.value)?);
        Ok(())
    }
}

/// Pipes `value` encoded by `serde` through an [`Echo`] and checks the committed output
/// decodes to it and has the same bytes.
fn round_trip<V, S>(serde: S, value: V)
where
    V: PartialEq + std::fmt::Debug + Send + 'static,
    S: Serializer<V> + Deserializer<V>,
{
    let bytes = serde.encode(&value).unwrap();
    let s = serde.clone();
    let mut d = TestDriver::builder(move |_: &TaskId| Echo {
        input: Topic::with_serdes("in", s.clone(), Utf8),
        output: Topic::with_serdes("out", s.clone(), Utf8),
    })
    .input("in", 1)
    .config(config())
    .build();
    d.pipe(TestRecord::with_id("1").key("k").value(bytes.clone()));
    d.run_until_idle().unwrap();
    let out = d.committed_outputs("out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value.as_deref(), Some(&bytes[..]));
    assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(
        serde.decode(out[0].value.as_deref().unwrap()).unwrap(),
        value
    );
    assert!(d.dead_letters().is_empty());
}

#[test]
fn each_builtin_serde_round_trips_through_a_processor() {
    round_trip(Bytes, vec![0u8, 1, 255]);
    round_trip(Utf8, "grüße, 東京".to_owned());
    let order = Order {
        sku: "ms-02".into(),
        quantity: -7,
    };
    round_trip(Json, order.clone());
    round_trip(Bincode, order);
}

/// Sends four outputs per input: two that carry the input's ID, one that opts out, one that
/// sets its own.
struct Outputs;

impl Processor for Outputs {
    fn process(&mut self, _: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.send(Output::to("out").value("first"));
        ctx.send(Output::to("out").value("opted-out").without_message_id());
        ctx.send(Output::to("other").value("second"));
        ctx.send(Output::to("out").value("own").header("message-id", "mine"));
        Ok(())
    }
}

fn ids_by_value(
    d: &TestDriver<impl exactly_core::ProcessorFactory>,
    topic: &str,
) -> Vec<(String, Option<String>)> {
    d.committed_outputs(topic)
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned(),
                header(r, "message-id"),
            )
        })
        .collect()
}

#[test]
fn outputs_carry_the_input_message_id_unless_they_opt_out() {
    let mut d = TestDriver::builder(|_: &TaskId| Outputs).build();
    d.pipe(TestRecord::with_id("m-1"));
    d.run_until_idle().unwrap();
    assert_eq!(
        ids_by_value(&d, "out"),
        vec![
            ("first".into(), Some("m-1".into())),
            ("opted-out".into(), None),
            ("own".into(), Some("mine".into())),
        ]
    );
    // The second output that takes the ID is numbered: a fan-out is not a copy downstream.
    assert_eq!(
        ids_by_value(&d, "other"),
        vec![("second".into(), Some("m-1#1".into()))]
    );
}

#[test]
fn ids_taken_from_the_key_are_carried_in_the_message_id_header() {
    let config = TaskConfig {
        ids: IdPolicy {
            source: IdSource::Key,
            ..IdPolicy::default()
        },
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder(|_: &TaskId| Outputs)
        .config(config)
        .build();
    d.pipe(TestRecord::without_id().key("k-9"));
    d.run_until_idle().unwrap();
    assert_eq!(
        ids_by_value(&d, "out")[0],
        ("first".into(), Some("k-9".into()))
    );
}

#[test]
fn a_custom_id_header_is_carried_under_its_own_name() {
    let config = TaskConfig {
        ids: IdPolicy {
            source: IdSource::Header("event-id".into()),
            ..IdPolicy::default()
        },
        ..TaskConfig::default()
    };
    let mut d = TestDriver::builder(|_: &TaskId| Outputs)
        .config(config)
        .build();
    d.pipe(TestRecord::without_id().header("event-id", "e-3"));
    d.run_until_idle().unwrap();
    let out = d.committed_outputs("out");
    assert_eq!(header(&out[0], "event-id").as_deref(), Some("e-3"));
    assert_eq!(header(&out[0], "message-id"), None);
}

/// Counts records per key in a store it got as a handle.
struct Count {
    counts: TypedStore<String, u64>,
}

impl Processor for Count {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let key = String::from_utf8_lossy(record.key.unwrap_or_default()).into_owned();
        let n = self.counts.get(ctx, &key)?.unwrap_or(0) + 1;
        self.counts.put(ctx, &key, &n)?;
        ctx.send(Output::to("counts").key(key).value(n.to_string()));
        Ok(())
    }
}

#[test]
fn a_store_declared_from_its_handle_is_the_one_the_processor_uses() {
    let counts: TypedStore<String, u64> = TypedStore::new("counts").ttl(Duration::from_secs(60));
    let spec = StoreSpec::from(&counts);
    assert_eq!(spec, StoreSpec::new("counts").ttl(Duration::from_secs(60)));
    let config = TaskConfig {
        stores: vec![spec],
        ..TaskConfig::default()
    };
    let handle = counts.clone();
    let mut d = TestDriver::builder(move |_: &TaskId| Count {
        counts: handle.clone(),
    })
    .config(config)
    .build();
    for (id, key) in [("1", "a"), ("2", "a"), ("3", "b"), ("2", "a")] {
        d.pipe(TestRecord::with_id(id).key(key));
    }
    d.run_until_idle().unwrap();
    let values: Vec<_> = d
        .committed_outputs("counts")
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned())
        .collect();
    assert_eq!(values, ["1", "2", "1"]);
    let state: Vec<(String, u64)> = d
        .committed_state("counts", 0)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                Deserializer::<u64>::decode(&Bincode, &v).unwrap(),
            )
        })
        .collect();
    assert_eq!(state, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
}
