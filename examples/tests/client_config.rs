//! The `[kafka]` table reaches every client of a running instance, and its secrets never reach
//! the log: an instance with two stream threads runs with `client.id`, `debug=conf` (librdkafka
//! dumps each client's configuration when it is created, secrets redacted) and SASL/TLS
//! passwords set once with `--kafka`, at debug level.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};

#[test]
fn a_property_set_once_reaches_every_client_and_secrets_never_reach_the_log() {
    let Some(s) = Setup::new("client-config", 4) else {
        return;
    };
    let mut app = [s.forward(
        "0",
        &[
            "--threads",
            "2",
            "--kafka",
            "client.id=probe-app",
            "--kafka",
            "debug=conf",
            "--kafka",
            "sasl.password=hunter2-sasl",
            "--kafka",
            "ssl.key.password=hunter2-key",
        ],
    )];
    app[0].env("RUST_LOG", "debug");
    app[0].start();
    let messages: Vec<TestMessage> = (0..40)
        .map(|i| TestMessage {
            key: Some(format!("k{i}").into_bytes()),
            value: b"v".to_vec(),
            id: Some(format!("id-{i}")),
            timestamp: None,
        })
        .collect();
    broker::produce(&s.bs, &s.input, &messages);
    s.wait_caught_up(&mut app);
    stop_all(&mut app);
    assert_exact(&s.verify(), 40);

    let log = app[0].log();
    let mut ids: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("  client.id = "))
        .filter_map(|(_, rest)| rest.split_whitespace().next())
        .collect();
    ids.sort_unstable();
    // The start-up topic check's metadata client (its admin client is made from the same
    // config; rust-rdkafka never serves an admin client's log queue), then per stream thread
    // the producer, the group consumer, the restore consumer and the watermark client.
    let mut expected = vec![format!("probe-app-{}-0-admin", s.app)];
    for thread in 0..2 {
        for role in ["consumer", "producer", "restore", "watermarks"] {
            expected.push(format!("probe-app-{}-0-{thread}-{role}", s.app));
        }
    }
    expected.sort_unstable();
    assert_eq!(ids, expected, "client.id of each configuration dump");
    assert_eq!(
        log.matches("  sasl.password = [redacted]").count(),
        expected.len(),
        "every client got the SASL password"
    );
    assert!(
        !log.contains("hunter2"),
        "a secret reached the log at debug level"
    );
}
