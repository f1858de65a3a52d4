//! `dedup.scope = "global"` on a real broker: resends of an ID with another key land on
//! another partition. With the default partition scope each of them is processed again; with
//! the global scope (records repartitioned by message ID first) every ID is output once.
//!
//! Not tested here: the global scope under SIGKILL. The local test broker hides records from
//! read_committed fetches that start after an aborted transaction of their producer (a fetch
//! from offset 1,132 of a repartition partition whose producer aborted a transaction at
//! 1,005–1,130 returned 41 of the 250 committed records after it, a fetch from 1,130 all 250;
//! librdkafka and kafka-python alike). Stage 2 tails the repartition topic, so every fetch
//! starts after such a transaction once stage 1 was killed mid-transaction, and the records its
//! restarted producer forwards are never delivered. On Apache Kafka the fetch response lists
//! only aborted transactions that overlap the fetched range (KIP-98), so this does not happen;
//! see docs/state.md.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 4;

/// Messages with the partition each is produced to.
type Placed = Vec<(i32, TestMessage)>;

/// `unique` IDs, `m{i}` in partition `i % 4`, then one resend of every 4th ID with another key
/// in another partition. Returns (originals, resends).
fn messages(unique: usize) -> (Placed, Placed) {
    let originals: Placed = (0..unique)
        .map(|i| {
            let m = TestMessage {
                id: Some(format!("m{i}")),
                key: Some(format!("k{i}").into_bytes()),
                value: format!("payload-{i}").into_bytes(),
                timestamp: None,
            };
            ((i % PARTITIONS as usize) as i32, m)
        })
        .collect();
    let resends = originals
        .iter()
        .step_by(4)
        .enumerate()
        .map(|(n, (p, m))| {
            let other = (p + 1 + (n % 3) as i32) % PARTITIONS;
            let mut resend = m.clone();
            resend.key = Some(format!("other-key-{n}").into_bytes());
            (other, resend)
        })
        .collect();
    (originals, resends)
}

fn produce(bs: &str, topic: &str, messages: &[(i32, TestMessage)]) {
    for p in 0..PARTITIONS {
        let mine: Vec<TestMessage> = messages
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, m)| m.clone())
            .collect();
        broker::produce_to(bs, topic, Some(p), &mine);
    }
}

#[test]
fn the_same_id_on_two_partitions_is_processed_once_with_the_global_scope() {
    let Some(s) = Setup::new("global-scope", PARTITIONS) else {
        return;
    };
    let unique = 4_000;
    let (originals, resends) = messages(unique);
    let (first, second) = originals.split_at(unique / 2);
    produce(&s.bs, &s.input, first);
    produce(&s.bs, &s.input, &resends[..resends.len() / 2]);
    // One instance and no faults: see the module docs on what the test broker cannot do. No
    // purge while it runs (the test reads every forwarded record below); its stop purges.
    let mut app = [s.forward(
        "0",
        &[
            "--dedup-scope",
            "global",
            "--repartition-purge-interval-ms",
            "3600000",
        ],
    )];
    app[0].start();
    produce(&s.bs, &s.input, second);
    produce(&s.bs, &s.input, &resends[resends.len() / 2..]);
    s.wait_caught_up(&mut app);
    let repartition = format!("{}-{}-by-id", s.app, s.input);
    // Stage 2 has caught up too: every record forwarded to the repartition topic is handled.
    let forwarded = broker::read_committed(&s.bs, &repartition);
    let mut last: HashMap<i32, i64> = HashMap::new();
    for r in &forwarded {
        let o = last.entry(r.partition).or_insert(0);
        *o = (*o).max(r.offset + 1);
    }
    exactly_testkit::chaos::wait_caught_up(
        &s.bs,
        &s.app,
        &repartition,
        &last,
        Duration::from_secs(300),
        &mut app,
    );
    stop_all(&mut app);
    // The graceful stop deleted every repartition record stage 2 had committed past.
    let committed = broker::committed_offsets(&s.bs, &s.app, &repartition, PARTITIONS);
    assert_eq!(
        broker::start_offsets(&s.bs, &repartition, PARTITIONS),
        committed,
        "purged up to the committed offsets at the stop"
    );

    let v = s.verify();
    println!(
        "global scope: {} inputs ({} resends, each on another partition than its original), {} outputs, {} duplicates",
        v.inputs,
        resends.len(),
        v.outputs,
        v.duplicates
    );
    assert_eq!(v.inputs, unique + resends.len());
    assert_exact(&v, unique);
    assert_eq!(
        forwarded.len(),
        unique + resends.len(),
        "each input record forwarded once"
    );
    for r in &forwarded {
        let id = r.id().expect("the message ID travels along");
        assert_eq!(
            r.partition,
            exactly_core::id_partition(id.as_bytes(), PARTITIONS),
            "{id}"
        );
    }
    broker::delete_topics(
        &s.bs,
        &[
            &repartition,
            &format!("{}-{}-dedup-changelog", s.app, repartition),
        ],
    );
}

/// While it runs, stage 2 deletes the repartition records it committed past (every 500 ms
/// here): the repartition topic's log start reaches the group's committed offsets with the
/// app still running, and the output is exact.
#[test]
fn a_running_app_purges_the_repartition_records_it_committed_past() {
    let Some(s) = Setup::new("global-purge", PARTITIONS) else {
        return;
    };
    let unique = 1_000;
    let (originals, resends) = messages(unique);
    produce(&s.bs, &s.input, &originals);
    produce(&s.bs, &s.input, &resends);
    let mut app = [s.forward(
        "0",
        &[
            "--dedup-scope",
            "global",
            "--repartition-purge-interval-ms",
            "500",
        ],
    )];
    app[0].start();
    s.wait_caught_up(&mut app);
    let repartition = format!("{}-{}-by-id", s.app, s.input);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (committed, starts) = loop {
        let committed = broker::committed_offsets(&s.bs, &s.app, &repartition, PARTITIONS);
        let starts = broker::start_offsets(&s.bs, &repartition, PARTITIONS);
        let total: i64 = committed.values().sum();
        if total > 0 && starts == committed {
            break (committed, starts);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no purge within 60 s: log starts {starts:?}, committed {committed:?}"
        );
        if let Some(status) = app[0].exited() {
            panic!("the app exited ({status}):\n{}", app[0].log_tail(40));
        }
        // Polling the broker's state: the purge is the app's, on its own interval.
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(app[0].exited().is_none(), "purged while running");
    stop_all(&mut app);
    println!("global scope purge: repartition log starts {starts:?} = committed {committed:?}");
    let v = s.verify();
    assert_eq!(v.inputs, unique + resends.len());
    assert_exact(&v, unique);
    broker::delete_topics(
        &s.bs,
        &[
            &repartition,
            &format!("{}-{}-dedup-changelog", s.app, repartition),
        ],
    );
}

#[test]
fn with_the_partition_scope_a_resend_on_another_partition_is_processed_again() {
    // The contrast: the same kind of input without repartitioning. Each resend is in another
    // partition than its original, so no task has seen its ID.
    let Some(s) = Setup::new("partition-scope", PARTITIONS) else {
        return;
    };
    let (originals, resends) = messages(2_000);
    produce(&s.bs, &s.input, &originals);
    produce(&s.bs, &s.input, &resends);
    let mut app = [s.forward("0", &[])];
    app[0].start();
    s.wait_caught_up(&mut app);
    stop_all(&mut app);
    let v = s.verify();
    assert_eq!(v.unique_ids, 2_000);
    assert_eq!(v.outputs, 2_000 + resends.len());
    assert_eq!(v.duplicates, resends.len() as u64);
}
