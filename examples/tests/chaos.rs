//! Exactly-once under chaos against a real broker, with the reusable harness of
//! `exactly_testkit::chaos`: two dedup-forward processes over four partitions, 100k messages
//! (80k IDs + 20 % resends), 50 seeded disruptions (SIGKILL, also right after a restart, aimed
//! at the start-up or restore; SIGSTOP/SIGCONT; graceful SIGTERM restarts). The output, read with
//! isolation.level=read_committed, must hold every ID exactly once. On failure (or with
//! `EXACTLY_CHAOS_KEEP=1`) the instances' logs and state dirs are kept and their path printed.

use exactly_testkit::broker;
use exactly_testkit::chaos::{self, ChaosPlan};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn chaos_with_sigkill_sigstop_and_sigterm_yields_each_id_exactly_once() {
    let Some(bs) = broker::require_broker("chaos") else {
        return;
    };
    let plan = ChaosPlan {
        program: env!("CARGO_BIN_EXE_dedup-forward").into(),
        prefix_args: Vec::new(),
        instances: 2,
        partitions: 4,
        unique: env_or("EXACTLY_CHAOS_UNIQUE", 80_000) as usize,
        dup_share: 0.2,
        actions: env_or("EXACTLY_CHAOS_ACTIONS", 50) as usize,
        seed: env_or("EXACTLY_CHAOS_SEED", u64::from(rand::random::<u32>())),
        accounts: 0,
        state_stores: Vec::new(),
    };
    println!(
        "chaos seed {} (replay with EXACTLY_CHAOS_SEED={})",
        plan.seed, plan.seed
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let report = chaos::run(&bs, &plan, dir.path());
    println!("{}", report.summary());
    let v = &report.verification;
    if !v.is_exact() || std::env::var_os("EXACTLY_CHAOS_KEEP").is_some() {
        // Keep the instances' logs and state for the post-mortem.
        let kept = dir.keep();
        println!("logs and state kept in {}", kept.display());
        for d in &v.duplicate_examples {
            println!(
                "duplicate {}: inputs (partition, offset, ts) {:?}, outputs {:?}",
                d.id, d.inputs, d.outputs
            );
        }
    }
    // What happened, not what was planned: every SIGKILL killed a running instance, and some
    // landed while an instance was starting or restoring (read from its log at the kill).
    assert_eq!(
        report.kills_landed, report.sigkills,
        "SIGKILLs that hit a running process"
    );
    assert!(
        report.restore_kills >= 1,
        "no SIGKILL landed in a start-up or restore ({} SIGKILLs; seed {})",
        report.sigkills,
        plan.seed
    );
    assert_eq!(
        v.inputs,
        plan.unique + (plan.unique as f64 * 0.2 / 0.8).round() as usize,
        "input records"
    );
    assert_eq!(v.duplicates, 0, "duplicates (seed {})", plan.seed);
    assert!(
        v.missing.is_empty(),
        "{} missing IDs, e.g. {:?} (seed {})",
        v.missing.len(),
        &v.missing[..v.missing.len().min(5)],
        plan.seed
    );
    assert!(v.unexpected.is_empty(), "unexpected IDs");
    assert_eq!(v.outputs, plan.unique, "outputs");
}
