//! The two apps the simulation runs, and the oracle that judges their committed output.

use exactly_core::state::{Bincode, TypedStore};
use exactly_core::{Context, Output, ProcessError, Processor, Record, StoreSpec, TaskId};
use exactly_testkit::SimRecord;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// What an input carries.
#[derive(Debug, Clone)]
pub struct Input {
    pub id: String,
    pub key: String,
    /// Fanout (stateless) or amount (stateful).
    pub value: u64,
    /// Its key is so long that its outputs exceed the output topic's `max.message.bytes`: the
    /// broker refuses them, and the input record must be dead-lettered once.
    pub poison: bool,
}

/// Which app a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// `value` outputs per record, each tagged with the ID and its index.
    Fanout,
    /// Per-key running totals in a state store; one output (the new total) per record.
    Totals,
}

pub const OUTPUT: &str = "out";
pub const DEAD_LETTERS: &str = "sim-dlq";
/// The output topic's `max.message.bytes`: the outputs of a poison input's key exceed it.
pub const OUTPUT_MAX_BYTES: usize = 200;
pub const STORE: &str = "totals";

pub struct SimApp {
    kind: AppKind,
    totals: TypedStore<String, u64, Bincode>,
    flaky: Arc<Flaky>,
}

/// Makes the processor ask for a retry (`ProcessError::Retry`) of each message ID's first
/// `retries` attempts (0: never), over all tasks and restarts: the task backs off between them
/// (sleeping on the simulated clock).
#[derive(Default)]
pub struct Flaky {
    pub retries: AtomicU32,
    attempts: Mutex<HashMap<Vec<u8>, u32>>,
}

impl Flaky {
    fn retry(&self, id: &[u8]) -> bool {
        let retries = self.retries.load(Ordering::Relaxed);
        if retries == 0 {
            return false;
        }
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = attempts.entry(id.to_vec()).or_default();
        *n += 1;
        *n <= retries
    }
}

impl Processor for SimApp {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let id = ctx.message_id().unwrap_or_default().to_vec();
        if self.flaky.retry(&id) {
            return Err(ProcessError::retry("the simulated sink is slow; try again"));
        }
        let key = r.key.unwrap_or_default().to_vec();
        let value: u64 = std::str::from_utf8(r.value.unwrap_or_default())
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ProcessError::fatal("the simulation only sends numbers"))?;
        match self.kind {
            AppKind::Fanout => {
                for i in 0..value {
                    ctx.send(
                        Output::to(OUTPUT)
                            .key(key.clone())
                            .header("message-id", id.clone())
                            .header("n", i.to_string()),
                    );
                }
            }
            AppKind::Totals => {
                let account = String::from_utf8_lossy(&key).into_owned();
                let total = self.totals.get(ctx, &account)?.unwrap_or(0) + value;
                self.totals.put(ctx, &account, &total)?;
                ctx.send(
                    Output::to(OUTPUT)
                        .key(key)
                        .value(total.to_string())
                        .header("message-id", id),
                );
            }
        }
        Ok(())
    }
}

pub type Factory = Box<dyn Fn(&TaskId) -> SimApp + Send + Sync>;

pub fn factory(kind: AppKind, flaky: Arc<Flaky>) -> Factory {
    Box::new(move |_: &TaskId| SimApp {
        kind,
        totals: TypedStore::new(STORE),
        flaky: flaky.clone(),
    })
}

pub fn stores(kind: AppKind) -> Vec<StoreSpec> {
    match kind {
        AppKind::Fanout => Vec::new(),
        AppKind::Totals => vec![StoreSpec::new(STORE)],
    }
}

fn header(r: &SimRecord, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or(b"<none>")).into_owned()
}

