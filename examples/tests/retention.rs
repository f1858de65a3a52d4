//! Dedup retention end to end on the broker: the runtime creates the dedup changelog with
//! `cleanup.policy=compact,delete` and `retention.ms` = the dedup retention (read back from the
//! broker), a resend within the retention is dropped, and a resend after it is processed
//! again.

mod common;
use common::{stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::count_by_id;
use std::time::{Duration, Instant};

const RETENTION_MS: u64 = 3_000;

fn message(id: &str) -> TestMessage {
    TestMessage {
        key: Some(id.as_bytes().to_vec()),
        value: b"v".to_vec(),
        id: Some(id.to_owned()),
        timestamp: None,
    }
}

#[test]
fn an_id_resent_after_the_dedup_retention_is_processed_again() {
    let Some(s) = Setup::new("retention", 2) else {
        return;
    };
    let retention = RETENTION_MS.to_string();
    let mut app = [s.forward("0", &["--dedup-retention-ms", &retention])];
    app[0].start();
    broker::produce(&s.bs, &s.input, &[message("a"), message("b")]);
    s.wait_caught_up(&mut app);
    let first_seen = Instant::now();

    let config = broker::topic_config(&s.bs, &s.changelog());
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("compact,delete")
    );
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some(retention.as_str())
    );

    // Within the retention: a resend is a duplicate.
    broker::produce(&s.bs, &s.input, &[message("a")]);
    s.wait_caught_up(&mut app);
    assert!(
        first_seen.elapsed() < Duration::from_millis(RETENTION_MS),
        "the resend took longer than the retention; the test cannot tell"
    );
    let outputs = count_by_id(&s.output_records());
    assert_eq!((outputs.get("a"), outputs.get("b")), (Some(&1), Some(&1)));

    // After the retention the ID is forgotten: a resend is processed again.
    let wait = Duration::from_millis(RETENTION_MS + 500).saturating_sub(first_seen.elapsed());
    std::thread::sleep(wait);
    broker::produce(&s.bs, &s.input, &[message("a")]);
    s.wait_caught_up(&mut app);
    stop_all(&mut app);
    let outputs = count_by_id(&s.output_records());
    assert_eq!(
        (outputs.get("a"), outputs.get("b")),
        (Some(&2), Some(&1)),
        "a processed again after its retention, b once"
    );
}
