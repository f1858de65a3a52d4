//! `exactly forward --postgres`: the forward app with a PostgreSQL sink, and the sink as the
//! chaos soak sees it (`exactly chaos --slow-sink`).

use exactly::sinks::postgres::{
    check_identifier, PgApply, PgHandler, PgSink, PgSinkConfig, PgSinkProcessor,
};
use exactly::sinks::tokio_postgres::{self, Transaction};
use exactly::sinks::{SinkError, SinkMetrics};
use exactly::{Context, Output, ProcessError, Record};
use exactly_testkit::broker::ReadRecord;
use std::collections::HashMap;

/// The sink's tables for a table prefix: the effects, one row per forwarded record, and the
/// sink's dedup table.
pub fn tables(prefix: &str) -> (String, String) {
    (
        format!("{prefix}_forwarded"),
        format!("{prefix}_applied_ids"),
    )
}

/// Creates the effects table if it is missing.
fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             row_id bigserial PRIMARY KEY,
             message_id text NOT NULL,
             source_partition int NOT NULL,
             source_offset bigint NOT NULL)"
    )
}

/// One forwarded record, as the sink records it.
#[derive(Debug)]
pub struct Row {
    message_id: String,
    partition: i32,
    offset: i64,
}

/// Forwards each record to the output topic and records it in the sink's table, exactly once
/// per message ID.
struct ForwardRows {
    output: String,
    table: String,
}

impl PgApply for ForwardRows {
    type Effect = Row;

    async fn apply(&mut self, txn: &Transaction<'_>, effects: &[&Row]) -> Result<(), SinkError> {
        let ids: Vec<&str> = effects.iter().map(|r| r.message_id.as_str()).collect();
        let partitions: Vec<i32> = effects.iter().map(|r| r.partition).collect();
        let offsets: Vec<i64> = effects.iter().map(|r| r.offset).collect();
        txn.execute(
            &format!(
                "INSERT INTO {} (message_id, source_partition, source_offset)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])",
                self.table
            ),
            &[&ids, &partitions, &offsets],
        )
        .await?;
        Ok(())
    }
}

impl PgHandler for ForwardRows {
    fn effect(
        &mut self,
        record: &Record<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Row>, ProcessError> {
        let message_id = ctx
            .message_id()
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .ok_or_else(|| ProcessError::dead_letter("record has no message ID"))?;
        ctx.send(Output::forward(self.output.clone(), record));
        Ok(Some(Row {
            message_id,
            partition: record.partition,
            offset: record.offset,
        }))
    }
}

/// Runs the forward app with the sink: creates its tables if they are missing, then forwards.
pub fn run_forward(
    mut app: exactly::App,
    app_id: &str,
    instance: &str,
    output: String,
    postgres: String,
    prefix: &str,
) -> anyhow::Result<()> {
    let (table, dedup) = tables(prefix);
    check_identifier(&table)?;
    let metrics = SinkMetrics::register(app.metrics()?.registry())?;
    let config = PgSinkConfig::new(postgres, app_id)
        .name("forward")
        .dedup_table(dedup)
        .application_name(format!("{app_id}-{instance}"));
    let sink = PgSink::new(config, metrics)?;
    sink.migrate()?;
    sink.run_migration(&[&create_table(&table)])?;
    tracing::info!(%table, "sink table ready");
    app.run(move |task| {
        PgSinkProcessor::new(
            sink.clone(),
            task,
            ForwardRows {
                output: output.clone(),
                table: table.clone(),
            },
        )
    })?;
    Ok(())
}

/// The forward app's sink as the chaos soak locks and verifies it.
pub struct SlowSink {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    table: String,
    dedup: String,
}

impl SlowSink {
    /// Connects to `url` and creates the effects table of `prefix` (the one it locks; the
    /// instances create the sink's dedup table).
    pub fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let (table, dedup) = tables(prefix);
        check_identifier(&table)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = client.map_err(|e| {
            anyhow::anyhow!("--slow-sink: cannot connect to PostgreSQL at {url}: {e}")
        })?;
        let sink = Self {
            rt,
            client,
            table,
            dedup,
        };
        sink.run(&create_table(&sink.table));
        Ok(sink)
    }

    fn run(&self, sql: &str) {
        if let Err(e) = self.rt.block_on(self.client.batch_execute(sql)) {
            panic!("slow sink: {sql}: {e}");
        }
    }

    /// Drops the sink's tables.
    pub fn drop_tables(&self) {
        self.run(&format!(
            "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}",
            self.table, self.dedup
        ));
    }
}

impl exactly_testkit::chaos::SoakSink for SlowSink {
    fn lock(&mut self) {
        self.run(&format!(
            "BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE",
            self.table
        ));
    }

    fn release(&mut self) {
        self.run("COMMIT");
    }

    fn effects(&mut self) -> Vec<ReadRecord> {
        let rows = self
            .rt
            .block_on(self.client.query(
                &format!(
                    "SELECT message_id, source_partition, source_offset FROM {}",
                    self.table
                ),
                &[],
            ))
            .unwrap_or_else(|e| panic!("slow sink: reading {}: {e}", self.table));
        rows.iter()
            .map(|r| ReadRecord {
                partition: r.get(1),
                offset: r.get(2),
                key: None,
                value: None,
                headers: HashMap::from([(
                    "message-id".to_owned(),
                    r.get::<_, String>(0).into_bytes(),
                )]),
                timestamp: None,
            })
            .collect()
    }
}
