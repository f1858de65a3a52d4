//! The PostgreSQL sink against a real PostgreSQL (no mocks): one effect per message ID across
//! redeliveries, connection loss mid-transaction, terminated backends, a database that stays
//! down longer than the retries, two instances applying overlapping IDs concurrently, the
//! TTL clean-up and the migration. Each test has its own tables.

mod common;

use common::{payments, Ledger, Payment, Tables};
use exactly_core::{Context, ProcessError, Record, TaskId};
use exactly_sinks::postgres::{PgApply, PgBatch, PgHandler, PgSinkProcessor};
use exactly_sinks::tokio_postgres::Transaction;
use exactly_sinks::{SinkError, SinkMetrics};
use exactly_testkit::services::{require_postgres, require_postgres_at, Probe, TcpProxy};
use exactly_testkit::{StepOutcome, TestDriver, TestRecord};
use std::sync::{Arc, Barrier};

fn stage(batch: &mut PgBatch<Payment>, ps: &[Payment]) {
    for (i, p) in ps.iter().enumerate() {
        batch.stage_with_id(p.id.clone().into_bytes(), 0, i as i64, p.clone());
    }
}

fn counter(m: &SinkMetrics, which: &str) -> u64 {
    let c = match which {
        "batches" => &m.batches_committed_total,
        "applied" => &m.effects_applied_total,
        "skipped" => &m.duplicates_skipped_total,
        "retries" => &m.retries_total,
        "failures" => &m.flush_failures_total,
        "expired" => &m.expired_ids_total,
        other => panic!("no counter {other}"),
    };
    c.with_label_values(&["ledger"]).get()
}

#[test]
fn redelivered_ids_are_skipped_and_each_payment_is_booked_once() {
    let Some(url) = require_postgres("pg_redelivery") else {
        return;
    };
    let t = Tables::new(&url, "pg_redelivery");
    let metrics = SinkMetrics::unregistered();
    let sink = t.sink_with(t.config("app-a"), metrics.clone());
    let all = payments(150, 7);
    let mut ledger = t.ledger();
    let mut batch = PgBatch::new(sink, "payments");

    stage(&mut batch, &all[..100]);
    let first = batch.flush(&mut ledger).expect("first flush");
    assert_eq!((first.ids, first.new_ids, first.skipped_ids), (100, 100, 0));
    assert_eq!(first.applied_effects, 100);
    assert!(batch.is_empty(), "a committed batch is emptied");

    // A redelivery overlapping the first batch (as after a crash before the Kafka commit).
    stage(&mut batch, &all[50..]);
    let second = batch.flush(&mut ledger).expect("second flush");
    assert_eq!(
        (second.ids, second.new_ids, second.skipped_ids),
        (100, 50, 50)
    );
    assert_eq!(second.applied_effects, 50);

    // Only skipped IDs: nothing to apply, the transaction still commits (no effect).
    stage(&mut batch, &all[..10]);
    let third = batch.flush(&mut ledger).expect("third flush");
    assert_eq!(
        (third.new_ids, third.skipped_ids, third.applied_effects),
        (0, 10, 0)
    );
    assert_eq!(ledger.applies, 2, "apply is not called without new IDs");

    t.assert_exact(&all);
    assert_eq!(t.recorded_ids("app-a"), 150);
    assert_eq!(counter(&metrics, "batches"), 3);
    assert_eq!(counter(&metrics, "applied"), 150);
    assert_eq!(counter(&metrics, "skipped"), 60);
    assert_eq!(
        metrics
            .commit_seconds
            .with_label_values(&["ledger"])
            .get_sample_count(),
        3
    );

    // Another app (consumer) sharing the dedup table applies the same IDs for itself.
    let other = t.sink("app-b");
    let mut batch_b = PgBatch::new(other, "payments");
    stage(&mut batch_b, &all[..5]);
    let r = batch_b.flush(&mut t.ledger()).expect("other consumer");
    assert_eq!((r.new_ids, r.skipped_ids), (5, 0));
    assert_eq!(t.recorded_ids("app-b"), 5);
}

