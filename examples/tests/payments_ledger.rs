//! payments-ledger against the real broker and the real PostgreSQL: payments with resends,
//! crashes at each crash point of the sink, seeded SIGKILL chaos, and the app's database
//! connections terminated while it runs. After each, the ledger holds one row per payment ID
//! and every balance equals the sum of its unique payments.

use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::{
    free_port, messages_with_duplicates, metric_sum, scrape_until, wait_caught_up,
    wait_failpoint_kill, wait_for_log, AppProcess,
};
use exactly_testkit::services::{require_postgres, unique_name};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LEDGER: &str = env!("CARGO_BIN_EXE_payments-ledger");

/// One test's topic, app id, tables and work dir; topic and tables are dropped at the end.
struct Setup {
    bs: String,
    pg: String,
    input: String,
    app: String,
    tables: String,
    partitions: i32,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(test: &str, partitions: i32) -> Option<Self> {
        let bs = broker::require_broker(test)?;
        let pg = require_postgres(test)?;
        let base = broker::unique_name(test);
        let s = Self {
            input: format!("{base}-in"),
            app: format!("{base}-app"),
            tables: unique_name(&test.replace('-', "_")),
            bs,
            pg,
            partitions,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        broker::create_topics(&s.bs, &[(&s.input, partitions)]);
        Some(s)
    }

    fn instance(&self, id: &str, extra: &[&str]) -> AppProcess {
        let state = self.dir.path().join(format!("state-{id}"));
        let mut args: Vec<String> = [
            "--bootstrap",
            &self.bs,
            "--input",
            &self.input,
            "--app-id",
            &self.app,
            "--state-dir",
            &state.display().to_string(),
            "--postgres",
            &self.pg,
            "--table-prefix",
            &self.tables,
            "--kafka",
            "session.timeout.ms=6000",
            "--kafka",
            "heartbeat.interval.ms=500",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        AppProcess::new(PathBuf::from(LEDGER), &[], id, args, self.dir.path())
    }

    fn wait_caught_up(&self, instances: &mut [AppProcess]) {
        let ends = broker::end_offsets(&self.bs, &self.input, self.partitions);
        wait_caught_up(
            &self.bs,
            &self.app,
            &self.input,
            &ends,
            Duration::from_secs(300),
            instances,
        );
    }

    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        pg_query(&self.pg, sql)
    }

    /// Ledger rows per message ID.
    fn rows_per_id(&self) -> BTreeMap<String, u64> {
        self.query(&format!(
            "SELECT message_id, count(*) FROM {}_ledger GROUP BY message_id",
            self.tables
        ))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().expect("count")))
        .collect()
    }

    fn balances(&self) -> BTreeMap<String, i64> {
        self.query(&format!(
            "SELECT account, balance_cents FROM {}_balances",
            self.tables
        ))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().expect("cents")))
        .collect()
    }

    /// Exactly one ledger row per unique payment, none for anything else, and balances equal
    /// to the sums of the unique payments.
    fn assert_exact(&self, payments: &Payments) {
        let rows = self.rows_per_id();
        let twice: Vec<_> = rows.iter().filter(|(_, n)| **n != 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "payments booked more than once: {twice:?}"
        );
        let missing: Vec<_> = payments
            .unique
            .keys()
            .filter(|id| !rows.contains_key(*id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "payments never booked, e.g. {missing:?}"
        );
        assert_eq!(rows.len(), payments.unique.len(), "payments booked");
        assert_eq!(self.balances(), payments.balances(), "balances");
        let ids: u64 = self.query(&format!(
            "SELECT count(*) FROM {}_applied_ids WHERE consumer = '{}'",
            self.tables, self.app
        ))[0][0]
            .parse()
            .expect("count");
        assert_eq!(ids, payments.unique.len() as u64, "IDs in the dedup table");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let changelog = format!("{}-{}-dedup-changelog", self.app, self.input);
        broker::delete_topics(
            &self.bs,
            &[&self.input, &changelog, &format!("{}-dlq", self.app)],
        );
        if std::thread::panicking() {
            eprintln!("tables {}_* kept for inspection", self.tables);
        } else {
            let t = &self.tables;
            self.query(&format!(
                "DROP TABLE IF EXISTS {t}_ledger, {t}_balances, {t}_applied_ids"
            ));
        }
    }
}

