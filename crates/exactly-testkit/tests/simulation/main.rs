//! The deterministic simulation of the production engine on a cluster with Apache Kafka's
//! rules: groups of 2-4 instances with 1-2 stream threads each over 4-8 partitions, resent
//! inputs, SIGKILLs at every step of the protocol (any client call or store write, or a named
//! step), restarts, members joining and leaving, SIGSTOPs between turns and in the middle of a
//! turn, zombies replaced by the same instance id or taken over by others after their session
//! expired, transaction timeouts, request faults, broker outages (no broker answers for up to
//! 20 s), compaction and damaged state directories; the stateless app runs with the global
//! dedup scope in 40 % of its schedules (stage 1 repartitions, stage 2 dedups and purges).
//! After the chaos every instance runs until the input is consumed; the oracle then counts per
//! message ID in the read_committed output (0 duplicates, 0 losses) and, for the stateful app,
//! compares each key's emitted totals with a sequential run over the unique IDs.
//!
//! `TEST_SEED=<seed>` replays one schedule (with `TEST_TRACE=1`: its actions and the
//! engine's log); `TEST_SCHEDULES=<n>` runs `n` schedules instead of the default.

mod apps;
mod scenarios;
mod world;

use apps::AppKind;
use exactly_core::engine::RestoreFrom;
use exactly_testkit::sim::GroupProtocol;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use world::{lock_world, step, tick, Freeze, Setup, World};

/// Schedules of a default run.
const DEFAULT_SCHEDULES: u64 = 10_000;
/// World turns a schedule may take to consume its input after the chaos.
const DRAIN_TURNS: usize = 60_000;

/// What schedules did.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    schedules: u64,
    inputs: u64,
    unique: u64,
    kills: u64,
    freezes: u64,
    zombie_stops: u64,
    commits: u64,
    aborts: u64,
    fences: u64,
    rebalances: u64,
    restores: u64,
    wipes: u64,
    ready_turns: u64,
    unready_turns: u64,
    /// Unique poison IDs produced, and input records dead-lettered for them.
    poison: u64,
    poison_dead_lettered: u64,
    /// Schedules with the global dedup scope, and repartition records they purged.
    global: u64,
    purged: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.schedules += o.schedules;
        self.inputs += o.inputs;
        self.unique += o.unique;
        self.kills += o.kills;
        self.freezes += o.freezes;
        self.zombie_stops += o.zombie_stops;
        self.commits += o.commits;
        self.aborts += o.aborts;
        self.fences += o.fences;
        self.rebalances += o.rebalances;
        self.restores += o.restores;
        self.wipes += o.wipes;
        self.ready_turns += o.ready_turns;
        self.unready_turns += o.unready_turns;
        self.poison += o.poison;
        self.poison_dead_lettered += o.poison_dead_lettered;
        self.global += o.global;
        self.purged += o.purged;
    }
}

fn setup(rng: &mut StdRng) -> Setup {
    let static_membership = rng.gen_bool(0.85);
    let kind = if rng.gen_bool(0.5) {
        AppKind::Fanout
    } else {
        AppKind::Totals
    };
    Setup {
        kind,
        global: kind == AppKind::Fanout && rng.gen_bool(0.4),
        partitions: rng.gen_range(4..=8),
        instances: rng.gen_range(2..=4),
        threads: rng.gen_range(1..=2),
        protocol: if rng.gen_bool(0.5) {
            GroupProtocol::Cooperative
        } else {
            GroupProtocol::Eager
        },
        static_membership,
        max_batch: rng.gen_range(1..=20),
        restore_from: if rng.gen_bool(0.8) {
            RestoreFrom::Checkpoint
        } else {
            RestoreFrom::Start
        },
        commit_interval_ms: 100,
        poison_rate: 0.02,
        persist_every: rng.gen_range(1..=4),
        changelog_record_bytes: if rng.gen_bool(0.5) {
            exactly_core::task::DEFAULT_CHANGELOG_RECORD_BYTES
        } else {
            // One to a few IDs per record.
            exactly_core::changelog::MIN_BATCH_VALUE_BYTES + rng.gen_range(0..120)
        },
    }
}

