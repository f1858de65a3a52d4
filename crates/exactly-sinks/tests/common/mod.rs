//! A small ledger used by the sink tests: each effect books an amount on an account (a row
//! in the ledger table, no unique key on the message ID, so a double apply would show) and
//! adds it to the account's balance.
#![allow(dead_code)]

use exactly_sinks::postgres::{PgApply, PgSink, PgSinkConfig};
use exactly_sinks::tokio_postgres::Transaction;
use exactly_sinks::{SinkError, SinkMetrics, SinkRetry};
use exactly_testkit::services::unique_name;
use std::collections::BTreeMap;
use std::time::Duration;

/// One payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub account: String,
    pub cents: i64,
}

/// Tables of one test; dropped at the end.
pub struct Tables {
    pub url: String,
    pub ids: String,
    pub ledger: String,
    pub balances: String,
}

impl Tables {
    pub fn new(url: &str, test: &str) -> Self {
        let base = unique_name(test);
        Self {
            url: url.to_owned(),
            ids: format!("{base}_ids"),
            ledger: format!("{base}_ledger"),
            balances: format!("{base}_balances"),
        }
    }

    pub fn config(&self, consumer: &str) -> PgSinkConfig {
        PgSinkConfig::new(&self.url, consumer)
            .name("ledger")
            .dedup_table(&self.ids)
            .retry(SinkRetry {
                max_attempts: 4,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
            })
    }

    /// A migrated sink with its own metrics.
    pub fn sink(&self, consumer: &str) -> PgSink {
        self.sink_with(self.config(consumer), SinkMetrics::unregistered())
    }

    pub fn sink_with(&self, config: PgSinkConfig, metrics: SinkMetrics) -> PgSink {
        let sink = PgSink::new(config, metrics).expect("sink");
        sink.migrate().expect("migrate the dedup table");
        sink.run_migration(&[
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (row_id bigserial PRIMARY KEY, message_id text NOT NULL, account text NOT NULL, cents bigint NOT NULL)",
                self.ledger
            ),
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (account text PRIMARY KEY, cents bigint NOT NULL)",
                self.balances
            ),
        ])
        .expect("migrate the ledger");
        sink
    }

    pub fn ledger(&self) -> Ledger {
        Ledger {
            ledger: self.ledger.clone(),
            balances: self.balances.clone(),
            fail_next: None,
            stall_secs: None,
            applies: 0,
        }
    }

    /// Runs `sql` and returns its rows as strings (a fresh connection: independent of the sink).
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        query(&self.url, sql)
    }

    /// Ledger rows per message ID.
    pub fn rows_per_id(&self) -> BTreeMap<String, u64> {
        self.query(&format!(
            "SELECT message_id, count(*) FROM {} GROUP BY message_id",
            self.ledger
        ))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().expect("count")))
        .collect()
    }

    /// Balances by account.
    pub fn balances(&self) -> BTreeMap<String, i64> {
        self.query(&format!("SELECT account, cents FROM {}", self.balances))
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().expect("cents")))
            .collect()
    }

    /// IDs in the dedup table for `consumer`.
    pub fn recorded_ids(&self, consumer: &str) -> u64 {
        self.query(&format!(
            "SELECT count(*) FROM {} WHERE consumer = '{consumer}'",
            self.ids
        ))[0][0]
            .parse()
            .expect("count")
    }

    /// Asserts one ledger row per payment ID and the balances of the unique payments.
    pub fn assert_exact(&self, unique: &[Payment]) {
        let rows = self.rows_per_id();
        let twice: Vec<_> = rows.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "IDs applied more than once: {twice:?}");
        assert_eq!(rows.len(), unique.len(), "payments applied");
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for p in unique {
            *expected.entry(p.account.clone()).or_default() += p.cents;
        }
        assert_eq!(self.balances(), expected, "balances");
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "tables kept for inspection: {}, {}, {}",
                self.ids, self.ledger, self.balances
            );
            return;
        }
        self.query(&format!(
            "DROP TABLE IF EXISTS {}, {}, {}",
            self.ids, self.ledger, self.balances
        ));
    }
}

/// Runs `sql` on a fresh connection (its own thread and runtime, so it may be called from
/// anywhere, even inside an effect) and returns its rows as strings.
pub fn query(url: &str, sql: &str) -> Vec<Vec<String>> {
    let url = url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (client, conn) =
                exactly_sinks::tokio_postgres::connect(&url, exactly_sinks::tokio_postgres::NoTls)
                    .await
                    .expect("connect");
            tokio::spawn(conn);
            let msgs = client.simple_query(&sql).await.expect("query");
            msgs.into_iter()
                .filter_map(|m| match m {
                    exactly_sinks::tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("").to_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
    })
    .join()
    .expect("query thread")
}

/// Applies payments: ledger rows, then balances per account in account order (so two
/// concurrent batches lock accounts in one order).
pub struct Ledger {
    pub ledger: String,
    pub balances: String,
    /// Called at the start of the next apply (once), e.g. to cut the connection.
    pub fail_next: Option<Box<dyn FnOnce() -> Option<SinkError> + Send>>,
    /// The next apply first waits this many seconds in the database (`pg_sleep`), once: a
    /// slow or stuck database.
    pub stall_secs: Option<f64>,
    pub applies: u32,
}

impl PgApply for Ledger {
    type Effect = Payment;

    async fn apply(
        &mut self,
        txn: &Transaction<'_>,
        effects: &[&Payment],
    ) -> Result<(), SinkError> {
        self.applies += 1;
        if let Some(secs) = self.stall_secs.take() {
            txn.execute("SELECT pg_sleep($1)", &[&secs]).await?;
        }
        let ids: Vec<&str> = effects.iter().map(|p| p.id.as_str()).collect();
        let accounts: Vec<&str> = effects.iter().map(|p| p.account.as_str()).collect();
        let cents: Vec<i64> = effects.iter().map(|p| p.cents).collect();
        txn.execute(
            &format!(
                "INSERT INTO {} (message_id, account, cents) SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])",
                self.ledger
            ),
            &[&ids, &accounts, &cents],
        )
        .await?;
        if let Some(hook) = self.fail_next.take() {
            if let Some(e) = hook() {
                return Err(e);
            }
        }
        let mut per_account: BTreeMap<&str, i64> = BTreeMap::new();
        for p in effects {
            *per_account.entry(p.account.as_str()).or_default() += p.cents;
        }
        let accounts: Vec<&str> = per_account.keys().copied().collect();
        let sums: Vec<i64> = per_account.values().copied().collect();
        txn.execute(
            &format!(
                "INSERT INTO {b} (account, cents) SELECT * FROM unnest($1::text[], $2::int8[]) AS u(a, c) ORDER BY a
                 ON CONFLICT (account) DO UPDATE SET cents = {b}.cents + EXCLUDED.cents",
                b = self.balances
            ),
            &[&accounts, &sums],
        )
        .await?;
        Ok(())
    }
}

/// `n` payments `p0..`, on `accounts` accounts, amounts 1..=n cents.
pub fn payments(n: usize, accounts: usize) -> Vec<Payment> {
    (0..n)
        .map(|i| Payment {
            id: format!("p{i}"),
            account: format!("acct-{}", i % accounts),
            cents: i as i64 + 1,
        })
        .collect()
}