#[test]
fn a_failed_effect_rolls_back_its_ids_and_is_reported_as_permanent() {
    let Some(url) = require_postgres("pg_effect_fails") else {
        return;
    };
    let t = Tables::new(&url, "pg_effect_fails");
    let metrics = SinkMetrics::unregistered();
    let sink = t.sink_with(t.config("app"), metrics.clone());
    let all = payments(20, 3);
    let mut ledger = t.ledger();
    ledger.fail_next = Some(Box::new(|| Some(SinkError::effect("account is frozen"))));
    let mut batch = PgBatch::new(sink, "payments");
    stage(&mut batch, &all);
    let err = batch.flush(&mut ledger).expect_err("the effect fails");
    assert!(!err.is_transient(), "{err}");
    assert!(matches!(err.into_process_error(), ProcessError::Fatal(_)));
    // Ledger rows written before the failure and the IDs went with the rollback.
    assert!(t.rows_per_id().is_empty());
    assert_eq!(t.recorded_ids("app"), 0);
    assert_eq!(batch.len(), 20, "a failed batch keeps its effects");
    assert_eq!(counter(&metrics, "failures"), 1);
    assert_eq!(counter(&metrics, "retries"), 0, "permanent: not retried");

    let report = batch.flush(&mut ledger).expect("second try");
    assert_eq!(report.applied_effects, 20);
    t.assert_exact(&all);
}

/// A database that stalls longer than the Kafka transaction has left: the flush is cancelled
/// when that time runs out, applies nothing, and fails transiently (the runtime aborts the
/// Kafka transaction before the coordinator times it out). The next flush applies the batch
/// once, on a working connection.
#[test]
fn a_flush_that_outlasts_the_transactions_time_left_is_cancelled_and_applies_nothing() {
    let Some(url) = require_postgres("pg_time_left") else {
        return;
    };
    let t = Tables::new(&url, "pg_time_left");
    let metrics = SinkMetrics::unregistered();
    let sink = t.sink_with(t.config("app"), metrics.clone());
    let all = payments(30, 4);
    let mut ledger = t.ledger();
    ledger.stall_secs = Some(5.0);
    let mut batch = PgBatch::new(sink, "payments");
    stage(&mut batch, &all);
    let started = std::time::Instant::now();
    let err = batch
        .flush_within(&mut ledger, Some(std::time::Duration::from_millis(400)))
        .expect_err("the stalled flush runs out of time");
    let took = started.elapsed();
    assert!(
        matches!(err, SinkError::OutOfTime { time_left_ms: 400 }),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(
        took < std::time::Duration::from_secs(2),
        "cancelled when the time ran out, not after the stall: {took:?}"
    );
    assert_eq!(
        counter(&metrics, "retries"),
        0,
        "no retry past the time left"
    );
    assert_eq!(counter(&metrics, "failures"), 1);
    assert_eq!(t.recorded_ids("app"), 0, "nothing recorded");
    assert!(t.rows_per_id().is_empty(), "nothing applied");
    assert_eq!(batch.len(), 30, "the batch keeps its effects");

    let report = batch
        .flush_within(&mut ledger, Some(std::time::Duration::from_secs(10)))
        .expect("the next flush");
    assert_eq!((report.new_ids, report.applied_effects), (30, 30));
    t.assert_exact(&all);
}

#[test]
fn connection_dropped_mid_transaction_is_retried_on_a_new_connection() {
    let Some(url) = require_postgres("pg_conn_dropped") else {
        return;
    };
    let proxy = Arc::new(TcpProxy::start("127.0.0.1:5432").expect("proxy"));
    let t = Tables::new(&url, "pg_conn_dropped");
    // Tables are made directly; the sink goes through the proxy.
    drop(t.sink("app"));
    let via_proxy = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test",
        proxy.addr().port()
    );
    let metrics = SinkMetrics::unregistered();
    let mut config = t.config("app");
    config.url = via_proxy;
    let sink = t.sink_with(config, metrics.clone());
    let all = payments(40, 4);
    let mut ledger = t.ledger();
    // After the ledger rows of attempt 1 are written: cut every connection (the server rolls
    // the transaction back), then let new connections through.
    let p = proxy.clone();
    ledger.fail_next = Some(Box::new(move || {
        p.cut();
        p.restore();
        None
    }));
    let mut batch = PgBatch::new(sink, "payments");
    stage(&mut batch, &all);
    let report = batch.flush(&mut ledger).expect("flush survives the cut");
    assert_eq!(report.attempts, 2);
    assert_eq!(report.applied_effects, 40);
    assert_eq!(ledger.applies, 2);
    assert_eq!(counter(&metrics, "retries"), 1);
    assert_eq!(counter(&metrics, "batches"), 1);
    assert!(proxy.accepted() >= 2, "a new connection was opened");
    t.assert_exact(&all);
}

