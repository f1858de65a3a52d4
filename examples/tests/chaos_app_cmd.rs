//! `exactly chaos --app-cmd` against a user's own app: the running-totals example (a stateful
//! app) run as a command line with placeholders, SIGKILLed, paused and restarted on a seeded
//! schedule, proven exactly once per message ID; the same harness catches a broken app; a
//! command without the placeholders an instance needs is refused before anything runs.

use exactly_testkit::broker;
use std::path::PathBuf;
use std::process::{Command, Output};

const TOTALS: &str = env!("CARGO_BIN_EXE_running-totals");

/// The `exactly` binary of this build (`crates/exactly-cli`), next to the examples' binaries:
/// the workspace test run (`scripts/test.sh`) builds both.
fn exactly_cli() -> PathBuf {
    let path = PathBuf::from(TOTALS).with_file_name("exactly");
    assert!(
        path.is_file(),
        "{} is missing: build the CLI too (`cargo build -p exactly-cli`; `scripts/test.sh` builds the whole workspace)",
        path.display()
    );
    path
}

/// running-totals as `--app-cmd` takes it, with a short session timeout so a killed
/// instance's partitions move on quickly, and `extra` options.
fn totals_command(extra: &str) -> String {
    format!(
        "{TOTALS} --bootstrap {{bootstrap}} --input {{input}} --output {{output}} --app-id {{app}} \
         --instance-id {{instance}} --state-dir {{state}} --kafka session.timeout.ms=6000 \
         --kafka heartbeat.interval.ms=500 {extra}"
    )
}

fn chaos(bs: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(exactly_cli())
        .arg("chaos")
        .args(args)
        .env("KAFKA_BOOTSTRAP", bs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run exactly chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(kept) = text
        .split("logs kept in ")
        .nth(1)
        .and_then(|r| r.lines().next())
    {
        let _ = std::fs::remove_dir_all(kept.trim());
    }
    (out, text)
}

/// The number before `label` in the report's summary line.
fn count(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("chaos seed "))
        .unwrap_or_else(|| panic!("no summary line in:\n{text}"));
    let before = line
        .split(&format!(" {label}"))
        .next()
        .expect("split yields one part");
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {label:?} in {line}"))
}

#[test]
fn chaos_with_app_cmd_proves_the_running_totals_example_exactly_once() {
    let Some(bs) = broker::require_broker("chaos app-cmd") else {
        return;
    };
    let seed = u64::from(rand::random::<u32>()).to_string();
    let command = totals_command("");
    let (out, t) = chaos(
        &bs,
        &[
            "--app-cmd",
            &command,
            "--accounts",
            "50",
            "--unique",
            "4000",
            "--kills",
            "10",
            "--seed",
            &seed,
        ],
    );
    println!("{t}");
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("exactly once: 0 duplicates, 0 missing"), "{t}");
    // 4000 IDs, 20 % of the messages resends: 5000 inputs; one total per ID.
    assert_eq!(count(&t, "inputs"), 5000, "{t}");
    assert_eq!(count(&t, "unique IDs"), 4000, "{t}");
    assert_eq!(count(&t, "outputs"), 4000, "{t}");
    assert_eq!(count(&t, "duplicates"), 0, "{t}");
    assert_eq!(count(&t, "missing"), 0, "{t}");
    assert_eq!(count(&t, "unexpected"), 0, "{t}");
    // The schedule of 10 disruptions (65 % SIGKILLs) killed something: an instance of the
    // user's command, restarted with the same instance id.
    assert!(count(&t, "SIGKILLs") >= 1, "{t}");
}

#[test]
fn chaos_with_app_cmd_and_an_input_file_catches_an_app_that_forgets_ids() {
    let Some(bs) = broker::require_broker("chaos app-cmd broken") else {
        return;
    };
    // 600 payments over 20 accounts, then every one of them resent: the app below forgets an
    // ID 1 ms after it saw it, so the resends are counted again.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("payments.jsonl");
    let line = |i: u32| {
        format!(
            r#"{{"id": "p{i}", "key": "acct-{}", "value": "{}"}}"#,
            i % 20,
            i % 7 + 1
        )
    };
    let lines: Vec<String> = (0..600).chain(0..600).map(line).collect();
    std::fs::write(&file, lines.join("\n")).expect("write input file");
    let command = totals_command("--dedup-retention-ms 1");
    let file = file.display().to_string();
    let (out, t) = chaos(
        &bs,
        &[
            "--app-cmd",
            &command,
            "--input-file",
            &file,
            "--kills",
            "4",
            "--seed",
            "11",
        ],
    );
    println!("{t}");
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("NOT exactly once; logs kept in "), "{t}");
    assert_eq!(count(&t, "inputs"), 1200, "{t}");
    assert_eq!(count(&t, "unique IDs"), 600, "{t}");
    // The resends come at least one chunk (300 records) after their originals, long after
    // the 1 ms; those whose ID the store's expiry dropped meanwhile are processed again.
    let duplicates = count(&t, "duplicates");
    assert!(
        (1..=600).contains(&duplicates),
        "{duplicates} duplicates: {t}"
    );
    assert_eq!(count(&t, "missing"), 0, "{t}");
}

#[test]
fn an_app_cmd_without_the_placeholders_an_instance_needs_is_refused_before_anything_runs() {
    // No broker needed: the command is checked first.
    let (out, t) = chaos(
        "127.0.0.1:1",
        &[
            "--app-cmd",
            "my-app --input {input} --bootstrap {bootstrap}",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the app command does not use {output} {app} {instance} {state}"),
        "{t}"
    );
    let (out, t) = chaos(
        "127.0.0.1:1",
        &["--app-cmd", &totals_command("--typo {sate}")],
    );
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("unknown placeholder {sate}"), "{t}");
}
