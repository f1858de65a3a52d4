//! The `session-alerts` example (stream-time timers, a state store) on the real broker under
//! the seeded SIGKILL chaos harness: every session's alert exactly once (counted per session
//! ID, read with isolation.level=read_committed), the alerts and the final state of the
//! `sessions` store equal to a sequential run over the input as the broker holds it.

mod common;
use common::changelog_state;
use exactly_testkit::broker::{self, ReadRecord, TestMessage};
use exactly_testkit::chaos::{self, payment_amount, ChaosPlan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

const ALERTS: &str = env!("CARGO_BIN_EXE_session-alerts");
const GAP: i64 = 5_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The example's `Session` (bincode layout of its store's values).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
struct Session {
    number: u64,
    open: bool,
    first_ms: i64,
    last_ms: i64,
    payments: u64,
    total_cents: i64,
}

/// The example's `Alert`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
struct Alert {
    session: String,
    account: String,
    first_ms: i64,
    last_ms: i64,
    ended_ms: i64,
    payments: u64,
    total_cents: i64,
}

/// `unique` payments over `accounts` accounts from `start` (ms), one every 100 ms (± 300 ms,
/// so some arrive out of order), then a fifth more as resends of earlier ones (same ID, key,
/// value and timestamp) at later places.
fn payments(unique: usize, accounts: usize, seed: u64, start: i64) -> Vec<TestMessage> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut messages: Vec<TestMessage> = (0..unique)
        .map(|i| TestMessage {
            id: Some(format!("p{i}")),
            key: Some(format!("acct-{}", rng.gen_range(0..accounts)).into_bytes()),
            value: payment_amount(i).to_string().into_bytes(),
            timestamp: Some(start + i as i64 * 100 + rng.gen_range(-300..=300)),
        })
        .collect();
    for _ in 0..unique / 4 {
        let original = rng.gen_range(0..unique);
        let copy = messages
            .iter()
            .find(|m| m.id.as_deref() == Some(&format!("p{original}")))
            .cloned()
            .expect("an original");
        let at = messages
            .iter()
            .position(|m| m.id == copy.id)
            .expect("the original's place");
        let place = rng.gen_range(at + 1..=messages.len());
        messages.insert(place, copy);
    }
    messages
}

