//! The `exactly` command line: a demo on the local broker and tools to operate apps.

mod demo;

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_forward(a: ForwardArgs) -> anyhow::Result<ExitCode> {
    let output = a.output.clone();
    let app = a.run.app(a.app_id)?.input(a.input).output(a.output);
    app.run(move |_: &exactly::TaskId| exactly::processors::Forward::to(output.clone()))?;
    Ok(ExitCode::SUCCESS)
}
