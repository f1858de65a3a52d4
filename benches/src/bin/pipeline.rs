//! pipeline: the end-to-end benchmark of exactly against a broker.
//!
//! ```text
//! cargo run --release -p exactly-benches --bin pipeline -- [--messages 1000000] [--value-bytes 100]
//! ```
//!
//! Produces the input backlog (duplicates included), then runs on it, one after the other, a
//! raw rdkafka copy, exactly at least once and exactly exactly once, each in its own child
//! process (this binary re-executed with the hidden `worker` subcommand) so that its peak RSS
//! and CPU time are its own, and then the Quix Streams peer (`benches/quix/dedup.py`, run by
//! the Python of `target/quix-venv`, which the benchmark installs; `--skip-quix` leaves it
//! out). Then it times restarts of the exactly-once worker with its state against the same
//! worker on an empty input (`--skip-restart`), restores it from its changelog after wiping
//! its state, and measures memory with 1M and 5M stored IDs. Writes
//! `target/bench/pipeline-<timestamp>.json` and `target/bench/latest.json` and prints a
//! Markdown table. See docs/performance.md.

use clap::{Parser, Subcommand};
use exactly_benches::pipeline::{self, worker, PipelineArgs};

#[derive(Parser, Debug)]
#[command(
    about = "End-to-end benchmark: raw rdkafka copy vs exactly at-least-once vs exactly-once vs Quix Streams",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    bench: PipelineArgs,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// Runs one mode as a child process of a benchmark run (not for direct use).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.internal {
        Some(Internal::Worker(args)) => worker::run(&args),
        None => {
            let report = pipeline::run(cli.bench)?;
            println!("{}", report.markdown());
            Ok(())
        }
    }
}