fn run_schedule(seed: u64) -> Result<Counts, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let setup = setup(&mut rng);
    let world = Arc::new(Mutex::new(World::new(rng, setup.clone())));
    {
        let mut w = lock_world(&world);
        let n = w.instance_count();
        let first = w.rng.gen_range(1..=n);
        for i in 0..first {
            w.start(i);
        }
    }
    let ops = lock_world(&world).rng.gen_range(40..120);
    for _ in 0..ops {
        chaos(&world, &setup);
    }
    drain(&world);
    let w = lock_world(&world);
    let problems = w.problems();
    let mut all: Vec<String> = w.failures.clone();
    all.extend(problems);
    if !all.is_empty() {
        let trace = if std::env::var("TEST_TRACE").is_ok() {
            format!("\ntrace:\n{}", w.trace.join("\n"))
        } else {
            String::new()
        };
        return Err(format!("{setup:?}\n{}{trace}", all.join("\n")));
    }
    let unique = w
        .inputs
        .iter()
        .map(|i| i.id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let t = &w.tally;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Counts {
        schedules: 1,
        inputs: w.inputs.len() as u64,
        unique,
        kills: w.kills,
        freezes: w.freezes,
        zombie_stops: w.zombie_stops,
        commits: get(&t.commits),
        aborts: get(&t.aborts),
        fences: get(&t.fences),
        rebalances: get(&t.rebalances),
        restores: get(&t.restores),
        wipes: get(&t.wipes),
        ready_turns: get(&t.ready_turns),
        unready_turns: get(&t.unready_turns),
        poison: w
            .inputs
            .iter()
            .filter(|i| i.poison)
            .map(|i| i.id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len() as u64,
        poison_dead_lettered: w.dead_letters().len() as u64,
        global: u64::from(setup.global),
        purged: w.repartition_purged(),
    })
}

/// One random action.
fn chaos(world: &world::Shared, setup: &Setup) {
    let (action, i, who) = {
        let mut w = lock_world(world);
        let action = w.rng.gen_range(0..100);
        let n = w.instance_count();
        let i = w.rng.gen_range(0..n);
        let runnable = w.runnable();
        let who = if runnable.is_empty() {
            None
        } else {
            Some(runnable[w.rng.gen_range(0..runnable.len())])
        };
        (action, i, who)
    };
    match action {
        0..=19 => {
            let mut w = lock_world(world);
            let n = w.rng.gen_range(1..8);
            w.produce(n);
        }
        20..=54 => {
            for _ in 0..3 {
                tick(world);
            }
        }
        55..=59 => {
            let Some(who) = who else { return };
            let (ahead, what) = {
                let mut w = lock_world(world);
                let ahead = w.rng.gen_range(1..30);
                let turns = w.rng.gen_range(1..30);
                let what = match w.rng.gen_range(0..3) {
                    0 if setup.static_membership => Freeze::Replaced(turns),
                    1 => Freeze::Expired(turns),
                    _ => Freeze::Turns(turns),
                };
                (ahead, what)
            };
            step(world, who, Some((ahead, what)));
        }
        60..=65 => lock_world(world).arm_kill(i),
        66..=69 => lock_world(world).kill(i),
        70..=75 => {
            let mut w = lock_world(world);
            if !w.is_running(i) {
                w.damage(i);
                w.start(i);
            }
        }
        76..=78 => lock_world(world).shutdown(i),
        79..=82 => {
            // SIGSTOP, time passes (maybe past the session or transaction timeout), SIGCONT.
            let mut w = lock_world(world);
            w.set_paused(i, true);
            let ms = w.rng.gen_range(100..8_000);
            w.advance(ms);
            w.set_paused(i, false);
        }
        83..=85 if setup.static_membership => {
            // A replacement with the same instance id while the old process is paused.
            let mut w = lock_world(world);
            if w.is_running(i) {
                w.set_paused(i, true);
                w.start(i);
            }
        }
        86..=88 => lock_world(world).inject_fault(),
        89 => {
            // A cluster restart: no broker answers for up to 20 s (under the session timeout).
            let mut w = lock_world(world);
            let ms = w.rng.gen_range(500..20_000);
            w.outage(ms);
        }
        90..=91 => lock_world(world).compact(),
        92..=94 => lock_world(world).resume_zombies(),
        _ => {
            let mut w = lock_world(world);
            let ms = w.rng.gen_range(0..2_000);
            w.advance(ms);
        }
    }
}

