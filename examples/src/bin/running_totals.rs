//! running-totals: keeps each account's running total in a state store and emits it after
//! every payment, once per message ID, with exactly-once effects on outputs *and* state.
//!
//! Input: key = account, value = amount (a decimal integer), header `message-id`. Output:
//! key = account, value = the account's total after this payment, header `message-id` (the
//! payment's) and `amount`. A payment whose amount does not parse is dead-lettered and leaves
//! the total alone.
//!
//! ```text
//! cargo run -p exactly-examples --bin running-totals -- \
//!     --input payments --output totals --app-id totals --instance-id 0
//! ```
//!
//! `--fail-flushes N` makes the first N pre-commit flushes of the process fail, so N
//! transactions abort after their records were processed and their state writes staged (used
//! by the tests of the abort path).

use clap::Parser;
use exactly::cli::RunArgs;
use exactly::state::{Bincode, TypedStore};
use exactly::{Context, FlushContext, Output, ProcessError, Processor, Record, StoreSpec};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "Running per-account totals in a state store, exactly once")]
struct Args {
    /// Input topic (payments).
    #[arg(long)]
    input: String,
    /// Output topic (totals; must exist).
    #[arg(long)]
    output: String,
    /// Application id (consumer group, internal topic prefix).
    #[arg(long, default_value = "running-totals")]
    app_id: String,
    /// Fail the first N pre-commit flushes of this process (each aborts its transaction).
    #[arg(long, default_value_t = 0)]
    fail_flushes: u32,
    #[command(flatten)]
    run: RunArgs,
}

/// The store every task gets: account → total (bincode i64).
const STORE: &str = "totals";

struct RunningTotals {
    output: String,
    totals: TypedStore<String, i64, Bincode>,
    fail_flushes: Arc<AtomicU32>,
}

impl Processor for RunningTotals {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let account = std::str::from_utf8(r.key.unwrap_or_default())
            .map_err(|_| ProcessError::dead_letter("the key (account) is not UTF-8"))?
            .to_owned();
        let amount: i64 = std::str::from_utf8(r.value.unwrap_or_default())
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ProcessError::dead_letter("the value (amount) is not an integer"))?;
        let total = self.totals.get(ctx, &account)?.unwrap_or(0) + amount;
        self.totals.put(ctx, &account, &total)?;
        let mut out = Output::to(self.output.clone())
            .key(account)
            .value(total.to_string())
            .header("amount", amount.to_string());
        if let Some(id) = ctx.message_id() {
            out = out.header("message-id", id.to_vec());
        }
        ctx.send(out);
        Ok(())
    }

    fn flush(&mut self, _ctx: &mut FlushContext<'_>) -> Result<(), ProcessError> {
        let failed = self
            .fail_flushes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failed.is_ok() {
            tracing::warn!("failing this flush on purpose (--fail-flushes)");
            return Err(ProcessError::retry(
                "flush failed on purpose (--fail-flushes)",
            ));
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    exactly::logging::init();
    let args = Args::parse();
    let output = args.output.clone();
    let fail_flushes = Arc::new(AtomicU32::new(args.fail_flushes));
    let app = args
        .run
        .app(args.app_id)?
        .input(args.input)
        .output(args.output)
        .store(StoreSpec::new(STORE));
    app.run(move |_| RunningTotals {
        output: output.clone(),
        totals: TypedStore::new(STORE),
        fail_flushes: fail_flushes.clone(),
    })?;
    Ok(())
}