/// The processor of the driver tests: effects from records `account:cents`.
struct PaymentHandler(Ledger);

impl PgApply for PaymentHandler {
    type Effect = Payment;
    async fn apply(&mut self, txn: &Transaction<'_>, e: &[&Payment]) -> Result<(), SinkError> {
        self.0.apply(txn, e).await
    }
}

impl PgHandler for PaymentHandler {
    fn effect(
        &mut self,
        r: &Record<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Payment>, ProcessError> {
        let v = std::str::from_utf8(r.value.unwrap_or_default()).unwrap_or_default();
        let (account, cents) = v
            .split_once(':')
            .ok_or_else(|| ProcessError::dead_letter("not account:cents"))?;
        Ok(Some(Payment {
            id: String::from_utf8_lossy(ctx.message_id().unwrap_or_default()).into_owned(),
            account: account.to_owned(),
            cents: cents
                .parse()
                .map_err(|_| ProcessError::dead_letter("cents"))?,
        }))
    }
}

type Factory = Box<dyn Fn(&TaskId) -> PgSinkProcessor<PaymentHandler> + Send + Sync>;

fn driver(t: &Tables, sink: exactly_sinks::PgSink) -> TestDriver<Factory> {
    let (ledger, balances) = (t.ledger.clone(), t.balances.clone());
    let factory: Factory = Box::new(move |task: &TaskId| {
        PgSinkProcessor::new(
            sink.clone(),
            task,
            PaymentHandler(Ledger {
                ledger: ledger.clone(),
                balances: balances.clone(),
                fail_next: None,
                stall_secs: None,
                applies: 0,
            }),
        )
    });
    TestDriver::builder(factory)
        .input("payments", 3)
        .max_batch(25)
        .build()
}

fn pipe(d: &mut TestDriver<Factory>, ps: &[Payment]) {
    for p in ps {
        d.pipe(
            TestRecord::with_id(p.id.clone())
                .key(p.account.clone())
                .value(format!("{}:{}", p.account, p.cents)),
        );
    }
}

#[test]
fn database_down_longer_than_the_retries_aborts_the_kafka_transaction_and_nothing_is_lost() {
    let Some(url) = require_postgres("pg_db_down") else {
        return;
    };
    let proxy = TcpProxy::start("127.0.0.1:5432").expect("proxy");
    let t = Tables::new(&url, "pg_db_down");
    drop(t.sink("app"));
    let metrics = SinkMetrics::unregistered();
    let mut config = t.config("app");
    config.url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test",
        proxy.addr().port()
    );
    let sink = t.sink_with(config, metrics.clone());
    let mut d = driver(&t, sink);
    let all = payments(120, 5);
    pipe(&mut d, &all);
    pipe(&mut d, &all[..30]); // resends
    assert!(matches!(d.step().unwrap(), StepOutcome::Committed { .. }));

