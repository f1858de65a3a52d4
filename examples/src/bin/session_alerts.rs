//! session-alerts: an alert when an account's session of payments ends, exactly once. A
//! session is a run of payments of one account with no gap longer than `--gap-ms` of stream
//! time (the largest payment timestamp the task has seen); when stream time passes the last
//! payment by the gap, a stream-time timer fires and the app writes one alert for the session,
//! with its number, first and last payment times, payment count and total.
//!
//! Input: key = account, value = amount in cents (decimal text), header `message-id`, record
//! timestamp = when the payment happened. Output (`--output`): key = account, value = a JSON
//! [`Alert`], header `message-id` = `timer/stream/{account}@{end}` (the timer's, set by the
//! runtime), so a downstream exactly app dedups it too.
//!
//! ```text
//! cargo run -p exactly-examples --bin session-alerts -- \
//!     --input payments --output session-alerts --app-id session-alerts --instance-id 0
//! ```
//!
//! The timers and each account's open session live in the task's stores (the timer store and
//! `sessions`), changelogged and committed with the alerts and the input offsets: a crash, a
//! resent payment or a task move neither loses nor repeats an alert.

use clap::Parser;
use exactly::cli::RunArgs;
use exactly::codec::{Text, Utf8};
use exactly::{Context, ProcessError, Processor, Record, Timer, TimerKind, Topic, TypedStore};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(about = "One alert per ended session of payments, exactly once (stream-time timers)")]
struct Args {
    /// Input topic (payments).
    #[arg(long)]
    input: String,
    /// Output topic (alerts; must exist).
    #[arg(long)]
    output: String,
    /// Application id (consumer group, internal topic prefix).
    #[arg(long, default_value = "session-alerts")]
    app_id: String,
    /// A session ends after this long without a payment, in stream time (ms).
    #[arg(long, default_value_t = 300_000)]
    gap_ms: i64,
    #[command(flatten)]
    run: RunArgs,
}

/// An account's latest session (open until its timer fires).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Session {
    /// 1 for the account's first session, then counting up.
    pub number: u64,
    /// Whether it is still open (its timer pending).
    pub open: bool,
    /// Timestamp of its first payment.
    pub first_ms: i64,
    /// Largest timestamp of its payments.
    pub last_ms: i64,
    /// Payments in it.
    pub payments: u64,
    /// Their total (cents).
    pub total_cents: i64,
}

/// What the app writes when a session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `{account}#{number}`: unique per session.
    pub session: String,
    /// The account.
    pub account: String,
    /// Timestamp of the session's first payment.
    pub first_ms: i64,
    /// Largest timestamp of its payments.
    pub last_ms: i64,
    /// When it ended: `last_ms` + the gap.
    pub ended_ms: i64,
    /// Payments in it.
    pub payments: u64,
    /// Their total (cents).
    pub total_cents: i64,
}

struct SessionAlerts {
    payments: Topic<i64, String, Text, Utf8>,
    alerts: Topic<Alert>,
    sessions: TypedStore<String, Session>,
    gap_ms: i64,
}

impl Processor for SessionAlerts {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let payment = self.payments.decode(r)?;
        let account = payment
            .key
            .ok_or_else(|| ProcessError::dead_letter("the payment has no key (account)"))?;
        let at = r
            .timestamp
            .ok_or_else(|| ProcessError::dead_letter("the payment has no timestamp"))?;
        let session = match self.sessions.get(ctx, &account)? {
            Some(mut s) if s.open => {
                s.first_ms = s.first_ms.min(at);
                s.last_ms = s.last_ms.max(at);
                s.payments += 1;
                s.total_cents += payment.value;
                s
            }
            previous => Session {
                number: previous.map_or(1, |p| p.number + 1),
                open: true,
                first_ms: at,
                last_ms: at,
                payments: 1,
                total_cents: payment.value,
            },
        };
        // The session ends `gap` after its last payment (a late payment does not move it back).
        ctx.schedule(TimerKind::Stream, &account, session.last_ms + self.gap_ms)?;
        self.sessions.put(ctx, &account, &session)
    }

    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let account = String::from_utf8_lossy(&timer.key).into_owned();
        let Some(mut session) = self.sessions.get(ctx, &account)?.filter(|s| s.open) else {
            return Err(ProcessError::fatal(format!(
                "the session timer of account {account:?} fired without an open session: the stores disagree"
            )));
        };
        let alert = Alert {
            session: format!("{account}#{}", session.number),
            account: account.clone(),
            first_ms: session.first_ms,
            last_ms: session.last_ms,
            ended_ms: timer.due_ms,
            payments: session.payments,
            total_cents: session.total_cents,
        };
        ctx.send(
            self.alerts
                .output(&account, &alert)?
                .timestamp(timer.due_ms),
        );
        session.open = false;
        self.sessions.put(ctx, &account, &session)
    }
}

fn main() -> anyhow::Result<()> {
    exactly::logging::init();
    let args = Args::parse();
    anyhow::ensure!(
        args.gap_ms > 0,
        "--gap-ms must be positive, got {}",
        args.gap_ms
    );
    let payments = Topic::new(args.input);
    let alerts = Topic::new(args.output);
    let sessions = TypedStore::new("sessions");
    let gap_ms = args.gap_ms;
    let app = args
        .run
        .app(args.app_id)?
        .input(&payments)
        .output(&alerts)
        .store(&sessions)
        .timers();
    app.run(move |_| SessionAlerts {
        payments: payments.clone(),
        alerts: alerts.clone(),
        sessions: sessions.clone(),
        gap_ms,
    })?;
    Ok(())
}
