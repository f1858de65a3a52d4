//! Exactly-once under SIGKILL chaos against a real broker: two dedup-forward processes over
//! four partitions, 100k messages (80k IDs + 20 % resends), 20+ SIGKILLs at random moments
//! (also right after a restart, while the tasks restore) with restarts. The output, read with
//! isolation.level=read_committed, must hold every ID exactly once.

mod common;
use common::{assert_exact, stop_all, Setup};
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{messages_with_duplicates, AppProcess};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_chaos_two_instances_four_partitions_yields_each_id_exactly_once() {
    let Some(s) = Setup::new("chaos", 4) else {
        return;
    };
    let seed = env_or("EXACTLY_CHAOS_SEED", rand::random::<u32>() as u64);
    let unique = env_or("EXACTLY_CHAOS_UNIQUE", 80_000) as usize;
    let kills_wanted = env_or("EXACTLY_CHAOS_KILLS", 22) as usize;
    println!("chaos seed {seed} (replay with EXACTLY_CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let messages = messages_with_duplicates(unique, 0.2, seed);
    let total = messages.len();

    let mut instances: Vec<AppProcess> = (0..2).map(|i| s.forward(&i.to_string(), &[])).collect();
    instances.iter_mut().for_each(AppProcess::start);

    // Produce in chunks while killing: every kill lands on a live stream.
    let started = Instant::now();
    let (mut kills, mut restore_kills) = (0u32, 0u32);
    for chunk in messages.chunks(total.div_ceil(kills_wanted)) {
        let chunk: Vec<TestMessage> = chunk.to_vec();
        broker::produce(&s.bs, &s.input, &chunk);
        let victim = rng.gen_range(0..instances.len());
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..2500)));
        if let Some(status) = instances[victim].exited() {
            panic!(
                "instance {victim} exited on its own ({status}); log tail:\n{}",
                instances[victim].log_tail(30)
            );
        }
        instances[victim].kill9();
        kills += 1;
        instances[victim].start();
        if rng.gen_bool(0.3) {
            // Kill again quickly: this lands in start-up or restore.
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
            instances[victim].kill9();
            kills += 1;
            restore_kills += 1;
            instances[victim].start();
        }
    }
    s.wait_caught_up(&mut instances);
    stop_all(&mut instances);

    let v = s.verify();
    println!(
        "chaos: {} inputs, {} unique IDs, {} resent, {kills} SIGKILLs ({restore_kills} during start-up/restore), \
         {} outputs, {} duplicates, {} missing, {:.1} s",
        v.inputs,
        v.unique_ids,
        v.inputs - v.unique_ids,
        v.outputs,
        v.duplicates,
        v.missing.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 20, "only {kills} kills");
    assert_eq!(v.inputs, total, "input records");
    assert!(
        total >= 100_000 || std::env::var("EXACTLY_CHAOS_UNIQUE").is_ok(),
        "only {total} messages"
    );
    assert_exact(&v, unique);
}
