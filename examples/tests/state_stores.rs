//! State stores on a real broker, with the `running-totals` example (per-account totals in a
//! state store, emitted after each payment): under SIGKILL chaos and with aborted
//! transactions, the outputs and the final state, both read with
//! isolation.level=read_committed, equal a sequential run over the unique payment IDs.

mod common;
use common::{assert_exact, changelog_state, stop_all, Setup};
use exactly_testkit::broker::{self, ReadRecord, TestMessage};
use exactly_testkit::chaos::{self, messages_with_duplicates, payment_amount, ChaosPlan};
use std::collections::{BTreeMap, HashMap, HashSet};

const TOTALS: &str = env!("CARGO_BIN_EXE_running-totals");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a sequential run over the unique IDs gives, from the input as the broker holds it
/// (each partition in offset order; the first copy of an ID counts): the total emitted for
/// each ID, and each account's final total.
fn sequential(inputs: &[ReadRecord]) -> (HashMap<String, i64>, BTreeMap<String, i64>) {
    let mut by_partition: BTreeMap<i32, Vec<&ReadRecord>> = BTreeMap::new();
    for r in inputs {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut seen = HashSet::new();
    let mut per_id = HashMap::new();
    let mut totals = BTreeMap::new();
    for records in by_partition.values_mut() {
        records.sort_by_key(|r| r.offset);
        for r in records.iter() {
            let id = r.id().expect("every payment has an ID");
            if !seen.insert(id.clone()) {
                continue;
            }
            let account = String::from_utf8(r.key.clone().expect("key")).expect("utf-8");
            let amount: i64 = String::from_utf8(r.value.clone().expect("value"))
                .expect("utf-8")
                .parse()
                .expect("an amount");
            let total = totals.entry(account).or_insert(0);
            *total += amount;
            per_id.insert(id, *total);
        }
    }
    (per_id, totals)
}

/// Output records whose total differs from the sequential run's, as `(id, got, expected)`.
fn wrong_totals(
    outputs: &[ReadRecord],
    expected: &HashMap<String, i64>,
) -> Vec<(String, i64, i64)> {
    let mut wrong = Vec::new();
    for r in outputs {
        let id = r.id().expect("outputs carry the payment's ID");
        let got: i64 = String::from_utf8(r.value.clone().expect("value"))
            .expect("utf-8")
            .parse()
            .expect("a total");
        let want = expected.get(&id).copied().unwrap_or(i64::MIN);
        if got != want {
            wrong.push((id, got, want));
        }
    }
    wrong
}

#[test]
fn stateful_chaos_with_sigkill_keeps_outputs_and_state_equal_to_a_sequential_run() {
    let Some(bs) = broker::require_broker("state chaos") else {
        return;
    };
    let plan = ChaosPlan {
        program: TOTALS.into(),
        prefix_args: Vec::new(),
        instances: 2,
        partitions: 4,
        unique: env_or("TEST_CHAOS_UNIQUE", 40_000) as usize,
        dup_share: 0.2,
        actions: env_or("TEST_CHAOS_ACTIONS", 40) as usize,
        seed: env_or("TEST_CHAOS_SEED", u64::from(rand::random::<u32>())),
        accounts: 200,
        state_stores: vec!["totals".into()],
        extra_args: Vec::new(),
        soak: None,
        app_command: None,
        messages: None,
        input_id: Default::default(),
        output_id: Default::default(),
    };
    println!(
        "state chaos seed {} (replay with TEST_CHAOS_SEED={})",
        plan.seed, plan.seed
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let report = chaos::run(&bs, &plan, dir.path());
    println!("{}", report.summary());
    let (per_id, totals) = sequential(&report.inputs);
    let wrong = wrong_totals(&report.outputs, &per_id);
    let state = changelog_state::<i64>(&report.state_changelogs["totals"]);
    let v = &report.verification;
    if !v.is_exact() || !wrong.is_empty() || state != totals {
        let kept = dir.keep();
        println!("logs and state kept in {}", kept.display());
    }
    assert!(
        report.sigkills >= 15 || std::env::var("TEST_CHAOS_ACTIONS").is_ok(),
        "only {} SIGKILLs",
        report.sigkills
    );
    assert_exact(v, plan.unique);
    assert!(
        wrong.is_empty(),
        "{} outputs with a total other than the sequential run's, e.g. (id, got, expected) {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(totals.len(), 200, "every account got payments");
    let expected_sum: i64 = (0..plan.unique).map(payment_amount).sum();
    assert_eq!(totals.values().sum::<i64>(), expected_sum);
    assert_eq!(
        state, totals,
        "final state (changelog) vs the sequential run"
    );
}

#[test]
fn aborted_transactions_leave_no_state_behind_on_a_real_broker() {
    let Some(s) = Setup::new("state-abort", 2) else {
        return;
    };
    // 3,000 payments over 20 accounts, 20 % of the messages resends.
    let unique = 3_000;
    let mut messages: Vec<TestMessage> = messages_with_duplicates(unique, 0.2, 21);
    for m in &mut messages {
        let i: usize = m.id.as_deref().expect("id")[1..].parse().expect("m{i}");
        m.key = Some(format!("acct-{}", i % 20).into_bytes());
        m.value = payment_amount(i).to_string().into_bytes();
    }
    broker::produce(&s.bs, &s.input, &messages);
    // The first 6 flushes fail: 6 transactions abort after processing their records and
    // staging their state writes; the rewound records must see the committed totals only.
    let mut app = [s.instance(TOTALS, "0", &s.state_dir("0"), &["--fail-flushes", "6"])];
    app[0].start();
    s.wait_caught_up(&mut app);
    stop_all(&mut app);
    let log = std::fs::read_to_string(&app[0].log).expect("log");
    assert_eq!(
        log.matches("failing this flush on purpose").count(),
        6,
        "six flushes failed"
    );
    assert_eq!(
        log.matches("task error: aborting the transaction and retrying")
            .count(),
        6,
        "each failed flush aborted its transaction"
    );

    let inputs = broker::read_committed(&s.bs, &s.input);
    let outputs = s.output_records();
    assert_exact(&s.verify(), unique);
    let (per_id, totals) = sequential(&inputs);
    let wrong = wrong_totals(&outputs, &per_id);
    assert!(
        wrong.is_empty(),
        "{} outputs with a total other than the sequential run's, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let changelog = format!("{}-{}-totals-changelog", s.app, s.input);
    let state = changelog_state::<i64>(&broker::read_committed(&s.bs, &changelog));
    broker::delete_topics(&s.bs, &[&changelog]);
    assert_eq!(state.len(), 20);
    assert_eq!(state, totals);
}
