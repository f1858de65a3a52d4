//! The repartitioning task of the global dedup scope (stage 1): every record goes to its
//! message ID's partition of the repartition topic, with its key, value, timestamp and
//! headers, and nothing else happens to it.

use exactly_core::{
    id_partition, repartition_headers, Context, HeaderRef, MemDedupStore, Output, ProcessError,
    Processor, Record, RecordKind, SystemClock, Task, TaskConfig, TaskId, TxnWriter,
};
use std::sync::Arc;

#[derive(Default)]
struct Sent(Vec<(RecordKind, Output)>);

impl TxnWriter for Sent {
    fn send(&mut self, kind: RecordKind, record: &Output) -> Result<(), String> {
        self.0.push((kind, record.clone()));
        Ok(())
    }
}

struct MustNotRun;
impl Processor for MustNotRun {
    fn process(&mut self, _: &Record<'_>, _: &mut Context<'_>) -> Result<(), ProcessError> {
        panic!("a repartitioning task never runs the processor");
    }
}

fn repartitioner(config: TaskConfig) -> Task<MustNotRun, MemDedupStore> {
    let mut task = Task::repartitioner(
        TaskId::new("orders", 2),
        "app-orders-by-id",
        4,
        MemDedupStore::new(),
        Arc::new(TaskConfig {
            dead_letter_topic: Some("app-dlq".into()),
            ..config
        }),
    );
    task.restore_complete(Some(10)).unwrap();
    task
}

#[test]
fn id_partition_is_stable_and_spreads_ids() {
    // Part of the on-topic layout: these values must never change.
    assert_eq!(id_partition(b"", 4), 1);
    assert_eq!(id_partition(b"order-17", 4), id_partition(b"order-17", 4));
    let golden: Vec<i32> = ["m0", "m1", "m2", "m3", "order-17"]
        .iter()
        .map(|id| id_partition(id.as_bytes(), 12))
        .collect();
    // 64-bit FNV-1a modulo 12, computed independently (Python) from the FNV spec.
    assert_eq!(golden, vec![8, 3, 10, 5, 10]);
    let mut counts = [0u32; 8];
    for i in 0..80_000 {
        counts[id_partition(format!("m{i}").as_bytes(), 8) as usize] += 1;
    }
    assert!(
        counts.iter().all(|n| (9_000..11_000).contains(n)),
        "uneven spread {counts:?}"
    );
}

#[test]
fn records_go_to_their_ids_partition_with_everything_kept() {
    let mut task = repartitioner(TaskConfig::default());
    let h = |id: &'static [u8]| {
        vec![
            HeaderRef {
                key: "message-id",
                value: Some(id),
            },
            HeaderRef {
                key: "trace",
                value: Some(b"t1"),
            },
        ]
    };
    let (h1, h2, h3) = (h(b"m1"), h(b"m2"), h(b"m1"));
    let rec = |offset, key: &'static [u8], headers| Record {
        topic: "orders",
        partition: 2,
        offset,
        timestamp: Some(1_700_000_000_000 + offset),
        key: Some(key),
        value: Some(b"payload"),
        headers,
    };
    let records = [rec(10, b"a", &h1), rec(11, b"b", &h2), rec(12, b"c", &h3)];
    let mut sent = Sent::default();
    task.handle_batch(&records, &SystemClock, &mut sent)
        .unwrap();
    assert_eq!(sent.0.len(), 3, "the resend of m1 is forwarded too");
    for ((kind, out), r) in sent.0.iter().zip(&records) {
        let id = r.header("message-id").unwrap();
        assert_eq!(*kind, RecordKind::Output);
        assert_eq!(out.topic, "app-orders-by-id");
        assert_eq!(out.partition, Some(id_partition(id, 4)));
        assert_eq!(out.key.as_deref(), r.key);
        assert_eq!(out.value.as_deref(), r.value);
        assert_eq!(out.timestamp, r.timestamp);
        let header = |name: &str| {
            out.headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(header("trace").as_deref(), Some("t1"));
        assert_eq!(
            header("message-id").as_deref(),
            std::str::from_utf8(id).ok()
        );
        assert_eq!(
            header(repartition_headers::SOURCE_TOPIC).as_deref(),
            Some("orders")
        );
        assert_eq!(
            header(repartition_headers::SOURCE_PARTITION).as_deref(),
            Some("2")
        );
        assert_eq!(
            header(repartition_headers::SOURCE_OFFSET),
            Some(r.offset.to_string())
        );
    }
    assert_eq!(sent.0[0].1.partition, sent.0[2].1.partition);
    assert_eq!(task.offset_to_commit(), Some(13));
    assert_eq!(task.counters_mut().repartitioned, 3);
    assert_eq!(task.staged_ids(), 0, "no dedup in stage 1");
    task.flush(None).unwrap();
    task.on_committed(&|_| None).unwrap();
    assert_eq!(task.committed_offset(), Some(13));
}

#[test]
fn records_without_an_id_follow_the_id_policy_in_stage_one() {
    let mut task = repartitioner(TaskConfig::default());
    let none: [HeaderRef<'_>; 0] = [];
    let record = Record {
        topic: "orders",
        partition: 2,
        offset: 10,
        timestamp: None,
        key: Some(b"k"),
        value: Some(b"v"),
        headers: &none,
    };
    let mut sent = Sent::default();
    task.handle_batch(&[record], &SystemClock, &mut sent)
        .unwrap();
    assert_eq!(sent.0.len(), 1);
    assert_eq!(sent.0[0].0, RecordKind::DeadLetter);
    assert_eq!(sent.0[0].1.topic, "app-dlq");
    assert_eq!(task.offset_to_commit(), Some(11));
}
