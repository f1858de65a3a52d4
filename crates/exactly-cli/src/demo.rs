//! `exactly demo`: exactly-once under a SIGKILL, shown on the local broker.

use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{instance_args, messages_with_duplicates, AppProcess, Verification};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `exactly demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Distinct message IDs to produce.
    #[arg(long, default_value_t = 20_000)]
    unique: usize,
    /// Share of produced messages that resend an earlier ID.
    #[arg(long, default_value_t = 0.25)]
    dup_share: f64,
    /// Input partitions.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Seed of the duplicate schedule.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the demo's topics afterwards (default: delete them).
    #[arg(long)]
    keep_topics: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (0.0..0.95).contains(&args.dup_share),
        "--dup-share must be in [0, 0.95), got {}",
        args.dup_share
    );
    anyhow::ensure!(
        args.unique > 0 && args.partitions > 0,
        "--unique and --partitions must be positive"
    );
    let bs = broker::bootstrap();
    if !broker::reachable(&bs, Duration::from_secs(10)) {
        anyhow::bail!("no Kafka broker answers at {bs}: start the local one with `scripts/broker.sh up`, or set KAFKA_BOOTSTRAP");
    }
    let exe = std::env::current_exe()?;
    let run_id = broker::unique_name("demo");
    let (input, output, app) = (
        format!("{run_id}-in"),
        format!("{run_id}-out"),
        format!("{run_id}-app"),
    );
    // Kept on failure, so the instances' logs can be read.
    let work = tempfile::Builder::new()
        .prefix("exactly-demo-")
        .tempdir()?
        .keep();
    println!("==> work dir (state and logs): {}", work.display());
    let started = Instant::now();
    step(&format!(
        "broker {bs}: creating topics {input} and {output} ({} partitions)",
        args.partitions
    ));
    broker::create_topics(
        &bs,
        &[(&input, args.partitions), (&output, args.partitions)],
    );

    let messages = messages_with_duplicates(args.unique, args.dup_share, args.seed);
    let mut instances: Vec<AppProcess> = (0..2)
        .map(|i| {
            let a = instance_args(&bs, &input, &output, &app, &work.join(format!("state-{i}")));
            AppProcess::new(&exe, &["forward"], &i.to_string(), a, &work)
        })
        .collect();
    step("starting 2 instances of a dedup-forward app (exactly forward)");
    for inst in &mut instances {
        inst.start();
    }
    let chunks: Vec<&[TestMessage]> = messages.chunks(messages.len().div_ceil(4)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        step(&format!(
            "producing {} messages (batch {} of {})",
            chunk.len(),
            i + 1,
            chunks.len()
        ));
        broker::produce(&bs, &input, chunk);
        if i == 1 {
            std::thread::sleep(Duration::from_millis(1500));
            step("SIGKILL instance 1 mid-stream, then restart it");
            instances[1].kill9();
            instances[1].start();
        }
    }
    let ends = broker::end_offsets(&bs, &input, args.partitions);
    step("waiting until the app has committed every input offset");
    let total: i64 = ends.values().sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} offsets committed",
        )
        .expect("a valid template"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let committed = broker::committed_offsets(&bs, &app, &input, args.partitions);
        let done: i64 = committed.values().map(|o| (*o).max(0)).sum();
        bar.set_position(done as u64);
        if done >= total {
            break;
        }
        if Instant::now() > deadline {
            bar.abandon();
            anyhow::bail!(
                "the app did not commit every input offset within 300 s ({done} of {total}); logs in {}",
                work.display()
            );
        }
        for inst in &mut instances {
            if let Some(status) = inst.exited() {
                anyhow::bail!(
                    "instance {} exited ({status}); log tail:\n{}",
                    inst.id,
                    inst.log_tail(30)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    step("stopping both instances (SIGTERM)");
    for inst in &mut instances {
        let status = inst.terminate(Duration::from_secs(60));
        if !status.is_some_and(|s| s.success()) {
            anyhow::bail!(
                "instance {} did not exit cleanly ({status:?}); log tail:\n{}",
                inst.id,
                inst.log_tail(30)
            );
        }
    }
    step("reading input and output with isolation.level=read_committed");
    let v = Verification::compare(
        &broker::read_committed(&bs, &input),
        &broker::read_committed(&bs, &output),
    );
    if !args.keep_topics {
        let changelog = format!("{app}-{input}-dedup-changelog");
        broker::delete_topics(&bs, &[&input, &output, &changelog, &format!("{app}-dlq")]);
    }
    print_table(&v, started.elapsed());
    if v.is_exact() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(if v.is_exact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn step(what: &str) {
    println!("==> {what}");
}

fn print_table(v: &Verification, took: Duration) {
    let rows: [(&str, String); 6] = [
        ("inputs", v.inputs.to_string()),
        ("unique IDs", v.unique_ids.to_string()),
        (
            "duplicates dropped",
            (v.inputs as i64 - v.outputs as i64).to_string(),
        ),
        ("outputs", v.outputs.to_string()),
        ("duplicates in output", v.duplicates.to_string()),
        ("missing IDs", v.missing.len().to_string()),
    ];
    println!();
    println!("| {:<22} | {:>10} |", "exactly demo", "count");
    println!("|{:-<24}|{:->12}|", "", "");
    for (k, val) in rows {
        println!("| {k:<22} | {val:>10} |");
    }
    println!();
    if v.is_exact() {
        println!("exactly once: every ID reached the output once, despite the duplicates and the SIGKILL ({:.1} s)", took.as_secs_f64());
    } else {
        println!(
            "NOT exactly once: {} duplicates, {} missing (e.g. {:?}), {} unexpected",
            v.duplicates,
            v.missing.len(),
            &v.missing[..v.missing.len().min(5)],
            v.unexpected.len()
        );
    }
}
