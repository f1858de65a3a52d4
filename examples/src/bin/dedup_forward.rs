//! dedup-forward: forwards each input record's key, value and headers to the output topic,
//! once per message ID (header `message-id`), with exactly-once effects.
//!
//! ```text
//! cargo run -p exactly-examples --bin dedup-forward -- \
//!     --input orders --output orders-dedup --app-id orders-dedup --instance-id 0
//! ```

use clap::Parser;
use exactly::cli::RunArgs;
use exactly::processors::Forward;

#[derive(Parser, Debug)]
#[command(about = "Forward each record once per message ID, exactly once")]
struct Args {
    /// Input topic.
    #[arg(long)]
    input: String,
    /// Output topic (must exist).
    #[arg(long)]
    output: String,
    /// Application id (consumer group, internal topic prefix).
    #[arg(long, default_value = "dedup-forward")]
    app_id: String,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> anyhow::Result<()> {
    exactly::logging::init();
    let args = Args::parse();
    let output = args.output.clone();
    let app = args
        .run
        .app(args.app_id)?
        .input(args.input)
        .output(args.output);
    app.run(move |_| Forward::to(output.clone()))?;
    Ok(())
}