/// Checks the committed output against the inputs, per message ID; for `Totals` also that
/// each key's emitted totals are the running sums of a sequential run over the unique IDs in
/// input order. A poison input has no output and exactly one dead letter of kind
/// `production`; no other input has a dead letter. Returns a description of every mismatch.
pub fn check(
    kind: AppKind,
    inputs_in_order: &[Input],
    outputs: &[(i32, i64, SimRecord)],
    dead_letters: &[(i32, i64, SimRecord)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut unique: Vec<&Input> = Vec::new();
    let mut poison: Vec<&Input> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in inputs_in_order {
        if seen.insert(i.id.as_str()) {
            if i.poison {
                poison.push(i);
            } else {
                unique.push(i);
            }
        }
    }
    let mut dead: HashMap<String, u64> = HashMap::new();
    for (_, _, r) in dead_letters {
        let kind = header(r, "exactly.error.kind");
        *dead
            .entry(format!("{} ({kind})", header(r, "message-id")))
            .or_default() += 1;
    }
    for i in &poison {
        match dead.remove(&format!("{} (production)", i.id)) {
            Some(1) => {}
            Some(c) => problems.push(format!("poison {} dead-lettered {c} times", i.id)),
            None => problems.push(format!("poison {} was not dead-lettered", i.id)),
        }
    }
    for (id, c) in dead {
        problems.push(format!("unexpected dead letter {id} ({c} times)"));
    }
    match kind {
        AppKind::Fanout => {
            let mut count: HashMap<(String, String), u64> = HashMap::new();
            for (_, _, r) in outputs {
                *count
                    .entry((header(r, "message-id"), header(r, "n")))
                    .or_default() += 1;
            }
            for i in &unique {
                for n in 0..i.value {
                    match count.remove(&(i.id.clone(), n.to_string())) {
                        Some(1) => {}
                        Some(c) => problems.push(format!("{}#{n} appears {c} times", i.id)),
                        None => problems.push(format!("{}#{n} is missing", i.id)),
                    }
                }
            }
            for ((id, n), c) in count {
                problems.push(format!("unexpected output {id}#{n} ({c} times)"));
            }
        }
        AppKind::Totals => {
            let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut sums: HashMap<String, u64> = HashMap::new();
            for i in &unique {
                let s = sums.entry(i.key.clone()).or_default();
                *s += i.value;
                expected.entry(i.key.clone()).or_default().push(*s);
            }
            let mut sorted: Vec<&(i32, i64, SimRecord)> = outputs.iter().collect();
            sorted.sort_by_key(|(p, o, _)| (*p, *o));
            let mut emitted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut emitted_ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut ids: HashMap<String, u64> = HashMap::new();
            for (p, o, r) in sorted {
                let key =
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
                let total = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                    .parse()
                    .unwrap_or(u64::MAX);
                emitted.entry(key.clone()).or_default().push(total);
                emitted_ids
                    .entry(key)
                    .or_default()
                    .push(format!("{}={total}@{p}/{o}", header(r, "message-id")));
                *ids.entry(header(r, "message-id")).or_default() += 1;
            }
            for i in &unique {
                match ids.remove(&i.id) {
                    Some(1) => {}
                    Some(c) => problems.push(format!("{} has {c} outputs", i.id)),
                    None => problems.push(format!("{} has no output", i.id)),
                }
            }
            for (id, c) in ids {
                problems.push(format!("unexpected output for {id} ({c} times)"));
            }
            if emitted != expected {
                for (key, want) in &expected {
                    let got = emitted.get(key).cloned().unwrap_or_default();
                    if &got != want {
                        let inputs: Vec<String> = unique
                            .iter()
                            .filter(|i| &i.key == key)
                            .map(|i| format!("{}+{}", i.id, i.value))
                            .collect();
                        problems.push(format!(
                            "totals of {key}: emitted {got:?}, a sequential run emits {want:?}\n  emitted: {:?}\n  inputs: {inputs:?}",
                            emitted_ids.get(key)
                        ));
                    }
                }
            }
        }
    }
    problems
}
