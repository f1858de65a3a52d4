//! The broker restarts under running and restoring instances (#15 item 3): a rolling restart
//! of a production cluster must not make an instance exit. The test runs its own noida-db
//! broker (the shared one serves the other tests), stops it gracefully and starts it again
//! twice: once right after an instance was SIGKILLed and restarted (so it opens and restores
//! its tasks while the broker goes away), once for 8 s, longer than the instances' session
//! timeout. Both instances must keep running throughout, and the output, read with
//! `isolation.level=read_committed`, must hold every input ID exactly once.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker::{self, PrivateBroker};
use exactly_testkit::chaos::{messages_with_duplicates, AppProcess};
use std::time::{Duration, Instant};

/// Asserts that no instance exited.
fn alive(instances: &mut [AppProcess]) {
    for inst in instances.iter_mut() {
        if let Some(status) = inst.exited() {
            panic!(
                "instance {} exited during a broker restart ({status}); log tail:\n{}",
                inst.id,
                inst.log_tail(40)
            );
        }
    }
}

/// Waits until the group committed everything produced, while checking that the instances
/// run (`wait_caught_up` panics when one exits).
fn caught_up(s: &Setup, instances: &mut [AppProcess]) {
    s.wait_caught_up(instances);
    alive(instances);
}

/// Stops the broker, keeps it down for `down_for` (the instances' requests fail meanwhile),
/// and starts it again. Returns how long it was unreachable.
fn restart(b: &PrivateBroker, down_for: Duration, instances: &mut [AppProcess]) -> Duration {
    let t = Instant::now();
    b.down();
    std::thread::sleep(down_for);
    alive(instances);
    b.up();
    t.elapsed()
}

#[test]
fn instances_running_and_restoring_through_broker_restarts_keep_running_and_output_each_id_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let Some(b) = PrivateBroker::start("broker_restart", data.path()) else {
        return;
    };
    let s = Setup::on(b.bs.clone(), "broker-restart", 4, &[]);
    let messages = messages_with_duplicates(24_000, 0.2, 15);
    let unique = 24_000;
    let third = messages.len() / 3;
    // The eager protocol, as in rebalance.rs: the local broker's cooperative rounds stall.
    let args = ["--kafka", "partition.assignment.strategy=range"];
    let mut apps = [s.forward("a", &args), s.forward("b", &args)];
    for app in &mut apps {
        // The local broker's quirks (scripts/broker.sh): restores replay whole changelogs;
        // a producer that saw the broker restart is replaced before its next transaction.
        app.env("EXACTLY_RESTORE_FROM", "start");
        app.env("EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE", "true");
        app.start();
    }
    broker::produce(&s.bs, &s.input, &messages[..third]);
    caught_up(&s, &mut apps);

    // 1. Instance b is killed and restarted; the broker goes away while it opens and
    //    restores its tasks (or just after: the log says which).
    assert!(apps[1].kill9(), "instance b was running");
    apps[1].start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !apps[1].log_since_start().contains("restoring stores") {
        alive(&mut apps);
        assert!(
            Instant::now() < deadline,
            "instance b did not start restoring within 60 s; log tail:\n{}",
            apps[1].log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let restoring = apps[1].starting_or_restoring();
    let first = restart(&b, Duration::from_secs(3), &mut apps);
    broker::produce(&s.bs, &s.input, &messages[third..2 * third]);
    caught_up(&s, &mut apps);

    // 2. The broker stops for 8 s (longer than the instances' 6 s session timeout: librdkafka
    //    declares their partitions lost) once they are caught up, and the last third is
    //    produced after it is back. (Stopping it under open transactions made this broker
    //    hide committed records from read_committed readers afterwards: docs/reliability.md.)
    let second = restart(&b, Duration::from_secs(8), &mut apps);
    broker::produce(&s.bs, &s.input, &messages[2 * third..]);
    caught_up(&s, &mut apps);
    eprintln!(
        "broker restarts: {:.1} s (instance b restoring at the stop: {restoring}) and {:.1} s",
        first.as_secs_f64(),
        second.as_secs_f64()
    );

    // What the instances did about it, for the record.
    for app in &apps {
        let ours = |l: &&str| l.contains(" exactly");
        let warned = |l: &&str| l.contains(" WARN ") || l.contains(" ERROR ");
        for line in app.log().lines().filter(ours).filter(warned) {
            eprintln!("instance {}: {}", app.id, &line[..line.len().min(300)]);
        }
    }
    stop_all(&mut apps);
    let v = s.verify();
    if !v.missing.is_empty() {
        diagnose(&s, &v.missing);
    }
    assert_exact(&v, unique);
}

/// Says where missing IDs are: in the output and changelog read uncommitted but not committed
/// means the broker hides records of a transaction whose offsets it committed (seen on the
/// local broker after a restart under open transactions).
fn diagnose(s: &Setup, missing: &[String]) {
    let missing: std::collections::HashSet<exactly_core::IdKey> = missing
        .iter()
        .map(|id| exactly_core::IdKey::of(id.as_bytes()))
        .collect();
    // Outputs carry the ID in a header; changelog records hold the keys of many IDs.
    let keys =
        |topic: &String, records: &[broker::ReadRecord]| -> Vec<(i32, i64, exactly_core::IdKey)> {
            if *topic == s.output {
                records
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.partition,
                            r.offset,
                            exactly_core::IdKey::of(r.id()?.as_bytes()),
                        ))
                    })
                    .collect()
            } else {
                broker::changelog_ids(records)
                    .into_iter()
                    .map(|(p, id)| (p, -1, id))
                    .collect()
            }
        };
    for topic in [&s.output, &s.changelog()] {
        for (isolation, records) in [
            ("read_uncommitted", broker::read_uncommitted(&s.bs, topic)),
            ("read_committed", broker::read_committed(&s.bs, topic)),
        ] {
            let hits: Vec<_> = keys(topic, &records)
                .into_iter()
                .filter(|(_, _, id)| missing.contains(id))
                .collect();
            eprintln!(
                "{topic} {isolation}: {} records, {} of the {} missing IDs, the first at {:?}",
                records.len(),
                hits.len(),
                missing.len(),
                hits.first().map(|(p, o, _)| (p, o))
            );
        }
    }
    let committed = broker::committed_offsets(&s.bs, &s.app, &s.input, s.partitions);
    eprintln!("committed offsets {committed:?}, input ends {:?}", s.ends());
}
