//! faulty-forward: a dedup-forward whose processor misbehaves on purpose, driven by the record
//! value, to show (and test) what exactly does with bad input and failing processors:
//!
//! | value starts with | the processor |
//! |---|---|
//! | `panic` | panics |
//! | `fatal` | returns `ProcessError::Fatal` (the app stops, nothing of the batch commits) |
//! | `dead` | returns `ProcessError::DeadLetter` |
//! | `retry:N` | returns `ProcessError::Retry` on its first N attempts, then forwards |
//! | `huge:N` | forwards the record with a value of N bytes (over a `max.message.bytes`, the broker or the producer refuses it) |
//! | `nokey` | forwards the record without its key (a compacted output topic refuses it) |
//! | anything else | forwards the record |
//!
//! ```text
//! cargo run -p exactly-examples --bin faulty-forward -- --input in --output out --app-id faulty
//! ```

use clap::Parser;
use exactly::cli::RunArgs;
use exactly::{Context, ErrorPolicy, InvalidIdPolicy, Output, ProcessError, Processor, Record};
use std::collections::HashMap;

#[derive(Parser, Debug)]
#[command(about = "Forward records once per message ID, failing on purpose as the values say")]
struct Args {
    /// Input topic.
    #[arg(long)]
    input: String,
    /// Output topic (must exist).
    #[arg(long)]
    output: String,
    /// Application id.
    #[arg(long, default_value = "faulty-forward")]
    app_id: String,
    /// What to do with a panic or exhausted retries: `dead-letter` or `fail`.
    #[arg(long, default_value = "dead-letter")]
    on_error: String,
    /// What to do with an input record whose outputs the broker refuses for good:
    /// `dead-letter` or `fail`.
    #[arg(long, default_value = "dead-letter")]
    on_production_error: String,
    /// What to do with a missing, empty or oversized message ID: `dead-letter`, `process`, `fail`.
    #[arg(long, default_value = "dead-letter")]
    on_invalid_id: String,
    /// Longest message ID accepted, in bytes.
    #[arg(long, default_value_t = 256)]
    max_id_len: usize,
    #[command(flatten)]
    run: RunArgs,
}

struct Faulty {
    output: String,
    /// Attempts so far per input offset, for `retry:N`.
    attempts: HashMap<i64, u32>,
}

impl Processor for Faulty {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let value = std::str::from_utf8(record.value.unwrap_or_default()).unwrap_or_default();
        if value.starts_with("panic") {
            panic!("the processor panicked on offset {}", record.offset);
        }
        if value.starts_with("fatal") {
            return Err(ProcessError::fatal(format!(
                "fatal record at offset {}",
                record.offset
            )));
        }
        if value.starts_with("dead") {
            return Err(ProcessError::dead_letter(
                "the processor rejected this record",
            ));
        }
        if let Some(n) = value
            .strip_prefix("retry:")
            .and_then(|n| n.parse::<u32>().ok())
        {
            let attempt = self.attempts.entry(record.offset).or_default();
            *attempt += 1;
            if *attempt <= n {
                return Err(ProcessError::retry(format!(
                    "attempt {attempt} of a record that needs {}",
                    n + 1
                )));
            }
        }
        let mut out = Output::forward(self.output.clone(), record);
        if let Some(n) = value
            .strip_prefix("huge:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            out = out.value(vec![b'x'; n]);
        }
        if value.starts_with("nokey") {
            out.key = None;
        }
        ctx.send(out);
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    exactly::logging::init();
    let args = Args::parse();
    let mut app = args
        .run
        .app(args.app_id)?
        .input(args.input)
        .output(args.output.clone());
    let task = &mut app.config_mut().task;
    task.on_error = match args.on_error.as_str() {
        "dead-letter" => ErrorPolicy::DeadLetter,
        "fail" => ErrorPolicy::Fail,
        other => anyhow::bail!("--on-error must be dead-letter or fail, got `{other}`"),
    };
    task.on_production_error = match args.on_production_error.as_str() {
        "dead-letter" => ErrorPolicy::DeadLetter,
        "fail" => ErrorPolicy::Fail,
        other => {
            anyhow::bail!("--on-production-error must be dead-letter or fail, got `{other}`")
        }
    };
    task.ids.on_invalid = match args.on_invalid_id.as_str() {
        "dead-letter" => InvalidIdPolicy::DeadLetter,
        "process" => InvalidIdPolicy::Process,
        "fail" => InvalidIdPolicy::Fail,
        other => {
            anyhow::bail!("--on-invalid-id must be dead-letter, process or fail, got `{other}`")
        }
    };
    task.ids.max_len = args.max_id_len;
    let output = args.output;
    app.run(move |_| Faulty {
        output: output.clone(),
        attempts: HashMap::new(),
    })?;
    Ok(())
}