    proxy.cut(); // down, and stays down through every retry of the next flush
    match d.step().unwrap() {
        StepOutcome::Aborted { reason } => assert!(reason.contains("flush"), "{reason}"),
        other => panic!("expected an abort while the database is down, got {other:?}"),
    }
    assert_eq!(counter(&metrics, "failures"), 1);
    proxy.restore();
    d.run_until_idle().unwrap();
    t.assert_exact(&all);
    assert_eq!(d.stats().aborts, 1);
    // The aborted flush never reached the database; the resends were all dropped by the
    // Kafka-side dedup, so the sink applied each payment once and skipped none.
    assert_eq!(counter(&metrics, "applied"), 120);
    assert_eq!(counter(&metrics, "skipped"), 0);
}

/// A `Ledger::fail_next` hook that terminates (`pg_terminate_backend`) every session named
/// `app_name`, from a connection of its own, and adds how many it terminated to `killed`.
fn terminate_sessions(
    url: &str,
    app_name: &str,
    killed: &Arc<std::sync::atomic::AtomicU32>,
) -> Box<dyn FnOnce() -> Option<SinkError> + Send> {
    let (url, killed) = (url.to_owned(), killed.clone());
    let sql = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app_name}'"
    );
    Box::new(move || {
        let rows = common::query(&url, &sql);
        killed.fetch_add(
            rows[0][0].parse::<u32>().expect("count"),
            std::sync::atomic::Ordering::SeqCst,
        );
        None
    })
}

#[test]
fn backends_terminated_mid_transaction_are_retried_and_every_payment_is_booked_once() {
    let Some(url) = require_postgres("pg_terminate") else {
        return;
    };
    let t = Tables::new(&url, "pg_terminate");
    let app_name = exactly_testkit::services::unique_name("pgterm");
    let metrics = SinkMetrics::unregistered();
    let sink = t.sink_with(t.config("app").application_name(&app_name), metrics.clone());
    let all = payments(300, 9);
    let mut ledger = t.ledger();
    let mut batch = PgBatch::new(sink, "payments");
    let killed = Arc::new(std::sync::atomic::AtomicU32::new(0));
    for (i, chunk) in all.chunks(30).enumerate() {
        // In the middle of each batch's transaction, another connection terminates the
        // sink's backends (pg_terminate_backend): the server rolls the transaction back.
        ledger.fail_next = Some(terminate_sessions(&url, &app_name, &killed));
        // The batch plus a redelivery of the previous batch's first 10 payments.
        let mut offered: Vec<Payment> = chunk.to_vec();
        if i > 0 {
            offered.extend_from_slice(&all[(i - 1) * 30..(i - 1) * 30 + 10]);
        }
        stage(&mut batch, &offered);
        let report = batch
            .flush(&mut ledger)
            .expect("flush survives the termination");
        assert_eq!(report.attempts, 2, "batch {i}");
        assert_eq!(
            (report.applied_effects, report.skipped_ids),
            (30, if i > 0 { 10 } else { 0 })
        );
    }
    assert_eq!(
        killed.load(std::sync::atomic::Ordering::SeqCst),
        10,
        "one backend per batch"
    );
    assert_eq!(counter(&metrics, "retries"), 10);
    assert_eq!(counter(&metrics, "failures"), 0);
    t.assert_exact(&all);
}

