//! Broker faults injected with librdkafka's mock cluster (`rdkafka::mocking`), in-process: the
//! real runtime (`exactly_kafka::start` with the `Forward` processor and the app's metrics)
//! runs against a one-broker mock while request errors, delayed responses and a broker outage
//! are injected. Each test checks that the fault was hit (the injected errors were all
//! returned to the runtime's requests, an abort or a long commit was counted) and that every
//! input message ID reaches the output exactly once.
//!
//! The mock writes no transaction markers: a read_committed consumer also sees the records of
//! aborted transactions. So the output is an exact oracle here only because every abort these
//! tests cause happens before any record of its transaction reached the log (a failed
//! AddPartitionsToTxn: nothing is sent before the partitions are registered; a failed
//! TxnOffsetCommit in a transaction of duplicates only: nothing to send). Exactly-once across
//! aborts whose records did land is checked against the real broker (crash-point and chaos
//! tests). See docs/reliability.md for the other mock limits these tests work around.

use exactly::observer::MetricsObserver;
use exactly::processors::Forward;
use exactly::{Health, Metrics, RuntimeConfig, TaskId};
use exactly_kafka::RuntimeHandle;
use exactly_metrics::prometheus::core::Collector;
use exactly_metrics::AbortReason;
use exactly_testkit::broker::{self, TestMessage};
use exactly_testkit::chaos::Verification;
use rdkafka::bindings as sys;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::types::RDKafkaApiKey::{self, AddPartitionsToTxn, EndTxn, Produce, TxnOffsetCommit};
use rdkafka::types::RDKafkaRespErr::{self, *};
use std::os::raw::c_int;
use std::sync::Arc;
use std::time::{Duration, Instant};

const APP: &str = "mock-app";
const INPUT: &str = "in";
const OUTPUT: &str = "out";
const CHANGELOG: &str = "mock-app-in-dedup-changelog";
const DLQ: &str = "mock-app-dlq";
/// The only broker of the mock cluster.
const BROKER: i32 = 1;
/// Unique message IDs per test, plus `RESENDS` of the first ones.
const UNIQUE: usize = 1000;
const RESENDS: usize = 100;

/// A one-broker mock cluster owned by a client (`test.mock.num.brokers`), so that its raw
/// handle is reachable: per-broker error stacks can be counted, which `MockCluster` cannot.
struct FaultyCluster {
    owner: BaseProducer,
    raw: *mut sys::rd_kafka_mock_cluster_t,
}

impl FaultyCluster {
    /// The cluster with the input, output, changelog and dead-letter topics (2 partitions
    /// each). The mock has no CreateTopics, so the runtime cannot create its internal topics.
    fn new() -> Self {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()
            .expect("mock cluster");
        // SAFETY: the handle is valid while `owner` lives, and `owner` lives as long as self.
        let raw = unsafe { sys::rd_kafka_handle_mock_cluster(owner.client().native_ptr()) };
        assert!(!raw.is_null(), "the client has no mock cluster");
        let cluster = Self { owner, raw };
        for t in [INPUT, OUTPUT, CHANGELOG, DLQ] {
            cluster.mock().create_topic(t, 2, 1).expect("create topic");
        }
        cluster
    }

    fn mock(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.owner.client().mock_cluster().expect("mock cluster")
    }

    fn bootstrap(&self) -> String {
        self.mock().bootstrap_servers()
    }

    /// Makes the broker answer the next `errors.len()` requests of `api` with these errors,
    /// each response delayed by `delay`.
    fn inject(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr], delay: Duration) {
        let rtt_ms = c_int::try_from(delay.as_millis()).expect("delay fits");
        for e in errors {
            // SAFETY: valid handle; the variadic arguments are one (error, rtt) pair of C ints,
            // as `cnt` = 1 says.
            let r = unsafe {
                sys::rd_kafka_mock_broker_push_request_error_rtts(
                    self.raw,
                    BROKER,
                    api as i16,
                    1,
                    *e as c_int,
                    rtt_ms,
                )
            };
            assert_eq!(r, RD_KAFKA_RESP_ERR_NO_ERROR, "injecting {e:?}");
        }
    }

    /// Injected errors of `api` not yet returned to a request.
    fn pending(&self, api: RDKafkaApiKey) -> usize {
        let mut n = 0usize;
        // SAFETY: valid handle and out-pointer.
        let r = unsafe {
            sys::rd_kafka_mock_broker_error_stack_cnt(self.raw, BROKER, api as i16, &mut n)
        };
        assert_eq!(r, RD_KAFKA_RESP_ERR_NO_ERROR);
        n
    }
}