fn pg_query(url: &str, sql: &str) -> Vec<Vec<String>> {
    use exactly_sinks::tokio_postgres::{connect, NoTls, SimpleQueryMessage};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = connect(url, NoTls).await.expect("connect");
        tokio::spawn(conn);
        client
            .simple_query(sql)
            .await
            .expect("query")
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("").to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    })
}

/// Payment events with resends: `m{i}` on account `acct-{i % 37}`, a deterministic amount.
struct Payments {
    messages: Vec<TestMessage>,
    /// Unique payments: message ID → (account, cents).
    unique: BTreeMap<String, (String, i64)>,
}

impl Payments {
    fn new(unique: usize, dup_share: f64, seed: u64) -> Self {
        let mut map = BTreeMap::new();
        let messages = messages_with_duplicates(unique, dup_share, seed)
            .into_iter()
            .map(|m| {
                let id = m.id.clone().expect("IDs");
                let i: i64 = id[1..].parse().expect("m{i}");
                let account = format!("acct-{}", i % 37);
                let cents = (i * 7919) % 100_000 - 20_000; // refunds too
                map.insert(id.clone(), (account.clone(), cents));
                TestMessage {
                    key: Some(account.clone().into_bytes()),
                    value: format!(
                        r#"{{"payment_id":"{id}","account":"{account}","amount_cents":{cents}}}"#
                    )
                    .into_bytes(),
                    id: Some(id),
                    timestamp: None,
                }
            })
            .collect();
        Self {
            messages,
            unique: map,
        }
    }

    fn resends(&self) -> usize {
        self.messages.len() - self.unique.len()
    }

    fn balances(&self) -> BTreeMap<String, i64> {
        let mut b = BTreeMap::new();
        for (account, cents) in self.unique.values() {
            *b.entry(account.clone()).or_default() += cents;
        }
        b
    }
}

fn stop(instances: &mut [AppProcess]) {
    for inst in instances {
        if let Some(status) = inst.terminate(Duration::from_secs(60)) {
            assert!(
                status.success(),
                "instance {} exited with {status}; log tail:\n{}",
                inst.id,
                inst.log_tail(30)
            );
        }
    }
}

#[test]
fn resent_payments_are_booked_once_and_balances_are_exact() {
    let Some(s) = Setup::new("ledger-dups", 4) else {
        return;
    };
    let payments = Payments::new(4_000, 0.25, 21);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = [s.instance("0", &["--metrics-addr", &addr])];
    app[0].start();
    // In two halves: the second half's resends of first-half IDs arrive after those were
    // committed (dropped by the Kafka-side dedup store, not only by the open transaction).
    let (first, second) = payments.messages.split_at(payments.messages.len() / 2);
    broker::produce(&s.bs, &s.input, first);
    s.wait_caught_up(&mut app);
    broker::produce(&s.bs, &s.input, second);
    s.wait_caught_up(&mut app);
    let m = |t: &str, name: &str| metric_sum(t, name, &[("sink", "ledger")]) as usize;
    let text = scrape_until(&addr, Duration::from_secs(10), |t| {
        m(t, "exactly_sink_effects_applied_total") >= payments.unique.len()
    });
    stop(&mut app);
    s.assert_exact(&payments);
    println!(
        "ledger-dups: {} payments, {} unique, {} resends, {} accounts, {} sink batches",
        payments.messages.len(),
        payments.unique.len(),
        payments.resends(),
        payments.balances().len(),
        m(&text, "exactly_sink_batches_committed_total")
    );
    assert_eq!(m(&text, "exactly_sink_effects_applied_total"), 4_000);
    assert_eq!(
        m(&text, "exactly_sink_duplicates_skipped_total"),
        0,
        "no crash: every resend was dropped before the sink"
    );
    assert_eq!(
        metric_sum(&text, "exactly_duplicates_dropped_total", &[]) as usize,
        payments.resends()
    );
    let batches = m(&text, "exactly_sink_batches_committed_total");
    assert!(batches > 0);
    assert_eq!(m(&text, "exactly_sink_commit_seconds_count"), batches);
    assert_eq!(m(&text, "exactly_sink_flush_failures_total"), 0);
}