#[test]
fn a_terminated_backend_whose_socket_is_still_open_is_not_reused_by_the_retry() {
    let Some(url) = require_postgres("pg_terminate_linger") else {
        return;
    };
    // A terminated backend sends its FATAL error, then exits, and only then does its socket
    // close; the proxy holds that moment open for 2 s, longer than the retry's backoff.
    let proxy = TcpProxy::start("127.0.0.1:5432").expect("proxy");
    proxy.linger(std::time::Duration::from_secs(2));
    let t = Tables::new(&url, "pg_terminate_linger");
    let app_name = exactly_testkit::services::unique_name("pglinger");
    let metrics = SinkMetrics::unregistered();
    let mut config = t.config("app").application_name(&app_name);
    config.url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test",
        proxy.addr().port()
    );
    let sink = t.sink_with(config, metrics.clone());
    let all = payments(40, 3);
    let mut ledger = t.ledger();
    let killed = Arc::new(std::sync::atomic::AtomicU32::new(0));
    ledger.fail_next = Some(terminate_sessions(&url, &app_name, &killed));
    let mut batch = PgBatch::new(sink, "payments");
    stage(&mut batch, &all);
    let report = batch
        .flush(&mut ledger)
        .expect("flush survives the termination");
    assert_eq!(killed.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        report.attempts, 2,
        "the retry ran on a new connection, not on the terminated one"
    );
    assert_eq!(counter(&metrics, "retries"), 1);
    assert_eq!(report.applied_effects, 40);
    t.assert_exact(&all);
}

#[test]
fn two_instances_applying_overlapping_ids_concurrently_book_each_payment_once() {
    let Some(url) = require_postgres("pg_race") else {
        return;
    };
    let t = Arc::new(Tables::new(&url, "pg_race"));
    let all = Arc::new(payments(2_000, 6));
    let rounds = 20;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|instance| {
            let (t, all, barrier) = (t.clone(), all.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Same consumer (one app), separate pools: an old and a new owner of a
                // partition after a rebalance.
                let metrics = SinkMetrics::unregistered();
                let mut batch = PgBatch::new(t.sink_with(t.config("app"), metrics.clone()), "p");
                let mut ledger = t.ledger();
                let per_round = all.len() / rounds;
                for r in 0..rounds {
                    // Each round both take the round's IDs plus half of the next round's, one
                    // in forward and one in reverse order.
                    let end = ((r + 2) * per_round).min(all.len());
                    let mut slice: Vec<Payment> = all[r * per_round..end].to_vec();
                    if instance == 1 {
                        slice.reverse();
                    }
                    stage(&mut batch, &slice);
                    barrier.wait();
                    batch.flush(&mut ledger).expect("flush");
                }
                (
                    counter(&metrics, "applied"),
                    counter(&metrics, "skipped"),
                    counter(&metrics, "retries"),
                )
            })
        })
        .collect();
    let results: Vec<(u64, u64, u64)> = handles
        .into_iter()
        .map(|h| h.join().expect("instance thread"))
        .collect();
    let applied: u64 = results.iter().map(|r| r.0).sum();
    let skipped: u64 = results.iter().map(|r| r.1).sum();
    println!(
        "race: applied {applied}, skipped {skipped}, retries {:?}",
        results.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    assert_eq!(applied, 2_000, "each ID applied by exactly one instance");
    // Each instance offered 2 x 100 IDs per round (the last round 100): 3_900 offers each.
    assert_eq!(applied + skipped, 2 * 3_900);
    t.assert_exact(&all);
}

#[test]
fn ttl_cleanup_deletes_only_this_consumers_expired_ids_in_batches() {
    let Some(url) = require_postgres("pg_ttl") else {
        return;
    };
    let t = Tables::new(&url, "pg_ttl");
    let metrics = SinkMetrics::unregistered();
    let sink = t.sink_with(
        t.config("app").ttl(std::time::Duration::from_secs(3600)),
        metrics.clone(),
    );
    let other = t.sink("other-app");
    let all = payments(25, 2);
    PgBatch::new(sink.clone(), "p").flush_staged(&all, &mut t.ledger());
    PgBatch::new(other, "p").flush_staged(&all, &mut t.ledger());
    // 17 of this consumer's IDs and all of the other's were applied two hours ago.
    t.query(&format!(
        "UPDATE {} SET applied_at = now() - interval '2 hours' WHERE consumer = 'other-app' OR (consumer = 'app' AND source_offset < 17)",
        t.ids
    ));
    assert_eq!(sink.delete_expired(5).expect("clean-up"), 17);
    assert_eq!(t.recorded_ids("app"), 8);
    assert_eq!(
        t.recorded_ids("other-app"),
        25,
        "another consumer's IDs are its own business"
    );
    assert_eq!(counter(&metrics, "expired"), 17);
    assert_eq!(sink.delete_expired(5).expect("again"), 0);
}