fn messages(ids: impl Iterator<Item = usize>) -> Vec<TestMessage> {
    ids.map(|i| TestMessage {
        id: Some(format!("m{i}")),
        key: Some(format!("k{}", i % 13).into_bytes()),
        value: format!("v{i}").into_bytes(),
        timestamp: None,
    })
    .collect()
}

/// The runtime running `Forward` against the mock, with its metrics.
struct Running {
    handle: Option<RuntimeHandle>,
    metrics: Arc<Metrics>,
    _state: tempfile::TempDir,
}

/// The test config against the mock: batches of at most 100 records, so the input takes at
/// least 10 transactions.
fn mock_config(cluster: &FaultyCluster, state: &tempfile::TempDir) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(APP, cluster.bootstrap());
    config.inputs = vec![INPUT.into()];
    config.outputs = vec![OUTPUT.into()];
    config.state_dir = state.path().into();
    config.max_batch_records = 100;
    config.task.dead_letter_topic = Some(DLQ.into());
    // The mock has no DescribeConfigs: with `verify_topic_configs` off the changelog config
    // check waits for its request timeout (the startup timeout), then goes on with a warning
    // (on, it refuses to start, as on a cluster that cannot describe configs).
    config.startup_timeout = Duration::from_secs(3);
    config.verify_topic_configs = false;
    config
}

/// Starts the runtime on [`mock_config`]; `adjust` changes the config further.
fn start(cluster: &FaultyCluster, adjust: impl FnOnce(&mut RuntimeConfig)) -> Running {
    exactly::logging::init();
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = mock_config(cluster, &state);
    adjust(&mut config);
    let metrics = Arc::new(Metrics::new(APP, "0").expect("metrics"));
    let handle = exactly_kafka::start(config, |_: &TaskId| Forward::to(OUTPUT), observer(&metrics))
        .expect("runtime starts");
    Running {
        handle: Some(handle),
        metrics,
        _state: state,
    }
}

fn observer(metrics: &Arc<Metrics>) -> Arc<MetricsObserver> {
    Arc::new(MetricsObserver::new(
        metrics.clone(),
        Arc::new(Health::new()),
        1,
    ))
}

impl Running {
    /// Input records of committed transactions (duplicates included).
    fn consumed(&self) -> u64 {
        self.metrics
            .records_consumed_total
            .with_label_values(&[INPUT])
            .get()
    }

    fn aborted_on_error(&self) -> u64 {
        self.metrics.transaction_aborted(AbortReason::Error).get()
    }

    fn aborted_as_lost(&self) -> u64 {
        self.metrics
            .transaction_aborted(AbortReason::AssignmentLost)
            .get()
    }

    fn duplicates_dropped(&self) -> u64 {
        self.metrics
            .duplicates_dropped_total
            .with_label_values(&[INPUT])
            .get()
    }

    /// Commits that took longer than `seconds` (a bucket bound of the commit histogram).
    fn commits_slower_than(&self, seconds: f64) -> u64 {
        let h = &self.metrics.transaction_commit_seconds;
        let families = h.collect();
        let within = families[0].get_metric()[0]
            .get_histogram()
            .get_bucket()
            .iter()
            .find(|b| b.upper_bound() == seconds)
            .expect("a bucket with this bound")
            .cumulative_count();
        h.get_sample_count() - within
    }

