//! running-totals: keeps each account's running total in a state store and emits it after
//! every payment, once per message ID, with exactly-once effects on outputs *and* state.
//!
//! Input: key = account, value = amount (a decimal integer), header `message-id`. Output:
//! key = account, value = the account's total after this payment, header `message-id` (the
//! payment's, carried by the runtime) and `amount`. A payment whose amount does not parse is
//! dead-lettered (`exactly.error.kind = deserialization`) and leaves the total alone.
//!
//! The topics' values are decimal text (the `Text` serde) and their keys UTF-8 (`Utf8`). The
//! store is declared once, by its typed handle, which the app registers and the processor
//! keeps.
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
use exactly::codec::{Text, Utf8};
use exactly::{Context, FlushContext, ProcessError, Processor, Record, Topic, TypedStore};
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

/// Amounts and totals by account: decimal values, UTF-8 keys.
type Amounts = Topic<i64, String, Text, Utf8>;

struct RunningTotals {
    payments: Amounts,
    totals_out: Amounts,
    /// account → total (bincode i64), every task's own.
    totals: TypedStore<String, i64>,
    fail_flushes: Arc<AtomicU32>,
}

impl Processor for RunningTotals {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let payment = self.payments.decode(r)?;
        let account = payment
            .key
            .ok_or_else(|| ProcessError::dead_letter("the payment has no key (account)"))?;
        let total = self.totals.get(ctx, &account)?.unwrap_or(0) + payment.value;
        self.totals.put(ctx, &account, &total)?;
        let out = self.totals_out.output(&account, &total)?;
        ctx.send(out.header("amount", payment.value.to_string()));
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
    let payments = Amounts::new(args.input);
    let totals_out = Amounts::new(args.output);
    let totals = TypedStore::new("totals");
    let fail_flushes = Arc::new(AtomicU32::new(args.fail_flushes));
    let app = args
        .run
        .app(args.app_id)?
        .input(&payments)
        .output(&totals_out)
        .store(&totals);
    app.run(move |_| RunningTotals {
        payments: payments.clone(),
        totals_out: totals_out.clone(),
        totals: totals.clone(),
        fail_flushes: fail_flushes.clone(),
    })?;
    Ok(())
}