#[test]
fn migration_is_idempotent_and_safe_when_instances_start_together() {
    let Some(url) = require_postgres("pg_migrate") else {
        return;
    };
    let t = Arc::new(Tables::new(&url, "pg_migrate"));
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (t, barrier) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                let sink = exactly_sinks::PgSink::new(t.config("app"), SinkMetrics::unregistered())
                    .expect("sink");
                barrier.wait();
                sink.migrate()
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread").expect("migrate");
    }
    let cols = t.query(&format!(
        "SELECT column_name FROM information_schema.columns WHERE table_name = '{}' ORDER BY ordinal_position",
        t.ids
    ));
    let cols: Vec<&str> = cols.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        cols,
        [
            "consumer",
            "message_id",
            "source_topic",
            "source_partition",
            "source_offset",
            "applied_at"
        ]
    );
    assert!(exactly_sinks::PgSink::new(
        t.config("app").dedup_table("ids; DROP TABLE x"),
        SinkMetrics::unregistered()
    )
    .is_err());
}

/// A session of the test's own that holds a table locked in `EXCLUSIVE` mode (what blocks
/// writers and `CREATE INDEX`) until [`release`](Self::release), and watches which backends
/// of an application wait for a lock.
struct TableLock {
    rt: tokio::runtime::Runtime,
    client: exactly_sinks::tokio_postgres::Client,
}

impl TableLock {
    fn take(url: &str, table: &str) -> Self {
        use exactly_sinks::tokio_postgres::{connect, NoTls};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = connect(url, NoTls).await.expect("connect");
            tokio::spawn(conn);
            client
                .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE"))
                .await
                .expect("lock");
            client
        });
        Self { rt, client }
    }

    /// The backends of `application_name` waiting for a lock now.
    fn waiting(&self, application_name: &str) -> Vec<i32> {
        self.rt.block_on(async {
            // pg_stat_activity is a snapshot per transaction, and this one holds the lock.
            self.client
                .batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .expect("clear snapshot");
            self.client
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&application_name],
                )
                .await
                .expect("pg_stat_activity")
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }

    fn release(&self) {
        self.rt
            .block_on(self.client.batch_execute("COMMIT"))
            .expect("commit");
    }
}

#[test]
fn migrating_an_existing_dedup_table_does_not_wait_for_a_lock_on_it() {
    let Some(url) = require_postgres("pg_migrate_locked") else {
        return;
    };
    let t = Tables::new(&url, "pg_migrate_locked");
    drop(t.sink("app")); // migrated once
    let lock = TableLock::take(&url, &t.ids);
    // One attempt of at most 300 ms: waiting for the lock would fail it.
    let config = t
        .config("app")
        .lock_timeout(std::time::Duration::from_millis(300))
        .migration_timeout(std::time::Duration::ZERO);
    let sink = exactly_sinks::PgSink::new(config, SinkMetrics::unregistered()).expect("sink");
    let migrated = sink.migrate();
    lock.release();
    migrated.expect("migrating a table that exists takes no lock on it");
}