    /// Waits until committed transactions consumed `n` input records (or calls `on_progress`
    /// with the count so far, e.g. to inject a fault mid-run); fails on a runtime error or
    /// after 40 s.
    fn wait_consumed(&self, n: u64, mut on_progress: impl FnMut(u64)) {
        let deadline = Instant::now() + Duration::from_secs(40);
        let handle = self.handle.as_ref().expect("running");
        loop {
            let c = self.consumed();
            if c >= n {
                assert_eq!(c, n, "consumed more input records than exist");
                return;
            }
            assert!(
                !handle.is_finished(),
                "the runtime stopped: {:?}",
                handle.first_error()
            );
            assert!(
                Instant::now() < deadline,
                "consumed {c} of {n} input records within 40 s"
            );
            on_progress(c);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops gracefully and expects no error.
    fn stop(&mut self) {
        let handle = self.handle.take().expect("running");
        handle.shutdown();
        handle.join().expect("runtime stops without error");
    }
}

/// Input vs output per message ID (both read with isolation.level=read_committed): every ID
/// exactly once.
fn assert_exactly_once(cluster: &FaultyCluster) {
    let bs = cluster.bootstrap();
    let v = Verification::compare(
        &broker::read_committed(&bs, INPUT),
        &broker::read_committed(&bs, OUTPUT),
    );
    assert_eq!(v.inputs, UNIQUE + RESENDS, "{v:?}");
    assert_eq!(v.unique_ids, UNIQUE, "{v:?}");
    assert_eq!(v.outputs, UNIQUE, "{v:?}");
    assert!(v.is_exact(), "{v:?}");
}

/// Input of every test: `UNIQUE` IDs, then resends of the first `RESENDS`.
fn produce_input(cluster: &FaultyCluster) {
    broker::produce(
        &cluster.bootstrap(),
        INPUT,
        &messages((0..UNIQUE).chain(0..RESENDS)),
    );
}

#[test]
fn retriable_produce_errors_are_retried_without_loss_or_duplicate() {
    let cluster = FaultyCluster::new();
    produce_input(&cluster);
    // Injected after the input is in, so only the runtime's produce requests meet them.
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    ]
    .repeat(3);
    cluster.inject(Produce, &errors, Duration::ZERO);
    let mut run = start(&cluster, |_| {});
    run.wait_consumed((UNIQUE + RESENDS) as u64, |_| {});
    run.stop();

    assert_eq!(cluster.pending(Produce), 0, "all 6 errors were returned");
    // The idempotent producer retries them inside the transaction: nothing to abort.
    assert_eq!(run.aborted_on_error(), 0);
    assert_eq!(run.duplicates_dropped(), RESENDS as u64);
    assert_exactly_once(&cluster);
}

#[test]
fn add_partitions_to_txn_errors_are_retried_and_an_abortable_one_aborts_and_retries() {
    let cluster = FaultyCluster::new();
    produce_input(&cluster);
    cluster.inject(
        AddPartitionsToTxn,
        &[
            RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            // Not retriable: the transaction must be aborted.
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ],
        Duration::ZERO,
    );
    let mut run = start(&cluster, |_| {});
    run.wait_consumed((UNIQUE + RESENDS) as u64, |_| {});
    run.stop();

    assert_eq!(
        cluster.pending(AddPartitionsToTxn),
        0,
        "all 4 errors were returned"
    );
    assert_eq!(
        run.aborted_on_error(),
        1,
        "the abortable error aborted one transaction"
    );
    assert_eq!(run.duplicates_dropped(), RESENDS as u64);
    assert_exactly_once(&cluster);
}

#[test]
fn txn_offset_commit_errors_are_retried_and_an_abortable_one_aborts_and_retries() {
    let cluster = FaultyCluster::new();
    // Phase 1: the unique IDs, committed through retriable offset-commit errors.
    broker::produce(&cluster.bootstrap(), INPUT, &messages(0..UNIQUE));
    cluster.inject(
        TxnOffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        ],
        Duration::ZERO,
    );
    let mut run = start(&cluster, |_| {});
    run.wait_consumed(UNIQUE as u64, |_| {});
    assert_eq!(
        cluster.pending(TxnOffsetCommit),
        0,
        "all 3 errors were returned"
    );
    assert_eq!(
        run.aborted_on_error(),
        0,
        "retriable errors are retried, not aborted"
    );

    // Phase 2: only resends, so the transaction that fails sends nothing but offsets; the
    // group no longer knows the member: abort, rewind, and drop the resends again.
    cluster.inject(
        TxnOffsetCommit,
        &[RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
        Duration::ZERO,
    );
    broker::produce(&cluster.bootstrap(), INPUT, &messages(0..RESENDS));
    run.wait_consumed((UNIQUE + RESENDS) as u64, |_| {});
    run.stop();

    assert_eq!(cluster.pending(TxnOffsetCommit), 0);
    // UNKNOWN_MEMBER_ID: the group no longer knows this member, so its assignment is lost.
    assert_eq!(run.aborted_as_lost(), 1);
    assert_eq!(run.aborted_on_error(), 0);
    assert_eq!(
        run.duplicates_dropped(),
        RESENDS as u64,
        "counted once, after the retry"
    );
    assert_exactly_once(&cluster);
}

#[test]
fn end_txn_errors_are_retried_and_a_commit_outlasting_its_call_is_resumed() {
    let cluster = FaultyCluster::new();
    produce_input(&cluster);
    cluster.inject(
        EndTxn,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
        ],
        Duration::ZERO,
    );
    // Then a commit the coordinator answers only after 3 s, longer than one commit call
    // waits (the transaction timeout, 2 s here): the call returns "timed out, retry call to
    // resume", and the runtime must resume the commit, not abort it (librdkafka refuses
    // the abort while the commit is in progress, which used to stop the stream thread).
    cluster.inject(
        EndTxn,
        &[RD_KAFKA_RESP_ERR_NO_ERROR],
        Duration::from_secs(3),
    );
    let mut run = start(&cluster, |c| c.transaction_timeout = Duration::from_secs(2));
    run.wait_consumed((UNIQUE + RESENDS) as u64, |_| {});
    run.stop();

