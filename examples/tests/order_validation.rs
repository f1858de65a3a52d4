//! The order-validation example against the real broker: valid orders are priced once per
//! order, invalid ones are dead-lettered once per order (in the same transaction, with the
//! reason and source in headers), even with resends and a SIGKILL mid-stream.

mod common;
use common::{stop_all, Setup};
use exactly_testkit::broker::{self, ReadRecord, TestMessage};
use exactly_testkit::chaos::count_by_id;
use std::collections::HashMap;

const BIN: &str = env!("CARGO_BIN_EXE_order-validation");

fn order(i: usize) -> TestMessage {
    let id = format!("o-{i}");
    let value = match i % 20 {
        // 5 % are not JSON, 5 % have an unknown SKU, 5 % a zero quantity.
        17 => "{not json".to_owned(),
        18 => format!(
            r#"{{"order_id":"{id}","customer":"c-{}","sku":"zz-99","quantity":1}}"#,
            i % 7
        ),
        19 => format!(
            r#"{{"order_id":"{id}","customer":"c-{}","sku":"kb-01","quantity":0}}"#,
            i % 7
        ),
        _ => format!(
            r#"{{"order_id":"{id}","customer":"c-{}","sku":"ms-02","quantity":{}}}"#,
            i % 7,
            1 + i % 3
        ),
    };
    TestMessage {
        key: Some(format!("c-{}", i % 7).into_bytes()),
        value: value.into_bytes(),
        id: Some(id),
        timestamp: None,
    }
}

fn header(r: &ReadRecord, name: &str) -> String {
    String::from_utf8_lossy(r.headers.get(name).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

#[test]
fn valid_orders_are_priced_once_and_invalid_ones_dead_lettered_once_despite_resends_and_a_sigkill()
{
    let Some(s) = Setup::new("orders", 3) else {
        return;
    };
    let n = 4_000;
    let orders: Vec<TestMessage> = (0..n).map(order).collect();
    // Every fourth order is resent, after all the originals.
    let resends: Vec<TestMessage> = (0..n).step_by(4).map(order).collect();
    let mut app = s.instance(BIN, "0", &s.state_dir("0"), &[]);
    app.start();
    broker::produce(&s.bs, &s.input, &orders[..n / 2]);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    broker::produce(&s.bs, &s.input, &orders[n / 2..]);
    app.kill9();
    app.start();
    broker::produce(&s.bs, &s.input, &resends);
    s.wait_caught_up(std::slice::from_mut(&mut app));
    stop_all(std::slice::from_mut(&mut app));

    let priced = broker::read_committed(&s.bs, &s.output);
    let dead = broker::read_committed(&s.bs, &s.dlq());
    let (priced_ids, dead_ids) = (count_by_id(&priced), count_by_id(&dead));
    let invalid = |i: usize| i % 20 >= 17;
    for i in 0..n {
        let id = format!("o-{i}");
        let (p, d) = (
            priced_ids.get(&id).copied().unwrap_or(0),
            dead_ids.get(&id).copied().unwrap_or(0),
        );
        if invalid(i) {
            assert_eq!(
                (p, d),
                (0, 1),
                "invalid order {id}: priced {p}, dead-lettered {d}"
            );
        } else {
            assert_eq!(
                (p, d),
                (1, 0),
                "valid order {id}: priced {p}, dead-lettered {d}"
            );
        }
    }
    assert_eq!(priced.len(), n / 20 * 17);
    assert_eq!(dead.len(), n / 20 * 3);
    // Prices: ms-02 costs 2499 cents.
    for r in &priced {
        let v: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("json");
        let q = v["quantity"].as_i64().expect("quantity");
        assert_eq!(v["total_cents"].as_i64(), Some(2_499 * q), "{v}");
    }
    // Dead letters carry the original record and why and where it failed.
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    for r in &dead {
        let error = header(r, "exactly.error");
        let kind = header(r, "exactly.error.kind");
        assert_eq!(header(r, "exactly.source.topic"), s.input);
        assert!(header(r, "exactly.source.offset").parse::<i64>().is_ok());
        assert!(header(r, "exactly.source.partition").parse::<i32>().is_ok());
        let reason = match kind.as_str() {
            "deserialization"
                if error.starts_with("the value does not decode as Order (Json): invalid JSON") =>
            {
                "json"
            }
            "processor_error" if error.contains("unknown sku") => "sku",
            "processor_error" if error.contains("quantity must be positive") => "quantity",
            _ => panic!("unexpected dead letter: kind {kind:?}, error {error:?}"),
        };
        *reasons.entry(reason).or_default() += 1;
    }
    assert_eq!(
        reasons,
        HashMap::from([("json", n / 20), ("sku", n / 20), ("quantity", n / 20)])
    );
}
