//! payments-ledger: applies payment events to account balances in PostgreSQL, exactly once,
//! with the PostgreSQL sink of `exactly::sinks`. Payments arrive as JSON, some of them more
//! than once (producer resends, redeliveries after a crash). Each payment becomes one row in
//! the ledger table and is added to its account's balance, in one database transaction with
//! its message ID; that transaction commits before the Kafka transaction carrying the input
//! offsets. Invalid payments go to the dead-letter topic.
//!
//! ```text
//! cargo run -p exactly-examples --bin payments-ledger -- \
//!     --input payments --app-id payments-ledger --instance-id 0 \
//!     --postgres "host=127.0.0.1 user=postgres dbname=test" --metrics-addr 127.0.0.1:9100
//! ```
//!
//! Input value: `{"payment_id":"pay-1","account":"acct-7","amount_cents":1250}` with the
//! message ID in the `message-id` header (the payment id is a good choice). Metrics: the
//! runtime's, plus `exactly_sink_*{sink="ledger"}` (batches committed, effects applied,
//! duplicates skipped by the sink, commit seconds, retries, failures, expired IDs).

use clap::Parser;
use exactly::cli::RunArgs;
use exactly::sinks::postgres::{PgApply, PgHandler, PgSink, PgSinkConfig, PgSinkProcessor};
use exactly::sinks::tokio_postgres::Transaction;
use exactly::sinks::{SinkError, SinkMetrics};
use exactly::{Context, ProcessError, Record, Topic};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Book payments into a PostgreSQL ledger, exactly once per payment")]
struct Args {
    /// Input topic of JSON payments.
    #[arg(long, default_value = "payments")]
    input: String,
    /// Application id (consumer group, internal topic prefix, DLQ `{app-id}-dlq`, and the
    /// consumer name in the dedup table).
    #[arg(long, default_value = "payments-ledger")]
    app_id: String,
    /// PostgreSQL connection string.
    #[arg(
        long,
        env = "EXACTLY_POSTGRES",
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    postgres: String,
    /// Prefix of the tables: `{prefix}_ledger`, `{prefix}_balances`, `{prefix}_applied_ids`.
    #[arg(long, default_value = "payments")]
    table_prefix: String,
    /// How long applied message IDs are kept in the dedup table, in hours.
    #[arg(long, default_value_t = 168)]
    id_ttl_hours: u64,
    /// Pooled database connections.
    #[arg(long, default_value_t = 4)]
    pool_size: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// An incoming payment.
#[derive(Debug, Deserialize)]
struct PaymentEvent {
    payment_id: String,
    account: String,
    amount_cents: i64,
}

/// What the sink applies for one new payment.
#[derive(Debug)]
struct Booking {
    message_id: String,
    payment_id: String,
    account: String,
    amount_cents: i64,
    source: String,
}

struct Ledger {
    payments: Topic<PaymentEvent>,
    ledger: String,
    balances: String,
}

impl PgApply for Ledger {
    type Effect = Booking;

    async fn apply(
        &mut self,
        txn: &Transaction<'_>,
        effects: &[&Booking],
    ) -> Result<(), SinkError> {
        let col = |f: fn(&Booking) -> &str| effects.iter().map(|b| f(b)).collect::<Vec<&str>>();
        let amounts: Vec<i64> = effects.iter().map(|b| b.amount_cents).collect();
        txn.execute(
            &format!(
                "INSERT INTO {} (message_id, payment_id, account, amount_cents, source)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])",
                self.ledger
            ),
            &[
                &col(|b| &b.message_id),
                &col(|b| &b.payment_id),
                &col(|b| &b.account),
                &amounts,
                &col(|b| &b.source),
            ],
        )
        .await?;
        // One upsert per account, in account order: two instances (around a rebalance) lock
        // accounts in the same order and never deadlock each other.
        let mut per_account: BTreeMap<&str, i64> = BTreeMap::new();
        for b in effects {
            *per_account.entry(b.account.as_str()).or_default() += b.amount_cents;
        }
        let accounts: Vec<&str> = per_account.keys().copied().collect();
        let sums: Vec<i64> = per_account.values().copied().collect();
        txn.execute(
            &format!(
                "INSERT INTO {b} (account, balance_cents)
                 SELECT * FROM unnest($1::text[], $2::int8[]) AS u(a, c) ORDER BY a
                 ON CONFLICT (account) DO UPDATE
                 SET balance_cents = {b}.balance_cents + EXCLUDED.balance_cents, updated_at = now()",
                b = self.balances
            ),
            &[&accounts, &sums],
        )
        .await?;
        Ok(())
    }
}

impl PgHandler for Ledger {
    fn effect(
        &mut self,
        record: &Record<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Booking>, ProcessError> {
        // Not a JSON payment: dead-lettered with `exactly.error.kind = deserialization`.
        let p = self.payments.value(record)?;
        if p.account.is_empty() {
            return Err(ProcessError::dead_letter("payment has no account"));
        }
        let message_id = ctx
            .message_id()
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .ok_or_else(|| ProcessError::dead_letter("payment has no message ID"))?;
        Ok(Some(Booking {
            message_id,
            payment_id: p.payment_id,
            account: p.account,
            amount_cents: p.amount_cents,
            source: format!("{}-{}@{}", record.topic, record.partition, record.offset),
        }))
    }
}

fn main() -> anyhow::Result<()> {
    exactly::logging::init();
    let args = Args::parse();
    let payments: Topic<PaymentEvent> = Topic::new(args.input);
    let mut app = args.run.app(args.app_id.clone())?.input(&payments);
    let metrics = SinkMetrics::register(app.metrics()?.registry())?;
    let prefix = &args.table_prefix;
    let (ledger, balances) = (format!("{prefix}_ledger"), format!("{prefix}_balances"));
    let config = PgSinkConfig::new(args.postgres, args.app_id.clone())
        .name("ledger")
        .dedup_table(format!("{prefix}_applied_ids"))
        .pool_size(args.pool_size)
        .ttl(Duration::from_secs(args.id_ttl_hours * 3600))
        .application_name(format!("{}-{}", args.app_id, args.run.instance_id));
    let sink = PgSink::new(config, metrics)?;
    // The migration the app runs at start (idempotent; instances starting together wait for
    // each other).
    sink.migrate()?;
    for table in [&ledger, &balances] {
        exactly::sinks::postgres::check_identifier(table)?;
    }
    sink.run_migration(&[
        &format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (
                 row_id bigserial PRIMARY KEY,
                 message_id text NOT NULL,
                 payment_id text NOT NULL,
                 account text NOT NULL,
                 amount_cents bigint NOT NULL,
                 source text NOT NULL,
                 booked_at timestamptz NOT NULL DEFAULT now())"
        ),
        &format!(
            "CREATE TABLE IF NOT EXISTS {balances} (
                 account text PRIMARY KEY,
                 balance_cents bigint NOT NULL,
                 updated_at timestamptz NOT NULL DEFAULT now())"
        ),
    ])?;
    tracing::info!(%ledger, %balances, "ledger tables ready");
    let _ttl = sink.spawn_ttl_cleanup(Duration::from_secs(600), 10_000);
    app.run(move |task| {
        PgSinkProcessor::new(
            sink.clone(),
            task,
            Ledger {
                payments: payments.clone(),
                ledger: ledger.clone(),
                balances: balances.clone(),
            },
        )
    })?;
    Ok(())
}