/// Ends the chaos: every instance runs (zombies wake up: fenced, they stop), and the world
/// turns until the input is consumed.
fn drain(world: &world::Shared) {
    {
        let mut w = lock_world(world);
        w.resume_zombies();
        for i in 0..w.instance_count() {
            if let Some(p) = w.process(i) {
                p.disarm();
                p.set_paused(false);
            }
            if !w.is_running(i) {
                w.start(i);
            }
        }
    }
    for turn in 0..DRAIN_TURNS {
        let runnable = {
            let mut w = lock_world(world);
            // A member that died in the drain restarts.
            for i in 0..w.instance_count() {
                if !w.is_running(i) {
                    w.start(i);
                }
            }
            w.advance(25);
            // A zombie that rejoined and took its thread's instance id back is a member like
            // any other now: the committed offsets alone say whether the input is consumed.
            if turn % 20 == 0 && w.drained() {
                return;
            }
            w.runnable()
        };
        for who in runnable {
            step(world, who, None);
        }
    }
    let mut w = lock_world(world);
    let msg = format!(
        "the input was not consumed within {DRAIN_TURNS} turns after the chaos (zombies alive: {}):\n{}",
        w.zombies_alive(),
        w.diagnose()
    );
    w.failures.push(msg);
}

#[test]
fn every_message_id_is_processed_exactly_once_in_seeded_simulations_of_a_cluster_with_kafkas_rules()
{
    let (seeds, label): (Vec<u64>, String) = match std::env::var("TEST_SEED") {
        Ok(s) => {
            let seed: u64 = s.parse().expect("TEST_SEED must be a number");
            (vec![seed], format!("seed {seed}"))
        }
        Err(_) => {
            let n = match std::env::var("TEST_SCHEDULES") {
                Ok(v) => v
                    .parse()
                    .expect("TEST_SCHEDULES must be a number of schedules (at least 1)"),
                Err(_) => DEFAULT_SCHEDULES,
            };
            assert!(n >= 1, "TEST_SCHEDULES must be at least 1");
            let base = 0x51_0000u64;
            ((base..base + n).collect(), format!("seeds {base:#x}.."))
        }
    };
    if std::env::var("TEST_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    let started = std::time::Instant::now();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(seeds.len());
    let chunks: Vec<Vec<u64>> = (0..workers)
        .map(|k| seeds.iter().copied().skip(k).step_by(workers).collect())
        .collect();
    let results: Vec<(Counts, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut total = Counts::default();
                    let mut failed = Vec::new();
                    for seed in chunk {
                        match std::panic::catch_unwind(|| run_schedule(seed)) {
                            Ok(Ok(c)) => total.add(&c),
                            Ok(Err(report)) => failed.push(format!(
                                "schedule {seed} failed (replay: TEST_SEED={seed} TEST_TRACE=1):\n{report}"
                            )),
                            Err(_) => failed.push(format!(
                                "schedule {seed} panicked (replay: TEST_SEED={seed} TEST_TRACE=1)"
                            )),
                        }
                    }
                    (total, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker panicked outside a schedule"))
            .collect()
    });
    let mut total = Counts::default();
    let mut failed = Vec::new();
    for (c, f) in results {
        total.add(&c);
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} schedules failed: {}\nthe first:\n{}",
        failed.len(),
        seeds.len(),
        failed
            .iter()
            .map(|f| f.split_whitespace().nth(1).unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", "),
        failed[0]
    );
    println!(
        "simulation: {} schedules ({label}) in {:.1} s: {} inputs, {} unique IDs; {} SIGKILLs, {} freezes mid-turn, {} zombie threads fenced, {} producer fences, {} rebalances, {} restores, {} store wipes; {} commits, {} aborts; {} turns ended ready, {} not ready (ready only with every task running); {} poison IDs (outputs over the topic's max.message.bytes), {} dead-lettered once each; {} schedules with the global dedup scope, {} repartition records purged after commit; 0 duplicates, 0 losses",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total.inputs,
        total.unique,
        total.kills,
        total.freezes,
        total.zombie_stops,
        total.fences,
        total.rebalances,
        total.restores,
        total.wipes,
        total.commits,
        total.aborts,
        total.ready_turns,
        total.unready_turns,
        total.poison,
        total.poison_dead_lettered,
        total.global,
        total.purged
    );
    if seeds.len() >= 1_000 {
        // A run of this size that shows none of these did not test what it claims.
        let shown = [
            ("SIGKILLs", total.kills),
            ("freezes mid-turn", total.freezes),
            ("zombie threads fenced", total.zombie_stops),
            ("producer fences", total.fences),
            ("rebalances", total.rebalances),
            ("store wipes", total.wipes),
            ("aborts", total.aborts),
            ("turns that ended ready", total.ready_turns),
            ("turns that ended not ready", total.unready_turns),
            ("poison inputs dead-lettered", total.poison_dead_lettered),
            ("global-scope schedules", total.global),
            ("purged repartition records", total.purged),
        ];
        for (what, n) in shown {
            assert!(
                n > 0,
                "{} schedules and no {what}: the chaos does not happen",
                seeds.len()
            );
        }
    }
}
