//! The end-to-end pipeline benchmark: on one input backlog, (a) a raw rdkafka copy, (b)
//! exactly at least once, (c) exactly exactly once and (d) the Quix Streams peer (its
//! deduplication recipe, exactly once), each in its own process; then how long (c) takes to
//! restart with its state (against the same worker on an empty input), the restore rate of
//! (c) after wiping its state, and process memory at two store sizes.
//!
//! Per mode it measures throughput while the worker catches up with the backlog, then
//! end-to-end latency under a paced load (see [`data::measure_latency`] for the method),
//! commit latency (exactly's modes and the raw copy), peak RSS, store size, and CPU use of
//! worker, broker and machine.

pub mod data;
pub mod measure;
mod process;
pub mod quix;
pub mod report;
pub mod worker;

use crate::procfs::{self, MachineCpu};
use anyhow::{bail, Context as _};
use exactly_testkit::{broker, chaos};
use measure::{count_topic, offset_sum, percentiles, Histogram, OffsetClient, Percentiles};
use process::{QuixApp, WorkerProcess};
use report::{
    target_checks, ModeResult, PipelineReport, ReadyTimes, RestartResult, RestoreResult, RunConfig,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use worker::{RawResult, StoreFillResult, WorkerMode};

/// Options of a pipeline run.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Input records in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Value size in bytes (100 and 1024 are the documented runs).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Input and output partitions.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Share of input records that resend an earlier message ID.
    #[arg(long, default_value_t = 0.1)]
    pub dup_share: f64,
    /// Commit interval of every mode, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Paced records per second in the latency phase.
    #[arg(long, default_value_t = 2_000)]
    pub latency_rate: u64,
    /// Seconds of the latency phase of each mode.
    #[arg(long, default_value_t = 10.0)]
    pub latency_seconds: f64,
    /// Store sizes (IDs) of the memory measurement, comma-separated; the stores are filled
    /// directly, without the broker.
    #[arg(long, value_delimiter = ',', default_value = "1000000,5000000")]
    pub store_ids: Vec<u64>,
    /// Records per transaction / commit at most, for every mode (exactly's
    /// `max_batch_records`; default: the runtime's default).
    #[arg(long, default_value_t = exactly_kafka::RuntimeConfig::new("", "").max_batch_records)]
    pub max_batch_records: usize,
    /// librdkafka property for the clients of every mode, `key=value` (repeatable), e.g.
    /// `--kafka fetch.wait.max.ms=10`.
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
    /// How the raw copy waits for its outputs before committing offsets: `drain` polls
    /// delivery reports until none is in flight; `rdkafka` calls `Producer::flush`, which in
    /// rdkafka 0.39 polls in slices of 100 ms and so takes at least 100 ms whenever anything
    /// is in flight (what exactly's runtime does; see docs/performance.md).
    #[arg(long, value_enum, default_value_t = worker::RawFlush::Drain)]
    pub raw_flush: worker::RawFlush,
    /// Rounds of the modes on the same input: each mode's row is its median round (by
    /// msgs/s), and the rounds' rates are reported too. The local test broker writes its whole
    /// state to disk every half minute or so, which costs whichever mode runs then; rounds
    /// (each in a rotated order) keep one such pause from deciding a comparison.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the memory-versus-store-size measurement.
    #[arg(long)]
    pub skip_store_memory: bool,
    /// Skip the restore measurement.
    #[arg(long)]
    pub skip_restore: bool,
    /// Skip the restart measurement (the exactly-once worker restarted with its state, and on
    /// an empty input).
    #[arg(long)]
    pub skip_restart: bool,
    /// Leave out the quix-streams row (and with it installing Quix Streams into
    /// `target/quix-venv`).
    #[arg(long)]
    pub skip_quix: bool,
    /// Where the JSON goes (default: `target/bench` next to this binary).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:29092")]
    pub bootstrap: String,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u64,
    /// Keep the benchmark's topics on the broker (they are deleted by default: the test broker
    /// keeps every record in memory).
    #[arg(long)]
    pub keep_topics: bool,
}

impl PipelineArgs {
    /// The target directory, found from this binary's location (`target/release/pipeline`).
    fn target_dir() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
            .unwrap_or_else(|| PathBuf::from("target"))
    }

    /// `target/bench`, next to this binary's `release` directory.
    pub fn out_dir(&self) -> PathBuf {
        if let Some(dir) = &self.out_dir {
            return dir.clone();
        }
        Self::target_dir().join("bench")
    }

    /// `target/quix-venv`: where the benchmark installs Quix Streams for the quix-streams row.
    pub fn quix_venv(&self) -> PathBuf {
        Self::target_dir().join("quix-venv")
    }
}

