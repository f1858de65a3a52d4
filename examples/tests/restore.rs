//! Restore from the changelog: between two runs of an app, one task's state is (a) wiped,
//! (b) given a checkpoint beyond the changelog's end, (c) corrupted. Each time the runtime
//! detects it, restores the store from the changelog (counted in
//! `exactly_store_wipes_total{reason}` and logged), and the resends of every earlier ID that
//! follow are all dropped: the output holds each ID exactly once.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_core::{ChangelogCheckpoint, DedupStore, StoreBatch};
use exactly_state::{task_dir, RocksDedupStore, SharedRocksResources, StoreIdentity};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{free_port, metric_sum, scrape_until};
use std::time::Duration;

/// One run: start, produce `messages`, wait until committed, scrape `/metrics`, SIGTERM.
fn run(s: &Setup, messages: &[TestMessage]) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = [s.forward("0", &["--metrics-addr", &addr])];
    app[0].start();
    broker::produce(&s.bs, &s.input, messages);
    s.wait_caught_up(&mut app);
    // Counters move right after the commit returns.
    let text = scrape_until(&addr, Duration::from_secs(10), |t| {
        metric_sum(t, "exactly_records_consumed_total", &[]) as usize >= messages.len()
    });
    stop_all(&mut app);
    text
}

fn batch(ids: std::ops::Range<usize>) -> Vec<TestMessage> {
    ids.map(|i| {
        let id = format!("m{i}");
        TestMessage {
            key: Some(id.clone().into_bytes()),
            value: format!("v{i}").into_bytes(),
            id: Some(id),
        }
    })
    .collect()
}

#[test]
fn wiped_corrupt_or_ahead_task_state_is_restored_from_the_changelog_and_resends_stay_dropped() {
    let Some(s) = Setup::new("restore", 2) else {
        return;
    };
    let task0 = task_dir(&s.state_dir("0"), &s.app, &s.input, 0);

    let first = batch(0..3_000);
    let text = run(&s, &first);
    assert_eq!(
        metric_sum(&text, "exactly_duplicates_dropped_total", &[]),
        0.0
    );
    assert!(
        task0.join("CURRENT").exists(),
        "task 0's store is at {}",
        task0.display()
    );

    // (a) Wipe task 0's directory: full restore, then every resend is a duplicate.
    std::fs::remove_dir_all(&task0).expect("wipe task 0");
    let mut second = batch(0..3_000);
    second.extend(batch(3_000..4_000));
    let text = run(&s, &second);
    assert_eq!(
        metric_sum(&text, "exactly_duplicates_dropped_total", &[]),
        3_000.0,
        "(a) resends dropped"
    );
    assert!(
        metric_sum(&text, "exactly_restore_records_total", &[]) >= 1_000.0,
        "(a) task 0 restored its changelog"
    );

    // (b) A checkpoint beyond the changelog's end: detected, wiped, fully restored.
    {
        let identity = StoreIdentity::new(s.changelog(), 0);
        let mut store = RocksDedupStore::open(
            &task0,
            &SharedRocksResources::new(8 << 20, 8 << 20),
            &identity,
        )
        .expect("open task 0's store");
        let checkpoint = ChangelogCheckpoint {
            topic: s.changelog(),
            partition: 0,
            next_offset: 1_000_000_000,
        };
        store
            .apply(&StoreBatch {
                entries: Vec::new(),
                checkpoint,
            })
            .expect("write a checkpoint beyond the end");
    }
    let mut third = batch(0..4_000);
    third.extend(batch(4_000..5_000));
    let text = run(&s, &third);
    assert_eq!(
        metric_sum(
            &text,
            "exactly_store_wipes_total",
            &[("reason", "checkpoint_beyond_end")]
        ),
        1.0,
        "(b) wipe counted"
    );
    assert_eq!(
        metric_sum(&text, "exactly_duplicates_dropped_total", &[]),
        4_000.0,
        "(b) resends dropped"
    );

    // (c) Corrupt files: detected at open, recreated, fully restored.
    for entry in std::fs::read_dir(&task0).expect("task 0 dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name == "CURRENT" || name.starts_with("MANIFEST") {
            std::fs::write(&path, b"this is not a rocksdb file").expect("corrupt");
        }
    }
    let mut fourth = batch(0..5_000);
    fourth.extend(batch(5_000..6_000));
    let text = run(&s, &fourth);
    assert_eq!(
        metric_sum(&text, "exactly_store_wipes_total", &[("reason", "corrupt")]),
        1.0,
        "(c) wipe counted"
    );
    assert_eq!(
        metric_sum(&text, "exactly_duplicates_dropped_total", &[]),
        5_000.0,
        "(c) resends dropped"
    );

    let v = s.verify();
    println!("restore: {} inputs, {} outputs", v.inputs, v.outputs);
    assert_exact(&v, 6_000);
}