#[test]
fn crashes_before_between_and_after_the_two_commits_book_each_payment_once() {
    let Some(s) = Setup::new("ledger-crash", 2) else {
        return;
    };
    let payments = Payments::new(8_000, 0.2, 22);
    let points = [
        "before_send:2",
        "after_send:2",
        "during_commit:2",
        "after_commit:2",
    ];
    let chunks: Vec<&[TestMessage]> = payments
        .messages
        .chunks(payments.messages.len().div_ceil(points.len()))
        .collect();
    let mut skipped_after_crash = BTreeMap::new();
    // before_send: before the database commit; after_send: after the database commit, before
    // the Kafka commit; during_commit: the Kafka commit's outcome unknown; after_commit: after
    // both.
    for (chunk, point) in chunks.iter().zip(points) {
        println!("crash point {point}");
        // Small transactions: the failpoints count commits, so each chunk needs several.
        let mut crashing = s.instance(
            "0",
            &["--commit-interval-ms", "50", "--max-batch-records", "250"],
        );
        crashing.env("TEST_FAILPOINT", point);
        crashing.start();
        broker::produce(&s.bs, &s.input, chunk);
        wait_failpoint_kill(&mut crashing, Duration::from_secs(120));
        drop(crashing);
        // Booked in the database but not in a committed Kafka transaction: what the sink must
        // skip when the restart redelivers them.
        let changelog =
            broker::read_committed(&s.bs, &format!("{}-{}-dedup-changelog", s.app, s.input));
        let kafka_ids: std::collections::HashSet<exactly_core::IdKey> =
            broker::changelog_ids(&changelog)
                .into_iter()
                .map(|(_, id)| id)
                .collect();
        let only_in_database = s
            .rows_per_id()
            .keys()
            .filter(|id| !kafka_ids.contains(&exactly_core::IdKey::of(id.as_bytes())))
            .count() as u64;
        let addr = format!("127.0.0.1:{}", free_port());
        let mut app = [s.instance("0", &["--metrics-addr", &addr])];
        app[0].set_log(s.dir.path().join(format!("restart-{point}.log")));
        app[0].start();
        s.wait_caught_up(&mut app);
        let text = scrape_until(&addr, Duration::from_secs(5), |_| true);
        let skipped = metric_sum(&text, "exactly_sink_duplicates_skipped_total", &[]) as u64;
        assert_eq!(
            skipped, only_in_database,
            "{point}: the sink skips exactly the IDs it booked without a Kafka commit"
        );
        skipped_after_crash.insert(point, skipped);
        stop(&mut app);
    }
    println!("ledger-crash: sink duplicates skipped after the restart, by crash point: {skipped_after_crash:?}");
    s.assert_exact(&payments);
    // Only a crash between the two commits leaves IDs the database has and Kafka does not.
    assert_eq!(skipped_after_crash["before_send:2"], 0);
    assert!(
        skipped_after_crash["after_send:2"] > 0,
        "a crash between the database and the Kafka commit leaves a batch for the sink to skip"
    );
    assert_eq!(skipped_after_crash["after_commit:2"], 0);
}

