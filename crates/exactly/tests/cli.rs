//! The `exactly` command line: `verify` catches duplicates and losses in real topics,
//! `inspect` reads task stores, `check` rejects bad configs with a clear message.

use exactly_core::{ChangelogCheckpoint, DedupStore, SeenEntry, StoreBatch};
use exactly_state::{task_dir, RocksDedupStore, SharedRocksResources, StoreIdentity};
use exactly_testkit::broker::{self, TestMessage};
use std::process::{Command, Output};

const EXACTLY: &str = env!("CARGO_BIN_EXE_exactly");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(EXACTLY);
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run exactly")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn msg(id: &str) -> TestMessage {
    TestMessage {
        id: Some(id.to_owned()),
        key: Some(id.as_bytes().to_vec()),
        value: b"v".to_vec(),
    }
}

#[test]
fn verify_reports_a_duplicated_and_a_missing_record_and_exits_non_zero() {
    let Some(bs) = broker::require_broker("verify") else {
        return;
    };
    let (input, output, clean) = (
        broker::unique_name("vin"),
        broker::unique_name("vout"),
        broker::unique_name("vclean"),
    );
    broker::create_topics(&bs, &[(&input, 2), (&output, 2), (&clean, 2)]);
    let ids: Vec<String> = (0..50).map(|i| format!("id-{i}")).collect();
    broker::produce(&bs, &input, &ids.iter().map(|i| msg(i)).collect::<Vec<_>>());
    // The fixture output: id-7 twice, id-42 missing.
    let mut out: Vec<TestMessage> = ids
        .iter()
        .filter(|i| *i != "id-42")
        .map(|i| msg(i))
        .collect();
    out.push(msg("id-7"));
    broker::produce(&bs, &output, &out);
    broker::produce(&bs, &clean, &ids.iter().map(|i| msg(i)).collect::<Vec<_>>());

    let bad = run(
        &[
            "verify",
            "--bootstrap",
            &bs,
            "--input",
            &input,
            "--output",
            &output,
        ],
        &[],
    );
    let good = run(
        &[
            "verify",
            "--bootstrap",
            &bs,
            "--input",
            &input,
            "--output",
            &clean,
        ],
        &[],
    );
    let missing_topic = run(
        &[
            "verify",
            "--bootstrap",
            &bs,
            "--input",
            &input,
            "--output",
            "no-such-topic-x",
        ],
        &[],
    );
    broker::delete_topics(&bs, &[&input, &output, &clean]);

    let t = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{t}");
    assert!(t.contains("duplicate: id-7 appears 2 times"), "{t}");
    assert!(t.contains("missing: id-42 is in"), "{t}");
    assert!(
        t.contains("FAILED: 1 duplicates, 1 missing, 0 unexpected"),
        "{t}"
    );
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    assert!(text(&good).contains("OK: every input ID is in the output exactly once"));
    assert_eq!(missing_topic.status.code(), Some(1));
    assert!(
        text(&missing_topic).contains("topic `no-such-topic-x` does not exist"),
        "{}",
        text(&missing_topic)
    );
}

#[test]
fn inspect_lists_tasks_with_entries_and_checkpoint_and_looks_an_id_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, topic) = ("shop", "orders");
    for p in 0..2 {
        let identity = StoreIdentity::new(format!("{app}-{topic}-dedup-changelog"), p);
        let shared = SharedRocksResources::new(8 << 20, 8 << 20);
        let mut store =
            RocksDedupStore::open(&task_dir(dir.path(), app, topic, p), &shared, &identity)
                .expect("open");
        let ids: Vec<Vec<u8>> = (0..10 * (p + 1))
            .map(|i| format!("p{p}-{i}").into_bytes())
            .collect();
        let entries = ids
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    SeenEntry {
                        first_seen_ms: 1_000,
                        source_offset: 7,
                    },
                )
            })
            .collect();
        let checkpoint = ChangelogCheckpoint {
            topic: identity.changelog_topic.clone(),
            partition: p,
            next_offset: 10 * i64::from(p + 1),
        };
        store
            .apply(&StoreBatch {
                entries,
                checkpoint,
            })
            .expect("apply");
    }
    let state = dir.path().display().to_string();
    let o = run(&["inspect", "--state-dir", &state, "--id", "p1-3"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("shop/orders-0"), "{t}");
    assert!(t.contains("shop-orders-dedup-changelog[1] @ 20"), "{t}");
    assert!(
        t.contains("seen (first_seen_ms 1000, source offset 7)"),
        "{t}"
    );
    assert!(t.contains("p1-3: seen"), "{t}");
    let o = run(&["inspect", "--state-dir", &state, "--id", "nope"], &[]);
    assert!(
        text(&o).contains("nope: not seen in any task"),
        "{}",
        text(&o)
    );
}

fn check_file(contents: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.toml");
    std::fs::write(&path, contents).expect("write config");
    run(&["check", "--config", &path.display().to_string()], &[])
}

#[test]
fn check_rejects_a_wrong_type_an_unknown_key_and_a_missing_key_with_a_clear_message() {
    let wrong_type =
        check_file("app_id = \"a\"\ninputs = [\"in\"]\ncommit_interval_ms = \"fast\"\n");
    assert_eq!(wrong_type.status.code(), Some(1));
    let t = text(&wrong_type);
    assert!(
        t.contains("config key `commit_interval_ms`")
            && t.contains("invalid type: string \"fast\""),
        "{t}"
    );

    let unknown = check_file("app_id = \"a\"\ninputs = [\"in\"]\ncomit_interval_ms = 50\n");
    assert_eq!(unknown.status.code(), Some(1));
    let t = text(&unknown);
    assert!(
        t.contains("unknown config key `comit_interval_ms`")
            && t.contains("did you mean `commit_interval_ms`"),
        "{t}"
    );

    let missing = check_file("inputs = [\"in\"]\n");
    assert_eq!(missing.status.code(), Some(1));
    let t = text(&missing);
    assert!(
        t.contains("missing required config key `app_id`") && t.contains("EXACTLY_APP_ID"),
        "{t}"
    );

    let ok =
        check_file("app_id = \"a\"\ninputs = [\"in\"]\n[kafka]\n\"sasl.password\" = \"hunter2\"\n");
    let t = text(&ok);
    assert_eq!(ok.status.code(), Some(0), "{t}");
    assert!(t.contains("<redacted>") && !t.contains("hunter2"), "{t}");
}