    assert_eq!(
        cluster.pending(EndTxn),
        0,
        "all 4 injected responses were returned"
    );
    assert_eq!(run.aborted_on_error(), 0);
    assert_eq!(run.commits_slower_than(2.5), 1, "the delayed commit");
    assert_eq!(run.duplicates_dropped(), RESENDS as u64);
    assert_exactly_once(&cluster);
}

#[test]
fn broker_down_mid_run_then_up_loses_and_duplicates_nothing() {
    let cluster = FaultyCluster::new();
    produce_input(&cluster);
    // Clients reconnect within 100 ms once the broker is back (librdkafka backs off up to
    // 10 s by default), so the records waiting in the producer are delivered well before
    // their timeout and no transaction has to be aborted. (An abort after some of its
    // records landed would show them on the mock, which has no transaction markers.)
    let mut run = start(&cluster, |c| {
        c.kafka
            .insert("reconnect.backoff.max.ms".into(), "100".into());
    });
    let mut outage_done = false;
    run.wait_consumed((UNIQUE + RESENDS) as u64, |consumed| {
        if consumed >= 300 && !outage_done {
            // The consumer has fetched the whole input already, so the next transaction
            // begins and sends while the broker is down: its commit waits for the broker.
            cluster.mock().broker_down(BROKER).expect("broker down");
            std::thread::sleep(Duration::from_secs(4));
            cluster.mock().broker_up(BROKER).expect("broker up");
            outage_done = true;
        }
    });
    run.stop();

    assert!(outage_done);
    assert_eq!(run.aborted_on_error(), 0);
    assert!(
        run.commits_slower_than(2.5) >= 1,
        "a commit waited through the outage"
    );
    assert_eq!(run.duplicates_dropped(), RESENDS as u64);
    assert_exactly_once(&cluster);
}

#[test]
fn a_fatal_end_txn_error_stops_the_runtime_with_a_clear_error() {
    let cluster = FaultyCluster::new();
    produce_input(&cluster);
    // The cluster no longer allows this transactional.id: fatal for the producer.
    cluster.inject(
        EndTxn,
        &[RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED],
        Duration::ZERO,
    );
    let mut run = start(&cluster, |_| {});
    let handle = run.handle.take().expect("running");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "the runtime did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = handle.join().expect_err("a fatal error stops the runtime");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(
        text.contains("Transactional Id authorization failed"),
        "the error names the cause: {text}"
    );
    assert_eq!(cluster.pending(EndTxn), 0);
    assert_eq!(run.consumed(), 0, "nothing committed");
    assert_eq!(run.metrics.transactions_committed_total.get(), 0);
}

#[test]
fn a_changelog_whose_config_cannot_be_read_is_refused_unless_verification_is_off() {
    exactly::logging::init();
    let cluster = FaultyCluster::new();
    produce_input(&cluster);
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = mock_config(&cluster, &state);
    config.verify_topic_configs = RuntimeConfig::new(APP, cluster.bootstrap()).verify_topic_configs;
    assert!(config.verify_topic_configs, "on by default");
    let metrics = Arc::new(Metrics::new(APP, "0").expect("metrics"));
    let err = exactly_kafka::start(config, |_: &TaskId| Forward::to(OUTPUT), observer(&metrics))
        .err()
        .expect("refused: the mock cannot describe the changelog's config");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(
        text.contains("cannot read the config of changelog topic `")
            && text.contains("set `verify_topic_configs = false`"),
        "the error says what is wrong and what to do: {text}"
    );
    assert_eq!(metrics.transactions_committed_total.get(), 0);
}