#[test]
fn sigkill_chaos_keeps_the_ledger_exact() {
    let Some(s) = Setup::new("ledger-chaos", 4) else {
        return;
    };
    let seed = std::env::var("TEST_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    println!("ledger chaos seed {seed} (replay with TEST_CHAOS_SEED={seed})");
    let kills_wanted = 24;
    let payments = Payments::new(20_000, 0.2, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut instances = [s.instance("0", &[]), s.instance("1", &[])];
    instances.iter_mut().for_each(AppProcess::start);
    let started = Instant::now();
    let (mut kills, mut landed) = (0u32, 0u32);
    for chunk in payments
        .messages
        .chunks(payments.messages.len().div_ceil(kills_wanted))
    {
        broker::produce(&s.bs, &s.input, chunk);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1200)));
        let victim = rng.gen_range(0..instances.len());
        if let Some(status) = instances[victim].exited() {
            panic!(
                "instance {victim} exited on its own ({status}); log tail:\n{}",
                instances[victim].log_tail(30)
            );
        }
        kills += 1;
        landed += u32::from(instances[victim].kill9());
        instances[victim].start();
        if rng.gen_bool(0.25) {
            // Again at once: aimed at its start-up, migration or restore.
            std::thread::sleep(Duration::from_millis(rng.gen_range(50..600)));
            kills += 1;
            landed += u32::from(instances[victim].kill9());
            instances[victim].start();
        }
    }
    s.wait_caught_up(&mut instances);
    stop(&mut instances);
    let seconds = started.elapsed().as_secs_f64();
    let rows: u64 = s.rows_per_id().values().sum();
    println!(
        "ledger chaos seed {seed}: {kills} SIGKILLs, {} payments ({} unique, {} resends), {} ledger rows, {} accounts, {seconds:.1} s",
        payments.messages.len(),
        payments.unique.len(),
        payments.resends(),
        rows,
        payments.balances().len(),
    );
    assert_eq!(landed, kills, "every SIGKILL killed a running instance");
    s.assert_exact(&payments);
}

/// A database connection of the test's own that holds the sink's dedup table locked, so that
/// the app's next sink transaction waits for the lock inside its transaction, and terminates it
/// there.
struct SessionKiller {
    rt: tokio::runtime::Runtime,
    client: exactly_sinks::tokio_postgres::Client,
}

