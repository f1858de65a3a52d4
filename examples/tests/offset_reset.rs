//! A group whose committed offsets are gone while its tasks' changelogs keep their IDs: what
//! happens when the broker deletes an empty group's offsets after `offsets.retention.minutes`
//! (7 days by default) or an operator deletes them. The test builds that state without waiting
//! a week: app `X` processes the input, and its dedup changelog is copied record for record to
//! the changelog of app `Y` (and `Z`), whose group never committed anything. By default the
//! instance refuses to start, with an error that says what happened and what to set, instead
//! of silently reprocessing the whole input retention; `--offset-reset earliest` reprocesses
//! it (every ID dropped by the restored store) and `--offset-reset latest` skips what was
//! produced meanwhile. (Deleting the group instead did not work on the local broker: it kept
//! the stopped member in the group, state Stable, for over a minute, so DeleteGroups answered
//! NON_EMPTY_GROUP.)

mod common;
use common::{numbered, Setup, FORWARD};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{instance_args, wait_caught_up, AppProcess, Verification};
use std::collections::HashSet;
use std::time::Duration;

/// A dedup-forward instance of app `app` over the setup's topics, with its own state dir.
fn instance(s: &Setup, app: &str, extra: &[&str]) -> AppProcess {
    let state = s.dir.path().join(format!("state-{app}"));
    let mut args = instance_args(&s.bs, &s.input, &s.output, app, &state);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut p = AppProcess::new(FORWARD, &[], "0", args, s.dir.path());
    p.set_log(s.dir.path().join(format!("{app}-{}.log", extra.join("_"))));
    p
}

fn changelog(s: &Setup, app: &str) -> String {
    format!("{app}-{}-dedup-changelog", s.input)
}

/// Creates `app`'s dedup changelog with the config of `s.app`'s and copies every committed
/// record into the same partition: `app` then holds the IDs while its group has no offsets.
/// Returns how many IDs the copied records hold.
fn copy_changelog(s: &Setup, app: &str) -> usize {
    let (from, to) = (s.changelog(), changelog(s, app));
    let config = broker::topic_config(&s.bs, &from);
    let keep = ["cleanup.policy", "retention.ms"];
    let configs: Vec<(&str, &str)> = keep
        .iter()
        .filter_map(|k| config.get(*k).map(|v| (*k, v.as_str())))
        .collect();
    assert_eq!(configs.len(), 2, "{from}: {config:?}");
    broker::create_topics_with(&s.bs, &[(&to, s.partitions, &configs)]);
    let records = broker::read_committed(&s.bs, &from);
    for p in 0..s.partitions {
        let part: Vec<TestMessage> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| TestMessage {
                id: None,
                key: r.key.clone(),
                value: r.value.clone().unwrap_or_default(),
                timestamp: None,
            })
            .collect();
        broker::produce_to(&s.bs, &to, Some(p), &part);
    }
    broker::changelog_ids(&records).len()
}

fn caught_up(s: &Setup, app: &str, instances: &mut [AppProcess]) {
    wait_caught_up(
        &s.bs,
        app,
        &s.input,
        &s.ends(),
        Duration::from_secs(300),
        instances,
    );
}

fn stop(p: &mut AppProcess) {
    let status = p.terminate(Duration::from_secs(60));
    assert!(
        status.is_none_or(|s| s.success()),
        "{status:?}; log tail:\n{}",
        p.log_tail(30)
    );
}

#[test]
fn a_group_whose_offsets_are_gone_refuses_to_start_unless_offset_reset_says_where() {
    let Some(s) = Setup::new("offset-reset", 2) else {
        return;
    };
    let (y, z) = (format!("{}-y", s.app), format!("{}-z", s.app));
    let first = numbered(0..3_000);
    let mut x = s.forward("0", &[]);
    x.start();
    broker::produce(&s.bs, &s.input, &first);
    s.wait_caught_up(std::slice::from_mut(&mut x));
    stop(&mut x);
    assert_eq!(copy_changelog(&s, &y), first.len());
    assert!(broker::committed_offsets(&s.bs, &y, &s.input, 2).is_empty());

    // Default: refuse.
    let mut refused = instance(&s, &y, &[]);
    refused.start();
    let status = refused.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "refused to start: {status}");
    let log = refused.log();
    let inputs = broker::read_committed(&s.bs, &s.input);
    let named = (0..2).any(|p| {
        let ids = inputs.iter().filter(|r| r.partition == p).count();
        log.contains(&format!(
            "task {}-{p} has no committed input offset, but its dedup store, restored from {}, holds {ids} committed message IDs",
            s.input,
            changelog(&s, &y)
        ))
    });
    assert!(
        named && log.contains("Set `offset_reset = \"earliest\"`"),
        "the error names the task, its IDs and the setting; tail:\n{}",
        refused.log_tail(60)
    );
    assert!(
        broker::committed_offsets(&s.bs, &y, &s.input, 2).is_empty(),
        "nothing was consumed"
    );
    assert_eq!(
        s.output_records().len(),
        first.len(),
        "nothing was output again"
    );

    // earliest: the whole input again, every ID dropped by the restored store.
    let mut earliest = instance(&s, &y, &["--offset-reset", "earliest"]);
    earliest.start();
    caught_up(&s, &y, std::slice::from_mut(&mut earliest));
    stop(&mut earliest);
    let v = Verification::compare(&inputs, &s.output_records());
    assert_eq!(
        (v.outputs, v.duplicates, v.missing.len()),
        (first.len(), 0, 0)
    );

    // latest: what was produced while the offsets were gone is skipped.
    assert_eq!(copy_changelog(&s, &z), first.len());
    let skipped = numbered(3_000..3_400);
    broker::produce(&s.bs, &s.input, &skipped);
    let mut latest = instance(&s, &z, &["--offset-reset", "latest"]);
    latest.start();
    // Nothing arrives after the end it skips to, so nothing commits yet: wait until both
    // tasks took their end (read before they log it).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while latest.log().matches("skipping to the input's end").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline && latest.exited().is_none(),
            "both tasks skip to the end; log tail:\n{}",
            latest.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = numbered(3_400..3_600);
    broker::produce(&s.bs, &s.input, &after);
    caught_up(&s, &z, std::slice::from_mut(&mut latest));
    stop(&mut latest);
    let outputs = s.output_records();
    let ids: HashSet<String> = outputs
        .iter()
        .filter_map(|r| r.headers.get("message-id"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    println!(
        "offset-reset: refused ({status}); earliest: 3000 reprocessed, 0 output; latest: {} skipped, {} output; {} outputs",
        skipped.len(),
        after.len(),
        outputs.len()
    );
    assert_eq!(
        outputs.len(),
        first.len() + after.len(),
        "the skipped 400 were not output"
    );
    assert_eq!(ids.len(), outputs.len(), "no duplicates");
    assert!(skipped
        .iter()
        .all(|m| !ids.contains(m.id.as_deref().unwrap())));
    assert!(after.iter().all(|m| ids.contains(m.id.as_deref().unwrap())));
    for app in [&y, &z] {
        let (c, d) = (changelog(&s, app), format!("{app}-dlq"));
        broker::delete_topics(&s.bs, &[&c, &d]);
    }
}