#[test]
fn a_migration_that_waits_for_a_lock_is_retried_until_the_lock_is_released() {
    let Some(url) = require_postgres("pg_migrate_retry") else {
        return;
    };
    let t = Tables::new(&url, "pg_migrate_retry");
    drop(t.sink("app"));
    let lock = TableLock::take(&url, &t.ledger);
    let config = t
        .config("app")
        .application_name("pg-migrate-retry")
        .lock_timeout(std::time::Duration::from_millis(200));
    let sink = exactly_sinks::PgSink::new(config, SinkMetrics::unregistered()).expect("sink");
    let index = format!(
        "CREATE INDEX IF NOT EXISTS {0}_account_idx ON {0} (account)",
        t.ledger
    );
    let migration = std::thread::spawn(move || sink.run_migration(&[&index]));
    // Each failed attempt's connection is closed: a second waiting backend is a retry.
    let mut waited = std::collections::BTreeSet::new();
    while waited.len() < 2 && !migration.is_finished() {
        waited.extend(lock.waiting("pg-migrate-retry"));
        std::thread::sleep(std::time::Duration::from_millis(1)); // the poll interval
    }
    lock.release();
    let result = migration.join().expect("migration thread");
    assert_eq!(
        waited.len(),
        2,
        "two attempts waited for the lock: {result:?}"
    );
    result.expect("the migration goes through once the lock is released");
    let indexes = t.query(&format!(
        "SELECT count(*) FROM pg_indexes WHERE indexname = '{}_account_idx'",
        t.ledger
    ));
    assert_eq!(indexes[0][0], "1");
}

#[test]
fn a_migration_locked_out_for_its_whole_timeout_fails_and_says_what_to_check() {
    let Some(url) = require_postgres("pg_migrate_timeout") else {
        return;
    };
    let t = Tables::new(&url, "pg_migrate_timeout");
    drop(t.sink("app"));
    let lock = TableLock::take(&url, &t.ledger);
    let config = t
        .config("app")
        .lock_timeout(std::time::Duration::from_millis(200))
        .migration_timeout(std::time::Duration::from_secs(1));
    let sink = exactly_sinks::PgSink::new(config, SinkMetrics::unregistered()).expect("sink");
    let index = format!(
        "CREATE INDEX IF NOT EXISTS {0}_x_idx ON {0} (account)",
        t.ledger
    );
    let result = sink.run_migration(&[&index]);
    lock.release();
    let e = result.expect_err("the lock was held for the whole timeout");
    assert!(
        matches!(e, SinkError::MigrationTimedOut { attempts, .. } if attempts >= 2),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("did not succeed within 1 s"), "{msg}");
    assert!(
        msg.contains("canceling statement due to lock timeout (SQLSTATE 55P03)"),
        "the last error is named: {msg}"
    );
    assert!(msg.contains("pg_locks"), "{msg}");
}

#[test]
fn a_missing_postgres_fails_the_test_under_ci_with_a_clear_message() {
    let nowhere = "host=127.0.0.1 port=1 user=postgres dbname=test";
    let dir = tempfile::tempdir().unwrap();
    let skip_log = dir.path().join("skipped.txt");
    let ci = Probe {
        ci: true,
        skip_log: Some(skip_log.clone()),
    };
    let panic = std::panic::catch_unwind(|| require_postgres_at("probe", nowhere, &ci))
        .expect_err("must panic");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("no PostgreSQL at host=127.0.0.1 port=1"),
        "{msg}"
    );
    assert!(msg.contains("CI=true"), "{msg}");
    assert!(!skip_log.exists(), "a failure under CI is not a skip");
    let local = Probe { ci: false, ..ci };
    assert_eq!(
        require_postgres_at("probe", nowhere, &local),
        None,
        "outside CI it skips"
    );
    assert_eq!(
        std::fs::read_to_string(&skip_log).unwrap(),
        "probe: no PostgreSQL\n",
        "the skip is counted once"
    );
}

/// Stages and flushes in one go (test shorthand).
trait FlushStaged {
    fn flush_staged(self, ps: &[Payment], ledger: &mut Ledger);
}

impl FlushStaged for PgBatch<Payment> {
    fn flush_staged(mut self, ps: &[Payment], ledger: &mut Ledger) {
        stage(&mut self, ps);
        self.flush(ledger).expect("flush");
    }
}