impl SessionKiller {
    fn new(url: &str) -> Self {
        use exactly_sinks::tokio_postgres::{connect, NoTls};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = connect(url, NoTls).await.expect("connect");
            tokio::spawn(conn);
            client
        });
        Self { rt, client }
    }

    fn run(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Locks `table` against writes until [`release`](Self::release).
    fn lock(&self, table: &str) {
        self.run(&format!("BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE"));
    }

    fn release(&self) {
        self.run("COMMIT");
    }

    /// Waits (up to `within`) until a session named `application_name` waits for a lock inside
    /// a transaction, and terminates it; returns how many sessions it terminated.
    fn kill_waiting(&self, application_name: &str, within: Duration) -> u64 {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{application_name}' AND xact_start IS NOT NULL \
             AND wait_event_type = 'Lock'"
        );
        let started = Instant::now();
        while started.elapsed() < within {
            // pg_stat_activity is a snapshot per transaction, and this one holds the lock.
            self.run("SELECT pg_stat_clear_snapshot()");
            let n: i64 = self.rt.block_on(async {
                self.client
                    .query_one(sql.as_str(), &[])
                    .await
                    .expect("query")
                    .get(0)
            });
            if n > 0 {
                return n as u64;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        0
    }
}

#[test]
fn terminated_database_connections_while_running_lose_and_double_nothing() {
    let Some(s) = Setup::new("ledger-pgkill", 4) else {
        return;
    };
    let payments = Payments::new(6_000, 0.2, 23);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = [s.instance(
        "0",
        &["--commit-interval-ms", "20", "--metrics-addr", &addr],
    )];
    app[0].start();
    wait_for_log(&mut app[0], "ledger tables ready", Duration::from_secs(60));
    let killer = SessionKiller::new(&s.pg);
    let session = format!("{}-0", s.app);
    // The table a sink transaction writes first: it holds no other lock while it waits.
    let table = format!("{}_applied_ids", s.tables);
    let chunks = payments.messages.chunks(600).count() as u64;
    let mut terminated = 0u64;
    for chunk in payments.messages.chunks(600) {
        // The app's next sink transaction blocks on the lock, inside its transaction: cut it
        // off there (the server rolls it back), then let the retry through.
        killer.lock(&table);
        broker::produce(&s.bs, &s.input, chunk);
        terminated += killer.kill_waiting(&session, Duration::from_secs(30));
        killer.release();
        // The retry goes through before the next chunk takes the lock again.
        s.wait_caught_up(&mut app);
    }
    let text = scrape_until(&addr, Duration::from_secs(5), |_| true);
    stop(&mut app);
    let m = |name: &str| metric_sum(&text, name, &[("sink", "ledger")]) as u64;
    let (retries, failures) = (
        m("exactly_sink_retries_total"),
        m("exactly_sink_flush_failures_total"),
    );
    println!(
        "ledger-pgkill: {terminated} sink sessions terminated inside a transaction, {retries} sink retries, {failures} failed flushes"
    );
    assert_eq!(
        terminated, chunks,
        "one open sink transaction cut off per chunk"
    );
    assert_eq!(
        retries, terminated,
        "each cut-off transaction was retried once"
    );
    assert_eq!(failures, 0, "every flush succeeded after its retry");
    s.assert_exact(&payments);
}

#[test]
fn a_slow_sink_among_kills_and_pauses_keeps_the_ledger_exact() {
    let Some(s) = Setup::new("ledger-slow", 4) else {
        return;
    };
    let seed = std::env::var("TEST_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    println!("ledger slow-sink seed {seed} (replay with TEST_CHAOS_SEED={seed})");
    // 15 chunks of 1,000 payments by default; `TEST_CHAOS_CHUNKS` runs it longer (a soak).
    let chunks: usize = std::env::var("TEST_CHAOS_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let payments = Payments::new(chunks * 800, 0.2, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut instances = [s.instance("0", &[]), s.instance("1", &[])];
    instances.iter_mut().for_each(AppProcess::start);
    for inst in &mut instances {
        wait_for_log(inst, "ledger tables ready", Duration::from_secs(60));
    }
    let locker = SessionKiller::new(&s.pg);
    let table = format!("{}_applied_ids", s.tables);
    let started = Instant::now();
    let (mut kills, mut pauses, mut short_locks, mut long_locks) = (0u32, 0u32, 0u32, 0u32);
    for (i, chunk) in payments.messages.chunks(1_000).enumerate() {
        // Every other chunk arrives while the dedup table is locked against writes: the
        // sink's transactions for it wait for the lock. Within `lock_timeout` (1–4 s) a flush
        // is only slow; past it (10–14 s) its attempts fail, and it gives up within the time
        // its Kafka transaction has left: the transaction aborts and comes again.
        let lock = match i % 4 {
            1 => Some(Duration::from_millis(rng.gen_range(10_000..14_000))),
            3 => Some(Duration::from_millis(rng.gen_range(1_000..4_000))),
            _ => None,
        };
        if let Some(held) = lock {
            if held >= Duration::from_secs(10) {
                long_locks += 1;
            } else {
                short_locks += 1;
            }
            locker.lock(&table);
        }
        let locked_at = Instant::now();
        broker::produce(&s.bs, &s.input, chunk);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1200)));
        let victim = rng.gen_range(0..instances.len());
        let inst = &mut instances[victim];
        if let Some(status) = inst.exited() {
            panic!(
                "instance {victim} exited on its own ({status}); log tail:\n{}",
                inst.log_tail(30)
            );
        }
        if rng.gen_bool(0.6) {
            // Its restart migrates and restores while the table may still be locked.
            kills += 1;
            assert!(inst.kill9(), "instance {victim} was running");
            inst.start();
        } else {
            pauses += 1;
            inst.freeze();
            std::thread::sleep(Duration::from_millis(rng.gen_range(200..3000)));
            inst.resume();
        }
        if let Some(held) = lock {
            std::thread::sleep(held.saturating_sub(locked_at.elapsed()));
            locker.release();
        }
    }
    s.wait_caught_up(&mut instances);
    stop(&mut instances);
    let count = |needle: &str| -> usize {
        instances
            .iter()
            .map(|inst| inst.log().lines().filter(|l| l.contains(needle)).count())
            .sum()
    };
    // A flush that gave up (its last attempt's lock timeout, or the transaction's time
    // running out) aborted its Kafka transaction, which came again.
    let (failed, out_of_time) = (count("sink flush failed"), count("did not finish within"));
    println!(
        "ledger slow-sink seed {seed}: {kills} SIGKILLs, {pauses} SIGSTOP/SIGCONT, {short_locks} locks of 1-4 s, {long_locks} of 10-14 s, {failed} failed flushes ({out_of_time} out of the transaction's time), {} payments ({} unique), {:.1} s",
        payments.messages.len(),
        payments.unique.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed >= 1,
        "a lock past lock_timeout made a flush give up and its transaction abort"
    );
    s.assert_exact(&payments);
}