/// What a sequential run gives over the input as the broker holds it (each partition in
/// offset order; stream time moves with every record, resends included; the first copy of an
/// ID counts): the alerts, and every account's last session.
fn sequential(inputs: &[ReadRecord]) -> (Vec<Alert>, BTreeMap<String, Session>) {
    let mut by_partition: BTreeMap<i32, Vec<&ReadRecord>> = BTreeMap::new();
    for r in inputs {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut seen = HashSet::new();
    let mut alerts = Vec::new();
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    for records in by_partition.values_mut() {
        records.sort_by_key(|r| r.offset);
        let mut stream_time = i64::MIN;
        let mut timers: BTreeSet<(i64, String)> = BTreeSet::new();
        let mut due: HashMap<String, i64> = HashMap::new();
        for r in records.iter() {
            let at = r.timestamp.expect("payments have timestamps");
            stream_time = stream_time.max(at);
            if seen.insert(r.id().expect("an ID")) {
                let account = String::from_utf8(r.key.clone().unwrap()).unwrap();
                let cents: i64 = String::from_utf8(r.value.clone().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                let s = match sessions.get(&account) {
                    Some(s) if s.open => Session {
                        first_ms: s.first_ms.min(at),
                        last_ms: s.last_ms.max(at),
                        payments: s.payments + 1,
                        total_cents: s.total_cents + cents,
                        ..s.clone()
                    },
                    previous => Session {
                        number: previous.map_or(1, |p| p.number + 1),
                        open: true,
                        first_ms: at,
                        last_ms: at,
                        payments: 1,
                        total_cents: cents,
                    },
                };
                if let Some(old) = due.insert(account.clone(), s.last_ms + GAP) {
                    timers.remove(&(old, account.clone()));
                }
                timers.insert((s.last_ms + GAP, account.clone()));
                sessions.insert(account, s);
            }
            while let Some((at, account)) =
                timers.first().cloned().filter(|(t, _)| *t <= stream_time)
            {
                timers.remove(&(at, account.clone()));
                due.remove(&account);
                let s = sessions.get_mut(&account).expect("a session");
                alerts.push(Alert {
                    session: format!("{account}#{}", s.number),
                    account: account.clone(),
                    first_ms: s.first_ms,
                    last_ms: s.last_ms,
                    ended_ms: at,
                    payments: s.payments,
                    total_cents: s.total_cents,
                });
                s.open = false;
            }
        }
    }
    alerts.sort();
    (alerts, sessions)
}

#[test]
fn session_alerts_fire_exactly_once_under_sigkill_chaos_and_equal_a_sequential_run() {
    let Some(bs) = broker::require_broker("session-alerts chaos") else {
        return;
    };
    let seed = env_or("TEST_CHAOS_SEED", u64::from(rand::random::<u32>()));
    let unique = env_or("TEST_CHAOS_UNIQUE", 4_000) as usize;
    // Recent timestamps: the topics' time-based retention (7 days) would delete older ones.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64;
    let messages = payments(unique, 40, seed, now - 3_600_000);
    let plan = ChaosPlan {
        program: ALERTS.into(),
        prefix_args: Vec::new(),
        instances: 2,
        partitions: 4,
        unique,
        dup_share: 0.2,
        actions: env_or("TEST_CHAOS_ACTIONS", 14) as usize,
        seed,
        accounts: 0,
        state_stores: vec!["sessions".into()],
        extra_args: vec!["--gap-ms".into(), GAP.to_string()],
        soak: None,
        app_command: None,
        messages: Some(messages.clone()),
        input_id: Default::default(),
        output_id: Default::default(),
    };
    println!("session-alerts chaos seed {seed} (replay with TEST_CHAOS_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let report = chaos::run(&bs, &plan, dir.path());
    // Its per-input-ID counts do not apply here: the alerts carry their timers' IDs.
    println!("{}", report.summary());

    assert_eq!(report.inputs.len(), messages.len(), "input records");
    let produced: HashMap<String, i64> = messages
        .iter()
        .map(|m| (m.id.clone().unwrap(), m.timestamp.unwrap()))
        .collect();
    let moved = report
        .inputs
        .iter()
        .filter(|r| r.timestamp != produced.get(&r.id().unwrap()).copied())
        .count();
    assert_eq!(
        moved, 0,
        "input records whose timestamp is not the producer's"
    );
    let (expected, final_sessions) = sequential(&report.inputs);
    let mut got: Vec<Alert> = report
        .outputs
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().expect("an alert")).expect("alert JSON"))
        .collect();
    got.sort();
    let mut per_session: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &got {
        *per_session.entry(&a.session).or_default() += 1;
    }
    let repeated: Vec<_> = per_session.iter().filter(|(_, n)| **n > 1).collect();
    let state = changelog_state::<Session>(&report.state_changelogs["sessions"]);
    let ok = repeated.is_empty() && got == expected && state == final_sessions;
    if !ok {
        println!("logs and state kept in {}", dir.keep().display());
    }
    assert!(
        report.sigkills >= 4 || std::env::var("TEST_CHAOS_ACTIONS").is_ok(),
        "only {} SIGKILLs",
        report.sigkills
    );
    assert_eq!(
        report.kills_landed, report.sigkills,
        "SIGKILLs that hit a running process"
    );
    assert_eq!(
        report.zombies_stopped, report.replacements,
        "zombies stopped by the fence"
    );
    assert!(
        repeated.is_empty(),
        "sessions alerted more than once: {repeated:?}"
    );
    assert!(
        expected.len() > unique / 20,
        "the input ends sessions: {} alerts",
        expected.len()
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "alerts: got {}, a sequential run {}",
        got.len(),
        expected.len()
    );
    assert_eq!(got, expected, "the alerts equal a sequential run's");
    // Each alert carries its timer's message ID, so a downstream app dedups it.
    for r in &report.outputs {
        let a: Alert = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            r.id(),
            Some(format!("timer/stream/{}@{}", a.account, a.ended_ms))
        );
    }
    assert_eq!(
        state, final_sessions,
        "the sessions store equals a sequential run's"
    );
}