/// What runs in a mode's process: one of this binary's worker modes or the Quix Streams peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// This binary re-executed as `worker --mode M`.
    Worker(WorkerMode),
    /// `benches/quix/dedup.py` on Quix Streams, exactly once.
    Quix,
}

impl Mode {
    /// Name in reports, topic names and group names.
    fn name(self) -> &'static str {
        match self {
            Self::Worker(mode) => mode.name(),
            Self::Quix => "quix-streams",
        }
    }
}

impl From<WorkerMode> for Mode {
    fn from(mode: WorkerMode) -> Self {
        Self::Worker(mode)
    }
}

/// Where a worker reads, writes and keeps its state.
struct Placement {
    input: String,
    output: String,
    group: String,
    state_dir: PathBuf,
}

/// What every mode of a run shares.
struct RunContext {
    args: PipelineArgs,
    prefix: String,
    input: String,
    work_dir: PathBuf,
    broker_pid: Option<u32>,
    cores: usize,
    /// The Quix Streams peer, unless `--skip-quix`.
    quix: Option<QuixApp>,
    /// The round now measured: each round's modes have their own groups, outputs and state.
    round: std::cell::Cell<usize>,
}

impl RunContext {
    /// `mode`'s name in this round.
    fn tag(&self, mode: impl Into<Mode>) -> String {
        format!("r{}-{}", self.round.get(), mode.into().name())
    }
    fn group(&self, mode: impl Into<Mode>) -> String {
        format!("{}-{}", self.prefix, self.tag(mode))
    }
    fn output(&self, mode: impl Into<Mode>) -> String {
        format!("{}-out-{}", self.prefix, self.tag(mode))
    }
    fn state_dir(&self, mode: impl Into<Mode>) -> PathBuf {
        self.work_dir.join(format!("state-{}", self.tag(mode)))
    }
    /// Where `mode` runs on the run's input.
    fn placement(&self, mode: impl Into<Mode> + Copy) -> Placement {
        Placement {
            input: self.input.clone(),
            output: self.output(mode),
            group: self.group(mode),
            state_dir: self.state_dir(mode),
        }
    }
    /// Topics a mode's framework creates for itself. Exactly: the dedup changelog and the
    /// dead-letter topic. Quix Streams: its changelog (and any repartition) topics, named
    /// `changelog__<group>--...`, found by listing the broker's topics.
    fn internal_topics(&self, mode: impl Into<Mode>) -> Vec<String> {
        let mode = mode.into();
        let app = self.group(mode);
        match mode {
            Mode::Worker(_) => vec![
                exactly_kafka::changelog_topic(&app, &self.input),
                exactly_kafka::default_dead_letter_topic(&app),
            ],
            Mode::Quix => match measure::list_topics(&self.args.bootstrap) {
                Ok(topics) => topics.into_iter().filter(|t| t.contains(&app)).collect(),
                Err(e) => {
                    eprintln!("[{}] not deleting its internal topics: {e:#}", mode.name());
                    Vec::new()
                }
            },
        }
    }
    fn delete(&self, topics: &[String]) {
        if self.args.keep_topics || topics.is_empty() {
            return;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        broker::delete_topics(&self.args.bootstrap, &names);
    }
    fn worker_args(&self, mode: WorkerMode, metrics_port: u16, result: &Path) -> Vec<String> {
        self.worker_args_at(&self.placement(mode), metrics_port, result)
    }
    fn worker_args_at(&self, at: &Placement, metrics_port: u16, result: &Path) -> Vec<String> {
        let mut args = vec![
            "--bootstrap".into(),
            self.args.bootstrap.clone(),
            "--input".into(),
            at.input.clone(),
            "--output".into(),
            at.output.clone(),
            "--group".into(),
            at.group.clone(),
            "--state-dir".into(),
            at.state_dir.display().to_string(),
            "--commit-interval-ms".into(),
            self.args.commit_interval_ms.to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--result-file".into(),
            result.display().to_string(),
            "--raw-flush".into(),
            clap::ValueEnum::to_possible_value(&self.args.raw_flush)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default(),
            "--max-batch-records".into(),
            self.args.max_batch_records.to_string(),
        ];
        for kv in &self.args.kafka {
            args.extend(["--kafka".to_owned(), kv.clone()]);
        }
        args
    }
    /// Arguments of `benches/quix/dedup.py`: the run's commit interval (Quix takes seconds)
    /// and, as `commit_every`, its `max_batch_records`, so that Quix commits by exactly's
    /// policy too (every interval or every so many records, whichever comes first).
    fn quix_args(&self) -> Vec<String> {
        let mut args = vec![
            "--bootstrap".into(),
            self.args.bootstrap.clone(),
            "--input".into(),
            self.input.clone(),
            "--output".into(),
            self.output(Mode::Quix),
            "--group".into(),
            self.group(Mode::Quix),
            "--state-dir".into(),
            self.state_dir(Mode::Quix).display().to_string(),
            "--commit-interval".into(),
            (self.args.commit_interval_ms as f64 / 1000.0).to_string(),
            "--commit-every".into(),
            self.args.max_batch_records.to_string(),
        ];
        for kv in &self.args.kafka {
            args.extend(["--kafka".to_owned(), kv.clone()]);
        }
        args
    }
    /// Starts `mode`'s process on the run's input.
    fn spawn(
        &self,
        mode: Mode,
        metrics_port: u16,
        result: &Path,
        log: PathBuf,
    ) -> anyhow::Result<WorkerProcess> {
        match mode {
            Mode::Worker(m) => {
                WorkerProcess::spawn(m, &self.worker_args(m, metrics_port, result), log)
            }
            Mode::Quix => self
                .quix
                .as_ref()
                .context("the quix-streams mode runs only with Quix Streams installed")?
                .spawn(&self.quix_args(), log),
        }
    }
}

fn scrape(port: u16) -> Option<String> {
    chaos::http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

const COMMIT_HISTOGRAM: &str = "exactly_transaction_commit_seconds";

/// Runs one mode on the backlog: throughput, then latency, then the read-back. Every mode is
/// measured the same way; only where its commit latency comes from differs: exactly's
/// `/metrics`, the raw copy's own result file, none for Quix Streams (it serves no metrics).
fn run_mode(ctx: &RunContext, mode: Mode) -> anyhow::Result<ModeResult> {
    let a = &ctx.args;
    let output = ctx.output(mode);
    broker::create_topics(&a.bootstrap, &[(output.as_str(), a.partitions)]);
    let port = chaos::free_port();
    let result_file = ctx.work_dir.join(format!("{}.json", mode.name()));
    let log = ctx.work_dir.join(format!("{}.log", mode.name()));
    let offsets = OffsetClient::new(&a.bootstrap, &ctx.group(mode), &ctx.input, a.partitions)?;
    // The backlog plus the paced records of earlier modes: this mode catches up with all of
    // them before its own latency phase starts.
    let ends = offsets.ends()?;
    let end_sum = offset_sum(&ends);
    eprintln!("[{}] catching up with {end_sum} records", mode.name());
    let mut worker = ctx.spawn(mode, port, &result_file, log)?;
    let pid = worker.pid();

    // Throughput: from the first observed commit to committed offsets at the end.
    let timeout = Duration::from_secs(a.timeout_s);
    let mut first: Option<(Instant, i64, f64, Option<f64>, MachineCpu)> = None;
    let finished = loop {
        worker.check_running()?;
        let committed = offsets.committed()?;
        let now = Instant::now();
        let sum = offset_sum(&committed);
        if first.is_none() && sum > 0 {
            first = Some((
                now,
                sum,
                procfs::cpu_seconds(pid).unwrap_or(0.0),
                ctx.broker_pid.and_then(procfs::cpu_seconds),
                MachineCpu::now(),
            ));
        }
        if ends
            .iter()
            .all(|(p, end)| committed.get(p).copied().unwrap_or(0) >= *end)
        {
            break now;
        }
        if worker.started.elapsed() > timeout {
            bail!(
                "[{}] did not catch up within {timeout:?}: committed {committed:?}, ends {ends:?}",
                mode.name(),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (t_first, first_sum, cpu0, broker0, machine0) =
        first.context("caught up without a commit being observed")?;
    let worker_cpu = procfs::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let broker_cpu = ctx
        .broker_pid
        .and_then(procfs::cpu_seconds)
        .zip(broker0)
        .map(|(b1, b0)| b1 - b0);
    let machine1 = MachineCpu::now();
    let caught_up_unix_ms = crate::fixtures::now_ms() as f64;
    let machine_busy_cores = machine1.busy_cores_since(&machine0, ctx.cores);
    let seconds = (finished - t_first).as_secs_f64().max(1e-3);
    let processed = (end_sum - first_sum) as f64;
    let startup_seconds = (t_first - worker.started).as_secs_f64();
    let total_seconds = (finished - worker.started).as_secs_f64();
    let msgs_per_s = if processed * 2.0 >= end_sum as f64 {
        processed / seconds
    } else {
        // Most of the backlog went in the first commit: too little is left to time after it.
        eprintln!(
            "[{}] the first observed commit covered {first_sum} of {end_sum} records; reporting the rate from the worker's start (use a larger --messages)",
            mode.name()
        );
        end_sum as f64 / total_seconds
    };
    eprintln!(
        "[{}] {msgs_per_s:.0} msgs/s ({processed} records in {seconds:.2} s after the first commit; startup {startup_seconds:.2} s)",
        mode.name(),
    );
    let is_exactly = matches!(
        mode,
        Mode::Worker(WorkerMode::AtLeastOnce | WorkerMode::ExactlyOnce)
    );
    let hist_backlog = if is_exactly {
        scrape(port).map(|t| Histogram::parse(&t, COMMIT_HISTOGRAM))
    } else {
        None
    };

    // Latency under a paced load, the backlog done.
    eprintln!(
        "[{}] latency phase: {} records/s for {} s",
        mode.name(),
        a.latency_rate,
        a.latency_seconds
    );
    let mut latency = data::measure_latency(
        &a.bootstrap,
        &ctx.input,
        &output,
        a.partitions,
        // The paced records' IDs are new in every round: a mode's earlier rounds forwarded
        // the IDs they paced, and a resend of them would be dropped, not measured.
        &format!("lat-{}", ctx.tag(mode)),
        a.latency_rate,
        a.latency_seconds,
        a.value_bytes,
        Duration::from_secs(30),
    )?;
    let hist_all = if is_exactly {
        scrape(port).map(|t| Histogram::parse(&t, COMMIT_HISTOGRAM))
    } else {
        None
    };
    let peak_rss_bytes = procfs::peak_rss_bytes(pid).unwrap_or(0);
    worker.terminate(Duration::from_secs(120))?;

    let (commit_backlog, commit_paced) = if is_exactly {
        let backlog = hist_backlog.unwrap_or_default();
        let paced = hist_all.unwrap_or_default().since(&backlog);
        (backlog.percentiles(), paced.percentiles())
    } else if mode == Mode::Worker(WorkerMode::Raw) {
        let raw: RawResult = serde_json::from_slice(
            &std::fs::read(&result_file).context("reading the raw worker's result")?,
        )?;
        split_raw_commits(&raw, caught_up_unix_ms)
    } else {
        // Quix Streams: no metrics endpoint, so no commit latency.
        (None, None)
    };
    let store_bytes = procfs::dir_bytes(&ctx.state_dir(mode));
    let output_count = count_topic(&a.bootstrap, &output, a.partitions, true, timeout)?;
    let e2e = percentiles(&mut latency.latencies_ms);
    Ok(ModeResult {
        mode: mode.name().to_owned(),
        input_records: end_sum as u64,
        startup_seconds,
        seconds,
        msgs_per_s,
        round_msgs_per_s: vec![msgs_per_s],
        msgs_per_s_incl_startup: end_sum as f64 / total_seconds,
        vs_raw: 1.0,
        e2e_latency: e2e,
        latency_sent: latency.sent,
        latency_received: latency.latencies_ms.len() as u64,
        commit_latency_backlog: commit_backlog,
        commit_latency_paced: commit_paced,
        peak_rss_bytes,
        store_bytes,
        worker_cpu_seconds: worker_cpu,
        worker_cores: worker_cpu / seconds,
        broker_cores: broker_cpu.map(|c| c / seconds),
        machine_busy_cores,
        other_cores: (machine_busy_cores
            - worker_cpu / seconds
            - broker_cpu.unwrap_or(0.0) / seconds)
            .max(0.0),
        output: output_count,
    })
}

/// Splits the raw worker's commit times into those that ended before the backlog was caught
/// up (`caught_up_ms`, Unix ms) and those after.
fn split_raw_commits(
    raw: &RawResult,
    caught_up_ms: f64,
) -> (Option<Percentiles>, Option<Percentiles>) {
    let (mut backlog, mut paced): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for c in &raw.commits {
        if c.ended_unix_ms <= caught_up_ms {
            backlog.push(c.ms);
        } else {
            paced.push(c.ms);
        }
    }
    (percentiles(&mut backlog), percentiles(&mut paced))
}

/// Starts per restart measurement (min / median / max are reported).
const RESTARTS: usize = 3;

/// One start of an exactly-once worker until it is ready.
struct ReadyRun {
    /// Process start → ready, seconds.
    seconds: f64,
    /// `exactly_restore_records_total` when ready.
    restored_records: u64,
}

/// Whether a worker's `/metrics` shows every task restored: none restoring, and one
/// `exactly_restore_seconds` observation per partition.
fn all_restored(metrics: &str, partitions: i32) -> bool {
    chaos::metric_sum(metrics, "exactly_tasks_restoring", &[]) == 0.0
        && Histogram::parse(metrics, "exactly_restore_seconds").count as i32 >= partitions
}

/// Starts the exactly-once worker at `at` and waits until it is ready: every task restored
/// and running (`/metrics` shows no task restoring and at least one restore per partition,
/// as [`restore`] waits for, and `/ready` answers 200). Then stops it gracefully (SIGTERM).
fn time_to_ready(ctx: &RunContext, at: &Placement, label: &str) -> anyhow::Result<ReadyRun> {
    let a = &ctx.args;
    let port = chaos::free_port();
    let result_file = ctx.work_dir.join(format!("{label}.json"));
    let log = ctx.work_dir.join(format!("{label}.log"));
    let args = ctx.worker_args_at(at, port, &result_file);
    let mut worker = WorkerProcess::spawn(WorkerMode::ExactlyOnce, &args, log)?;
    let timeout = Duration::from_secs(a.timeout_s);
    let (ready, text) = loop {
        worker.check_running()?;
        if worker.started.elapsed() > timeout {
            bail!(
                "[{label}] not ready within {timeout:?}; log {}",
                worker.log.display()
            );
        }
        let now = Instant::now();
        if let Some(text) = scrape(port) {
            let ready = || {
                chaos::http_get(&format!("127.0.0.1:{port}"), "/ready")
                    .is_some_and(|(status, _)| status == 200)
            };
            if all_restored(&text, a.partitions) && ready() {
                break (now, text);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = (ready - worker.started).as_secs_f64();
    let restored_records = chaos::metric_sum(&text, "exactly_restore_records_total", &[]) as u64;
    eprintln!(
        "[{label}] ready after {seconds:.2} s ({restored_records} changelog records replayed)"
    );
    worker.terminate(Duration::from_secs(120))?;
    Ok(ReadyRun {
        seconds,
        restored_records,
    })
}

/// Restart → ready of the exactly-once worker with its state dir intact (the IDs of the whole
/// backlog), [`RESTARTS`] times, each after a graceful stop; next to it the "empty task"
/// baseline: the same worker as a fresh app on a new, empty input topic (same partitions),
/// started [`RESTARTS`] times with an empty state dir, after a first start that creates its
/// topics. `state_ids` is what the exactly-once mode forwarded (the IDs its state holds). The
/// runtime's restore settings are left at their defaults (no `EXACTLY_RESTORE_FROM`).
fn restart(ctx: &RunContext, state_ids: u64) -> anyhow::Result<RestartResult> {
    let a = &ctx.args;
    let with_state_at = ctx.placement(WorkerMode::ExactlyOnce);
    let state_bytes = procfs::dir_bytes(&with_state_at.state_dir);
    let empty_at = Placement {
        input: format!("{}-restart-empty-in", ctx.prefix),
        output: format!("{}-restart-empty-out", ctx.prefix),
        group: format!("{}-restart-empty", ctx.prefix),
        state_dir: ctx.work_dir.join("state-restart-empty"),
    };
    broker::create_topics(
        &a.bootstrap,
        &[
            (empty_at.input.as_str(), a.partitions),
            (empty_at.output.as_str(), a.partitions),
        ],
    );
    eprintln!(
        "[restart] the exactly-once worker with its state ({state_ids} IDs) and on an empty input, {RESTARTS} times each"
    );
    let runs = (|| {
        let first = time_to_ready(ctx, &empty_at, "restart-empty-first")?;
        let (mut with_state, mut empty) = (Vec::new(), Vec::new());
        // Interleaved, so that a change in the machine's load (other builds share its two
        // cores) affects both series alike.
        for i in 0..RESTARTS {
            with_state.push(time_to_ready(ctx, &with_state_at, &format!("restart-{i}"))?);
            std::fs::remove_dir_all(&empty_at.state_dir).ok();
            empty.push(time_to_ready(
                ctx,
                &empty_at,
                &format!("restart-empty-{i}"),
            )?);
        }
        anyhow::Ok((first, with_state, empty))
    })();
    ctx.delete(&[
        empty_at.input.clone(),
        empty_at.output.clone(),
        exactly_kafka::changelog_topic(&empty_at.group, &empty_at.input),
        exactly_kafka::default_dead_letter_topic(&empty_at.group),
    ]);
    let (first, with_state, empty) = runs?;
    let with_state = ready_times(&with_state);
    let empty = ready_times(&empty);
    Ok(RestartResult {
        state_ids,
        state_bytes,
        ratio: with_state.median_seconds / empty.median_seconds.max(1e-9),
        with_state,
        empty,
        empty_first_start_seconds: first.seconds,
    })
}

fn ready_times(runs: &[ReadyRun]) -> ReadyTimes {
    let seconds: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    ReadyTimes {
        min_seconds: sorted.first().copied().unwrap_or(0.0),
        median_seconds: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        max_seconds: sorted.last().copied().unwrap_or(0.0),
        seconds,
        restored_records: runs.iter().map(|r| r.restored_records).collect(),
    }
}

fn restore(ctx: &RunContext) -> anyhow::Result<RestoreResult> {
    let a = &ctx.args;
    let mode = WorkerMode::ExactlyOnce;
    let state = ctx.state_dir(mode);
    std::fs::remove_dir_all(&state).ok();
    // The Kafka side alone: one read_committed consumer reading the whole changelog.
    let changelog = exactly_kafka::changelog_topic(&ctx.group(mode), &ctx.input);
    let changelog_read = count_topic(
        &a.bootstrap,
        &changelog,
        a.partitions,
        true,
        Duration::from_secs(a.timeout_s),
    )?;
    let port = chaos::free_port();
    let result_file = ctx.work_dir.join("restore.json");
    let log = ctx.work_dir.join("restore.log");
    eprintln!("[restore] state dir wiped; restarting the exactly-once worker");
    let mut worker = WorkerProcess::spawn(mode, &ctx.worker_args(mode, port, &result_file), log)?;
    let timeout = Duration::from_secs(a.timeout_s);
    let mut restore_started: Option<Instant> = None;
    let mut restore_cpu0 = 0.0;
    let (done, text) = loop {
        worker.check_running()?;
        if worker.started.elapsed() > timeout {
            bail!(
                "[restore] not done within {timeout:?}; log {}",
                worker.log.display()
            );
        }
        let now = Instant::now();
        if let Some(text) = scrape(port) {
            let restoring = chaos::metric_sum(&text, "exactly_tasks_restoring", &[]);
            if restoring > 0.0 && restore_started.is_none() {
                restore_started = Some(now);
                restore_cpu0 = procfs::cpu_seconds(worker.pid()).unwrap_or(0.0);
            }
            if all_restored(&text, a.partitions) {
                break (now, text);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let worker_cpu = procfs::cpu_seconds(worker.pid()).unwrap_or(0.0) - restore_cpu0;
    let started = restore_started.unwrap_or(worker.started);
    // The stores held nothing before: the IDs in them now are the IDs the restore applied.
    let restored_ids = chaos::metric_sum(&text, "exactly_store_entries", &[]) as u64;
    let changelog_records = chaos::metric_sum(&text, "exactly_restore_records_total", &[]) as u64;
    let hist = Histogram::parse(&text, "exactly_restore_seconds");
    let seconds = (done - started).as_secs_f64().max(1e-3);
    let peak_rss_bytes = procfs::peak_rss_bytes(worker.pid()).unwrap_or(0);
    let seconds_incl_startup = (done - worker.started).as_secs_f64();
    worker.terminate(Duration::from_secs(120))?;
    Ok(RestoreResult {
        restored_ids,
        changelog_records,
        seconds,
        ids_per_s: restored_ids as f64 / seconds,
        mean_task_seconds: hist.sum / hist.count.max(1) as f64,
        seconds_incl_startup,
        worker_cores: worker_cpu / seconds,
        changelog_read_per_s: changelog_read.records as f64 / changelog_read.seconds.max(1e-9),
        peak_rss_bytes,
        store_bytes: procfs::dir_bytes(&state),
    })
}

fn measure_store_memory(ctx: &RunContext, ids: u64) -> anyhow::Result<StoreFillResult> {
    let dir = ctx.work_dir.join(format!("fill-{ids}"));
    let result_file = ctx.work_dir.join(format!("fill-{ids}.json"));
    let log = ctx.work_dir.join(format!("fill-{ids}.log"));
    eprintln!("[store memory] filling {ids} IDs");
    let args = vec![
        "--state-dir".into(),
        dir.display().to_string(),
        "--ids".into(),
        ids.to_string(),
        "--partitions".into(),
        ctx.args.partitions.to_string(),
        "--result-file".into(),
        result_file.display().to_string(),
    ];
    let worker = WorkerProcess::spawn(WorkerMode::StoreFill, &args, log)?;
    worker.wait(Duration::from_secs(ctx.args.timeout_s))?;
    let result = serde_json::from_slice(&std::fs::read(&result_file)?)?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(result)
}

/// Runs the whole benchmark and writes `pipeline-<timestamp>.json` and `latest.json`.
pub fn run(args: PipelineArgs) -> anyhow::Result<PipelineReport> {
    let bs = args.bootstrap.clone();
    if !broker::reachable(&bs, Duration::from_secs(10)) {
        bail!("no Kafka broker answers at {bs}: start one with `scripts/broker.sh up` or set KAFKA_BOOTSTRAP");
    }
    let timestamp = report::utc_timestamp();
    let machine = procfs::Machine::describe();
    let out_dir = args.out_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("pipeline-work-")
        .tempdir_in(&out_dir)
        .context("creating the work directory")?;
    // Install Quix Streams first: a failure stops the run before it has produced anything.
    let quix = if args.skip_quix {
        None
    } else {
        Some(quix::prepare(&args.quix_venv(), work.path())?)
    };
    let port = bs
        .rsplit_once(':')
        .and_then(|(_, p)| p.split(',').next()?.parse().ok())
        .unwrap_or(29092);
    let prefix = broker::unique_name("bench");
    let input = format!("{prefix}-in");
    broker::create_topics(&bs, &[(input.as_str(), args.partitions)]);
    eprintln!(
        "[seed] producing {} records of {} B to {input}",
        args.messages, args.value_bytes
    );
    let seed = crate::fixtures::now_ms() as u64;
    let seeded = data::seed_input(
        &bs,
        &input,
        args.messages,
        args.value_bytes,
        args.dup_share,
        seed,
    )?;
    eprintln!("[seed] {:.0} msgs/s", seeded.msgs_per_s);
    let timeout = Duration::from_secs(args.timeout_s);
    let broker_read = count_topic(&bs, &input, args.partitions, false, timeout)?;
    // The harness's own floor: paced records read back from the topic they were sent to.
    let probe = format!("{prefix}-latency-probe");
    broker::create_topics(&bs, &[(probe.as_str(), args.partitions)]);
    let mut direct = data::measure_latency(
        &bs,
        &probe,
        &probe,
        args.partitions,
        "lat-direct",
        args.latency_rate,
        args.latency_seconds,
        args.value_bytes,
        Duration::from_secs(30),
    )?;
    if !args.keep_topics {
        broker::delete_topics(&bs, &[probe.as_str()]);
    }
    let broker_latency = percentiles(&mut direct.latencies_ms);
    let ctx = RunContext {
        args: args.clone(),
        prefix,
        input: input.clone(),
        work_dir: work.path().to_owned(),
        broker_pid: procfs::find_broker_pid(port),
        cores: machine.cores,
        quix,
        round: std::cell::Cell::new(0),
    };

    let mut failure = None;
    let mut run_modes = vec![
        Mode::Worker(WorkerMode::Raw),
        Mode::Worker(WorkerMode::AtLeastOnce),
        Mode::Worker(WorkerMode::ExactlyOnce),
    ];
    if ctx.quix.is_some() {
        run_modes.push(Mode::Quix);
    }
    let rounds = args.rounds.max(1);
    // Results per mode (in `run_modes` order), one per round.
    let mut results: Vec<Vec<ModeResult>> = vec![Vec::new(); run_modes.len()];
    let eos = Mode::Worker(WorkerMode::ExactlyOnce);
    'rounds: for round in 0..rounds {
        ctx.round.set(round);
        // Each round starts with the next mode, so that no mode always runs right after the
        // same one (or always first, on the fewest records the broker holds).
        for k in 0..run_modes.len() {
            let i = (round + k) % run_modes.len();
            let mode = run_modes[i];
            eprintln!("[round {}/{rounds}] {}", round + 1, mode.name());
            let result = run_mode(&ctx, mode);
            // The last round's exactly-once topics stay for the restart and restore
            // measurements.
            if mode != eos || round + 1 < rounds {
                ctx.delete(&[ctx.output(mode)]);
                ctx.delete(&ctx.internal_topics(mode));
            }
            match result {
                Ok(r) => results[i].push(r),
                Err(e) => {
                    failure = Some(e.context(format!("round {}, mode {}", round + 1, mode.name())));
                    break 'rounds;
                }
            }
        }
    }
    let mut modes: Vec<ModeResult> = results.into_iter().filter_map(median_round).collect();
    // Before the restore below wipes the exactly-once worker's state.
    let restart = if failure.is_none() && !args.skip_restart {
        let state_ids = modes
            .iter()
            .find(|m| m.mode == WorkerMode::ExactlyOnce.name())
            .map_or(0, |m| m.output.distinct_ids);
        match restart(&ctx, state_ids) {
            Ok(r) => Some(r),
            Err(e) => {
                failure = Some(e.context("restart"));
                None
            }
        }
    } else {
        None
    };
    let restore = if failure.is_none() && !args.skip_restore {
        match restore(&ctx) {
            Ok(r) => Some(r),
            Err(e) => {
                failure = Some(e.context("restore"));
                None
            }
        }
    } else {
        None
    };
    ctx.delete(&ctx.internal_topics(WorkerMode::ExactlyOnce));
    ctx.delete(&[ctx.output(WorkerMode::ExactlyOnce)]);
    ctx.delete(std::slice::from_ref(&input));
    if let Some(e) = failure {
        return Err(e);
    }
    let mut store_memory = Vec::new();
    if !args.skip_store_memory {
        for ids in &args.store_ids {
            store_memory.push(measure_store_memory(&ctx, *ids)?);
        }
    }

    let raw_rate = modes.first().map_or(1.0, |m| m.msgs_per_s);
    for m in &mut modes {
        m.vs_raw = m.msgs_per_s / raw_rate;
    }
    let mut report = PipelineReport {
        timestamp,
        machine,
        bootstrap: bs,
        broker_pid: ctx.broker_pid,
        config: RunConfig {
            messages: args.messages,
            value_bytes: args.value_bytes,
            partitions: args.partitions,
            dup_share: args.dup_share,
            commit_interval_ms: args.commit_interval_ms,
            latency_rate: args.latency_rate,
            latency_seconds: args.latency_seconds,
            raw_flush: args.raw_flush,
            max_batch_records: args.max_batch_records,
            kafka: args.kafka.clone(),
        },
        input: seeded,
        broker_read,
        broker_latency,
        modes,
        quix_version: ctx
            .quix
            .as_ref()
            .map(|_| quix::QUIXSTREAMS_VERSION.to_owned()),
        restart,
        restore,
        store_memory,
        targets: Vec::new(),
    };
    report.targets = target_checks(&report, args.commit_interval_ms);
    let json = serde_json::to_vec_pretty(&report)?;
    let file = out_dir.join(format!("pipeline-{}.json", report.timestamp));
    std::fs::write(&file, &json).with_context(|| format!("writing {}", file.display()))?;
    std::fs::write(out_dir.join("latest.json"), &json)?;
    eprintln!("wrote {} and latest.json", file.display());
    Ok(report)
}

/// The round of a mode with the median rate (the lower one of two middle rounds), with every
/// round's rate in [`ModeResult::round_msgs_per_s`]; `None` without rounds.
fn median_round(mut rounds: Vec<ModeResult>) -> Option<ModeResult> {
    let rates: Vec<f64> = rounds.iter().map(|r| r.msgs_per_s).collect();
    rounds.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
    let mut median = rounds.get((rounds.len().max(1) - 1) / 2)?.clone();
    median.round_msgs_per_s = rates;
    Some(median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_times_keep_the_order_and_take_the_middle_start() {
        let runs: Vec<ReadyRun> = [0.9, 0.4, 1.5]
            .into_iter()
            .map(|seconds| ReadyRun {
                seconds,
                restored_records: 0,
            })
            .collect();
        let t = ready_times(&runs);
        assert_eq!(t.seconds, vec![0.9, 0.4, 1.5]);
        assert_eq!(
            (t.min_seconds, t.median_seconds, t.max_seconds),
            (0.4, 0.9, 1.5)
        );
    }

    #[test]
    fn the_quix_mode_has_its_own_group_and_output() {
        assert_eq!(Mode::Quix.name(), "quix-streams");
        assert_eq!(
            Mode::from(WorkerMode::ExactlyOnce).name(),
            WorkerMode::ExactlyOnce.name()
        );
    }
}
