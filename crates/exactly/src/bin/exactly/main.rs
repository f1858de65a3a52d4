//! The `exactly` command line: a demo on the local broker and tools to operate apps.

mod demo;
mod ops;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "exactly",
    version,
    about = "Exactly-once Kafka stream processing: demo and operations tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs two instances of a dedup-forward app on the local broker over messages with
    /// duplicate IDs, SIGKILLs and restarts one mid-stream, and prints what reached the output.
    Demo(demo::DemoArgs),
    /// Runs a dedup-forward app instance (what `demo` starts as its instances).
    Forward(ForwardArgs),
    /// Compares an input and an output topic per message ID (read_committed): duplicates,
    /// missing and unexpected IDs. Exits 1 if there are any.
    Verify(ops::VerifyArgs),
    /// Lists the task stores of a stopped app: entries, bytes, checkpoint; looks an ID up.
    Inspect(ops::InspectArgs),
    /// Describes an app's internal topics (changelogs, dead-letter topic); creates them with
    /// --create.
    Topics(ops::TopicsArgs),
    /// Loads and validates an app config (TOML file plus EXACTLY_* environment overrides) and
    /// prints the effective config, secrets redacted. Exits 1 with the reason if it is invalid.
    Check {
        /// The config file (omit to check the environment alone).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

/// A dedup-forward instance.
#[derive(clap::Args, Debug)]
struct ForwardArgs {
    /// Input topic.
    #[arg(long)]
    input: String,
    /// Output topic (must exist).
    #[arg(long)]
    output: String,
    /// Application id (consumer group, internal topic prefix).
    #[arg(long)]
    app_id: String,
    #[command(flatten)]
    run: exactly::cli::RunArgs,
}

fn main() -> ExitCode {
    exactly::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Forward(a) => run_forward(a),
        Command::Verify(a) => ops::verify(a),
        Command::Inspect(a) => ops::inspect(a),
        Command::Topics(a) => ops::topics(a),
        Command::Check { config } => check(config.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let loaded = exactly::config::load(path)?;
    println!("{}", exactly::config::redacted(&loaded.runtime));
    if let Some(addr) = loaded.metrics_addr {
        println!("metrics_addr = \"{addr}\"");
    }
    eprintln!("config OK");
    Ok(ExitCode::SUCCESS)
}

fn run_forward(a: ForwardArgs) -> anyhow::Result<ExitCode> {
    let output = a.output.clone();
    let app = a.run.app(a.app_id)?.input(a.input).output(a.output);
    app.run(move |_: &exactly::TaskId| exactly::processors::Forward::to(output.clone()))?;
    Ok(ExitCode::SUCCESS)
}
